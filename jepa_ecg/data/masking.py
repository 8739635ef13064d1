"""1D multi-block masks over the patch sequence, vectorised over the batch.

One batch shares a keep count (the keep ratio is drawn per batch), so the
context encoder sees the same number of tokens for every sample. Each sample
masks `num_patches - num_keep` patches as contiguous blocks of at least
`min_block_size` patches: a block of random size is placed at a random
position inside a still-unmasked interval chosen with probability
proportional to its length; when the remainder is too small to stand alone
it is attached to the edge of an existing block, and an interval no larger
than the block drawn for it is masked whole.

All samples of a batch run the same placement loop in lockstep on arrays,
which is what makes this cheap enough to run for every record.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np


def sample_num_keep(rng: np.random.Generator, num_patches: int,
                    keep_ratio_range: Tuple[float, float] = (0.15, 0.25)) -> int:
    """Draws the per-batch number of kept patches, ceil(U(lo, hi) * N)."""
    lo, hi = keep_ratio_range
    ratio = rng.uniform(lo, hi)
    return int(min(num_patches, max(1, math.ceil(ratio * num_patches))))


def _randint(rng: np.random.Generator, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Uniform integers in [low, high] (inclusive), elementwise."""
    span = np.maximum(high - low + 1, 1)
    return low + np.minimum((rng.random(low.shape) * span).astype(np.int64), span - 1)


def sample_block_masks(rng: np.random.Generator, batch_size: int, num_patches: int,
                       num_keep: int, min_block_size: int = 10) -> np.ndarray:
    """Samples one block mask per sample.

    Args:
      rng: numpy Generator (its state advances).
      batch_size: number of masks.
      num_patches: patches per record (N).
      num_keep: patches left visible to the context encoder, same for all.
      min_block_size: smallest block a placement may create.

    Returns:
      bool array (batch_size, num_patches), True where a patch is masked
      (to be predicted). Every row has exactly `num_patches - num_keep` Trues.
    """
    if not 0 < num_keep <= num_patches:
        raise ValueError(f'num_keep={num_keep} must be in [1, {num_patches}]')
    num_mask = num_patches - num_keep
    b = batch_size
    rows = np.arange(b)
    # Unmasked intervals [start, end); an emptied interval has start == end.
    cap = num_patches + 2
    starts = np.zeros((b, cap), np.int64)
    ends = np.zeros((b, cap), np.int64)
    ends[:, 0] = num_patches
    count = np.ones(b, np.int64)
    masked_total = np.zeros(b, np.int64)

    while True:
        active = masked_total < num_mask
        if not active.any():
            break
        sizes = ends - starts
        # Choose an interval with probability proportional to its length.
        cum = np.cumsum(sizes, axis=1)
        u = rng.random(b) * cum[:, -1]
        idx = np.minimum((cum <= u[:, None]).sum(axis=1), cap - 1)
        start = starts[rows, idx]
        end = ends[rows, idx]
        size = end - start

        remaining = num_mask - masked_total
        big = remaining >= min_block_size
        block = np.where(big, _randint(rng, np.full(b, min_block_size), remaining),
                         remaining)

        swallow = active & (size <= block)
        place = active & ~swallow

        # Position of the block inside the interval.
        free_pos = _randint(rng, start, end - block)
        can_left = start > 0
        can_right = end < num_patches
        pick_right = np.where(can_left & can_right, rng.random(b) < 0.5, can_right)
        attach_pos = np.where(pick_right, end - block, start)
        attach_pos = np.where(can_left | can_right, attach_pos, free_pos)
        pos = np.where(big, free_pos, attach_pos)

        # Swallowed intervals vanish; placed blocks split theirs in two.
        new_end = np.where(swallow, start, np.where(place, pos, end))
        ends[rows, idx] = new_end
        tail = count
        starts[rows[place], tail[place]] = (pos + block)[place]
        ends[rows[place], tail[place]] = end[place]
        count = count + place
        masked_total = masked_total + np.where(swallow, size, 0) + np.where(place, block, 0)

    # Patches inside a remaining interval are kept.
    # Patches inside a remaining interval are kept: +1 at each start, -1 at
    # each end, and a running sum marks the inside (empty intervals cancel).
    edges = np.zeros((b, num_patches + 1), np.int64)
    np.add.at(edges, (np.repeat(rows, cap), starts.ravel()), 1)
    np.add.at(edges, (np.repeat(rows, cap), ends.ravel()), -1)
    kept = np.cumsum(edges, axis=1)[:, :num_patches] > 0
    return ~kept


def bucketed_length(num_keep: int, num_patches: int, bucket: int) -> int:
    """Padded length for `num_keep` kept tokens; 0 buckets to `num_patches`.

    Rounding the token count up to a multiple of `bucket` bounds how many
    shapes the jitted step sees: with N=200, keep ratio in [0.15, 0.25] and
    bucket 10 there are at most three (30, 40, 50).
    """
    if bucket <= 0:
        return num_patches
    return int(min(num_patches, math.ceil(num_keep / bucket) * bucket))


def keep_indices(masked: np.ndarray, bucket: int = 10) -> Tuple[np.ndarray, np.ndarray]:
    """Sorted indices of kept patches, padded to a bucketed length.

    Args:
      masked: bool (B, N), True where masked; every row keeps the same count.
      bucket: pad the kept count up to a multiple of this (0: pad to N).

    Returns:
      keep_idx: int32 (B, K_pad), ascending kept patch indices, then padding
        (which repeats index 0 and must be ignored).
      keep_valid: bool (B, K_pad), False on padding.
    """
    b, n = masked.shape
    num_keep = n - masked.sum(axis=1)
    if not (num_keep == num_keep[0]).all():
        raise ValueError('every sample of a batch must keep the same number of patches')
    k = int(num_keep[0])
    k_pad = bucketed_length(k, n, bucket)
    # Stable sort puts kept (False) patches first, in ascending order.
    order = np.argsort(masked, axis=1, kind='stable')[:, :k].astype(np.int32)
    keep_idx = np.zeros((b, k_pad), np.int32)
    keep_idx[:, :k] = order
    keep_valid = np.zeros((b, k_pad), bool)
    keep_valid[:, :k] = True
    return keep_idx, keep_valid


def sample_batch_masks(rng: np.random.Generator, batch_size: int, num_patches: int,
                       keep_ratio_range: Tuple[float, float] = (0.15, 0.25),
                       min_block_size: int = 10, bucket: int = 10,
                       num_keep: int | None = None) -> dict:
    """Masks for one batch in the form the train step takes.

    Args:
      rng: numpy Generator for the per-sample block placement.
      batch_size: local batch size.
      num_patches: patches per record.
      keep_ratio_range: range of the per-batch keep ratio.
      min_block_size: smallest masked block.
      bucket: kept-token padding multiple (see `bucketed_length`).
      num_keep: the batch's keep count; pass it when several processes
        must agree on it (draw it from a generator seeded by the step only).

    Returns:
      dict with `keep_idx` int32 (B, K_pad), `keep_valid` bool (B, K_pad) and
      `predict_mask` bool (B, N) (True = masked, predicted).
    """
    if num_keep is None:
        num_keep = sample_num_keep(rng, num_patches, keep_ratio_range)
    masked = sample_block_masks(rng, batch_size, num_patches, num_keep, min_block_size)
    keep_idx, keep_valid = keep_indices(masked, bucket)
    return {'keep_idx': keep_idx, 'keep_valid': keep_valid, 'predict_mask': masked}
