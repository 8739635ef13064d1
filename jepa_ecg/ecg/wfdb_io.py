"""WFDB records: one tolerant header parser and fast signal readers.

Both readers of WFDB files in this project use this module: `jepa_ecg.ecg.files`
(users' own files for the `jepa-ecg` CLI) and `tfds_builders.reading` (the
dataset builders). Each turns `WfdbFormatError` into its own error type
(`RecordReadError`, `SkipRecord`), so the parsing rules and quirks live in one
place and a header that one side reads the other reads the same way.

Formats read directly with numpy/scipy (several times faster than
`wfdb.rdrecord`): format 16 `.dat` (PTB-XL, MIMIC-IV-ECG), with a byte offset
if the header gives one, and MATLAB v4 `.mat` holding `val` as
signals x samples (PhysioNet/CinC 2021). Anything else (other formats, signals
spread over several files, several samples per frame, skew) goes through the
`wfdb` package.

Header quirks tolerated: a record name written with an extension
(`A0001.mat`), runs of spaces or tabs, fs written `500/...` or `500(...)`,
gains without baseline or units, a gain of 0 (WFDB: the default 200), the ADC
zero as baseline when none is given, lead names in any case or with inner
spaces. Multi-segment records are refused.

Checksums: a header may give each signal's checksum (the 16-bit sum of its
digital samples); `read_signal(..., checksums=True)` verifies them
(`verify_checksums`), which catches a signal file that was altered or
mixed up after its header was written.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

# Physical units a header may give, as a factor to mV. Unknown units are taken
# as mV (factor 1), the unit nearly every ECG header states.
UNIT_TO_MV = {'mv': 1.0, 'uv': 1e-3, 'µv': 1e-3, 'μv': 1e-3, 'v': 1e3, 'nv': 1e-6}

# WFDB format 16 writes this for samples that were not recorded.
_MISSING_SAMPLE = -32768

_GAIN_RE = re.compile(
    r'^(?P<gain>[-+0-9.eE]+)(?:\((?P<baseline>[-+0-9]+)\))?(?:/(?P<units>\S+))?$')
# format[xsamples per frame][:skew][+byte offset]
_FORMAT_RE = re.compile(
    r'^(?P<format>\d+)(?:x(?P<spf>\d+))?(?::(?P<skew>\d+))?(?:\+(?P<offset>\d+))?$')


class WfdbFormatError(ValueError):
    """A WFDB record cannot be read.

    Callers translate it into their own error; the subclasses say which kind
    of problem it is (the TFDS builders count them under different reasons).

    Attributes:
      reason: what is wrong, without the file name.
      path: the file the problem is reported against (None when parsing text
        that did not come from a file).
    """

    def __init__(self, reason: str, path: str | os.PathLike | None = None):
        super().__init__(f'{os.fspath(path)}: {reason}' if path is not None else reason)
        self.reason = reason
        self.path = None if path is None else os.fspath(path)


class WfdbHeaderError(WfdbFormatError):
    """The header cannot be understood."""


class WfdbMissingFileError(WfdbFormatError):
    """The header or its signal file does not exist."""


class WfdbUnreadableError(WfdbFormatError):
    """A file exists but is unreadable, corrupt or truncated."""


class WfdbChecksumError(WfdbUnreadableError):
    """A signal's samples do not add up to the checksum its header gives."""


@dataclasses.dataclass(frozen=True)
class WfdbHeader:
    """What the readers need from a single-segment WFDB header.

    Attributes:
      record_name: the record line's name, without an extension.
      fs: sampling rate (Hz).
      num_samples: samples per signal, None when the header does not say.
      file_names: signal file of each signal.
      formats: storage format of each signal ('16', '212', ...), without the
        samples-per-frame, skew and byte-offset suffixes.
      gains: ADC units per physical unit (0 in the file is stored as 200).
      baselines: ADC value of 0 physical units.
      units: physical units as written ('mV' when not given).
      lead_names: signal descriptions as written ('' when not given).
      comments: the `#` lines, stripped.
      byte_offsets: where each signal's samples start in its file.
      samples_per_frame: samples per frame of each signal (1 when not given).
      skews: skew of each signal in samples (0 when not given).
      checksums: each signal's checksum as written (None when not given).
    """
    record_name: str
    fs: float
    num_samples: int | None
    file_names: tuple[str, ...]
    formats: tuple[str, ...]
    gains: tuple[float, ...]
    baselines: tuple[float, ...]
    units: tuple[str, ...]
    lead_names: tuple[str, ...]
    comments: tuple[str, ...]
    byte_offsets: tuple[int, ...] = ()
    samples_per_frame: tuple[int, ...] = ()
    skews: tuple[int, ...] = ()
    checksums: tuple[int | None, ...] = ()


def parse_header(text: str) -> WfdbHeader:
    """Parses a single-segment WFDB header, tolerating the quirks above.

    Args:
      text: the header file's content.

    Returns:
      A `WfdbHeader`.

    Raises:
      WfdbHeaderError: the header cannot be understood (no path attached).
    """
    lines = [ln.strip() for ln in text.splitlines()]
    comments = tuple(ln for ln in lines if ln.startswith('#'))
    body = [ln for ln in lines if ln and not ln.startswith('#')]
    if not body:
        raise WfdbHeaderError('empty WFDB header')
    first = body[0].split()
    try:
        if '/' in first[0]:  # NAME/SEGMENTS: a multi-segment record
            raise ValueError('multi-segment records are not supported')
        # CinC 2021 headers name the record `A0001.mat`.
        record_name = os.path.splitext(first[0])[0]
        num_signals = int(first[1])
        # `500/1000` (counter frequency) or `500(0)` (base counter value).
        fs = float(re.split(r'[/(]', first[2])[0]) if len(first) > 2 else 250.0
        num_samples = int(first[3]) if len(first) > 3 else None
    except (IndexError, ValueError) as e:
        raise WfdbHeaderError(f'bad WFDB record line {body[0]!r} ({e})') from None
    if num_signals <= 0 or fs <= 0 or len(body) < num_signals + 1:
        raise WfdbHeaderError(f'bad WFDB header: {num_signals} signals, fs {fs}, '
                              f'{len(body) - 1} signal lines')
    columns: dict[str, list] = {k: [] for k in (
        'file_names', 'formats', 'byte_offsets', 'samples_per_frame', 'skews', 'gains',
        'baselines', 'units', 'lead_names', 'checksums')}
    for line in body[1:num_signals + 1]:
        parts = line.split()
        try:
            # An unfamiliar format field is left to the `wfdb` package to judge.
            match = _FORMAT_RE.match(parts[1])
            fmt = match.groupdict() if match else {'format': parts[1]}
            gain, baseline, unit = 200.0, None, 'mV'
            if len(parts) > 2:
                m = _GAIN_RE.match(parts[2])
                if m is None:
                    raise ValueError(f'gain {parts[2]!r}')
                gain = float(m['gain']) or 200.0  # WFDB: 0 means the default 200
                baseline = int(m['baseline']) if m['baseline'] else None
                unit = m['units'] or 'mV'
            # WFDB: without an explicit baseline, the ADC zero is the baseline.
            adc_zero = int(parts[4]) if len(parts) > 4 else 0
        except (IndexError, ValueError) as e:
            raise WfdbHeaderError(f'bad WFDB signal line {line!r} ({e})') from None
        columns['file_names'].append(parts[0])
        columns['formats'].append(fmt['format'])
        columns['byte_offsets'].append(int(fmt.get('offset') or 0))
        columns['samples_per_frame'].append(int(fmt.get('spf') or 1))
        columns['skews'].append(int(fmt.get('skew') or 0))
        columns['gains'].append(gain)
        columns['baselines'].append(float(adc_zero if baseline is None else baseline))
        columns['units'].append(unit)
        columns['lead_names'].append(' '.join(parts[8:]) if len(parts) > 8 else '')
        columns['checksums'].append(_optional_int(parts[6]) if len(parts) > 6 else None)
    return WfdbHeader(record_name=record_name, fs=fs, num_samples=num_samples,
                      comments=comments, **{k: tuple(v) for k, v in columns.items()})


def _optional_int(text: str) -> int | None:
    """An integer header field, None when it is not one (left unchecked)."""
    try:
        return int(text)
    except ValueError:
        return None


def read_header(header_path: str | os.PathLike) -> WfdbHeader:
    """Reads and parses a `.hea` file.

    Raises:
      WfdbMissingFileError: no such file.
      WfdbUnreadableError: the file cannot be read.
      WfdbHeaderError: the header cannot be understood (path attached).
    """
    header_path = os.fspath(header_path)
    try:
        with open(header_path, encoding='utf-8', errors='replace') as f:
            text = f.read()
    except FileNotFoundError:
        raise WfdbMissingFileError('no such file', header_path) from None
    except OSError as e:
        raise WfdbUnreadableError(f'cannot read ({type(e).__name__}: {e})', header_path
                                  ) from None
    try:
        return parse_header(text)
    except WfdbHeaderError as e:
        raise WfdbHeaderError(e.reason, header_path) from None


def read_signal(header: WfdbHeader, header_path: str | os.PathLike, *,
                checksums: bool = False) -> tuple[np.ndarray, list[str]]:
    """Reads a record's samples into physical units (mV), in storage order.

    Args:
      header: the parsed header (`read_header(header_path)`).
      header_path: the `.hea` file; signal files are looked up next to it.
      checksums: verify the checksums the header gives (`verify_checksums`).

    Returns:
      (signal, names): float32 (num_samples, signals) in mV, with NaN where
      format 16 marks a sample as missing (-32768), and the lead names
      ('' where the header gives none; the `wfdb` package's names when it
      read the record).

    Raises:
      WfdbMissingFileError: the signal file does not exist.
      WfdbUnreadableError: corrupt, truncated or otherwise unreadable.
      WfdbChecksumError: with `checksums`, a signal does not match its
        header's checksum.
    """
    header_path = os.fspath(header_path)
    if _fast_path(header):
        digital = _read_digital(header, header_path)
        # A truncated file is reported as truncated below, not as a mismatch.
        if checksums and digital.shape[0] >= (header.num_samples or 0):
            verify_checksums(header, digital[:header.num_samples or None],
                             header_path)
        gains = np.asarray(header.gains, np.float32)
        baselines = np.asarray(header.baselines, np.float32)
        scale = np.asarray([UNIT_TO_MV.get(u.lower(), 1.0) for u in header.units], np.float32)
        signal = (digital.astype(np.float32) - baselines) / gains * scale
        if digital.dtype == np.int16 or set(header.formats) == {'16'}:
            signal[digital == _MISSING_SAMPLE] = np.nan
        names = list(header.lead_names)
    else:
        signal, names = _read_with_wfdb(header, header_path, checksums)
    if header.num_samples and signal.shape[0] < header.num_samples:
        raise WfdbUnreadableError(f'truncated: {signal.shape[0]} of {header.num_samples} '
                                  f'samples in the signal file', header_path)
    if header.num_samples:
        signal = signal[:header.num_samples]
    return signal, names


def _fast_path(header: WfdbHeader) -> bool:
    """Whether numpy/scipy can read the record without the `wfdb` package."""
    if len(set(header.file_names)) != 1:
        return False
    if header.file_names[0].lower().endswith('.mat'):
        # `val` comes out of the MATLAB file whole, whatever the sample format.
        return True
    # Several samples per frame or skew need wfdb's de-interleaving.
    return (set(header.formats) == {'16'} and set(header.samples_per_frame) == {1}
            and set(header.skews) == {0})


def _read_digital(header: WfdbHeader, header_path: str) -> np.ndarray:
    """The raw (T, C) samples of a single format-16 `.dat` or MATLAB v4 `.mat`."""
    path = os.path.join(os.path.dirname(header_path), header.file_names[0])
    if not os.path.isfile(path):
        raise WfdbMissingFileError(f'signal file {os.path.basename(path)} not found',
                                   header_path)
    n = len(header.file_names)
    if path.lower().endswith('.mat'):
        import scipy.io  # pylint: disable=g-import-not-at-top
        try:
            val = scipy.io.loadmat(path)['val']
        except Exception as e:  # pylint: disable=broad-except
            raise WfdbUnreadableError(f'corrupt or truncated MATLAB file ({e})', path
                                      ) from None
        val = np.asarray(val)
        if val.ndim != 2 or val.shape[0] != n:
            raise WfdbUnreadableError(f'`val` has shape {val.shape}, header says {n} '
                                      f'signals', path)
        return val.T
    data = np.fromfile(path, dtype='<i2', offset=header.byte_offsets[0])
    if data.size % n:
        raise WfdbUnreadableError(f'truncated or corrupt: {data.size} samples do not '
                                  f'divide into {n} signals', path)
    if header.num_samples and data.size // n < header.num_samples:
        raise WfdbUnreadableError(f'truncated: {data.size // n} of {header.num_samples} '
                                  f'samples', path)
    return data.reshape(-1, n)


def verify_checksums(header: WfdbHeader, digital: np.ndarray,
                     header_path: str | os.PathLike) -> None:
    """Checks each signal's samples against the checksum its header gives.

    The WFDB checksum of a signal is the sum of its digital samples (missing
    values included) as a 16-bit integer; headers write it signed or
    unsigned, so the two are compared modulo 2**16. Signals without a
    checksum are not checked.

    Args:
      header: the parsed header.
      digital: (num_samples, signals) digital samples, in storage order.
      header_path: the `.hea` file, for the error.

    Raises:
      WfdbChecksumError: naming the first signal that does not match.
    """
    digital = np.asarray(digital)
    if digital.dtype.kind == 'f':
        # MATLAB files may hold the samples as doubles; only whole numbers
        # are digital samples a checksum was computed from.
        if not (np.isfinite(digital).all() and (digital == np.round(digital)).all()):
            return
    sums = digital.astype(np.int64).sum(axis=0) % 65536
    for i, expected in enumerate(header.checksums):
        if expected is not None and i < sums.size and sums[i] != expected % 65536:
            name = header.lead_names[i] or f'signal {i}'
            raise WfdbChecksumError(
                f'checksum mismatch in {name}: samples sum to {int(sums[i])} '
                f'(mod 65536), header says {expected}', header_path)


def _read_with_wfdb(header: WfdbHeader, header_path: str,
                    checksums: bool) -> tuple[np.ndarray, list[str]]:
    """Falls back to the `wfdb` package for what the fast path lacks."""
    import wfdb  # pylint: disable=g-import-not-at-top
    # Frames of several samples are averaged in `d_signal`, so their sums
    # are not the header's: those records are read unchecked.
    check = checksums and set(header.samples_per_frame) <= {1}
    try:
        record = wfdb.rdrecord(os.path.splitext(header_path)[0],
                               physical=not check, return_res=32)
        if check:
            verify_checksums(header, record.d_signal, header_path)
            record.dac(inplace=True, return_res=32)
    except WfdbChecksumError:
        raise
    except Exception as e:  # pylint: disable=broad-except
        raise WfdbUnreadableError(f'wfdb cannot read it ({type(e).__name__}: {e})',
                                  header_path) from None
    scale = np.asarray([UNIT_TO_MV.get((u or 'mv').lower(), 1.0) for u in record.units],
                       np.float32)
    return record.p_signal.astype(np.float32) * scale, list(record.sig_name)
