r"""End-to-end demo on offline data: `make demo`.

1. builds the procedural `synthetic_ecg` TFDS dataset and its lead statistics;
2. pre-trains a small ECG-JEPA model on it (data-parallel over all local
   devices, checkpointed, resumable) and prints the loss-curve summary;
3. when real PTB-XL is available (`$PTBXL_DIR`, default ../shared/data/ptb-xl),
   builds `ptb_xl/records100` and runs the linear protocol (smoke budget) on
   the pre-trained encoder.

  python -m experiments.demo --workdir=demo_out [--steps=150]
"""

import os
import subprocess
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # noqa: E402

from experiments import console  # noqa: E402
from experiments.configs.pretrain import get_config  # noqa: E402
from jepa_ecg import sharding  # noqa: E402
from jepa_ecg.data import pretrain  # noqa: E402
from jepa_ecg.training import jepa_loop  # noqa: E402
from jepa_ecg.training.metrics_writer import loss_curve_summary  # noqa: E402
from tfds_builders import build  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', 'demo_out', 'Where data, checkpoints and plots go.')
flags.DEFINE_integer('steps', 150, 'Pre-training steps.')
flags.DEFINE_integer('batch', 16, 'Global batch size.')
flags.DEFINE_string('variant', 'vit_xs', 'Model variant token (vit_tiny, vit_xs, ...).')
flags.DEFINE_string('ptbxl_dir', None, 'PTB-XL folder (default $PTBXL_DIR or ../shared/data/ptb-xl).')
flags.DEFINE_bool('linear_probe', True, 'Run the linear protocol on PTB-XL when available.')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pretrain_config(steps: int, batch: int, variant: str):
    config = get_config(f'{variant},synthetic,100hz,smoke')
    config.total_steps = steps
    config.warmup_steps = max(1, steps // 10)
    config.global_batch_size = batch
    config.log_every = max(1, steps // 30)
    config.rank_every = config.log_every
    config.checkpoint_every = max(1, steps // 3)
    return config


def main(argv):
    del argv
    console.quiet_library_logs()
    sharding.hide_accelerators_from_tensorflow()
    workdir = os.path.abspath(FLAGS.workdir)
    data_dir = os.path.join(workdir, 'tfds')
    print(f'[1/3] building synthetic_ecg and its lead statistics in {data_dir}', flush=True)
    pretrain.prepare_sources({'synthetic': 1.0}, data_dir)

    config = pretrain_config(FLAGS.steps, FLAGS.batch, FLAGS.variant)
    config.data.data_dir = data_dir
    pre_dir = os.path.join(workdir, 'pretrain')
    print(f'[2/3] pre-training {config.model.variant} at {config.model.fs:g} Hz for '
          f'{config.total_steps} steps (batch {config.global_batch_size}) in {pre_dir}',
          flush=True)
    summary = jepa_loop.train_and_evaluate(config, pre_dir)
    print(loss_curve_summary(pre_dir))
    print(f'pre-training: {summary["records_per_s"]:.1f} records/s over '
          f'{summary["seconds"]:.0f} s', flush=True)

    if FLAGS.linear_probe:
        run_linear_probe(workdir, pre_dir)


def run_linear_probe(workdir: str, encoder_dir: str) -> None:
    """Builds ptb_xl/records100 and runs the linear protocol (smoke budget)."""
    ptbxl = (FLAGS.ptbxl_dir or os.environ.get('PTBXL_DIR')
             or os.path.join(REPO, '..', 'shared', 'data', 'ptb-xl'))
    if not os.path.exists(os.path.join(ptbxl, 'ptbxl_database.csv')):
        print(f'[3/3] skipped: no PTB-XL at {ptbxl} (set PTBXL_DIR to run the linear protocol)')
        return
    data_dir = os.path.join(workdir, 'tfds')
    print(f'[3/3] building ptb_xl/records100 from {ptbxl}, then the linear protocol (smoke)',
          flush=True)
    build.ensure_built('ptb_xl/records100', data_dir, manual_dir=os.path.abspath(ptbxl))
    out = os.path.join(workdir, 'linear')
    subprocess.run([sys.executable, '-m', 'experiments.finetune',
                    '--config=experiments/configs/finetune.py:linear,smoke',
                    f'--config.data.data_dir={data_dir}', f'--encoder={encoder_dir}',
                    '--task=superdiagnostic', f'--workdir={out}'], check=True, cwd=REPO)
    print(f'linear probe results: {os.path.join(out, "results.json")}')


if __name__ == '__main__':
    app.run(main)
