"""Console output of the experiment mains: our progress lines, not library chatter.

absl, Orbax and TFDS log a dozen INFO lines per checkpoint or dataset open;
they drown the progress, loss and AUC lines people watch. Unless the
command line asks for a verbosity (`--verbosity=0` / `-v 0` or higher shows
everything), only INFO lines from jepa_ecg and experiments/ are kept;
warnings and errors from anywhere always pass.
"""

import logging as std_logging
import os

from absl import flags, logging

import experiments
import jepa_ecg

_OUR_ROOTS = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep
                   for m in (jepa_ecg, experiments))


class _OursOrImportant(std_logging.Filter):

    def filter(self, record: std_logging.LogRecord) -> bool:
        return (record.levelno > std_logging.INFO
                or os.path.abspath(record.pathname).startswith(_OUR_ROOTS))


def quiet_library_logs() -> None:
    """Drops other libraries' INFO lines unless `--verbosity` was given (call in main)."""
    if flags.FLAGS['verbosity'].present:
        return
    logging.get_absl_handler().addFilter(_OursOrImportant())
