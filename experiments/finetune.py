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
and the mean and std over seeds in `<workdir>/results.json`.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

TASK_CHOICES = ('all', 'diagnostic', 'subdiagnostic', 'superdiagnostic', 'form', 'rhythm',
                'st_mem')

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Fine-tuning config file.', lock_config=True)
flags.DEFINE_string('encoder', None, 'Pre-training workdir, exported encoder, '
                    'random:<variant>, or a linear-run workdir (finetune_after_linear).')
flags.DEFINE_list('task', ['all'], f'Comma-separated tasks of {TASK_CHOICES}.')
flags.DEFINE_integer('seeds', 1, 'Repeated runs per task (seeds config.seed + 0..N-1).')
flags.DEFINE_string('workdir', None, 'Output folder.')
flags.mark_flags_as_required(['config', 'encoder', 'workdir'])


def quiet_orbax_info():
    """Drops Orbax's INFO lines (a dozen per checkpoint) so progress lines stay readable."""
    import logging as std_logging

    class _Filter(std_logging.Filter):
        def filter(self, record):
            return record.levelno > std_logging.INFO or '/orbax/' not in record.pathname

    logging.get_absl_handler().addFilter(_Filter())


def main(argv):
    if len(argv) > 1:
        raise app.UsageError('Too many command-line arguments.')
    quiet_orbax_info()
    unknown = [t for t in FLAGS.task if t not in TASK_CHOICES]
    if unknown:
        raise app.UsageError(f'unknown tasks {unknown}; choose from {TASK_CHOICES}')
    if FLAGS.seeds < 1:
        raise app.UsageError('--seeds must be >= 1')
    from jepa_ecg.training import parallel
    parallel.initialize_distributed()
    parallel.hide_accelerators_from_tensorflow()
    from jepa_ecg.evaluation import protocols
    summary = protocols.run_all(FLAGS.config, FLAGS.workdir, encoder=FLAGS.encoder,
                                tasks=list(FLAGS.task), num_seeds=FLAGS.seeds)
    for task, s in summary['tasks'].items():
        auc = s['test_macro_auc']
        print(f'{FLAGS.config.protocol} {task}: test macro AUC {auc["mean"]:.4f} '
              f'+- {auc["std"]:.4f} over {auc["n"]} seed(s); runs: '
              + ', '.join(f'{r["test_macro_auc"]:.4f} [{r["test_macro_auc_ci"][0]:.4f}, '
                          f'{r["test_macro_auc_ci"][1]:.4f}]' for r in s['runs']))
    logging.info('results in %s', os.path.join(FLAGS.workdir, 'results.json'))


if __name__ == '__main__':
    app.run(main)
