"""TFDS builders of the ECG sources.

    import tfds_builders          # registers every source (no TensorFlow)
    tfds_builders.registry.get_source('ptb_xl')
    from tfds_builders import build   # the builders themselves (TFDS)
    build.build_dataset('ptb_xl/records100', data_dir, manual_dir=...)

Each builder folder's `__init__.py` registers its `Source` entries; its
`*_dataset_builder.py` holds the TFDS builder class, imported by
`tfds_builders.build` (and so by anything that builds or opens a dataset).
Adding a source is its builder folder plus one import line here and one in
`build.py`.
"""

from tfds_builders import cinc2021, code15, mimic_iv_ecg, ptb_xl, synthetic_ecg

__all__ = ['cinc2021', 'code15', 'mimic_iv_ecg', 'ptb_xl', 'synthetic_ecg']
