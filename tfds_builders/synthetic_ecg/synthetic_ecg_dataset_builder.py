"""synthetic_ecg: procedurally generated 12-lead ECGs (see jepa_ecg.data.synthetic).

Needs no download, so `make demo`, the Colab quick start and the tests can
run offline. Records follow the contract every pre-training source follows
(`signal` (T, 12) float32 mV in canonical lead order, `fs`, `record_id`,
`age`, `sex`) and add multi-hot `labels` over
`info.metadata['label_names']`, the `rhythm` class and the `heart_rate`.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import numpy as np
import tensorflow_datasets as tfds

from jepa_ecg.data import synthetic
from jepa_ecg.leads import LEADS


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


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for synthetic_ecg."""

    name = 'synthetic_ecg'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release.'}
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
    # How the signal is stored in the tf.train.Example: NONE (a float_list),
    # as the real sources' builders store it, so the offline source exercises
    # the same decoding path. (With protobuf's upb backend a 60k-value
    # float_list converts to numpy as fast as a raw bytes buffer.)
    SIGNAL_ENCODING = tfds.features.Encoding.NONE

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                'signal': tfds.features.Tensor(
                    shape=(None, len(LEADS)), dtype=np.float32,
                    encoding=self.SIGNAL_ENCODING,
                    doc=f'mV, leads {", ".join(LEADS)}, native rate'),
                'fs': tfds.features.Scalar(dtype=np.float32),
                'record_id': tfds.features.Text(),
                'age': tfds.features.Scalar(dtype=np.float32),
                'sex': tfds.features.Scalar(dtype=np.int32),
                'labels': tfds.features.Tensor(shape=(len(synthetic.LABELS),),
                                               dtype=np.int32),
                'rhythm': tfds.features.ClassLabel(names=list(synthetic.RHYTHMS)),
                'heart_rate': tfds.features.Scalar(dtype=np.float32),
            }),
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
            yield rec['record_id'], {
                'signal': rec['signal'],
                'fs': np.float32(rec['fs']),
                'record_id': rec['record_id'],
                'age': np.float32(rec['age']),
                'sex': np.int32(rec['sex']),
                'labels': rec['labels'],
                'rhythm': rec['rhythm'],
                'heart_rate': np.float32(rec['heart_rate']),
            }
