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


def window_starts(num_samples: int, length: int, stride: int) -> np.ndarray:
    """Start samples of a record's windows: every `stride`, plus one aligned to its end.

    A record whose length is not a whole number of strides past the first
    window gets that last window so its tail is seen too.
    """
    if length <= 0 or stride <= 0:
        raise ValueError(f'length ({length}) and stride ({stride}) must be positive')
    if num_samples <= length:
        return np.zeros(1, np.int64)
    starts = np.arange(0, num_samples - length + 1, stride, dtype=np.int64)
    if (num_samples - length) % stride:
        starts = np.append(starts, num_samples - length)
    return starts


class LazyWindows:
    """The windows of one record, copied out of it only when read.

    Long records at small strides have far more window samples than record
    samples (a 2-hour record every 0.05 s: 144,000 windows), so they are cut
    a batch at a time: slicing gives another `LazyWindows`, `np.asarray`
    copies just the windows in the slice.
    """

    def __init__(self, x: np.ndarray, starts: np.ndarray, length: int):
        self.x, self.starts, self.length = x, np.asarray(starts, np.int64), int(length)

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.starts), self.length) + self.x.shape[1:]

    def __getitem__(self, index: slice) -> 'LazyWindows':
        if not isinstance(index, slice):
            raise TypeError('LazyWindows takes slices; np.asarray it for anything else')
        return LazyWindows(self.x, self.starts[index], self.length)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.empty(self.shape, np.float32)
        for i, s in enumerate(self.starts):
            out[i] = self.x[s:s + self.length]
        return out if dtype is None else out.astype(dtype, copy=False)


def lazy_windows(x: np.ndarray, *, length: int, stride: int, patch_size: int, fs: float,
                 pad: bool = False, name: str | None = None
                 ) -> tuple[LazyWindows | np.ndarray, int]:
    """`cut_windows` without copying: windows are cut when read (see `LazyWindows`).

    Returns:
      (windows, valid_patches) as `cut_windows`; a padded short record is one
      (1, length, leads) array.
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
    return LazyWindows(x, window_starts(t, length, stride), length), length // patch_size


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
    wins, valid = lazy_windows(x, length=length, stride=stride, patch_size=patch_size, fs=fs,
                               pad=pad, name=name)
    return np.asarray(wins, np.float32), valid


class WindowBatcher:
    """Packs windows of many records into fixed-size forward passes.

    Records are added in order; whenever `batch_size` windows are waiting,
    one forward pass runs on exactly that many (a record's windows may span
    two batches). `finish` runs the rest and returns each record's outputs;
    with `on_done`, each record's mean output is handed over as soon as its
    last window has run instead (memory then does not grow with the number
    of windows).
    """

    def __init__(self, forward: Forward, batch_size: int,
                 on_done: Callable[[int, np.ndarray, int], None] | None = None):
        """Args:
          forward: (windows (B, T, L), valid patches (B,)) -> (B, ...) outputs,
            B a power of two <= batch_size.
          batch_size: windows per forward pass.
          on_done: optional (record index, mean output over its windows
            (float32), number of windows), called in add order.
        """
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        self._forward = forward
        self._batch_size = int(batch_size)
        self._on_done = on_done
        self._pending: list[tuple[int, np.ndarray, int]] = []  # (record, windows, valid)
        self._pending_windows = 0
        self._outputs: list[list[np.ndarray]] = []
        # on_done: record -> [float64 sum of outputs, windows run, windows in all]
        self._sums: dict[int, list] = {}

    def add(self, windows: np.ndarray | LazyWindows, valid_patches: int) -> int:
        """Queues one record's windows and runs the batches that are full.

        Args:
          windows: (W, T, L), W >= 1; an array or `LazyWindows`.
          valid_patches: patches holding real signal per window (passed to
            `forward`; 0 for a forward that ignores it).

        Returns:
          the record's index (in `finish`'s list, or given to `on_done`).
        """
        if not len(windows):
            raise ValueError('a record without windows')
        index = len(self._outputs)
        self._outputs.append([])
        if self._on_done is not None:
            self._sums[index] = [0.0, 0, len(windows)]
        self._pending.append((index, windows, int(valid_patches)))
        self._pending_windows += len(windows)
        self._run(final=False)
        return index

    def finish(self) -> list[np.ndarray]:
        """Runs what is left; returns per-record (W_i, ...) outputs in add order."""
        self._run(final=True)
        out = [np.concatenate(parts) for parts in self._outputs if parts]
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
            batch = np.concatenate([np.asarray(w, np.float32) for _, w, _ in take])
            valid = np.concatenate([np.full(len(w), v, np.int32) for _, w, v in take])
            x = pad_batch(batch, bs)
            # Padding rows count one valid patch so a masked mean never divides by 0.
            v = np.concatenate([valid, np.ones(x.shape[0] - n, np.int32)])
            out = np.asarray(self._forward(x, v))[:n]
            pos = 0
            for index, wins, _ in take:
                self._collect(index, out[pos:pos + len(wins)])
                pos += len(wins)
            self._pending = rest
            self._pending_windows -= n

    def _collect(self, index: int, out: np.ndarray) -> None:
        if self._on_done is None:
            self._outputs[index].append(out)
            return
        acc = self._sums[index]
        acc[0] = acc[0] + out.astype(np.float64).sum(0)
        acc[1] += len(out)
        if acc[1] == acc[2]:
            del self._sums[index]
            self._on_done(index, (acc[0] / acc[1]).astype(np.float32), acc[1])


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
