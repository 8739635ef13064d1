"""Tests of the Grain pre-training pipeline on real (tiny) TFDS builds."""

import gc
import tracemalloc

import numpy as np
import pytest
import scipy.stats
import tensorflow_datasets as tfds

from jepa_ecg.data import datasets, preprocess
from jepa_ecg.data import pretrain as pipeline
from jepa_ecg.data import source_stats as stats
from jepa_ecg.data import sources as sources_lib
from jepa_ecg.data.stats import LeadStats
from jepa_ecg.ecg import transforms
from jepa_ecg.ecg.leads import LEADS
from tfds_builders import build
from tfds_builders.synthetic_ecg import synthetic_ecg_dataset_builder

Source = sources_lib.Source
SOURCES = {
    'pipe_a': Source('pipe_a', 'synthetic_ecg/tiny', 500.0),
    'pipe_b': Source('pipe_b', 'synthetic_ecg/tiny', 500.0),  # same data, another name
    'pipe_varlen': Source('pipe_varlen', 'synthetic_ecg/tiny_varlen', 500.0),
    'pipe_incart': Source('pipe_incart', 'synthetic_ecg/tiny_257hz', 257.0, highpass_hz=0.5),
    'pipe_small': Source('pipe_small', 'synthetic_ecg/small', 500.0),
}
# Standardising with these changes nothing: what is left is filtering and resampling.
UNIT_STATS = LeadStats(np.zeros(12), np.ones(12))
COMMON = dict(fs=500.0, window_seconds=10.0, patch_size=25, sources=SOURCES)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('tfds'))
    for config in ('tiny', 'tiny_varlen', 'tiny_257hz', 'small'):
        build.build_dataset(f'synthetic_ecg/{config}', path)
    for src in SOURCES.values():
        stats.save_lead_stats(stats.compute_lead_stats(src, path, max_records=32), src, path)
    return path


def _iterate(data_dir, mixture, steps, **kw):
    kw = {**dict(global_batch_size=8, seed=0), **COMMON, **kw}
    with pipeline.make_pretrain_iterator(mixture, data_dir=data_dir, **kw) as it:
        return [next(it) for _ in range(steps)]


def _assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_shapes_dtypes_and_masks(data_dir):
    (batch,) = _iterate(data_dir, {'pipe_a': 1.0}, 1)
    assert batch['signal'].shape == (8, 5000, 12) and batch['signal'].dtype == np.float32
    assert batch['source_id'].shape == (8,) and batch['source_id'].dtype == np.int32
    assert batch['predict_mask'].shape == (8, 200) and batch['predict_mask'].dtype == bool
    k_pad = batch['keep_idx'].shape[1]
    assert batch['keep_idx'].dtype == np.int32 and batch['keep_valid'].dtype == bool
    assert batch['keep_valid'].shape == (8, k_pad) and k_pad % 10 == 0
    num_keep = batch['keep_valid'].sum(1)
    assert (num_keep == num_keep[0]).all() and 30 <= num_keep[0] <= 50
    for i in range(8):
        kept = batch['keep_idx'][i][batch['keep_valid'][i]]
        assert not batch['predict_mask'][i][kept].any()
        assert (~batch['predict_mask'][i]).sum() == num_keep[0]
    assert np.abs(batch['signal']).max() <= 5.0 and np.isfinite(batch['signal']).all()


def test_normalisation_matches_stored_stats(data_dir):
    pipe = pipeline.PretrainPipeline({'pipe_a': 1.0}, data_dir=data_dir,
                                     global_batch_size=8, seed=3, **COMMON)
    batch = pipe.batch(5)
    plan = pipe.plan(5)
    lead_stats = stats.load_lead_stats(SOURCES['pipe_a'], data_dir)
    reader = datasets.open_source(SOURCES['pipe_a'], data_dir)
    for i in range(8):
        raw, _ = reader.read(plan['record'][i])  # 10 s records: the window is all of it
        expected = transforms.clip(transforms.normalize(raw, lead_stats['mean'], lead_stats['std']))
        np.testing.assert_allclose(batch['signal'][i], expected, rtol=1e-5, atol=1e-5)
    # Over many windows the z-scored leads are centred with unit spread.
    many = np.concatenate([pipe.batch(s)['signal'] for s in range(6)])
    np.testing.assert_allclose(many.mean((0, 1)), 0.0, atol=0.1)
    np.testing.assert_allclose(many.std((0, 1)), 1.0, atol=0.2)


def test_deterministic_and_resumable(data_dir):
    mixture = {'pipe_a': 0.5, 'pipe_varlen': 0.5}
    run = _iterate(data_dir, mixture, 5, num_threads=2)
    again = _iterate(data_dir, mixture, 5, num_threads=1, prefetch=1)
    resumed = _iterate(data_dir, mixture, 2, start_step=3, num_threads=3)
    for a, b in zip(run, again):
        _assert_batches_equal(a, b)
    _assert_batches_equal(run[3], resumed[0])
    _assert_batches_equal(run[4], resumed[1])
    assert not np.array_equal(run[0]['signal'], run[1]['signal'])
    other_seed = _iterate(data_dir, mixture, 1, seed=1)[0]
    assert not np.array_equal(run[0]['signal'], other_seed['signal'])
    # The in-thread path gives the same batches as the prefetching iterator.
    pipe = pipeline.PretrainPipeline(mixture, data_dir=data_dir, global_batch_size=8,
                                     seed=0, **COMMON)
    _assert_batches_equal(pipe.batch(4), run[4])


def test_per_process_sharding(data_dir):
    mixture = {'pipe_a': 0.5, 'pipe_b': 0.5}
    whole = _iterate(data_dir, mixture, 3)
    shards = [_iterate(data_dir, mixture, 3, process_index=p, process_count=2)
              for p in range(2)]
    for step in range(3):
        p0, p1 = shards[0][step], shards[1][step]
        assert p0['signal'].shape == (4, 5000, 12)
        assert not np.array_equal(p0['signal'], p1['signal'])
        # K (and so the padded shape) agrees across processes ...
        assert p0['keep_idx'].shape == p1['keep_idx'].shape
        assert p0['keep_valid'].sum(1)[0] == p1['keep_valid'].sum(1)[0]
        assert p0['keep_valid'].sum(1)[0] == whole[step]['keep_valid'].sum(1)[0]
        # ... and the processes' records are the global batch's two halves.
        np.testing.assert_array_equal(
            np.concatenate([p0['signal'], p1['signal']]), whole[step]['signal'])
        np.testing.assert_array_equal(
            np.concatenate([p0['source_id'], p1['source_id']]), whole[step]['source_id'])
    # Block placement is per process.
    assert not np.array_equal(shards[0][0]['predict_mask'], shards[1][0]['predict_mask'])


def test_batch_size_must_divide(data_dir):
    with pytest.raises(ValueError, match='divisible'):
        pipeline.make_pretrain_iterator({'pipe_a': 1.0}, data_dir=data_dir, seed=0,
                                        global_batch_size=9, process_count=2, **COMMON)


def test_mixture_matches_weights(data_dir):
    weights = {'pipe_a': 0.7, 'pipe_b': 0.2, 'pipe_varlen': 0.1}
    pipe = pipeline.PretrainPipeline(weights, data_dir=data_dir, global_batch_size=64,
                                     seed=11, **COMMON)
    ids = np.concatenate([pipe.plan(s)['source_id'] for s in range(300)])
    counts = np.bincount(ids, minlength=3)
    expected = np.array(list(weights.values())) * len(ids)
    _, p_value = scipy.stats.chisquare(counts, expected)
    assert p_value > 1e-3, (counts, expected)
    # Records within a source are uniform too (chi-square over 32 records).
    plans = [pipe.plan(s) for s in range(300)]
    records = np.concatenate([p['record'][p['source_id'] == 0] for p in plans])
    _, p_value = scipy.stats.chisquare(np.bincount(records, minlength=32))
    assert p_value > 1e-3
    # The iterator's batches carry exactly the planned sources.
    batches = _iterate(data_dir, weights, 3, global_batch_size=64, seed=11)
    for s, b in enumerate(batches):
        np.testing.assert_array_equal(b['source_id'], pipe.plan(s)['source_id'])


def test_short_records_dropped_and_counted(data_dir):
    pipe = pipeline.PretrainPipeline({'pipe_varlen': 1.0}, data_dir=data_dir,
                                     global_batch_size=16, seed=0, **COMMON)
    reader = datasets.open_source(SOURCES['pipe_varlen'], data_dir)
    short = sum(reader.read(i)[0].shape[0] < 5000 for i in range(len(reader)))
    assert 0 < short < len(reader)  # the dataset has both kinds
    for step in range(4):
        batch = pipe.batch(step)
        assert batch['signal'].shape == (16, 5000, 12)
        assert np.isfinite(batch['signal']).all()
    dropped = pipe.dropped_short_records['pipe_varlen']
    assert dropped > 0
    assert pipe.records_read == 4 * 16 + dropped


def test_long_records_resampled_and_filtered(data_dir):
    """INCART-like 60 s records at 257 Hz: crop with margin, high-pass, resample."""
    (batch,) = _iterate(data_dir, {'pipe_incart': 1.0}, 1)
    assert batch['signal'].shape == (8, 5000, 12) and np.isfinite(batch['signal']).all()
    reader = datasets.open_source(SOURCES['pipe_incart'], data_dir)
    signal, fs = reader.read(0)
    assert fs == 257.0 and signal.shape == (60 * 257, 12)
    # Away from the record's ends the cropped processing equals processing
    # the whole record, then cropping.
    full = transforms.resample(transforms.highpass(signal, 257.0, 0.5), 257.0, 500.0)
    for position in (0.3, 0.6):
        window = preprocess.preprocess(
            signal, 257.0, LEADS, target_fs=500.0, stats=UNIT_STATS, highpass_hz=0.5,
            window=preprocess.Window(5000, position), clip=np.inf)
        start = int(position * (full.shape[0] - 5000 + 1))
        reference = full[start:start + 5000]
        error = np.abs(window - reference).max(0) / reference.std(0)
        assert error.max() < 0.02


def test_memory_does_not_grow_with_dataset(data_dir):
    def peak_bytes(source):
        pipe = pipeline.PretrainPipeline({source: 1.0}, data_dir=data_dir,
                                         global_batch_size=8, seed=0, **COMMON)
        pipe.batch(0)  # open readers before measuring
        gc.collect()
        tracemalloc.start()
        for step in range(3):
            pipe.batch(step)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert pipe.records_read == 4 * 8  # only the records the batches use
        return peak

    batch_bytes = 8 * 5000 * 12 * 4
    tiny, small = peak_bytes('pipe_a'), peak_bytes('pipe_small')  # 32 vs 512 records
    assert small < 4 * batch_bytes  # the small split alone is ~120 MB
    assert small < 1.5 * tiny + 2**20


class _BytesEncodedBuilder(synthetic_ecg_dataset_builder.Builder):
    """The synthetic builder storing the signal as one raw bytes buffer."""

    name = 'synthetic_ecg_bytes_test'
    SIGNAL_ENCODING = tfds.features.Encoding.BYTES


def test_reader_decodes_bytes_encoding(tmp_path):
    builder = _BytesEncodedBuilder(config='tiny', data_dir=str(tmp_path))
    with build.uncompressed_array_record_writes():
        builder.download_and_prepare(file_format='array_record')
    source = Source('pipe_bytes', 'synthetic_ecg_bytes_test/tiny', 500.0)
    reader = datasets.open_source(source, str(tmp_path))
    ref = builder.as_data_source('train')
    for i in (0, 5, 31):
        signal, fs = reader.read(i)
        np.testing.assert_array_equal(signal, ref[i]['signal'])
        assert fs == 500.0


def test_missing_stats_and_wrong_format(data_dir, tmp_path):
    no_stats = Source('pipe_no_stats', 'synthetic_ecg/tiny', 500.0)
    with pytest.raises(stats.MissingLeadStatsError, match='jepa_ecg.data.source_stats'):
        pipeline.make_pretrain_iterator({'pipe_no_stats': 1.0}, data_dir=data_dir, seed=0,
                                        global_batch_size=8, **{**COMMON, 'sources': {
                                            'pipe_no_stats': no_stats}})
    with pytest.raises(FileNotFoundError, match='not built'):
        datasets.open_source(SOURCES['pipe_a'], str(tmp_path))


def test_worker_processes_give_the_same_batches(data_dir):
    """Grain worker processes compute exactly what in-process threads do."""
    mixture = {'pipe_a': 0.5, 'pipe_varlen': 0.5}
    threads = _iterate(data_dir, mixture, 3)
    workers = _iterate(data_dir, mixture, 3, worker_count=2)
    resumed = _iterate(data_dir, mixture, 1, start_step=2, worker_count=2)
    for a, b in zip(threads, workers):
        _assert_batches_equal(a, b)
    _assert_batches_equal(threads[2], resumed[0])
