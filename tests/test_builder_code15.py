"""code15 builder: padding trimmed, csv/HDF5 mismatches, bad signals."""

import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_builders  # noqa: F401  (registers the builders)
from tfds_builders import skips
from tfds_builders.code15 import code15_dataset_builder as code15
from tfds_builders.code15 import make_dummy_data as dummy
from tfds_builders.code15 import reading
# TFDS conformance tests, collected by `pytest tests` through this import.
from tfds_builders.code15.code15_dataset_builder_test import Code15Test  # noqa: F401
from tfds_builders.ptb_xl.make_dummy_data import ecg_like


def _build(manual_dir, data_dir, **kwargs):
    builder = tfds.builder('code15', data_dir=str(data_dir), **kwargs)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual_dir)))
    return tfds.builder('code15', data_dir=str(data_dir))


def _examples(builder):
    return {int(ex['exam_id']): ex
            for ex in tfds.as_numpy(builder.as_dataset(split='train'))}


@pytest.fixture(scope='module')
def dummy_build(tmp_path_factory):
    return _build(dummy.DUMMY_DIR, tmp_path_factory.mktemp('code15_tfds'))


def test_trim_zero_padding():
    x = np.zeros((10, 12), np.float32)
    x[3, 0] = 1.0
    x[6, 5] = -1.0
    assert reading.trim_zero_padding(x).shape == (4, 12)
    assert reading.trim_zero_padding(np.zeros((5, 12))).shape == (0, 12)


def test_examples_are_trimmed_and_labelled(dummy_build):
    examples = _examples(dummy_build)
    assert sorted(examples) == [1001, 1005]
    ex = examples[1001]
    assert ex['fs'] == 400.0 and ex['signal'].shape == (4000, 12)
    np.testing.assert_allclose(ex['signal'], ecg_like(4000, 400, 1),
                               atol=1e-6)
    names = dummy_build.info.metadata['label_names']
    assert names == list(code15.LABEL_NAMES)
    assert [names[i] for i in np.flatnonzero(ex['labels'])] == ['RBBB', 'AF']
    assert ex['sex'] == 0 and ex['age'] == 60.0 and not ex['normal_ecg']
    assert ex['patient_id'] == 51001 and ex['record_id'] == b'1001'
    other = examples[1005]
    assert other['sex'] == 1 and other['age'] == -1.0 and other['normal_ecg']
    assert not other['labels'].any()


def test_csv_hdf5_mismatches_are_counted(dummy_build):
    report = dummy_build.info.metadata['build_report']['train']
    assert report['skipped'] == {
        skips.TOO_SHORT: 1,          # 1002: 7 s
        code15.NOT_IN_HDF5: 1,        # 1003
        skips.MISSING_FILE: 1,       # 1004: exams_part1.hdf5 absent
        code15.NOT_IN_CSV: 1,         # the padding row (exam_id 0)
    }, report
    assert report['written'] == 2


BAD_CASES = {
    2001: skips.ALL_NAN_LEAD,
    2002: skips.FLAT_LEAD,
    2003: skips.FLAT_LEAD,       # all samples zero
    2004: skips.TOO_SHORT,
    3001: code15.NOT_IN_CSV,      # in the HDF5 only
}


@pytest.fixture(scope='module')
def bad_build(tmp_path_factory):
    root = tmp_path_factory.mktemp('code15_bad_src')
    shutil.copytree(dummy.DUMMY_DIR, root, dirs_exist_ok=True)
    good = ecg_like(4000, 400, 9).astype(np.float32)
    all_nan = good.copy()
    all_nan[:, 2] = np.nan
    flat = good.copy()
    flat[:, 11] = 0.5
    part2 = {
        2001: dummy.padded(all_nan),
        2002: dummy.padded(flat),
        2003: np.zeros((dummy.NUM_SAMPLES, 12), np.float32),
        2004: dummy.padded(good[:3900]),
        2005: dummy.padded(good),  # fine
        3001: dummy.padded(good),
    }
    dummy.write_part(root / 'exams_part2.hdf5', list(part2), part2.values())
    import pandas as pd  # pylint: disable=g-import-not-at-top
    rows = pd.read_csv(root / 'exams.csv').to_dict('records')
    rows += [dummy.csv_row(e, 'exams_part2.hdf5') for e in part2 if e < 3000]
    dummy.write_csv(root, rows)
    return _build(root, tmp_path_factory.mktemp('code15_bad_tfds'),
                  processes=1)


@pytest.mark.parametrize('exam_id,reason', sorted(BAD_CASES.items()))
def test_bad_record_is_skipped_and_counted(bad_build, exam_id, reason):
    report = bad_build.info.metadata['build_report']['train']
    assert any(s.split(':')[0] == str(exam_id)
               for s in report['skip_samples'][reason]), report
    assert exam_id not in _examples(bad_build)


def test_bad_build_counts(bad_build):
    report = bad_build.info.metadata['build_report']['train']
    assert report['skipped'] == {
        skips.ALL_NAN_LEAD: 1, skips.FLAT_LEAD: 2,
        skips.TOO_SHORT: 2,  # + 1002
        code15.NOT_IN_CSV: 3,  # 3001 + two padding rows
        code15.NOT_IN_HDF5: 1, skips.MISSING_FILE: 1}, report
    assert sorted(_examples(bad_build)) == [1001, 1005, 2005]


def test_reader_pool_matches_serial(tmp_path, dummy_build, monkeypatch):
    monkeypatch.setattr(code15, 'ROWS_PER_TASK', 1)
    pooled = _build(dummy.DUMMY_DIR, tmp_path, processes=2, serial_below=0)
    a, b = _examples(pooled), _examples(dummy_build)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k]['signal'], b[k]['signal'])


def test_downloads_when_manual_dir_is_empty(tmp_path, monkeypatch):
    extracted = tmp_path / 'extracted'

    def fake_download_and_extract(self, urls):  # no network in tests
        out = {}
        for key in urls:
            if key == 'exams.csv':
                out[key] = dummy.DUMMY_DIR / 'exams.csv'
            else:  # each zip extracts to a folder holding its part file
                folder = extracted / key
                folder.mkdir(parents=True)
                part = dummy.DUMMY_DIR / f'exams_{key}.hdf5'
                if part.exists():
                    shutil.copy(part, folder / part.name)
                out[key] = folder
        return out

    monkeypatch.setattr(tfds.download.DownloadManager, 'download_and_extract',
                        fake_download_and_extract)
    (tmp_path / 'empty').mkdir()
    builder = _build(tmp_path / 'empty', tmp_path / 'tfds', download=True)
    assert builder.info.splits['train'].num_examples == 2
    assert sorted(p.name for p in dummy.DUMMY_DIR.iterdir()) == [
        'exams.csv', 'exams_part0.hdf5']  # nothing written next to sources
