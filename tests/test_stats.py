"""Tests of per-lead statistics: exact streaming moments, storage, errors."""

import json

import numpy as np
import pytest

from jepa_ecg.data import datasets
from jepa_ecg.data import sources as sources_lib
from jepa_ecg.data import source_stats as stats
from jepa_ecg.ecg import transforms
from tfds_builders import build

TINY = sources_lib.Source('stats_tiny', 'synthetic_ecg/tiny', 500.0)
VARLEN_HP = sources_lib.Source('stats_varlen_hp', 'synthetic_ecg/tiny_varlen', 500.0,
                               highpass_hz=0.5)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('tfds'))
    build.build_dataset('synthetic_ecg/tiny', path)
    build.build_dataset('synthetic_ecg/tiny_varlen', path)
    return path


def _all_records(source, data_dir):
    reader = datasets.open_source(source, data_dir)
    return [reader.read(i)[0] for i in range(len(reader))]


def test_running_stats_match_numpy():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(3.0, 2.0, size=(int(n), 12)) * np.arange(1, 13)
              for n in rng.integers(1, 500, size=20)]
    running = stats.RunningLeadStats()
    for c in chunks:
        running.update(c)
    allx = np.concatenate(chunks)
    np.testing.assert_allclose(running.mean, allx.mean(0), rtol=1e-10)
    np.testing.assert_allclose(running.std, allx.std(0), rtol=1e-10)
    assert running.count == len(allx)


def test_compute_save_load_round_trip(data_dir):
    computed = stats.compute_lead_stats(TINY, data_dir)
    allx = np.concatenate(_all_records(TINY, data_dir)).astype(np.float64)
    np.testing.assert_allclose(computed['mean'], allx.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(computed['std'], allx.std(0), rtol=1e-6)
    assert computed['num_records'] == 32 and computed['num_samples'] == 32 * 5000
    path = stats.save_lead_stats(computed, TINY, data_dir)
    # Stored with the dataset: in the builder's versioned folder.
    assert path.parent.name == '1.1.0' and path.parent.parent.name == 'tiny'
    loaded = stats.load_lead_stats(TINY, data_dir)
    assert loaded['mean'] == computed['mean'] and loaded['std'] == computed['std']
    # A second source on another dataset does not clobber it.
    stats.save_lead_stats(stats.compute_lead_stats(VARLEN_HP, data_dir, max_records=4),
                          VARLEN_HP, data_dir)
    assert stats.load_lead_stats(TINY, data_dir)['mean'] == computed['mean']


def test_highpass_applied_before_stats(data_dir):
    computed = stats.compute_lead_stats(VARLEN_HP, data_dir, max_records=6)
    records = _all_records(VARLEN_HP, data_dir)[:6]
    filtered = np.concatenate([transforms.highpass(r, 500.0, 0.5) for r in records])
    np.testing.assert_allclose(computed['mean'], filtered.mean(0), atol=1e-6)
    np.testing.assert_allclose(computed['std'], filtered.std(0), rtol=1e-5)
    assert computed['num_records'] == 6
    raw_mean = np.concatenate(records).mean(0)
    # Baseline wander is gone: the filtered means are closer to zero.
    assert np.abs(computed['mean']).mean() < np.abs(raw_mean).mean()


def test_missing_stats_error_names_the_command(data_dir):
    missing = sources_lib.Source('never_computed', 'synthetic_ecg/tiny', 500.0)
    with pytest.raises(stats.MissingLeadStatsError) as err:
        stats.load_lead_stats(missing, data_dir)
    message = str(err.value)
    assert 'python -m jepa_ecg.data.source_stats --source=never_computed' in message
    assert f'--data_dir={data_dir}' in message


def test_cli(data_dir, monkeypatch, capsys):
    cli_source = sources_lib.Source('stats_cli', 'synthetic_ecg/tiny', 500.0)
    monkeypatch.setitem(sources_lib.SOURCES, 'stats_cli', cli_source)
    assert stats.main(['--source=stats_cli', f'--data_dir={data_dir}', '--max_records=5']) == 0
    assert 'wrote' in capsys.readouterr().out
    stored = json.loads(stats.stats_path(cli_source, data_dir).read_text())
    assert stored['stats_cli']['num_records'] == 5
    assert len(stored['stats_cli']['std']) == 12


def test_ensure_lead_stats_computes_once(data_dir):
    src = sources_lib.Source('stats_ensure', 'synthetic_ecg/tiny', 500.0)
    first = stats.ensure_lead_stats(src, data_dir, max_records=3)
    assert first['num_records'] == 3
    assert stats.ensure_lead_stats(src, data_dir)['created'] == first['created']
