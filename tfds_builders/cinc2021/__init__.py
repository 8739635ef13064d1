"""The cinc2021 TFDS dataset (see README.md).

Importing this package registers its sources (no TensorFlow); the builder
class lives in `cinc2021_dataset_builder`.
"""

from tfds_builders.registry import Source, register_source

register_source(Source('ptb', 'cinc2021/ptb', 1000.0))
register_source(Source('cpsc2018', 'cinc2021/cpsc2018', 500.0))
register_source(Source('cpsc2018_extra', 'cinc2021/cpsc2018_extra', 500.0))
register_source(Source('georgia', 'cinc2021/georgia', 500.0))
register_source(Source('ningbo', 'cinc2021/ningbo', 500.0))
register_source(Source('chapman_shaoxing', 'cinc2021/chapman_shaoxing', 500.0))
register_source(Source('st_petersburg', 'cinc2021/st_petersburg', 257.0, highpass_hz=0.5))
