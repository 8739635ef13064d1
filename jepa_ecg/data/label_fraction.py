"""Label efficiency: a label-stratified fraction of a task's train folds.

The field reports the value of pre-training by training the downstream
classifier on 1 % / 10 % / 100 % of the training labels (MERL's protocol).
`stratified_subset` picks such a subset of multi-hot labelled records:

1. coverage: every class with a positive record gets one in the subset
   (rarest class first; the record chosen covers the most still-missing
   classes), as long as the subset size allows;
2. stratification: the remaining places go one at a time to a record of
   the class furthest below its share (`fraction` x positives), the first
   in a random order drawn from `seed` that over-fills no class (so labels
   keep co-occurring as they do in the full split).

The subset has exactly `round(fraction * N)` records (at least 1), is a
pure function of (targets, fraction, seed), and its per-class positive
counts stay within a few records (or ~15 %) of `fraction` x positives. The lead
statistics of the task are not touched: they need no labels.
"""

from __future__ import annotations

import copy

import numpy as np
from absl import logging

from jepa_ecg.data.ptbxl import PtbxlTask, Split


def subset_size(num_records: int, fraction: float) -> int:
    """Records in a `fraction` subset of `num_records` (at least 1)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f'train_fraction={fraction}: must be in (0, 1]')
    return max(1, min(num_records, int(round(fraction * num_records))))


def _cover_classes(y: np.ndarray, order: np.ndarray, size: int) -> list[int]:
    """Records (rarest class first) giving every class a positive, at most `size`."""
    chosen: list[int] = []
    covered = np.zeros(y.shape[1], bool)
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    for c in np.argsort(y.sum(axis=0), kind='stable'):
        if covered[c] or not y[:, c].any() or len(chosen) >= size:
            continue
        candidates = np.flatnonzero(y[:, c])
        gain = (y[candidates] & ~covered).sum(axis=1)
        # Most newly covered classes first, then the seed's random order.
        best = candidates[np.lexsort((rank[candidates], -gain))[0]]
        chosen.append(int(best))
        covered |= y[best]
    return chosen


def stratified_subset(targets: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a label-stratified `fraction` of the records.

    Args:
      targets: (N, C) multi-hot (or one-hot) labels.
      fraction: in (0, 1]; 1 keeps every record.
      seed: the subset is a pure function of (targets, fraction, seed).

    Returns:
      (round(fraction * N),) sorted int64 indices into the records.
    """
    y = np.asarray(targets).astype(bool)
    n = y.shape[0]
    size = subset_size(n, fraction)
    if size == n:
        return np.arange(n, dtype=np.int64)
    order = np.random.default_rng([int(seed), 0x1AB]).permutation(n)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    selected = np.zeros(n, bool)
    selected[_cover_classes(y, order, size)] = True
    wanted = fraction * y.sum(axis=0).astype(np.float64)
    have = y[selected].sum(axis=0).astype(np.float64)
    while selected.sum() < size:
        free = ~selected
        candidates = y[free].any(axis=0)
        if not candidates.any():  # only unlabelled records left
            pick = np.flatnonzero(free)[np.argmin(rank[free])]
        else:
            # The class furthest below its share; a random record of it (which
            # keeps the co-occurrence of labels), avoiding over-filled classes.
            with np.errstate(divide='ignore', invalid='ignore'):
                deficit = np.where(wanted > 0, (wanted - have) / wanted, -np.inf)
            c = int(np.argmax(np.where(candidates, deficit, -np.inf)))
            pool = free & y[:, c]
            calm = pool & ~y[:, have - wanted >= 1.0].any(axis=1)
            pool = calm if calm.any() else pool
            pick = np.flatnonzero(pool)[np.argmin(rank[pool])]
        selected[pick] = True
        have += y[pick]
    return np.flatnonzero(selected).astype(np.int64)


def subsample_split(split: Split, fraction: float, seed: int) -> Split:
    """The `stratified_subset` of a Split (its rows, targets and ids)."""
    keep = stratified_subset(split.targets, fraction, seed)
    return Split(split.rows[keep], split.targets[keep], split.ecg_ids[keep])


def with_train_fraction(task: PtbxlTask, fraction: float, seed: int) -> PtbxlTask:
    """A view of `task` whose train split is a label-stratified `fraction` of it.

    Validation and test splits, classes and lead statistics are unchanged;
    `fraction` = 1 returns `task` itself.

    Args:
      task: the full task.
      fraction: share of the train records kept, in (0, 1].
      seed: fixes the subset (the run's seed).

    Returns:
      PtbxlTask with attributes `train_fraction` and `train_subset_seed`.
    """
    subset_size(len(task.splits['train']), fraction)  # checks the range
    if fraction >= 1.0:
        return task
    out = copy.copy(task)
    out.splits = dict(task.splits)
    out.splits['train'] = train = subsample_split(task.splits['train'], fraction, seed)
    out.train_fraction, out.train_subset_seed = float(fraction), int(seed)
    missing = [name for name, p in zip(task.classes, train.targets.sum(axis=0)) if p == 0]
    if missing:
        logging.warning('train_fraction %g keeps %d records: no positive of %s', fraction,
                        len(train), missing)
    return out


def describe(task: PtbxlTask) -> dict:
    """What results.json records about the train subset of `task`."""
    train = task.splits['train']
    return {'fraction': float(getattr(task, 'train_fraction', 1.0)),
            'subset_seed': getattr(task, 'train_subset_seed', None),
            'records': len(train),
            'ecg_ids': train.ecg_ids.tolist() if hasattr(task, 'train_fraction') else None}
