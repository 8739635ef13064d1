"""Writes tiny MIMIC-IV-ECG-format files into dummy_data/ (run once).

    python -m tfds_builders.mimic_iv_ecg.make_dummy_data

`record_list.csv` and WFDB format-16 records under
`files/pNNNN/pNNNNNNNN/sNNNNNNNN/NNNNNNNN.{hea,dat}` with MIMIC-IV-ECG's lead
order (I, II, III, aVR, aVF, aVL, V1-V6) and header comments. Records:

  study 40000001: a clean 10 s record
  study 40000002: 10 s with a burst of NaNs in lead II (interpolated)
  study 40000003: listed in record_list.csv, files absent (missing_file)

The writer functions are reused by the tests.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd

from tfds_builders.ptb_xl.make_dummy_data import ecg_like, write_wfdb

DUMMY_DIR = pathlib.Path(__file__).resolve().parent / 'dummy_data'
MIMIC_LEAD_NAMES = ('I', 'II', 'III', 'aVR', 'aVF', 'aVL',
                    'V1', 'V2', 'V3', 'V4', 'V5', 'V6')
# Canonical lead i is stored at column MIMIC_ORDER[i] of a MIMIC record.
MIMIC_ORDER = (0, 1, 2, 3, 5, 4, 6, 7, 8, 9, 10, 11)


def record_path(subject_id: int, study_id: int) -> str:
    """MIMIC-IV-ECG's relative record path (no extension)."""
    return (f'files/p{str(subject_id)[:4]}/p{subject_id}/s{study_id}/'
            f'{study_id}')


def write_record(root: pathlib.Path, subject_id: int, study_id: int,
                 canonical_signal: np.ndarray, fs: float = 500,
                 lead_names=MIMIC_LEAD_NAMES) -> dict:
    """Writes one record (given in canonical order) in MIMIC's lead order.

    Returns:
      Its record_list.csv row.
    """
    path = record_path(subject_id, study_id)
    stored = canonical_signal[:, list(MIMIC_ORDER)[:len(lead_names)]]
    write_wfdb(root / path, stored, fs, lead_names,
               comments=['<subject_id>: ' + str(subject_id)])
    return row(subject_id, study_id)


def row(subject_id: int, study_id: int) -> dict:
    return {'subject_id': subject_id, 'study_id': study_id,
            'file_name': str(study_id), 'ecg_time': '2180-07-23 08:44:00',
            'path': record_path(subject_id, study_id)}


def nan_burst_signal(seed: int) -> np.ndarray:
    """10 s at 500 Hz with NaNs in canonical lead II (samples 100-149)."""
    signal = ecg_like(5000, 500, seed)
    signal[100:150, 1] = np.nan
    return signal


def main(root: pathlib.Path = DUMMY_DIR) -> None:
    """Writes the dummy MIMIC-IV-ECG folder (see the module docstring)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = [
        write_record(root, 10000001, 40000001, ecg_like(5000, 500, 1)),
        write_record(root, 10000002, 40000002, nan_burst_signal(2)),
        row(10000003, 40000003),
    ]
    pd.DataFrame(rows).to_csv(root / 'record_list.csv', index=False)


if __name__ == '__main__':
    main()
