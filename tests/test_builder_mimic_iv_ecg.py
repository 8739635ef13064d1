"""mimic_iv_ecg builder: lead reordering, NaNs, every bad-input reason."""

import shutil

import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds

import tfds_builders  # noqa: F401  (registers the builders)
from tfds_builders import skips
from tfds_builders.mimic_iv_ecg import make_dummy_data as dummy
# TFDS conformance tests, collected by `pytest tests` through this import.
from tfds_builders.mimic_iv_ecg.mimic_iv_ecg_dataset_builder_test import (  # noqa: F401
    MimicIvEcgTest)
from tfds_builders.ptb_xl.make_dummy_data import ecg_like


def _build(manual_dir, data_dir, **kwargs):
    builder = tfds.builder('mimic_iv_ecg', data_dir=str(data_dir), **kwargs)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual_dir)))
    return tfds.builder('mimic_iv_ecg', data_dir=str(data_dir))


def _examples(builder):
    return {int(ex['study_id']): ex
            for ex in tfds.as_numpy(builder.as_dataset(split='train'))}


@pytest.fixture(scope='module')
def dummy_build(tmp_path_factory):
    return _build(dummy.DUMMY_DIR, tmp_path_factory.mktemp('mimic_tfds'))


def test_leads_are_reordered_to_canonical(dummy_build):
    ex = _examples(dummy_build)[40000001]
    assert ex['fs'] == 500.0 and ex['signal'].shape == (5000, 12)
    # The record stores aVF before aVL; the example must hold them canonical.
    np.testing.assert_allclose(ex['signal'], ecg_like(5000, 500, 1),
                               atol=1e-3)
    assert ex['subject_id'] == 10000001 and ex['record_id'] == b'40000001'
    assert ex['age'] == -1.0 and ex['sex'] == -1


def test_nans_are_interpolated(dummy_build):
    ex = _examples(dummy_build)[40000002]
    signal = ex['signal']
    assert np.isfinite(signal).all()
    expected = dummy.nan_burst_signal(2)
    # Linear interpolation between the samples around the gap.
    line = np.linspace(expected[99, 1], expected[150, 1], 52)[1:-1]
    np.testing.assert_allclose(signal[100:150, 1], line, atol=2e-3)
    np.testing.assert_allclose(signal[:100], expected[:100], atol=1e-3)


def test_missing_files_are_counted(dummy_build):
    report = dummy_build.info.metadata['build_report']['train']
    assert report['skipped'] == {skips.MISSING_FILE: 1}
    assert report['written'] == 2 and report['total'] == 3


BAD_CASES = {
    # study_id: (reason, how to make the record)
    50000001: skips.MISSING_LEAD,
    50000002: skips.ALL_NAN_LEAD,
    50000003: skips.FLAT_LEAD,
    50000004: skips.TOO_SHORT,
    50000005: skips.BAD_HEADER,
    50000006: skips.UNREADABLE_FILE,
}


@pytest.fixture(scope='module')
def bad_build(tmp_path_factory):
    root = tmp_path_factory.mktemp('mimic_bad_src')
    shutil.copytree(dummy.DUMMY_DIR, root, dirs_exist_ok=True)
    rows = pd.read_csv(root / 'record_list.csv').to_dict('records')
    good = ecg_like(5000, 500, 7)
    # A lead missing (V6 dropped from the header and data).
    rows.append(dummy.write_record(root, 1, 50000001, good[:, :11],
                                   lead_names=dummy.MIMIC_LEAD_NAMES[:11]))
    all_nan = good.copy()
    all_nan[:, 4] = np.nan
    rows.append(dummy.write_record(root, 2, 50000002, all_nan))
    flat = good.copy()
    flat[:, 7] = 0.25
    rows.append(dummy.write_record(root, 3, 50000003, flat))
    rows.append(dummy.write_record(root, 4, 50000004, good[:4000]))  # 8 s
    rows.append(dummy.write_record(root, 5, 50000005, good))
    (root / dummy.record_path(5, 50000005)).with_suffix('.hea').write_text(
        '50000005 twelve 500 5000\n')
    rows.append(dummy.write_record(root, 6, 50000006, good))
    dat = (root / dummy.record_path(6, 50000006)).with_suffix('.dat')
    dat.write_bytes(dat.read_bytes()[:1001])  # truncated download
    rows.append(dummy.write_record(root, 7, 50000007, good))  # fine
    pd.DataFrame(rows).to_csv(root / 'record_list.csv', index=False)
    return _build(root, tmp_path_factory.mktemp('mimic_bad_tfds'),
                  processes=1)


@pytest.mark.parametrize('study_id,reason', sorted(BAD_CASES.items()))
def test_bad_record_is_skipped_and_counted(bad_build, study_id, reason):
    report = bad_build.info.metadata['build_report']['train']
    assert report['skipped'][reason] == 1, report
    assert any(s.startswith(str(study_id)) for s in
               report['skip_samples'][reason]), report
    assert study_id not in _examples(bad_build)


def test_good_records_survive_bad_neighbours(bad_build):
    assert sorted(_examples(bad_build)) == [40000001, 40000002, 50000007]
    report = bad_build.info.metadata['build_report']['train']
    assert report['skipped_total'] == len(BAD_CASES) + 1  # + missing file


def test_min_seconds_is_a_config_value(tmp_path):
    from tfds_builders.mimic_iv_ecg import mimic_iv_ecg_dataset_builder as m  # pylint: disable=g-import-not-at-top
    assert m.Builder.BUILDER_CONFIGS[0].min_seconds == 10.0
    root = tmp_path / 'src'
    root.mkdir()
    rows = [dummy.write_record(root, 1, 60000001, ecg_like(4000, 500, 3))]
    pd.DataFrame(rows).to_csv(root / 'record_list.csv', index=False)
    config = m.MimicIvEcgConfig(name='min5s', min_seconds=5.0)
    builder = tfds.builder('mimic_iv_ecg', config=config,
                           data_dir=str(tmp_path / 'tfds'))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(root)))
    (ex,) = tfds.as_numpy(builder.as_dataset(split='train'))
    assert ex['signal'].shape == (4000, 12)  # 8 s, kept with a 5 s minimum
