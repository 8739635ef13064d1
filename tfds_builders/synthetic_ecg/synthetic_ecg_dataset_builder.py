"""synthetic_ecg: procedurally generated 12-lead ECGs (see jepa_ecg.ecg.synthetic).

Needs no download, so `make demo`, the Colab quick start and the tests can
run offline. Records have the core features of every source, declared and
stored exactly as the real builders store them (`tfds_builders.features`),
so the offline default exercises the real decoding path; they add multi-hot
`labels` over `info.metadata['label_names']`, the `rhythm` class and the
`heart_rate`. Registers the source `synthetic`.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import numpy as np
import tensorflow_datasets as tfds

from jepa_ecg.ecg import synthetic
from jepa_ecg.ecg.leads import LEADS

from tfds_builders import base, features


@dataclasses.dataclass
class SyntheticEcgConfig(tfds.core.BuilderConfig):
    """Size and format of one synthetic dataset.

    Attributes:
      fs: sampling rate (Hz).
      duration_s: record length in seconds, or a (min, max) range drawn per
        record (records of varying length exercise cropping and dropping).
      num_train: records in `train`.
      num_test: records in `test`.
      seed: generator seed; `test` uses record indices after `train`'s, so
        the splits never share a record.
    """
    fs: float = 500.0
    duration_s: float | Tuple[float, float] = 10.0
    num_train: int = 512
    num_test: int = 128
    seed: int = 0


class Builder(base.LoggedBuildMixin, tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for synthetic_ecg."""

    name = 'synthetic_ecg'
    VERSION = tfds.core.Version('1.1.0')
    RELEASE_NOTES = {
        '1.0.0': 'Initial release.',
        '1.1.0': 'signal stored as raw bytes and core features declared '
                 'as the real sources declare them.',
    }
    BUILDER_CONFIGS = [
        SyntheticEcgConfig(name='small', description='512/128 records, 500 Hz, 10 s.'),
        SyntheticEcgConfig(name='large', description='4096/512 records, 500 Hz, 10 s.',
                           num_train=4096, num_test=512),
        SyntheticEcgConfig(name='small_400hz',
                           description='512/128 records stored at 400 Hz, 10 s '
                           '(exercises resampling).', fs=400.0),
        SyntheticEcgConfig(name='tiny', description='32/8 records, 500 Hz, 10 s.',
                           num_train=32, num_test=8),
        SyntheticEcgConfig(name='tiny_varlen',
                           description='32/8 records, 500 Hz, 4-30 s '
                           '(exercises cropping and short-record dropping).',
                           duration_s=(4.0, 30.0), num_train=32, num_test=8),
        SyntheticEcgConfig(name='tiny_257hz',
                           description='8/2 records, 257 Hz, 60 s (INCART-like long '
                           'records: crop, high-pass and resampling).',
                           fs=257.0, duration_s=60.0, num_train=8, num_test=2),
    ]
    DEFAULT_CONFIG_NAME = 'small'
    # How the signal is stored: the real sources' encoding. A subclass may
    # change it to test a reader's other decoding paths.
    SIGNAL_ENCODING = features.SIGNAL_ENCODING

    def _info(self) -> tfds.core.DatasetInfo:
        feature_specs = features.core_features(self.SIGNAL_ENCODING)
        feature_specs.update({
            'labels': tfds.features.Tensor(shape=(len(synthetic.LABELS),),
                                           dtype=np.int32),
            'rhythm': tfds.features.ClassLabel(names=list(synthetic.RHYTHMS)),
            'heart_rate': tfds.features.Scalar(dtype=np.float32),
        })
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(feature_specs),
            supervised_keys=('signal', 'labels'),
            homepage='https://github.com/kweimann/ECG-JEPA',
            metadata=tfds.core.MetadataDict(
                label_names=list(synthetic.LABELS),
                rhythm_names=list(synthetic.RHYTHMS),
                morphology_names=list(synthetic.MORPHOLOGIES),
                lead_names=list(LEADS),
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download
        cfg = self.builder_config
        return {
            'train': self._generate_examples(0, cfg.num_train),
            'test': self._generate_examples(cfg.num_train, cfg.num_test),
        }

    def _generate_examples(self, start: int, count: int):
        cfg = self.builder_config
        duration = (tuple(cfg.duration_s) if isinstance(cfg.duration_s, (tuple, list))
                    else cfg.duration_s)
        for rec in synthetic.generate_records(cfg.seed, start, count, fs=cfg.fs,
                                              duration_s=duration):
            example = features.core_example(rec['record_id'], rec['signal'],
                                            rec['fs'], rec['age'], rec['sex'])
            example.update({
                'labels': rec['labels'],
                'rhythm': rec['rhythm'],
                'heart_rate': np.float32(rec['heart_rate']),
            })
            yield rec['record_id'], example


