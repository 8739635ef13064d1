"""Writes tiny CinC-2021-format files into dummy_data/ (run once).

    python -m tfds_builders.cinc2021.make_dummy_data

Layout `training/<source>/g1/<record>.{hea,mat}`: WFDB headers whose signal
file is a MATLAB v4 `.mat` holding `val` (int16, 12 x N, 1000 units/mV), as
in the challenge data. Records:

  cpsc_2018/g1/A0001  10 s at 500 Hz, Age 74, Sex Male, two Dx codes
  cpsc_2018/g1/A0002  2 s only (skipped: too_short)
  cpsc_2018/g1/A0003  10 s with header quirks: record name `A0003.mat` on
                      line 1, `Age: NaN`, `Sex: F`, lower-case lead names,
                      runs of spaces
  st_petersburg_incart/g1/I0001  10 s at 257 Hz (INCART's rate)

The writer functions are reused by the tests.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np
import scipy.io

from tfds_builders.ptb_xl.make_dummy_data import ecg_like

DUMMY_DIR = pathlib.Path(__file__).resolve().parent / 'dummy_data'
CINC_LEAD_NAMES = ('I', 'II', 'III', 'aVR', 'aVL', 'aVF',
                   'V1', 'V2', 'V3', 'V4', 'V5', 'V6')


def write_record(folder: pathlib.Path, name: str, signal_mv: np.ndarray,
                 fs: float, *, age: str = '50', sex: str = 'Male',
                 dx: str = '426783006',
                 lead_names: Sequence[str] = CINC_LEAD_NAMES,
                 name_with_extension: bool = False,
                 extra_spaces: bool = False) -> pathlib.Path:
    """Writes `<folder>/<name>.hea` and `.mat` in the challenge's format.

    Args:
      folder: destination folder (created).
      name: record name, e.g. `A0001`.
      signal_mv: (T, C) mV; NaNs are stored as -32768 (WFDB's missing value).
      fs: sampling rate.
      age, sex, dx: header comment values, written as given.
      lead_names: C lead names for the header.
      name_with_extension: write `A0001.mat` as the record name (a quirk of
        some challenge headers).
      extra_spaces: separate header fields by runs of spaces.

    Returns:
      The header path.
    """
    folder.mkdir(parents=True, exist_ok=True)
    digital = np.round(np.nan_to_num(signal_mv, nan=np.inf) * 1000)
    digital = np.where(np.isfinite(digital), digital, -32768)
    val = np.clip(digital, -32768, 32767).astype(np.int16).T
    scipy.io.savemat(folder / f'{name}.mat', {'val': val}, format='4')
    sep = '   ' if extra_spaces else ' '
    record = f'{name}.mat' if name_with_extension else name
    lines = [sep.join([record, str(val.shape[0]), f'{fs:g}', str(val.shape[1]),
                       '05-Feb-2020', '11:39:16'])]
    for i, lead in enumerate(lead_names):
        checksum = int(val[i].astype(np.int64).sum() % 65536)
        if checksum > 32767:
            checksum -= 65536
        lines.append(sep.join([f'{name}.mat', '16+24', '1000/mV', '16', '0',
                               str(int(val[i, 0])), str(checksum), '0', lead]))
    lines += [f'#Age: {age}', f'#Sex: {sex}', f'#Dx: {dx}', '#Rx: Unknown',
              '#Hx: Unknown', '#Sx: Unknown']
    header = folder / f'{name}.hea'
    header.write_text('\n'.join(lines) + '\n')
    return header


def main(root: pathlib.Path = DUMMY_DIR) -> None:
    """Writes the dummy challenge folder (see the module docstring)."""
    cpsc = root / 'training' / 'cpsc_2018' / 'g1'
    write_record(cpsc, 'A0001', ecg_like(5000, 500, 1), 500, age='74',
                 sex='Male', dx='59118001,164889003')
    write_record(cpsc, 'A0002', ecg_like(1000, 500, 2), 500)
    write_record(cpsc, 'A0003', ecg_like(5000, 500, 3), 500, age='NaN',
                 sex='F', dx='426783006',
                 lead_names=[n.lower() for n in CINC_LEAD_NAMES],
                 name_with_extension=True, extra_spaces=True)
    incart = root / 'training' / 'st_petersburg_incart' / 'g1'
    write_record(incart, 'I0001', ecg_like(2570, 257, 4), 257, age='65',
                 sex='Female', dx='164884008')


if __name__ == '__main__':
    main()
