r"""End-to-end demo on offline data: `make demo`.

1. builds the procedural `synthetic_ecg` TFDS dataset and its lead statistics;
2. pre-trains a small ECG-JEPA model on it (data-parallel over all local
   devices, checkpointed, resumable) and prints the loss-curve summary;
3. when real PTB-XL is available (`$PTBXL_DIR`, default ../shared/data/ptb-xl),
   pre-trains on its train folds at 100 Hz instead (a shortened `cpu` budget
   of experiments/configs/learning_curve.py) and ends with what pre-training
   buys: the linear protocol on the pre-trained and on a random-init encoder,
   both test macro AUCs with 95 % CIs and their paired-bootstrap difference.

  python -m experiments.demo --workdir=demo_out [--steps=150]
"""

import os

from absl import app, flags

from experiments import build_data, console, learning_curve
from experiments.configs import learning_curve as curve_configs
from experiments.configs.pretrain import RECIPES, describe_schedule, get_config
from jepa_ecg import sharding
from jepa_ecg.training import jepa_loop
from jepa_ecg.training.metrics_writer import loss_curve_summary
from tfds_builders import build

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', 'demo_out', 'Where data, checkpoints and plots go.')
flags.DEFINE_integer('steps', 150, 'Pre-training steps.')
flags.DEFINE_integer('batch', 16, 'Global batch size.')
flags.DEFINE_string('variant', 'vit_xs', 'Model variant token (vit_tiny, vit_xs, ...).')
# At the demo's budget (150 steps of 16 records) the published recipe is the
# one that shows pre-training best (README, "What pre-training buys").
flags.DEFINE_enum('recipe', 'published', list(RECIPES),
                  'Pre-training recipe (experiments/configs/pretrain.py RECIPES).')
flags.DEFINE_string('ptbxl_dir', None, 'PTB-XL folder (default $PTBXL_DIR or ../shared/data/ptb-xl).')
flags.DEFINE_bool('linear_probe', True, 'Pre-train on PTB-XL and compare with random init '
                  'when PTB-XL is available.')
flags.DEFINE_integer('probe_records', 200, 'Records per PTB-XL fold in the linear probes.')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pretrain_config(steps: int, batch: int, variant: str, recipe: str = 'published'):
    config = get_config(f'{variant},synthetic,100hz,smoke,{recipe}')
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
    with console.run_errors(None):
        _demo()


def _demo():
    workdir = os.path.abspath(FLAGS.workdir)
    data_dir = os.path.join(workdir, 'tfds')
    ptbxl = _ptbxl_dir()
    if FLAGS.linear_probe and os.path.exists(os.path.join(ptbxl, 'ptbxl_database.csv')):
        print(f'[1/3] building ptb_xl/records100 from {ptbxl} in {data_dir}', flush=True)
        build.ensure_built('ptb_xl/records100', data_dir, manual_dir=os.path.abspath(ptbxl))
        compare_with_random(workdir, data_dir)
        return
    print(f'[1/3] building synthetic_ecg and its lead statistics in {data_dir}', flush=True)
    build_data.sources_of({'synthetic': 1.0}, data_dir)
    config = pretrain_config(FLAGS.steps, FLAGS.batch, FLAGS.variant, FLAGS.recipe)
    config.data.data_dir = data_dir
    pre_dir = os.path.join(workdir, 'pretrain')
    print(f'[2/3] pre-training {config.model.variant} at {config.model.fs:g} Hz for '
          f'{config.total_steps} steps (batch {config.global_batch_size}, '
          f'{_recipe_line(config)}) in {pre_dir}', flush=True)
    summary = jepa_loop.train_and_evaluate(config, pre_dir)
    print(loss_curve_summary(pre_dir))
    print(f'pre-training: {summary["records_per_s"]:.1f} records/s over '
          f'{summary["seconds"]:.0f} s', flush=True)
    print(f'[3/3] skipped: no PTB-XL at {ptbxl} (set PTBXL_DIR to compare the pre-trained '
          f'encoder with random init on it)')


def _recipe_line(config) -> str:
    return (f'recipe {config.recipe}: {describe_schedule(config)}, '
            f'--recipe={"small_budget" if config.recipe == "published" else "published"} '
            f'for the other')


def _ptbxl_dir() -> str:
    return (FLAGS.ptbxl_dir or os.environ.get('PTBXL_DIR')
            or os.path.join(REPO, '..', 'shared', 'data', 'ptb-xl'))


def curve_config(data_dir: str):
    """The `cpu` learning-curve budget shortened to one budget of `--steps` x `--batch`."""
    config = curve_configs.get_config(
        f'cpu,{FLAGS.variant},{FLAGS.recipe},steps={FLAGS.steps},budgets=1,random_seeds=1')
    config.data_dir = data_dir
    p, f = config.pretrain, config.linear
    p.global_batch_size = FLAGS.batch
    p.log_every = p.rank_every = max(1, FLAGS.steps // 10)
    f.data.max_records_per_fold = FLAGS.probe_records
    f.total_steps = f.eval_every = f.patience = 100
    f.batch_size = 32
    f.bootstrap.num_resamples = 500
    return config


def compare_with_random(workdir: str, data_dir: str) -> None:
    """Pre-trains on the PTB-XL train folds, then linear probes: pre-trained vs random init."""
    config = curve_config(data_dir)
    out = os.path.join(workdir, 'curve')
    p = config.pretrain
    print(f'[2/3] pre-training {p.model.variant} at {p.model.fs:g} Hz on the PTB-XL train '
          f'folds for {p.total_steps} steps (batch {p.global_batch_size}, {_recipe_line(p)}), '
          f'then [3/3] the '
          f'linear protocol ({config.linear.total_steps} steps, {FLAGS.probe_records} records '
          f'per fold) on it and on a random-init encoder, in {out}', flush=True)
    curve = learning_curve.run_curve(config, out)
    print(loss_curve_summary(os.path.join(out, 'pretrain')))
    point, rand = curve['points'][-1], curve['random']['runs'][0]
    d = point['paired'][0]
    print(f'\nWhat {point["records_seen"]} records of pre-training buy ({curve["task"]}, '
          f'test macro AUC, 95% CI):\n'
          f'  JEPA pre-trained  {point["test_macro_auc"]:.4f} [{point["ci"][0]:.4f}, '
          f'{point["ci"][1]:.4f}]\n'
          f'  random init       {rand["test_macro_auc"]:.4f} [{rand["ci"][0]:.4f}, '
          f'{rand["ci"][1]:.4f}]\n'
          f'  paired difference {d["diff"]:+.4f} [{d["ci_low"]:+.4f}, {d["ci_high"]:+.4f}], '
          f'p = {d["p_value"]:.3f}\n'
          f'(one seed each and a short probe: random-init encoders alone differ by several '
          f'points, see the band of experiments/learning_curve.py)\n'
          f'{os.path.join(out, "curve.json")}')


if __name__ == '__main__':
    app.run(main)
