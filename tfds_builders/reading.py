"""Reading WFDB records for the builders: one record in, one `ReadResult` out.

The parsing rules and fast readers are those of `jepa_ecg.ecg.wfdb_io`
(shared with the CLI's reader of users' files); here their errors become
skip reasons, the header's checksums are verified, and the signal comes out
in mV, canonical lead order, validated and with its NaNs interpolated.
`read_wfdb_task` is the reader pool's worker (top-level, so a `spawn` pool
can pickle it).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from jepa_ecg.ecg import leads as leads_lib
from jepa_ecg.ecg import wfdb_io
from tfds_builders import signals
from tfds_builders import skips

# The header fields the builders use.
WfdbHeader = wfdb_io.WfdbHeader

# How each kind of WFDB problem is counted in the build report; the first
# matching class wins (a checksum error is also an unreadable file).
_WFDB_SKIP_REASONS = (
    (wfdb_io.WfdbChecksumError, skips.CHECKSUM_MISMATCH),
    (wfdb_io.WfdbHeaderError, skips.BAD_HEADER),
    (wfdb_io.WfdbMissingFileError, skips.MISSING_FILE),
    (wfdb_io.WfdbUnreadableError, skips.UNREADABLE_FILE),
)


def _skip_for(error: wfdb_io.WfdbFormatError) -> skips.SkipRecord:
    """The `SkipRecord` a shared-reader error counts as."""
    reason = next((r for cls, r in _WFDB_SKIP_REASONS if isinstance(error, cls)),
                  skips.UNREADABLE_FILE)
    where = os.path.basename(error.path) if error.path else ''
    return skips.SkipRecord(reason, f'{where}: {error.reason}' if where
                            else error.reason)


def parse_wfdb_header(text: str) -> WfdbHeader:
    """Parses a single-segment WFDB header, tolerating common quirks.

    Tolerated: a record name written with an extension (`A0001.mat`), runs of
    spaces or tabs, fs written as `500/...` or `500(...)`, gains without
    baseline or units, lead names in any case or with inner spaces (see
    `jepa_ecg.ecg.wfdb_io.parse_header`).

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
    directly with numpy/scipy; any other format goes through `wfdb.rdrecord`
    (`jepa_ecg.ecg.wfdb_io`). Checksums the header gives are verified. NaNs
    are not touched (the caller validates with `signals.clean_signal`).

    Args:
      header_path: path of the `.hea` file.

    Returns:
      (signal, header): signal float32 (T, 12) in mV in `LEADS` order.

    Raises:
      SkipRecord: MISSING_FILE, UNREADABLE_FILE, CHECKSUM_MISMATCH,
        BAD_HEADER or MISSING_LEAD.
    """
    try:
        header = wfdb_io.read_header(header_path)
        # Check the leads before reading samples: cheap, and the common failure.
        missing = leads_lib.missing_leads(header.lead_names)
        if missing:
            raise skips.SkipRecord(skips.MISSING_LEAD, f'missing {missing}, '
                                   f'record has {list(header.lead_names)}')
        signal, names = wfdb_io.read_signal(header, header_path, checksums=True)
    except wfdb_io.WfdbFormatError as e:
        raise _skip_for(e) from None
    return signals.reorder_leads(signal, names), header


@dataclasses.dataclass(frozen=True)
class WfdbTask:
    """One record for `read_wfdb_task` (picklable for the worker pool)."""
    key: Any
    header_path: str
    min_seconds: float | None = None
    keep_flat: bool = False


def read_wfdb_task(task: WfdbTask) -> skips.ReadResult:
    """Reads and cleans one WFDB record; never raises for bad input.

    Top-level so that a `spawn` pool can pickle it.

    Args:
      task: the record to read.

    Returns:
      A `ReadResult` with the cleaned signal or the skip reason.
    """
    try:
        raw, header = read_wfdb(task.header_path)
        signal, warning = signals.clean_signal(raw, header.fs, task.min_seconds,
                                               task.keep_flat)
    except skips.SkipRecord as e:
        return skips.ReadResult(task.key, reason=e.reason, detail=e.detail)
    except Exception as e:  # pylint: disable=broad-except
        # Anything unexpected in a file is still that file's problem: count it
        # rather than abort a build of a million records.
        return skips.ReadResult(task.key, reason=skips.UNREADABLE_FILE,
                                detail=f'{type(e).__name__}: {e}')
    return skips.ReadResult(task.key, signal, header.fs, header.comments,
                            warning=warning)
