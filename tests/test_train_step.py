"""The jitted JEPA train step: data parallelism, recompilation, accumulation, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs.pretrain import get_config
from jepa_ecg.training import jepa_step as jepa
from jepa_ecg.data.masking import sample_batch_masks
from jepa_ecg.models.config import model_config_from
from jepa_ecg.training import optim
from jepa_ecg import sharding as parallel


def _setup(tokens='vit_tiny,smoke,100hz', **overrides):
    config = get_config(tokens)
    config.unlock()
    for k, v in overrides.items():
        setattr(config, k, v)
    cfg = model_config_from(config)
    schedules = optim.make_schedules(config)
    tx = optim.make_optimizer(config, schedules)
    return config, cfg, schedules, tx


def _batch(cfg, batch_size, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, cfg.window_samples, 12)).astype(np.float32)
    return {'signal': x, **sample_batch_masks(rng, batch_size, cfg.num_patches)}


def _run(n_devices, steps=2, batch_size=8, **kw):
    config, cfg, schedules, tx = _setup(**kw)
    mesh = parallel.make_mesh(jax.devices()[:n_devices])
    step = parallel.jit_data_parallel(
        jepa.make_train_step(cfg, tx, schedules, dtype=config.dtype,
                             grad_accum_steps=config.grad_accum_steps), mesh)
    state = parallel.jit_data_parallel(lambda k: jepa.init_train_state(k, cfg, tx), mesh,
                                       batch_argnums=())(jax.random.PRNGKey(0))
    losses = []
    for i in range(steps):
        batch = parallel.host_to_global(_batch(cfg, batch_size, seed=i), mesh)
        assert batch['signal'].sharding.spec == parallel.batch_sharded(mesh).spec
        state, metrics = step(state, batch)
        assert state.step.sharding.is_fully_replicated
        losses.append(float(metrics['loss']))
    return jax.device_get(state), losses


@pytest.mark.slow
def test_one_vs_two_devices_agree():
    assert len(jax.devices()) >= 2, 'conftest sets 4 fake CPU devices'
    s1, l1 = _run(1)
    s2, l2 = _run(2)
    np.testing.assert_allclose(l1, l2, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(s1.params), jax.tree_util.tree_leaves(s2.params)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(s1.target_params),
                    jax.tree_util.tree_leaves(s2.target_params)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_gradient_accumulation_matches_full_batch_gradient():
    # With the same masks, 2 micro-batches of 4 average to the gradient of 8.
    s_full, l_full = _run(1, steps=1)
    s_acc, l_acc = _run(1, steps=1, grad_accum_steps=2)
    np.testing.assert_allclose(l_full, l_acc, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(s_full.params),
                    jax.tree_util.tree_leaves(s_acc.params)):
        np.testing.assert_allclose(a, b, atol=2e-6)


@pytest.mark.slow
def test_recompilation_is_bounded():
    """The kept-token count varies per batch; compiled shapes stay <= 3."""
    config, cfg, schedules, tx = _setup()
    step = jax.jit(jepa.make_train_step(cfg, tx, schedules, rank_every=0))
    state = jepa.init_train_state(jax.random.PRNGKey(0), cfg, tx)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, cfg.window_samples, 12)).astype(np.float32)
    kept = set()
    for i in range(40):
        masks = sample_batch_masks(rng, 2, cfg.num_patches)
        kept.add(int(masks['keep_valid'][0].sum()))
        state, _ = step(state, {'signal': x, **masks})
    assert len(kept) >= 8  # many distinct keep counts were seen ...
    assert step._cache_size() <= 3  # ... but only bucketed shapes compiled


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params():
    state, losses = _run(1, steps=2, tokens='vit_tiny,smoke,100hz,bf16')
    assert np.isfinite(losses).all()
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(state.params))
    f32_state, f32_losses = _run(1, steps=1)
    assert abs(losses[0] - f32_losses[0]) < 0.05 * abs(f32_losses[0])


@pytest.mark.slow
def test_weight_decay_only_on_weight_matrices():
    config, cfg, schedules, tx = _setup()
    params = jepa.init_params(jax.random.PRNGKey(0), cfg)
    mask = optim.decay_mask(params)
    assert mask['encoder']['blocks_0']['attn']['qkv']['kernel']
    assert mask['encoder']['patch_embed']['kernel']
    assert not mask['encoder']['registers']
    assert not mask['encoder']['norm']['scale']
    assert not mask['predictor']['mask_token']
    # A step with zero gradient moves decayed weights only.
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    opt = tx.init(params)
    updates, _ = tx.update(zero, opt, params)
    assert float(jnp.abs(updates['encoder']['registers']).max()) == 0.0
    assert float(jnp.abs(updates['encoder']['patch_embed']['kernel']).max()) > 0.0


def test_schedules_match_the_published_shape():
    config = get_config('vit_xs,ptbxl')
    s = optim.make_schedules(config)
    np.testing.assert_allclose(s['lr'](0), 1e-6, rtol=1e-5)
    np.testing.assert_allclose(s['lr'](10_000), 1e-3, rtol=1e-5)
    np.testing.assert_allclose(s['lr'](99_999), 1e-6, rtol=1e-3)
    np.testing.assert_allclose(s['lr'](5_000), (1e-6 + 1e-3) / 2, rtol=1e-4)
    np.testing.assert_allclose(s['wd'](0), 0.01, rtol=1e-5)
    np.testing.assert_allclose(s['wd'](99_999), 0.1, rtol=1e-5)
    np.testing.assert_allclose(s['momentum'](0), 0.998)
    np.testing.assert_allclose(s['momentum'](50_000), 0.99875, rtol=1e-6)
    np.testing.assert_allclose(s['momentum'](100_000), 0.9995)


def test_ema_update():
    t = {'w': jnp.ones(3)}
    o = {'w': jnp.zeros(3)}
    np.testing.assert_allclose(jepa.ema_update(t, o, 0.99)['w'], 0.99)


def test_effective_rank_detects_collapse():
    rng = np.random.default_rng(0)
    full = rng.standard_normal((256, 32))
    collapsed = np.outer(rng.standard_normal(256), rng.standard_normal(32))
    assert float(jepa.effective_rank(full)) > 20
    assert float(jepa.effective_rank(collapsed + 1e-6 * full)) < 2


@pytest.mark.parametrize('records,dim,rank', [(64, 192, 63), (64, 192, 10), (8, 192, 7),
                                              (256, 192, 192)])
def test_effective_rank_equals_float64_svd(records, dim, rank):
    # The step's batch of pooled targets (records x dim, often fewer records
    # than dims, spectrum spread over 2 decades): the float32 rank must read
    # as a float64 SVD does, not higher from zero singular values.
    rng = np.random.default_rng(rank)
    x = (rng.standard_normal((records, rank)) @ rng.standard_normal((rank, dim))
         * np.logspace(0, -2, dim)) * 0.1
    x = x - x.mean(axis=0)
    s = np.linalg.svd(x, compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    expected = np.exp(-(p * np.log(p)).sum())
    got = float(jepa.effective_rank(jnp.asarray(x, jnp.float32)))
    assert got == pytest.approx(expected, rel=1e-4)


def test_masked_l1_is_mean_over_masked_patches():
    pred = np.zeros((2, 4, 3), np.float32)
    target = np.arange(24, dtype=np.float32).reshape(2, 4, 3)
    mask = np.array([[1, 0, 0, 1], [0, 1, 1, 0]], bool)
    expected = np.abs(target[mask]).mean()
    np.testing.assert_allclose(jepa.masked_l1(pred, target, mask), expected, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize('layer_norm', [False, True])
def test_targets_are_regressed_raw_or_layer_normalised(layer_norm):
    import flax.linen as nn
    from jepa_ecg.models import build_encoder, build_predictor
    config, cfg, schedules, tx = _setup()
    state = jepa.init_train_state(jax.random.PRNGKey(0), cfg, tx)
    # At init the encoder's final LayerNorm already normalises its tokens; a
    # trained target's norm has learnt a scale (here: every weight moved).
    state = state.replace(target_params=jax.tree_util.tree_map(
        lambda p: 1.7 * p + 0.05, state.target_params))
    batch = {k: jnp.asarray(v) for k, v in _batch(cfg, 4).items()}
    step = jax.jit(jepa.make_train_step(cfg, tx, schedules, target_layer_norm=layer_norm))
    _, metrics = step(state, batch)
    # The loss stated independently: L1 to the target tokens, or to those
    # tokens normalised by a LayerNorm without scale and shift.
    targets = build_encoder(cfg).apply({'params': state.target_params}, batch['signal'])
    context = build_encoder(cfg).apply({'params': state.params['encoder']}, batch['signal'],
                                       batch['keep_idx'], batch['keep_valid'])
    pred = build_predictor(cfg).apply({'params': state.params['predictor']}, context,
                                      batch['keep_idx'], batch['keep_valid'],
                                      batch['predict_mask'])
    if layer_norm:
        targets = nn.LayerNorm(epsilon=1e-5, use_bias=False, use_scale=False).apply({}, targets)
    want = jepa.masked_l1(pred, targets, batch['predict_mask'])
    np.testing.assert_allclose(float(metrics['loss']), float(want), rtol=1e-5)
    # Different numbers: the switch is not a no-op.
    raw = jepa.masked_l1(pred, build_encoder(cfg).apply({'params': state.target_params},
                                                        batch['signal']),
                         batch['predict_mask'])
    assert (abs(float(metrics['loss']) - float(raw)) > 1e-3 * float(raw)) == layer_norm
