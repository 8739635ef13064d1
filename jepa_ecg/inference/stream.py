"""Running a model over many ECG records: windows, fixed-size batches, pooling, files.

One path serves `Encoder.embed`, `Classifier.predict` and the `jepa-ecg`
commands:

    record (raw) -> preprocess -> cut_windows -> WindowBatcher -> forward
                 -> per-record window outputs -> pool (mean over windows)

The windows and batches are `inference.windows` (re-exported here).
`stream_files` adds reading a user's files in a thread pool ahead of the
model, per-file errors that do not stop the run, each file's pooled results
handed over as soon as it is done, and a `Progress` bar that messages go
through.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import sys
import time
import warnings
from typing import Callable, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from jepa_ecg.data.preprocess import MissingLeadsWarning
from jepa_ecg.ecg import files as files_lib
from jepa_ecg.ecg.leads import missing_leads
# The windowing half of the path, importable from here as before.
from jepa_ecg.ecg.transforms import window_starts  # noqa: F401
from jepa_ecg.inference.windows import (Forward, LazyWindows, WindowBatcher,  # noqa: F401
                                        cut_windows, lazy_windows, pad_batch, pool,
                                        seconds_to_samples)


# ------------------------------------------------------------------ files
class Progress:
    """A progress bar on stderr that owns message output while it is shown.

    Messages written through `write` go above the bar instead of tearing it;
    with the bar disabled they are plain stderr lines.
    """

    def __init__(self, total: int, desc: str, *, enabled: bool = True, prefix: str = ''):
        self._prefix = prefix
        self._bar = tqdm(total=total, unit='file', desc=desc, disable=not enabled,
                         file=sys.stderr, dynamic_ncols=True)
        self._enabled = enabled
        self._start = time.time()

    def write(self, msg: str) -> None:
        """Prints one message line (prefixed) on stderr."""
        if self._enabled:
            self._bar.write(self._prefix + msg, file=sys.stderr)
        else:
            print(self._prefix + msg, file=sys.stderr, flush=True)

    def advance(self, records: int, failed: int) -> None:
        """One more file done; shows the record rate and failures so far."""
        self._bar.update(1)
        rate = records / max(time.time() - self._start, 1e-9)
        self._bar.set_postfix_str(f'{rate:.1f} rec/s, {failed} failed', refresh=False)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> 'Progress':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclasses.dataclass
class Prepared:
    """One input record after reading, preprocessing and windowing.

    Attributes:
      name: record name.
      path: the file it came from.
      windows: (W, T, leads) windows (dropped once queued), or None.
      valid: patches holding real signal per window.
      missing: model leads the record lacks (zero-filled).
      error: why it failed (names the file), or None.
      assumed_leads: the file did not name its leads.
      notes: warnings about the file's contents (e.g. missing CSV cells).
    """
    name: str
    path: str
    windows: np.ndarray | LazyWindows | None = None
    valid: int = 0
    missing: tuple[str, ...] = ()
    error: str | None = None
    assumed_leads: bool = False
    notes: tuple[str, ...] = ()


@dataclasses.dataclass
class StreamResult:
    """What `stream_files` did.

    Attributes:
      records: the records that went through, in input order (without windows).
      failed: (path, reason) of what could not be processed.
      seconds: wall time.
      num_windows: windows run through the model.
    """
    records: list[Prepared]
    failed: list[tuple[str, str]]
    seconds: float
    num_windows: int = 0


# (path, its records with (mean output over windows, number of windows), its errors),
# called in input order once every record of the file has gone through the model.
FileDone = Callable[[str, list[tuple[Prepared, np.ndarray, int]], list[str]], None]


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """How to read array files (see `jepa_ecg.ecg.files.read_records`)."""
    fs: float | None = None
    leads: Sequence[str] | None = None
    units: str = 'mV'


# (raw signal, fs, lead names, name) -> (windows, valid patches)
Prepare = Callable[[np.ndarray, float, Sequence[str], str], tuple[np.ndarray, int]]


def prepare_file(path: str, read: ReadOptions, prepare: Prepare,
                 model_leads: Sequence[str]) -> list[Prepared]:
    """Reads one file and prepares its records; failures become `error`s.

    Args:
      path: a record file.
      read: how to read array files.
      prepare: preprocessing and windowing of one raw record.
      model_leads: the model's leads (to report missing ones).

    Returns:
      one `Prepared` per record (one with an error when the file is unreadable).
    """
    try:
        records = files_lib.read_records(path, fs=read.fs, leads=read.leads, units=read.units)
    except files_lib.RecordReadError as e:
        return [Prepared(os.path.basename(path), path, error=str(e))]
    except Exception as e:  # pylint: disable=broad-except
        # One bad file must not end a run over thousands.
        return [Prepared(os.path.basename(path), path, error=f'{path}: {type(e).__name__}: {e}')]
    out = []
    for rec in records:
        item = Prepared(rec.name, path, assumed_leads=rec.assumed_leads,
                        notes=tuple(getattr(rec, 'notes', ())))
        try:
            item.missing = tuple(missing_leads(rec.leads, model_leads))
            item.windows, item.valid = prepare(rec.signal, rec.fs, rec.leads, path)
        except ValueError as e:  # missing leads, too short, all-NaN leads, ...
            item.error = str(e) if path in str(e) else f'{path}: {e}'
        except Exception as e:  # pylint: disable=broad-except
            item.error = f'{path}: {type(e).__name__}: {e}'
        out.append(item)
    return out


def _prepared_in_order(paths: Sequence[str], job: Callable[[str], list[Prepared]],
                       workers: int) -> Iterable[list[Prepared]]:
    """`job(path)` for every path, in order, computed by `workers` threads ahead.

    Read-ahead is bounded so memory stays flat on big folders; numpy/scipy
    release the GIL, so threads overlap reading with the model. When the
    consumer stops early (an interrupt), files not yet started are dropped.
    """
    pool_ = concurrent.futures.ThreadPoolExecutor(workers)
    try:
        ahead = 4 * workers
        futures = [pool_.submit(job, p) for p in paths[:ahead]]
        next_path = len(futures)
        for i in range(len(paths)):
            result = futures[i].result()
            futures[i] = None  # release the windows once consumed
            if next_path < len(paths):
                futures.append(pool_.submit(job, paths[next_path]))
                next_path += 1
            yield result
    finally:
        pool_.shutdown(wait=True, cancel_futures=True)


def _warn(item: Prepared, progress: Progress, first_assumed: bool) -> None:
    """Reports what was assumed or filled in to make a record fit the model."""
    if first_assumed:
        progress.write(f'warning: {item.path} (and maybe others) does not name its '
                       f'leads: assuming I,II,III,aVR,aVL,aVF,V1-V6 (pass --leads)')
    if item.missing:
        progress.write(f'warning: {item.path}: missing leads {list(item.missing)} '
                       f'filled with zeros')


def stream_files(paths: Sequence[str], *, read: ReadOptions, prepare: Prepare,
                 model_leads: Sequence[str], forward: Forward, batch_size: int,
                 workers: int, progress: Progress, on_file: FileDone) -> StreamResult:
    """Runs `forward` over every record of `paths`, batching windows across records.

    Each file's results go to `on_file` as soon as its last window has run,
    so a caller can save them before the run ends.

    Args:
      paths: record files (`jepa_ecg.ecg.files.find_records`).
      read: how to read array files.
      prepare: (raw signal, fs, leads, name) -> (windows, valid patches).
      model_leads: the model's leads (to report missing ones).
      forward: see `WindowBatcher`.
      batch_size: windows per forward pass.
      workers: threads reading and preprocessing files.
      progress: where the bar advances and messages go.
      on_file: see `FileDone`.

    Returns:
      a `StreamResult`; records that failed are reported on `progress` and
      listed in `failed`, the others are processed.
    """
    start = time.time()
    records: list[Prepared] = []
    failed: list[tuple[str, str]] = []
    done: dict[int, tuple[np.ndarray, int]] = {}
    # Files whose records are still in the batcher: (path, [(record, index)], errors).
    open_files: collections.deque = collections.deque()
    assumed = 0

    windows_run = [0]

    def record_done(index: int, mean: np.ndarray, count: int) -> None:
        done[index] = (mean, count)
        windows_run[0] += count

    def hand_over() -> None:
        while open_files and all(i in done for _, i in open_files[0][1]):
            path, items, errors = open_files.popleft()
            on_file(path, [(item, *done.pop(i)) for item, i in items], errors)

    batcher = WindowBatcher(forward, batch_size, on_done=record_done)

    def job(path: str) -> list[Prepared]:
        return prepare_file(path, read, prepare, model_leads)

    # Reported here once per record / run; warning filters are process-wide,
    # so they are set once around the threads.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', MissingLeadsWarning)
        warnings.simplefilter('ignore', files_lib.AssumedLeadOrderWarning)
        warnings.simplefilter('ignore', files_lib.MissingSamplesWarning)
        prepared = _prepared_in_order(list(paths), job, max(1, int(workers)))
        try:
            for path, result in zip(paths, prepared):
                items, errors = [], []
                for item in result:
                    for note in item.notes:  # also when it failed: they may say why
                        progress.write(f'warning: {note}')
                    if item.error is not None:
                        failed.append((item.path, item.error))
                        errors.append(item.error)
                        progress.write(f'error: {item.error}')
                        continue
                    _warn(item, progress, first_assumed=item.assumed_leads and not assumed)
                    assumed += item.assumed_leads
                    windows, item.windows = item.windows, None
                    items.append((item, batcher.add(windows, item.valid)))
                    records.append(item)
                open_files.append((path, items, errors))
                hand_over()
                progress.advance(len(records), len(failed))
        finally:
            prepared.close()  # on an interrupt: drop the files not yet started
        batcher.finish()
        hand_over()
    return StreamResult(records, failed, time.time() - start, windows_run[0])
