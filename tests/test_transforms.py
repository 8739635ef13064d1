"""Tests of jepa_ecg.ecg.transforms on real-shaped (T, 12) signals."""

import numpy as np
import pytest
import scipy.signal

from jepa_ecg.ecg import transforms


def _dominant_hz(x: np.ndarray, fs: float) -> float:
    spectrum = np.abs(np.fft.rfft(x - x.mean()))
    return float(np.fft.rfftfreq(len(x), 1 / fs)[np.argmax(spectrum)])


def test_interpolate_nans_linear_and_edges():
    sig = np.tile(np.arange(10, dtype=np.float32)[:, None], (1, 12))
    sig[3:6, 0] = np.nan  # interior gap: linear
    sig[:2, 1] = np.nan  # leading: held at the first valid value
    sig[-3:, 2] = np.nan  # trailing: held at the last valid value
    out = transforms.interpolate_nans(sig)
    assert not np.isnan(out).any()
    np.testing.assert_allclose(out[:, 0], np.arange(10))
    np.testing.assert_allclose(out[:2, 1], [2, 2])
    np.testing.assert_allclose(out[-3:, 2], [6, 6, 6])
    np.testing.assert_allclose(out[:, 3:], sig[:, 3:])


def test_interpolate_nans_all_nan_lead_raises():
    sig = np.zeros((50, 12), np.float32)
    sig[:, 4] = np.nan
    with pytest.raises(ValueError, match='4'):
        transforms.interpolate_nans(sig)


def test_interpolate_nans_clean_signal_unchanged():
    sig = np.random.default_rng(0).normal(size=(100, 12)).astype(np.float32)
    np.testing.assert_array_equal(transforms.interpolate_nans(sig), sig)


@pytest.mark.parametrize('fs_in', [100, 250, 257, 360, 400, 1000])
def test_resample_to_500hz(fs_in):
    seconds = 10
    n = fs_in * seconds
    t = np.arange(n) / fs_in
    # 5 Hz and 23 Hz tones (below every input's Nyquist), per-lead amplitudes.
    tone = np.sin(2 * np.pi * 5 * t) + 0.3 * np.sin(2 * np.pi * 23 * t)
    sig = (tone[:, None] * np.linspace(0.5, 2.0, 12)).astype(np.float32)
    out = transforms.resample(sig, fs_in, 500)
    assert out.shape == (round(n * 500 / fs_in), 12) == (5000, 12)
    assert out.dtype == np.float32
    assert _dominant_hz(out[:, 0], 500) == pytest.approx(5.0, abs=0.1)
    # Same result as the reference implementation.
    np.testing.assert_allclose(
        out, scipy.signal.resample(sig.astype(np.float64), 5000, axis=0), atol=1e-4)
    # The tone survives: compare with the analytic signal at 500 Hz.
    t_out = np.arange(5000) / 500
    expect = np.sin(2 * np.pi * 5 * t_out) + 0.3 * np.sin(2 * np.pi * 23 * t_out)
    np.testing.assert_allclose(out[:, 0], 0.5 * expect, atol=1e-3)


def test_resample_length_rounds_and_equal_rate_is_identity():
    sig = np.random.default_rng(1).normal(size=(1001, 12)).astype(np.float32)
    for fs_in, fs_out in [(257, 500), (500, 257), (1000, 500), (500, 1000), (360, 500)]:
        out = transforms.resample(sig, fs_in, fs_out)
        n_out = round(1001 * fs_out / fs_in)
        assert out.shape == (n_out, 12)
        np.testing.assert_allclose(
            out, scipy.signal.resample(sig.astype(np.float64), n_out, axis=0), atol=1e-4)
    same = transforms.resample(sig, 500, 500)
    np.testing.assert_array_equal(same, sig)


def test_highpass_removes_drift_keeps_10hz():
    fs = 500
    t = np.arange(20 * fs) / fs
    drift = 2.0 * np.sin(2 * np.pi * 0.1 * t)
    tone = 0.5 * np.sin(2 * np.pi * 10 * t)
    sig = np.tile((drift + tone)[:, None], (1, 12)).astype(np.float32)
    out = transforms.highpass(sig, fs, cutoff=0.5, order=4)
    assert out.shape == sig.shape and out.dtype == np.float32
    core = slice(2 * fs, -2 * fs)  # away from the filter's edge transients
    residual = out[core, 0] - tone[core]
    # The drift's 2 mV is gone and the 10 Hz tone keeps amplitude and phase.
    assert np.abs(residual).max() < 0.02
    # Zero phase: the tone's peaks stay where they were.
    lag = np.argmax(np.correlate(out[core, 0], tone[core], mode='full')) - (len(tone[core]) - 1)
    assert lag == 0


def test_highpass_short_signal():
    sig = np.random.default_rng(2).normal(size=(20, 12)).astype(np.float32)
    assert transforms.highpass(sig, 500).shape == (20, 12)


def test_normalize_and_clip():
    rng = np.random.default_rng(3)
    mean = rng.normal(size=12)
    std = rng.uniform(0.5, 2, size=12)
    sig = (rng.normal(size=(1000, 12)) * std + mean).astype(np.float32)
    z = transforms.normalize(sig, mean, std)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(0), 0, atol=0.1)
    np.testing.assert_allclose(z.std(0), 1, atol=0.1)
    z[0, 0], z[1, 1] = 9.0, -9.0
    c = transforms.clip(z)
    assert c.max() <= 5 and c.min() >= -5
    assert c[0, 0] == 5 and c[1, 1] == -5


def test_window_start_gives_every_start_the_same_share():
    # Positions on a fine uniform grid hit each start 0..T-length equally often.
    n, length = 100, 40
    positions = (np.arange(61 * 1000) + 0.5) / (61 * 1000)
    starts = np.array([transforms.window_start(n, length, u) for u in positions])
    assert starts.min() == 0 and starts.max() == n - length
    np.testing.assert_array_equal(np.bincount(starts), np.full(n - length + 1, 1000))
    assert transforms.window_start(length, length, 0.999) == 0
    with pytest.raises(ValueError, match='shorter than the window'):
        transforms.window_start(39, length, 0.0)


@pytest.mark.parametrize('n,length,stride,expected', [
    (5000, 2500, 1250, [0, 1250, 2500]),      # strides reach the end
    (1000, 250, 125, [0, 125, 250, 375, 500, 625, 750]),  # PTB-XL evaluation: 7 windows
    (5001, 1000, 333, [0, 333, 666, 999, 1332, 1665, 1998, 2331, 2664, 2997, 3330, 3663,
                       3996, 4001]),          # plus one aligned to the end
    (999, 1000, 10, [0]),                     # shorter: one window (padded by the caller)
    (10, 3, 4, [0, 4, 7])])
def test_window_starts_and_cut_windows(n, length, stride, expected):
    np.testing.assert_array_equal(transforms.window_starts(n, length, stride), expected)
    sig = np.random.default_rng(4).normal(size=(n, 12)).astype(np.float32)
    starts = [s for s in expected if s + length <= n]
    win = transforms.cut_windows(sig, length, starts)
    assert win.shape == (len(starts), length, 12)
    for w, s in zip(win, starts):
        np.testing.assert_array_equal(w, sig[s:s + length])


def test_window_starts_rejects_bad_arguments():
    with pytest.raises(ValueError):
        transforms.window_starts(10, 0, 1)
    with pytest.raises(ValueError):
        transforms.window_starts(10, 3, 0)
