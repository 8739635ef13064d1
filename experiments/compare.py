r"""Paired bootstrap comparison of two fine-tuning runs on the same test records.

  python -m experiments.compare --a=runs/jepa_linear --b=runs/random_linear
  python -m experiments.compare --a=runs/jepa_ft/all/seed0 --b=runs/random_ft/all/seed0

`--a`/`--b` are what `experiments.finetune` writes: a workdir (holding
`<task>/seed<k>/predictions.npz`), one run folder (holding predictions.npz)
or a predictions.npz file. Two workdirs are paired by task and seed (the
pairs both hold); a single run is paired with the other side's only run.
Both runs of a pair are scored on the SAME bootstrap resamples of the
records, so the interval of the macro-AUC difference (a - b) accounts for
the correlation between the two predictors. Prints every pair's difference
with its confidence interval and a two-sided bootstrap p-value (and the
mean difference over pairs); `--out` also writes them as JSON.
"""

import json
import os
import sys

import numpy as np
from absl import app, flags

from jepa_ecg.evaluation import metrics
from jepa_ecg.training.checkpoint import PREDICTIONS_FILE

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined only when it runs (other scripts import
    this module's functions and have flags of their own)."""
    flags.DEFINE_string('a', None, 'Run folder or predictions.npz of run a.')
    flags.DEFINE_string('b', None, 'Run folder or predictions.npz of run b.')
    flags.DEFINE_enum('split', 'test', ['test', 'val'], 'Which predictions to compare.')
    flags.DEFINE_integer('num_resamples', 1000, 'Bootstrap resamples.')
    flags.DEFINE_float('confidence', 0.95, 'Interval coverage.')
    flags.DEFINE_integer('seed', 0, 'Resampling seed.')
    flags.DEFINE_string('out', None, 'Optional JSON output path.')


def load_predictions(path: str, split: str = 'test') -> dict:
    """Targets, probabilities, record ids and classes of one run's predictions.npz.

    Args:
      path: a run folder or its predictions.npz.
      split: 'test' or 'val'.

    Returns:
      {'targets', 'predictions', 'ecg_ids', 'classes'} numpy arrays.
    """
    if os.path.isdir(path):
        path = os.path.join(path, PREDICTIONS_FILE)
    with np.load(path) as f:
        return {'targets': f[f'{split}_targets'], 'predictions': f[f'{split}_predictions'],
                'ecg_ids': f[f'{split}_ecg_ids'], 'classes': f['classes']}


def compare(a: dict | list[dict], b: dict | list[dict], *, num_resamples: int,
            confidence: float, seed: int) -> dict:
    """Paired bootstrap of two prediction sets after checking they score the same records.

    Args:
      a: load_predictions output of run a, or a list of them (several probes
        of one encoder: a's statistic is their mean macro AUC).
      b: the same for run b.
      num_resamples: bootstrap resamples.
      confidence: interval coverage.
      seed: resampling seed.

    Returns:
      metrics.paired_bootstrap's dict plus the number of records.
    """
    group_a, group_b = (x if isinstance(x, list) else [x] for x in (a, b))
    first = group_a[0]
    for other in group_a[1:] + group_b:
        if not np.array_equal(first['ecg_ids'], other['ecg_ids']):
            raise ValueError('the two runs scored different records')
        if not np.array_equal(first['classes'], other['classes']) or \
                not np.array_equal(first['targets'], other['targets']):
            raise ValueError('the two runs have different classes or targets (different tasks?)')
    out = metrics.paired_bootstrap(first['targets'], [x['predictions'] for x in group_a],
                                   [x['predictions'] for x in group_b],
                                   num_resamples=num_resamples, confidence=confidence, seed=seed)
    out['num_records'] = int(len(first['ecg_ids']))
    return out


class RunFolderError(ValueError):
    """A --a/--b path that holds no fine-tuning predictions."""


def find_runs(path: str) -> dict:
    """The runs under `path`: {(task, 'seed<k>'): predictions.npz path}.

    Args:
      path: a predictions.npz file, a run folder holding one, or a
        fine-tuning workdir with `<task>/seed<k>/predictions.npz`.

    Returns:
      The runs found; a single run is keyed by its folder names.

    Raises:
      RunFolderError: nothing with predictions at `path`.
    """
    if os.path.isfile(path) and path.endswith('.npz'):
        return {_key(os.path.dirname(os.path.abspath(path))): path}
    if os.path.isfile(os.path.join(path, PREDICTIONS_FILE)):
        return {_key(os.path.abspath(path)): os.path.join(path, PREDICTIONS_FILE)}
    runs = {}
    if os.path.isdir(path):
        for task in sorted(os.listdir(path)):
            task_dir = os.path.join(path, task)
            for seed in sorted(os.listdir(task_dir)) if os.path.isdir(task_dir) else ():
                f = os.path.join(task_dir, seed, PREDICTIONS_FILE)
                if seed.startswith('seed') and os.path.isfile(f):
                    runs[(task, seed)] = f
    if not runs:
        what = 'no such file or folder' if not os.path.exists(path) else 'no predictions found'
        raise RunFolderError(
            f'{path}: {what}; expected a fine-tuning run folder holding {PREDICTIONS_FILE}, '
            f'a workdir of experiments.finetune (<task>/seed<k>/{PREDICTIONS_FILE}) or a '
            f'{PREDICTIONS_FILE} file (a run that has not finished has none yet)')
    return runs


def _key(run_dir: str) -> tuple:
    return os.path.basename(os.path.dirname(run_dir)), os.path.basename(run_dir)


def pair_runs(a: dict, b: dict) -> list:
    """[(key, a path, b path)] of the runs `a` and `b` share (by task and seed).

    A side with one run is paired with the other side's only run, whatever
    their names.

    Raises:
      RunFolderError: no pair.
    """
    if len(a) == 1 and len(b) == 1:
        (ka, pa), (_, pb) = next(iter(a.items())), next(iter(b.items()))
        return [(ka, pa, pb)]
    pairs = [(k, a[k], b[k]) for k in sorted(set(a) & set(b))]
    if not pairs:
        raise RunFolderError(f'no task/seed in common: a has {sorted(a)}, b has {sorted(b)}')
    return pairs


def compare_runs(path_a: str, path_b: str, *, split: str = 'test',
                 num_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Paired bootstrap of every task/seed pair of two run folders.

    Returns:
      {'pairs': [compare(...) + 'task', 'seed', 'a', 'b'], 'mean_diff',
       'split'}; `mean_diff` is the mean difference over pairs.
    """
    out = []
    for (task, seed_name), pa, pb in pair_runs(find_runs(path_a), find_runs(path_b)):
        r = compare(load_predictions(pa, split), load_predictions(pb, split),
                    num_resamples=num_resamples, confidence=confidence, seed=seed)
        out.append({'task': task, 'seed': seed_name, 'a': pa, 'b': pb, **r})
    return {'split': split, 'pairs': out,
            'mean_diff': float(np.mean([r['diff'] for r in out]))}


def format_pair(r: dict, confidence: float) -> str:
    """One line per pair: both AUCs, the difference with its CI and p."""
    pct = int(round(100 * confidence))
    return (f'{r["task"]} {r["seed"]}: macro AUC a {r["auc_a"]:.4f}, b {r["auc_b"]:.4f}; '
            f'a - b = {r["diff"]:+.4f} ({pct}% CI {r["ci_low"]:+.4f} to {r["ci_high"]:+.4f}, '
            f'p = {r["p_value"]:.3f}, {r["num_records"]} records)')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError('Too many command-line arguments.')
    try:
        result = compare_runs(FLAGS.a, FLAGS.b, split=FLAGS.split,
                              num_resamples=FLAGS.num_resamples, confidence=FLAGS.confidence,
                              seed=FLAGS.seed)
    except ValueError as e:  # RunFolderError, or runs that scored different records
        sys.exit(f'compare: {e}')
    result.update({'a': FLAGS.a, 'b': FLAGS.b})
    print(f'{FLAGS.split} split, a = {FLAGS.a}, b = {FLAGS.b} '
          f'({FLAGS.num_resamples} paired resamples):')
    for r in result['pairs']:
        print('  ' + format_pair(r, FLAGS.confidence))
    if len(result['pairs']) > 1:
        print(f'  mean a - b over {len(result["pairs"])} pairs: {result["mean_diff"]:+.4f}')
    if FLAGS.out:
        with open(FLAGS.out, 'w') as f:
            json.dump(result, f, indent=2)


if __name__ == '__main__':
    define_flags()
    flags.mark_flags_as_required(['a', 'b'])
    app.run(main)
