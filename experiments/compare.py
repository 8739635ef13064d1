r"""Paired bootstrap comparison of two fine-tuning runs on the same test records.

  python -m experiments.compare --a=runs/jepa_ft/all/seed0 --b=runs/random_ft/all/seed0

`--a`/`--b` are run folders (holding predictions.npz) or predictions.npz
files. Both runs are scored on the SAME bootstrap resamples of the records,
so the interval of the macro-AUC difference (a - b) accounts for the
correlation between the two predictors. Prints the difference with its
confidence interval and a two-sided bootstrap p-value; `--out` also writes
them as JSON.
"""

import json
import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string('a', None, 'Run folder or predictions.npz of run a.')
flags.DEFINE_string('b', None, 'Run folder or predictions.npz of run b.')
flags.DEFINE_enum('split', 'test', ['test', 'val'], 'Which predictions to compare.')
flags.DEFINE_integer('num_resamples', 1000, 'Bootstrap resamples.')
flags.DEFINE_float('confidence', 0.95, 'Interval coverage.')
flags.DEFINE_integer('seed', 0, 'Resampling seed.')
flags.DEFINE_string('out', None, 'Optional JSON output path.')
flags.mark_flags_as_required(['a', 'b'])


def load_predictions(path: str, split: str = 'test') -> dict:
    """Targets, probabilities, record ids and classes of one run's predictions.npz.

    Args:
      path: a run folder or its predictions.npz.
      split: 'test' or 'val'.

    Returns:
      {'targets', 'predictions', 'ecg_ids', 'classes'} numpy arrays.
    """
    import numpy as np
    from jepa_ecg.training.checkpoint import PREDICTIONS_FILE
    if os.path.isdir(path):
        path = os.path.join(path, PREDICTIONS_FILE)
    with np.load(path) as f:
        return {'targets': f[f'{split}_targets'], 'predictions': f[f'{split}_predictions'],
                'ecg_ids': f[f'{split}_ecg_ids'], 'classes': f['classes']}


def compare(a: dict, b: dict, *, num_resamples: int, confidence: float, seed: int) -> dict:
    """Paired bootstrap of two prediction sets after checking they score the same records.

    Args:
      a: load_predictions output of run a.
      b: load_predictions output of run b.
      num_resamples: bootstrap resamples.
      confidence: interval coverage.
      seed: resampling seed.

    Returns:
      metrics.paired_bootstrap's dict plus the number of records.
    """
    import numpy as np
    from jepa_ecg.evaluation import metrics
    if not np.array_equal(a['ecg_ids'], b['ecg_ids']):
        raise ValueError('the two runs scored different records')
    if not np.array_equal(a['classes'], b['classes']) or \
            not np.array_equal(a['targets'], b['targets']):
        raise ValueError('the two runs have different classes or targets (different tasks?)')
    out = metrics.paired_bootstrap(a['targets'], a['predictions'], b['predictions'],
                                   num_resamples=num_resamples, confidence=confidence, seed=seed)
    out['num_records'] = int(len(a['ecg_ids']))
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError('Too many command-line arguments.')
    a, b = load_predictions(FLAGS.a, FLAGS.split), load_predictions(FLAGS.b, FLAGS.split)
    result = compare(a, b, num_resamples=FLAGS.num_resamples, confidence=FLAGS.confidence,
                     seed=FLAGS.seed)
    result.update({'a': FLAGS.a, 'b': FLAGS.b, 'split': FLAGS.split})
    pct = int(round(100 * FLAGS.confidence))
    print(f'{FLAGS.split} macro AUC: a {result["auc_a"]:.4f}, b {result["auc_b"]:.4f}; '
          f'a - b = {result["diff"]:+.4f} ({pct}% CI {result["ci_low"]:+.4f} to '
          f'{result["ci_high"]:+.4f}, p = {result["p_value"]:.3f}, '
          f'{result["num_records"]} records, {result["num_resamples"]} resamples)')
    if FLAGS.out:
        with open(FLAGS.out, 'w') as f:
            json.dump(result, f, indent=2)


if __name__ == '__main__':
    app.run(main)
