"""Reduced-lead inputs: named lead subsets, subset views of a PTB-XL task, lead dropout.

ECG-JEPA's patch embedding mixes all 12 leads into one token, so a lead a
recorder does not have can only be zero. It is zero AFTER normalisation
(where 0 is the lead's mean), exactly what `preprocess(...,
fill_missing='zero')` and `jepa-ecg predict --fill-missing=zero` give a
record that lacks it:

* `parse_lead_subsets('12,6-limb,I+II,I')`: named subsets or any '+'-joined
  list of lead names, comma-separated;
* `restrict_task(task, leads)`: a view of a PTB-XL task whose records reach
  THE preprocessing function with only `leads` present (the others are
  absent and zero-filled by it), for scoring a classifier on reduced leads;
* `LeadDropout`: training-time augmentation that zeroes a random non-empty
  proper subset of leads of a record with a given probability, so one model
  serves 12-lead and reduced-lead inputs. Its masks are a pure function of
  (seed, step, process), so a resumed run sees the same batches.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import numpy as np

from jepa_ecg.data import preprocess as preprocess_lib
from jepa_ecg.ecg.leads import LEADS, canonical_lead_name

# Named subsets; any other subset is written as lead names joined by '+'.
NAMED_SUBSETS: Mapping[str, tuple[str, ...]] = {
    '12': LEADS,
    '6-limb': LEADS[:6],
    'limb': LEADS[:6],
    'precordial': LEADS[6:],
    'I+II': ('I', 'II'),
    'I': ('I',),
}
DEFAULT_SUBSETS = '12,6-limb,I+II,I'
# Stream tag of the dropout generator (any constant distinct from the others).
_DROPOUT = 0x1EAD


def parse_lead_subset(name: str, model_leads: Sequence[str] = LEADS) -> tuple[str, ...]:
    """The leads of one subset, in the model's order.

    Args:
      name: a name of NAMED_SUBSETS, or lead names joined by '+' (e.g.
        'II', 'V1+V2+V5'; case-insensitive, `AVR` == `aVR`).
      model_leads: the model's leads.

    Returns:
      the subset's canonical lead names in `model_leads` order.

    Raises:
      ValueError: an empty subset or a name that is no lead of the model.
    """
    name = name.strip()
    if name in NAMED_SUBSETS:
        wanted = set(NAMED_SUBSETS[name])
    else:
        parts = [p.strip() for p in name.split('+') if p.strip()]
        canon = [canonical_lead_name(p) for p in parts]
        unknown = [p for p, c in zip(parts, canon) if c is None or c not in model_leads]
        if unknown or not parts:
            raise ValueError(f'lead subset {name!r}: {unknown or "no leads"} are not leads of '
                             f'the model {list(model_leads)}; use lead names joined by "+" '
                             f'or one of {sorted(NAMED_SUBSETS)}')
        wanted = set(canon)
    return tuple(t for t in model_leads if t in wanted)


def parse_lead_subsets(spec: str | Sequence[str], model_leads: Sequence[str] = LEADS
                       ) -> dict[str, tuple[str, ...]]:
    """Comma-separated subsets (see `parse_lead_subset`) -> {name: leads}, in order.

    Example: '12,6-limb,I+II,I' or ['12', 'V1+V2'].
    """
    names = spec.split(',') if isinstance(spec, str) else list(spec)
    out: dict[str, tuple[str, ...]] = {}
    for name in names:
        if name.strip():
            out[name.strip()] = parse_lead_subset(name, model_leads)
    return out


def subset_record(signal: np.ndarray, leads: Sequence[str], keep: Sequence[str]
                  ) -> tuple[np.ndarray, list[str]]:
    """The columns of `signal` (named by `leads`) that are in `keep`, and their names.

    What a recorder with only the `keep` leads would have written.
    """
    canon = [canonical_lead_name(t) or t for t in leads]
    cols = [i for i, t in enumerate(canon) if t in set(keep)]
    return np.asarray(signal)[:, cols], [canon[i] for i in cols]


class _SubsetPreprocess:
    """A task's record -> model input with only `leads` present (missing ones zero).

    Calls THE preprocessing function with the absent leads left out and
    `fill_missing='zero'`, as `jepa-ecg predict --fill-missing=zero` does.
    Its MissingLeadsWarning is expected here: callers silence it once, in
    the main thread (warning filters are process-wide).
    """

    def __init__(self, prep: Any, leads: Sequence[str]):
        self.prep, self.leads = prep, tuple(leads)

    def __call__(self, row: int, window: preprocess_lib.Window | None = None) -> np.ndarray:
        p = self.prep
        ex = p.records[int(row)]
        signal, names = subset_record(ex['signal'], LEADS, self.leads)
        x = preprocess_lib.preprocess(signal, float(ex['fs']), names, target_fs=p.fs,
                                      stats=p.stats, window=window, clip=p.clip,
                                      fill_missing='zero')
        return x if window is not None else x[:p.num_samples]


def restrict_task(task: Any, leads: Sequence[str]) -> Any:
    """A view of a `data.ptbxl.PtbxlTask` whose records have only `leads`.

    Labels, splits and statistics are the task's; every record (training
    crops, evaluation windows, whole records) is preprocessed from its
    `leads` columns alone with the others zero-filled after normalisation.

    Args:
      task: a PtbxlTask (stored records in the canonical lead order).
      leads: the leads present (canonical names).

    Returns:
      a shallow copy of `task` reading through the subset.
    """
    view = copy.copy(task)
    # The task's pipelines all read through its one preprocessing callable.
    view._prep = _SubsetPreprocess(task._prep, leads)  # pylint: disable=protected-access
    return view


class LeadDropout:
    """step, batch -> the batch with a random subset of leads zeroed in some records.

    Each record, with probability `rate`, keeps k leads drawn uniformly from
    1..L-1 (a uniformly chosen set of that size) and has the others set to
    exactly 0.0 (the value of a missing lead after normalisation); the other
    records pass unchanged. A grain `map_with_index` transform on a dataset
    of batches indexed by step.

    Attributes:
      rate: probability that a record loses leads, in [0, 1].
      seed: data seed.
      process_index: this process (its rows differ from other processes').
    """

    def __init__(self, rate: float, seed: int, process_index: int = 0):
        if not 0.0 <= float(rate) <= 1.0:
            raise ValueError(f'lead dropout rate must be in [0, 1], got {rate}')
        self.rate, self.seed, self.process_index = float(rate), int(seed), int(process_index)

    def keep_mask(self, step: int, batch_size: int, num_leads: int) -> np.ndarray:
        """(batch_size, num_leads) bool: True for the leads each record keeps."""
        rng = np.random.default_rng([self.seed, int(step), _DROPOUT, self.process_index])
        drop = rng.random(batch_size) < self.rate
        keep = np.ones((batch_size, num_leads), bool)
        for b in np.flatnonzero(drop):
            k = int(rng.integers(1, num_leads))  # leads kept: 1 .. L-1
            keep[b, rng.permutation(num_leads)[k:]] = False
        return keep

    def __call__(self, step: int, batch: dict) -> dict:
        signal = np.asarray(batch['signal'])
        keep = self.keep_mask(step, signal.shape[0], signal.shape[-1])
        if keep.all():
            return batch
        out = np.where(keep[:, None, :], signal, np.zeros((), signal.dtype))
        return {**batch, 'signal': out.astype(signal.dtype, copy=False)}
