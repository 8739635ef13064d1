"""ptb_xl builder: dummy-data conformance, labels, bad input, real PTB-XL."""

import json
import logging
import pathlib
import shutil

import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds

import tfds_builders  # noqa: F401  (registers the builders)
from tfds_builders import skips
from tfds_builders.ptb_xl import make_dummy_data
from tfds_builders.ptb_xl import ptb_xl_dataset_builder as ptb_xl
# The TFDS conformance tests (`tfds.testing.DatasetBuilderTestCase`), run by
# `pytest tests` through this import.
from tfds_builders.ptb_xl.ptb_xl_dataset_builder_test import (  # noqa: F401
    PtbXlRecords100Test, PtbXlRecords500Test)

DUMMY = make_dummy_data.DUMMY_DIR


def _build(manual_dir, data_dir, config='records100', **kwargs):
    builder = tfds.builder(f'ptb_xl/{config}', data_dir=str(data_dir),
                           **kwargs)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual_dir)))
    return builder


@pytest.fixture(scope='module')
def dummy_build(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp('ptbxl_dummy_tfds')
    _build(DUMMY, data_dir)
    # A fresh builder reads everything back from disk.
    return tfds.builder('ptb_xl/records100', data_dir=str(data_dir))


def test_vocabularies_have_benchmark_sizes_on_dummy():
    vocab = ptb_xl.ptb_xl_label_vocabularies(DUMMY)
    assert {t: len(v) for t, v in vocab.items()} == dict(ptb_xl.NUM_CLASSES)
    for names in vocab.values():
        assert names == sorted(names)


def test_labels_count_every_code_regardless_of_likelihood():
    database = ptb_xl.read_database(DUMMY)
    statements = ptb_xl.read_statements(DUMMY)
    vocab = ptb_xl.vocabularies_from_statements(statements)
    row = list(database.index).index(5)  # DIAG43: 80, DIAG02: 100, RHY11: 0

    def names(task):
        labels = ptb_xl.ptb_xl_labels(database, statements, task)
        assert labels.shape == (len(database), ptb_xl.NUM_CLASSES[task])
        return {vocab[task][i] for i in np.flatnonzero(labels[row])}

    assert names('all') == {'DIAG43', 'DIAG02', 'RHY11'}
    assert names('diagnostic') == {'DIAG43', 'DIAG02'}
    assert names('rhythm') == {'RHY11'}
    assert names('form') == {'DIAG02'}  # diagnostic codes 0-3 are also form
    assert names('subdiagnostic') == {'SUB20', 'SUB02'}
    assert names('superdiagnostic') == {
        make_dummy_data.SUPERCLASSES[20 % 5],
        make_dummy_data.SUPERCLASSES[2 % 5]}


def test_wrong_statement_counts_fail_loudly():
    statements = ptb_xl.read_statements(DUMMY).drop(index='RHY00')
    with pytest.raises(ValueError, match='rhythm'):
        ptb_xl.vocabularies_from_statements(statements)


def test_dummy_build_splits_metadata_and_report(dummy_build):
    splits = {k: v.num_examples for k, v in dummy_build.info.splits.items()}
    assert splits == {'fold1': 2, 'fold2': 0, 'fold3': 0, 'fold4': 0,
                      'fold5': 0, 'fold6': 0, 'fold7': 0, 'fold8': 0,
                      'fold9': 1, 'fold10': 2}
    # Class names round-trip through metadata.json.
    assert dummy_build.info.metadata['classes'] == (
        ptb_xl.ptb_xl_label_vocabularies(DUMMY))
    report = dummy_build.info.metadata['build_report']
    assert report['fold2']['skipped'] == {skips.MISSING_FILE: 1}
    assert report['fold10']['kept_with_warnings'] == {skips.FLAT_LEAD: 1}
    on_disk = json.loads(
        (pathlib.Path(dummy_build.data_dir) /
         skips.BUILD_REPORT_FILENAME).read_text())
    assert on_disk == report
    # Empty splits read as empty datasets, alone and in expressions.
    assert len(list(dummy_build.as_dataset(split='fold3'))) == 0
    train = list(dummy_build.as_dataset(
        split='+'.join(f'fold{i}' for i in range(1, 9))))
    assert len(train) == 2


def test_dummy_build_example_contents(dummy_build):
    examples = {int(ex['ecg_id']): ex for ex in tfds.as_numpy(
        dummy_build.as_dataset(split='fold1+fold9+fold10'))}
    assert sorted(examples) == [1, 2, 4, 5, 6]
    ex = examples[5]
    assert ex['signal'].shape == (1000, 12) and ex['signal'].dtype == np.float32
    assert ex['fs'] == 100.0 and ex['record_id'] == b'5'
    assert ex['strat_fold'] == 10 and ex['patient_id'] == 1005
    # Stored leads are in canonical order and in mV (1000 adc units/mV).
    expected = make_dummy_data.ecg_like(1000, 100, seed=5)
    np.testing.assert_allclose(ex['signal'], expected, atol=1e-3)
    codes = dict(zip([c.decode() for c in ex['scp_codes']['code']],
                     ex['scp_codes']['likelihood']))
    assert codes == {'DIAG43': 80.0, 'DIAG02': 100.0, 'RHY11': 0.0}
    classes = dummy_build.info.metadata['classes']
    on = {t: {classes[t][i] for i in np.flatnonzero(ex[f'labels_{t}'])}
          for t in ptb_xl.TASKS}
    assert on['diagnostic'] == {'DIAG43', 'DIAG02'}
    assert on['rhythm'] == {'RHY11'}
    assert ex['labels_all'].dtype == np.bool_
    # Ages above 89 are coded 300 in PTB-XL; unknown age is -1.
    assert examples[2]['age'] == 90.0 and examples[2]['sex'] == 1
    assert examples[4]['age'] == -1.0 and examples[1]['sex'] == 0
    # The flat lead is kept in the benchmark data.
    assert np.all(examples[6]['signal'][:, 10] == 0)


def test_missing_manual_dir_says_what_to_download(tmp_path):
    builder = tfds.builder('ptb_xl/records100', data_dir=str(tmp_path / 'd'),
                           download=False)
    with pytest.raises(FileNotFoundError, match='physionet.org'):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=str(tmp_path / 'absent')))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='ptbxl_database.csv'):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=str(tmp_path / 'empty')))


def test_bad_records_are_skipped_and_counted(tmp_path):
    root = tmp_path / 'src'
    shutil.copytree(DUMMY, root, ignore=shutil.ignore_patterns('records500'))
    lr = root / 'records100' / '00000'
    # ecg 1: header that does not parse; ecg 2: V6 missing from the header;
    # ecg 4: data file unreadable (odd byte count); ecg 5: 5 s only.
    (lr / '00001_lr.hea').write_text('00001_lr twelve 100 1000\n')
    make_dummy_data.write_wfdb(
        lr / '00002_lr', make_dummy_data.ecg_like(1000, 100, 2, 11), 100,
        make_dummy_data.PTBXL_LEAD_NAMES[:11])
    (lr / '00004_lr.dat').write_bytes(b'\x00' * 1001)
    make_dummy_data.write_wfdb(lr / '00005_lr',
                               make_dummy_data.ecg_like(500, 100, 5), 100,
                               make_dummy_data.PTBXL_LEAD_NAMES)
    builder = _build(root, tmp_path / 'tfds', processes=1)
    report = builder.info.metadata['build_report']
    assert report['fold1']['skipped'] == {skips.BAD_HEADER: 1,
                                          skips.MISSING_LEAD: 1}
    assert report['fold9']['skipped'] == {skips.UNREADABLE_FILE: 1}
    assert report['fold10']['skipped'] == {skips.TOO_SHORT: 1}
    assert builder.info.splits['fold10'].num_examples == 1
    assert builder.info.splits['fold1'].num_examples == 0


def test_reader_pool_gives_the_same_examples(tmp_path, dummy_build):
    builder = _build(DUMMY, tmp_path, processes=2, serial_below=0)
    def signals(b):
        return {int(ex['ecg_id']): ex['signal'] for ex in tfds.as_numpy(
            b.as_dataset(split='fold1+fold9+fold10'))}
    a, b = signals(builder), signals(dummy_build)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


# ---------------------------------------------------------------------------
# The real PTB-XL subset (folds 1, 2, 9, 10 at 100 Hz).


def test_real_vocabularies_have_benchmark_sizes(ptbxl_dir):
    vocab = ptb_xl.ptb_xl_label_vocabularies(ptbxl_dir)
    assert {t: len(v) for t, v in vocab.items()} == {
        'all': 71, 'diagnostic': 44, 'subdiagnostic': 23,
        'superdiagnostic': 5, 'form': 19, 'rhythm': 12}
    assert vocab['superdiagnostic'] == ['CD', 'HYP', 'MI', 'NORM', 'STTC']
    database = ptb_xl.read_database(ptbxl_dir)
    statements = ptb_xl.read_statements(ptbxl_dir)
    for task in ptb_xl.TASKS:
        labels = ptb_xl.ptb_xl_labels(database, statements, task)
        # Every class occurs in the full CSV.
        assert labels.any(axis=0).all(), task


def test_real_build_fold_counts(ptbxl_tfds_dir, ptbxl_dir):
    builder = tfds.builder('ptb_xl/records100', data_dir=str(ptbxl_tfds_dir))
    counts = {k: v.num_examples for k, v in builder.info.splits.items()}
    assert counts == {'fold1': 2177, 'fold2': 2184, 'fold3': 0, 'fold4': 0,
                      'fold5': 0, 'fold6': 0, 'fold7': 0, 'fold8': 0,
                      'fold9': 2193, 'fold10': 2203}
    assert builder.info.metadata['classes'] == (
        ptb_xl.ptb_xl_label_vocabularies(ptbxl_dir))
    report = builder.info.metadata['build_report']
    database = pd.read_csv(ptbxl_dir / 'ptbxl_database.csv')
    for fold in range(3, 9):
        assert report[f'fold{fold}']['skipped'] == {
            skips.MISSING_FILE: int((database.strat_fold == fold).sum())}
    # The session's build is ArrayRecord: read by random access.
    ex = builder.as_data_source('fold9')[0]
    assert ex['signal'].shape == (1000, 12)
    assert np.isfinite(ex['signal']).all()


def test_reader_leaves_out_empty_folds_quietly(ptbxl_tfds_dir, caplog):
    from jepa_ecg.data import datasets  # pylint: disable=g-import-not-at-top
    info = tfds.builder('ptb_xl/records100', data_dir=str(ptbxl_tfds_dir)).info
    assert datasets.nonempty_splits('fold1+fold3+ fold2[:10]', info) == 'fold1+fold2[:10]'
    assert datasets.nonempty_splits('fold3+fold4', info) == 'fold3+fold4'  # all empty: as asked
    assert datasets.nonempty_splits('fold1+nofold', info) == 'fold1+nofold'  # TFDS says what is wrong
    with caplog.at_level(logging.WARNING):
        reader = datasets.SplitReader('ptb_xl/records100', str(ptbxl_tfds_dir),
                                      '+'.join(f'fold{k}' for k in range(1, 9)))
    assert len(reader) == 2177 + 2184
    assert not [m for m in caplog.messages if 'has no examples' in m]


def test_downloads_when_manual_dir_is_empty(tmp_path, monkeypatch):
    requested = []

    def fake_download_and_extract(self, url):  # no network in tests
        requested.append(url)
        return DUMMY

    monkeypatch.setattr(tfds.download.DownloadManager, 'download_and_extract',
                        fake_download_and_extract)
    (tmp_path / 'empty').mkdir()
    builder = _build(tmp_path / 'empty', tmp_path / 'tfds', download=True)
    assert requested == [ptb_xl._URL]  # pylint: disable=protected-access
    assert builder.info.splits['fold1'].num_examples == 2
