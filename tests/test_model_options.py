"""ModelConfig.init ('trunc_normal' | 'xavier') and ModelConfig.norm_bias.

'xavier' is torch's xavier-uniform on every Linear/Conv kernel of the
encoder, predictor and heads (no depth scaling); norm_bias gives every
LayerNorm a bias whatever `bias` says. Both reproduce the official first
release; the defaults are the later code.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_ecg.inference import encoder as encoder_lib
from jepa_ecg.models import build_encoder, build_predictor, model_config
from jepa_ecg.models.classifier import build_classifier, init_classifier
from jepa_ecg.models.config import ModelConfig, model_config_from
from jepa_ecg.training import jepa_step, optim


def _flat(tree):
    return {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _kernels(cfg, prefix, depth):
    """{name: (torch fan_in, fan_out)} of the kernels of a stack of blocks."""
    d = cfg.dim if prefix == 'encoder' else cfg.pred_dim
    h = int(d * cfg.mlp_ratio)
    out = {}
    for i in range(depth):
        b = f'{prefix}/blocks_{i}'
        out.update({f'{b}/attn/qkv/kernel': (d, 3 * d), f'{b}/attn/proj/kernel': (d, d),
                    f'{b}/mlp/fc1/kernel': (d, h), f'{b}/mlp/fc2/kernel': (h, d)})
    return out


def all_kernels(cfg):
    """Every kernel of encoder + predictor with its torch fans."""
    k = {'encoder/patch_embed/kernel': (cfg.num_leads * cfg.patch_size,
                                        cfg.dim * cfg.patch_size),
         'predictor/embed/kernel': (cfg.dim, cfg.pred_dim),
         'predictor/proj/kernel': (cfg.pred_dim, cfg.dim)}
    k.update(_kernels(cfg, 'encoder', cfg.depth))
    k.update(_kernels(cfg, 'predictor', cfg.pred_depth))
    return k


def check_xavier(w, fan_in, fan_out, name):
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(w).max() <= bound * (1 + 1e-6), name
    assert np.abs(w).max() > 0.95 * bound, name  # uniform: reaches near the bound
    if w.size >= 10_000:
        var = 2.0 / (fan_in + fan_out)
        assert abs(w.var() / var - 1) < 0.15, (name, w.var(), var)
        assert abs(w.mean()) < 0.05 * math.sqrt(var), name


@pytest.fixture(scope='module')
def xs_params():
    out = {}
    for init in ('trunc_normal', 'xavier'):
        cfg = model_config('XS', fs=500, init=init)
        out[init] = cfg, _flat(jepa_step.init_params(jax.random.PRNGKey(0), cfg))
    return out


@pytest.mark.slow
def test_xavier_bounds_and_variances_per_layer(xs_params):
    cfg, flat = xs_params['xavier']
    kernels = all_kernels(cfg)
    assert set(kernels) == {k for k in flat if k.endswith('kernel')}
    for name, (fi, fo) in kernels.items():
        if name == 'encoder/patch_embed/kernel':  # rows p * leads + c of the Conv1d
            assert flat[name].shape == (cfg.num_leads * cfg.patch_size, cfg.dim)
        else:
            assert flat[name].shape == (fi, fo), name
        check_xavier(flat[name], fi, fo, name)
    # No depth scaling: the residual projections have the unscaled xavier
    # variance, well above trunc-normal 0.02 / sqrt(2 * depth) would give.
    fc2 = flat['encoder/blocks_0/mlp/fc2/kernel']
    assert fc2.std() > 2 * 0.02 / math.sqrt(2 * cfg.depth)
    # The patch embedding counts the kernel width in both fans, as Conv1d does.
    pe = flat['encoder/patch_embed/kernel']
    assert np.abs(pe).max() < math.sqrt(6.0 / (cfg.num_leads * cfg.patch_size + cfg.dim))


def test_default_init_is_trunc_normal_with_depth_scaling(xs_params):
    cfg, flat = xs_params['trunc_normal']
    res_std = 0.02 / math.sqrt(2 * cfg.depth)
    for name in all_kernels(cfg):
        residual = name.endswith(('attn/proj/kernel', 'mlp/fc2/kernel'))
        want = res_std if residual else 0.02
        w = flat[name]
        assert abs(w.std() / want - 1) < (0.05 if w.size >= 10_000 else 0.15), (name, w.std())


def test_tokens_are_trunc_normal_in_both_modes(xs_params):
    (_, tn), (_, xa) = xs_params['trunc_normal'], xs_params['xavier']
    for name in ('encoder/registers', 'predictor/mask_token'):
        np.testing.assert_array_equal(tn[name], xa[name])
        assert 0.015 < tn[name].std() < 0.025
    for name in ('encoder/norm/scale', 'predictor/blocks_0/norm1/scale'):
        np.testing.assert_array_equal(xa[name], 1.0)


@pytest.mark.slow
@pytest.mark.parametrize('head', ['attentive', 'register'])
def test_heads_follow_the_encoder_init(head):
    cfg = model_config('XS', fs=100, init='xavier')
    flat = _flat(init_classifier(build_classifier(cfg, 64, head=head),
                                 jax.random.PRNGKey(1), 250))
    d = cfg.dim
    want = ({'head/q/kernel': (d, d), 'head/kv/kernel': (d, 2 * d),
             'head/proj/kernel': (d, 64)} if head == 'attentive' else
            {'head/kernel': (d, 64)})
    assert want.keys() == {k for k in flat if k.startswith('head/') and k.endswith('kernel')}
    for name, (fi, fo) in want.items():
        assert flat[name].shape == (fi, fo)
        check_xavier(flat[name], fi, fo, name)
    if head == 'attentive':
        tn = _flat(init_classifier(build_classifier(model_config('XS', fs=100), 64, head=head),
                                   jax.random.PRNGKey(1), 250))
        np.testing.assert_array_equal(flat['head/query_token'], tn['head/query_token'])
        assert abs(tn['head/kv/kernel'].std() / 0.02 - 1) < 0.05


def test_unknown_init_is_refused():
    with pytest.raises(ValueError, match="unknown init 'kaiming'"):
        model_config('tiny', init='kaiming')
    with pytest.raises(ValueError, match='unknown init'):
        ModelConfig.from_dict({**ModelConfig().to_dict(), 'init': 'he'})


def _ln_bias_names(prefix, depth):
    names = {f'{prefix}/blocks_{i}/{n}/bias' for i in range(depth) for n in ('norm1', 'norm2')}
    return names | {f'{prefix}/norm/bias'}


def test_norm_bias_adds_exactly_the_layernorm_biases():
    base = model_config('tiny', fs=100)
    nb = model_config('tiny', fs=100, norm_bias=True)
    p0 = _flat(jepa_step.init_params(jax.random.PRNGKey(0), base))
    p1 = _flat(jepa_step.init_params(jax.random.PRNGKey(0), nb))
    added = set(p1) - set(p0)
    assert not set(p0) - set(p1)
    assert added == (_ln_bias_names('encoder', nb.depth) |
                     _ln_bias_names('predictor', nb.pred_depth))
    assert len(added) == 2 * nb.depth + 1 + 2 * nb.pred_depth + 1
    for name in added:
        want = nb.dim if name.startswith('encoder') else nb.pred_dim
        assert p1[name].shape == (want,)
        np.testing.assert_array_equal(p1[name], 0.0)
    extra = sum(p1[n].size for n in added)
    assert extra == (2 * nb.depth + 1) * nb.dim + (2 * nb.pred_depth + 1) * nb.pred_dim
    # bias=True already has them (and the Linear biases); norm_bias adds nothing there.
    b = _flat(jepa_step.init_params(jax.random.PRNGKey(0), model_config('tiny', bias=True)))
    bn = _flat(jepa_step.init_params(jax.random.PRNGKey(0),
                                     model_config('tiny', bias=True, norm_bias=True)))
    assert set(b) == set(bn) and added <= set(b)
    # LayerNorm biases get no weight decay.
    mask = _flat(optim.decay_mask(jepa_step.init_params(jax.random.PRNGKey(0), nb)))
    assert not any(mask[n] for n in added)


@pytest.mark.parametrize('head', ['attentive', 'register'])
def test_norm_bias_in_classifiers(head):
    flat = {}
    for nb in (False, True):
        cfg = model_config('tiny', fs=100, norm_bias=nb)
        flat[nb] = _flat(init_classifier(build_classifier(cfg, 3, head=head),
                                         jax.random.PRNGKey(0), 50))
    added = set(flat[True]) - set(flat[False])
    assert added == _ln_bias_names('encoder', cfg.depth)
    # The heads have no LayerNorm: their params are unchanged.
    heads = [{k for k in f if k.startswith('head/')} for f in flat.values()]
    assert heads[0] == heads[1]


def _perturb_ln_biases(params, rng):
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    leaves = [rng.standard_normal(v.shape).astype(np.float32) * 0.5
              if '/'.join(str(getattr(k, 'key', k)) for k in path).endswith(
                  ('norm1/bias', 'norm2/bias', 'norm/bias')) else v for path, v in flat]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), leaves)


@pytest.mark.slow
def test_nonzero_layernorm_biases_change_the_outputs():
    cfg = model_config('tiny', fs=100, norm_bias=True)
    params = jepa_step.init_params(jax.random.PRNGKey(0), cfg)
    moved = _perturb_ln_biases(params, np.random.default_rng(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, cfg.window_samples, 12))
    enc = build_encoder(cfg)
    a = enc.apply({'params': params['encoder']}, x)
    b = enc.apply({'params': moved['encoder']}, x)
    assert float(jnp.abs(a - b).max()) > 1e-2
    k, n = 8, cfg.num_patches
    keep = jnp.arange(k)[None]
    mask = (jnp.arange(n) >= k)[None]
    ctx = jax.random.normal(jax.random.PRNGKey(2), (1, k, cfg.dim))
    pred = build_predictor(cfg)
    pa = pred.apply({'params': params['predictor']}, ctx, keep, jnp.ones((1, k), bool), mask)
    pb = pred.apply({'params': moved['predictor']}, ctx, keep, jnp.ones((1, k), bool), mask)
    assert float(jnp.abs(pa - pb).max()) > 1e-3


@pytest.mark.slow
def test_config_round_trips(tmp_path):
    cfg = model_config('tiny', fs=100, init='xavier', norm_bias=True)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    params = jepa_step.init_params(jax.random.PRNGKey(0), cfg)['encoder']
    params = _perturb_ln_biases(params, np.random.default_rng(1))
    enc = encoder_lib.Encoder(cfg, params)
    enc.save(str(tmp_path / 'enc'))
    loaded = encoder_lib.read_encoder(str(tmp_path / 'enc'))
    assert loaded.config == cfg
    x = np.random.default_rng(2).standard_normal((1, 200, 12)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(loaded.tokens(x)), np.asarray(enc.tokens(x)),
                               atol=1e-6)
    # A file written before these options existed loads with the defaults.
    old = model_config('tiny', fs=100)
    encoder_lib.Encoder(old, jepa_step.init_params(jax.random.PRNGKey(0), old)['encoder']
                        ).save(str(tmp_path / 'old'))
    path = tmp_path / 'old' / encoder_lib.CONFIG_FILE
    doc = json.loads(path.read_text())
    del doc['model']['init'], doc['model']['norm_bias']
    path.write_text(json.dumps(doc))
    cfg_old = encoder_lib.read_encoder(str(tmp_path / 'old')).config
    assert (cfg_old.init, cfg_old.norm_bias) == ('trunc_normal', False)


@pytest.mark.parametrize('which', ['pretrain', 'finetune'])
def test_experiment_configs_carry_the_options(which):
    if which == 'pretrain':
        from experiments.configs import pretrain as module
        config = module.get_config('vit_tiny,smoke')
    else:
        from experiments.configs import finetune as module
        config = module.get_config('linear,smoke')
    assert (config.model.init, config.model.norm_bias) == ('trunc_normal', False)
    assert model_config_from(config, variant='tiny') == model_config(
        'tiny', fs=config.model.fs, dtype=config.dtype)
    config.model.init = 'xavier'
    config.model.norm_bias = True
    cfg = model_config_from(config, variant='tiny')
    assert (cfg.init, cfg.norm_bias) == ('xavier', True)
    config.model.init = 'uniform'
    with pytest.raises(ValueError, match='unknown init'):
        model_config_from(config, variant='tiny')
