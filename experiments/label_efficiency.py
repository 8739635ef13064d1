r"""Label efficiency: AUC vs share of training labels, pre-trained vs random init.

  python -m experiments.label_efficiency \
      --config=experiments/configs/finetune.py:linear --encoder=runs/xs_ptbxl \
      --fractions=0.01,0.1,1 --seeds=3 --task=superdiagnostic --workdir=runs/label_eff

For every encoder (`--encoder` and the random-init baseline of its variant,
or `--baseline`) and every fraction, `--seeds` runs of the protocol train
on a label-stratified subset of the train folds (`config.data.train_fraction`,
a new subset per seed) and are scored on the full validation and test
folds. The batch shrinks to the subset when the subset is smaller. Each pair
(same fraction and seed) is compared by paired bootstrap. Writes
`<workdir>/<encoder>/frac<pct>/` (finetune.py's layout),
`<workdir>/label_efficiency.json` and `<workdir>/label_efficiency.png`.
"""

import json
import os

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from experiments import compare, console, curve_plots
from jepa_ecg import sharding
from jepa_ecg.data import label_fraction
from jepa_ecg.inference import resolve
from jepa_ecg.training import finetune_loop, finetune_runs

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Fine-tuning config file.', lock_config=True)
flags.DEFINE_string('encoder', None, 'The pre-trained encoder (any finetune.py --encoder).')
flags.DEFINE_string('baseline', None, 'The encoder to compare with; default random:<variant> '
                    'of --encoder.')
flags.DEFINE_list('fractions', ['0.01', '0.1', '1'], 'Shares of the train-fold labels.')
flags.DEFINE_integer('seeds', 3, 'Runs (subset and init seeds) per encoder and fraction.')
flags.DEFINE_string('task', 'superdiagnostic', 'PTB-XL task.')
flags.DEFINE_string('workdir', None, 'Output folder.')
flags.mark_flags_as_required(['config', 'encoder', 'workdir'])

TABLE_FILE = 'label_efficiency.json'
PLOT_FILE = 'label_efficiency.png'


def fraction_config(config: ml_collections.ConfigDict, fraction: float,
                    num_train: int) -> ml_collections.ConfigDict:
    """`config` training on `fraction` of `num_train` records, its batch fitting the subset."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.data.train_fraction = float(fraction)
    n = label_fraction.subset_size(num_train, fraction)
    devices = sharding.make_mesh().devices.size
    c.batch_size = max(devices, min(int(c.batch_size), n // devices * devices))
    return c


def fraction_dir(workdir: str, name: str, fraction: float) -> str:
    return os.path.join(workdir, name, f'frac{100 * fraction:g}')


def run_sweep(config, workdir: str, encoders: dict, fractions: list, task: str,
              seeds: int) -> dict:
    """Every encoder x fraction x seed; returns {name: {fraction: run_all summary}}."""
    first = next(iter(encoders.values()))(task, 0)
    num_train = len(finetune_loop.load_task_data(config, task, first.config.fs).splits['train'])
    out = {}
    for name, resolver in encoders.items():
        for f in fractions:
            out.setdefault(name, {})[f] = finetune_runs.run_all(
                fraction_config(config, f, num_train), fraction_dir(workdir, name, f),
                encoder=resolver, tasks=[task], num_seeds=seeds)
    return out


def make_table(summaries: dict, workdir: str, task: str, protocol: str) -> dict:
    """Per encoder and fraction: AUC over seeds; per fraction: paired differences."""
    table = {'task': task, 'protocol': protocol, 'encoders': {}, 'paired': []}
    for name, by_fraction in summaries.items():
        rows = []
        for f, s in by_fraction.items():
            auc = s['tasks'][task]['test_macro_auc']
            rows.append({'fraction': f, 'mean': auc['mean'], 'std': auc['std'],
                         'min': min(auc['values']), 'max': max(auc['values']),
                         'runs': s['tasks'][task]['runs'],
                         'train_records': s['tasks'][task]['data']['train']['records']})
        table['encoders'][name] = rows
    names = list(summaries)
    for f in summaries[names[0]]:
        res = compare.compare_runs(fraction_dir(workdir, names[0], f),
                                   fraction_dir(workdir, names[1], f))
        table['paired'].append({'fraction': f, 'mean_diff': res['mean_diff'],
                                'pairs': [{k: p[k] for k in ('seed', 'auc_a', 'auc_b', 'diff',
                                                             'ci_low', 'ci_high', 'p_value')}
                                          for p in res['pairs']]})
    return table


def print_table(table: dict) -> None:
    names = list(table['encoders'])
    print(f'{table["task"]} ({table["protocol"]}): test macro AUC, mean over seeds '
          f'[min, max]; paired {names[0]} - {names[1]} per seed (95% CI)')
    for i, p in enumerate(table['paired']):
        cells = [f'{r["mean"]:.4f} [{r["min"]:.4f}, {r["max"]:.4f}]'
                 for r in (table['encoders'][n][i] for n in names)]
        diffs = ', '.join(f'{d["diff"]:+.4f} [{d["ci_low"]:+.4f}, {d["ci_high"]:+.4f}]'
                          for d in p['pairs'])
        records = table['encoders'][names[0]][i]['train_records']
        print(f'  {100 * p["fraction"]:>5g}% ({records} records): {names[0]} {cells[0]}, '
              f'{names[1]} {cells[1]}; diff {diffs}')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError('Too many command-line arguments.', exitcode=2)
    console.quiet_library_logs()
    sharding.hide_accelerators_from_tensorflow()
    config = FLAGS.config
    try:
        fractions = sorted(float(f) for f in FLAGS.fractions)
        for f in fractions:
            label_fraction.subset_size(100, f)
        pre = resolve.make_resolver(FLAGS.encoder, config)
        baseline = FLAGS.baseline or f'random:{pre(FLAGS.task, 0).config.variant}'
        if baseline.startswith(resolve.RANDOM_PREFIX):
            with config.unlocked():
                config.model.fs = pre(FLAGS.task, 0).config.fs
        encoders = {'pretrained': pre, 'baseline': resolve.make_resolver(baseline, config)}
    except ValueError as e:
        raise app.UsageError(str(e), exitcode=2) from None
    with console.run_errors(None):
        summaries = run_sweep(config, FLAGS.workdir, encoders, fractions, FLAGS.task,
                              FLAGS.seeds)
    table = make_table(summaries, FLAGS.workdir, FLAGS.task, config.protocol)
    table.update({'encoder': FLAGS.encoder, 'baseline': baseline})
    with open(os.path.join(FLAGS.workdir, TABLE_FILE), 'w') as f:
        json.dump(table, f, indent=2)
    if config.plots:
        curve_plots.plot_label_efficiency(table, os.path.join(FLAGS.workdir, PLOT_FILE))
    print_table(table)
    print(f'table: {os.path.join(FLAGS.workdir, TABLE_FILE)}')


if __name__ == '__main__':
    app.run(main)
