"""`jepa-ecg export`: pre-training workdir -> self-contained encoder directory."""

import json
import os

import jax
import numpy as np
import pytest

import jepa_ecg
from jepa_ecg import cli
from jepa_ecg.inference import encoder as encoder_lib
from jepa_ecg.data.stats import mix_lead_stats
from jepa_ecg.inference import runs
from jepa_ecg.training import jepa_step as jepa
from jepa_ecg.ecg.leads import LEADS
from jepa_ecg.training import checkpoint, optim
from jepa_ecg.models.config import model_config_from

STATS = {'mean': [0.1] * 12, 'std': [0.2] * 12}


@pytest.fixture(scope='module')
def pretrain_workdir(tmp_path_factory):
    """A workdir as experiments/pretrain.py leaves it (config.json + Orbax checkpoint)."""
    from experiments.configs.pretrain import get_config
    workdir = str(tmp_path_factory.mktemp('pre'))
    config = get_config('vit_tiny,synthetic,100hz,smoke')
    config.data.data_dir = os.path.join(workdir, 'no-tfds-here')
    cfg = model_config_from(config)
    tx = optim.make_optimizer(config, optim.make_schedules(config))
    state = jepa.init_train_state(jax.random.PRNGKey(0), cfg, tx)
    # Make the EMA target differ from the context encoder: export must pick the target.
    state = state.replace(target_params=jax.tree_util.tree_map(lambda a: a + 0.01,
                                                               state.target_params))
    manager = checkpoint.make_manager(workdir, save_every=1, async_save=False)
    checkpoint.save(manager, 7, state, {'model': cfg.to_dict(), 'step': 7, 'data_step': 7},
                    force=True)
    manager.wait_until_finished()
    manager.close()
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
        json.dump({'config': config.to_dict(), 'model': cfg.to_dict()}, f, default=str)
    return workdir, cfg, jax.device_get(state)


def test_export_writes_a_small_self_contained_encoder(pretrain_workdir, tmp_path, capsys):
    workdir, cfg, state = pretrain_workdir
    stats = tmp_path / 'stats.json'
    stats.write_text(json.dumps({**STATS, 'source': 'unit test'}))
    out = tmp_path / 'enc'
    assert cli.main(['export', workdir, '--out', str(out), '--stats', str(stats)]) == 0
    assert 'wrote' in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ['encoder.json', 'params.msgpack']
    doc = json.loads((out / 'encoder.json').read_text())
    assert doc['provenance']['step'] == 7 and doc['provenance']['weights'] == 'target'
    assert doc['lead_stats']['source'] == 'unit test'
    enc = jepa_ecg.load_encoder(str(out))
    assert enc.config == cfg
    want = jax.tree_util.tree_leaves(state.target_params)
    got = jax.tree_util.tree_leaves(enc.params)
    assert len(want) == len(got)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(np.asarray(w), g)
    # The context encoder on request.
    assert cli.main(['export', workdir, '--out', str(tmp_path / 'ctx'), '--weights', 'context',
                     '--stats', str(stats)]) == 0
    ctx = jepa_ecg.load_encoder(str(tmp_path / 'ctx'))
    np.testing.assert_array_equal(ctx.params['norm']['scale'],
                                  np.asarray(state.params['encoder']['norm']['scale']))


def test_export_finds_source_statistics_or_says_what_to_do(pretrain_workdir, tmp_path, capsys):
    workdir, _, _ = pretrain_workdir
    # No statistics computed: exported anyway, with a clear warning.
    assert cli.main(['export', workdir, '--out', str(tmp_path / 'a')]) == 0
    assert '--normalize=record' in capsys.readouterr().err
    enc = jepa_ecg.load_encoder(str(tmp_path / 'a'))
    assert enc.lead_stats is None
    x = np.random.default_rng(0).normal(size=(1000, 12)).astype(np.float32)
    assert enc.embed(x, 100, list(LEADS), normalize='record').mean.shape == (1, 32)
    # Statistics stored where jepa_ecg.data.source_stats writes them are picked up.
    from jepa_ecg.data import source_stats as stats_lib
    data_dir = str(tmp_path / 'tfds')
    stats_lib.stats_path('synthetic', data_dir).parent.mkdir(parents=True)  # as if built
    stats_lib.save_lead_stats({**STATS, 'count': 1}, 'synthetic', data_dir)
    assert cli.main(['export', workdir, '--out', str(tmp_path / 'b'), '--data-dir',
                     data_dir]) == 0
    enc = jepa_ecg.load_encoder(str(tmp_path / 'b'))
    np.testing.assert_allclose(enc.lead_stats.std, STATS['std'], rtol=1e-6)
    assert 'synthetic' in enc.lead_stats.source


def test_mixture_statistics_pool_the_sources():
    a = {'mean': [0.0] * 12, 'std': [1.0] * 12}
    b = {'mean': [2.0] * 12, 'std': [1.0] * 12}
    mixed = mix_lead_stats({'a': a, 'b': b}, {'a': 0.5, 'b': 0.5})
    np.testing.assert_allclose(mixed.mean, 1.0)
    np.testing.assert_allclose(mixed.std, np.sqrt(2.0))  # within 1 + between 1


def test_workdir_loads_directly_and_finetune_resolves_the_export(pretrain_workdir, tmp_path):
    workdir, cfg, state = pretrain_workdir
    direct = jepa_ecg.load_encoder(workdir)
    np.testing.assert_array_equal(direct.params['registers'],
                                  np.asarray(state.target_params['registers']))
    runs.export_encoder(workdir, str(tmp_path / 'e'), lead_stats=STATS)
    from experiments.configs.finetune import get_config
    from jepa_ecg.inference import resolve
    source = resolve.resolve_encoder(str(tmp_path / 'e'), get_config('linear,smoke'),
                                     task='all')
    assert source.config == cfg
    np.testing.assert_array_equal(source.encoder_params['norm']['scale'],
                                  direct.params['norm']['scale'])


def test_load_encoder_rejects_mismatched_params(tmp_path):
    from jepa_ecg.models import build_encoder, model_config
    cfg = model_config('tiny', fs=100)
    params = build_encoder(cfg).init(jax.random.PRNGKey(0),
                                     np.zeros((1, 1000, 12), np.float32))['params']
    bad = dict(params)
    bad.pop('norm')
    with pytest.raises(ValueError, match='norm'):
        encoder_lib.save_encoder(str(tmp_path / 'x'), cfg, bad)
    with pytest.raises(FileNotFoundError, match='export'):
        runs.load_encoder(str(tmp_path / 'nothing'))
