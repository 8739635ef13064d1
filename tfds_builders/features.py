"""The features every source's examples have, and the header values in them.

`core_features` is the contract between the builders and every reader of a
built dataset (`signal`, `fs`, `record_id`, `age`, `sex`): every builder,
the offline synthetic one included, declares these exact features, so the
offline default exercises the same decoding as real data. `core_example`
fills them, normalising the many spellings of age and sex.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import tensorflow_datasets as tfds

from jepa_ecg.ecg import leads as leads_lib

# Stored as raw bytes: TFDS would otherwise copy the samples one by one into
# a proto float list, which made up most of the build time.
SIGNAL_ENCODING = tfds.features.Encoding.BYTES

# Header comment values that mean "not recorded".
_UNKNOWN_TOKENS = {'', 'nan', 'unknown', 'none', 'n/a', 'na', '?', '-'}


def core_features(signal_encoding: tfds.features.Encoding = SIGNAL_ENCODING
                  ) -> dict[str, Any]:
    """The features every pre-training source has (the pipeline's contract).

    Args:
      signal_encoding: how `signal` is stored; only tests of the readers'
        other decoding paths pass anything but the default.

    Returns:
      dict name -> TFDS feature: `signal` float32 (T, 12) mV in
      `jepa_ecg.ecg.leads.LEADS` order at the native rate, `fs` float32 Hz,
      `record_id` string, `age` float32 years (-1 unknown), `sex` int32
      (0 male, 1 female, -1 unknown).
    """
    return {
        'signal': tfds.features.Tensor(
            shape=(None, leads_lib.NUM_LEADS), dtype=np.float32,
            encoding=signal_encoding,
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
