"""Random access to one split of a built source: the data source Grain reads.

Every source is a TFDS dataset in the ArrayRecord file format (built by
`tfds_builders/build.py`). `SplitReader` opens one split by random access
(`builder.as_data_source`) and decodes only the features asked for from the
stored `tf.train.Example` bytes, so nothing is loaded into RAM and reading a
record costs what parsing it does. It satisfies Grain's
`RandomAccessDataSource` protocol (`__len__`, `__getitem__`) and pickles
without its open files, so Grain worker processes reopen it themselves.
"""

from __future__ import annotations

import zlib
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from jepa_ecg.data import sources as sources_lib
from jepa_ecg.ecg.leads import NUM_LEADS
from tfds_builders import build

SIGNAL_KEYS = ('signal', 'fs')


class DatasetReadError(RuntimeError):
    """A file of a built dataset does not read back (damaged): rebuild the dataset."""


class SplitReader:
    """One split of a built TFDS dataset, decoding only `keys`.

    Attributes:
      tfds_name: `builder/config`.
      split: TFDS split expression (e.g. 'train', 'fold1+fold2').
      keys: features decoded by `__getitem__`.
    """

    def __init__(self, tfds_name: str, data_dir: str | None, split: str, *,
                 keys: Sequence[str] = SIGNAL_KEYS, default_fs: float | None = None):
        """Opens the split.

        Args:
          tfds_name: `builder/config` name of a registered builder.
          data_dir: TFDS data directory holding the built dataset.
          split: split expression.
          keys: features to decode per record.
          default_fs: the `fs` of records whose example carries none.

        Raises:
          tfds_builders.build.DatasetNotBuiltError: the dataset is not built
            in `data_dir` (the message names the build command).
          ValueError: it was built in a format without random access.
        """
        self.tfds_name, self.data_dir, self.split = tfds_name, data_dir, split
        self.keys = tuple(keys)
        self.default_fs = default_fs
        self._open()

    def _open(self) -> None:
        builder = tfds.builder(self.tfds_name, data_dir=self.data_dir)
        if not builder.is_prepared():
            raise build.DatasetNotBuiltError(
                f'dataset {self.tfds_name!r} is not built in {self.data_dir}. Build it with:\n'
                f'  {build.build_command(self.tfds_name, self.data_dir)}')
        info = builder.info
        formats = {str(getattr(f, 'value', f)) for f in
                   [info.file_format] + list(getattr(info, 'alternative_file_formats', []) or [])
                   if f is not None}
        if 'array_record' not in formats:
            raise ValueError(
                f'{builder.data_dir} holds {sorted(formats)} files, but jepa_ecg reads by '
                f'random access and needs ArrayRecord: rebuild with '
                f'{build.build_command(self.tfds_name, self.data_dir)}')
        self._source = builder.as_data_source(
            nonempty_splits(self.split, info),
            deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
        self._specs = {k: _FeatureSpec(info.features[k]) for k in self.keys}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop('_source', None)
        state.pop('_specs', None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return len(self._source)

    def __repr__(self) -> str:
        return f'SplitReader({self.tfds_name!r}, {self.split!r}, keys={self.keys})'

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Record `index` as a dict of numpy values (`signal` is (T, 12) float32, mV).

        Raises:
          DatasetReadError: the file holding it is damaged (see `raw`).
        """
        feature = tf_example_pb2.Example.FromString(self.raw(index)).features.feature
        out = {k: spec.decode(feature[k] if k in feature else None)
               for k, spec in self._specs.items()}
        if 'signal' in out:
            out['signal'] = out['signal'].reshape(-1, NUM_LEADS)
        if 'fs' in out and out['fs'] is None:
            out['fs'] = self.default_fs
        return out

    def raw(self, index: int) -> bytes:
        """The serialized example of record `index`, as ArrayRecord's reader
        returns it (checksums verified).

        Raises:
          DatasetReadError: the file holding it is damaged (names the file and
            the command that rebuilds the dataset).
        """
        try:
            return self._source[int(index)]
        except RuntimeError as e:
            # Riegeli (ArrayRecord's container) checks a hash per chunk.
            if 'Riegeli' not in str(e) and 'orrupt' not in str(e):
                raise
            raise DatasetReadError(
                f'dataset {self.tfds_name!r} in {self.data_dir}: {self._file_of(index)} is '
                f'damaged ({str(e).splitlines()[0][:120]}); rebuild it with '
                f'{build.build_command(self.tfds_name, self.data_dir)} --overwrite') from None

    def _file_of(self, index: int) -> str:
        """The ArrayRecord file holding record `index` (its split's files if unknown)."""
        # array_record's reader maps a key to its file only in private attributes.
        # pylint: disable=protected-access
        inner = getattr(self._source, 'data_source', None)
        try:
            reader_idx, _ = inner._reader_idx_and_position(int(index))
            return inner._read_instructions[reader_idx].filename
        except (AttributeError, IndexError, TypeError, ValueError):
            return f'a file of split {self.split!r}'

    def read(self, index: int) -> tuple[np.ndarray, float]:
        """(signal, fs) of record `index`: (T, 12) float32 in mV (may be read-only)."""
        ex = self[index]
        return ex['signal'], float(ex['fs'])


class _FeatureSpec:
    """Decodes one feature of a `tf.train.Example` the way its TFDS feature stored it."""

    def __init__(self, feature: Any):
        self.dtype = np.dtype(getattr(feature, 'np_dtype', None) or np.float32)
        encoding = getattr(feature, '_encoding', None)
        self.encoding = str(getattr(encoding, 'value', encoding or 'none'))
        self.scalar = tuple(getattr(feature, 'shape', ()) or ()) == ()

    def decode(self, value: Any) -> Any:
        if value is None:
            return None
        if self.encoding in ('bytes', 'zlib'):
            raw = value.bytes_list.value[0]
            if self.encoding == 'zlib':
                raw = zlib.decompress(raw)
            return np.frombuffer(raw, self.dtype)
        kind = value.WhichOneof('kind')
        if kind == 'bytes_list':
            items = [b.decode('utf-8') for b in value.bytes_list.value]
            return items[0] if self.scalar and items else items
        values = getattr(value, kind).value
        if self.scalar:  # a Python number: cheaper than a one-element array
            return self.dtype.type(values[0]) if len(values) else None
        # upb hands numpy one packed buffer for float and int64 lists
        return np.asarray(values, self.dtype)


def split_size(info: Any, name: str) -> int:
    """Records in split `name` of a built dataset (0 for a split recorded
    without shards or with an unknown count)."""
    try:
        return int(info.splits[name].num_examples or 0)
    except (KeyError, TypeError, ValueError):
        return 0


def present_splits(parts: Sequence[str], info: Any) -> list[str]:
    """The split names (optionally sliced: 'fold1[:10]') that hold records."""
    return [p for p in parts if split_size(info, p.split('[', 1)[0]) > 0]


def nonempty_splits(split: str, info: Any) -> str:
    """`split` without the '+'-joined parts that name a split holding no records.

    A build from a partial download (e.g. PTB-XL with some folds absent)
    records those folds as empty splits; reading them adds nothing but a
    warning per split. Expressions that name a split the build does not
    have, or whose parts are all empty, are returned unchanged (TFDS then
    says what is wrong).
    """
    parts = [p.strip() for p in split.split('+')]
    if any(p.split('[', 1)[0] not in info.splits for p in parts):
        return split
    return '+'.join(present_splits(parts, info)) or split


def open_source(source: sources_lib.Source | str, data_dir: str | None,
                split: str | None = None) -> SplitReader:
    """The reader of a registered source's split (default: its pre-training split).

    Args:
      source: a `Source` or its registered name.
      data_dir: TFDS data directory.
      split: split expression (default `source.train_split`).

    Returns:
      a `SplitReader` decoding `signal` and `fs`.
    """
    src = source if isinstance(source, sources_lib.Source) else sources_lib.get_source(source)
    return SplitReader(src.tfds_name, data_dir, split or src.train_split,
                       default_fs=src.native_fs)
