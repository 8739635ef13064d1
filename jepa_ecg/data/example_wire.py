"""A record's signal straight from its serialized `tf.train.Example`.

Parsing the whole message copies the signal twice (into the message, then
into a Python `bytes`) before numpy sees it. Walking the protobuf wire format
to the `signal` and `fs` features costs a few tag reads, and the signal comes
back as a numpy view of the record's own bytes. The bytes are the ones
ArrayRecord's reader returned after checking their checksums; a layout this
walker does not recognise gives None and the caller parses the message.

    decoder = SignalDecoder(reader)      # a datasets.SplitReader
    signal, fs = decoder(index)          # reader[index]['signal'], ['fs']
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jepa_ecg.ecg.leads import NUM_LEADS

_LEN, _FIXED32 = 2, 5
_BYTES_LIST, _FLOAT_LIST = 1, 2


class _Unrecognised(Exception):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    if b < 0x80:  # the common case: one byte
        return b, pos + 1
    result, shift = b & 0x7F, 7
    while True:
        pos += 1
        b = buf[pos]
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos + 1
        shift += 7
        if shift > 63:
            raise _Unrecognised


def _fields(buf: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each field in buf[start:end]."""
    out, pos = [], start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _LEN:
            size, pos = _varint(buf, pos)
            out.append((number, wire, pos, pos + size))
            pos += size
        elif wire == _FIXED32:
            out.append((number, wire, pos, pos + 4))
            pos += 4
        else:
            raise _Unrecognised
    if pos != end:
        raise _Unrecognised
    return out


def _entry(buf: bytes, start: int, end: int) -> tuple[bytes | None, tuple[int, int] | None]:
    """(key, (start, end) of the value) of one map entry of Features.feature."""
    key = value = None
    if buf[start] == 0x0A:  # the key first, as protobuf writes it: skip the value unless wanted
        size, pos = _varint(buf, start + 1)
        key = buf[pos:pos + size]
        rest = _fields(buf, pos + size, end) if pos + size < end else []
    else:
        rest = _fields(buf, start, end)
    for number, wire, s, e in rest:
        if number == 1 and wire == _LEN:
            key = buf[s:e]
        elif number == 2 and wire == _LEN:
            value = (s, e)
    return key, value


def _features(buf: bytes, wanted: tuple[bytes, ...]) -> dict[bytes, tuple[int, int, int]]:
    """name -> (list kind, start, end) of the wanted features of an Example."""
    found = {}
    for number, wire, s, e in _fields(buf, 0, len(buf)):
        if number != 1 or wire != _LEN:  # Example.features
            continue
        pos = s
        while pos < e:  # Features.feature: map entries, field 1
            tag = buf[pos]
            if tag != 0x0A:
                raise _Unrecognised
            size = buf[pos + 1]
            if size < 0x80:  # short entries: no call
                pos += 2
            else:
                size, pos = _varint(buf, pos + 1)
            entry_end = pos + size
            if size:
                key = buf[pos + 2:pos + 2 + buf[pos + 1]] if buf[pos] == 0x0A else None
                if key is None or key in wanted:
                    key, value = _entry(buf, pos, entry_end)
                    if key in wanted and value is not None:
                        kinds = [(n, s2, e2) for n, w, s2, e2 in _fields(buf, *value)
                                 if w == _LEN]
                        if len(kinds) != 1:
                            raise _Unrecognised
                        found[key] = kinds[0]
            pos = entry_end
        if pos != e:
            raise _Unrecognised
    return found


def signal_and_fs(buf: bytes) -> tuple[np.ndarray, float | None] | None:
    """(signal (T, 12) float32 view of `buf`, fs or None) of a serialized
    Example whose `signal` is one raw float32 bytes value, or None when the
    record is not laid out so."""
    try:
        found = _features(buf, (b'signal', b'fs'))
        kind, s, e = found[b'signal']
        values = list(_fields(buf, s, e))
        if kind != _BYTES_LIST or len(values) != 1 or values[0][:2] != (1, _LEN):
            return None
        _, _, vs, ve = values[0]
        if (ve - vs) % (4 * NUM_LEADS):
            return None
        signal = np.frombuffer(buf, '<f4', count=(ve - vs) // 4, offset=vs)
        fs = None
        if b'fs' in found:
            kind, s, e = found[b'fs']
            floats = list(_fields(buf, s, e))
            if kind != _FLOAT_LIST or len(floats) != 1 or floats[0][0] != 1:
                return None
            _, _, fs_start, fs_end = floats[0]
            if fs_end - fs_start != 4:
                return None
            fs = np.frombuffer(buf, '<f4', count=1, offset=fs_start)[0]
        return signal.reshape(-1, NUM_LEADS), fs
    except (_Unrecognised, IndexError, KeyError, ValueError):
        return None


class SignalDecoder:
    """A record's `signal` and `fs` as `reader[index]` decodes them, without
    parsing the whole message where the dataset's layout allows (checked
    once against the full parse).

    Attributes:
      fast: whether the wire-format path is in use.
    """

    def __init__(self, reader: Any):
        self.reader = reader
        self.fast = len(reader) > 0 and self._agrees(0)

    def _agrees(self, index: int) -> bool:
        got = signal_and_fs(self.reader.raw(index))
        if got is None:
            return False
        ex = self.reader[index]
        fs = got[1] if got[1] is not None else self.reader.default_fs
        return (got[0].dtype == ex['signal'].dtype and np.array_equal(got[0], ex['signal'])
                and type(fs) is type(ex['fs']) and fs == ex['fs'])

    def __call__(self, index: int) -> tuple[np.ndarray, Any]:
        """(signal, fs) of record `index`: `reader[index]`'s values and types."""
        if self.fast:
            got = signal_and_fs(self.reader.raw(index))
            if got is not None:
                return got[0], got[1] if got[1] is not None else self.reader.default_fs
        ex = self.reader[index]
        return ex['signal'], ex['fs']
