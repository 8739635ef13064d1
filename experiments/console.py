"""Console output of the experiment mains: our progress lines, not library chatter.

absl, Orbax and TFDS log a dozen INFO lines per checkpoint or dataset open;
they drown the progress, loss and AUC lines people watch. Unless the
command line asks for a verbosity (`--verbosity=0` / `-v 0` or higher shows
everything), only INFO lines from jepa_ecg and experiments/ are kept;
warnings and errors from anywhere pass (but for Orbax's notes on its
read-only managers).
"""

import contextlib
import errno
import logging as std_logging
import os
import signal
import sys
from typing import Iterator

from absl import flags, logging

import experiments
import jepa_ecg
import tfds_builders

# Dataset builds log their progress from tfds_builders: ours too.
_OUR_ROOTS = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep
                   for m in (jepa_ecg, experiments, tfds_builders))


class _OursOrImportant(std_logging.Filter):

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.levelno > std_logging.INFO:
            # Orbax warns about its read-only managers on every restore of a
            # finished run's checkpoint: nothing is wrong.
            if 'read only' in record.getMessage() or 'read_only=True' in record.getMessage():
                return False
            # A failed save is logged with its traceback by each Orbax thread it
            # passes through, then raised to the loop, whose one line says it all.
            # The same for the other writes of that save, whose futures asyncio
            # reports when they are collected.
            if record.levelno >= std_logging.ERROR and (
                    os.sep + 'orbax' + os.sep in record.pathname or
                    (record.name == 'asyncio' and 'never retrieved' in record.getMessage())):
                return False
            return True
        return os.path.abspath(record.pathname).startswith(_OUR_ROOTS)


def quiet_library_logs() -> None:
    """Drops other libraries' INFO lines unless `--verbosity` was given (call in main)."""
    if flags.FLAGS['verbosity'].present:
        return
    logging.get_absl_handler().addFilter(_OursOrImportant())


# A released run lock is an empty file: it records nothing the run wrote.
_LOCK_FILE = 'run.lock'


def _remove_if_unused(new_workdir: str) -> None:
    """Removes a workdir this run created when it holds only empty folders and its lock."""
    def written(root, name):
        path = os.path.join(root, name)
        return not (name == _LOCK_FILE and root == new_workdir and os.path.getsize(path) == 0)

    if any(written(root, n) for root, _, files in os.walk(new_workdir) for n in files):
        return
    lock = os.path.join(new_workdir, _LOCK_FILE)
    if os.path.exists(lock):
        os.remove(lock)
    for root, _, _ in sorted(os.walk(new_workdir), key=lambda t: -len(t[0])):
        os.rmdir(root)


def fail(message: str, *, new_workdir: str | None = None, exitcode: int = 1,
         prefix: str = 'error: ') -> None:
    """Ends a main with one line on stderr, no traceback.

    Args:
      message: what went wrong and what to do (e.g. the build command).
      new_workdir: a workdir this run created; removed when nothing was
        written into it (empty folders only), so a failed start leaves no trace.
      exitcode: 1 for a data or run problem, 2 for a usage error, 128 + N
        for a stop by signal N.
      prefix: what the line starts with.
    """
    if new_workdir and os.path.isdir(new_workdir):
        _remove_if_unused(new_workdir)
    print(f'{prefix}{message}', file=sys.stderr, flush=True)
    sys.exit(exitcode)


def usage_error(message: str, hint: str) -> None:
    """Ends a main on a usage or config error: one line and a hint, exit status 2.

    absl's `app.UsageError` prints the whole flag help before the message;
    the message is what a person needs.
    """
    print(f'error: {message}\n  {hint}', file=sys.stderr, flush=True)
    sys.exit(2)


def first_line(e: BaseException) -> str:
    """The first line of an error's message; for a message that embeds a
    traceback (ml_collections' config-file errors), its opening and the
    traceback's last line (the error itself)."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    if not lines:
        return repr(e)
    if any(line.startswith('Traceback (most recent call last)') for line in lines):
        return f'{lines[0].rstrip(": ")}: {lines[-1]}'
    return lines[0]


# A workdir or output the run cannot write (or read): one line naming the path.
_WRITE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def run_errors(new_workdir: str | None) -> Iterator[None]:
    """Turns the known ways a run ends early into one line and an exit status.

    A stop signal exits with 128 + its number (the line says which step is
    saved); a busy or unwritable workdir, a missing or damaged dataset, a
    checkpoint that does not restore or save with 1; a workdir holding a run
    of another model with 2.

    Args:
      new_workdir: the workdir when this run creates it (removed if unused).
    """
    # Imported here: the mains import this module before JAX may start.
    from jepa_ecg.data.datasets import DatasetReadError  # pylint: disable=g-import-not-at-top
    from jepa_ecg.training import guard  # pylint: disable=g-import-not-at-top
    from jepa_ecg.training import checkpoint  # pylint: disable=g-import-not-at-top
    from jepa_ecg.training.config_checks import ConfigError  # pylint: disable=g-import-not-at-top
    from experiments.build_data import BuildConfigError  # pylint: disable=g-import-not-at-top
    from tfds_builders.build import DatasetNotBuiltError  # pylint: disable=g-import-not-at-top
    from tfds_builders.errors import SourceDataError  # pylint: disable=g-import-not-at-top
    try:
        yield
    except guard.StopRequested as e:
        fail(str(e), exitcode=e.exitcode, prefix='')
    except (DatasetNotBuiltError, DatasetReadError, SourceDataError, checkpoint.CheckpointError,
            checkpoint.CheckpointSaveError, guard.WorkdirBusyError) as e:
        fail(str(e), new_workdir=new_workdir)
    except (ConfigError, BuildConfigError) as e:
        fail(str(e), new_workdir=new_workdir, exitcode=2)
    except KeyboardInterrupt:
        fail('interrupted before the first step; nothing was saved', new_workdir=new_workdir,
             exitcode=128 + signal.SIGINT)
    except OSError as e:
        if e.errno not in _WRITE_ERRNOS:
            raise
        verb = 'cannot access' if e.errno in (errno.EACCES, errno.EPERM) else 'cannot write'
        fail(f'{verb} {e.filename or "the workdir"}: {e.strerror}', new_workdir=new_workdir)
