"""PTB-XL fine-tuning input: task labels, folds, normalisation, crops, windows, averaging."""

import ast
import itertools

import numpy as np
import pandas as pd
import pytest

from jepa_ecg.data import ptbxl as data
from jepa_ecg.ecg import transforms
from tfds_builders import build

# ---------------------------------------------------------------- labels on the full CSV

# Records with at least one label per task in ptbxl_database.csv v1.0.1 (21,837
# rows), and the single-label superdiagnostic (ST-MEM) subset.
EXPECTED_RECORDS = {'all': 21837, 'diagnostic': 21430, 'subdiagnostic': 21430,
                    'superdiagnostic': 21430, 'form': 8988, 'rhythm': 21066, 'st_mem': 16272}
EXPECTED_CLASSES = {'all': 71, 'diagnostic': 44, 'subdiagnostic': 23, 'superdiagnostic': 5,
                    'form': 19, 'rhythm': 12, 'st_mem': 5}


@pytest.fixture(scope='module')
def full_csv_labels(ptbxl_dir):
    from tfds_builders.ptb_xl import ptb_xl_dataset_builder as builder
    database = builder.read_database(ptbxl_dir)
    statements = builder.read_statements(ptbxl_dir)
    labels = {t: builder.ptb_xl_labels(database, statements, t) for t in builder.TASKS}
    return database, statements, labels


def _independent_sets(database, statements, task):
    """Label sets per record the way the PTB-XL benchmark aggregates them (pandas)."""
    diag = statements[statements.diagnostic == 1.0]
    column = {'subdiagnostic': 'diagnostic_subclass', 'superdiagnostic': 'diagnostic_class'}

    def labels_of(codes):
        out = set()
        for code in codes:
            if task == 'all':
                out.add(code)
            elif task in ('form', 'rhythm'):
                if code in statements.index and statements.loc[code, task] == 1.0:
                    out.add(code)
            elif code in diag.index:
                value = code if task == 'diagnostic' else diag.loc[code, column[task]]
                if isinstance(value, str):
                    out.add(value)
        return out

    return database.scp_codes.apply(lambda c: labels_of(ast.literal_eval(c) if isinstance(c, str)
                                                        else c))


@pytest.mark.parametrize('task', data.TASKS)
def test_task_records_and_classes_on_full_csv(full_csv_labels, task):
    database, statements, labels = full_csv_labels
    keep, targets = data.select_task(labels[data.SOURCE_TASK[task]], task)
    assert keep.sum() == EXPECTED_RECORDS[task]
    assert len(data.present_classes(targets[keep])) == EXPECTED_CLASSES[task]
    # Same records and per-class counts as an independent pandas aggregation.
    sets = _independent_sets(database, statements, data.SOURCE_TASK[task])
    sizes = sets.apply(len).to_numpy()
    expected_keep = sizes == 1 if task == 'st_mem' else sizes > 0
    np.testing.assert_array_equal(keep, expected_keep)
    counts = pd.Series([c for s in sets[expected_keep] for c in s]).value_counts()
    from tfds_builders.ptb_xl import ptb_xl_dataset_builder as builder
    classes = builder.vocabularies_from_statements(statements)[data.SOURCE_TASK[task]]
    got = dict(zip(classes, targets[keep].sum(axis=0).astype(int)))
    assert got == {c: int(counts.get(c, 0)) for c in classes}


def test_st_mem_targets_are_one_hot(full_csv_labels):
    _, _, labels = full_csv_labels
    keep, targets = data.select_task(labels['superdiagnostic'], 'st_mem')
    assert (targets[keep].sum(axis=1) == 1).all()
    assert data.is_single_label('st_mem') and not data.is_single_label('superdiagnostic')


# ---------------------------------------------------------------- crops and windows

@pytest.mark.parametrize('fs,patch,crop,stride', [(100, 5, 250, 125), (500, 25, 1250, 625)])
def test_crop_and_window_arithmetic(fs, patch, crop, stride):
    assert transforms.samples(fs, 2.5) == crop
    assert transforms.samples(fs, 1.25) == stride
    data.check_patch_multiple(crop, patch, 'crop')
    assert crop // patch == 50  # 50 tokens of 50 ms
    t = 10 * fs
    assert len(transforms.window_starts(t, crop, stride)) == 7
    x = np.arange(2 * t * 12, dtype=np.float32).reshape(2, t, 12)
    w = np.stack([data.eval_windows(r, crop, stride) for r in x])
    assert w.shape == (2, 7, crop, 12)
    for r in range(2):
        for k in range(7):
            np.testing.assert_array_equal(w[r, k], x[r, k * stride:k * stride + crop])
    assert w[0, -1, -1, 0] == x[0, -1, 0]  # the last window ends at the record's end
    with pytest.raises(ValueError):
        data.check_patch_multiple(crop + 1, patch, 'crop')


def _task(n=20, t=1000, c=3, seed=0, task='superdiagnostic'):
    """A task over in-memory records: 16 train (folds 1-2), 2 val, 2 test by default."""
    rng = np.random.default_rng(seed)
    signals = rng.standard_normal((n, t, 12)).astype(np.float32)
    labels = rng.random((n, c)) < 0.5
    labels[:, 0] |= ~labels.any(axis=1)  # every record has a label
    folds = np.resize([1, 2], n)
    folds[-4:] = [9, 9, 10, 10]
    return data.make_task(data.ArrayRecords(signals, fs=100.0), labels, folds,
                          np.arange(100, 100 + n), task=task,
                          classes=[f'C{i}' for i in range(c)], fs=100.0, num_samples=t)


def _signals(task, split):
    return np.stack(list(task.records(split)))


def test_train_batches_are_random_crops_and_epochs_cover_every_record():
    task = _task(n=20 + 4)  # 20 train records
    split = task.splits['train']
    signals = _signals(task, 'train')
    batches = list(itertools.islice(task.train_batches(batch_size=8, crop=250, seed=3), 6))
    seen = []
    for step, b in enumerate(batches):  # 20 // 8 = 2 batches per epoch (drop last)
        assert b['signal'].shape == (8, 250, 12) and b['target'].shape == (8, 3)
        for x, y in zip(b['signal'], b['target']):
            # Each crop is a contiguous slice of the record whose target it carries.
            rows = [i for i in range(20) if np.array_equal(split.targets[i], y)
                    and any(np.array_equal(signals[i, s:s + 250], x)
                            for s in range(0, 751))]
            assert rows
            seen.append((step // 2, rows[0]))
    for epoch in (0, 1, 2):
        rows = [r for e, r in seen if e == epoch]
        assert len(set(rows)) == 16  # no record twice within an epoch (drop last)
    again = next(task.train_batches(batch_size=8, crop=250, seed=3, start_step=2))
    np.testing.assert_array_equal(again['signal'], batches[2]['signal'])
    other = next(task.train_batches(batch_size=8, crop=250, seed=4, start_step=2))
    assert not np.array_equal(again['signal'], other['signal'])


def test_each_process_reads_only_its_rows_of_the_global_batch():
    task = _task(n=20 + 4)
    whole = list(itertools.islice(task.train_batches(batch_size=8, crop=250, seed=3), 5))
    for count in (2, 4):
        parts = [list(itertools.islice(task.train_batches(
            batch_size=8, crop=250, seed=3, process_index=p, process_count=count), 5))
            for p in range(count)]
        for step, batch in enumerate(whole):
            for key in ('signal', 'target'):
                np.testing.assert_array_equal(
                    np.concatenate([part[step][key] for part in parts]), batch[key])
        resumed = next(task.train_batches(batch_size=8, crop=250, seed=3, start_step=3,
                                          process_index=1, process_count=count))
        np.testing.assert_array_equal(resumed['signal'], parts[1][3]['signal'])
    with pytest.raises(ValueError, match='does not split over 3 processes'):
        task.train_dataset(batch_size=8, crop=250, seed=3, process_count=3)


def test_average_window_logits():
    logits = np.arange(3 * 7 * 2, dtype=np.float32).reshape(3 * 7, 2)
    avg = data.average_window_logits(logits, 3)
    np.testing.assert_allclose(avg, logits.reshape(3, 7, 2).mean(axis=1))
    assert avg.shape == (3, 2)


def test_eval_batches_pad_to_one_shape():
    task = _task(n=11 + 4, c=1)
    batches = list(task.eval_batches('train', records_per_batch=3, crop=250, stride=125))
    assert [real for _, real in batches] == [3, 3, 3, 2]
    assert {w.shape for w, _ in batches} == {(3 * 7, 250, 12)}
    signals = _signals(task, 'train')
    got = np.concatenate([w.reshape(3, 7, 250, 12)[:real] for w, real in batches])
    want = np.stack([data.eval_windows(r, 250, 125) for r in signals])
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- assembling a task

def test_make_task_normalises_with_train_statistics_and_splits_by_fold():
    rng = np.random.default_rng(0)
    n, t = 60, 100
    folds = np.repeat([1, 2, 9, 10], 15)
    signals = rng.standard_normal((n, t, 12)).astype(np.float32) * 2 + 3
    signals[folds == 10] += 100.0  # test data far off: must not leak into the stats
    labels = np.zeros((n, 4), bool)
    labels[np.arange(n), rng.integers(0, 3, n)] = True  # class 3: nobody
    labels[::5, 0] = True  # some multi-label records
    labels[7] = False  # no label: dropped
    records = data.ArrayRecords(signals, fs=10.0)
    d = data.make_task(records, labels, folds, np.arange(n), task='superdiagnostic',
                       classes=['A', 'B', 'C', 'D'], fs=10.0, num_samples=t)
    assert d.classes == ['A', 'B', 'C'] and d.dropped_classes == ['D']
    assert len(d.splits['train']) == 29 and len(d.splits['val']) == 15
    assert len(d.splits['test']) == 15
    assert d.folds == {'train': [1, 2], 'val': [9], 'test': [10]}
    train, test = _signals(d, 'train'), _signals(d, 'test')
    np.testing.assert_allclose(train.mean(axis=(0, 1)), 0, atol=1e-4)
    np.testing.assert_allclose(train.std(axis=(0, 1)), 1, atol=1e-3)
    assert test.max() == 5.0 and test.min() >= -5.0  # clipped
    single = data.make_task(records, labels, folds, np.arange(n), task='st_mem',
                            classes=['A', 'B', 'C', 'D'], fs=10.0, num_samples=t)
    assert (single.splits['train'].targets.sum(axis=1) == 1).all()
    assert (sum(len(s) for s in single.splits.values())
            == int((labels.sum(axis=1) == 1).sum()))
    counts = d.counts()
    assert counts['train']['records'] == 29
    assert sum(counts['test']['positives'].values()) == int(d.splits['test'].targets.sum())


def test_train_batches_are_float32():
    rng = np.random.default_rng(1)
    signals = rng.standard_normal((8, 50, 12)).astype(np.float16)  # any stored dtype
    labels = np.eye(2, dtype=bool)[rng.integers(0, 2, 8)]
    d = data.make_task(data.ArrayRecords(signals, fs=5.0), labels,
                       np.array([1, 1, 1, 1, 9, 9, 10, 10]), np.arange(8),
                       task='superdiagnostic', classes=['A', 'B'], fs=5.0, num_samples=50)
    b = next(d.train_batches(batch_size=2, crop=10, seed=0))
    assert b['signal'].dtype == np.float32


# ---------------------------------------------------------------- the real TFDS dataset

def test_load_task_from_tfds(ptbxl_tfds_dir):
    d = data.load_task('superdiagnostic', fs=100, data_dir=str(ptbxl_tfds_dir),
                       max_records_per_fold=40)
    assert d.source == 'ptb_xl/records100'
    assert d.folds['train'] == [1, 2] and d.folds['val'] == [9] and d.folds['test'] == [10]
    assert d.classes == ['CD', 'HYP', 'MI', 'NORM', 'STTC']
    train = _signals(d, 'train')
    assert train.shape[1:] == (1000, 12)
    assert np.abs(train).max() <= 5.0
    assert (d.splits['train'].targets.sum(axis=1) >= 1).all()
    # 500 Hz encoder on the 100 Hz dataset: FFT-resampled to 5000 samples.
    d500 = data.load_task('st_mem', fs=500, data_dir=str(ptbxl_tfds_dir),
                          max_records_per_fold=10)
    assert next(d500.records('train')).shape == (5000, 12)
    assert (d500.splits['val'].targets.sum(axis=1) == 1).all()


def test_unbuilt_ptbxl_names_the_build_command(tmp_path):
    with pytest.raises(build.DatasetNotBuiltError, match='python -m tfds_builders ptb_xl'):
        data.load_task('superdiagnostic', fs=100, data_dir=str(tmp_path))
