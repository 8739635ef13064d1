"""Procedural 12-lead ECGs: the offline data source for demos, tests and benchmarks.

A record is built from a beat model in the spirit of McSharry et al.'s
dynamical ECG model: every wave of a beat (P, Q, R, S, T, plus optional
extras) is a Gaussian bump in time centred at a fixed offset from the beat's
R peak. Instead of one scalar trace, each wave carries a direction in 3D, so
the waves add up to a heart vector (dipole) d(t). The leads are projections
of d(t) onto lead vectors:

* frontal plane: lead I along +x (patient's left), lead II at +60 degrees
  (x left, y towards the feet); the other four limb leads are derived from
  I and II with Einthoven's and Goldberger's relations AFTER the noise is
  added, so III = II - I, aVR = -(I + II) / 2, aVL = I - II / 2 and
  aVF = II - I / 2 hold exactly, like on a real machine;
* horizontal plane: V1..V6 look from 120 degrees (right-anterior) round to
  0 degrees (left) with a small inferior tilt, which gives a deep S in V1, R
  wave progression and a transition near V3/V4.

Each record draws its heart rate and RR variability, electrical axis,
amplitudes, PR/QT intervals, noise and baseline wander, one rhythm class and
zero or more morphology classes. Everything is a pure function of
(seed, index): the same pair always gives the same record.

None of this is meant to be diagnostic; it only has to look like an ECG,
carry learnable labels and be cheap (vectorised numpy, a few milliseconds a
record).
"""

from __future__ import annotations

import math
from typing import Iterator, Tuple

import numpy as np

RHYTHMS: Tuple[str, ...] = ('SR', 'SB', 'STACH', 'AFIB')
RHYTHM_DESCRIPTIONS = {
    'SR': 'sinus rhythm, 60-100 bpm',
    'SB': 'sinus bradycardia, 40-59 bpm',
    'STACH': 'sinus tachycardia, 101-150 bpm',
    'AFIB': 'atrial-fibrillation-like: irregular RR, no P waves, f-waves',
}
MORPHOLOGIES: Tuple[str, ...] = ('WIDE_QRS', 'ST_ELEV', 'ST_DEPR', 'LOW_VOLT',
                                 'T_INV')
MORPHOLOGY_DESCRIPTIONS = {
    'WIDE_QRS': 'bundle-branch-block-like wide QRS with a late R\'',
    'ST_ELEV': 'ST elevation along a random injury vector',
    'ST_DEPR': 'ST depression (lateral/inferior)',
    'LOW_VOLT': 'low QRS voltage',
    'T_INV': 'inverted T waves',
}
# Multi-hot label order: the rhythm classes, then the morphology classes.
LABELS: Tuple[str, ...] = RHYTHMS + MORPHOLOGIES

_RHYTHM_PROBS = (0.55, 0.15, 0.15, 0.15)
_MORPHOLOGY_PROB = 0.15
_HR_RANGE = {'SR': (60.0, 100.0), 'SB': (40.0, 59.0),
             'STACH': (101.0, 150.0), 'AFIB': (70.0, 140.0)}

# Lead vectors of the 8 independent leads (I, II, V1..V6) in (x, y, z) =
# (patient's left, feet, anterior).
_PRECORDIAL_ANGLES_DEG = (120.0, 100.0, 80.0, 60.0, 30.0, 0.0)
_PRECORDIAL_GAIN = 1.4  # chest electrodes sit closer to the heart


def _lead_matrix() -> np.ndarray:
    cols = [(1.0, 0.0, 0.0),
            (math.cos(math.radians(60)), math.sin(math.radians(60)), 0.0)]
    for a in _PRECORDIAL_ANGLES_DEG:
        r = math.radians(a)
        v = np.array([math.cos(r), 0.15, math.sin(r)])
        cols.append(tuple(_PRECORDIAL_GAIN * v / np.linalg.norm(v)))
    return np.asarray(cols, np.float64).T  # (3, 8)


_LEAD_MATRIX = _lead_matrix()


def _unit(*v: float) -> np.ndarray:
    a = np.asarray(v, np.float64)
    return a / np.linalg.norm(a)


def derive_limb_leads(lead_i: np.ndarray, lead_ii: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Leads III, aVR, aVL, aVF from leads I and II (Einthoven/Goldberger).

    Args:
      lead_i: lead I, any shape.
      lead_ii: lead II, same shape.

    Returns:
      (III, aVR, aVL, aVF), each the shape of the inputs.
    """
    return (lead_ii - lead_i, -(lead_i + lead_ii) / 2, lead_i - lead_ii / 2,
            lead_ii - lead_i / 2)


def _rotation(axis_deg: float, horizontal_deg: float) -> np.ndarray:
    """Rotation about z (frontal-plane axis shift) then about y (horizontal)."""
    a, h = math.radians(axis_deg), math.radians(horizontal_deg)
    rz = np.array([[math.cos(a), -math.sin(a), 0.0],
                   [math.sin(a), math.cos(a), 0.0],
                   [0.0, 0.0, 1.0]])
    ry = np.array([[math.cos(h), 0.0, -math.sin(h)],
                   [0.0, 1.0, 0.0],
                   [math.sin(h), 0.0, math.cos(h)]])
    return ry @ rz


def _beat_times(rng: np.random.Generator, rhythm: str, heart_rate: float,
                duration_s: float) -> np.ndarray:
    """R-peak times covering [-1 s, duration + 1 s] so edge beats are whole."""
    mean_rr = 60.0 / heart_rate
    # Upper bound on the beat count; RRs are clipped to >= 0.3 * mean below.
    n = int(math.ceil((duration_s + 2.0) / (0.3 * mean_rr))) + 2
    if rhythm == 'AFIB':
        # Irregularly irregular: independent log-normal RRs.
        rr = mean_rr * np.exp(rng.normal(0.0, 0.22, n))
    else:
        # Respiratory sinus arrhythmia plus a little jitter.
        k = np.arange(n)
        resp = 0.04 * rng.uniform(0.2, 1.0) * np.sin(
            2 * np.pi * k * mean_rr * rng.uniform(0.15, 0.35) + rng.uniform(0, 2 * np.pi))
        rr = mean_rr * (1.0 + resp + rng.normal(0.0, 0.01, n))
    rr = np.clip(rr, 0.3 * mean_rr, 2.5 * mean_rr)
    times = -1.0 + rng.uniform(0.0, mean_rr) + np.concatenate([[0.0], np.cumsum(rr)])
    return times[times <= duration_s + 1.0]


def _waves(rng: np.random.Generator, rhythm: str, morph: set, mean_rr: float,
           rotation: np.ndarray):
    """The wave table of one record: offsets, widths, amplitudes, directions."""
    j = lambda lo=0.8, hi=1.25: rng.uniform(lo, hi)  # amplitude jitter
    qrs_gain = j(0.7, 1.4) * (0.3 if 'LOW_VOLT' in morph else 1.0)
    wide = 'WIDE_QRS' in morph
    w = 2.2 if wide else 1.0
    qt = 0.40 * math.sqrt(mean_rr) * j(0.92, 1.08)  # Bazett-like QT
    t_sign = -1.0 if 'T_INV' in morph else 1.0
    rows = []  # (offset s, sigma s, amplitude mV, direction)
    if rhythm != 'AFIB':
        pr = rng.uniform(0.13, 0.20)
        rows.append((-pr, 0.022, 0.14 * j(), _unit(0.5, 0.85, 0.15)))
    rows += [
        (-0.026 * w, 0.008 * w, 0.15 * qrs_gain * j(), _unit(-0.5, -0.1, 0.85)),
        (0.0, 0.011 * w, 1.3 * qrs_gain * j(), _unit(0.65, 0.65, -0.4)),
        (0.03 * w, 0.011 * w, 0.4 * qrs_gain * j(), _unit(-0.35, -0.55, -0.75)),
    ]
    if wide:
        # Late right-anterior forces (an R' in V1, a slurred S in I and V6).
        rows.append((0.085, 0.02, 0.6 * qrs_gain * j(), _unit(-0.45, 0.0, 0.9)))
    t_dir = _unit(0.6, 0.55, 0.35)
    t_amp = 0.35 * j() * t_sign
    rows += [(qt - 0.08, 0.06, 0.45 * t_amp, t_dir),
             (qt - 0.04, 0.045, t_amp, t_dir)]
    if 'ST_ELEV' in morph:
        injury = [_unit(0.0, 0.2, 1.0), _unit(0.1, 1.0, 0.1),
                  _unit(1.0, 0.1, 0.3)][rng.integers(3)]
        rows.append((0.1 + 0.05 * w, 0.05, 0.25 * j(), injury))
    if 'ST_DEPR' in morph:
        rows.append((0.1 + 0.05 * w, 0.05, -0.18 * j(), _unit(0.6, 0.7, 0.1)))
    offsets = np.array([r[0] for r in rows])
    sigmas = np.array([r[1] for r in rows])
    amps = np.array([r[2] for r in rows])
    dirs = np.stack([rotation @ r[3] for r in rows])  # (W, 3)
    return offsets, sigmas, amps, dirs


def _sum_waves(rng: np.random.Generator, beats: np.ndarray, offsets: np.ndarray,
               sigmas: np.ndarray, amps: np.ndarray, dirs: np.ndarray, n: int,
               fs: float) -> np.ndarray:
    """The (n, 3) heart vector: every wave of every beat, summed."""
    num_waves = len(offsets)
    # Beat-to-beat amplitude modulation (breathing moves the heart vector).
    beat_gain = 1.0 + 0.06 * np.sin(2 * np.pi * rng.uniform(0.15, 0.35) * beats
                                    + rng.uniform(0, 2 * np.pi))
    # Each (wave, beat) bump is evaluated only on a window of +-4 sigma, then
    # scattered into the wave's trace with bincount: ~20x fewer exp() calls
    # than evaluating every bump on the whole time axis.
    half = int(math.ceil(4.0 * sigmas.max() * fs))
    centres = beats[None, :] + offsets[:, None]  # (W, K) seconds
    base = np.round(centres * fs).astype(np.int64)
    idx = base[..., None] + np.arange(-half, half + 1)  # (W, K, L)
    tt = idx / fs - centres[..., None]
    bumps = (amps[:, None, None] * beat_gain[None, :, None]
             * np.exp(-0.5 * (tt / sigmas[:, None, None]) ** 2))
    inside = (idx >= 0) & (idx < n)
    flat = (np.arange(num_waves)[:, None, None] * n + idx)[inside]
    traces = np.bincount(flat, weights=bumps[inside],
                         minlength=num_waves * n).reshape(num_waves, n)
    return traces.T @ dirs


def _add_noise_and_wander(rng: np.random.Generator, independent: np.ndarray,
                          t: np.ndarray) -> None:
    """Adds white noise and two slow baseline-wander sines per lead, in place."""
    n = independent.shape[0]
    independent += rng.normal(0.0, rng.uniform(0.005, 0.03), (n, 8))
    freqs = rng.uniform(0.05, 0.5, (2, 8))
    wander_amp = rng.uniform(0.0, 0.15, (2, 8))
    phases = rng.uniform(0, 2 * np.pi, (2, 8))
    for k in range(2):
        independent += wander_amp[k] * np.sin(2 * np.pi * freqs[k] * t[:, None] + phases[k])


def generate_record(seed: int, index: int, *, fs: float = 500.0,
                    duration_s: float | Tuple[float, float] = 10.0) -> dict:
    """One synthetic 12-lead ECG, a pure function of (seed, index).

    Args:
      seed: dataset seed.
      index: record number within the dataset.
      fs: sampling rate (Hz).
      duration_s: length in seconds, or a (min, max) range drawn per record.

    Returns:
      dict with `signal` float32 (T, 12) in mV in `jepa_ecg.ecg.leads.LEADS`
      order, `fs` float, `labels` int32 multi-hot over `LABELS`, `rhythm`
      int (index into `RHYTHMS`), `heart_rate` float (bpm), `age` float,
      `sex` int (0 male, 1 female) and `record_id` str.
    """
    rng = np.random.default_rng([int(seed), int(index)])
    if isinstance(duration_s, (tuple, list)):
        duration = float(rng.uniform(duration_s[0], duration_s[1]))
    else:
        duration = float(duration_s)
    n = int(round(duration * fs))

    rhythm_id = int(rng.choice(len(RHYTHMS), p=_RHYTHM_PROBS))
    rhythm = RHYTHMS[rhythm_id]
    morph = {m for m in MORPHOLOGIES if rng.random() < _MORPHOLOGY_PROB}
    if {'ST_ELEV', 'ST_DEPR'} <= morph:
        morph.discard('ST_DEPR' if rng.random() < 0.5 else 'ST_ELEV')
    heart_rate = float(rng.uniform(*_HR_RANGE[rhythm]))
    rotation = _rotation(rng.normal(0.0, 20.0), rng.normal(0.0, 10.0))

    beats = _beat_times(rng, rhythm, heart_rate, duration)
    offsets, sigmas, amps, dirs = _waves(rng, rhythm, morph, 60.0 / heart_rate,
                                         rotation)
    heart = _sum_waves(rng, beats, offsets, sigmas, amps, dirs, n, fs)  # (T, 3)

    t = np.arange(n) / fs
    if rhythm == 'AFIB':
        # Fibrillatory waves: a wandering 4-8 Hz oscillation, strongest in V1.
        f0 = rng.uniform(4.0, 8.0)
        phase = 2 * np.pi * f0 * t + np.cumsum(rng.normal(0, 0.05, n))
        heart += (0.05 * rng.uniform(0.5, 1.5) * np.sin(phase))[:, None] * _unit(-0.2, 0.5, 0.8)

    independent = heart @ _LEAD_MATRIX  # (T, 8): I, II, V1..V6
    # Noise per independent lead; derived limb leads inherit it exactly.
    _add_noise_and_wander(rng, independent, t)

    lead_i, lead_ii = independent[:, 0], independent[:, 1]
    iii, avr, avl, avf = derive_limb_leads(lead_i, lead_ii)
    signal = np.column_stack([lead_i, lead_ii, iii, avr, avl, avf,
                              independent[:, 2:]]).astype(np.float32)

    labels = np.zeros(len(LABELS), np.int32)
    labels[rhythm_id] = 1
    for m in morph:
        labels[LABELS.index(m)] = 1
    return {
        'signal': signal,
        'fs': float(fs),
        'labels': labels,
        'rhythm': rhythm_id,
        'heart_rate': heart_rate,
        'age': float(np.round(rng.uniform(18.0, 90.0))),
        'sex': int(rng.integers(2)),
        'record_id': f'synthetic_{seed}_{index:07d}',
    }


def generate_records(seed: int, start: int, count: int, *, fs: float = 500.0,
                     duration_s: float | Tuple[float, float] = 10.0) -> Iterator[dict]:
    """Records `start .. start + count - 1` of the dataset with `seed`.

    Args:
      seed: dataset seed.
      start: first record index.
      count: number of records.
      fs: sampling rate (Hz).
      duration_s: seconds, or a (min, max) range drawn per record.

    Returns:
      iterator of `generate_record` dicts.
    """
    for i in range(start, start + count):
        yield generate_record(seed, i, fs=fs, duration_s=duration_s)
