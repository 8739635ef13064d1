"""Registry of ECG sources: one entry per TFDS dataset the pipeline can read.

Each builder module registers its own `Source` entries next to its builder,
so adding a source is its builder folder plus one import line in
`tfds_builders/__init__.py`. Readers look sources up by name with
`get_source` (also importable from `jepa_ecg.data.sources`).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Source:
    """How to read one source.

    Attributes:
        name: short key used in configs and mixtures.
        tfds_name: `builder/config` name registered by `tfds_builders`.
        native_fs: sampling rate the records are stored at (Hz); None when it
            varies per record (the example's `fs` feature then says).
        train_split: TFDS split expression for the pre-training/statistics split.
        highpass_hz: cut-off of the zero-phase Butterworth high-pass applied
            before anything else, or None.
    """
    name: str
    tfds_name: str
    native_fs: float | None
    train_split: str = 'train'
    highpass_hz: float | None = None


# name -> Source, in registration order. Filled by the builder modules.
SOURCES: dict[str, Source] = {}


def register_source(source: Source) -> Source:
    """Adds `source` to `SOURCES`.

    Registering an equal entry again is a no-op: `tfds build` loads a
    builder file a second time under another module name.

    Args:
      source: the entry.

    Returns:
      `source`.

    Raises:
      ValueError: another, different source already has that name.
    """
    known = SOURCES.get(source.name)
    if known is not None and known != source:
        raise ValueError(f'source {source.name!r} is registered twice: '
                         f'{known} and {source}')
    SOURCES[source.name] = source
    return source


def get_source(name: str) -> Source:
    """The registered source called `name`.

    Args:
      name: a key of `SOURCES`, e.g. 'ptb_xl'.

    Returns:
      Its `Source`.

    Raises:
      KeyError: unknown name; the message lists the known ones.
    """
    try:
        return SOURCES[name]
    except KeyError:
        raise KeyError(f'unknown source {name!r}; known: {sorted(SOURCES)}') from None
