r"""ECG-JEPA pre-training.

  python -m experiments.pretrain \
      --config=experiments/configs/pretrain.py:vit_xs,ptbxl,100hz \
      --config.data.data_dir=$HOME/tensorflow_datasets --workdir=runs/xs_ptbxl

Re-running with the same --workdir resumes from the last checkpoint. The
config is checked before anything starts (a bad value exits with status 2).
Library INFO logs stay off unless `--verbosity` asks for them.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments import build_data, console  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Pre-training config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, metrics and TensorBoard events.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError('Too many command-line arguments.', exitcode=2)
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
        raise app.UsageError(str(e), exitcode=2) from None
    from jepa_ecg.training.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top
    from tfds_builders.build import DatasetNotBuiltError  # pylint: disable=g-import-not-at-top
    new_workdir = None if os.path.exists(FLAGS.workdir) else FLAGS.workdir
    try:
        build_data.for_pretraining(FLAGS.config)
        summary = jepa_loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (DatasetNotBuiltError, CheckpointError) as e:
        # A real source not built (the message names the build command), or a
        # workdir none of whose checkpoints restores.
        console.fail(str(e), new_workdir=new_workdir)
    logging.info('done: %s', summary)
    print(loss_curve_summary(FLAGS.workdir))


if __name__ == '__main__':
    app.run(main)
