"""Errors in a source's raw files that the person building must fix.

Unlike a bad record (skipped and counted, see `skips`), these stop the
build. Their message is one line naming the file or folder and what was
expected there; `python -m tfds_builders` prints it without a traceback and
exits with status 2.
"""

from __future__ import annotations

import os


class SourceDataError(Exception):
    """The raw files of a source cannot be built from (base class)."""


class SourceFilesNotFoundError(SourceDataError, FileNotFoundError):
    """A source's folder or a file it must hold is absent.

    Attributes:
      folder: where the file was looked for.
      expected: the file or folder that was expected there.
    """

    def __init__(self, message: str, *, folder: str | os.PathLike,
                 expected: str):
        super().__init__(message)
        self.folder = os.fspath(folder)
        self.expected = expected

    def __str__(self) -> str:  # OSError's own __str__ expects errno args
        return str(self.args[0])


class SourceTableError(SourceDataError, ValueError):
    """A source's table (CSV) lacks a column the builder needs.

    Attributes:
      path: the table's file.
      missing: the absent columns.
    """

    def __init__(self, message: str, *, path: str | os.PathLike,
                 missing: tuple[str, ...]):
        super().__init__(message)
        self.path = os.fspath(path)
        self.missing = missing
