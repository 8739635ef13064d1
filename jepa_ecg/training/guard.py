"""What keeps a training run whole when it is disturbed: stop signals, the
workdir lock, and the one error a diverged run stops with.

A preemptible VM or a cluster scheduler stops a job with SIGTERM, a person
with Ctrl-C (SIGINT). `StopSignals` turns both into a request the training
loops read at each step boundary: they save that step's checkpoint, wait
for it and raise `StopRequested`, which the mains turn into one line and
exit status 128 + signal number. With several processes every one must
save the same step: JAX's preemption sync point (its coordination service
propagates a SIGTERM received by any process and names a step all reach)
decides, and a SIGINT is forwarded to it as a SIGTERM.

`WorkdirLock` keeps a second run out of a busy workdir: an `flock` on
`<workdir>/run.lock`, which the kernel releases when its holder dies, so a
lock file left by a dead run is taken over (with a warning naming it).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import signal
import socket
import sys
from typing import Any

import jax
import numpy as np
from absl import logging

LOCK_FILE = 'run.lock'
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (pre-training or fine-tuning)."""


class StopRequested(Exception):
    """A stop signal arrived; the loop saved the checkpoint of `step` and stopped.

    Attributes:
      signum: the signal (SIGTERM when another process received it).
      step: the step whose checkpoint holds the run.
      directory: where that checkpoint is.
      resumable: whether rerunning the command continues from `step`.
    """

    def __init__(self, signum: int, step: int, directory: str, *, resumable: bool = True):
        self.signum, self.step, self.directory, self.resumable = signum, step, directory, resumable
        name = signal.Signals(signum).name
        if resumable:
            text = (f'stopped by {name} at step {step}: checkpoint saved in {directory}; '
                    f'run the same command to resume')
        else:
            text = (f'stopped by {name} at step {step} of {directory}: this run does not '
                    f'resume; run the same command to start it again')
        super().__init__(text)

    @property
    def exitcode(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Context manager: SIGTERM/SIGINT only set a flag, read with `should_stop(step)`.

    A second signal of the same kind ends the process at once without a
    save (the default action), for a run stuck outside the training loop.
    """

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._multi = jax.process_count() > 1
        # JAX's preemption service (on unless jax_enable_preemption_service is
        # off) listens for SIGTERM itself; without it the processes compare flags.
        self._jax_sync = self._multi and _preemption_service_running()

    def _handle(self, signum, frame):  # pylint: disable=unused-argument
        if self.received == signum:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = self.received or signum
        if self._jax_sync and signum != signal.SIGTERM:
            # JAX's preemption notifier listens for SIGTERM: it tells the other processes.
            os.kill(os.getpid(), signal.SIGTERM)

    def __enter__(self) -> 'StopSignals':
        # JAX's own SIGTERM handler (installed by jax.distributed) must stay.
        signums = (signal.SIGINT,) if self._jax_sync else SIGNALS
        for signum in signums:
            if signum == signal.SIGINT and signal.getsignal(signum) == signal.SIG_IGN:
                # Started with Ctrl-C ignored (a shell's background job, a
                # scheduler): it stays ignored, as Python itself leaves it.
                continue
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals to its owner
                pass
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def should_stop(self, step: int) -> bool:
        """Whether to save `step` and stop (the same answer on every process)."""
        if not self._multi:
            return self.received is not None
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        if self._jax_sync:
            if multihost_utils.reached_preemption_sync_point(step):
                self.received = self.received or signal.SIGTERM
                return True
            return False
        flags = multihost_utils.process_allgather(np.int32(self.received or 0))
        if flags.max() > 0:
            self.received = self.received or int(flags.max())
            return True
        return False


def _preemption_service_running() -> bool:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    return getattr(distributed.global_state, 'preemption_sync_manager', None) is not None


# --------------------------------------------------------------------------- lock
class WorkdirBusyError(RuntimeError):
    """Another live run holds the workdir."""


def _describe(holder: dict) -> str:
    return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
            f"started {holder.get('started', '?')}")


class WorkdirLock:
    """Context manager: holds `<workdir>/run.lock` for the run (process 0 only).

    Args:
      workdir: the run's folder (created if missing).
      what: the run's kind in messages ('pre-training', 'fine-tuning').

    Raises (on enter):
      WorkdirBusyError: a live run holds it (the message names host, pid, start).
      OSError: the workdir cannot be created or written.
    """

    def __init__(self, workdir: str, what: str = 'run'):
        self.path = os.path.join(workdir, LOCK_FILE)
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> 'WorkdirLock':
        if jax.process_index() != 0:
            return self
        os.makedirs(os.path.dirname(self.path) or '.', exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise WorkdirBusyError(
                f'{os.path.dirname(self.path)} is in use by another {self.what} '
                f'({_describe(_read_holder(self.path))}); wait for it, stop it, or choose '
                f'another workdir') from None
        old = _read_holder(self.path)
        if old:
            # The lock was free, so its holder died without releasing the file.
            logging.warning('taking over the lock of a run that ended without releasing it '
                            '(%s) in %s', _describe(old), os.path.dirname(self.path))
        holder = {'host': socket.gethostname(), 'pid': os.getpid(),
                  'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
                  'command': ' '.join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        # An empty file marks a clean release; a dead holder leaves its record.
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def _read_holder(path: str) -> dict:
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read().strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}


def ignore_closed_loop_callbacks() -> Any:
    """Installs a `sys.unraisablehook` that drops 'Event loop is closed' RuntimeErrors.

    When an async checkpoint save fails (no space), Orbax's event loop ends
    while TensorStore still completes the other writes of that save; each of
    their callbacks into the closed loop prints a bare traceback as an
    unraisable exception from TensorStore's threads. The save's own error is
    reported by the loop; these add nothing. Everything else goes to the
    previous hook.

    Returns:
      The previous hook (to restore with `sys.unraisablehook = previous`).
    """
    previous = sys.unraisablehook

    def hook(unraisable):
        if (isinstance(unraisable.exc_value, RuntimeError) and unraisable.object is None
                and str(unraisable.exc_value) == 'Event loop is closed'):
            return
        previous(unraisable)

    sys.unraisablehook = hook
    return previous
