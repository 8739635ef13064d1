"""The mimic_iv_ecg TFDS dataset (see README.md).

Importing this package registers its source (no TensorFlow); the builder
class lives in `mimic_iv_ecg_dataset_builder`.
"""

from tfds_builders.registry import Source, register_source

register_source(Source('mimic_iv_ecg', 'mimic_iv_ecg', 500.0))
