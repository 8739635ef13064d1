"""Signal transforms shared by the pipeline, the inference CLI and evaluation.

Pure numpy/scipy. Signals are (time, leads) arrays everywhere; functions
return new arrays unless they say otherwise.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.fft
import scipy.signal


def interpolate_nans(signal: np.ndarray) -> np.ndarray:
    """Fills NaNs linearly per lead; leading/trailing NaNs take the edge value.

    Args:
      signal: (T, L) array.

    Returns:
      (T, L) array without NaNs (the input itself when it has none).

    Raises:
      ValueError: when a lead is NaN everywhere (nothing to interpolate from).
    """
    signal = np.asarray(signal)
    nan = np.isnan(signal)
    if not nan.any():
        return signal
    all_nan = nan.all(axis=0)
    if all_nan.any():
        raise ValueError(f'leads {np.flatnonzero(all_nan).tolist()} are all NaN')
    out = signal.copy()
    t = np.arange(signal.shape[0])
    for lead in np.flatnonzero(nan.any(axis=0)):
        bad = nan[:, lead]
        # np.interp holds the first/last valid value beyond the edges.
        out[bad, lead] = np.interp(t[bad], t[~bad], signal[~bad, lead])
    return out


def resampled_length(num_samples: int, fs_in: float, fs_out: float) -> int:
    """Samples after resampling `num_samples` from `fs_in` to `fs_out`."""
    return int(round(num_samples * float(fs_out) / float(fs_in)))


def resample(signal: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """FFT resampling along time, float32 (same result as scipy.signal.resample).

    The spectrum is cut (down-sampling) or zero-padded (up-sampling) and
    transformed back, treating the signal as periodic. Computed here with
    single-precision real FFTs along the time axis, ~1.4x cheaper than
    scipy.signal.resample (which moves the axis and works in float64 for
    float64 input); the result agrees with it to ~1e-6.

    Args:
      signal: (T, L) array.
      fs_in: its sampling rate (Hz).
      fs_out: wanted sampling rate (Hz).

    Returns:
      (round(T * fs_out / fs_in), L) float32 array; the input unchanged
      (as float32) when the rates are equal.
    """
    signal = np.asarray(signal, np.float32)
    if float(fs_in) == float(fs_out):
        return signal
    n_in = signal.shape[0]
    n_out = resampled_length(n_in, fs_in, fs_out)
    spectrum = scipy.fft.rfft(signal, axis=0)
    kept = min(n_in, n_out)
    spectrum = spectrum[:kept // 2 + 1]
    if kept % 2 == 0 and n_out != n_in:
        # The Nyquist bin of the shorter length stands for a +-f pair: fold
        # it into one bin when shrinking, split it in two when growing.
        spectrum[kept // 2] *= 2.0 if n_out < n_in else 0.5
    out = scipy.fft.irfft(spectrum, n=n_out, axis=0, overwrite_x=True)
    out *= np.float32(n_out / n_in)
    return out.astype(np.float32, copy=False)


@functools.lru_cache(maxsize=64)
def _butter_highpass(fs: float, cutoff: float, order: int) -> np.ndarray:
    return scipy.signal.butter(order, cutoff, btype='highpass', fs=fs, output='sos')


def highpass(signal: np.ndarray, fs: float, cutoff: float = 0.5,
             order: int = 4) -> np.ndarray:
    """Zero-phase Butterworth high-pass (forward-backward, sosfiltfilt).

    Args:
      signal: (T, L) array.
      fs: sampling rate (Hz).
      cutoff: cut-off frequency (Hz).
      order: filter order (the forward-backward pass doubles it in effect).

    Returns:
      (T, L) float32 array.
    """
    sos = _butter_highpass(float(fs), float(cutoff), int(order))
    # sosfiltfilt needs more samples than its edge padding; a shorter
    # signal gets the largest padding it can take.
    default_pad = 3 * (2 * len(sos) + 1 - min((sos[:, 2] == 0).sum(), (sos[:, 5] == 0).sum()))
    padlen = min(default_pad, signal.shape[0] - 1)
    out = scipy.signal.sosfiltfilt(sos, signal, axis=0, padlen=padlen)
    return out.astype(np.float32, copy=False)


def normalize(signal: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Per-lead z-score `(signal - mean) / std`, float32.

    Args:
      signal: (T, L) array (or (..., T, L)).
      mean: (L,) per-lead means.
      std: (L,) per-lead standard deviations (> 0).

    Returns:
      float32 array of the signal's shape.
    """
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    return ((np.asarray(signal, np.float32) - mean) / std).astype(np.float32, copy=False)


def clip(signal: np.ndarray, low: float = -5.0, high: float = 5.0) -> np.ndarray:
    """Clips values to [low, high] (normalised ECGs: +-5 standard deviations)."""
    return np.clip(signal, low, high)


def window_start(num_samples: int, length: int, position: float) -> int:
    """The start of the window at `position` in [0, 1) among all possible starts.

    Position u picks start floor(u * (T - length + 1)), so a uniform u gives
    every start 0..T-length the same chance (the training crops).
    """
    if num_samples < length:
        raise ValueError(f'signal of {num_samples} samples is shorter than the window '
                         f'({length})')
    return min(int(position * (num_samples - length + 1)), num_samples - length)


def window_starts(num_samples: int, length: int, stride: int) -> np.ndarray:
    """Starts of a record's strided windows: every `stride`, plus one aligned
    to its end when the strides do not reach it (so the tail is seen too).

    The one rule for evaluation windows and inference; a record shorter than
    `length` gets one window at 0 (the caller pads it).
    """
    if length <= 0 or stride <= 0:
        raise ValueError(f'length ({length}) and stride ({stride}) must be positive')
    if num_samples <= length:
        return np.zeros(1, np.int64)
    starts = np.arange(0, num_samples - length + 1, stride, dtype=np.int64)
    if (num_samples - length) % stride:
        starts = np.append(starts, num_samples - length)
    return starts


def cut_windows(signal: np.ndarray, length: int, starts: np.ndarray) -> np.ndarray:
    """(T, L) -> (len(starts), length, L): the windows at `starts` (a copy)."""
    idx = np.asarray(starts, np.int64)[:, None] + np.arange(length)
    return signal[idx]


def samples(fs: float, seconds: float) -> int:
    """Samples in `seconds` at `fs`, rounded (2.5 s: 250 at 100 Hz, 1250 at 500 Hz)."""
    return int(round(float(fs) * float(seconds)))
