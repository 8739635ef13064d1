"""Reading a user's own ECG files: WFDB, CSV, NPY/NPZ, and folders of them.

Every reader returns `Record`s: a raw (time, leads) float32 signal in mV, its
sampling rate and its lead names in storage order. Nothing is resampled,
reordered or normalised here: `jepa_ecg.data.preprocess.preprocess` does that,
matching leads by name.

Formats:
  * WFDB: `NAME.hea` with its signal file, format-16 `.dat` (PTB-XL,
    MIMIC-IV-ECG) or MATLAB v4 `.mat` (`val`, leads x samples; PhysioNet/CinC
    2021), any other WFDB format through the `wfdb` package. Sampling rate,
    gains, baselines, units and lead names come from the header. A record may
    be named by its `.hea`, its `.dat`/`.mat`, or its path without suffix.
  * CSV: one column per lead, first row = lead names (`I,II,...,V6`; any
    order, any case). A time column (`time`, `t`, `seconds`, `time_s`,
    `timestamp`) gives the sampling rate when `fs` is not passed; an empty
    first header cell (a pandas index) is dropped. Comma, semicolon or tab.
  * NPY: a (time, leads) array, or (leads, time) when the first axis matches
    the number of lead names and the second does not, or (records, time,
    leads) for several records in one file (of at least 32 samples each:
    other shapes, e.g. (time, leads, 1), are an error). Needs `fs` and
    `leads` (lead names default to the canonical 12-lead order, with a
    warning, when the array has 12 columns).
  * NPZ: the array under `signal` (or `signals`, `ecg`, `x`, `data`, or the
    only array), optional `fs` and `leads` arrays inside the file, which win
    over the defaults passed in.
  * Folders: searched recursively for the above; other files are ignored.

Array formats (CSV, NPY, NPZ) are in mV unless `units` says otherwise.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import warnings
from typing import Iterable, Sequence

import numpy as np

from jepa_ecg.ecg import wfdb_io
from jepa_ecg.ecg.leads import LEADS, canonical_lead_name

RECORD_SUFFIXES = ('.hea', '.csv', '.npy', '.npz')
SIGNAL_SUFFIXES = ('.dat', '.mat')
# The unit names WFDB headers use, so `units` accepts what a header would say.
_UNIT_TO_MV = wfdb_io.UNIT_TO_MV
_TIME_COLUMNS = {'time', 't', 'seconds', 'second', 'sec', 's', 'time_s', 'time(s)',
                 'timestamp', 'time [s]', 'elapsed time'}
_NPZ_SIGNAL_KEYS = ('signal', 'signals', 'ecg', 'x', 'data')
# CSV cells that mean "no sample" rather than text.
_MISSING_CELLS = {'nan', 'na', 'n/a', 'null', 'none', '-', '?'}
# Fewest samples per record for a 3-D array to be read as (records, time, leads).
_MIN_BATCH_RECORD_SAMPLES = 32


class AssumedLeadOrderWarning(UserWarning):
    """An array file did not name its leads; the canonical order was assumed."""


class MissingSamplesWarning(UserWarning):
    """A CSV lead has missing cells (interpolated), or is mostly missing (dropped)."""


# Plausible ECG sampling rates (Hz); the CLI's --fs takes the same range.
FS_RANGE = (50.0, 20000.0)


class RecordReadError(ValueError):
    """A file could not be read as an ECG record; the message names the file."""

    def __init__(self, path: str, reason: str):
        super().__init__(f'{path}: {reason}')
        self.path = path
        self.reason = reason


@dataclasses.dataclass
class Record:
    """One ECG record as stored.

    Attributes:
      name: record name (file stem; `stem[i]` for the i-th record of a file).
      path: the file it was read from.
      signal: (time, leads) float32 in mV.
      fs: sampling rate (Hz).
      leads: lead names in storage (column) order.
      assumed_leads: True when the file did not name its leads and the
        canonical order was assumed (NPY/NPZ without lead names).
      notes: what the reader changed, for the user (e.g. missing CSV cells).
    """
    name: str
    path: str
    signal: np.ndarray
    fs: float
    leads: list[str]
    assumed_leads: bool = False
    notes: tuple[str, ...] = ()

    @property
    def seconds(self) -> float:
        return self.signal.shape[0] / self.fs


# --------------------------------------------------------------------- finding
def find_records(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Expands files and folders into the list of record files to read.

    Folders are searched recursively (sorted) for `.hea`, `.csv`, `.npy` and
    `.npz`; a `.dat`/`.mat` or suffix-less path naming a WFDB record becomes
    its `.hea`. Paths that do not exist or have an unknown suffix are kept, so
    that reading them reports a clear per-file error.

    Args:
      paths: files and folders.

    Returns:
      record file paths, duplicates removed, in input order.
    """
    return scan_records(paths)[0]


def scan_records(paths: Iterable[str | os.PathLike]
                 ) -> tuple[list[str], list[tuple[str, str]]]:
    """`find_records`, plus the files of folders that were skipped and why.

    Returns:
      (record file paths, [(skipped path, reason)]).
    """
    out: list[str] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(p: str) -> None:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            out.append(p)

    for raw in paths:
        path = os.fspath(raw)
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                names = set(files)
                for f in sorted(files):
                    base, suffix = os.path.splitext(f)
                    if f.startswith('.'):
                        skipped.append((os.path.join(root, f), 'hidden files'))
                    elif suffix.lower() in RECORD_SUFFIXES:
                        add(os.path.join(root, f))
                    elif suffix.lower() in SIGNAL_SUFFIXES:
                        if base + '.hea' in names:
                            continue  # read through its header
                        skipped.append((os.path.join(root, f), f'{suffix} signal files without '
                                                              f'a .hea header'))
                    else:
                        skipped.append((os.path.join(root, f), f'{suffix or "suffix-less"} '
                                                              f'files (not an ECG format)'))
            continue
        stem, suffix = os.path.splitext(path)
        if suffix.lower() in SIGNAL_SUFFIXES and os.path.isfile(stem + '.hea'):
            add(stem + '.hea')
        elif not os.path.exists(path) and os.path.isfile(path + '.hea'):
            add(path + '.hea')  # WFDB-style record name without suffix
        else:
            add(path)
    return out, skipped


# --------------------------------------------------------------------- reading
def read_records(path: str | os.PathLike, *, fs: float | None = None,
                 leads: Sequence[str] | None = None, units: str = 'mV') -> list[Record]:
    """Reads every record in one file.

    Args:
      path: a record file (see the module docstring for formats).
      fs: sampling rate for formats that do not store it (NPY, NPZ, CSV
        without a time column).
      leads: lead names for NPY/NPZ columns (in column order).
      units: units of array formats: 'mV' (default), 'uV' or 'V'.

    Returns:
      a list of `Record` (one, except for 3-D arrays).

    Raises:
      RecordReadError: naming the file and what is wrong with it.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if not os.path.exists(path):
        raise RecordReadError(path, 'no such file')
    if suffix not in RECORD_SUFFIXES:
        if suffix == '.mat':
            raise RecordReadError(path, 'a .mat signal file needs its WFDB header (.hea) '
                                        'next to it')
        raise RecordReadError(path, f'unsupported file type {suffix or "(none)"!r}; '
                                    f'supported: {", ".join(RECORD_SUFFIXES + SIGNAL_SUFFIXES)}')
    scale = _unit_scale(units, path)
    try:
        if suffix == '.hea':
            return [read_wfdb(path)]
        if suffix == '.csv':
            return [_read_csv(path, fs, scale)]
        return _read_array_file(path, fs, leads, scale)
    except RecordReadError:
        raise
    except (OSError, ValueError, EOFError, KeyError, IndexError, TypeError) as e:
        # Anything the parsers did not foresee still names the file.
        raise RecordReadError(path, f'cannot read ({type(e).__name__}: {e})') from e


def read_record(path: str | os.PathLike, **kwargs) -> Record:
    """Reads a file holding exactly one record (see `read_records`)."""
    records = read_records(path, **kwargs)
    if len(records) != 1:
        raise RecordReadError(os.fspath(path), f'holds {len(records)} records, expected one')
    return records[0]


def _unit_scale(units: str, path: str) -> float:
    try:
        return _UNIT_TO_MV[units.strip().lower()]
    except KeyError:
        raise RecordReadError(path, f'unknown units {units!r}; use mV, uV or V') from None


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _check_signal(path: str, signal: np.ndarray, leads: Sequence[str], fs: float | None
                  ) -> None:
    if fs is None:
        raise RecordReadError(path, 'unknown sampling rate: pass fs (CLI: --fs)')
    if not np.isfinite(fs) or fs <= 0:
        raise RecordReadError(path, f'invalid sampling rate {fs}')
    if not FS_RANGE[0] <= fs <= FS_RANGE[1]:
        # A stored rate like 1 Hz is a broken header, not an ECG to upsample.
        raise RecordReadError(path, f'sampling rate {fs:g} Hz is not a plausible ECG rate '
                                    f'({FS_RANGE[0]:g}-{FS_RANGE[1]:g} Hz)')
    if signal.ndim != 2 or signal.shape[0] == 0:
        raise RecordReadError(path, f'no samples (signal shape {signal.shape})')
    if signal.shape[1] != len(leads):
        raise RecordReadError(path, f'{signal.shape[1]} signal columns but {len(leads)} '
                                    f'lead names {list(leads)}')
    if np.isinf(signal).any():
        raise RecordReadError(path, 'signal contains infinite values')
    if np.isnan(signal).all():
        raise RecordReadError(path, 'signal is all NaN')


# WFDB ------------------------------------------------------------------------
def read_wfdb(header_path: str) -> Record:
    """Reads a WFDB record (header + `.dat`/`.mat`) into physical units (mV).

    Parsing and reading are `jepa_ecg.ecg.wfdb_io`'s, shared with the TFDS
    builders; this adds the per-file error and the checks every reader here
    makes.

    Args:
      header_path: the `.hea` file.

    Returns:
      the `Record`; samples WFDB marks as missing (-32768) are NaN.

    Raises:
      RecordReadError: unreadable header, missing or truncated signal file.
    """
    try:
        h = wfdb_io.read_header(header_path)
        signal, names = wfdb_io.read_signal(h, header_path)
    except wfdb_io.WfdbFormatError as e:
        raise RecordReadError(e.path or header_path, e.reason) from None
    # Unnamed signals still need distinct names for the lead matching.
    names = [name or f'ch{i}' for i, name in enumerate(names)]
    _check_signal(header_path, signal, names, h.fs)
    return Record(_stem(header_path), header_path, signal.astype(np.float32, copy=False),
                  h.fs, names)


# CSV -------------------------------------------------------------------------
def _read_csv(path: str, fs: float | None, scale: float) -> Record:
    with open(path, newline='', encoding='utf-8-sig', errors='replace') as f:
        head = f.readline()
    if not head.strip():
        raise RecordReadError(path, 'empty CSV file')
    delimiter = max([',', ';', '\t'], key=head.count)
    names = next(csv.reader([head], delimiter=delimiter))
    names = [n.strip().strip('"') for n in names]
    if all(_is_number(n) for n in names if n):
        raise RecordReadError(path, 'the first row must name the leads (e.g. I,II,III,...)')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # "empty input file" is handled below
        try:
            data = np.genfromtxt(path, delimiter=delimiter, skip_header=1, dtype=np.float64,
                                 encoding='utf-8-sig', invalid_raise=True)
        except ValueError as e:
            raise RecordReadError(path, f'malformed CSV rows ({str(e).strip().splitlines()[-1]})'
                                  ) from None
    data = np.atleast_2d(data)
    if data.size == 0:
        raise RecordReadError(path, 'no data rows after the header')
    if data.shape[1] != len(names):
        raise RecordReadError(path, f'{data.shape[1]} columns but {len(names)} header names')
    keep = list(range(len(names)))
    if names[0] == '':  # a pandas index column
        keep.remove(0)
    time_col = next((i for i in keep if names[i].lower() in _TIME_COLUMNS
                     and canonical_lead_name(names[i]) is None), None)
    if time_col is not None:
        keep.remove(time_col)
        if fs is None:
            dt = np.diff(data[:, time_col])
            dt = dt[np.isfinite(dt)]
            if dt.size == 0 or np.median(dt) <= 0:
                raise RecordReadError(path, f'time column {names[time_col]!r} does not give '
                                            f'a sampling rate; pass fs (CLI: --fs)')
            median = float(np.median(dt))
            unit = 1e-3 if 'ms' in names[time_col].lower() else 1.0
            fs = 1.0 / (median * unit)
            fs = float(round(fs, 3))
    missing = _missing_cells(path, delimiter, names, data, keep)
    notes = []
    for j, col in enumerate(keep):
        count, total = int(missing[:, j].sum()), missing.shape[0]
        if count * 2 > total:
            notes.append(f'{path}: lead {names[col]} has {count} of {total} samples missing '
                         f'(more than half): read as a missing lead')
        elif count:
            notes.append(f'{path}: lead {names[col]} has {count} missing samples (of '
                         f'{total}), interpolated')
    for note in notes:
        warnings.warn(note, MissingSamplesWarning, stacklevel=3)
    # A mostly missing lead is a missing lead: preprocessing (and --fill-missing) decides.
    keep = [c for j, c in enumerate(keep) if missing[:, j].sum() * 2 <= missing.shape[0]]
    if not keep:
        raise RecordReadError(path, 'every lead is more than half missing')
    signal = (data[:, keep] * scale).astype(np.float32)
    leads = [names[i] for i in keep]
    _check_signal(path, signal, leads, fs)
    return Record(_stem(path), path, signal, float(fs), leads, notes=tuple(notes))


def _missing_cells(path: str, delimiter: str, names: Sequence[str], data: np.ndarray,
                   keep: Sequence[int]) -> np.ndarray:
    """(rows, len(keep)) bool: the signal cells that are missing-sample markers.

    The numeric parse turns text into NaN, like a missing sample; this tells
    them apart: a cell that is neither a number nor a marker (empty, nan, NA,
    n/a, -, ...) is an error naming its row and column.
    """
    nan = np.isnan(data[:, keep])
    if not nan.any():
        return nan
    with open(path, newline='', encoding='utf-8-sig', errors='replace') as f:
        reader = csv.reader(f, delimiter=delimiter)
        # The rows genfromtxt keeps: all but blank lines.
        rows = [(reader.line_num, r) for r in reader if ''.join(r).strip() or len(r) > 1][1:]
    for i, j in zip(*np.nonzero(nan)):
        line, row = rows[i]
        col = keep[j]
        cell = row[col].strip() if col < len(row) else ''
        if cell and cell.lower() not in _MISSING_CELLS and not _is_number(cell):
            hint = ('; decimal commas? write 0.5, not 0,5'
                    if re.fullmatch(r'[-+]?\d+,\d+', cell) else '')
            raise RecordReadError(path, f'row {line}, column {names[col]!r}: {cell!r} is not a '
                                        f'number (nor a missing-sample marker: empty, nan, NA, '
                                        f'n/a, -){hint}')
    return nan


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# NPY / NPZ -------------------------------------------------------------------
def _read_array_file(path: str, fs: float | None, leads: Sequence[str] | None,
                     scale: float) -> list[Record]:
    if path.lower().endswith('.npy'):
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as e:  # pylint: disable=broad-except
            raise RecordReadError(path, f'corrupt or truncated .npy ({e})') from None
    else:
        try:
            with np.load(path, allow_pickle=False) as z:
                contents = {k: z[k] for k in z.files}
        except Exception as e:  # pylint: disable=broad-except
            raise RecordReadError(path, f'corrupt or truncated .npz ({e})') from None
        key = next((k for k in _NPZ_SIGNAL_KEYS if k in contents), None)
        if key is None:
            arrays = [k for k, v in contents.items() if v.ndim in (2, 3)]
            if len(arrays) != 1:
                raise RecordReadError(path, f'cannot tell the signal among arrays '
                                            f'{sorted(contents)}; name it `signal`')
            key = arrays[0]
        arr = contents[key]
        if 'fs' in contents:
            fs = float(np.asarray(contents['fs']).reshape(-1)[0])
        if 'leads' in contents:
            leads = [str(n) for n in np.asarray(contents['leads']).reshape(-1)]
    if not np.issubdtype(arr.dtype, np.number):
        raise RecordReadError(path, f'array of dtype {arr.dtype} is not numeric')
    if arr.ndim not in (2, 3):
        raise RecordReadError(path, f'array of shape {arr.shape}: want (time, leads), '
                                    f'(leads, time) or (records, time, leads)')
    cols, shape = arr.shape[-1], arr.shape
    assumed = False
    if leads is None:
        if 12 not in arr.shape[-2:]:
            raise RecordReadError(path, f'array of shape {arr.shape}: pass the lead names '
                                        f'(CLI: --leads I,II,...)')
        warnings.warn(f'{path}: no lead names given; assuming the canonical order '
                      f'{",".join(LEADS)} (pass --leads to be sure)', AssumedLeadOrderWarning,
                      stacklevel=3)
        leads = list(LEADS)
        assumed = True
    leads = [str(n).strip() for n in leads]
    if cols != len(leads) and arr.shape[-2] == len(leads):
        arr = np.swapaxes(arr, -1, -2)  # stored leads-first
    if arr.ndim == 3 and arr.shape[1] < max(len(leads) + 1, _MIN_BATCH_RECORD_SAMPLES):
        # Records of a handful of samples are not a batch of ECGs but a
        # misread array, e.g. (time, leads, 1): one error for the file beats
        # thousands of tiny records failing one by one.
        raise RecordReadError(path, f'array of shape {shape}: read as {arr.shape[0]} records '
                                    f'of {arr.shape[1]} samples x {arr.shape[2]} leads, which '
                                    f'is not an ECG; save one record as (time, leads) or a '
                                    f'batch as (records, time, leads)')
    signals = arr[None] if arr.ndim == 2 else arr
    out = []
    for i, sig in enumerate(signals):
        sig = (np.asarray(sig, np.float32) * scale).astype(np.float32)
        name = _stem(path) if arr.ndim == 2 else f'{_stem(path)}[{i}]'
        _check_signal(path, sig, leads, fs)
        out.append(Record(name, path, sig, float(fs), list(leads), assumed_leads=assumed))
    return out


def parse_leads(text: str | None) -> list[str] | None:
    """'I,II,III,...' (comma or space separated) -> list of names, None for None/''."""
    if not text:
        return None
    return [t for t in re.split(r'[,\s]+', text.strip()) if t]
