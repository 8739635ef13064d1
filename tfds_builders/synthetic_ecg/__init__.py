"""Procedurally generated 12-lead ECG dataset (offline default for demos and tests).

Importing this package registers its source (no TensorFlow); the builder
class lives in `synthetic_ecg_dataset_builder`.
"""

from tfds_builders.registry import Source, register_source

register_source(Source('synthetic', 'synthetic_ecg', 500.0))
