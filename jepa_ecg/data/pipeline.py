"""Streaming pre-training input pipeline: weighted source mixing, crops, masks.

Design
------
Every built source is read by RANDOM ACCESS from its TFDS dataset in the
ArrayRecord file format (`builder.as_data_source(split)`), so nothing is
loaded into RAM: memory is the few batches in flight plus the readers'
small index, whatever the dataset size.

What a batch contains is a pure function of (seed, step):

* global position g of step s draws its source by weight, then a record
  uniformly, then a crop position, from `default_rng([seed, s, PLAN])`
  (the whole global batch's plan is drawn, each process keeps its slice
  `[p * B_local, (p + 1) * B_local)`);
* a record too short for the window is dropped (counted and logged) and
  replaced by a re-draw from the SAME source with
  `default_rng([seed, s, RETRY, g, attempt])`, which keeps the source
  weights exact and the result independent of thread timing;
* the keep count K comes from `default_rng([seed, s, KEEP])` (the same on
  every process, so all hosts agree on the padded shape); block placement
  from `default_rng([seed, s, MASK, process_index])`.

So starting at `start_step=s` gives exactly the batches a run that started
at 0 saw from step s on, and no iterator state needs checkpointing beyond
the step.

Per record (in a thread pool; the ArrayRecord read, scipy filters and numpy
ufuncs release the GIL): read the raw example, parse only `signal` and `fs`
from the tf.train.Example bytes, cut the window plus a margin of
a few seconds on each side when filtering or resampling is needed (so a
30 min INCART record costs what a 20 s one does), high-pass (sources that
need it), FFT-resample to `fs`, cut the exact window, then z-score with the
source's stored lead statistics and clip to [-5, 5] straight into the batch
buffer. Up to `prefetch` steps are worked on ahead of the consumer.

The datasets must be built with `file_format='array_record'`; see
`build_dataset` and `uncompressed_array_record_writes` (ArrayRecord's
default zstd compression saves ~7% on float32 ECGs but makes every read
~4x slower).

Usage:

    build_dataset('synthetic_ecg', data_dir)          # once per source
    stats.ensure_lead_stats('synthetic', data_dir)    # or the stats CLI
    it = make_pretrain_iterator(sources.MIXTURES['synthetic'], data_dir=data_dir,
                                global_batch_size=256, fs=500, window_seconds=10,
                                patch_size=25, seed=0, start_step=restored_step,
                                process_index=jax.process_index(),
                                process_count=jax.process_count())
    batch = next(it)   # numpy dict for this process; it.close() when done

`python -m jepa_ecg.data.pipeline --data_dir=DIR` runs the benchmark
(`benchmark_suite`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import fractions
import functools
import logging
import math
import os
import threading
import time
import zlib
from typing import Any, Mapping, Sequence

import numpy as np

from jepa_ecg.data import masking
from jepa_ecg.data import sources as sources_lib
from jepa_ecg.data import transforms

log = logging.getLogger(__name__)

# Extra signal kept on each side of a window that is filtered or resampled,
# so that edge effects fall outside the window: the 0.5 Hz high-pass's
# transients need ~5 s to fall below 1% of the signal's std, FFT
# resampling's ringing ~2 s.
HIGHPASS_MARGIN_SECONDS = 5.0
RESAMPLE_MARGIN_SECONDS = 2.0
# Re-draws allowed for one batch position before concluding the source has
# (almost) no record long enough.
MAX_REDRAWS = 100
# Stream tags for the per-step random generators (any distinct constants).
_PLAN, _RETRY, _KEEP, _MASK = 0x91A7, 0x2E7B, 0x4EE9, 0x3A5C


# ---------------------------------------------------------------------------
# Building and opening datasets


def register_builders() -> None:
    """Imports `tfds_builders` so that every source's builder is registered."""
    try:
        import tfds_builders  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    except ImportError as e:  # only the synthetic builder is needed offline
        log.warning('could not import all tfds_builders (%s); registering '
                    'synthetic_ecg only', e)
        from tfds_builders.synthetic_ecg import synthetic_ecg_dataset_builder  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import


@contextlib.contextmanager
def uncompressed_array_record_writes():
    """Within the block, TFDS writes ArrayRecord files without compression.

    TFDS writes ArrayRecord with the library default (zstd level 3). On
    float32 ECG samples that saves ~7% of disk but every random read then
    decompresses ~240 kB (~200 us, the pipeline's largest cost). Readers
    detect the compression per file, so datasets written either way read
    the same. Not thread-safe: it swaps a class attribute for the duration.
    """
    # pylint: disable=g-import-not-at-top
    from array_record.python import array_record_module
    from tensorflow_datasets.core import file_adapters

    adapter = file_adapters.ArrayRecordFileAdapter
    original = adapter.__dict__['write_examples']

    def write_examples(cls, path, iterator):
        del cls
        writer = array_record_module.ArrayRecordWriter(
            os.fspath(path), 'group_size:1,uncompressed')
        for _, serialized in iterator:
            writer.write(serialized)
        writer.close()

    adapter.write_examples = classmethod(write_examples)
    try:
        yield
    finally:
        adapter.write_examples = original


def build_dataset(tfds_name: str, data_dir: str, *, manual_dir: str | None = None,
                  compress: bool = False,
                  builder_kwargs: Mapping[str, Any] | None = None):
    """Builds (or reuses) a registered TFDS dataset in ArrayRecord format.

    Args:
      tfds_name: `builder/config` name, e.g. 'synthetic_ecg/small'.
      data_dir: TFDS data directory.
      manual_dir: folder holding the source's raw files (real sources).
      compress: keep ArrayRecord's default zstd compression (slower reads).
      builder_kwargs: extra `tfds.builder` arguments (e.g. `config=`).

    Returns:
      the prepared `tfds.core.DatasetBuilder`.
    """
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    register_builders()
    builder = tfds.builder(tfds_name, data_dir=data_dir, **dict(builder_kwargs or {}))
    context = contextlib.nullcontext() if compress else uncompressed_array_record_writes()
    download_config = (tfds.download.DownloadConfig(manual_dir=manual_dir)
                       if manual_dir else None)
    with context:
        builder.download_and_prepare(file_format='array_record',
                                     download_config=download_config)
    return builder


class RecordReader:
    """Random access to one source's split, decoding only `signal` and `fs`.

    Thread-safe: the underlying ArrayRecord readers serve concurrent reads.
    """

    def __init__(self, source: sources_lib.Source, data_dir: str,
                 split: str | None = None):
        """Opens the split.

        Args:
          source: the source to read.
          data_dir: TFDS data directory holding the built dataset.
          split: split expression (default: the source's `train_split`).

        Raises:
          FileNotFoundError: when the dataset is not built in `data_dir`.
          ValueError: when it was not built in the ArrayRecord format.
        """
        # pylint: disable=g-import-not-at-top
        import tensorflow_datasets as tfds
        from tensorflow_datasets.proto import tf_example_pb2
        register_builders()
        self.source = source
        self.split = split or source.train_split
        self.builder = tfds.builder(source.tfds_name, data_dir=data_dir)
        if not self.builder.is_prepared():
            raise FileNotFoundError(
                f'source {source.name!r}: dataset {source.tfds_name!r} is not built '
                f'in {data_dir}; build it with file_format="array_record" '
                f'(e.g. jepa_ecg.data.pipeline.build_dataset({source.tfds_name!r}, '
                f'{data_dir!r}))')
        formats = {str(f.value) if hasattr(f, 'value') else str(f)
                   for f in ([self.builder.info.file_format]
                             + list(getattr(self.builder.info, 'alternative_file_formats', [])))
                   if f is not None}
        if 'array_record' not in formats:
            raise ValueError(
                f'source {source.name!r}: {self.builder.data_dir} holds {sorted(formats)} '
                'files, but the pre-training pipeline reads by random access and '
                'needs ArrayRecord: rebuild with '
                'download_and_prepare(file_format="array_record")')
        self._data = self.builder.as_data_source(
            self.split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
        encoding = getattr(self.builder.info.features['signal'], '_encoding', None)
        self._encoding = str(getattr(encoding, 'value', encoding or 'none'))
        self._parse = tf_example_pb2.Example.FromString

    def __len__(self) -> int:
        return len(self._data)

    def read(self, index: int) -> tuple[np.ndarray, float]:
        """Record `index` of the split.

        Args:
          index: 0 <= index < len(self).

        Returns:
          (signal, fs): float32 (T, 12) array in mV (may be read-only: do
          not modify it in place) and its sampling rate.
        """
        feature = self._parse(self._data[int(index)]).features.feature
        values = feature['signal']
        if self._encoding == 'bytes':
            signal = np.frombuffer(values.bytes_list.value[0], np.float32)
        elif self._encoding == 'zlib':
            signal = np.frombuffer(zlib.decompress(values.bytes_list.value[0]), np.float32)
        else:  # a float_list (encoding NONE): upb hands numpy one packed buffer
            signal = np.asarray(values.float_list.value, np.float32)
        fs_values = feature['fs'].float_list.value if 'fs' in feature else ()
        fs = float(fs_values[0]) if fs_values else float(self.source.native_fs)
        return signal.reshape(-1, 12), fs


# ---------------------------------------------------------------------------
# One window


def window_length(fs: float, window_seconds: float) -> int:
    """Samples in a window; raises unless fs * window_seconds is whole."""
    t = fs * window_seconds
    if abs(t - round(t)) > 1e-6:
        raise ValueError(f'fs * window_seconds = {t} is not a whole number of samples')
    return int(round(t))


@functools.lru_cache(maxsize=256)
def _rate_ratio(fs_in: float, fs_out: float) -> tuple[int, int]:
    """(p, q) with fs_out / fs_in = p / q in lowest terms."""
    ratio = fractions.Fraction(str(fs_out)) / fractions.Fraction(str(fs_in))
    return ratio.numerator, ratio.denominator


def extract_window(signal: np.ndarray, fs_in: float, fs_out: float, length: int,
                   position: float, highpass_hz: float | None = None,
                   margin_seconds: float | None = None) -> np.ndarray | None:
    """Cuts a window of `length` samples at `fs_out` from a record at `fs_in`.

    The crop (plus a margin each side, when filtering or resampling) is cut
    BEFORE the high-pass and the resampling, so the cost does not grow with
    the record length.

    Args:
      signal: (n, L) record at `fs_in`.
      fs_in: the record's sampling rate.
      fs_out: the wanted sampling rate.
      length: window length in samples at `fs_out`.
      position: in [0, 1): where the window starts among all possible starts.
      highpass_hz: high-pass cut-off applied at `fs_in`, or None.
      margin_seconds: extra signal filtered/resampled on each side (default
        `HIGHPASS_MARGIN_SECONDS` with a high-pass, else
        `RESAMPLE_MARGIN_SECONDS`).

    Returns:
      (length, L) float32 array (possibly a view into `signal`), or None when
      the record (resampled to `fs_out`) is shorter than `length`.
    """
    n = signal.shape[0]
    if margin_seconds is None:
        margin_seconds = (RESAMPLE_MARGIN_SECONDS if highpass_hz is None
                          else HIGHPASS_MARGIN_SECONDS)
    if fs_in == fs_out:
        if n < length:
            return None
        start = min(int(position * (n - length + 1)), n - length)
        if highpass_hz is None:
            return signal[start:start + length]
        margin = int(math.ceil(margin_seconds * fs_in))
        lo, hi = max(0, start - margin), min(n, start + length + margin)
        seg = transforms.highpass(signal[lo:hi], fs_in, highpass_hz)
        return seg[start - lo:start - lo + length]
    n_out = transforms.resampled_length(n, fs_in, fs_out)
    if n_out < length:
        return None
    start_out = min(int(position * (n_out - length + 1)), n_out - length)
    # fs_out / fs_in = p / q in lowest terms: a segment that starts at a
    # multiple of q input samples and is a multiple of q long maps onto
    # whole output samples, so the segment's resampled grid coincides with
    # the whole record's (otherwise rounding its length stretches time by
    # up to half a sample, which is visible on a QRS).
    p, q = _rate_ratio(float(fs_in), float(fs_out))
    begin = start_out * q / p  # window start in input samples (fractional)
    end = (start_out + length) * q / p
    margin = int(math.ceil(margin_seconds * fs_in))
    lo = max(0, int(math.floor(begin)) - margin) // q * q
    hi = min(n, int(math.ceil(end)) + margin)
    hi = lo + -(-(hi - lo) // q) * q  # round the length up to a multiple of q
    if hi > n:  # at the record's end: take the whole multiple that fits
        hi = lo + (n - lo) // q * q
        if hi < math.ceil(end):
            lo, hi = 0, n  # too short to align: use the whole record
    seg = signal[lo:hi]
    if highpass_hz is not None:
        seg = transforms.highpass(seg, fs_in, highpass_hz)
    seg = transforms.resample(seg, fs_in, fs_out)
    offset = start_out - transforms.resampled_length(lo, fs_in, fs_out)
    offset = min(max(offset, 0), max(0, seg.shape[0] - length))
    out = seg[offset:offset + length]
    if out.shape[0] < length:  # rounding at the record's end: hold the edge
        out = np.pad(out, ((0, length - out.shape[0]), (0, 0)), mode='edge')
    return out


# ---------------------------------------------------------------------------
# The pipeline


@dataclasses.dataclass
class _OpenSource:
    source: sources_lib.Source
    reader: RecordReader
    # Per-lead statistics tiled to the window's (T, 12) shape: same-shape
    # ufuncs run ~4x faster than ones broadcasting a 12-vector per row.
    mean: np.ndarray  # (T, 12) float32
    inv_std: np.ndarray  # (T, 12) float32


class PretrainPipeline:
    """Deterministic batches of one process, computed on demand by step.

    `batch(step)` is a pure function of (seed, step, process_index);
    `make_pretrain_iterator` wraps it with a thread pool and prefetching.
    """

    def __init__(self, mixture: Mapping[str, float], *, data_dir: str,
                 global_batch_size: int, fs: float, window_seconds: float,
                 patch_size: int, keep_ratio_range=(0.15, 0.25),
                 min_block_size: int = 10, keep_bucket: int = 10, seed: int,
                 process_index: int = 0, process_count: int = 1,
                 sources: Mapping[str, sources_lib.Source] | None = None):
        """See `make_pretrain_iterator` for the arguments."""
        from jepa_ecg.data import stats as stats_lib  # pylint: disable=g-import-not-at-top
        if global_batch_size % process_count:
            raise ValueError(
                f'global_batch_size={global_batch_size} is not divisible by '
                f'process_count={process_count}')
        if not 0 <= process_index < process_count:
            raise ValueError(f'process_index={process_index} not in [0, {process_count})')
        self.fs = float(fs)
        self.length = window_length(self.fs, window_seconds)
        if self.length % patch_size:
            raise ValueError(f'window of {self.length} samples is not a multiple '
                             f'of patch_size={patch_size}')
        self.num_patches = self.length // patch_size
        self.global_batch_size = int(global_batch_size)
        self.local_batch_size = self.global_batch_size // process_count
        self.process_index = int(process_index)
        self.seed = int(seed)
        self.keep_ratio_range = tuple(keep_ratio_range)
        self.min_block_size = int(min_block_size)
        self.keep_bucket = int(keep_bucket)

        registry = dict(sources_lib.SOURCES)
        registry.update(sources or {})
        names = [name for name, w in mixture.items() if w > 0]
        if not names:
            raise ValueError(f'mixture {dict(mixture)} has no positive weight')
        unknown = [n for n in names if n not in registry]
        if unknown:
            raise KeyError(f'unknown sources {unknown}; known: {sorted(registry)}')
        weights = np.array([float(mixture[n]) for n in names])
        self.source_names = tuple(names)
        self.weights = weights / weights.sum()
        self._cum_weights = np.cumsum(self.weights)
        self._cum_weights[-1] = 1.0
        self._sources = []
        for name in names:
            src = registry[name]
            reader = RecordReader(src, data_dir)
            if len(reader) == 0:
                raise ValueError(f'source {name!r} split {reader.split!r} is empty')
            lead_stats = stats_lib.load_lead_stats(src, data_dir)
            mean = np.asarray(lead_stats['mean'], np.float32)
            inv_std = (1.0 / np.asarray(lead_stats['std'], np.float64)).astype(np.float32)
            self._sources.append(_OpenSource(
                src, reader, np.tile(mean, (self.length, 1)),
                np.tile(inv_std, (self.length, 1))))
        self._lock = threading.Lock()
        self.dropped_short_records = collections.Counter()
        self.records_read = 0

    # -- the plan: which record and crop each position of a step gets --------

    def plan(self, step: int) -> dict:
        """This process's source/record/crop choices for `step` (before re-draws).

        Args:
          step: training step.

        Returns:
          dict of (B_local,) arrays: `source_id` int32, `record` int64,
          `position` float64 in [0, 1) (crop start among possible starts)
          and `global_position` (the rows' places in the global batch).
        """
        rng = np.random.default_rng([self.seed, int(step), _PLAN])
        g = self.global_batch_size
        source_id = np.searchsorted(self._cum_weights, rng.random(g), side='right')
        source_id = np.minimum(source_id, len(self._sources) - 1).astype(np.int32)
        record_u = rng.random(g)
        position = rng.random(g)
        sizes = np.array([len(s.reader) for s in self._sources])
        record = np.minimum((record_u * sizes[source_id]).astype(np.int64),
                            sizes[source_id] - 1)
        lo = self.process_index * self.local_batch_size
        sl = slice(lo, lo + self.local_batch_size)
        return {'source_id': source_id[sl], 'record': record[sl],
                'position': position[sl], 'global_position': np.arange(g)[sl]}

    def _fill(self, out: np.ndarray, rows: Sequence[int], step: int, plan: dict) -> None:
        """Writes the normalised windows of `rows` into `out` (worker task)."""
        dropped = collections.Counter()
        reads = 0
        for i in rows:
            src = self._sources[plan['source_id'][i]]
            record, position = int(plan['record'][i]), float(plan['position'][i])
            for attempt in range(MAX_REDRAWS + 1):
                signal, fs_in = src.reader.read(record)
                reads += 1
                window = extract_window(signal, fs_in, self.fs, self.length, position,
                                        src.source.highpass_hz)
                if window is not None:
                    break
                dropped[src.source.name] += 1
                retry = np.random.default_rng(
                    [self.seed, int(step), _RETRY, int(plan['global_position'][i]), attempt])
                record = int(retry.integers(len(src.reader)))
                position = float(retry.random())
            else:
                raise RuntimeError(
                    f'source {src.source.name!r}: {MAX_REDRAWS + 1} records in a row '
                    f'were shorter than the {self.length / self.fs:g} s window')
            row = out[i]
            np.subtract(window, src.mean, out=row)
            np.multiply(row, src.inv_std, out=row)
            np.clip(row, -5.0, 5.0, out=row)
        with self._lock:
            self.records_read += reads
            for name, count in dropped.items():
                before = self.dropped_short_records[name]
                self.dropped_short_records[name] += count
                # Log the first drop and then at powers of ten.
                total = before + count
                if before == 0 or int(math.log10(total)) > int(math.log10(max(before, 1))):
                    log.info('source %s: dropped %d records shorter than the window '
                             'so far', name, total)

    def masks(self, step: int) -> dict:
        """The step's masks for this process (K shared by all processes)."""
        k_rng = np.random.default_rng([self.seed, int(step), _KEEP])
        num_keep = masking.sample_num_keep(k_rng, self.num_patches, self.keep_ratio_range)
        m_rng = np.random.default_rng([self.seed, int(step), _MASK, self.process_index])
        return masking.sample_batch_masks(
            m_rng, self.local_batch_size, self.num_patches,
            min_block_size=self.min_block_size, bucket=self.keep_bucket,
            num_keep=num_keep)

    def _tasks(self, step: int, chunks: int):
        """Output arrays of a step and the work that fills them."""
        plan = self.plan(step)
        signal = np.empty((self.local_batch_size, self.length, 12), np.float32)
        batch = {'signal': signal, 'source_id': plan['source_id']}
        rows = np.array_split(np.arange(self.local_batch_size), max(1, chunks))
        work = [(self._fill, signal, r, step, plan) for r in rows if len(r)]
        return batch, work

    def batch(self, step: int) -> dict:
        """Computes the batch of `step` in the calling thread.

        Args:
          step: training step.

        Returns:
          dict of numpy arrays, see `make_pretrain_iterator`.
        """
        batch, work = self._tasks(step, 1)
        for fn, *args in work:
            fn(*args)
        batch.update(self.masks(step))
        return batch


class PretrainIterator:
    """Iterator over steps `start_step, start_step + 1, ...` with prefetching.

    Attributes:
      pipeline: the underlying `PretrainPipeline` (its
        `dropped_short_records` and `records_read` count what happened).
      step: the step of the next batch.
    """

    def __init__(self, pipeline: PretrainPipeline, start_step: int,
                 num_workers: int, prefetch: int):
        self.pipeline = pipeline
        self.step = int(start_step)
        self._num_workers = max(1, int(num_workers))
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self._num_workers, thread_name_prefix='jepa_ecg_pipeline')
        self._ahead = max(1, int(prefetch))
        self._pending = collections.deque()
        self._next_submit = self.step

    def _submit(self) -> None:
        while len(self._pending) < self._ahead + 1:
            step = self._next_submit
            # Two tasks per worker balance uneven record costs.
            batch, work = self.pipeline._tasks(step, 2 * self._num_workers)  # pylint: disable=protected-access
            futures = [self._pool.submit(fn, *args) for fn, *args in work]
            futures.append(self._pool.submit(self.pipeline.masks, step))
            self._pending.append((step, batch, futures))
            self._next_submit += 1

    def __iter__(self) -> 'PretrainIterator':
        return self

    def __next__(self) -> dict:
        if self._pool is None:
            raise StopIteration
        self._submit()
        step, batch, futures = self._pending.popleft()
        for f in futures[:-1]:
            f.result()
        batch.update(futures[-1].result())
        self.step = step + 1
        self._submit()
        return batch

    def close(self) -> None:
        """Stops the workers (pending work is cancelled)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._pending.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:  # pylint: disable=broad-except
            pass

    def __enter__(self) -> 'PretrainIterator':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def default_num_workers() -> int:
    """Worker threads: the CPUs this process may use (at least 1, at most 16)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(16, cpus))


def make_pretrain_iterator(mixture: Mapping[str, float], *, data_dir: str,
                           global_batch_size: int, fs: float, window_seconds: float,
                           patch_size: int, keep_ratio_range=(0.15, 0.25),
                           min_block_size: int = 10, keep_bucket: int = 10,
                           seed: int, start_step: int = 0, process_index: int = 0,
                           process_count: int = 1, num_workers: int | None = None,
                           prefetch: int = 2,
                           sources: Mapping[str, sources_lib.Source] | None = None
                           ) -> PretrainIterator:
    """Endless iterator of this process's pre-training batches.

    Args:
      mixture: source name -> sampling weight (normalised here), e.g.
        `sources.MIXTURES['all']`.
      data_dir: TFDS data directory with every source built (ArrayRecord)
        and its lead statistics computed (`python -m jepa_ecg.data.stats`).
      global_batch_size: batch size over all processes.
      fs: sampling rate the model sees (Hz).
      window_seconds: window length (s); fs * window_seconds samples.
      patch_size: samples per patch; the window must hold a whole number.
      keep_ratio_range: range of the per-step keep ratio.
      min_block_size: smallest masked block (patches).
      keep_bucket: pad the kept-token count to a multiple of this.
      seed: data seed.
      start_step: first step to produce (resume: the batches equal those a
        run from step 0 produced at these steps).
      process_index: this process (jax.process_index()).
      process_count: number of processes (jax.process_count()).
      num_workers: worker threads (default: CPUs available, at most 16).
      prefetch: steps prepared ahead of the consumer.
      sources: extra or overriding registry entries (name -> Source), for
        sources not in `jepa_ecg.data.sources.SOURCES`.

    Returns:
      an iterator (with `close()`) yielding per step a dict:
      `signal` float32 (B_local, T, 12) preprocessed; `keep_idx` int32
      (B_local, K_pad); `keep_valid` bool (B_local, K_pad); `predict_mask`
      bool (B_local, N); `source_id` int32 (B_local,) (index into the
      mixture's positive-weight sources in the given order).
    """
    pipeline = PretrainPipeline(
        mixture, data_dir=data_dir, global_batch_size=global_batch_size, fs=fs,
        window_seconds=window_seconds, patch_size=patch_size,
        keep_ratio_range=keep_ratio_range, min_block_size=min_block_size,
        keep_bucket=keep_bucket, seed=seed, process_index=process_index,
        process_count=process_count, sources=sources)
    return PretrainIterator(pipeline, start_step,
                            num_workers or default_num_workers(), prefetch)


# ---------------------------------------------------------------------------
# Benchmark


def _rss_bytes() -> int:
    import psutil  # pylint: disable=g-import-not-at-top
    return psutil.Process().memory_info().rss


def pipeline_benchmark(mixture: Mapping[str, float], *, data_dir: str,
                       global_batch_size: int = 256, fs: float = 500.0,
                       window_seconds: float = 10.0, patch_size: int = 25,
                       num_steps: int = 40, warmup_steps: int = 3, seed: int = 0,
                       num_workers: int | None = None, prefetch: int = 2,
                       sources: Mapping[str, sources_lib.Source] | None = None) -> dict:
    """Measures the pipeline (masks included) in this process.

    Args:
      mixture: as for `make_pretrain_iterator`.
      data_dir: TFDS data directory.
      global_batch_size: records per step.
      fs: model sampling rate.
      window_seconds: window length.
      patch_size: patch length (samples).
      num_steps: measured steps.
      warmup_steps: steps run before timing (pool start, page cache).
      seed: data seed.
      num_workers: worker threads (default: available CPUs).
      prefetch: steps prepared ahead.
      sources: extra registry entries.

    Returns:
      dict with `records_per_s`, `steps_per_s`, `seconds`, `cpu_seconds`
      and `records_per_cpu_s` (all threads' CPU time), the machine's
      `load_average_1min` and `cpus`, `rss_start_mb`
      (after opening the sources), `rss_peak_mb` (max sampled while
      running), `rss_end_mb`, `num_workers` and `records_read` (re-draws
      included).
    """
    it = make_pretrain_iterator(
        mixture, data_dir=data_dir, global_batch_size=global_batch_size, fs=fs,
        window_seconds=window_seconds, patch_size=patch_size, seed=seed,
        num_workers=num_workers, prefetch=prefetch, sources=sources)
    with it:
        rss_start = _rss_bytes()
        for _ in range(warmup_steps):
            next(it)
        peak = _rss_bytes()
        t0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(num_steps):
            batch = next(it)
            peak = max(peak, _rss_bytes())
        seconds = time.perf_counter() - t0
        # CPU time of all threads: on a shared machine wall-clock throughput
        # depends on the neighbours, records per CPU-second much less so.
        cpu_seconds = time.process_time() - cpu0
        del batch
        rss_end = _rss_bytes()
    records = num_steps * global_batch_size
    mb = 1 / 2**20
    return {
        'records_per_s': records / seconds, 'steps_per_s': num_steps / seconds,
        'seconds': seconds, 'cpu_seconds': cpu_seconds,
        'records_per_cpu_s': records / cpu_seconds,
        'load_average_1min': os.getloadavg()[0], 'cpus': os.cpu_count(), 'rss_start_mb': rss_start * mb,
        'rss_peak_mb': peak * mb, 'rss_end_mb': rss_end * mb,
        'num_workers': it._num_workers,  # pylint: disable=protected-access
        'records_read': it.pipeline.records_read,
        'global_batch_size': global_batch_size,
    }


# Synthetic sources the benchmark reads: the same generator at two dataset
# sizes (memory must not depend on it) and at a rate that needs resampling.
BENCHMARK_SOURCES: dict[str, sources_lib.Source] = {
    'bench_500hz': sources_lib.Source('bench_500hz', 'synthetic_ecg/small', 500.0),
    'bench_500hz_large': sources_lib.Source('bench_500hz_large', 'synthetic_ecg/large', 500.0),
    'bench_400hz': sources_lib.Source('bench_400hz', 'synthetic_ecg/small_400hz', 400.0),
}
BENCHMARK_CASES = {
    # case -> (source, what it shows)
    '500hz_small': ('bench_500hz', 'stored at 500 Hz, 512 records'),
    '500hz_large': ('bench_500hz_large', 'stored at 500 Hz, 4096 records'),
    '400hz_resample': ('bench_400hz', 'stored at 400 Hz, resampled to 500 Hz'),
}


def prepare_benchmark_data(data_dir: str) -> None:
    """Builds the benchmark's synthetic datasets and their lead statistics.

    Args:
      data_dir: TFDS data directory (~1.3 GB is written on first use).
    """
    from jepa_ecg.data import stats as stats_lib  # pylint: disable=g-import-not-at-top
    for src in BENCHMARK_SOURCES.values():
        build_dataset(src.tfds_name, data_dir)
        try:
            stats_lib.load_lead_stats(src, data_dir)
        except stats_lib.MissingLeadStatsError:
            stats_lib.save_lead_stats(
                stats_lib.compute_lead_stats(src, data_dir, max_records=256), src, data_dir)


def benchmark_suite(data_dir: str, *, cases: Sequence[str] = tuple(BENCHMARK_CASES),
                    global_batch_size: int = 256, num_steps: int = 40,
                    num_workers: int | None = None, fresh_process: bool = True) -> dict:
    """Runs the pipeline benchmark cases (10 s windows at 500 Hz, masks included).

    Each case runs in a fresh Python process by default so that its peak
    RSS is its own.

    Args:
      data_dir: TFDS data directory (see `prepare_benchmark_data`).
      cases: names from `BENCHMARK_CASES`.
      global_batch_size: records per step.
      num_steps: timed steps per case.
      num_workers: worker threads (default: available CPUs).
      fresh_process: run each case in its own interpreter.

    Returns:
      case -> `pipeline_benchmark` result plus `description`.
    """
    import json  # pylint: disable=g-import-not-at-top
    import subprocess  # pylint: disable=g-import-not-at-top
    import sys  # pylint: disable=g-import-not-at-top
    prepare_benchmark_data(data_dir)
    results = {}
    for case in cases:
        source, description = BENCHMARK_CASES[case]
        if fresh_process:
            cmd = [sys.executable, '-m', 'jepa_ecg.data.pipeline', f'--data_dir={data_dir}',
                   f'--case={case}', f'--global_batch_size={global_batch_size}',
                   f'--num_steps={num_steps}']
            if num_workers:
                cmd.append(f'--num_workers={num_workers}')
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
        else:
            result = pipeline_benchmark(
                {source: 1.0}, data_dir=data_dir, global_batch_size=global_batch_size,
                num_steps=num_steps, num_workers=num_workers, sources=BENCHMARK_SOURCES)
        result['description'] = description
        results[case] = result
    return results


def _main(argv: Sequence[str] | None = None) -> int:
    """`python -m jepa_ecg.data.pipeline --data_dir=DIR [--case=...]`: benchmark."""
    import argparse  # pylint: disable=g-import-not-at-top
    import json  # pylint: disable=g-import-not-at-top
    parser = argparse.ArgumentParser(description='pre-training pipeline benchmark')
    parser.add_argument('--data_dir', required=True)
    parser.add_argument('--case', choices=sorted(BENCHMARK_CASES), default=None,
                        help='one case in this process (default: all, each in its own)')
    parser.add_argument('--global_batch_size', type=int, default=256)
    parser.add_argument('--num_steps', type=int, default=40)
    parser.add_argument('--num_workers', type=int, default=None)
    args = parser.parse_args(argv)
    if args.case is None:
        results = benchmark_suite(args.data_dir, global_batch_size=args.global_batch_size,
                                  num_steps=args.num_steps, num_workers=args.num_workers)
    else:
        source, _ = BENCHMARK_CASES[args.case]
        results = pipeline_benchmark(
            {source: 1.0}, data_dir=args.data_dir, global_batch_size=args.global_batch_size,
            num_steps=args.num_steps, num_workers=args.num_workers, sources=BENCHMARK_SOURCES)
    print(json.dumps(results))
    return 0


if __name__ == '__main__':
    import sys  # pylint: disable=g-import-not-at-top
    sys.exit(_main())
