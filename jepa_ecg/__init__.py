"""jepa_ecg: ECG-JEPA self-supervised pre-training of ViTs on 12-lead ECGs in JAX/Flax.

The package import is cheap (no JAX, TensorFlow or Flax): the public entry
points are loaded on first use.

    import jepa_ecg
    enc = jepa_ecg.load_encoder('path/to/encoder')   # exported or imported encoder
    emb = enc.embed(signal, fs=500, leads=['I', 'II', ...])
    clf = jepa_ecg.load_classifier('path/to/classifier')   # fine-tuned
    probs = clf.predict(signal, fs=500, leads=['I', 'II', ...])
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = '0.1.0'

# name -> (module, attribute), resolved lazily by __getattr__ (PEP 562).
_LAZY = {
    'load_encoder': ('jepa_ecg.inference.runs', 'load_encoder'),
    'load_classifier': ('jepa_ecg.inference.runs', 'load_classifier'),
    'Encoder': ('jepa_ecg.inference.encoder', 'Encoder'),
    'read_record': ('jepa_ecg.ecg.files', 'read_record'),
}

__all__ = ['__version__', *_LAZY]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}') from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
