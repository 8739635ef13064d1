"""The source registry: every builder registers its own sources."""

import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from jepa_ecg.data import sources
from tfds_builders import build, registry

_TRAIN_FOLDS = 'fold1+fold2+fold3+fold4+fold5+fold6+fold7+fold8'

# The table jepa_ecg/data/sources.py held before the builders registered
# their own entries: the values must not drift.
EXPECTED = {
    'mimic_iv_ecg': registry.Source('mimic_iv_ecg', 'mimic_iv_ecg', 500.0),
    'code15': registry.Source('code15', 'code15', 400.0, highpass_hz=0.5),
    'ptb_xl': registry.Source('ptb_xl', 'ptb_xl/records500', 500.0,
                              train_split=_TRAIN_FOLDS),
    'ptb_xl_100hz': registry.Source('ptb_xl_100hz', 'ptb_xl/records100', 100.0,
                                    train_split=_TRAIN_FOLDS),
    'ptb': registry.Source('ptb', 'cinc2021/ptb', 1000.0),
    'cpsc2018': registry.Source('cpsc2018', 'cinc2021/cpsc2018', 500.0),
    'cpsc2018_extra': registry.Source('cpsc2018_extra',
                                      'cinc2021/cpsc2018_extra', 500.0),
    'georgia': registry.Source('georgia', 'cinc2021/georgia', 500.0),
    'ningbo': registry.Source('ningbo', 'cinc2021/ningbo', 500.0),
    'chapman_shaoxing': registry.Source('chapman_shaoxing',
                                        'cinc2021/chapman_shaoxing', 500.0),
    'st_petersburg': registry.Source('st_petersburg', 'cinc2021/st_petersburg',
                                     257.0, highpass_hz=0.5),
    'synthetic': registry.Source('synthetic', 'synthetic_ecg', 500.0),
}


def test_every_builder_registered_its_sources():
    assert registry.SOURCES == EXPECTED


def test_data_sources_reexports_the_registry():
    assert sources.SOURCES is registry.SOURCES
    assert sources.Source is registry.Source
    assert sources.get_source is registry.get_source
    assert sources.get_source('code15') == EXPECTED['code15']
    # Every mixture names registered sources only.
    for weights in sources.MIXTURES.values():
        assert set(weights) <= set(registry.SOURCES)


def test_sources_name_registered_tfds_builders():
    # The builder classes register with TFDS when `build` imports them.
    assert build.OFFLINE_DATASETS
    for source in registry.SOURCES.values():
        name, _, config = source.tfds_name.partition('/')
        builder_cls = tfds.builder_cls(name)
        if config:
            assert config in builder_cls.builder_configs, source


def test_unknown_source_lists_the_known_ones():
    with pytest.raises(KeyError, match="unknown source 'nope'.*ptb_xl"):
        registry.get_source('nope')


def test_register_source_refuses_a_conflicting_entry(monkeypatch):
    monkeypatch.setattr(registry, 'SOURCES', dict(registry.SOURCES))
    # Loading a builder module twice (`tfds build` by path) registers equal
    # entries again: a no-op.
    same = registry.Source('code15', 'code15', 400.0, highpass_hz=0.5)
    assert registry.register_source(same) is same
    with pytest.raises(ValueError, match='code15'):
        registry.register_source(registry.Source('code15', 'code15', 500.0))
    new = registry.register_source(registry.Source('new_src', 'code15', 400.0))
    assert registry.get_source('new_src') is new



def test_the_source_registry_imports_without_tensorflow():
    # Configs, the CLI and the registry lookups must not pay TensorFlow's import.
    code = ('import sys; from jepa_ecg.data import sources; '
            'assert len(sources.SOURCES) >= 11, sources.SOURCES; '
            'print(sorted(m for m in sys.modules if m.split(".")[0] in '
            '("tensorflow", "tensorflow_datasets")))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == '[]'
