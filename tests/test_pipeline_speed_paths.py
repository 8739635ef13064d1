"""The pipeline's fast reading path: same batches as the full parse, damaged files still caught."""

import glob
import os
import shutil
import statistics

import numpy as np
import pytest
from tensorflow_datasets.proto import tf_example_pb2

from jepa_ecg.data import datasets
from jepa_ecg.data import example_wire
from jepa_ecg.data import pretrain as pipeline
from jepa_ecg.data import sources as sources_lib
from jepa_ecg.data import source_stats as stats
from tfds_builders import build

Source = sources_lib.Source
SOURCES = {
    'wire_a': Source('wire_a', 'synthetic_ecg/tiny', 500.0),
    'wire_incart': Source('wire_incart', 'synthetic_ecg/tiny_257hz', 257.0, highpass_hz=0.5),
}
COMMON = dict(fs=500.0, window_seconds=10.0, patch_size=25, sources=SOURCES)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('tfds'))
    for config in ('tiny', 'tiny_257hz'):
        build.build_dataset(f'synthetic_ecg/{config}', path)
    for src in SOURCES.values():
        stats.save_lead_stats(stats.compute_lead_stats(src, path, max_records=32), src, path)
    return path


def test_wire_decode_equals_full_parse(data_dir):
    for src in SOURCES.values():
        reader = datasets.open_source(src, data_dir)
        decoder = example_wire.SignalDecoder(reader)
        assert decoder.fast
        for i in range(len(reader)):
            signal, fs = decoder(i)
            ex = reader[i]
            assert signal.dtype == ex['signal'].dtype and signal.shape == ex['signal'].shape
            np.testing.assert_array_equal(signal, ex['signal'])
            assert type(fs) is type(ex['fs']) and fs == ex['fs']


def test_wire_decode_declines_other_layouts(data_dir):
    reader = datasets.open_source(SOURCES['wire_a'], data_dir)
    raw = reader.raw(0)
    # Truncated, padded or foreign bytes: None, never a wrong signal.
    for bad in (raw[:len(raw) // 2], raw[:-3], raw + b'\x00', b'', b'\xff' * 64):
        assert example_wire.signal_and_fs(bad) is None
    # A signal stored as a float list (not raw bytes) is left to the full parse.
    ex = tf_example_pb2.Example()
    ex.features.feature['signal'].float_list.value.extend(np.arange(24, dtype=np.float32))
    assert example_wire.signal_and_fs(ex.SerializeToString()) is None
    # Features in any order, unknown ones skipped.
    ex = tf_example_pb2.Example()
    ex.features.feature['zz'].int64_list.value.extend([1, 2, 3])
    ex.features.feature['fs'].float_list.value.append(257.0)
    values = np.arange(36, dtype=np.float32)
    ex.features.feature['signal'].bytes_list.value.append(values.tobytes())
    signal, fs = example_wire.signal_and_fs(ex.SerializeToString())
    np.testing.assert_array_equal(signal, values.reshape(3, 12))
    assert fs == np.float32(257.0) and isinstance(fs, np.float32)


@pytest.mark.parametrize('mixture', [{'wire_a': 1.0}, {'wire_a': 0.5, 'wire_incart': 0.5}])
def test_batches_equal_the_full_parse_path(data_dir, mixture):
    fast = pipeline.PretrainPipeline(mixture, data_dir=data_dir, global_batch_size=8,
                                     seed=5, **COMMON)
    slow = pipeline.PretrainPipeline(mixture, data_dir=data_dir, global_batch_size=8,
                                     seed=5, **COMMON)
    for decoder in slow._read._decoders:  # pylint: disable=protected-access
        decoder.fast = False  # reader[i] + preprocess: the plain path
    for step in (0, 3, 11):
        a, b = fast.batch(step), slow.batch(step)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_flipped_bytes_in_a_shard_are_detected(data_dir, tmp_path):
    """Damage in the middle of a shard raises on the records it hits; no
    record comes back with different contents."""
    damaged = str(tmp_path / 'tfds')
    shutil.copytree(data_dir, damaged)
    src = SOURCES['wire_a']
    reader = datasets.open_source(src, damaged)
    clean = [reader[i]['signal'].copy() for i in range(len(reader))]
    (shard,) = glob.glob(os.path.join(damaged, 'synthetic_ecg', 'tiny', '*', '*-train.*'))
    middle = os.path.getsize(shard) // 2
    with open(shard, 'r+b') as f:
        f.seek(middle)
        data = f.read(16)
        f.seek(middle)
        f.write(bytes(b ^ 0xFF for b in data))

    decoder = example_wire.SignalDecoder(datasets.open_source(src, damaged))
    raised = 0
    for i in range(len(clean)):
        try:
            signal, _ = decoder(i)
        except datasets.DatasetReadError as e:
            assert 'python -m tfds_builders' in str(e)
            raised += 1
            continue
        np.testing.assert_array_equal(signal, clean[i], err_msg=f'record {i} changed silently')
    assert raised >= 1
    # The pipeline reads every record of the epoch within its first steps.
    pipe = pipeline.PretrainPipeline({'wire_a': 1.0}, data_dir=damaged, global_batch_size=8,
                                     seed=0, **COMMON)
    with pytest.raises(datasets.DatasetReadError, match='is damaged'):
        for step in range(len(clean) // 8):
            pipe.batch(step)


@pytest.mark.slow
def test_benchmark_against_the_published_loader_runs(official_dir):
    """`--what=pipeline_vs_published` (smoke) prints both rates and their ratio."""
    pytest.importorskip('torch')
    import json  # pylint: disable=g-import-not-at-top
    import subprocess  # pylint: disable=g-import-not-at-top
    import sys  # pylint: disable=g-import-not-at-top
    from conftest import REPO  # pylint: disable=g-import-not-at-top
    out = subprocess.run(
        [sys.executable, '-m', 'experiments.benchmark', '--smoke', '--what=pipeline_vs_published',
         f'--official_dir={official_dir}'], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (line,) = [json.loads(l) for l in out.stdout.splitlines() if l.startswith('{')]
    assert line['what'] == 'pipeline_vs_published' and line['reps'] >= 2
    assert line['ours_records_per_s'] > 0 and line['published_records_per_s'] > 0
    assert line['ratio'] == pytest.approx(statistics.median(line['ratios']))
