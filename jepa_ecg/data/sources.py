"""The ECG sources the pipeline reads, and the published pre-training mixes.

Every source is registered by its own builder in `tfds_builders/` (see
`tfds_builders.registry`); importing this module imports `tfds_builders`, so
`SOURCES` holds them all. Adding a source is its builder folder plus one
import line in `tfds_builders/__init__.py` (and, for pre-training, its
weight in a mixture below).
"""

from __future__ import annotations

from typing import Mapping

import tfds_builders  # noqa: F401  (registers every builder's sources)
from tfds_builders.registry import SOURCES, Source, get_source

__all__ = ['MIXTURES', 'SOURCES', 'Source', 'get_source']

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
