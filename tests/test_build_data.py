"""Datasets are built by the entry points (experiments/build_data.py), never
by the data layer, which only opens them and names the build command."""

import os

import pytest

from experiments import build_data
from experiments.configs.pretrain import get_config
from jepa_ecg.data import pretrain, source_stats
from jepa_ecg.data.sources import Source
from jepa_ecg.models.config import model_config_from
from jepa_ecg.training import jepa_loop
from tfds_builders import build

TINY = Source('build_data_tiny', 'synthetic_ecg/tiny', 500.0)


def test_the_data_layer_opens_but_never_builds(tmp_path):
    config = get_config('vit_tiny,synthetic,100hz,smoke')
    config.data.data_dir = str(tmp_path)
    with pytest.raises(build.DatasetNotBuiltError,
                       match=f'python -m tfds_builders synthetic_ecg --data_dir={tmp_path}'):
        jepa_loop.make_input_iterator(config, model_config_from(config), 0)
    assert os.listdir(tmp_path) == []


def test_entry_points_build_the_offline_source_and_its_statistics(tmp_path):
    data_dir = str(tmp_path)
    build_data.sources_of({TINY.name: 1.0}, data_dir, sources={TINY.name: TINY})
    assert build.is_built(TINY.tfds_name, data_dir)
    assert len(source_stats.load_lead_stats(TINY, data_dir)['mean']) == 12
    # Now the pipeline opens it.
    with pretrain.make_pretrain_iterator(
            {TINY.name: 1.0}, data_dir=data_dir, sources={TINY.name: TINY},
            global_batch_size=2, fs=100.0, window_seconds=2.0, patch_size=5,
            seed=0, num_threads=1) as it:
        assert next(it)['signal'].shape == (2, 200, 12)


def test_one_raw_folder_names_one_real_source(tmp_path):
    with pytest.raises(build_data.BuildConfigError, match='one source'):
        build_data.sources_of({'ptb_xl': 0.5, 'code15': 0.5}, str(tmp_path),
                              manual_dir=str(tmp_path))
