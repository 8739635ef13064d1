"""Skipped records: why, how many, and the build report that lists them.

A record that must not become an example is skipped, never dropped
silently: readers return a `ReadResult` with (or raise `SkipRecord` with) a
reason from this module,
`count_and_yield` counts it in the split's `SkipCounter`, and
`write_build_report` stores every split's counts as `build_report.json`
next to the dataset (and in `info.metadata['build_report']`).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
import time
from typing import Any, Callable, Iterable

from absl import logging
import numpy as np

# Reasons a record is skipped. They are the keys of the build report, so keep
# them stable: downstream tooling may compare reports across builds.
MISSING_FILE = 'missing_file'
UNREADABLE_FILE = 'unreadable_file'
CHECKSUM_MISMATCH = 'checksum_mismatch'
BAD_HEADER = 'bad_header'
MISSING_LEAD = 'missing_lead'
ALL_NAN_LEAD = 'all_nan_lead'
FLAT_LEAD = 'flat_lead'
TOO_SHORT = 'too_short'
BAD_SHAPE = 'bad_shape'

BUILD_REPORT_FILENAME = 'build_report.json'


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


@dataclasses.dataclass
class ReadResult:
    """What a reader sends back for one record: its signal, or why it is skipped.

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
