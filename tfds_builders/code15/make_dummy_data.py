"""Writes tiny CODE-15%-format files into dummy_data/ (run once).

    python -m tfds_builders.code15.make_dummy_data

`exams.csv` with CODE-15%'s columns and `exams_part0.hdf5` with datasets
`tracings` (N, 4096, 12) float32 mV and `exam_id` (N,); recordings are
centred in 4,096 samples with zero padding, and the file ends with an
all-zero row of exam_id 0, as the real part files do. Exams:

  1001: 10 s (4,000 samples), labels RBBB and AF
  1002: 7 s (2,800 samples): skipped as too_short
  1003: in exams.csv and in exams_part0, but not in its HDF5 (not_in_hdf5)
  1004: in exams.csv, its part file exams_part1.hdf5 is absent (missing_file)
  1005: 10 s, normal ECG, female, age unknown

The HDF5 datasets are gzip-compressed to keep the files small (h5py reads
them like the real, uncompressed ones) and written without timestamps, so
re-running this script reproduces them byte for byte. Writers are reused by
the tests.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

import h5py
import numpy as np
import pandas as pd

from tfds_builders.ptb_xl.make_dummy_data import ecg_like

DUMMY_DIR = pathlib.Path(__file__).resolve().parent / 'dummy_data'
NUM_SAMPLES = 4096
FS = 400
CSV_COLUMNS = ('exam_id', 'age', 'is_male', 'nn_predicted_age', '1dAVb',
               'RBBB', 'LBBB', 'SB', 'ST', 'AF', 'patient_id', 'death',
               'timey', 'normal_ecg', 'trace_file')


def padded(signal: np.ndarray) -> np.ndarray:
    """Centres a (T, 12) recording in 4,096 zero-padded samples."""
    out = np.zeros((NUM_SAMPLES, 12), np.float32)
    start = (NUM_SAMPLES - signal.shape[0]) // 2
    out[start:start + signal.shape[0]] = signal
    return out


def write_part(path: pathlib.Path, exam_ids: Sequence[int],
               tracings: Sequence[np.ndarray]) -> None:
    """Writes one exams_partN.hdf5 (adds the trailing exam_id 0 row)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.stack(list(tracings) + [np.zeros((NUM_SAMPLES, 12), np.float32)])
    with h5py.File(path, 'w') as f:
        f.create_dataset('tracings', data=data.astype(np.float32),
                         compression='gzip', shuffle=True, track_times=False,
                         chunks=(1, NUM_SAMPLES, 12))
        f.create_dataset('exam_id', track_times=False,
                         data=np.asarray(list(exam_ids) + [0], dtype=np.int64))


def csv_row(exam_id: int, trace_file: str, *, age=60, is_male=True,
            labels: Sequence[str] = (), normal_ecg=False) -> dict:
    """One exams.csv row."""
    row = {'exam_id': exam_id, 'age': age, 'is_male': is_male,
           'nn_predicted_age': 61.5, 'patient_id': exam_id + 50000,
           'death': False, 'timey': 3.2, 'normal_ecg': normal_ecg,
           'trace_file': trace_file}
    row.update({name: name in labels for name in
                ('1dAVb', 'RBBB', 'LBBB', 'SB', 'ST', 'AF')})
    return row


def write_csv(root: pathlib.Path, rows: Sequence[dict]) -> None:
    pd.DataFrame(list(rows), columns=list(CSV_COLUMNS)).to_csv(
        root / 'exams.csv', index=False)


def main(root: pathlib.Path = DUMMY_DIR) -> None:
    """Writes the dummy CODE-15% folder (see the module docstring)."""
    root.mkdir(parents=True, exist_ok=True)
    write_csv(root, [
        csv_row(1001, 'exams_part0.hdf5', labels=('RBBB', 'AF')),
        csv_row(1002, 'exams_part0.hdf5'),
        csv_row(1003, 'exams_part0.hdf5'),
        csv_row(1004, 'exams_part1.hdf5'),
        csv_row(1005, 'exams_part0.hdf5', age=None, is_male=False,
                normal_ecg=True),
    ])
    write_part(root / 'exams_part0.hdf5', [1001, 1002, 1005], [
        padded(ecg_like(4000, FS, 1)), padded(ecg_like(2800, FS, 2)),
        padded(ecg_like(4000, FS, 5))])


if __name__ == '__main__':
    main()
