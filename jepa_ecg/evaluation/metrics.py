"""Classification metrics with bootstrap confidence intervals, in numpy.

ROC AUC is the Mann-Whitney statistic with ties counted one half, which is
what sklearn's `roc_auc_score` computes; average precision follows
sklearn's `average_precision_score` (step-wise, no interpolation).

The bootstrap resamples RECORDS with replacement. A resample is written as a
vector of multiplicities (how often each record was drawn), which turns the
AUC of a resample into weighted sums over the scores sorted once per class:
O(records) per resample instead of a sort. Resamples in which some scored
class has no positive (or no negative) record are redrawn, as AUC is
undefined there.
"""

from __future__ import annotations

from typing import Mapping, Sequence, Union

import numpy as np

DEFAULT_RESAMPLES = 1000


# One predictor's (N, C) scores, or several (probes of one encoder: their mean is scored).
Scores = Union[np.ndarray, Sequence[np.ndarray]]


def _check(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, np.float64)
    if y_true.ndim == 1:
        y_true, y_score = y_true[:, None], y_score[:, None]
    if y_true.shape != y_score.shape:
        raise ValueError(f'targets {y_true.shape} and scores {y_score.shape} differ in shape')
    return y_true.astype(bool), y_score


def scorable_classes(y_true: np.ndarray) -> np.ndarray:
    """Indices of classes with at least one positive and one negative record."""
    y_true = np.asarray(y_true).astype(bool)
    if y_true.ndim == 1:
        y_true = y_true[:, None]
    pos = y_true.sum(axis=0)
    return np.flatnonzero((pos > 0) & (pos < y_true.shape[0]))


class _SortedClass:
    """One class's scores sorted and grouped by tied value (for weighted AUC)."""

    def __init__(self, y: np.ndarray, s: np.ndarray):
        order = np.argsort(s, kind='mergesort')
        self.order = order
        s_sorted = s[order]
        self.group_starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
        self.pos_sorted = y[order].astype(np.float64)

    def auc(self, weights: np.ndarray) -> np.ndarray:
        """AUC under record multiplicities `weights` (R, N) -> (R,)."""
        w = weights[:, self.order]
        wp = w * self.pos_sorted
        wn = w - wp
        # Weighted positives/negatives per group of tied scores.
        gp = np.add.reduceat(wp, self.group_starts, axis=1)
        gn = np.add.reduceat(wn, self.group_starts, axis=1)
        below = np.cumsum(gn, axis=1) - gn  # negatives strictly below each group
        num = (gp * (below + 0.5 * gn)).sum(axis=1)
        den = gp.sum(axis=1) * gn.sum(axis=1)
        with np.errstate(invalid='ignore', divide='ignore'):
            return num / den


def roc_auc_per_class(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """ROC AUC of every class column; NaN where a class has one kind of record only.

    Args:
      y_true: (N, C) or (N,) binary targets.
      y_score: scores of the same shape.

    Returns:
      (C,) float64 AUCs.
    """
    y_true, y_score = _check(y_true, y_score)
    ones = np.ones((1, y_true.shape[0]))
    out = np.full(y_true.shape[1], np.nan)
    for c in scorable_classes(y_true):
        out[c] = _SortedClass(y_true[:, c], y_score[:, c]).auc(ones)[0]
    return out


def macro_roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Mean ROC AUC over the classes that have positives and negatives.

    Equals sklearn's `roc_auc_score(y_true, y_score, average='macro')` when
    every class is scorable (sklearn raises otherwise).
    """
    return float(np.nanmean(roc_auc_per_class(y_true, y_score)))


def average_precision_per_class(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """Average precision (area under the step-wise precision-recall curve) per class.

    AP = sum_k (R_k - R_{k-1}) P_k over the distinct score thresholds in
    decreasing order, as sklearn's `average_precision_score`. NaN for classes
    without positives.

    Returns:
      (C,) float64.
    """
    y_true, y_score = _check(y_true, y_score)
    out = np.full(y_true.shape[1], np.nan)
    for c in range(y_true.shape[1]):
        y, s = y_true[:, c], y_score[:, c]
        n_pos = y.sum()
        if n_pos == 0:
            continue
        order = np.argsort(-s, kind='mergesort')
        s_sorted, y_sorted = s[order], y[order]
        # Thresholds at the last index of each run of tied scores.
        last = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), len(s) - 1]
        tp = np.cumsum(y_sorted)[last]
        fp = (last + 1) - tp
        precision = tp / (tp + fp)
        recall = tp / n_pos
        out[c] = np.sum(np.diff(np.r_[0.0, recall]) * precision)
    return out


def macro_average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Mean average precision over classes with positives (macro AUPRC)."""
    return float(np.nanmean(average_precision_per_class(y_true, y_score)))


def roc_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates over decreasing thresholds, from (0, 0) to (1, 1)."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(s, np.float64)
    order = np.argsort(-s, kind='mergesort')
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), len(s) - 1]
    tp = np.cumsum(y_sorted)[last]
    fp = (last + 1) - tp
    return (np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)])


def bootstrap_weights(y_true: np.ndarray, num_resamples: int, rng: np.random.Generator,
                      classes: np.ndarray | None = None, max_tries: int = 1000) -> np.ndarray:
    """Record multiplicities of `num_resamples` bootstrap resamples.

    A resample draws len(y_true) records with replacement; resamples in which
    one of `classes` has no positive or no negative record are redrawn.

    Args:
      y_true: (N, C) binary targets.
      num_resamples: R.
      rng: numpy Generator.
      classes: the classes that must stay scorable (default: all scorable).
      max_tries: give up after this many redraw rounds.

    Returns:
      (R, N) float64 multiplicities (each row sums to N).
    """
    y_true = np.asarray(y_true).astype(bool)
    if y_true.ndim == 1:
        y_true = y_true[:, None]
    n = y_true.shape[0]
    classes = scorable_classes(y_true) if classes is None else np.asarray(classes)
    y = y_true[:, classes].astype(np.float64)
    out = np.empty((num_resamples, n))
    todo = np.arange(num_resamples)
    for _ in range(max_tries):
        idx = rng.integers(0, n, size=(len(todo), n))
        flat = (np.arange(len(todo))[:, None] * n + idx).ravel()
        w = np.bincount(flat, minlength=len(todo) * n).reshape(len(todo), n).astype(np.float64)
        pos = w @ y
        ok = ((pos > 0) & (pos < n)).all(axis=1)
        out[todo[ok]] = w[ok]
        todo = todo[~ok]
        if not len(todo):
            return out
    raise RuntimeError('could not draw bootstrap resamples with every class present; '
                       'too few positive records')


def bootstrap_macro_auc(y_true: np.ndarray, y_score: np.ndarray, weights: np.ndarray,
                        classes: np.ndarray | None = None) -> np.ndarray:
    """Macro AUC of every resample: (R,) for multiplicities `weights` (R, N)."""
    y_true, y_score = _check(y_true, y_score)
    classes = scorable_classes(y_true) if classes is None else np.asarray(classes)
    total = np.zeros(weights.shape[0])
    for c in classes:
        total += _SortedClass(y_true[:, c], y_score[:, c]).auc(weights)
    return total / len(classes)


def percentile_interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The central `confidence` interval of bootstrap samples (percentile method)."""
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.percentile(np.asarray(samples), [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def auc_with_ci(y_true: np.ndarray, y_score: Scores, *,
                num_resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95,
                seed: int = 0) -> dict:
    """Macro AUC with a bootstrap confidence interval over records.

    Args:
      y_true: (N, C) binary targets.
      y_score: (N, C) scores, or a list of them (several probes of one
        encoder: the statistic is their mean macro AUC).
      num_resamples: bootstrap resamples.
      confidence: interval coverage.
      seed: resampling seed.

    Returns:
      {'auc', 'ci_low', 'ci_high', 'bootstrap_std', 'num_resamples', 'confidence'}.
    """
    y_true, scores = _check_group(y_true, y_score)
    classes = scorable_classes(y_true)
    weights = bootstrap_weights(y_true, num_resamples, np.random.default_rng(seed), classes)
    samples = _mean_bootstrap_auc(y_true, scores, weights, classes)
    lo, hi = percentile_interval(samples, confidence)
    return {'auc': _mean_auc(y_true, scores), 'ci_low': lo, 'ci_high': hi,
            'bootstrap_std': float(samples.std()), 'num_resamples': int(num_resamples),
            'confidence': float(confidence)}


def paired_bootstrap(y_true: np.ndarray, score_a: Scores, score_b: Scores, *,
                     num_resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95,
                     seed: int = 0) -> dict:
    """Difference of macro AUC (a - b) of two predictors on the same records.

    Both predictors are scored on the SAME resamples, so the interval of the
    difference accounts for their correlation.

    Args:
      y_true: (N, C) binary targets shared by both.
      score_a: (N, C) scores of run a, or a list of them (several probes of
        one encoder: a's statistic is their mean macro AUC).
      score_b: the same for run b.
      num_resamples: bootstrap resamples.
      confidence: interval coverage.
      seed: resampling seed.

    Returns:
      {'auc_a', 'auc_b', 'diff', 'ci_low', 'ci_high', 'p_value'} where p_value
      is the two-sided bootstrap p-value of "no difference".
    """
    y_true, group_a = _check_group(y_true, score_a)
    _, group_b = _check_group(y_true, score_b)
    classes = scorable_classes(y_true)
    weights = bootstrap_weights(y_true, num_resamples, np.random.default_rng(seed), classes)
    diff = (_mean_bootstrap_auc(y_true, group_a, weights, classes)
            - _mean_bootstrap_auc(y_true, group_b, weights, classes))
    lo, hi = percentile_interval(diff, confidence)
    auc_a, auc_b = _mean_auc(y_true, group_a), _mean_auc(y_true, group_b)
    p = 2.0 * min((diff <= 0).mean(), (diff >= 0).mean())
    return {'auc_a': auc_a, 'auc_b': auc_b, 'diff': auc_a - auc_b, 'ci_low': lo, 'ci_high': hi,
            'p_value': float(min(1.0, p)), 'num_resamples': int(num_resamples),
            'confidence': float(confidence)}


def _check_group(y_true: np.ndarray, scores: Scores) -> tuple[np.ndarray, list[np.ndarray]]:
    """One score array or a list of them -> (targets, [scores...]), shapes checked."""
    several = isinstance(scores, (list, tuple)) and all(isinstance(s, np.ndarray) for s in scores)
    group = list(scores) if several else [scores]
    if not group:
        raise ValueError('no scores to evaluate')
    checked = [_check(y_true, s) for s in group]
    return checked[0][0], [s for _, s in checked]


def _mean_auc(y_true: np.ndarray, group: list[np.ndarray]) -> float:
    return float(np.mean([macro_roc_auc(y_true, s) for s in group]))


def _mean_bootstrap_auc(y_true: np.ndarray, group: list[np.ndarray], weights: np.ndarray,
                        classes: np.ndarray) -> np.ndarray:
    return np.mean([bootstrap_macro_auc(y_true, s, weights, classes) for s in group], axis=0)


def classification_report(y_true: np.ndarray, y_score: np.ndarray, classes: Sequence[str], *,
                          num_resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95,
                          seed: int = 0) -> dict:
    """Everything results.json says about one set of predictions.

    Returns:
      {'macro_auc', 'macro_auc_ci': [lo, hi], 'bootstrap_std', 'macro_auprc',
       'num_records', 'per_class': [{'class', 'auc', 'auprc', 'positives'}],
       'unscored_classes'}.
    """
    y_true, y_score = _check(y_true, y_score)
    ci = auc_with_ci(y_true, y_score, num_resamples=num_resamples, confidence=confidence,
                     seed=seed)
    aucs = roc_auc_per_class(y_true, y_score)
    aps = average_precision_per_class(y_true, y_score)
    pos = y_true.sum(axis=0)
    return {
        'macro_auc': ci['auc'],
        'macro_auc_ci': [ci['ci_low'], ci['ci_high']],
        'confidence': confidence,
        'bootstrap_std': ci['bootstrap_std'],
        'num_resamples': num_resamples,
        'macro_auprc': macro_average_precision(y_true, y_score),
        'num_records': int(y_true.shape[0]),
        'per_class': [{'class': name, 'auc': _none_if_nan(a), 'auprc': _none_if_nan(p),
                       'positives': int(n)}
                      for name, a, p, n in zip(classes, aucs, aps, pos)],
        'unscored_classes': [name for name, a in zip(classes, aucs) if np.isnan(a)],
    }


def _none_if_nan(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def mean_std(values: Sequence[float]) -> dict:
    """{'mean', 'std', 'n', 'values'} of per-seed numbers (std with ddof=0, as numpy)."""
    v = np.asarray(list(values), np.float64)
    return {'mean': float(v.mean()), 'std': float(v.std()), 'n': int(len(v)),
            'values': v.tolist()}


def summarize_seeds(reports: Sequence[Mapping]) -> dict:
    """Mean and std over seeds of test macro AUC / AUPRC and best validation AUC."""
    return {
        'test_macro_auc': mean_std([r['test']['macro_auc'] for r in reports]),
        'test_macro_auprc': mean_std([r['test']['macro_auprc'] for r in reports]),
        'best_val_auc': mean_std([r['best_val_auc'] for r in reports]),
    }
