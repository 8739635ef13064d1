"""The pre-training input pipeline on Grain: source mixing, crops, masks.

The pipeline is a chain of Grain `MapDataset`s, so every element is computed
on demand from its index and nothing is held in RAM beyond the batches in
flight:

    per source  MapDataset.range(...).map(record order)  ->  (source_id, record)
                  (every record once per epoch, a new order each epoch)
    plan        MapDataset.mix(sources, weights): global position g -> entry
    batches     plan.batch(B_local, batch_fn=read + preprocess a 10 s window
                  at a position drawn from (seed, g), straight into the batch
                  buffer)[process::processes]  ->  index = step
    + masks     map_with_index: one keep count K per step, shared by all
                  processes; block placement per process

So batch(step) is a pure function of (seed, step, process): a resumed run
starts the dataset at its step and needs no iterator state. Reading goes
through `data/datasets.py` (random access to ArrayRecord, checksums
verified by its reader; `data/example_wire.py` takes the signal from the
record's bytes without parsing the whole example) and what the model sees
through THE preprocessing function (`data/preprocess.py`), the same that
fine-tuning and inference call. `worker_count > 0` runs the
reading and preprocessing in Grain worker processes.

    pipe = PretrainPipeline(sources.MIXTURES['synthetic'], data_dir=data_dir,
                            global_batch_size=256, fs=500, window_seconds=10,
                            patch_size=25, seed=0)
    with pipe.iterator(start_step=restored_step) as it:
        batch = next(it)   # numpy dict of this process's rows
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import math
import os
from typing import Any, Iterator, Mapping

import grain
import numpy as np
from absl import flags

from jepa_ecg.data import datasets, example_wire, masking, source_stats
from jepa_ecg.data import preprocess as preprocess_lib
from jepa_ecg.data import sources as sources_lib
from jepa_ecg.data.lead_subsets import LeadDropout
from jepa_ecg.data.stats import LeadStats
from jepa_ecg.ecg import transforms
from jepa_ecg.ecg.leads import LEADS

log = logging.getLogger(__name__)

# Re-draws allowed for one batch position before concluding the source has
# (almost) no record long enough.
MAX_REDRAWS = 100
# Stream tags of the generators (any distinct constants).
_KEEP, _MASK, _ORDER, _RETRY = 0x4EE9, 0x3A5C, 0x91A7, 0x2E7B
_MASK64 = (1 << 64) - 1
# Draws per source: endless for every practical purpose.
_ENDLESS = 1 << 62


@dataclasses.dataclass(frozen=True)
class _OpenSource:
    source: sources_lib.Source
    reader: datasets.SplitReader
    stats: LeadStats


class _RecordOrder:
    """Draw k of one source -> (source_id, record): every record once per
    epoch, in a new order each epoch (a picklable Grain map)."""

    def __init__(self, seed: int, source_id: int, num_records: int):
        self.seed, self.source_id, self.num_records = seed, source_id, num_records

    @functools.lru_cache(maxsize=2)
    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, _ORDER, self.source_id, epoch]).permutation(
            self.num_records)

    def __call__(self, k: int) -> tuple[int, int]:
        epoch, i = divmod(int(k), self.num_records)
        return self.source_id, int(self._permutation(epoch)[i])


class _Assemble:
    """A batch's (source_id, record) entries -> preprocessed windows, written
    straight into the batch buffer (Grain's batch_fn)."""

    def __init__(self, opened: list[_OpenSource], fs: float, length: int, seed: int):
        self.opened, self.fs, self.length, self.seed = opened, fs, length, seed
        self._decoders = [example_wire.SignalDecoder(o.reader) for o in opened]
        self.records_read = 0
        self.dropped_short_records = collections.Counter()

    def __call__(self, entries: list[tuple[int, int, int]]) -> dict:
        signal = np.empty((len(entries), self.length, len(LEADS)), np.float32)
        source_id = np.empty(len(entries), np.int32)
        for row, (sid, record, position) in enumerate(entries):
            self._fill(signal[row], sid, record, position)
            source_id[row] = sid
        return {'signal': signal, 'source_id': source_id}

    def _fill(self, out: np.ndarray, source_id: int, record: int, position: int) -> None:
        src = self.opened[source_id]
        rng = None
        for attempt in range(MAX_REDRAWS + 1):
            signal, fs = self._decoders[source_id](record)
            self.records_read += 1
            try:
                preprocess_lib.preprocess(
                    signal, fs, LEADS, target_fs=self.fs, stats=src.stats,
                    highpass_hz=src.source.highpass_hz,
                    window=preprocess_lib.Window(self.length, _unit_float(self.seed, position)),
                    out=out, finite=True)
                return
            except preprocess_lib.RecordTooShortError:
                self._count_drop(src.source.name)
                # Re-draw from the same source (keeps the source weights exact).
                rng = rng or np.random.default_rng([self.seed, _RETRY, position])
                record = int(rng.integers(len(src.reader)))
                position = int(rng.integers(2**62))
        raise RuntimeError(
            f'source {src.source.name!r}: {MAX_REDRAWS + 1} records in a row were shorter '
            f'than the {self.length / self.fs:g} s window')

    def _count_drop(self, name: str) -> None:
        before = self.dropped_short_records[name]
        self.dropped_short_records[name] += 1
        # Log the first drop and then at powers of ten.
        if before == 0 or int(math.log10(before + 1)) > int(math.log10(max(before, 1))):
            log.info('source %s: dropped %d records shorter than the window so far',
                     name, before + 1)


def _with_position(g: int, entry: tuple[int, int]) -> tuple[int, int, int]:
    """Global position g -> (source_id, record, g): g seeds the crop."""
    return entry[0], entry[1], int(g)


def _unit_float(seed: int, key: int) -> float:
    """A uniform float in [0, 1) from (seed, key) (splitmix64; cheaper than
    creating a numpy generator per record)."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(key) + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return ((z ^ (z >> 31)) >> 11) / float(1 << 53)


class _AddMasks:
    """step, batch -> batch with the step's block masks."""

    def __init__(self, seed: int, process_index: int, local_batch_size: int,
                 num_patches: int, keep_ratio_range, min_block_size: int, keep_bucket: int):
        self.seed, self.process_index = seed, process_index
        self.local_batch_size, self.num_patches = local_batch_size, num_patches
        self.keep_ratio_range = tuple(keep_ratio_range)
        self.min_block_size, self.keep_bucket = min_block_size, keep_bucket

    def masks(self, step: int) -> dict:
        # K comes from (seed, step) alone: every process pads to the same shape.
        k_rng = np.random.default_rng([self.seed, int(step), _KEEP])
        num_keep = masking.sample_num_keep(k_rng, self.num_patches, self.keep_ratio_range)
        m_rng = np.random.default_rng([self.seed, int(step), _MASK, self.process_index])
        return masking.sample_batch_masks(
            m_rng, self.local_batch_size, self.num_patches,
            min_block_size=self.min_block_size, bucket=self.keep_bucket, num_keep=num_keep)

    def __call__(self, step: int, batch: dict) -> dict:
        return {**batch, **self.masks(step)}


class PretrainPipeline:
    """This process's pre-training batches as a Grain dataset indexed by step.

    Attributes:
      dataset: `grain.MapDataset`; `dataset[step]` is the batch of `step`.
      source_names: the mixture's sources with positive weight (the order of
        `source_id`).
      weights: their normalised sampling weights.
    """

    def __init__(self, mixture: Mapping[str, float], *, data_dir: str,
                 global_batch_size: int, fs: float, window_seconds: float,
                 patch_size: int, keep_ratio_range=(0.15, 0.25),
                 min_block_size: int = 10, keep_bucket: int = 10, seed: int,
                 process_index: int = 0, process_count: int = 1,
                 sources: Mapping[str, sources_lib.Source] | None = None,
                 lead_dropout: float = 0.0):
        """Opens the sources and builds the dataset.

        Args:
          mixture: source name -> sampling weight (normalised here), e.g.
            `sources.MIXTURES['all']`.
          data_dir: TFDS data directory with every source built and its lead
            statistics computed (`python -m jepa_ecg.data.source_stats`).
          global_batch_size: batch size over all processes.
          fs: sampling rate the model sees (Hz).
          window_seconds: window length (s).
          patch_size: samples per patch; the window must hold a whole number.
          keep_ratio_range: range of the per-step keep ratio.
          min_block_size: smallest masked block (patches).
          keep_bucket: pad the kept-token count to a multiple of this.
          seed: data seed.
          process_index: this process (jax.process_index()).
          process_count: number of processes (jax.process_count()).
          sources: extra or overriding registry entries (name -> Source).
          lead_dropout: probability that a record has a random subset of its
            leads zeroed after normalisation (`lead_subsets.LeadDropout`; 0: off).
        """
        if global_batch_size <= 0 or global_batch_size % process_count:
            raise ValueError(
                f'global_batch_size={global_batch_size} must be positive and divisible by '
                f'process_count={process_count}')
        if not 0 <= process_index < process_count:
            raise ValueError(f'process_index={process_index} not in [0, {process_count})')
        self.fs = float(fs)
        self.length = transforms.samples(self.fs, window_seconds)
        if self.length % patch_size:
            raise ValueError(f'window of {self.length} samples is not a multiple '
                             f'of patch_size={patch_size}')
        self.local_batch_size = global_batch_size // process_count
        self.seed = int(seed)
        registry = {**sources_lib.SOURCES, **(sources or {})}
        names = [name for name, w in mixture.items() if w > 0]
        if not names:
            raise ValueError(f'mixture {dict(mixture)} has no positive weight')
        unknown = [n for n in names if n not in registry]
        if unknown:
            raise KeyError(f'unknown sources {unknown}; known: {sorted(registry)}')
        weights = np.array([float(mixture[n]) for n in names])
        self.source_names = tuple(names)
        self.weights = weights / weights.sum()
        opened = [self._open(registry[n], data_dir) for n in names]
        self.plan_dataset = grain.MapDataset.mix(
            [grain.MapDataset.range(_ENDLESS).map(_RecordOrder(self.seed, i, len(o.reader)))
             for i, o in enumerate(opened)], list(self.weights))
        self._read = _Assemble(opened, self.fs, self.length, self.seed)
        self._add_masks = _AddMasks(self.seed, process_index, self.local_batch_size,
                                    self.length // patch_size, keep_ratio_range,
                                    min_block_size, keep_bucket)
        self.process_index, self.process_count = process_index, process_count
        self.dataset = (self.plan_dataset
                        .map_with_index(_with_position)
                        .batch(self.local_batch_size, batch_fn=self._read)
                        [process_index::process_count]
                        .map_with_index(self._add_masks))
        if lead_dropout:
            self.dataset = self.dataset.map_with_index(
                LeadDropout(lead_dropout, self.seed, process_index))

    @staticmethod
    def _open(src: sources_lib.Source, data_dir: str) -> _OpenSource:
        reader = datasets.open_source(src, data_dir)
        if len(reader) == 0:
            raise ValueError(f'source {src.name!r} split {reader.split!r} is empty')
        lead_stats = LeadStats.from_json(
            {**source_stats.load_lead_stats(src, data_dir), 'source': src.name})
        return _OpenSource(src, reader, lead_stats)

    @property
    def records_read(self) -> int:
        """Records read by in-process batches (re-draws included)."""
        return self._read.records_read

    @property
    def dropped_short_records(self) -> collections.Counter:
        """Per source, records dropped for being shorter than the window."""
        return self._read.dropped_short_records

    def plan(self, step: int) -> dict:
        """This process's (source, record) choices for `step`, before re-draws.

        Returns:
          dict of (B_local,) arrays `source_id` int32 and `record` int64.
        """
        first = (step * self.process_count + self.process_index) * self.local_batch_size
        entries = [self.plan_dataset[first + i] for i in range(self.local_batch_size)]
        return {'source_id': np.array([e[0] for e in entries], np.int32),
                'record': np.array([e[1] for e in entries], np.int64)}

    def batch(self, step: int) -> dict:
        """The batch of `step`, computed in the calling thread.

        Returns:
          dict of numpy arrays: `signal` float32 (B_local, T, 12)
          preprocessed; `source_id` int32 (B_local,) (index into
          `source_names`); `keep_idx` int32 (B_local, K_pad); `keep_valid`
          bool (B_local, K_pad); `predict_mask` bool (B_local, N).
        """
        return self.dataset[int(step)]

    def iterator(self, start_step: int = 0, *, worker_count: int = 0,
                 num_threads: int | None = None, prefetch: int = 2) -> 'PretrainIterator':
        """Batches of steps `start_step, start_step + 1, ...`, prepared ahead.

        Args:
          start_step: first step (resume: the batches equal those a run from
            step 0 saw at these steps).
          worker_count: Grain worker processes reading and preprocessing
            (0: threads in this process).
          num_threads: threads preparing batches in each process (default:
            the CPUs available, at most 16).
          prefetch: batches prepared ahead per process.

        Returns:
          a `PretrainIterator`.
        """
        threads = num_threads or default_num_threads()
        ds = self.dataset[int(start_step):].to_iter_dataset(
            grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(1, prefetch)))
        if worker_count > 0:
            # Grain's worker processes read its absl flags; outside an absl
            # main (tests, notebooks) they are never parsed: take the defaults.
            if not flags.FLAGS.is_parsed():
                flags.FLAGS.mark_as_parsed()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=int(worker_count), per_worker_buffer_size=max(1, prefetch)))
        return PretrainIterator(iter(ds), start_step)


class PretrainIterator:
    """Iterator over pre-training batches with `step` and `close()`."""

    def __init__(self, it: Iterator[dict], start_step: int):
        self._it = it
        self.step = int(start_step)

    def __iter__(self) -> 'PretrainIterator':
        return self

    def __next__(self) -> dict:
        if self._it is None:
            raise StopIteration
        batch = next(self._it)
        self.step += 1
        return batch

    def close(self) -> None:
        """Stops Grain's threads and worker processes."""
        it, self._it = self._it, None
        close = getattr(it, 'close', None)
        if close is not None:
            close()

    def __enter__(self) -> 'PretrainIterator':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def default_num_threads() -> int:
    """Threads: the CPUs this process may use (at least 1, at most 16)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(16, cpus))


def make_pretrain_iterator(mixture: Mapping[str, float], *, start_step: int = 0,
                           worker_count: int = 0, num_threads: int | None = None,
                           prefetch: int = 2, **kwargs: Any) -> PretrainIterator:
    """`PretrainPipeline(mixture, **kwargs).iterator(start_step, ...)`."""
    return PretrainPipeline(mixture, **kwargs).iterator(
        start_step, worker_count=worker_count, num_threads=num_threads, prefetch=prefetch)
