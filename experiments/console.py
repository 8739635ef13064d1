"""Console output of the experiment mains: our progress lines, not library chatter.

absl, Orbax and TFDS log a dozen INFO lines per checkpoint or dataset open;
they drown the progress, loss and AUC lines people watch. Unless the
command line asks for a verbosity (`--verbosity=0` / `-v 0` or higher shows
everything), only INFO lines from jepa_ecg and experiments/ are kept;
warnings and errors from anywhere pass (but for Orbax's notes on its
read-only managers).
"""

import logging as std_logging
import os
import sys

from absl import flags, logging

import experiments
import jepa_ecg

_OUR_ROOTS = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep
                   for m in (jepa_ecg, experiments))


class _OursOrImportant(std_logging.Filter):

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.levelno > std_logging.INFO:
            # Orbax warns about its read-only managers on every restore of a
            # finished run's checkpoint: nothing is wrong.
            return not ('read only' in record.getMessage()
                        or 'read_only=True' in record.getMessage())
        return os.path.abspath(record.pathname).startswith(_OUR_ROOTS)


def quiet_library_logs() -> None:
    """Drops other libraries' INFO lines unless `--verbosity` was given (call in main)."""
    if flags.FLAGS['verbosity'].present:
        return
    logging.get_absl_handler().addFilter(_OursOrImportant())


def fail(message: str, *, new_workdir: str | None = None, exitcode: int = 1) -> None:
    """Ends a main with one line on stderr, no traceback.

    Args:
      message: what went wrong and what to do (e.g. the build command).
      new_workdir: a workdir this run created; removed when nothing was
        written into it (empty folders only), so a failed start leaves no trace.
      exitcode: 1 for a data or run problem, 2 for a usage error.
    """
    if new_workdir and os.path.isdir(new_workdir):
        if not any(files for _, _, files in os.walk(new_workdir)):
            for root, _, _ in sorted(os.walk(new_workdir), key=lambda t: -len(t[0])):
                os.rmdir(root)
    print(f'error: {message}', file=sys.stderr, flush=True)
    sys.exit(exitcode)
