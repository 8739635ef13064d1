"""Building our TFDS datasets: the one place that writes them.

Every reader in jepa_ecg opens a built dataset by random access
(`builder.as_data_source`), which needs the ArrayRecord file format; the
functions here build in that format, uncompressed by default.

    from tfds_builders import build
    build.build_dataset('synthetic_ecg', data_dir)                  # offline source
    build.build_dataset('ptb_xl/records100', data_dir, manual_dir='/data/ptb-xl')
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Mapping

import tensorflow_datasets as tfds
from array_record.python import array_record_module
from tensorflow_datasets.core import file_adapters
from tensorflow_datasets.core.utils import tqdm_utils

# The builder classes (each registers itself with TFDS on import).
from tfds_builders.cinc2021 import cinc2021_dataset_builder  # noqa: F401
from tfds_builders.code15 import code15_dataset_builder  # noqa: F401
from tfds_builders.mimic_iv_ecg import mimic_iv_ecg_dataset_builder  # noqa: F401
from tfds_builders.ptb_xl import ptb_xl_dataset_builder  # noqa: F401
from tfds_builders.synthetic_ecg import synthetic_ecg_dataset_builder  # noqa: F401

# Sources that need no raw files: entry points build them on first use.
OFFLINE_DATASETS = ('synthetic_ecg',)


class DatasetNotBuiltError(FileNotFoundError):
    """A dataset a reader needs has not been built in the data directory."""


def build_command(tfds_name: str, data_dir: str | None) -> str:
    """The shell command that builds `tfds_name` (for error messages)."""
    manual = '' if is_offline(tfds_name) else ' --manual_dir=/path/to/raw/files'
    where = f' --data_dir={data_dir}' if data_dir else ''
    return f'python -m tfds_builders {tfds_name}{manual}{where}'


def is_offline(tfds_name: str) -> bool:
    """Whether `tfds_name` is generated here (needs no raw files)."""
    return tfds_name.split('/')[0] in OFFLINE_DATASETS


@contextlib.contextmanager
def uncompressed_array_record_writes():
    """Within the block, TFDS writes ArrayRecord files without compression.

    TFDS writes ArrayRecord with the library default (zstd level 3). On
    float32 ECG samples that saves ~7% of disk but every random read then
    decompresses ~240 kB, the input pipeline's largest cost. Readers detect
    the compression per file, so datasets written either way read the same.
    Not thread-safe: it swaps a class attribute for the duration.
    """
    adapter = file_adapters.ArrayRecordFileAdapter
    original = adapter.__dict__['write_examples']

    def write_examples(cls, path, iterator):
        del cls
        writer = array_record_module.ArrayRecordWriter(
            os.fspath(path), 'group_size:1,uncompressed')
        for _, serialized in iterator:
            writer.write(serialized)
        writer.close()

    adapter.write_examples = classmethod(write_examples)
    try:
        yield
    finally:
        adapter.write_examples = original


def build_dataset(tfds_name: str, data_dir: str | None, *, manual_dir: str | None = None,
                  compress: bool = False,
                  builder_kwargs: Mapping[str, Any] | None = None):
    """Builds (or reuses) a registered TFDS dataset in ArrayRecord format.

    Args:
      tfds_name: `builder/config` name, e.g. 'synthetic_ecg/small'.
      data_dir: TFDS data directory (None: TFDS's default).
      manual_dir: folder holding the source's raw files (real sources).
      compress: keep ArrayRecord's default zstd compression (slower reads).
      builder_kwargs: extra `tfds.builder` arguments.

    Returns:
      the prepared `tfds.core.DatasetBuilder`.
    """
    builder = tfds.builder(tfds_name, data_dir=data_dir, **dict(builder_kwargs or {}))
    context = contextlib.nullcontext() if compress else uncompressed_array_record_writes()
    download_config = (tfds.download.DownloadConfig(manual_dir=manual_dir)
                       if manual_dir else None)
    with context, _without_tfds_progress_bars():
        builder.download_and_prepare(file_format='array_record',
                                     download_config=download_config)
    return builder


@contextlib.contextmanager
def _without_tfds_progress_bars():
    """Our readers log `desc: done / total (rate)` and a summary per split; TFDS's
    bars (one per split and per shuffle, with shard-pattern paths) repeat them."""
    was = tqdm_utils._active  # pylint: disable=protected-access
    tqdm_utils.display_progress_bar(False)
    try:
        yield
    finally:
        tqdm_utils.display_progress_bar(was)


def is_built(tfds_name: str, data_dir: str | None) -> bool:
    """Whether `tfds_name` is prepared in `data_dir`."""
    try:
        return tfds.builder(tfds_name, data_dir=data_dir).is_prepared()
    except Exception:  # pylint: disable=broad-except  (unknown version, bad folder)
        return False


def ensure_built(tfds_name: str, data_dir: str | None, *, manual_dir: str | None = None):
    """The prepared builder of `tfds_name`, building it when that needs nothing.

    Offline sources (synthetic) and sources whose `manual_dir` is given are
    built on first use; any other unbuilt source raises.

    Args:
      tfds_name: `builder/config` name.
      data_dir: TFDS data directory.
      manual_dir: raw files of a real source, or None.

    Returns:
      the prepared `tfds.core.DatasetBuilder`.

    Raises:
      DatasetNotBuiltError: a real source is not built and no manual_dir
        was given; the message names the build command.
    """
    if is_built(tfds_name, data_dir):
        return tfds.builder(tfds_name, data_dir=data_dir)
    if manual_dir or is_offline(tfds_name):
        return build_dataset(tfds_name, data_dir, manual_dir=manual_dir)
    raise DatasetNotBuiltError(
        f'dataset {tfds_name!r} is not built in {data_dir or "the default TFDS data_dir"}. '
        f'Build it once with:\n  {build_command(tfds_name, data_dir)}')
