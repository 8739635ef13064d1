"""Reading CODE-15% HDF5 blocks (the reader pool's worker; no TFDS here)."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from tfds_builders import signals
from tfds_builders import skips

FS = 400.0


def trim_zero_padding(tracing: np.ndarray) -> np.ndarray:
    """Drops leading and trailing samples where every lead is exactly 0.

    Args:
      tracing: (T, 12) array.

    Returns:
      The slice between the first and last sample with a non-zero lead
      (empty when all samples are zero).
    """
    active = np.flatnonzero(np.any(tracing != 0, axis=1))
    if active.size == 0:
        return tracing[:0]
    return tracing[active[0]:active[-1] + 1]


@dataclasses.dataclass(frozen=True)
class Hdf5Task:
    """Rows [start, stop) of one HDF5 file; `keep` masks rows to read."""
    path: str
    start: int
    stop: int
    keep: tuple[bool, ...]
    min_seconds: float | None


def read_hdf5_task(task: Hdf5Task) -> list[skips.ReadResult]:
    """Reads, trims and validates a block of tracings (pool worker).

    Args:
      task: the block.

    Returns:
      One `ReadResult` per kept row, keyed by exam_id.
    """
    import h5py  # pylint: disable=g-import-not-at-top
    results = []
    try:
        with h5py.File(task.path, 'r') as f:
            exam_ids = f['exam_id'][task.start:task.stop]
            tracings = f['tracings'][task.start:task.stop]
    except Exception as e:  # pylint: disable=broad-except
        return [skips.ReadResult(None, reason=skips.UNREADABLE_FILE,
                                 detail=f'{pathlib.Path(task.path).name} '
                                 f'rows {task.start}-{task.stop}: {e}')
                for kept in task.keep if kept]
    for exam_id, tracing, kept in zip(exam_ids, tracings, task.keep):
        if not kept:
            continue
        exam_id = int(exam_id)
        trimmed = trim_zero_padding(np.asarray(tracing, np.float32))
        if trimmed.shape[0] == 0:
            results.append(skips.ReadResult(
                exam_id, reason=skips.FLAT_LEAD, detail='all samples zero'))
            continue
        try:
            signal, _ = signals.clean_signal(trimmed, FS, task.min_seconds)
        except skips.SkipRecord as e:
            results.append(skips.ReadResult(exam_id, reason=e.reason,
                                            detail=e.detail))
            continue
        results.append(skips.ReadResult(exam_id, signal, FS))
    return results
