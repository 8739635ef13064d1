"""Per-lead normalisation statistics: the one type, its file format and mixing.

`LeadStats` is what `preprocess` standardises with; it is read from and
written to JSON ({"mean": [...], "std": [...], "source"?, "leads"?}), and
the statistics of a mixture of sources are mixed from theirs. Computing and
storing a source's statistics beside its built dataset is
`data/source_stats.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from jepa_ecg.ecg.leads import LEADS, lead_permutation

CLIP = 5.0


@dataclasses.dataclass(frozen=True, eq=False)
class LeadStats:
    """Per-lead mean and standard deviation in the model's lead order.

    Attributes:
      mean: (L,) float32.
      std: (L,) float32, every value > 0.
      source: where they come from (for the record), or ''.
    """
    mean: np.ndarray
    std: np.ndarray
    source: str = ''

    def __post_init__(self):
        mean = np.asarray(self.mean, np.float32).reshape(-1)
        std = np.asarray(self.std, np.float32).reshape(-1)
        if mean.shape != std.shape:
            raise ValueError(f'lead statistics: mean {mean.shape} and std {std.shape} differ')
        if not np.all(np.isfinite(mean)) or not np.all(std > 0):
            raise ValueError(f'lead statistics{" of " + self.source if self.source else ""}: '
                             f'means must be finite and stds positive, got std {std.tolist()}')
        object.__setattr__(self, 'mean', mean)
        object.__setattr__(self, 'std', std)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> 'LeadStats':
        """From a {'mean': [...], 'std': [...], 'source'?: ...} mapping."""
        return cls(doc['mean'], doc['std'], str(doc.get('source', '') or ''))

    def to_json(self) -> dict:
        return {'mean': self.mean.tolist(), 'std': self.std.tolist(), 'source': self.source}

    def select(self, idx: Sequence[int]) -> 'LeadStats':
        """The statistics of the leads at `idx`."""
        idx = list(idx)
        return LeadStats(self.mean[idx], self.std[idx], self.source)

    def tiled(self, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
        """(mean, 1/std) tiled to (num_samples, L): same-shape ufuncs are much
        faster than ones broadcasting an L-vector along every row."""
        return _tiled(self, int(num_samples))

    def standardize(self, signal: np.ndarray, clip: float = CLIP,
                    out: np.ndarray | None = None) -> np.ndarray:
        """`clip((signal - mean) / std)` as float32.

        Args:
          signal: (T, L) array in this object's lead order.
          clip: bound of the result's absolute value.
          out: (T, L) float32 array to write into (default: a new one).

        Returns:
          (T, L) float32: `out` when given.
        """
        mean, inv_std = self.tiled(signal.shape[0])
        out = np.subtract(signal, mean, out=out, dtype=np.float32)
        np.multiply(out, inv_std, out=out)
        np.clip(out, -clip, clip, out=out)
        return out


@functools.lru_cache(maxsize=64)
def _tiled(stats: LeadStats, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    inv_std = (1.0 / stats.std.astype(np.float64)).astype(np.float32)
    mean = np.tile(stats.mean, (num_samples, 1))
    inv = np.tile(inv_std, (num_samples, 1))
    mean.flags.writeable = False
    inv.flags.writeable = False
    return mean, inv


class RunningLeadStats:
    """Exact streaming mean/variance per lead (Chan et al.'s pairwise merge).

    Merging per-record moments in float64 avoids the cancellation of a
    plain sum-of-squares over millions of samples.
    """

    def __init__(self, num_leads: int = len(LEADS)):
        self.count = 0
        self.mean = np.zeros(num_leads, np.float64)
        self.m2 = np.zeros(num_leads, np.float64)

    def update(self, signal: np.ndarray) -> None:
        """Adds the samples of one (T, L) signal."""
        x = np.asarray(signal, np.float64)
        n = x.shape[0]
        if n == 0:
            return
        mean = x.mean(axis=0)
        m2 = ((x - mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta ** 2 * (self.count * n / total)
        self.count = total

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.count, 1))


def as_lead_stats(stats: LeadStats | Mapping[str, Any] | None) -> LeadStats | None:
    """`LeadStats` from itself, a {'mean', 'std', 'source'?} mapping, or None."""
    if stats is None or isinstance(stats, LeadStats):
        return stats
    return LeadStats.from_json(stats)


def mix_lead_stats(stats: Mapping[str, Any], weights: Mapping[str, float], *,
                   source: str = '') -> LeadStats:
    """Per-lead mean/std of a weighted mixture of sources.

    mean = weighted mean of the means; variance = weighted second moment
    minus the mean squared (within-source plus between-source spread).

    Args:
      stats: source -> `LeadStats` or {'mean', 'std'} (12 floats each).
      weights: source -> sampling weight.
      source: description stored with the result.

    Returns:
      the mixture's `LeadStats`.
    """
    total = sum(float(weights[s]) for s in stats)
    means = {s: np.asarray(_field(v, 'mean'), np.float64) for s, v in stats.items()}
    stds = {s: np.asarray(_field(v, 'std'), np.float64) for s, v in stats.items()}
    mean = sum(float(weights[s]) / total * means[s] for s in stats)
    second = sum(float(weights[s]) / total * (stds[s] ** 2 + means[s] ** 2) for s in stats)
    std = np.sqrt(np.maximum(second - mean ** 2, 1e-12))
    return LeadStats(mean, std, source)


def _field(stats: Any, name: str) -> Any:
    return getattr(stats, name) if isinstance(stats, LeadStats) else stats[name]


def read_lead_stats_file(path: str, source: str | None = None) -> LeadStats:
    """Lead statistics from a JSON file, in the canonical lead order.

    Args:
      path: {"mean": [12], "std": [12], "source"?, "leads"?} (a "leads" list
        gives the order of the values), or a `jepa_ecg.data.source_stats`
        lead_stats.json keyed by source.
      source: which source of a file keyed by source (needed when it holds
        several).

    Returns:
      `LeadStats` in `LEADS` order.

    Raises:
      ValueError: an ambiguous or malformed file.
    """
    with open(path, encoding='utf-8') as f:
        doc = json.load(f)
    if 'mean' not in doc:
        keys = [k for k, v in doc.items() if isinstance(v, dict) and 'mean' in v]
        if source is None and len(keys) == 1:
            source = keys[0]
        if source not in keys:
            raise ValueError(f'{path}: pick the statistics of one source with --stats-source '
                             f'(has {keys})')
        doc = {**doc[source], 'source': doc[source].get('source', source)}
    mean = [float(v) for v in doc['mean']]
    std = [float(v) for v in doc['std']]
    if 'leads' in doc:
        perm = lead_permutation(doc['leads'], LEADS)
        mean, std = [mean[i] for i in perm], [std[i] for i in perm]
    if len(mean) != len(LEADS) or len(std) != len(LEADS):
        raise ValueError(f'{path}: want {len(LEADS)} means and {len(LEADS)} stds')
    return LeadStats(mean, std, str(doc.get('source') or os.path.abspath(path)))
