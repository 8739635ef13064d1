"""The PTB-XL benchmark's input: task labels, folds, and Grain pipelines for
fine-tuning crops and evaluation windows.

`load_task` reads only labels, folds and ids up front; signals stream from
the ArrayRecord files as batches need them. Every record goes through
`data/preprocess.py` with the lead statistics of the task's train folds.
Training: a fresh record order every epoch (last partial batch dropped), one
uniformly placed 2.5 s crop per record. Evaluation: every 2.5 s window at
1.25 s stride, logits averaged per record. Batches are a pure function of
(seed, step).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any, Iterator, Mapping, Sequence

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from jepa_ecg.data import datasets
from jepa_ecg.data import preprocess as preprocess_lib
from jepa_ecg.data.lead_subsets import LeadDropout
from jepa_ecg.data.stats import CLIP, LeadStats, RunningLeadStats
from jepa_ecg.ecg import transforms
from jepa_ecg.ecg.leads import LEADS
from tfds_builders import build

# Multi-label tasks of the PTB-XL benchmark plus the single-label ST-MEM task.
MULTI_LABEL_TASKS = ('all', 'diagnostic', 'subdiagnostic', 'superdiagnostic', 'form', 'rhythm')
TASKS = MULTI_LABEL_TASKS + ('st_mem',)
# st_mem = superdiagnostic records with exactly one label (Na et al., 2024).
SOURCE_TASK = {**{t: t for t in MULTI_LABEL_TASKS}, 'st_mem': 'superdiagnostic'}

TRAIN_FOLDS = tuple(range(1, 9))
VAL_FOLDS = (9,)
TEST_FOLDS = (10,)
SPLITS = ('train', 'val', 'test')
BUILDERS = ('ptb_xl/records100', 'ptb_xl/records500')
_EVAL_THREADS = 2


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


def check_patch_multiple(length: int, patch_size: int, what: str) -> None:
    """Raises unless `length` samples hold a whole number of patches."""
    if length % patch_size:
        raise ValueError(f'{what} of {length} samples is not a multiple of the encoder\'s '
                         f'patch size {patch_size}')


def eval_windows(record: np.ndarray, crop: int, stride: int) -> np.ndarray:
    """Every evaluation window of one record: (T, L) -> (W, crop, L)."""
    return transforms.cut_windows(record, crop,
                                  transforms.window_starts(len(record), crop, stride))


def average_window_logits(logits: np.ndarray, num_records: int) -> np.ndarray:
    """(R * W, C) window logits -> (R, C) per-record mean (records are contiguous)."""
    logits = np.asarray(logits)
    return logits.reshape(num_records, -1, logits.shape[-1]).mean(axis=1)


class ArrayRecords:
    """Raw records held in memory, read like a built split: {'signal', 'fs'}."""

    def __init__(self, signals: Sequence[np.ndarray], fs: float):
        self.signals, self.fs = signals, float(fs)

    def __len__(self) -> int:
        return len(self.signals)

    def __getitem__(self, index: int) -> dict:
        return {'signal': np.asarray(self.signals[index]), 'fs': self.fs}


@dataclasses.dataclass
class Split:
    """One split of a task.

    Attributes:
      rows: (N,) indices of its records in the task's record source.
      targets: (N, C) float32 multi-hot (one-hot for single-label tasks).
      ecg_ids: (N,) record ids.
    """
    rows: np.ndarray
    targets: np.ndarray
    ecg_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


class _Preprocess:
    """A record of the source -> model input (whole, or a random crop)."""

    def __init__(self, records: Any, fs: float, num_samples: int,
                 stats: LeadStats, clip: float):
        self.records, self.fs, self.num_samples = records, fs, num_samples
        self.stats, self.clip = stats, clip

    def __call__(self, row: int, window: preprocess_lib.Window | None = None) -> np.ndarray:
        ex = self.records[int(row)]
        x = preprocess_lib.preprocess(ex['signal'], float(ex['fs']), LEADS, target_fs=self.fs,
                                      stats=self.stats, window=window, clip=self.clip)
        return x if window is not None else x[:self.num_samples]


class _EpochOrder:
    """Example position -> row: a new permutation every epoch, the last
    partial batch of each epoch dropped (as a shuffling, drop-last loader)."""

    def __init__(self, split: Split, batch_size: int, seed: int):
        self.rows, self.seed = split.rows, seed
        self.per_epoch = len(split) // batch_size * batch_size

    @functools.lru_cache(maxsize=4)
    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, 0]).permutation(len(self.rows))

    def __call__(self, position: int) -> int:
        epoch, pos = divmod(int(position), self.per_epoch)
        return int(self._order(epoch)[pos])


class _TrainExample:
    """index into the split, rng -> {'signal': random crop, 'target'}."""

    def __init__(self, prep: _Preprocess, split: Split, crop: int):
        self.prep, self.split, self.crop = prep, split, crop

    def __call__(self, i: int, rng: np.random.Generator) -> dict:
        window = preprocess_lib.Window(self.crop, float(rng.random()))
        return {'signal': self.prep(self.split.rows[i], window), 'target': self.split.targets[i]}


class _EvalRecords:
    """records of one eval batch -> their windows, padded to a fixed count."""

    def __init__(self, prep: _Preprocess, rows: np.ndarray, records_per_batch: int,
                 crop: int, stride: int):
        self.prep, self.rows, self.records_per_batch = prep, rows, records_per_batch
        self.crop, self.stride = crop, stride

    def __call__(self, batch_index: int) -> tuple[np.ndarray, int]:
        rows = self.rows[batch_index * self.records_per_batch:
                         (batch_index + 1) * self.records_per_batch]
        wins = [eval_windows(self.prep(r), self.crop, self.stride) for r in rows]
        real = len(wins)
        # Pad with copies of the first record: every batch has one shape (one compilation).
        wins += [wins[0]] * (self.records_per_batch - real)
        out = np.concatenate(wins).astype(np.float32, copy=False)
        return out, real


class PtbxlTask:
    """One PTB-XL task: its splits, statistics and input pipelines.

    Attributes:
      task, classes, fs, stats (LeadStats of the train folds), folds
      ({split: [fold numbers]}), dropped_classes, source, num_samples
      (samples per record at fs), splits ({'train'|'val'|'test': Split}).
    """

    def __init__(self, records: Any, splits: Mapping[str, Split], *, task: str,
                 classes: Sequence[str], fs: float, stats: LeadStats,
                 folds: Mapping[str, list[int]], dropped_classes: Sequence[str],
                 source: str, num_samples: int, clip: float = CLIP):
        self.raw_records, self.splits = records, dict(splits)
        self.task, self.classes, self.fs = task, list(classes), float(fs)
        self.stats, self.folds = stats, dict(folds)
        self.dropped_classes, self.source = list(dropped_classes), source
        self.num_samples, self.clip = int(num_samples), clip
        self._prep = _Preprocess(records, self.fs, self.num_samples, stats, clip)

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
        for name, split in self.splits.items():
            out[name] = {'records': len(split),
                         'positives': dict(zip(self.classes,
                                               split.targets.sum(axis=0).astype(int).tolist()))}
        return out

    def records_dataset(self, split: str) -> grain.MapDataset:
        """The split's preprocessed whole records as a Grain dataset."""
        return grain.MapDataset.source(self.splits[split].rows).map(self._prep)

    def records(self, split: str) -> Iterator[np.ndarray]:
        """The split's records, preprocessed: (num_samples, 12) float32 each."""
        return iter(self.records_dataset(split).to_iter_dataset(
            grain.ReadOptions(num_threads=_EVAL_THREADS, prefetch_buffer_size=8)))

    def train_dataset(self, *, batch_size: int, crop: int, seed: int,
                      lead_dropout: float = 0.0, process_index: int = 0,
                      process_count: int = 1) -> grain.MapDataset:
        """This process's rows of the training batches, a Grain dataset indexed by step.

        Global batch b holds records b * batch_size .. of the epoch order;
        process p reads only its `batch_size / process_count` rows of it, the
        ones it puts on its devices (`lead_dropout`: see
        `lead_subsets.LeadDropout`).
        """
        split = self.splits['train']
        if not 0 < batch_size <= len(split):
            raise ValueError(f'batch of {batch_size} must be in [1, {len(split)}] '
                             f'(the training records)')
        if batch_size % process_count:
            raise ValueError(f'batch of {batch_size} does not split over {process_count} '
                             f'processes')
        order = _EpochOrder(split, batch_size, seed)
        local = batch_size // process_count
        ds = (grain.MapDataset.range(sys.maxsize)
              .map(order)
              .random_map(_TrainExample(self._prep, split, crop), seed=_seed(seed))
              .batch(local, drop_remainder=True))[process_index::process_count]
        return (ds.map_with_index(LeadDropout(lead_dropout, seed, process_index))
                if lead_dropout else ds)

    def train_batches(self, *, batch_size: int, crop: int, seed: int, start_step: int = 0,
                      num_threads: int = 2, lead_dropout: float = 0.0, process_index: int = 0,
                      process_count: int = 1) -> Iterator[dict]:
        """This process's rows of the training batches from `start_step` on,
        prepared ahead in threads.

        Yields:
          {'signal': (b, crop, 12) float32, 'target': (b, C) float32}, b =
          batch_size / process_count.
        """
        ds = self.train_dataset(batch_size=batch_size, crop=crop, seed=seed,
                                lead_dropout=lead_dropout, process_index=process_index,
                                process_count=process_count)[int(start_step):]
        return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                         prefetch_buffer_size=4)))

    def eval_batches(self, split: str, *, records_per_batch: int, crop: int,
                     stride: int) -> Iterator[tuple[np.ndarray, int]]:
        """Fixed-shape evaluation batches of windows.

        The last batch is padded with copies of its first record so every
        batch has the same shape; the count of real records comes with it.

        Yields:
          (windows (records_per_batch * W, crop, 12) float32, num_real_records).
        """
        rows = self.splits[split].rows
        num_batches = -(-len(rows) // records_per_batch)
        ds = grain.MapDataset.range(num_batches).map(
            _EvalRecords(self._prep, rows, records_per_batch, crop, stride))
        return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=_EVAL_THREADS,
                                                         prefetch_buffer_size=2)))


def _seed(seed: int) -> int:
    return int(np.random.SeedSequence([int(seed), 0x7C1A]).generate_state(1)[0])


def make_task(records: Any, labels: np.ndarray, folds: np.ndarray, ecg_ids: np.ndarray, *,
              task: str, classes: Sequence[str], fs: float, num_samples: int,
              clip: float = CLIP, source: str = '') -> PtbxlTask:
    """Selects the task's records, splits them by fold, computes train statistics.

    Args:
      records: random access to raw records ({'signal': (T, 12) mV, 'fs'}),
        a built split (`datasets.SplitReader`) or `ArrayRecords`.
      labels: (N, C) multi-hot labels of `SOURCE_TASK[task]`, per record.
      folds: (N,) strat_fold of every record.
      ecg_ids: (N,) record ids.
      task: one of TASKS.
      classes: names of the C label columns.
      fs: the model's sampling rate (records are resampled to it).
      num_samples: samples per record at `fs` (longer records are cut).
      clip: normalised values are clipped to [-clip, clip].
      source: where the data came from, for the record.

    Returns:
      PtbxlTask with folds 1-8 (those present) as train, 9 val, 10 test.
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
    splits = {name: Split(np.flatnonzero(m), targets[m][:, cols], np.asarray(ecg_ids)[m])
              for name, m in masks.items()}
    stats = train_stats(records, splits['train'].rows, fs=fs, num_samples=num_samples)
    return PtbxlTask(records, splits, task=task, classes=[classes[i] for i in cols], fs=fs,
                     stats=stats, folds={n: sorted(set(folds[m].tolist()))
                                         for n, m in masks.items()},
                     dropped_classes=dropped, source=source, num_samples=num_samples,
                     clip=clip)


def train_stats(records: Any, rows: Sequence[int], *, fs: float,
                num_samples: int) -> LeadStats:
    """Per-lead mean/std over every sample of the train records at `fs`."""
    running = RunningLeadStats()
    for row in rows:
        ex = records[int(row)]
        running.update(transforms.resample(ex['signal'], float(ex['fs']), fs)[:num_samples])
    std = running.std
    return LeadStats(running.mean, np.where(std > 0, std, 1.0),
                                    'ptb_xl train folds')


def choose_builder(fs: float, data_dir: str | None, manual_dir: str | None = None) -> str:
    """The built `ptb_xl` config for a model at `fs` (its own rate when built).

    With `manual_dir` (the raw PTB-XL folder) the config of `fs` is chosen
    when neither is built (for the entry point to build).

    Raises:
      tfds_builders.build.DatasetNotBuiltError: neither config is built; the
        message names the build command.
    """
    preferred = BUILDERS[1] if float(fs) > 100 else BUILDERS[0]
    for name in (preferred, *[b for b in BUILDERS if b != preferred]):
        if build.is_built(name, data_dir):
            return name
    if manual_dir:
        return preferred
    raise build.DatasetNotBuiltError(
        f'PTB-XL is not built in {data_dir or "the default TFDS data_dir"}. Build it once '
        f'from the PTB-XL folder (ptbxl_database.csv, records100/, records500/) with:\n'
        f'  {build.build_command(preferred, data_dir)}\n'
        f'or pass --config.data.manual_dir=/path/to/ptb-xl to build it on first use.')


def _built_builder(name: str, data_dir: str | None):
    if not build.is_built(name, data_dir):
        raise build.DatasetNotBuiltError(
            f'{name} is not built in {data_dir or "the default TFDS data_dir"}. Build it '
            f'once with:\n  {build.build_command(name, data_dir)}')
    return tfds.builder(name, data_dir=data_dir)


def load_task(task: str, *, fs: float, data_dir: str | None = None,
              builder_name: str | None = None, window_seconds: float = 10.0,
              max_records_per_fold: int | None = None,
              clip: float = CLIP) -> PtbxlTask:
    """A task of the built `ptb_xl` TFDS dataset (labels read now, signals streamed).

    `fs` is the encoder's rate (records of another rate are FFT-resampled);
    `builder_name` defaults to `choose_builder`; `max_records_per_fold` keeps
    only the first records of every fold (smoke runs, tests); `clip`: see
    `make_task`.
    """
    if task not in TASKS:
        raise ValueError(f'unknown task {task!r}; choose from {TASKS}')
    builder_name = builder_name or choose_builder(fs, data_dir)
    builder = _built_builder(builder_name, data_dir)
    source_task = SOURCE_TASK[task]
    classes = list(builder.info.metadata['classes'][source_task])
    limit = f'[:{int(max_records_per_fold)}]' if max_records_per_fold else ''
    folds_present = datasets.present_splits(
        [f'fold{i}' for i in TRAIN_FOLDS + VAL_FOLDS + TEST_FOLDS], builder.info)
    if not folds_present:
        raise ValueError(f'{builder_name} in {data_dir} has no examples')
    split = '+'.join(s + limit for s in folds_present)
    label_key = f'labels_{source_task}'
    index = datasets.SplitReader(builder_name, data_dir, split,
                                 keys=(label_key, 'strat_fold', 'ecg_id', 'signal', 'fs'))
    num_samples = transforms.samples(fs, window_seconds)
    labels, folds, ids, rows = [], [], [], []
    for i in range(len(index)):
        ex = index[i]
        if transforms.resampled_length(len(ex['signal']), float(ex['fs']), fs) < num_samples:
            continue  # the builder already drops short records; defensive
        labels.append(ex[label_key])
        folds.append(int(ex['strat_fold']))
        ids.append(int(ex['ecg_id']))
        rows.append(i)
    order = np.argsort(ids)  # a fixed record order whatever the shard order
    records = _Rows(datasets.SplitReader(builder_name, data_dir, split), np.asarray(rows)[order])
    logging.info('task %s: %d records of %s (%s) in %s', task, len(ids), builder_name,
                 folds_present, data_dir)
    return make_task(records, np.stack(labels)[order], np.asarray(folds)[order],
                     np.asarray(ids)[order], task=task, classes=classes, fs=fs,
                     num_samples=num_samples, clip=clip, source=builder_name)


class _Rows:
    """A view of some rows of a record source, renumbered 0..n-1."""

    def __init__(self, records: Any, rows: np.ndarray):
        self.records, self.rows = records, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.records[int(self.rows[index])]
