"""Where `jepa-ecg embed`/`predict` results go: a claimed path, atomic parts, one file.

    <out>.lock                  held (flock) while a run writes <out>; a second
                                run on the same <out> stops at once, naming it
    <out>.parts/run.json        the run's options (a resume must use the same)
    <out>.parts/part-00001.npz  files finished so far, each part written to a
    ...                         temporary name and renamed, so a run stopped
                                at any moment keeps every part it completed
    <out>                       merged from the parts at the end (temporary
                                name + rename), then the parts are removed

A part holds, per record, its name, file, mean model output over its windows
and window count, plus the files it completes and their errors. Merging keeps
each file's latest entry, so a resumed run that retries failed files never
counts a record twice.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import fcntl
import glob
import json
import os
import socket
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

FORMATS = ('.npz', '.csv')


class OutputError(Exception):
    """A problem with the output path or its parts, as one line (exit status 1)."""


def output_format(path: str) -> str:
    """'.npz' or '.csv' from `path`'s extension; ValueError for anything else."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f'--out {path}: unknown output format {ext or "(no extension)"!r}; '
                         f'name it .npz or .csv')
    return ext


def write_atomic(path: str, write: Callable[[Any], None], *, text: bool = False) -> None:
    """Calls `write(file)` on a temporary file beside `path`, then renames it to `path`.

    Readers see the old file or the complete new one, never a part.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
    try:
        with (open(fd, 'w', newline='', encoding='utf-8') if text else open(fd, 'wb')) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


# ------------------------------------------------------------------- claim
@contextlib.contextmanager
def claim(out: str) -> Iterator[str]:
    """Holds `<out>.lock` (an exclusive flock) for the duration of a run.

    The kernel drops the lock when the process dies, so a lock file left by
    a killed run is simply taken over.

    Raises:
      OutputError: another live process holds it; names its host, pid, start.
    """
    path = out + '.lock'
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputError(f'--out {out} is being written by another run ({holder}); wait '
                              f'for it to finish or choose another --out') from None
        # The holder may have finished and removed the file between our open
        # and our lock: then we hold a lock on a deleted file; try again.
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    info = {'host': socket.gethostname(), 'pid': os.getpid(),
            'started': datetime.datetime.now().isoformat(timespec='seconds'),
            'command': ' '.join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)
        os.close(fd)


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 65536, 0).decode() or '{}')
        return f'pid {info["pid"]} on {info["host"]}, started {info["started"]}'
    except (ValueError, KeyError, OSError):
        return 'its lock file is held'


# ------------------------------------------------------------------- parts
@dataclasses.dataclass
class Merged:
    """All records of a run, in input file order.

    Attributes:
      names, paths: (N,) record names and their files.
      outputs: (N, ...) float32 mean model output over each record's windows.
      num_windows: (N,) windows per record.
      failed: (path, reason) of what could not be processed.
    """
    names: np.ndarray
    paths: np.ndarray
    outputs: np.ndarray
    num_windows: np.ndarray
    failed: list[tuple[str, str]]


class Parts:
    """The finished files of a run, saved as atomic parts beside `out`."""

    def __init__(self, out: str, options: Mapping[str, Any], output_shape: Sequence[int], *,
                 save_every: int = 500, save_seconds: float = 60.0):
        """Args:
          out: the final output path.
          options: what decides the results (a resume must use the same).
          output_shape: shape of one record's output.
          save_every: files per part.
          save_seconds: a part is saved at least this often while files finish.
        """
        self.out, self.dir = out, out + '.parts'
        self.options = json.loads(json.dumps(dict(options)))
        self.shape = tuple(output_shape)
        self.save_every, self.save_seconds = int(save_every), float(save_seconds)
        self._buffer: list[tuple[str, list, list[str]]] = []
        self._last_save = time.time()
        self.saved = 0  # parts in the folder

    def start(self, resume: bool) -> set[str]:
        """Prepares the parts folder; with `resume`, returns the files done before.

        Raises:
          OutputError: parts of an earlier run without `resume`, or a resume
            with different options.
        """
        existing = self._part_files()
        if os.path.isdir(self.dir) and not resume and existing:
            raise OutputError(f'{self.dir} holds {len(existing)} saved part(s) of an '
                              f'interrupted run: pass --resume to finish it, or remove the '
                              f'folder to start over')
        if resume and os.path.isdir(self.dir):
            self._check_options()
            for stale in glob.glob(os.path.join(self.dir, '.*.tmp')):
                os.remove(stale)  # a part a killed run was writing
        else:
            os.makedirs(self.dir, exist_ok=True)
            write_atomic(os.path.join(self.dir, 'run.json'),
                         lambda f: json.dump(self.options, f, indent=1), text=True)
        self.saved = len(existing)
        latest = self._latest()
        return {p for p, (_, errors) in latest.items() if not errors}

    def _check_options(self) -> None:
        try:
            with open(os.path.join(self.dir, 'run.json'), encoding='utf-8') as f:
                before = json.load(f)
        except (OSError, ValueError) as e:
            raise OutputError(f'--resume: cannot read {self.dir}/run.json ({e}); remove '
                              f'{self.dir} to start over') from None
        for key in sorted(set(before) | set(self.options)):
            if before.get(key) != self.options.get(key):
                raise OutputError(f'--resume: {self.dir} was written with {key}='
                                  f'{before.get(key)!r}, this run has {self.options.get(key)!r};'
                                  f' rerun with the same options or remove {self.dir}')

    def add(self, path: str, records: list[tuple[str, np.ndarray, int]],
            errors: list[str]) -> None:
        """One finished file: (name, mean output, windows) per record, and its errors."""
        self._buffer.append((path, records, errors))
        if (len(self._buffer) >= self.save_every
                or time.time() - self._last_save >= self.save_seconds):
            self.save()

    def save(self) -> None:
        """Writes the buffered files as the next part (atomically)."""
        self._last_save = time.time()
        if not self._buffer:
            return
        recs = [(p, *r) for p, records, _ in self._buffer for r in records]
        fails = [(p, e) for p, _, errors in self._buffer for e in errors]
        arrays = dict(
            files=np.asarray([p for p, _, _ in self._buffer], dtype=str),
            names=np.asarray([r[1] for r in recs], dtype=str),
            paths=np.asarray([r[0] for r in recs], dtype=str),
            outputs=np.asarray([r[2] for r in recs], np.float32).reshape((-1,) + self.shape),
            num_windows=np.asarray([r[3] for r in recs], np.int64),
            failed_paths=np.asarray([p for p, _ in fails], dtype=str),
            failed_reasons=np.asarray([e for _, e in fails], dtype=str))
        name = os.path.join(self.dir, f'part-{self.saved + 1:05d}.npz')
        write_atomic(name, lambda f: np.savez(f, **arrays))
        self.saved += 1
        self._buffer = []

    def _part_files(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.dir, 'part-*.npz')))

    def _latest(self) -> dict[str, tuple[list, list[str]]]:
        """path -> (its records, its errors) from the last part holding it."""
        latest: dict[str, tuple[list, list[str]]] = {}
        for part in self._part_files():
            try:
                with np.load(part, allow_pickle=False) as z:
                    a = {k: z[k] for k in z.files}
            except Exception as e:  # pylint: disable=broad-except
                raise OutputError(f'{part} is damaged ({type(e).__name__}); remove it and '
                                  f'rerun with --resume to redo its files') from None
            if a['outputs'].shape[1:] != self.shape:
                raise OutputError(f'{part} holds outputs of shape {a["outputs"].shape[1:]}, '
                                  f'this model gives {self.shape}; remove {self.dir}')
            for f in a['files']:
                latest[str(f)] = ([], [])
            for n, p, o, w in zip(a['names'], a['paths'], a['outputs'], a['num_windows']):
                latest[str(p)][0].append((str(n), o, int(w)))
            for p, e in zip(a['failed_paths'], a['failed_reasons']):
                latest[str(p)][1].append(str(e))
        return latest

    def merge(self, order: Sequence[str]) -> Merged:
        """Every saved record, files in `order` (then any others in part order)."""
        self.save()
        latest = self._latest()
        rank = {p: i for i, p in enumerate(order)}
        files = sorted(latest, key=lambda p: rank.get(p, len(rank)))
        recs = [(p, *r) for p in files for r in latest[p][0]]
        return Merged(
            names=np.asarray([r[1] for r in recs], dtype=str),
            paths=np.asarray([r[0] for r in recs], dtype=str),
            outputs=np.asarray([r[2] for r in recs], np.float32).reshape((-1,) + self.shape),
            num_windows=np.asarray([r[3] for r in recs], np.int64),
            failed=[(p, e) for p in files for e in latest[p][1]])

    def remove(self) -> None:
        """Deletes the parts folder (once the final output is written)."""
        for name in os.listdir(self.dir):
            os.remove(os.path.join(self.dir, name))
        os.rmdir(self.dir)


# ------------------------------------------------------------------ writers
def write_embeddings(out: str, merged: Merged, *, registers: bool, info: Mapping) -> None:
    """Embeddings as NPZ (see `jepa_ecg.cli`) or CSV (record, path, mean_*, register_*)."""
    mean, register = merged.outputs[:, 0], merged.outputs[:, 1]
    if output_format(out) == '.csv':
        dim = mean.shape[1]
        header = (['record', 'path'] + [f'mean_{i}' for i in range(dim)]
                  + ([f'register_{i}' for i in range(dim)] if registers else []))
        values = np.concatenate([mean, register], 1) if registers else mean

        def write_csv(f):
            w = csv.writer(f)
            w.writerow(header)
            for name, path, row in zip(merged.names, merged.paths, values):
                w.writerow([name, path] + [f'{v:.9g}' for v in row])  # float32 round trip
        write_atomic(out, write_csv, text=True)
        return
    arrays = dict(mean=mean, names=merged.names, paths=merged.paths,
                  num_windows=merged.num_windows,
                  failed=np.asarray([p for p, _ in merged.failed], dtype=str),
                  encoder=np.asarray(json.dumps(info)))
    if registers:
        arrays['register'] = register
    write_atomic(out, lambda f: np.savez(f, **arrays))


def write_predictions(out: str, merged: Merged, probs: np.ndarray,
                      class_names: Sequence[str]) -> None:
    """Probabilities as CSV (record, path, <class>...) or NPZ (probabilities, names, ...)."""
    if output_format(out) == '.npz':
        write_atomic(out, lambda f: np.savez(
            f, probabilities=probs, classes=np.asarray(class_names, dtype=str),
            names=merged.names, paths=merged.paths, num_windows=merged.num_windows,
            failed=np.asarray([p for p, _ in merged.failed], dtype=str)))
        return

    def write_csv(f):
        w = csv.writer(f)
        w.writerow(['record', 'path'] + list(class_names))
        for name, path, row in zip(merged.names, merged.paths, probs):
            w.writerow([name, path] + [f'{p:.6f}' for p in row])
    write_atomic(out, write_csv, text=True)
