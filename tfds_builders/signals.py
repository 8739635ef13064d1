"""Checking and cleaning a raw signal before it becomes an example.

Every source's reader ends here, so a record is judged the same way whatever
its file format: `check_signal` names what makes a signal unusable,
`clean_signal` raises `SkipRecord` for it (or interpolates the NaNs), and
`reorder_leads` puts the columns in `jepa_ecg.ecg.leads.LEADS` order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jepa_ecg.ecg import leads as leads_lib
from jepa_ecg.ecg import transforms
from tfds_builders import skips


def check_signal(signal: np.ndarray, fs: float,
                 min_seconds: float | None) -> str | None:
    """Says why a raw (T, 12) signal is unusable, or None when it is fine.

    Checks, in order: shape, length (`min_seconds`), leads that are all NaN,
    and flat leads (constant over the finite samples: a disconnected
    electrode; z-scoring such a lead would divide by zero).

    Args:
      signal: array (T, 12) in mV, canonical lead order, NaNs allowed.
      fs: sampling rate in Hz.
      min_seconds: minimal duration; None or 0 disables the check.

    Returns:
      One of the reason constants of `tfds_builders.skips`, or None.
    """
    if signal.ndim != 2 or signal.shape[1] != leads_lib.NUM_LEADS:
        return skips.BAD_SHAPE
    if signal.shape[0] < 2:
        return skips.TOO_SHORT
    if min_seconds and signal.shape[0] < round(min_seconds * fs):
        return skips.TOO_SHORT
    finite = np.isfinite(signal)
    if not finite.any(axis=0).all():
        return skips.ALL_NAN_LEAD
    with np.errstate(invalid='ignore'):
        span = np.nanmax(signal, axis=0) - np.nanmin(signal, axis=0)
    if (span <= 0).any():
        return skips.FLAT_LEAD
    return None


def clean_signal(signal: np.ndarray, fs: float, min_seconds: float | None,
                 keep_flat: bool = False) -> tuple[np.ndarray, str | None]:
    """Validates a raw canonical-order signal and interpolates its NaNs.

    Args:
      signal: array (T, 12) in mV, NaNs allowed.
      fs: sampling rate in Hz.
      min_seconds: minimal duration (None: no minimum).
      keep_flat: keep records with a flat lead (returned as a warning)
        instead of skipping them. For benchmark data (PTB-XL) dropping
        records would change the published test set.

    Returns:
      (signal, warning): float32 array (T, 12) without NaNs, and FLAT_LEAD
      when a flat lead was kept (else None).

    Raises:
      SkipRecord: with the reason from `check_signal`.
    """
    signal = np.asarray(signal, dtype=np.float32)
    # +/-inf are as unusable as NaN; treat them the same way.
    if not np.isfinite(signal).all():
        signal = np.where(np.isinf(signal), np.nan, signal)
    reason = check_signal(signal, fs, min_seconds)
    warning = None
    if reason == skips.FLAT_LEAD and keep_flat:
        reason, warning = None, skips.FLAT_LEAD
    if reason is not None:
        raise skips.SkipRecord(reason, f'shape {signal.shape}, fs {fs:g}')
    # check_signal has rejected all-NaN leads, the one input the shared
    # interpolation refuses.
    return transforms.interpolate_nans(signal), warning


def reorder_leads(signal: np.ndarray, lead_names: Sequence[str]) -> np.ndarray:
    """Reorders the columns of `signal` into `jepa_ecg.ecg.leads.LEADS` order.

    Args:
      signal: (T, C) array whose columns are named by `lead_names`.
      lead_names: the C column names, in any spelling `leads` accepts.

    Returns:
      (T, 12) array in canonical order.

    Raises:
      SkipRecord: MISSING_LEAD naming the absent leads.
    """
    try:
        perm = leads_lib.lead_permutation(lead_names)
    except ValueError as e:
        raise skips.SkipRecord(skips.MISSING_LEAD, str(e)) from None
    return signal[:, perm]
