"""Shared parts of the ECG TFDS builders: reading, validation, skip counts.

Every builder turns raw records into examples with the same core features
(`signal`, `fs`, `record_id`, `age`, `sex`); the pieces here keep the builders
thin and make the handling of bad input identical across sources:

* `read_wfdb` reads a WFDB record (`.hea` + format-16 `.dat` or MATLAB v4
  `.mat`) with the tolerant parser and fast readers of `jepa_ecg.wfdb_io`
  (shared with the CLI), falling back to `wfdb` for other signal formats, and
  returns the signal in mV in the canonical lead order.
* `check_signal` names what is wrong with a signal (or returns None).
* `SkipCounter` counts skipped records by reason, logs a summary per split
  and `write_build_report` stores every split's summary as JSON.
* `parallel_map` reads records in a process pool (records/s progress logs).
* `SourceBuilderMixin` gives every builder the same constructor options, one
  reader pool per build, and splits that may end up empty (which TFDS itself
  refuses to write).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import multiprocessing
import os
import pathlib
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

from absl import logging
import numpy as np

from jepa_ecg import leads as leads_lib
from jepa_ecg import wfdb_io

# Reasons a record is skipped. They are the keys of the build report, so keep
# them stable: downstream tooling may compare reports across builds.
MISSING_FILE = 'missing_file'
UNREADABLE_FILE = 'unreadable_file'
BAD_HEADER = 'bad_header'
MISSING_LEAD = 'missing_lead'
ALL_NAN_LEAD = 'all_nan_lead'
FLAT_LEAD = 'flat_lead'
TOO_SHORT = 'too_short'
BAD_SHAPE = 'bad_shape'

BUILD_REPORT_FILENAME = 'build_report.json'

# Below this many records a pool costs more (process start-up) than it saves.
SERIAL_BELOW = 64

# Header comment values that mean "not recorded".
_UNKNOWN_TOKENS = {'', 'nan', 'unknown', 'none', 'n/a', 'na', '?', '-'}


class SkipRecord(Exception):
    """Raised while reading a record that must not become an example.

    Attributes:
      reason: one of the reason constants of this module.
      detail: human-readable specifics for the log.
    """

    def __init__(self, reason: str, detail: str = ''):
        super().__init__(f'{reason}: {detail}' if detail else reason)
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------------------
# Signal cleaning and validation


def interpolate_nans(signal: np.ndarray) -> np.ndarray:
    """Linearly interpolates NaNs in each lead (column) of a (T, C) signal.

    NaNs before the first / after the last finite sample take the nearest
    finite value (np.interp's behaviour). Leads that are entirely NaN are left
    as they are: `check_signal` rejects such records before this is called.

    Args:
      signal: float array of shape (T, C).

    Returns:
      A float32 copy with the NaNs replaced.
    """
    out = np.array(signal, dtype=np.float32, copy=True)
    bad = np.isnan(out)
    if not bad.any():
        return out
    t = np.arange(out.shape[0])
    for lead in np.flatnonzero(bad.any(axis=0)):
        good = ~bad[:, lead]
        if good.any():
            out[bad[:, lead], lead] = np.interp(
                t[bad[:, lead]], t[good], out[good, lead])
    return out


def check_signal(signal: np.ndarray, fs: float,
                 min_seconds: float | None) -> str | None:
    """Says why a raw (T, 12) signal is unusable, or None when it is fine.

    Checks, in order: shape, length (`min_seconds`), leads that are all NaN,
    and flat leads (constant over the finite samples: a disconnected
    electrode; z-scoring such a lead would divide by zero).

    Args:
      signal: array (T, 12) in mV, canonical lead order, NaNs allowed.
      fs: sampling rate in Hz.
      min_seconds: minimal duration; None or 0 disables the check.

    Returns:
      One of the reason constants of this module, or None.
    """
    if signal.ndim != 2 or signal.shape[1] != leads_lib.NUM_LEADS:
        return BAD_SHAPE
    if signal.shape[0] < 2:
        return TOO_SHORT
    if min_seconds and signal.shape[0] < round(min_seconds * fs):
        return TOO_SHORT
    finite = np.isfinite(signal)
    if not finite.any(axis=0).all():
        return ALL_NAN_LEAD
    with np.errstate(invalid='ignore'):
        span = np.nanmax(signal, axis=0) - np.nanmin(signal, axis=0)
    if (span <= 0).any():
        return FLAT_LEAD
    return None


def clean_signal(signal: np.ndarray, fs: float, min_seconds: float | None,
                 keep_flat: bool = False) -> tuple[np.ndarray, str | None]:
    """Validates a raw canonical-order signal and interpolates its NaNs.

    Args:
      signal: array (T, 12) in mV, NaNs allowed.
      fs: sampling rate in Hz.
      min_seconds: minimal duration (None: no minimum).
      keep_flat: keep records with a flat lead (returned as a warning)
        instead of skipping them. For benchmark data (PTB-XL) dropping
        records would change the published test set.

    Returns:
      (signal, warning): float32 array (T, 12) without NaNs, and FLAT_LEAD
      when a flat lead was kept (else None).

    Raises:
      SkipRecord: with the reason from `check_signal`.
    """
    signal = np.asarray(signal, dtype=np.float32)
    # +/-inf are as unusable as NaN; treat them the same way.
    if not np.isfinite(signal).all():
        signal = np.where(np.isinf(signal), np.nan, signal)
    reason = check_signal(signal, fs, min_seconds)
    warning = None
    if reason == FLAT_LEAD and keep_flat:
        reason, warning = None, FLAT_LEAD
    if reason is not None:
        raise SkipRecord(reason, f'shape {signal.shape}, fs {fs:g}')
    return interpolate_nans(signal), warning


def reorder_leads(signal: np.ndarray, lead_names: Sequence[str]) -> np.ndarray:
    """Reorders the columns of `signal` into `jepa_ecg.leads.LEADS` order.

    Raises:
      SkipRecord: MISSING_LEAD naming the absent leads.
    """
    try:
        perm = leads_lib.lead_permutation(lead_names)
    except ValueError as e:
        raise SkipRecord(MISSING_LEAD, str(e)) from None
    return signal[:, perm]


# ---------------------------------------------------------------------------
# Header values


def parse_age(value: Any) -> float:
    """Age in years as float32-able float, -1.0 when unknown or implausible."""
    if value is None:
        return -1.0
    text = str(value).strip()
    if text.lower() in _UNKNOWN_TOKENS:
        return -1.0
    try:
        age = float(text)
    except ValueError:
        return -1.0
    # PTB-XL codes ages above 89 as 300 for anonymity; keep those as 90.
    if age == 300:
        return 90.0
    if not math.isfinite(age) or age < 0 or age > 130:
        return -1.0
    return age


def parse_sex(value: Any) -> int:
    """0 male, 1 female, -1 unknown; accepts Male/Female/M/F/0/1 spellings.

    Numbers follow PTB-XL's convention (0 male, 1 female).
    """
    if value is None:
        return -1
    text = str(value).strip().lower()
    if text in ('m', 'male', '0', '0.0'):
        return 0
    if text in ('f', 'female', '1', '1.0'):
        return 1
    return -1


def parse_header_comments(comments: Iterable[str]) -> dict[str, str]:
    """`#Key: value` comment lines as a dict with lower-case keys."""
    fields = {}
    for line in comments:
        line = line.strip().lstrip('#').strip()
        if ':' not in line:
            continue
        key, value = line.split(':', 1)
        fields.setdefault(key.strip().lower(), value.strip())
    return fields


# ---------------------------------------------------------------------------
# WFDB reading


# The header fields the builders use; parsing and reading are shared with the
# CLI's reader (`jepa_ecg.io`) in `jepa_ecg.wfdb_io`.
WfdbHeader = wfdb_io.WfdbHeader

# How each kind of WFDB problem is counted in the build report.
_WFDB_SKIP_REASONS = (
    (wfdb_io.WfdbHeaderError, BAD_HEADER),
    (wfdb_io.WfdbMissingFileError, MISSING_FILE),
    (wfdb_io.WfdbUnreadableError, UNREADABLE_FILE),
)


def _skip_for(error: wfdb_io.WfdbFormatError) -> SkipRecord:
    """The `SkipRecord` a shared-reader error counts as."""
    reason = next((r for cls, r in _WFDB_SKIP_REASONS if isinstance(error, cls)),
                  UNREADABLE_FILE)
    where = os.path.basename(error.path) if error.path else ''
    return SkipRecord(reason, f'{where}: {error.reason}' if where else error.reason)


def parse_wfdb_header(text: str) -> WfdbHeader:
    """Parses a single-segment WFDB header, tolerating common quirks.

    Tolerated: a record name written with an extension (`A0001.mat`), runs of
    spaces or tabs, fs written as `500/...` or `500(...)`, gains without
    baseline or units, lead names in any case or with inner spaces (see
    `jepa_ecg.wfdb_io.parse_header`).

    Args:
      text: the header file's content.

    Returns:
      A `WfdbHeader`.

    Raises:
      SkipRecord: BAD_HEADER when the header cannot be understood.
    """
    try:
        return wfdb_io.parse_header(text)
    except wfdb_io.WfdbFormatError as e:
        raise _skip_for(e) from None


def read_wfdb(header_path: str | os.PathLike) -> tuple[np.ndarray, WfdbHeader]:
    """Reads a WFDB record into a raw (T, 12) float32 mV canonical-order array.

    Format-16 `.dat` and MATLAB v4 `.mat` (`val`, signals x samples) are read
    directly with numpy/scipy (several times faster than `wfdb.rdrecord`);
    any other format goes through `wfdb.rdrecord` (`jepa_ecg.wfdb_io`). NaNs
    are not touched (the caller validates with `clean_signal`).

    Args:
      header_path: path of the `.hea` file.

    Returns:
      (signal, header): signal float32 (T, 12) in mV in `LEADS` order.

    Raises:
      SkipRecord: MISSING_FILE, UNREADABLE_FILE, BAD_HEADER or MISSING_LEAD.
    """
    try:
        header = wfdb_io.read_header(header_path)
        # Check the leads before reading samples: cheap, and the common failure.
        missing = leads_lib.missing_leads(header.lead_names)
        if missing:
            raise SkipRecord(MISSING_LEAD, f'missing {missing}, '
                             f'record has {list(header.lead_names)}')
        signal, names = wfdb_io.read_signal(header, header_path)
    except wfdb_io.WfdbFormatError as e:
        raise _skip_for(e) from None
    return reorder_leads(signal, names), header


# ---------------------------------------------------------------------------
# Parallel reading


@dataclasses.dataclass
class ReadResult:
    """What a worker sends back for one record.

    Attributes:
      key: the caller's key for the record (passed through unchanged).
      signal: cleaned float32 (T, 12) mV signal, None when skipped.
      fs: sampling rate in Hz (0 when skipped before it was known).
      comments: header comment lines (WFDB) for source-specific fields.
      reason: skip reason, None when the record is fine.
      detail: text for the log when skipped.
      warning: a problem the record was kept with (e.g. FLAT_LEAD).
    """
    key: Any
    signal: np.ndarray | None = None
    fs: float = 0.0
    comments: tuple[str, ...] = ()
    reason: str | None = None
    detail: str = ''
    warning: str | None = None


@dataclasses.dataclass(frozen=True)
class WfdbTask:
    """One record for `read_wfdb_task` (picklable for the worker pool)."""
    key: Any
    header_path: str
    min_seconds: float | None = None
    keep_flat: bool = False


def read_wfdb_task(task: WfdbTask) -> ReadResult:
    """Reads and cleans one WFDB record; never raises for bad input.

    Top-level so that a `spawn` pool can pickle it.

    Args:
      task: the record to read.

    Returns:
      A `ReadResult` with the cleaned signal or the skip reason.
    """
    try:
        raw, header = read_wfdb(task.header_path)
        signal, warning = clean_signal(raw, header.fs, task.min_seconds,
                                       task.keep_flat)
    except SkipRecord as e:
        return ReadResult(task.key, reason=e.reason, detail=e.detail)
    except Exception as e:  # pylint: disable=broad-except
        # Anything unexpected in a file is still that file's problem: count it
        # rather than abort a build of a million records.
        return ReadResult(task.key, reason=UNREADABLE_FILE,
                          detail=f'{type(e).__name__}: {e}')
    return ReadResult(task.key, signal, header.fs, header.comments,
                      warning=warning)


def default_processes() -> int:
    """Returns the number of cores this process may use (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def parallel_map(fn: Callable[[Any], Any], items: Sequence[Any], *,
                 processes: int | None = None,
                 chunksize: int | None = None,
                 serial_below: int = SERIAL_BELOW,
                 desc: str = 'records',
                 log_every_s: float = 10.0,
                 pool: Any = None) -> Iterator[Any]:
    """Yields `fn(item)` for every item, in order, using a process pool.

    A `spawn` pool is used (not `fork`): the builder process has TensorFlow's
    threads running, and forking a multi-threaded process can deadlock. `fn`
    must therefore be a top-level function of an importable module. Inputs
    smaller than `serial_below`, or `processes=1`, run in this process.

    Args:
      fn: picklable function of one item.
      items: the inputs.
      processes: pool size (default: all available cores).
      chunksize: items per task sent to a worker (default: about 4 chunks
        per worker and at most 256).
      serial_below: run serially below this many items.
      desc: what the items are, for the progress log.
      log_every_s: seconds between progress log lines.
      pool: a running `multiprocessing` pool to use (not closed here);
        starting a spawn pool costs seconds, so builders keep one per build.

    Yields:
      The results, in the order of `items`.
    """
    total = len(items)
    processes = processes or default_processes()
    start = last_log = time.monotonic()

    def progress(done: int) -> None:
        nonlocal last_log
        now = time.monotonic()
        if now - last_log >= log_every_s or done == total:
            last_log = now
            rate = done / max(now - start, 1e-9)
            logging.info('%s: %d / %d (%.0f/s)', desc, done, total, rate)

    if processes <= 1 or total < serial_below:
        for i, item in enumerate(items, 1):
            yield fn(item)
            progress(i)
        return
    if chunksize is None:
        chunksize = max(1, min(256, total // (processes * 4)))
    if pool is not None:
        for i, result in enumerate(pool.imap(fn, items, chunksize=chunksize), 1):
            yield result
            progress(i)
        return
    with start_pool(processes) as own_pool:
        for i, result in enumerate(own_pool.imap(fn, items, chunksize=chunksize),
                                   1):
            yield result
            progress(i)


def start_pool(processes: int | None = None):
    """Starts a `spawn` process pool (see `parallel_map` for why spawn).

    Args:
      processes: number of workers (default: all available cores).

    Returns:
      A `multiprocessing.pool.Pool`; the caller closes it.
    """
    return multiprocessing.get_context('spawn').Pool(
        processes or default_processes())


# ---------------------------------------------------------------------------
# Skip accounting and the build report


class SkipCounter:
    """Counts records per outcome for one split and logs a summary.

    Attributes:
      split: the split's name.
      total: records considered.
      written: records that became examples.
      skipped: Counter reason -> number of records.
      samples: reason -> up to `max_samples` '(record): detail' strings.
      warnings: Counter problem -> records kept despite it.
    """

    def __init__(self, split: str, max_samples: int = 5):
        self.split = split
        self.total = 0
        self.written = 0
        self.skipped: collections.Counter[str] = collections.Counter()
        self.samples: dict[str, list[str]] = collections.defaultdict(list)
        self.warnings: collections.Counter[str] = collections.Counter()
        self.warning_samples: dict[str, list[str]] = collections.defaultdict(
            list)
        self._max_samples = max_samples
        self._start = time.monotonic()

    def ok(self) -> None:
        """Records one example written."""
        self.total += 1
        self.written += 1

    def skip(self, record_id: Any, reason: str, detail: str = '') -> None:
        """Records one skipped record (logged at debug level)."""
        self.total += 1
        self.skipped[reason] += 1
        if len(self.samples[reason]) < self._max_samples:
            self.samples[reason].append(f'{record_id}: {detail}'.rstrip(': '))
        logging.debug('[%s] skip %s (%s) %s', self.split, record_id, reason,
                      detail)

    def warn(self, record_id: Any, problem: str) -> None:
        """Records a problem of a record that was kept anyway."""
        self.warnings[problem] += 1
        if len(self.warning_samples[problem]) < self._max_samples:
            self.warning_samples[problem].append(str(record_id))

    def summary(self) -> dict[str, Any]:
        """The split's counts as a JSON-able dict."""
        seconds = time.monotonic() - self._start
        return {
            'total': self.total,
            'written': self.written,
            'skipped': dict(sorted(self.skipped.items())),
            'skipped_total': sum(self.skipped.values()),
            'skip_samples': {k: v for k, v in sorted(self.samples.items())},
            'kept_with_warnings': dict(sorted(self.warnings.items())),
            'warning_samples': {
                k: v for k, v in sorted(self.warning_samples.items())},
            'seconds': round(seconds, 2),
            'records_per_second': round(self.total / max(seconds, 1e-9), 1),
        }

    def log_summary(self) -> dict[str, Any]:
        """Logs the summary at info level and returns it."""
        s = self.summary()
        logging.info(
            '[%s] %d of %d records written, %d skipped %s (%.1f s, %.0f '
            'records/s)', self.split, s['written'], s['total'],
            s['skipped_total'], s['skipped'], s['seconds'],
            s['records_per_second'])
        if self.warnings:
            logging.warning('[%s] kept despite: %s (e.g. %s)', self.split,
                            dict(self.warnings), dict(self.warning_samples))
        return s


def write_build_report(builder: Any, split: str,
                       summary: dict[str, Any]) -> None:
    """Adds a split's summary to the builder's build report.

    The report lives in `builder.info.metadata['build_report']` (so it is in
    `metadata.json` and reloaded with the dataset) and in
    `<data_dir>/<name>/<config>/<version>/build_report.json`. During
    `download_and_prepare`, `builder.data_dir` is TFDS's temporary directory,
    which is renamed to the final one on success, so the file ends up next to
    `dataset_info.json`.

    Args:
      builder: the DatasetBuilder being prepared (its info must have a
        `tfds.core.MetadataDict` as metadata).
      split: split name.
      summary: `SkipCounter.summary()`.
    """
    report = dict(builder.info.metadata.get('build_report') or {})
    report[split] = summary
    builder.info.metadata['build_report'] = report
    path = pathlib.Path(os.fspath(builder.data_dir)) / BUILD_REPORT_FILENAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, sort_keys=True))
    except OSError as e:  # the metadata copy still has it
        logging.warning('could not write %s: %s', path, e)


def count_and_yield(results: Iterable[ReadResult], counter: SkipCounter,
                    make_example: Callable[[ReadResult], tuple[Any, dict]]):
    """Yields `make_example(result)` for good results, counting the rest.

    Args:
      results: worker outputs.
      counter: the split's `SkipCounter`.
      make_example: result -> (key, example); may raise `SkipRecord`.

    Yields:
      (key, example) pairs for TFDS.
    """
    for result in results:
        if result.reason is not None:
            counter.skip(result.key, result.reason, result.detail)
            continue
        try:
            key, example = make_example(result)
        except SkipRecord as e:
            counter.skip(result.key, e.reason, e.detail)
            continue
        counter.ok()
        if result.warning:
            counter.warn(key, result.warning)
        yield key, example


# ---------------------------------------------------------------------------
# Empty splits


class SourceBuilderMixin:
    """What every ECG source builder shares, mixed into GeneratorBasedBuilder.

    * Constructor arguments `download` (override the config's download
      flag), `processes` (reader processes; 1 = serial) and `serial_below`.
    * `_map_records(fn, items, desc)`: reads records with one spawn pool that
      lives for the whole build (started on first use, closed when all splits
      are written), serially for small inputs.
    * Empty splits: TFDS refuses to write a split without examples ('No
      examples were yielded'). Here a split whose generator yields nothing
      (every record missing or bad), or that is listed in `_declared_splits`
      but has no generator, is recorded with zero shards:
      `info.splits['fold3'].num_examples == 0`, and `as_dataset` of it (or of
      `fold3+fold4`) gives an empty dataset with the usual element spec.

    Use as `class Builder(SourceBuilderMixin, tfds.core.GeneratorBasedBuilder)`.
    """

    _declared_splits: Sequence[str] = ()

    def __init__(self, *, download: bool | None = None,
                 processes: int | None = None,
                 serial_below: int = SERIAL_BELOW, **kwargs):
        """Creates the builder.

        Args:
          download: overrides the builder config's `download` flag (download
            the source when manual_dir is missing or empty).
          processes: reader processes (default: cores - 1, the main process
            writes; 1: serial).
          serial_below: inputs with fewer records are read serially.
          **kwargs: passed to `tfds.core.GeneratorBasedBuilder`.
        """
        super().__init__(**kwargs)
        self._download = download
        self._processes = processes
        self._serial_below = serial_below
        self._pool = None

    def _download_allowed(self) -> bool:
        if self._download is not None:
            return self._download
        return bool(getattr(self.builder_config, 'download', False))

    def _map_records(self, fn: Callable[[Any], Any], items: Sequence[Any],
                     desc: str) -> Iterator[Any]:
        # The main process is busy encoding and writing examples, so by
        # default one core is left to it; with a single reader left, a pool
        # would only add pickling, so reading is serial on <= 2 cores.
        processes = self._processes or max(1, default_processes() - 1)
        if processes <= 1 or len(items) < self._serial_below:
            return parallel_map(fn, items, processes=1, desc=desc)
        if self._pool is None:
            self._pool = start_pool(processes)
        return parallel_map(fn, items, processes=processes, desc=desc,
                            serial_below=0, pool=self._pool)

    def _generate_splits(self, dl_manager, download_config):  # pylint: disable=arguments-differ
        # pylint: disable=g-import-not-at-top
        import tensorflow_datasets as tfds
        # TFDS writes all splits in one call and aborts the whole build when
        # one split yields nothing. Splits only turn out empty while they
        # are read (every record missing or bad), so each split is generated
        # by its own call, and an empty one is recorded with zero shards.
        generators = self._split_generators(dl_manager)
        split_infos = []
        try:
            for name, generator in generators.items():
                def only_this(dl_manager, _name=name, _generator=generator):
                    del dl_manager
                    return {_name: _generator}
                self._split_generators = only_this  # shadows the method
                try:
                    split_infos.extend(
                        super()._generate_splits(dl_manager, download_config))
                except AssertionError as e:
                    if 'No examples were yielded' not in str(e):
                        raise
                    logging.warning('split %s has no examples', name)
                finally:
                    del self._split_generators
        finally:
            if self._pool is not None:
                self._pool.close()
                self._pool.join()
                self._pool = None
        have = {info.name for info in split_infos}
        for name in list(generators) + list(self._declared_splits):
            if name not in have:
                have.add(name)
                split_infos.append(tfds.core.SplitInfo(
                    name=name, shard_lengths=[], num_bytes=0,
                    filename_template=self._get_filename_template(name)))
        return split_infos

    def _as_dataset(self, split, decoders=None, read_config=None,
                    shuffle_files=False):
        try:
            return super()._as_dataset(split=split, decoders=decoders,
                                       read_config=read_config,
                                       shuffle_files=shuffle_files)
        except ValueError as e:
            # TFDS's reader cannot open a selection without files; an empty
            # split (or a sum of empty ones) is an empty dataset of the same
            # element spec, which we get by reading nothing of a real split.
            if 'corresponds to no data' not in str(e):
                raise
            filled = [name for name, info in self.info.splits.items()
                      if info.num_examples > 0]
            if not filled:
                raise
            return super()._as_dataset(split=filled[0], decoders=decoders,
                                       read_config=read_config,
                                       shuffle_files=False).take(0)


def manual_or_download_dir(dl_manager, *, instructions: str,
                           download: bool,
                           download_fn: Callable[[], pathlib.Path] | None
                           ) -> pathlib.Path:
    """The folder to build from: manual_dir, else a download when allowed.

    Args:
      dl_manager: the TFDS DownloadManager.
      instructions: what to download and where to put it (for the error).
      download: whether downloading is allowed.
      download_fn: downloads and returns the extracted root; None when the
        source cannot be downloaded automatically.

    Returns:
      The source root folder.

    Raises:
      FileNotFoundError: when manual_dir is missing/empty and no download
        is allowed or possible; the message says what to put where.
    """
    try:
        return pathlib.Path(os.fspath(dl_manager.manual_dir))
    except (AssertionError, ValueError) as e:
        manual_error = e
    if download and download_fn is not None:
        logging.info('manual_dir missing or empty (%s); downloading',
                     manual_error)
        return pathlib.Path(os.fspath(download_fn()))
    raise FileNotFoundError(
        f'No source data: {manual_error}\n\nWhat to download and where to put '
        f'it:\n{instructions}')


# ---------------------------------------------------------------------------
# Features shared by every source


def core_features() -> dict[str, Any]:
    """The features every pre-training source has (the pipeline's contract).

    Returns:
      dict name -> TFDS feature: `signal` float32 (T, 12) mV in
      `jepa_ecg.leads.LEADS` order at the native rate, `fs` float32 Hz,
      `record_id` string, `age` float32 years (-1 unknown), `sex` int32
      (0 male, 1 female, -1 unknown).
    """
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    return {
        # Stored as raw bytes: TFDS would otherwise copy the samples one by
        # one into a proto float list, which made up most of the build time.
        'signal': tfds.features.Tensor(
            shape=(None, leads_lib.NUM_LEADS), dtype=np.float32,
            encoding=tfds.features.Encoding.BYTES,
            doc=f'mV, leads {", ".join(leads_lib.LEADS)}, native rate'),
        'fs': tfds.features.Scalar(dtype=np.float32,
                                   doc='sampling rate (Hz)'),
        'record_id': tfds.features.Text(),
        'age': tfds.features.Scalar(dtype=np.float32,
                                    doc='years, -1 unknown'),
        'sex': tfds.features.Scalar(dtype=np.int32,
                                    doc='0 male, 1 female, -1 unknown'),
    }


def core_example(record_id: Any, signal: np.ndarray, fs: float,
                 age: Any = None, sex: Any = None) -> dict[str, Any]:
    """The core features of one example, with age/sex normalised.

    Args:
      record_id: the source's record identifier.
      signal: cleaned (T, 12) float32 mV signal.
      fs: sampling rate in Hz.
      age: raw age value (number, string or None).
      sex: raw sex value (see `parse_sex`).

    Returns:
      dict with the keys of `core_features()`.
    """
    return {
        'signal': np.asarray(signal, dtype=np.float32),
        'fs': np.float32(fs),
        'record_id': str(record_id),
        'age': np.float32(parse_age(age)),
        'sex': np.int32(sex if isinstance(sex, (int, np.integer))
                        and sex in (-1, 0, 1) else parse_sex(sex)),
    }


def find_root(folder: str | os.PathLike, marker: str,
              max_depth: int = 3) -> pathlib.Path:
    """The folder at or below `folder` that contains `marker`.

    Downloads extract into a versioned sub-folder and users unpack archives
    one level deeper or shallower than asked; searching a few levels makes
    either layout work.

    Args:
      folder: where to start.
      marker: a file or folder name that identifies the source root.
      max_depth: how many levels to descend.

    Returns:
      The first folder (breadth-first, sorted) containing `marker`.

    Raises:
      FileNotFoundError: when no such folder exists.
    """
    level = [pathlib.Path(os.fspath(folder))]
    for _ in range(max_depth + 1):
        for path in level:
            if (path / marker).exists():
                return path
        level = sorted(p for path in level if path.is_dir()
                       for p in path.iterdir() if p.is_dir())
    raise FileNotFoundError(f'no {marker} in {folder} (searched {max_depth} '
                            'levels down)')
