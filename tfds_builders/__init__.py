"""TFDS builders of the ECG sources; importing this package registers them all.

    import tfds_builders  # registers ptb_xl, cinc2021, code15, mimic_iv_ecg,
                          # synthetic_ecg and their sources
    builder = tfds.builder('ptb_xl/records100', data_dir=...)
    tfds_builders.registry.get_source('ptb_xl')

Each builder module registers its TFDS builder and its `Source` entries
(`registry.register_source`), so adding a source is its builder folder plus
one import line below.
"""

from tfds_builders.cinc2021 import cinc2021_dataset_builder
from tfds_builders.code15 import code15_dataset_builder
from tfds_builders.mimic_iv_ecg import mimic_iv_ecg_dataset_builder
from tfds_builders.ptb_xl import ptb_xl_dataset_builder
from tfds_builders.synthetic_ecg import synthetic_ecg_dataset_builder

__all__ = [
    'cinc2021_dataset_builder',
    'code15_dataset_builder',
    'mimic_iv_ecg_dataset_builder',
    'ptb_xl_dataset_builder',
    'synthetic_ecg_dataset_builder',
]
