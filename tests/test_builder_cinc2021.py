"""cinc2021 builder: .mat reading, header quirks, every bad-input reason."""

import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_builders  # noqa: F401  (registers the builders)
from tfds_builders import features
from tfds_builders import skips
from tfds_builders.cinc2021 import cinc2021_dataset_builder as cinc
from tfds_builders.cinc2021 import make_dummy_data as dummy
# TFDS conformance tests, collected by `pytest tests` through this import.
from tfds_builders.cinc2021.cinc2021_dataset_builder_test import (  # noqa: F401
    Cinc2021Cpsc2018Test, Cinc2021StPetersburgTest)
from tfds_builders.ptb_xl.make_dummy_data import ecg_like


def _build(manual_dir, data_dir, config='cpsc2018', **kwargs):
    builder = tfds.builder(f'cinc2021/{config}', data_dir=str(data_dir),
                           **kwargs)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual_dir)))
    return tfds.builder(f'cinc2021/{config}', data_dir=str(data_dir))


def _examples(builder):
    return {ex['record_id'].decode(): ex
            for ex in tfds.as_numpy(builder.as_dataset(split='train'))}


@pytest.fixture(scope='module')
def dummy_build(tmp_path_factory):
    # manual_dir = the `training/` folder itself (the challenge root is
    # what the conformance test passes).
    return _build(dummy.DUMMY_DIR / 'training',
                  tmp_path_factory.mktemp('cinc_tfds'))


def test_configs_cover_every_source():
    names = {c.name: c.folder for c in cinc.Builder.BUILDER_CONFIGS}
    assert names == {
        'chapman_shaoxing': 'chapman_shaoxing', 'cpsc2018': 'cpsc_2018',
        'cpsc2018_extra': 'cpsc_2018_extra', 'georgia': 'georgia',
        'ningbo': 'ningbo', 'ptb': 'ptb', 'ptb_xl': 'ptb-xl',
        'st_petersburg': 'st_petersburg_incart'}


def test_signal_scaling_and_header_fields(dummy_build):
    examples = _examples(dummy_build)
    assert sorted(examples) == ['A0001', 'A0003']
    a1 = examples['A0001']
    assert a1['fs'] == 500.0 and a1['signal'].shape == (5000, 12)
    np.testing.assert_allclose(a1['signal'], ecg_like(5000, 500, 1),
                               atol=6e-4)  # int16 at 1000/mV
    assert a1['age'] == 74.0 and a1['sex'] == 0
    assert [c.decode() for c in a1['dx_snomed']] == ['59118001', '164889003']
    # Quirky header: `A0003.mat` name, NaN age, `F`, lower-case leads.
    a3 = examples['A0003']
    assert a3['age'] == -1.0 and a3['sex'] == 1
    np.testing.assert_allclose(a3['signal'], ecg_like(5000, 500, 3),
                               atol=6e-4)
    report = dummy_build.info.metadata['build_report']['train']
    assert report['skipped'] == {skips.TOO_SHORT: 1}


@pytest.mark.parametrize('value,expected', [
    ('Male', 0), ('M', 0), (' female ', 1), ('F', 1), ('Unknown', -1),
    ('', -1), (None, -1)])
def test_parse_sex(value, expected):
    assert features.parse_sex(value) == expected


@pytest.mark.parametrize('value,expected', [
    ('74', 74.0), (' 61 ', 61.0), ('NaN', -1.0), ('Unknown', -1.0),
    ('', -1.0), ('-1', -1.0), (None, -1.0)])
def test_parse_age(value, expected):
    assert features.parse_age(value) == expected


def test_parse_dx():
    assert cinc.parse_dx('164889003, 59118001') == ['164889003', '59118001']
    assert cinc.parse_dx('Unknown') == [] and cinc.parse_dx(None) == []


def test_native_rate_is_kept(tmp_path):
    builder = _build(dummy.DUMMY_DIR, tmp_path, config='st_petersburg')
    (ex,) = _examples(builder).values()
    assert ex['fs'] == 257.0 and ex['signal'].shape == (2570, 12)


BAD_CASES = {
    'B0001': skips.MISSING_LEAD,
    'B0002': skips.ALL_NAN_LEAD,
    'B0003': skips.FLAT_LEAD,
    'B0004': skips.TOO_SHORT,
    'B0005': skips.BAD_HEADER,
    'B0006': skips.UNREADABLE_FILE,
    'B0007': skips.MISSING_FILE,
}


@pytest.fixture(scope='module')
def bad_build(tmp_path_factory):
    root = tmp_path_factory.mktemp('cinc_bad_src')
    shutil.copytree(dummy.DUMMY_DIR, root, dirs_exist_ok=True)
    folder = root / 'training' / 'cpsc_2018' / 'g2'
    good = ecg_like(5000, 500, 9)
    dummy.write_record(folder, 'B0001', good[:, :11], 500,
                       lead_names=dummy.CINC_LEAD_NAMES[:11])
    all_nan = good.copy()
    all_nan[:, 3] = np.nan  # stored as -32768 throughout
    dummy.write_record(folder, 'B0002', all_nan, 500)
    flat = good.copy()
    flat[:, 9] = 0.0
    dummy.write_record(folder, 'B0003', flat, 500)
    dummy.write_record(folder, 'B0004', good[:4999], 500)  # just under 10 s
    dummy.write_record(folder, 'B0005', good, 500)
    (folder / 'B0005.hea').write_text('B0005.mat 12 500 5000\nB0005.mat 16\n')
    dummy.write_record(folder, 'B0006', good, 500)
    (folder / 'B0006.mat').write_bytes(b'not a MATLAB file')
    dummy.write_record(folder, 'B0007', good, 500)
    (folder / 'B0007.mat').unlink()
    dummy.write_record(folder, 'B0008', good, 500, age='Unknown',
                       sex='Unknown', dx='')
    return _build(root, tmp_path_factory.mktemp('cinc_bad_tfds'), processes=1)


@pytest.mark.parametrize('record,reason', sorted(BAD_CASES.items()))
def test_bad_record_is_skipped_and_counted(bad_build, record, reason):
    report = bad_build.info.metadata['build_report']['train']
    # dummy_data's A0002 is too short as well.
    assert report['skipped'][reason] == 1 + (reason == skips.TOO_SHORT), report
    assert any(record in s for s in report['skip_samples'][reason]), report
    assert record not in _examples(bad_build)


def test_good_records_survive_bad_neighbours(bad_build):
    examples = _examples(bad_build)
    assert sorted(examples) == ['A0001', 'A0003', 'B0008']
    assert examples['B0008']['age'] == -1.0
    assert examples['B0008']['sex'] == -1
    assert list(examples['B0008']['dx_snomed']) == []


def test_missing_source_folder_is_explained(tmp_path):
    (tmp_path / 'training' / 'georgia').mkdir(parents=True)
    (tmp_path / 'training' / 'georgia' / 'x.txt').write_text('')
    builder = tfds.builder('cinc2021/ningbo', data_dir=str(tmp_path / 'd'),
                           download=False)
    with pytest.raises(FileNotFoundError, match='ningbo'):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=str(tmp_path)))
