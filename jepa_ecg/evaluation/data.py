"""PTB-XL fine-tuning input: labels per task, folds, normalisation, crops, windows.

The whole benchmark fits in memory (8.7k records x 10 s x 12 leads at 100 Hz
is 420 MB in float32), so the `ptb_xl` TFDS dataset is read once into numpy
arrays, normalised with per-lead statistics of the TRAIN folds, clipped to
[-5, 5], and batches are cut from it with numpy:

* training: records in a fresh random order every epoch (last partial batch
  dropped), one uniformly placed 2.5 s crop per record and step;
* evaluation: every 2.5 s window at 1.25 s stride (7 for a 10 s record);
  the model's logits are averaged over a record's windows.

Batches are a pure function of (seed, step), so a run is reproducible.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Mapping, Sequence

import numpy as np
from absl import logging

from jepa_ecg.data import transforms

# Multi-label tasks of the PTB-XL benchmark plus the single-label ST-MEM task.
MULTI_LABEL_TASKS = ('all', 'diagnostic', 'subdiagnostic', 'superdiagnostic', 'form', 'rhythm')
TASKS = MULTI_LABEL_TASKS + ('st_mem',)
# st_mem = superdiagnostic records with exactly one label (Na et al., 2024).
SOURCE_TASK = {**{t: t for t in MULTI_LABEL_TASKS}, 'st_mem': 'superdiagnostic'}

TRAIN_FOLDS = tuple(range(1, 9))
VAL_FOLDS = (9,)
TEST_FOLDS = (10,)
SPLITS = ('train', 'val', 'test')


def is_single_label(task: str) -> bool:
    """Whether `task` is trained with softmax + cross-entropy."""
    return task == 'st_mem'


def select_task(labels: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Which records take part in `task` and their targets.

    Args:
      labels: (N, C) multi-hot labels of the task's source label set
        (`SOURCE_TASK[task]`), e.g. the builder's `labels_superdiagnostic`.
      task: one of TASKS.

    Returns:
      (keep, targets): keep (N,) bool, True for records with at least one
      label (exactly one for 'st_mem'); targets (N, C) float32 of all rows
      (one-hot for 'st_mem' where kept).
    """
    if task not in TASKS:
        raise ValueError(f'unknown task {task!r}; choose from {TASKS}')
    labels = np.asarray(labels).astype(bool)
    count = labels.sum(axis=1)
    keep = count == 1 if is_single_label(task) else count > 0
    return keep, labels.astype(np.float32)


def present_classes(targets: np.ndarray) -> np.ndarray:
    """Column indices of classes with at least one positive record.

    The reference drops classes nobody has (its label binarizer only sees the
    loaded records); with a subset of the folds that can happen.
    """
    return np.flatnonzero(np.asarray(targets).sum(axis=0) > 0)


def window_samples(fs: float, seconds: float) -> int:
    """Samples in `seconds` at `fs` (2.5 s: 250 at 100 Hz, 1250 at 500 Hz)."""
    return int(round(float(fs) * float(seconds)))


def check_patch_multiple(length: int, patch_size: int, what: str) -> None:
    if length % patch_size:
        raise ValueError(f'{what} of {length} samples is not a multiple of the encoder\'s '
                         f'patch size {patch_size}')


def lead_stats(signals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-lead mean and std over all records and samples of (N, T, L) signals.

    Accumulates in float64 per record so 500 Hz data needs no float64 copy.
    """
    n_leads = signals.shape[-1]
    total = np.zeros(n_leads)
    total_sq = np.zeros(n_leads)
    count = 0
    for chunk in np.array_split(signals, max(1, len(signals) // 512)):
        c = chunk.astype(np.float64)
        total += c.sum(axis=(0, 1))
        total_sq += np.square(c).sum(axis=(0, 1))
        count += c.shape[0] * c.shape[1]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean ** 2, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


@dataclasses.dataclass
class Split:
    """One split in memory.

    Attributes:
      signals: (N, T, leads) normalised and clipped signals.
      targets: (N, C) float32 multi-hot (one-hot for single-label tasks).
      ecg_ids: (N,) record ids.
    """
    signals: np.ndarray
    targets: np.ndarray
    ecg_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.ecg_ids)


@dataclasses.dataclass
class FinetuneData:
    """The three splits of one task plus what a results file should say about them."""
    train: Split
    val: Split
    test: Split
    task: str
    classes: list[str]
    fs: float
    mean: np.ndarray
    std: np.ndarray
    folds: dict[str, list[int]]
    dropped_classes: list[str]
    source: str

    @property
    def single_label(self) -> bool:
        return is_single_label(self.task)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def counts(self) -> dict:
        """Record and positive counts per split (for results.json)."""
        out = {'folds': self.folds, 'classes': self.classes,
               'dropped_classes': self.dropped_classes, 'fs': self.fs, 'source': self.source}
        for name in SPLITS:
            split = getattr(self, name)
            out[name] = {'records': len(split),
                         'positives': dict(zip(self.classes,
                                               split.targets.sum(axis=0).astype(int).tolist()))}
        return out


def assemble(signals: np.ndarray, labels: np.ndarray, folds: np.ndarray, ecg_ids: np.ndarray,
             *, task: str, classes: Sequence[str], fs: float, clip: float = 5.0,
             storage_dtype: str = 'float32', source: str = '') -> FinetuneData:
    """Selects the task's records, splits by fold, normalises with train statistics.

    Args:
      signals: (N, T, leads) raw signals (mV) at `fs`.
      labels: (N, C) multi-hot labels of `SOURCE_TASK[task]`.
      folds: (N,) strat_fold of every record.
      ecg_ids: (N,) record ids.
      task: one of TASKS.
      classes: names of the C label columns.
      fs: sampling rate of `signals`.
      clip: normalised values are clipped to [-clip, clip].
      storage_dtype: dtype of the stored signals ('float16' halves memory).
      source: where the data came from, for the record.

    Returns:
      FinetuneData with folds 1-8 (those present) as train, 9 val, 10 test.
    """
    keep, targets = select_task(labels, task)
    classes = list(classes)
    cols = present_classes(targets[keep])
    dropped = [classes[i] for i in range(len(classes)) if i not in set(cols.tolist())]
    if dropped:
        logging.warning('task %s: no record has classes %s; dropped', task, dropped)
    folds = np.asarray(folds)
    masks = {'train': keep & np.isin(folds, TRAIN_FOLDS),
             'val': keep & np.isin(folds, VAL_FOLDS),
             'test': keep & np.isin(folds, TEST_FOLDS)}
    for name, m in masks.items():
        if not m.any():
            raise ValueError(f'task {task}: the {name} split has no records '
                             f'(folds present: {sorted(set(folds.tolist()))})')
    mean, std = lead_stats(signals[masks['train']])
    std = np.where(std > 0, std, 1.0).astype(np.float32)
    dtype = np.dtype(storage_dtype)

    def make(mask):
        x = transforms.clip(transforms.normalize(signals[mask], mean, std), -clip, clip)
        return Split(x.astype(dtype, copy=False), targets[mask][:, cols],
                     np.asarray(ecg_ids)[mask])

    return FinetuneData(
        train=make(masks['train']), val=make(masks['val']), test=make(masks['test']),
        task=task, classes=[classes[i] for i in cols], fs=float(fs), mean=mean, std=std,
        folds={name: sorted(set(folds[m].tolist())) for name, m in masks.items()},
        dropped_classes=dropped, source=source)


def _num_examples(builder, split: str) -> int:
    # Folds without records are recorded with no shards (count 0 or unknown).
    try:
        return int(builder.info.splits[split].num_examples or 0)
    except (KeyError, TypeError, ValueError):
        return 0


def _read_examples(builder, splits: Sequence[str], keys: Sequence[str]) -> Iterator[dict]:
    """Numpy examples (only `keys`) of the splits, whichever file format was built.

    ArrayRecord (what the pre-training pipeline needs) is read by random
    access; TFRecord through tf.data.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds
    formats = {str(getattr(f, 'value', f))
               for f in [builder.info.file_format]
               + list(getattr(builder.info, 'alternative_file_formats', []) or [])
               if f is not None}
    if 'array_record' in formats:
        for split in splits:
            source = builder.as_data_source(split=split)
            for i in range(len(source)):
                ex = source[i]
                yield {k: ex[k] for k in keys}
        return
    ds = builder.as_dataset(split='+'.join(splits), shuffle_files=False)
    ds = ds.map(lambda ex: {k: ex[k] for k in keys},
                num_parallel_calls=tf.data.AUTOTUNE).prefetch(64)
    yield from tfds.as_numpy(ds)


def _prepared(builder) -> bool:
    try:
        return bool(builder.info.splits) and builder.is_prepared()
    except Exception:  # pylint: disable=broad-except
        return False


def load_ptbxl(task: str, *, fs: float, data_dir: str | None = None,
               builder_name: str | None = None, window_seconds: float = 10.0,
               clip: float = 5.0, storage_dtype: str = 'float32',
               max_records_per_fold: int | None = None) -> FinetuneData:
    """Reads the `ptb_xl` TFDS dataset into memory for one task.

    Args:
      task: one of TASKS.
      fs: the encoder's sampling rate; records are resampled (FFT) to it when
        the dataset has another rate.
      data_dir: TFDS data_dir (default TFDS's own).
      builder_name: e.g. 'ptb_xl/records100'; default: the records config of
        `fs` when it is built there, else whichever is built.
      window_seconds: records are cut to this length (PTB-XL: all 10 s).
      clip: see `assemble`.
      storage_dtype: see `assemble`.
      max_records_per_fold: read only the first records of every fold
        (smoke runs and tests).

    Returns:
      FinetuneData.
    """
    import tensorflow_datasets as tfds
    import tfds_builders  # noqa: F401  pylint: disable=unused-import  (registers ptb_xl)

    if builder_name is None:
        preferred = 'ptb_xl/records500' if float(fs) > 100 else 'ptb_xl/records100'
        other = 'ptb_xl/records100' if preferred.endswith('500') else 'ptb_xl/records500'
        builder_name = preferred
        if not _prepared(tfds.builder(preferred, data_dir=data_dir)) and \
                _prepared(tfds.builder(other, data_dir=data_dir)):
            builder_name = other
    builder = tfds.builder(builder_name, data_dir=data_dir)
    source_task = SOURCE_TASK[task]
    classes = list(builder.info.metadata['classes'][source_task])
    fold_splits = [f'fold{i}' for i in TRAIN_FOLDS + VAL_FOLDS + TEST_FOLDS
                   if _num_examples(builder, f'fold{i}') > 0]
    if not fold_splits:
        raise ValueError(f'{builder_name} in {data_dir} has no examples')
    num_samples = window_samples(fs, window_seconds)
    label_key = f'labels_{source_task}'
    signals, labels, folds, ids = [], [], [], []
    limit = f'[:{int(max_records_per_fold)}]' if max_records_per_fold else ''
    splits = [s + limit for s in fold_splits]
    keys = ('signal', 'fs', label_key, 'strat_fold', 'ecg_id')
    for ex in _read_examples(builder, splits, keys):
        x = transforms.resample(ex['signal'], float(ex['fs']), fs)
        if x.shape[0] < num_samples:
            continue  # the builder already drops short records; defensive
        signals.append(x[:num_samples].astype(np.float32, copy=False))
        labels.append(ex[label_key])
        folds.append(int(ex['strat_fold']))
        ids.append(int(ex['ecg_id']))
    order = np.argsort(ids)  # a fixed record order whatever the shard order
    logging.info('read %d records of %s (%s) from %s', len(ids), builder_name, fold_splits,
                 data_dir)
    return assemble(np.stack(signals)[order], np.stack(labels)[order], np.asarray(folds)[order],
                    np.asarray(ids)[order], task=task, classes=classes, fs=fs, clip=clip,
                    storage_dtype=storage_dtype, source=builder_name)


def train_batch(split: Split, *, batch_size: int, crop: int, seed: int,
                step: int) -> dict[str, np.ndarray]:
    """The training batch of `step`: shuffled records, one random crop each.

    Records are visited in a new random order every epoch and the last
    partial batch of an epoch is dropped (as a shuffling, drop-last loader).

    Args:
      split: the training split.
      batch_size: records per batch (<= len(split)).
      crop: crop length in samples.
      seed: run seed.
      step: training step (0-based).

    Returns:
      {'signal': (B, crop, leads) float32, 'target': (B, C) float32}.
    """
    n = len(split)
    if batch_size > n:
        raise ValueError(f'batch of {batch_size} exceeds the {n} training records')
    per_epoch = n // batch_size
    epoch, pos = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch, 0]).permutation(n)
    rows = order[pos * batch_size:(pos + 1) * batch_size]
    t = split.signals.shape[1]
    starts = np.random.default_rng([seed, step, 1]).integers(0, t - crop + 1, size=batch_size)
    idx = starts[:, None] + np.arange(crop)[None, :]
    signal = split.signals[rows[:, None], idx]  # (B, crop, leads) gather
    return {'signal': signal.astype(np.float32), 'target': split.targets[rows]}


def eval_windows(signals: np.ndarray, crop: int, stride: int) -> np.ndarray:
    """All windows of a batch of records: (R, T, L) -> (R, W, crop, L)."""
    return np.stack([transforms.sliding_windows(x, crop, stride) for x in signals])


def eval_batches(split: Split, *, records_per_batch: int, crop: int, stride: int
                 ) -> Iterator[tuple[np.ndarray, int]]:
    """Fixed-shape evaluation batches of windows.

    The last batch is padded with copies of its first record so every batch
    has the same shape (one compilation); the count of real records comes
    with it.

    Yields:
      (windows (records_per_batch * W, crop, leads) float32, num_real_records).
    """
    n = len(split)
    for start in range(0, n, records_per_batch):
        x = split.signals[start:start + records_per_batch]
        real = len(x)
        if real < records_per_batch:
            x = np.concatenate([x, np.repeat(x[:1], records_per_batch - real, axis=0)])
        w = eval_windows(x, crop, stride)
        yield w.reshape((-1,) + w.shape[2:]).astype(np.float32), real


def average_window_logits(logits: np.ndarray, num_records: int) -> np.ndarray:
    """(R * W, C) window logits -> (R, C) per-record mean (records are contiguous)."""
    logits = np.asarray(logits)
    return logits.reshape(num_records, -1, logits.shape[-1]).mean(axis=1)


def task_label_counts(labels_by_task: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """Records and classes per task from multi-hot source labels (for reports).

    Args:
      labels_by_task: source task name -> (N, C) multi-hot labels.

    Returns:
      task -> {'records': kept records, 'classes': classes with a positive}.
    """
    out = {}
    for task in TASKS:
        keep, targets = select_task(labels_by_task[SOURCE_TASK[task]], task)
        out[task] = {'records': int(keep.sum()),
                     'classes': int(len(present_classes(targets[keep])))}
    return out
