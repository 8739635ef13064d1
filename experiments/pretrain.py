r"""ECG-JEPA pre-training.

  python -m experiments.pretrain \
      --config=experiments/configs/pretrain.py:vit_xs,ptbxl,100hz \
      --config.data.data_dir=$HOME/tensorflow_datasets --workdir=runs/xs_ptbxl

Re-running with the same --workdir resumes from the last checkpoint. The
config is checked before anything starts (a bad value, or a model of
another shape than the workdir's, exits with status 2). SIGTERM or Ctrl-C
saves the step in progress and exits with 128 + the signal number; one run
at a time holds a workdir (`run.lock`).
Library INFO logs stay off unless `--verbosity` asks for them.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import build_data, console

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Pre-training config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, metrics and TensorBoard events.')
flags.mark_flags_as_required(['config', 'workdir'])


HINT = ('see experiments/configs/pretrain.py for the config tokens and fields, '
        '--helpshort for the flags')


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing; a bad flag or config override is one line and a hint."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        console.usage_error(console.first_line(e), HINT)
    except (AttributeError, KeyError) as e:  # an override of a field the config lacks
        console.usage_error(f'no such config field: {console.first_line(e).strip(chr(34))}',
                            HINT)
    except (TypeError, ValueError) as e:  # the config file's own argument parser
        console.usage_error(console.first_line(e), HINT)
    return []


def main(argv):
    if len(argv) > 1:
        console.usage_error(f'unexpected arguments {argv[1:]}', HINT)
    console.quiet_library_logs()
    # Nothing may start the JAX backends before initialize_distributed.
    from jepa_ecg import sharding  # pylint: disable=g-import-not-at-top
    from jepa_ecg.training import config_checks, jepa_loop  # pylint: disable=g-import-not-at-top
    from jepa_ecg.training.metrics_writer import loss_curve_summary  # pylint: disable=g-import-not-at-top
    sharding.initialize_distributed()
    # TensorFlow (tf.data/TFDS) must not grab accelerators that JAX uses.
    sharding.hide_accelerators_from_tensorflow()
    try:
        config_checks.check_pretrain_config(FLAGS.config)
    except config_checks.ConfigError as e:
        console.usage_error(str(e), HINT)
    new_workdir = None if os.path.exists(FLAGS.workdir) else FLAGS.workdir
    with console.run_errors(new_workdir):
        build_data.for_pretraining(FLAGS.config)
        summary = jepa_loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    logging.info('done: %s', summary)
    print(loss_curve_summary(FLAGS.workdir))


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
