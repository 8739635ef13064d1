r"""PTB-XL evaluation of an ECG-JEPA encoder (linear probe / fine-tuning).

  python -m experiments.finetune \
      --config=experiments/configs/finetune.py:linear \
      --encoder=runs/xs_ptbxl --task=all --seeds=10 \
      --config.data.data_dir=$HOME/tensorflow_datasets --workdir=runs/xs_ptbxl_linear

  # then continue the linear runs with the encoder trained:
  python -m experiments.finetune --config=experiments/configs/finetune.py:finetune_after_linear \
      --encoder=runs/xs_ptbxl_linear --task=all --seeds=10 --workdir=runs/xs_ptbxl_fal

`--encoder` is a pre-training workdir (its target encoder), an exported
encoder directory, `random:<variant>` (random init at --config.model.fs), or
for finetune_after_linear a linear run's workdir. Outputs per task and seed
in `<workdir>/<task>/seed<k>/` (results.json, predictions.npz, plots, best/)
and the mean and std over seeds in `<workdir>/results.json`. The config and
`--encoder` are checked before anything starts (a bad value exits with
status 2). SIGTERM or Ctrl-C stops at the next step with 128 + the signal
number (a stopped run starts again from scratch). Library INFO logs stay
off unless `--verbosity` asks for them.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import build_data, console
from jepa_ecg.data.ptbxl import TASKS

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Fine-tuning config file.', lock_config=True)
flags.DEFINE_string('encoder', None, 'Pre-training workdir, exported encoder, '
                    'random:<variant>, or a linear-run workdir (finetune_after_linear).')
flags.DEFINE_list('task', ['all'], f'Comma-separated tasks of {TASKS}.')
flags.DEFINE_integer('seeds', 1, 'Repeated runs per task (seeds config.seed + 0..N-1).')
flags.DEFINE_string('workdir', None, 'Output folder.')
flags.mark_flags_as_required(['config', 'encoder', 'workdir'])


def _print_summary(summary: dict) -> None:
    for task, s in summary['tasks'].items():
        auc = s['test_macro_auc']
        print(f'{FLAGS.config.protocol} {task}: test macro AUC {auc["mean"]:.4f} '
              f'+- {auc["std"]:.4f} over {auc["n"]} seed{"s" if auc["n"] != 1 else ""}; runs: '
              + ', '.join(f'{r["test_macro_auc"]:.4f} [{r["test_macro_auc_ci"][0]:.4f}, '
                          f'{r["test_macro_auc_ci"][1]:.4f}]' for r in s['runs']))


HINT = ('see experiments/configs/finetune.py for the config tokens and fields, '
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
    unknown = [t for t in FLAGS.task if t not in TASKS]
    if unknown:
        console.usage_error(f'--task: unknown tasks {unknown}', f'choose from {TASKS}')
    if FLAGS.seeds < 1:
        console.usage_error(f'--seeds={FLAGS.seeds}: must be >= 1', HINT)
    # Nothing may start the JAX backends before initialize_distributed.
    from jepa_ecg import sharding  # pylint: disable=g-import-not-at-top
    from jepa_ecg.inference import resolve  # pylint: disable=g-import-not-at-top
    from jepa_ecg.training import config_checks, finetune_runs  # pylint: disable=g-import-not-at-top
    sharding.initialize_distributed()
    sharding.hide_accelerators_from_tensorflow()
    try:
        config_checks.check_finetune_config(FLAGS.config)
        resolver = resolve.make_resolver(FLAGS.encoder, FLAGS.config)
    except ValueError as e:
        console.usage_error(str(e), HINT)
    new_workdir = None if os.path.exists(FLAGS.workdir) else FLAGS.workdir
    with console.run_errors(new_workdir):
        build_data.for_ptbxl(FLAGS.config.data, resolver(FLAGS.task[0], 0).config.fs)
        summary = finetune_runs.run_all(FLAGS.config, FLAGS.workdir, encoder=resolver,
                                        tasks=list(FLAGS.task), num_seeds=FLAGS.seeds)
    _print_summary(summary)
    logging.info('results in %s', os.path.join(FLAGS.workdir, 'results.json'))


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
