"""What every ECG source builder shares: options, reader pool, empty splits,
and finding the source's files (never downloading unless asked to).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Callable, Iterator, Sequence

from absl import logging
import tensorflow_datasets as tfds

from tfds_builders import errors
from tfds_builders import pool as pool_lib


class LoggedBuildMixin:
    """Replaces TFDS's two stdout lines around a build (the download sizes of a
    local source it does not know) with one log line each; mixed into every
    builder here, before `tfds.core.GeneratorBasedBuilder`."""

    def _log_download_bytes(self) -> None:
        logging.info('building %s in %s', self.info.full_name, self.data_dir)

    def _log_download_done(self) -> None:
        logging.info('%s is ready in %s', self.info.full_name, self.data_dir)


class SourceBuilderMixin(LoggedBuildMixin):
    """What every ECG source builder shares, mixed into GeneratorBasedBuilder.

    * Constructor arguments `download` (download the source when manual_dir
      is absent or empty; off unless asked for), `processes` (reader
      processes; 1 = serial) and `serial_below`.
    * `_map_records(fn, items, desc)`: reads records with one spawn pool that
      lives for the whole build (started on first use, closed when all splits
      are written), serially for small inputs.
    * Empty splits: TFDS refuses to write a split without examples ('No
      examples were yielded'). Here a split whose generator yields nothing
      (every record missing or bad), or that is listed in `_declared_splits`
      but has no generator, is recorded with zero shards:
      `info.splits['fold3'].num_examples == 0`, and `as_dataset` of it (or of
      `fold3+fold4`) gives an empty dataset with the usual element spec.

    Use as `class Builder(SourceBuilderMixin, tfds.core.GeneratorBasedBuilder)`.
    """

    _declared_splits: Sequence[str] = ()

    def __init__(self, *, download: bool | None = None,
                 processes: int | None = None,
                 serial_below: int = pool_lib.SERIAL_BELOW, **kwargs):
        """Creates the builder.

        Args:
          download: download the source when manual_dir is absent or empty
            (None or False: never; the build then says what to put where).
          processes: reader processes (default: cores - 1, the main process
            writes; 1: serial).
          serial_below: inputs with fewer records are read serially.
          **kwargs: passed to `tfds.core.GeneratorBasedBuilder`.
        """
        super().__init__(**kwargs)
        self._download = bool(download)
        self._processes = processes
        self._serial_below = serial_below
        self._pool = None

    def _map_records(self, fn: Callable[[Any], Any], items: Sequence[Any],
                     desc: str) -> Iterator[Any]:
        # The main process is busy encoding and writing examples, so by
        # default one core is left to it; with a single reader left, a pool
        # would only add pickling, so reading is serial on <= 2 cores.
        processes = self._processes or max(1, pool_lib.default_processes() - 1)
        if processes <= 1 or len(items) < self._serial_below:
            return pool_lib.parallel_map(fn, items, processes=1, desc=desc)
        if self._pool is None:
            self._pool = pool_lib.start_pool(processes)
        return pool_lib.parallel_map(fn, items, processes=processes, desc=desc,
                                     serial_below=0, pool=self._pool)

    def _generate_splits(self, dl_manager, download_config):  # pylint: disable=arguments-differ
        # TFDS writes all splits in one call and aborts the whole build when
        # one split yields nothing. Splits only turn out empty while they
        # are read (every record missing or bad), so each split is generated
        # by its own call, and an empty one is recorded with zero shards.
        generators = self._split_generators(dl_manager)
        split_infos = []
        try:
            for name, generator in generators.items():
                def only_this(dl_manager, _name=name, _generator=generator):
                    del dl_manager
                    return {_name: _generator}
                self._split_generators = only_this  # shadows the method
                try:
                    split_infos.extend(
                        super()._generate_splits(dl_manager, download_config))
                except AssertionError as e:
                    if 'No examples were yielded' not in str(e):
                        raise
                    logging.warning('split %s has no examples', name)
                finally:
                    del self._split_generators
        finally:
            if self._pool is not None:
                self._pool.close()
                self._pool.join()
                self._pool = None
        have = {info.name for info in split_infos}
        for name in list(generators) + list(self._declared_splits):
            if name not in have:
                have.add(name)
                split_infos.append(tfds.core.SplitInfo(
                    name=name, shard_lengths=[], num_bytes=0,
                    filename_template=self._get_filename_template(name)))
        return split_infos

    def _as_dataset(self, split, decoders=None, read_config=None,
                    shuffle_files=False):
        try:
            return super()._as_dataset(split=split, decoders=decoders,
                                       read_config=read_config,
                                       shuffle_files=shuffle_files)
        except ValueError as e:
            # TFDS's reader cannot open a selection without files; an empty
            # split (or a sum of empty ones) is an empty dataset of the same
            # element spec, which we get by reading nothing of a real split.
            if 'corresponds to no data' not in str(e):
                raise
            filled = [name for name, info in self.info.splits.items()
                      if info.num_examples > 0]
            if not filled:
                raise
            return super()._as_dataset(split=filled[0], decoders=decoders,
                                       read_config=read_config,
                                       shuffle_files=False).take(0)


def source_root(dl_manager, *, marker: str | None, where: str,
                download: bool,
                download_fn: Callable[[], os.PathLike | str] | None,
                expected: str | None = None) -> pathlib.Path:
    """The folder to build from: manual_dir, or a download when asked for.

    A download happens only when `download` is true and manual_dir is absent
    or empty: a manual_dir that holds other files is a mistake to report,
    never a reason to fetch tens of gigabytes.

    Args:
      dl_manager: the TFDS DownloadManager.
      marker: a file or folder that identifies the source root (searched a
        few levels down, see `find_root`); None to take the folder as is.
      where: what to get from where, for errors: 'PTB-XL from https://...'.
      download: whether downloading is allowed.
      download_fn: downloads and returns the extracted root; None when the
        source cannot be downloaded automatically.
      expected: what the folder should hold, for errors (default: marker).

    Returns:
      The source root folder.

    Raises:
      SourceFilesNotFoundError: one line naming the folder and `marker`.
    """
    expected = expected or marker or 'the source files'
    try:
        # TFDS's accessor raises for an absent or empty folder.
        root = pathlib.Path(os.fspath(dl_manager.manual_dir))
    except (AssertionError, ValueError):
        if download and download_fn is not None:
            logging.info('manual_dir absent or empty; downloading')
            return _find(pathlib.Path(os.fspath(download_fn())), marker, where)
        folder = getattr(dl_manager, '_manual_dir', None)  # only for the message
        folder = pathlib.Path(os.fspath(folder)) if folder else None
        state = ('manual_dir is not set' if folder is None else
                 f'manual_dir {folder} does not exist' if not folder.exists()
                 else f'manual_dir {folder} is not a folder'
                 if not folder.is_dir() else f'manual_dir {folder} is empty')
        raise errors.SourceFilesNotFoundError(
            f'{state}; expected {expected} in it '
            f'({_how_to_get(where, download_fn)})',
            folder=folder or '', expected=expected) from None
    hint = ('; --download=yes applies only to an absent or empty manual_dir'
            if download and download_fn is not None else '')
    return _find(root, marker, where, hint)


def _find(root: pathlib.Path, marker: str | None, where: str,
          hint: str = '') -> pathlib.Path:
    """`find_root(root, marker)`, its error ending with where to get it."""
    if marker is None:
        return root
    try:
        return find_root(root, marker)
    except errors.SourceFilesNotFoundError as e:
        raise errors.SourceFilesNotFoundError(
            f'{e} ({_how_to_get(where, None)}{hint})', folder=root,
            expected=marker) from None


def _how_to_get(where: str, download_fn: Callable[..., Any] | None) -> str:
    """The hint at the end of a missing-files error."""
    if download_fn is None:
        return f'get {where}'
    return f'get {where}, or build with --download=yes to download it'


def find_root(folder: str | os.PathLike, marker: str,
              max_depth: int = 3) -> pathlib.Path:
    """The folder at or below `folder` that contains `marker`.

    Downloads extract into a versioned sub-folder and users unpack archives
    one level deeper or shallower than asked; searching a few levels makes
    either layout work.

    Args:
      folder: where to start.
      marker: a file or folder name that identifies the source root.
      max_depth: how many levels to descend.

    Returns:
      The first folder (breadth-first, sorted) containing `marker`.

    Raises:
      SourceFilesNotFoundError: when no such folder exists.
    """
    level = [pathlib.Path(os.fspath(folder))]
    for _ in range(max_depth + 1):
        for path in level:
            if (path / marker).exists():
                return path
        level = sorted(p for path in level if path.is_dir()
                       for p in path.iterdir() if p.is_dir())
    raise errors.SourceFilesNotFoundError(
        f'no {marker} in {folder} (searched {max_depth} levels down)',
        folder=folder, expected=marker)
