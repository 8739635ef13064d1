"""Builder test of synthetic_ecg: real builds of the small configs into tmp_path.

(A plain pytest test rather than tfds.testing.DatasetBuilderTestCase, which
needs `dill`; nothing is downloaded, so there is no dummy_data either.)
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jepa_ecg.data import datasets
from jepa_ecg.data import sources
from jepa_ecg.ecg import synthetic
from jepa_ecg.ecg.leads import LEADS
from tfds_builders.synthetic_ecg import synthetic_ecg_dataset_builder


@pytest.mark.parametrize('config', ['tiny', 'tiny_varlen'])
@pytest.mark.parametrize('file_format', ['array_record', 'tfrecord'])
def test_build(tmp_path, config, file_format):
    builder = synthetic_ecg_dataset_builder.Builder(config=config, data_dir=str(tmp_path))
    assert builder.name == 'synthetic_ecg'
    builder.download_and_prepare(file_format=file_format)
    info = builder.info
    cfg = builder.builder_config
    assert {k: v.num_examples for k, v in info.splits.items()} == {'train': 32, 'test': 8}
    assert list(info.metadata['label_names']) == list(synthetic.LABELS)
    assert list(info.metadata['lead_names']) == list(LEADS)
    source = sources.Source('builder_test', f'synthetic_ecg/{config}', cfg.fs)
    if file_format == 'array_record':  # random access only (no tf.data reader)
        examples = builder.as_data_source('test')
        assert len(datasets.open_source(source, str(tmp_path))) == 32
    else:
        examples = tfds.as_numpy(builder.as_dataset(split='test'))
        # The pre-training pipeline needs random access and says so.
        with pytest.raises(ValueError, match='ArrayRecord'):
            datasets.open_source(source, str(tmp_path))
    for ex in examples:
        n = ex['signal'].shape[0]
        assert ex['signal'].shape[1] == 12 and ex['signal'].dtype == np.float32
        assert np.isfinite(ex['signal']).all()
        assert ex['fs'] == cfg.fs
        if isinstance(cfg.duration_s, tuple):
            assert cfg.duration_s[0] * cfg.fs - 1 <= n <= cfg.duration_s[1] * cfg.fs + 1
        else:
            assert n == cfg.duration_s * cfg.fs
        assert ex['labels'].shape == (len(synthetic.LABELS),)
        assert ex['labels'][ex['rhythm']] == 1


def test_registered_by_name(tmp_path):
    builder = tfds.builder('synthetic_ecg/tiny', data_dir=str(tmp_path))
    assert isinstance(builder, synthetic_ecg_dataset_builder.Builder)
    assert tfds.builder('synthetic_ecg', data_dir=str(tmp_path)).builder_config.name == 'small'
