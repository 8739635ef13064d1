"""Tests of the synthetic ECG generator and its TFDS builder (real builds)."""

import numpy as np
import pytest
import scipy.signal
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from jepa_ecg.ecg import synthetic
from jepa_ecg.ecg.leads import LEADS
from tfds_builders import build
from tfds_builders import features


def test_generate_record_contract_and_determinism():
    rec = synthetic.generate_record(3, 17)
    assert rec['signal'].shape == (5000, 12) and rec['signal'].dtype == np.float32
    assert np.isfinite(rec['signal']).all()
    assert rec['fs'] == 500.0
    assert rec['labels'].shape == (len(synthetic.LABELS),)
    assert rec['labels'][:len(synthetic.RHYTHMS)].sum() == 1  # one rhythm
    assert rec['labels'][rec['rhythm']] == 1
    assert rec['sex'] in (0, 1) and 18 <= rec['age'] <= 90
    again = synthetic.generate_record(3, 17)
    np.testing.assert_array_equal(rec['signal'], again['signal'])
    np.testing.assert_array_equal(rec['labels'], again['labels'])
    other = synthetic.generate_record(3, 18)
    assert not np.array_equal(rec['signal'], other['signal'])
    assert not np.array_equal(rec['signal'], synthetic.generate_record(4, 17)['signal'])


@pytest.mark.parametrize('index', range(8))
def test_einthoven_and_goldberger(index):
    x = synthetic.generate_record(0, index)['signal'].astype(np.float64)
    lead = {name: x[:, i] for i, name in enumerate(LEADS)}
    atol = 1e-5
    np.testing.assert_allclose(lead['III'], lead['II'] - lead['I'], atol=atol)
    np.testing.assert_allclose(lead['aVR'], -(lead['I'] + lead['II']) / 2, atol=atol)
    np.testing.assert_allclose(lead['aVL'], lead['I'] - lead['II'] / 2, atol=atol)
    np.testing.assert_allclose(lead['aVF'], lead['II'] - lead['I'] / 2, atol=atol)


def test_heart_rate_matches_r_peaks_and_classes_vary():
    recs = [synthetic.generate_record(1, i) for i in range(120)]
    rhythms = {r['rhythm'] for r in recs}
    assert rhythms == set(range(len(synthetic.RHYTHMS)))
    morph = np.array([r['labels'][len(synthetic.RHYTHMS):] for r in recs])
    assert (morph.sum(0) > 0).all()  # every morphology class occurs
    checked = 0
    for r in recs:
        if synthetic.RHYTHMS[r['rhythm']] == 'AFIB' or r['labels'][synthetic.LABELS.index('LOW_VOLT')]:
            continue
        # QRS complexes carry the 8-30 Hz energy: peaks of its smoothed sum
        # over all leads, at most one per 250 ms.
        sos = scipy.signal.butter(2, [8, 30], 'bandpass', fs=500, output='sos')
        band = scipy.signal.sosfiltfilt(sos, r['signal'], axis=0)
        energy = np.convolve((band ** 2).sum(axis=1), np.ones(40) / 40, mode='same')
        peaks, _ = scipy.signal.find_peaks(energy, height=0.3 * energy.max(), distance=125)
        bpm = 60 * 500 / np.median(np.diff(peaks))
        assert bpm == pytest.approx(r['heart_rate'], rel=0.12)
        checked += 1
    assert checked > 30


def test_variable_duration():
    lengths = {synthetic.generate_record(0, i, fs=250, duration_s=(4.0, 30.0))['signal'].shape[0]
               for i in range(10)}
    assert len(lengths) > 5 and min(lengths) >= 1000 and max(lengths) <= 7500


def test_builder_tiny(tmp_path):
    builder = build.build_dataset('synthetic_ecg/tiny', str(tmp_path))
    info = builder.info
    assert info.splits['train'].num_examples == 32
    assert info.splits['test'].num_examples == 8
    assert list(info.metadata['label_names']) == list(synthetic.LABELS)
    assert list(info.metadata['rhythm_names']) == list(synthetic.RHYTHMS)
    ds = builder.as_data_source('train')
    ids = set()
    for i in range(len(ds)):
        ex = ds[i]
        assert ex['signal'].shape == (5000, 12) and ex['signal'].dtype == np.float32
        assert ex['fs'] == 500.0
        rid = ex['record_id'].decode() if isinstance(ex['record_id'], bytes) else ex['record_id']
        ids.add(rid)
        index = int(rid.rsplit('_', 1)[1])
        # The stored record is the generator's record (no drift in between).
        ref = synthetic.generate_record(0, index)
        np.testing.assert_array_equal(ex['signal'], ref['signal'])
        np.testing.assert_array_equal(ex['labels'], ref['labels'])
        assert ex['sex'] == ref['sex'] and ex['age'] == ref['age']
    assert ids == {f'synthetic_0_{i:07d}' for i in range(32)}
    test_ids = {int(ds_rec['record_id'].decode().rsplit('_', 1)[1])
                for ds_rec in builder.as_data_source('test')}
    assert test_ids == set(range(32, 40))  # no overlap with train


@pytest.mark.parametrize('real', ['ptb_xl/records100', 'ptb_xl/records500',
                                  'cinc2021/cpsc2018', 'code15', 'mimic_iv_ecg'])
def test_synthetic_declares_core_features_as_the_real_builders(tmp_path, real):
    """The offline default exercises the real sources' decoding path."""
    synth = tfds.builder('synthetic_ecg/tiny', data_dir=str(tmp_path)).info.features
    other = tfds.builder(real, data_dir=str(tmp_path)).info.features
    for key in ('signal', 'fs'):
        assert synth[key].to_json() == other[key].to_json(), key
        assert synth[key].get_serialized_info() == other[key].get_serialized_info()
        assert synth[key].doc == other[key].doc
    assert synth['signal'].to_json()['content']['encoding'] == 'bytes'
    for key in features.core_features():
        assert synth[key].to_json() == other[key].to_json(), key


def test_synthetic_signal_is_stored_as_raw_bytes(tmp_path):
    builder = build.build_dataset('synthetic_ecg/tiny', str(tmp_path))
    raw = builder.as_data_source(
        'test', deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)[0]
    feature = tf_example_pb2.Example.FromString(raw).features.feature
    # One float32 buffer, as ptb_xl & co. write it, not a float_list.
    (buffer,) = feature['signal'].bytes_list.value
    signal = np.frombuffer(buffer, np.float32).reshape(-1, 12)
    index = int(feature['record_id'].bytes_list.value[0].decode().rsplit('_', 1)[1])
    np.testing.assert_array_equal(signal, synthetic.generate_record(0, index)['signal'])
    assert list(feature['fs'].float_list.value) == [500.0]
