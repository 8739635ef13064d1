"""Windows of records and fixed-size batches of them through a model, with pooling.

    record (preprocessed) -> cut_windows / lazy_windows -> WindowBatcher -> forward
                          -> per-record window outputs -> pool (mean over windows)

`WindowBatcher` packs the windows of consecutive records into full batches
so the jitted forward sees one batch shape however long each record is
(plus a few power-of-two shapes for the last, partial batch). `LazyWindows`
cuts a long record's windows a batch at a time. `inference.stream` adds the
user's files; everything here is importable from there too.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from jepa_ecg.data.preprocess import RecordTooShortError
from jepa_ecg.ecg import transforms


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
    return (LazyWindows(x, transforms.window_starts(t, length, stride), length),
            length // patch_size)


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
