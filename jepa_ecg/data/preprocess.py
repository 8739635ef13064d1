"""THE function from a raw record (signal, fs, lead names) to model input.

Pre-training (`data/pretrain.py`), fine-tuning and evaluation
(`data/ptbxl.py`) and inference (`inference/`) all call `preprocess`, so
what the model sees is computed in one place:

    1. leads selected and ordered by name (case-insensitive, `AVR` == `aVR`);
       missing leads raise, or are zero-filled after normalisation;
    2. optionally a window cut from the record (with a margin each side when
       filtering or resampling follows, so edge effects fall outside it and
       the cost does not grow with the record's length);
    3. NaNs interpolated linearly per lead;
    4. the source's zero-phase Butterworth high-pass (CODE-15, INCART);
    5. FFT resampling to the model's rate;
    6. per-lead standardisation with GIVEN statistics (the source's, the
       PTB-XL train folds', or an encoder's), or the record's own;
    7. clipping to [-5, 5].
"""

from __future__ import annotations

import dataclasses
import fractions
import functools
import math
import warnings
from typing import Sequence

import numpy as np

from jepa_ecg.data.stats import CLIP, LeadStats
from jepa_ecg.ecg import transforms
from jepa_ecg.ecg.leads import LEADS, canonical_lead_name, lead_permutation, missing_leads

# Extra signal kept on each side of a window that is filtered or resampled:
# the 0.5 Hz high-pass's transients need ~5 s to fall below 1% of the
# signal's std, FFT resampling's ringing ~2 s.
HIGHPASS_MARGIN_SECONDS = 5.0
RESAMPLE_MARGIN_SECONDS = 2.0
NORMALIZE_MODES = ('stats', 'record')


class MissingLeadsWarning(UserWarning):
    """Some leads were missing and are zero-filled."""


class MissingLeadsError(ValueError):
    """The record lacks leads the model needs."""

    def __init__(self, missing: Sequence[str], have: Sequence[str], name: str | None = None):
        self.missing = list(missing)
        super().__init__(
            f'{name or "record"}: missing leads {self.missing} (have {list(have)}); pass '
            f'fill_missing="zero" (CLI: --fill-missing=zero) to zero-fill them')


class RecordTooShortError(ValueError):
    """The record is shorter than the window asked for."""


@dataclasses.dataclass(frozen=True)
class Window:
    """Where to cut a window from a record.

    Attributes:
      length: window length in samples at the model's rate.
      position: in [0, 1): the window's start among all possible starts
        (0 = the record's start, just below 1 = its end).
    """
    length: int
    position: float = 0.0


def preprocess(signal: np.ndarray, fs: float, leads: Sequence[str], *, target_fs: float,
               stats: LeadStats | None, model_leads: Sequence[str] = LEADS,
               normalize: str = 'stats', highpass_hz: float | None = None,
               fill_missing: str | None = None, window: Window | None = None,
               clip: float = CLIP, name: str | None = None,
               out: np.ndarray | None = None, finite: bool = False) -> np.ndarray:
    """A raw record as the model sees it.

    Args:
      signal: (T, L) raw signal (mV), columns named by `leads`.
      fs: its sampling rate (Hz).
      leads: its lead names (any order, case-insensitive; extra leads ignored).
      target_fs: the model's sampling rate (Hz).
      stats: per-lead statistics in `model_leads` order ('stats' mode).
      model_leads: the model's input leads, in order.
      normalize: 'stats' (standardise with `stats`) or 'record' (the record's own per-lead
        mean/std, after resampling).
      highpass_hz: zero-phase Butterworth high-pass cut-off, or None.
      fill_missing: None (missing leads raise MissingLeadsError) or 'zero'
        (missing leads are 0 after normalisation, with a warning).
      window: cut this window (at `target_fs`) instead of returning the whole
        record.
      clip: bound of the output's absolute value.
      name: the record's name, for messages.
      out: a (T', len(model_leads)) float32 array to write the result into
        (a row of a batch buffer), or None.
      finite: the caller guarantees the signal holds no NaN (records of a
        built dataset: the builders interpolate them), so the scan for NaNs
        is skipped.

    Returns:
      (T', len(model_leads)) float32: the whole record (T' =
      round(T * target_fs / fs)) or the window (T' = window.length); `out`
      when given.

    Raises:
      MissingLeadsError: leads missing (or all-NaN) and no fill_missing.
      RecordTooShortError: the record is shorter than the window.
      ValueError: a malformed signal or option.
    """
    signal = np.asarray(signal)
    if signal.ndim != 2 or signal.shape[1] != len(leads):
        raise ValueError(f'{name or "record"}: signal of shape {signal.shape} does not '
                         f'match {len(leads)} lead names {list(leads)}')
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f'normalize must be one of {NORMALIZE_MODES}, got {normalize!r}')
    if normalize == 'stats' and stats is None:
        raise ValueError('no lead statistics given: pass stats or normalize="record"')
    if fill_missing not in (None, 'none', 'zero'):
        raise ValueError(f'fill_missing must be None or "zero", got {fill_missing!r}')
    model_leads = tuple(model_leads)
    x, present = _select_leads(signal, leads, model_leads, fill_missing, name)
    # NaNs are filled in the part that is processed: a window's, not the record's.
    fill_nans = _NanFill(present, leads, fill_missing, name, skip=finite)
    if window is not None:
        x = _cut_window(x, fs, target_fs, window, highpass_hz, fill_nans, name)
    else:
        x = _filter_and_resample(fill_nans(x), fs, target_fs, highpass_hz)
    present = fill_nans.present
    complete = len(present) == len(model_leads)
    idx = None if complete else [model_leads.index(t) for t in present]
    if normalize == 'stats':
        lead_stats = stats if complete else stats.select(idx)
    else:
        std = x.std(axis=0)
        lead_stats = LeadStats(x.mean(axis=0), np.where(std > 1e-8, std, 1.0), 'record')
    if complete:
        return lead_stats.standardize(x, clip, out=out)
    x = lead_stats.standardize(x, clip)
    if out is None:
        out = np.zeros((x.shape[0], len(model_leads)), np.float32)
    else:
        out[...] = 0.0
    out[:, idx] = x
    return out


def _select_leads(signal: np.ndarray, leads: Sequence[str], model_leads: tuple[str, ...],
                  fill_missing: str | None, name: str | None
                  ) -> tuple[np.ndarray, list[str]]:
    """The model's leads present in the record (model order) and their names."""
    if tuple(leads) == model_leads:  # stored records: already in model order
        return signal, list(model_leads)
    missing = missing_leads(leads, model_leads)
    if missing and fill_missing != 'zero':
        raise MissingLeadsError(missing, leads, name)
    present = [t for t in model_leads if t not in missing]
    if missing:
        _warn_missing(missing, name)
    return signal[:, lead_permutation(leads, present)], present


class _NanFill:
    """Interpolates NaNs per lead; a lead NaN everywhere is missing (dropped
    here, zero-filled after normalisation, or an error)."""

    def __init__(self, present: list[str], leads: Sequence[str], fill_missing: str | None,
                 name: str | None, skip: bool = False):
        self.present, self.leads = present, leads
        self.fill_missing, self.name, self.skip = fill_missing, name, skip

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.skip:
            return x
        nan = np.isnan(x)
        if not nan.any():
            return x
        dead = nan.all(axis=0)
        if dead.any():
            dead_names = [self.present[i] for i in np.flatnonzero(dead)]
            if self.fill_missing != 'zero':
                raise MissingLeadsError(dead_names, self.leads, self.name)
            _warn_missing(dead_names, self.name)
            x = x[:, ~dead]
            self.present = [t for t, d in zip(self.present, dead) if not d]
        return transforms.interpolate_nans(x)


def _warn_missing(missing: Sequence[str], name: str | None) -> None:
    warnings.warn(f'{name or "record"}: missing leads {list(missing)} are filled with zeros '
                  f'(the model\'s output for such a record is less reliable)',
                  MissingLeadsWarning, stacklevel=4)


def _filter_and_resample(x: np.ndarray, fs: float, target_fs: float,
                         highpass_hz: float | None) -> np.ndarray:
    if highpass_hz:
        x = transforms.highpass(x, fs, highpass_hz)
    return transforms.resample(x, fs, target_fs)


@functools.lru_cache(maxsize=256)
def _rate_ratio(fs_in: float, fs_out: float) -> tuple[int, int]:
    """(p, q) with fs_out / fs_in = p / q in lowest terms."""
    ratio = fractions.Fraction(str(fs_out)) / fractions.Fraction(str(fs_in))
    return ratio.numerator, ratio.denominator


def _cut_window(x: np.ndarray, fs: float, target_fs: float, window: Window,
                highpass_hz: float | None, fill_nans: _NanFill,
                name: str | None) -> np.ndarray:
    """The window of `window.length` samples at `target_fs` (see `preprocess`)."""
    n, length = x.shape[0], int(window.length)
    margin_seconds = RESAMPLE_MARGIN_SECONDS if not highpass_hz else HIGHPASS_MARGIN_SECONDS
    if float(fs) == float(target_fs):
        if n < length:
            raise _too_short(n, fs, length, target_fs, name)
        start = transforms.window_start(n, length, window.position)
        if not highpass_hz:
            return fill_nans(x[start:start + length])
        margin = int(math.ceil(margin_seconds * fs))
        lo, hi = max(0, start - margin), min(n, start + length + margin)
        seg = transforms.highpass(fill_nans(x[lo:hi]), fs, highpass_hz)
        return seg[start - lo:start - lo + length]
    n_out = transforms.resampled_length(n, fs, target_fs)
    if n_out < length:
        raise _too_short(n, fs, length, target_fs, name)
    start_out = transforms.window_start(n_out, length, window.position)
    # target_fs / fs = p / q in lowest terms: a segment that starts at a
    # multiple of q input samples and is a multiple of q long maps onto whole
    # output samples, so its resampled grid coincides with the whole record's
    # (otherwise rounding its length stretches time by up to half a sample,
    # which is visible on a QRS).
    p, q = _rate_ratio(float(fs), float(target_fs))
    begin = start_out * q / p
    end = (start_out + length) * q / p
    margin = int(math.ceil(margin_seconds * fs))
    lo = max(0, int(math.floor(begin)) - margin) // q * q
    hi = min(n, int(math.ceil(end)) + margin)
    hi = lo + -(-(hi - lo) // q) * q  # round the length up to a multiple of q
    if hi > n:  # at the record's end: take the whole multiple that fits
        hi = lo + (n - lo) // q * q
        if hi < math.ceil(end):
            lo, hi = 0, n  # too short to align: use the whole record
    seg = _filter_and_resample(fill_nans(x[lo:hi]), fs, target_fs, highpass_hz)
    offset = start_out - transforms.resampled_length(lo, fs, target_fs)
    offset = min(max(offset, 0), max(0, seg.shape[0] - length))
    out = seg[offset:offset + length]
    if out.shape[0] < length:  # rounding at the record's end: hold the edge
        out = np.pad(out, ((0, length - out.shape[0]), (0, 0)), mode='edge')
    return out


def _too_short(n: int, fs: float, length: int, target_fs: float,
               name: str | None) -> RecordTooShortError:
    return RecordTooShortError(
        f'{name or "record"}: {n / fs:.2f} s at {fs:g} Hz is shorter than the '
        f'{length / target_fs:.2f} s window')


def canonical_leads(leads: Sequence[str]) -> list[str]:
    """Lead names in canonical spelling (unknown names kept as given)."""
    return [canonical_lead_name(t) or t for t in leads]
