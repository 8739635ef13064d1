"""The files of a saved model directory: its JSON description and its params.

Encoder and classifier directories share them: a JSON file naming its
format and version, and `params.msgpack`, the float32 params pytree in
Flax's msgpack serialisation.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from flax import serialization
from flax.core import unfreeze

PARAMS_FILE = 'params.msgpack'


def to_numpy_tree(tree: Any) -> Any:
    """A params pytree (FrozenDicts included) as nested dicts of float32 numpy arrays."""
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), unfreeze(tree))


def write_params(path: str, params: Any) -> None:
    """Writes a params pytree as float32 msgpack, atomically (temp file + rename)."""
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        f.write(serialization.msgpack_serialize(to_numpy_tree(params)))
    os.replace(tmp, path)


def read_params(path: str) -> dict:
    with open(path, 'rb') as f:
        return serialization.msgpack_restore(f.read())


def read_model_doc(path: str, *, config_file: str, fmt: str, version: int, kind: str,
                   hint: str = '') -> tuple[str, dict]:
    """The directory and the parsed JSON description of a saved model directory.

    Args:
      path: the directory, or its JSON file.
      config_file: the JSON file's name.
      fmt: the `format` the file must declare.
      version: the newest format version this code reads.
      kind: 'encoder' or 'classifier', for messages.
      hint: how to make such a directory, for the not-found message.

    Raises:
      FileNotFoundError: `path` holds no `config_file`.
      ValueError: a file of another format or a newer version.
    """
    path = os.fspath(path)
    if os.path.isfile(path) and os.path.basename(path) == config_file:
        path = os.path.dirname(path) or '.'
    if not os.path.isfile(os.path.join(path, config_file)):
        raise FileNotFoundError(f'{path} is not a{"n" if kind[0] in "aeiou" else ""} {kind} '
                                f'directory (no {config_file})' + (f'; {hint}' if hint else ''))
    with open(os.path.join(path, config_file), encoding='utf-8') as f:
        doc = json.load(f)
    if doc.get('format') != fmt:
        raise ValueError(f'{path}/{config_file} is not a {fmt} file')
    if int(doc.get('version', 0)) > version:
        raise ValueError(f'{path} has {kind} format version {doc["version"]}; this '
                         f'jepa_ecg reads up to {version}: upgrade jepa_ecg')
    return path, doc
