"""The code15 TFDS dataset (see README.md).

Importing this package registers its source (no TensorFlow); the builder
class lives in `code15_dataset_builder`.
"""

from tfds_builders.registry import Source, register_source

register_source(Source('code15', 'code15', 400.0, highpass_hz=0.5))
