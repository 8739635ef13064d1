"""Running a model over many ECG records: windows, fixed-size batches, pooling, files.

One path serves `Encoder.embed`, `Classifier.predict` and the `jepa-ecg`
commands:

    record (raw) -> preprocess -> cut_windows -> WindowBatcher -> forward
                 -> per-record window outputs -> pool (mean over windows)

`WindowBatcher` packs the windows of consecutive records into full batches
so the jitted forward sees one batch shape however long each record is
(plus a few power-of-two shapes for the last, partial batch).
`stream_files` adds reading a user's files in a thread pool ahead of the
model, per-file errors that do not stop the run, and a `Progress` bar that
messages go through.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import sys
import time
import warnings
from typing import Callable, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from jepa_ecg.data.preprocess import MissingLeadsWarning, RecordTooShortError
from jepa_ecg.ecg import files as files_lib
from jepa_ecg.ecg import transforms
from jepa_ecg.ecg.leads import missing_leads

# (windows (B, time, leads), valid patches (B,)) -> (B, ...) outputs.
Forward = Callable[[np.ndarray, np.ndarray], np.ndarray]


def pad_batch(x: np.ndarray, batch_size: int) -> np.ndarray:
    """Zero-pads the batch axis to a power of two (at most `batch_size`).

    The jitted forward then sees at most log2(batch_size) + 1 batch shapes,
    so small calls stay cheap and big ones compile once.

    Args:
      x: (k, ...) array, k <= batch_size.
      batch_size: the full batch size.

    Returns:
      (k', ...) array, k' >= k, the first k rows being `x`.
    """
    k = x.shape[0]
    target = batch_size if k >= batch_size else min(batch_size, 1 << max(0, (k - 1).bit_length()))
    if target == k:
        return x
    return np.concatenate([x, np.zeros((target - k,) + x.shape[1:], x.dtype)])


def seconds_to_samples(fs: float, seconds: float | None) -> int | None:
    """Samples in `seconds` at `fs`, at least one (None stays None)."""
    if seconds is None:
        return None
    return max(1, transforms.samples(fs, seconds))


def cut_windows(x: np.ndarray, *, length: int, stride: int, patch_size: int, fs: float,
                pad: bool = False, name: str | None = None) -> tuple[np.ndarray, int]:
    """Cuts a preprocessed record into windows of `length` samples every `stride`.

    A record whose length is not a whole number of strides past the first
    window gets one more window aligned to its end, so its tail is seen too.

    Args:
      x: (T, leads) preprocessed signal.
      length: window length in samples (a multiple of `patch_size`).
      stride: hop between window starts in samples.
      patch_size: samples per patch.
      fs: the signal's rate, for messages.
      pad: zero-pad a record shorter than one window instead of raising.
      name: record name for messages.

    Returns:
      ((num_windows, length, leads) float32, valid_patches): the number of
      patches holding real signal in each window (fewer than length //
      patch_size only for a padded short record).

    Raises:
      RecordTooShortError: a record shorter than one window, without `pad`.
    """
    t = x.shape[0]
    if t < length:
        if not pad:
            raise RecordTooShortError(
                f'{name or "record"}: {t / fs:.2f} s at {fs:g} Hz is shorter than the '
                f'{length / fs:.2f} s window; pass pad=True (CLI: --pad) to zero-pad it, '
                f'or use a shorter window')
        out = np.zeros((1, length, x.shape[1]), np.float32)
        out[0, :t] = x
        return out, min(max(1, -(-t // patch_size)), length // patch_size)
    wins = transforms.sliding_windows(x, length, stride)
    if (t - length) % stride:
        wins = np.concatenate([wins, x[None, t - length:]], axis=0)
    return np.ascontiguousarray(wins, np.float32), length // patch_size


class WindowBatcher:
    """Packs windows of many records into fixed-size forward passes.

    Records are added in order; whenever `batch_size` windows are waiting,
    one forward pass runs on exactly that many (a record's windows may span
    two batches). `finish` runs the rest and returns each record's outputs.
    """

    def __init__(self, forward: Forward, batch_size: int):
        """Args:
          forward: (windows (B, T, L), valid patches (B,)) -> (B, ...) outputs,
            B a power of two <= batch_size.
          batch_size: windows per forward pass.
        """
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        self._forward = forward
        self._batch_size = int(batch_size)
        self._pending: list[tuple[int, np.ndarray, int]] = []  # (record, windows, valid)
        self._pending_windows = 0
        self._outputs: list[list[np.ndarray]] = []

    def add(self, windows: np.ndarray, valid_patches: int) -> int:
        """Queues one record's windows and runs the batches that are full.

        Args:
          windows: (W, T, L), W >= 1.
          valid_patches: patches holding real signal per window (passed to
            `forward`; 0 for a forward that ignores it).

        Returns:
          the record's index in `finish`'s list.
        """
        if not len(windows):
            raise ValueError('a record without windows')
        index = len(self._outputs)
        self._outputs.append([])
        self._pending.append((index, windows, int(valid_patches)))
        self._pending_windows += len(windows)
        self._run(final=False)
        return index

    def finish(self) -> list[np.ndarray]:
        """Runs what is left; returns per-record (W_i, ...) outputs in add order."""
        self._run(final=True)
        out = [np.concatenate(parts) for parts in self._outputs]
        self._outputs = []
        return out

    def _run(self, final: bool) -> None:
        bs = self._batch_size
        while self._pending_windows >= bs or (final and self._pending_windows):
            take, rest, n = [], [], 0
            for index, wins, valid in self._pending:
                k = min(len(wins), bs - n)
                if k > 0:
                    take.append((index, wins[:k], valid))
                    n += k
                if k < len(wins):
                    rest.append((index, wins[k:], valid))
            batch = np.concatenate([w for _, w, _ in take])
            valid = np.concatenate([np.full(len(w), v, np.int32) for _, w, v in take])
            x = pad_batch(batch, bs)
            # Padding rows count one valid patch so a masked mean never divides by 0.
            v = np.concatenate([valid, np.ones(x.shape[0] - n, np.int32)])
            out = np.asarray(self._forward(x, v))[:n]
            pos = 0
            for index, wins, _ in take:
                self._outputs[index].append(out[pos:pos + len(wins)])
                pos += len(wins)
            self._pending = rest
            self._pending_windows -= n


def pool(outputs: Sequence[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Per-record mean over windows.

    Args:
      outputs: per record, (W_i, *shape) window outputs (W_i >= 1).
      shape: the shape of one window's output (for an empty result).

    Returns:
      (N, *shape) float32.
    """
    if not outputs:
        return np.zeros((0,) + tuple(shape), np.float32)
    return np.stack([np.asarray(o, np.float64).mean(0) for o in outputs]).astype(np.float32)


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
    """
    name: str
    path: str
    windows: np.ndarray | None = None
    valid: int = 0
    missing: tuple[str, ...] = ()
    error: str | None = None
    assumed_leads: bool = False


@dataclasses.dataclass
class StreamResult:
    """What `stream_files` did.

    Attributes:
      records: the records that went through, in input order.
      outputs: per record, its (windows, ...) forward outputs.
      failed: (path, reason) of what could not be processed.
      seconds: wall time.
    """
    records: list[Prepared]
    outputs: list[np.ndarray]
    failed: list[tuple[str, str]]
    seconds: float

    @property
    def num_windows(self) -> int:
        return sum(len(o) for o in self.outputs)


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
        item = Prepared(rec.name, path, assumed_leads=rec.assumed_leads)
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
    release the GIL, so threads overlap reading with the model.
    """
    with concurrent.futures.ThreadPoolExecutor(workers) as pool_:
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


def stream_files(paths: Sequence[str], *, read: ReadOptions, prepare: Prepare,
                 model_leads: Sequence[str], forward: Forward, batch_size: int,
                 workers: int, progress: Progress) -> StreamResult:
    """Runs `forward` over every record of `paths`, batching windows across records.

    Args:
      paths: record files (`jepa_ecg.ecg.files.find_records`).
      read: how to read array files.
      prepare: (raw signal, fs, leads, name) -> (windows, valid patches).
      model_leads: the model's leads (to report missing ones).
      forward: see `WindowBatcher`.
      batch_size: windows per forward pass.
      workers: threads reading and preprocessing files.
      progress: where the bar advances and messages go.

    Returns:
      a `StreamResult`; records that failed are reported on `progress` and
      listed in `failed`, the others are processed.
    """
    start = time.time()
    batcher = WindowBatcher(forward, batch_size)
    records: list[Prepared] = []
    failed: list[tuple[str, str]] = []
    assumed = 0

    def job(path: str) -> list[Prepared]:
        return prepare_file(path, read, prepare, model_leads)

    # Reported here once per record / run; warning filters are process-wide,
    # so they are set once around the threads.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', MissingLeadsWarning)
        warnings.simplefilter('ignore', files_lib.AssumedLeadOrderWarning)
        for result in _prepared_in_order(list(paths), job, max(1, int(workers))):
            for item in result:
                if item.error is not None:
                    failed.append((item.path, item.error))
                    progress.write(f'error: {item.error}')
                    continue
                if item.assumed_leads and not assumed:
                    progress.write(f'warning: {item.path} (and maybe others) does not name its '
                                   f'leads: assuming I,II,III,aVR,aVL,aVF,V1-V6 (pass --leads)')
                assumed += item.assumed_leads
                if item.missing:
                    progress.write(f'warning: {item.path}: missing leads {list(item.missing)} '
                                   f'filled with zeros')
                batcher.add(item.windows, item.valid)
                item.windows = None
                records.append(item)
            progress.advance(len(records), len(failed))
    return StreamResult(records, batcher.finish(), failed, time.time() - start)
