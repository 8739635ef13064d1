"""Registry of ECG sources: one entry per TFDS dataset the pipeline can read.

Adding a source is one TFDS builder in `tfds_builders/` plus one `Source`
entry here (and, for pre-training, its weight in a mixture below).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping


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


PTBXL_TRAIN_FOLDS = '+'.join(f'fold{i}' for i in range(1, 9))

SOURCES: dict[str, Source] = {s.name: s for s in [
    Source('mimic_iv_ecg', 'mimic_iv_ecg', 500.0),
    Source('code15', 'code15', 400.0, highpass_hz=0.5),
    Source('ptb_xl', 'ptb_xl/records500', 500.0, train_split=PTBXL_TRAIN_FOLDS),
    Source('ptb_xl_100hz', 'ptb_xl/records100', 100.0,
           train_split=PTBXL_TRAIN_FOLDS),
    Source('ptb', 'cinc2021/ptb', 1000.0),
    Source('cpsc2018', 'cinc2021/cpsc2018', 500.0),
    Source('cpsc2018_extra', 'cinc2021/cpsc2018_extra', 500.0),
    Source('georgia', 'cinc2021/georgia', 500.0),
    Source('ningbo', 'cinc2021/ningbo', 500.0),
    Source('chapman_shaoxing', 'cinc2021/chapman_shaoxing', 500.0),
    Source('st_petersburg', 'cinc2021/st_petersburg', 257.0, highpass_hz=0.5),
    Source('synthetic', 'synthetic_ecg', 500.0),
]}

# Sampling weights of the published pre-training mixes.
MIXTURES: dict[str, Mapping[str, float]] = {
    'all': {
        'mimic_iv_ecg': 0.7,
        'code15': 0.1,
        'ptb_xl': 0.05,
        'ptb': 0.01875,
        'cpsc2018': 0.025,
        'cpsc2018_extra': 0.0125,
        'georgia': 0.0375,
        'ningbo': 0.028125,
        'chapman_shaoxing': 0.009375,
        'st_petersburg': 0.01875,
    },
    'mimic': {'mimic_iv_ecg': 1.0},
    'ptbxl': {'ptb_xl': 1.0},
    'ptbxl_100hz': {'ptb_xl_100hz': 1.0},
    'synthetic': {'synthetic': 1.0},
}


def get_source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise KeyError(f'unknown source {name!r}; known: {sorted(SOURCES)}') from None
