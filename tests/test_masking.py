"""Statistics of the 1D multi-block masks."""


import numpy as np
import pytest

from jepa_ecg.data import masking


def _runs(row):
    """Lengths of the runs of True in a bool row."""
    padded = np.concatenate([[False], row, [False]]).astype(np.int8)
    d = np.diff(padded)
    return np.nonzero(d == -1)[0] - np.nonzero(d == 1)[0]


def test_keep_count_distribution():
    rng = np.random.default_rng(0)
    ks = np.array([masking.sample_num_keep(rng, 200) for _ in range(5000)])
    assert ks.min() >= 30 and ks.max() <= 50
    # ceil(U(0.15, 0.25) * 200): 30 only when the ratio is exactly 0.15.
    assert abs(ks.mean() - 40.5) < 0.3
    assert set(np.unique(ks)) <= set(range(30, 51))


@pytest.mark.parametrize('num_keep', [30, 41, 50, 195])
def test_block_masks(num_keep):
    rng = np.random.default_rng(num_keep)
    n, b = 200, 512
    masked = masking.sample_block_masks(rng, b, n, num_keep, min_block_size=10)
    assert masked.shape == (b, n) and masked.dtype == bool
    np.testing.assert_array_equal(masked.sum(1), n - num_keep)
    lengths = np.concatenate([_runs(r) for r in masked])
    if n - num_keep >= 10:
        # Blocks never shorter than the minimum (remainders are attached).
        assert lengths.min() >= 10
    # Masks differ between samples and cover every position somewhere.
    if num_keep <= 50:
        assert len({r.tobytes() for r in masked}) > b * 0.9
        assert masked.any(0).all()


def test_kept_fraction_over_batches():
    rng = np.random.default_rng(1)
    fracs = []
    for _ in range(300):
        m = masking.sample_batch_masks(rng, 16, 200)
        valid = m['keep_valid']
        fracs.append(valid.sum(1).mean() / 200)
        # Kept and masked partition the patches.
        for i in range(16):
            kept = m['keep_idx'][i][valid[i]]
            assert not m['predict_mask'][i, kept].any()
            assert len(kept) + m['predict_mask'][i].sum() == 200
            assert (np.diff(kept) > 0).all()  # sorted, no duplicates
    fracs = np.array(fracs)
    assert 0.15 <= fracs.min() and fracs.max() <= 0.25 + 1 / 200
    assert abs(fracs.mean() - 0.2025) < 0.005


def test_remainder_attached_to_block_edge():
    # 200 - 175 = 25 masked: one block of >= 10 then a remainder < 10 attached.
    rng = np.random.default_rng(3)
    masked = masking.sample_block_masks(rng, 2000, 200, 175, 10)
    for row in masked:
        assert all(r >= 10 for r in _runs(row))


def test_bucketed_padding_bounds_shapes():
    rng = np.random.default_rng(2)
    shapes = {masking.sample_batch_masks(rng, 4, 200)['keep_idx'].shape[1] for _ in range(500)}
    assert shapes <= {30, 40, 50} and {40, 50} <= shapes
    assert masking.bucketed_length(41, 200, 0) == 200
    assert masking.bucketed_length(41, 200, 1) == 41


def _sequential_reference(rng, n, num_keep, min_block):
    """One mask by the placement rule, one block at a time (slow, obvious)."""
    intervals = [(0, n)]
    num_mask, done = n - num_keep, 0
    while done < num_mask:
        sizes = np.array([e - s for s, e in intervals], float)
        s, e = intervals.pop(rng.choice(len(intervals), p=sizes / sizes.sum()))
        remaining = num_mask - done
        block = rng.integers(min_block, remaining + 1) if remaining >= min_block else remaining
        if e - s <= block:
            done += e - s
            continue
        if remaining >= min_block:
            pos = rng.integers(s, e - block + 1)
        else:
            sides = [p for p, ok in ((s, s > 0), (e - block, e < n)) if ok]
            pos = sides[rng.integers(len(sides))]
        intervals += [(s, pos), (pos + block, e)]
        done += block
    masked = np.ones(n, bool)
    for s, e in intervals:
        masked[s:e] = False
    return masked


def test_matches_sequential_reference_statistics():
    n, keep, b = 200, 40, 3000
    fast = masking.sample_block_masks(np.random.default_rng(4), b, n, keep)
    rng = np.random.default_rng(5)
    slow = np.stack([_sequential_reference(rng, n, keep, 10) for _ in range(b)])
    np.testing.assert_array_equal(slow.sum(1), n - keep)
    # Per-position masking frequency (edges are masked less than the middle).
    np.testing.assert_allclose(fast.mean(0), slow.mean(0), atol=0.05)
    # Distribution of the number of blocks per mask.
    fb = np.array([len(_runs(r)) for r in fast])
    sb = np.array([len(_runs(r)) for r in slow])
    assert abs(fb.mean() - sb.mean()) < 0.1
    for k in range(1, 5):
        assert abs((fb == k).mean() - (sb == k).mean()) < 0.04


def test_vectorised_over_the_batch():
    # Not a timing assertion: the sampler's Python-level loop runs once per
    # placement round, not once per sample, so draws do not grow with batch size.
    class CountingRng:
        def __init__(self):
            self.rng, self.calls = np.random.default_rng(5), 0

        def random(self, *a, **k):
            self.calls += 1
            return self.rng.random(*a, **k)

    small, big = CountingRng(), CountingRng()
    masking.sample_block_masks(small, 8, 200, 40)
    masking.sample_block_masks(big, 4096, 200, 40)
    assert big.calls < 4 * 60  # a few draws per round, < 60 rounds
    assert big.calls < 20 * max(small.calls, 1)
