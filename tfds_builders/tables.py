"""Reading a source's CSV tables, checking the columns the builder needs.

A table from another release or a hand-edited one may lack a column; pandas
would then fail much later with a bare `KeyError: 'strat_fold'`. Here the
error names the file and the missing columns before anything is built.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Sequence

import pandas as pd

from tfds_builders import errors


def read_table(path: str | os.PathLike, required: Sequence[str],
               **read_csv_kwargs: Any) -> pd.DataFrame:
    """Reads a CSV file that must hold the `required` columns.

    Args:
      path: the CSV file.
      required: column names the caller uses (an `index_col` given by name
        counts as a column).
      **read_csv_kwargs: passed to `pandas.read_csv`.

    Returns:
      The table.

    Raises:
      SourceFilesNotFoundError: the file does not exist.
      SourceTableError: a required column is absent; names the file, the
        missing and the present columns.
    """
    path = pathlib.Path(os.fspath(path))
    if not path.is_file():
        raise errors.SourceFilesNotFoundError(
            f'{path} not found', folder=path.parent, expected=path.name)
    header = pd.read_csv(path, nrows=0)
    present = [str(c) for c in header.columns]
    missing = tuple(c for c in required if c not in present)
    if missing:
        raise errors.SourceTableError(
            f'{path} lacks the column{"s" if len(missing) > 1 else ""} '
            f'{", ".join(missing)} (it has {", ".join(present) or "none"})',
            path=path, missing=missing)
    return pd.read_csv(path, **read_csv_kwargs)
