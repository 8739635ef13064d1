"""The canonical 12-lead order and matching of lead names across sources."""

from __future__ import annotations

from typing import Sequence

import numpy as np

LEADS: tuple[str, ...] = (
    'I', 'II', 'III', 'aVR', 'aVL', 'aVF',
    'V1', 'V2', 'V3', 'V4', 'V5', 'V6',
)
NUM_LEADS = len(LEADS)

# Spellings seen in real headers that differ by more than case.
_ALIASES = {
    'AVR': 'aVR', 'AVL': 'aVL', 'AVF': 'aVF',
    '-AVR': None,  # inverted aVR (Cabrera display) is not the same signal
    'D1': 'I', 'D2': 'II', 'D3': 'III',
}
_BY_UPPER = {name.upper(): name for name in LEADS}


def canonical_lead_name(name: str) -> str | None:
    """Returns the canonical spelling of a lead name, or None if unknown.

    Matching is case-insensitive and ignores surrounding whitespace, so
    `AVR`, `avr` and `aVR` are the same lead.
    """
    key = name.strip().upper()
    if key in _ALIASES:
        return _ALIASES[key]
    return _BY_UPPER.get(key)


def lead_permutation(source_leads: Sequence[str],
                     target_leads: Sequence[str] = LEADS) -> np.ndarray:
    """Indices that reorder `source_leads` columns into `target_leads` order.

    Args:
      source_leads: lead names as stored in a record, in storage order.
      target_leads: the wanted order (default: the model's canonical order).

    Returns:
      int array `perm` with `signal[:, perm]` in target order.

    Raises:
      ValueError: naming every target lead the source lacks.
    """
    canon = [canonical_lead_name(n) for n in source_leads]
    position = {}
    for i, c in enumerate(canon):
        if c is not None and c not in position:
            position[c] = i
    wanted = [canonical_lead_name(n) or n for n in target_leads]
    missing = [t for t in wanted if t not in position]
    if missing:
        raise ValueError(
            f'missing leads {missing} (record has {list(source_leads)})')
    return np.asarray([position[t] for t in wanted], dtype=np.int64)


def missing_leads(source_leads: Sequence[str],
                  target_leads: Sequence[str] = LEADS) -> list[str]:
    """Target leads (canonical names) that `source_leads` does not contain."""
    have = {canonical_lead_name(n) for n in source_leads}
    return [t for t in target_leads if canonical_lead_name(t) not in have]
