"""The stock and the XLA:CPU kernels are one model: same parameter tree, same
outputs, loss and parameter gradients (float32), the same gradient with
respect to the input (integrated gradients add up to the logit difference on
both paths, float32 and bfloat16), and `remat` changes nothing."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_ecg.models import build_encoder, build_predictor, cpu_kernels, layers, model_config
from jepa_ecg.models.classifier import build_classifier, init_classifier
from jepa_ecg.models.config import ModelConfig, model_config_from, resolve_kernels
from jepa_ecg.training import jepa_step as jepa

PATHS = ('stock', 'cpu')
REL_TOL = 1e-5
CROP = 250  # 2.5 s at 100 Hz


def _rel_err(a, b) -> float:
    """Largest over leaves of |a - b| / |b| (Frobenius norms, float64)."""
    out = 0.0
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        out = max(out, float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30)))
    return out


def _jepa_outputs(cfg, params, x, m):
    """(loss, (target tokens, context tokens, predictions), parameter gradients)."""
    enc, pred = build_encoder(cfg), build_predictor(cfg)

    def loss(p, target_p, x, m):
        targets = enc.apply({'params': target_p}, x)
        context = enc.apply({'params': p['encoder']}, x, m['keep_idx'], m['keep_valid'])
        preds = pred.apply({'params': p['predictor']}, context, m['keep_idx'], m['keep_valid'],
                           m['predict_mask'])
        context = context * m['keep_valid'][..., None]  # padding tokens carry no meaning
        return jepa.masked_l1(preds, targets, m['predict_mask']), (targets, context, preds)

    target_params = jax.tree_util.tree_map(lambda a: a * 1.01, params['encoder'])
    f = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (value, outputs), grads = f(params, target_params, x, m)
    return value, outputs, grads


def test_kernels_field_resolves_and_old_files_read_as_auto():
    assert resolve_kernels('auto') == ('cpu' if jax.default_backend() == 'cpu' else 'stock')
    assert resolve_kernels('stock') == 'stock'
    old = model_config('tiny').to_dict()
    del old['kernels'], old['remat']
    assert ModelConfig.from_dict(old).kernels == 'auto'
    with pytest.raises(ValueError, match='kernels'):
        model_config('tiny', kernels='fast')


def test_kernels_and_remat_read_from_an_experiment_config():
    import ml_collections  # pylint: disable=g-import-not-at-top
    config = ml_collections.ConfigDict({'model': {'variant': 'tiny', 'fs': 100.0,
                                                  'window_seconds': 10.0, 'kernels': 'stock',
                                                  'remat': True}})
    cfg = model_config_from(config)
    assert (cfg.kernels, cfg.remat) == ('stock', True)


def test_both_paths_declare_the_same_parameters(tiny_jepa):
    cfg, _, _, _ = tiny_jepa
    trees = {}
    for kernels in PATHS:
        c = dataclasses.replace(cfg, kernels=kernels, qkv_bias=True, norm_bias=True)
        trees[kernels] = {'jepa': jepa.init_params(jax.random.PRNGKey(0), c)}
        for head in ('attentive', 'register'):
            trees[kernels][head] = init_classifier(build_classifier(c, 3, head=head),
                                                   jax.random.PRNGKey(1), CROP)
    stock, cpu = trees['stock'], trees['cpu']
    assert jax.tree_util.tree_structure(stock) == jax.tree_util.tree_structure(cpu)
    for a, b in zip(jax.tree_util.tree_leaves(stock), jax.tree_util.tree_leaves(cpu)):
        assert a.dtype == b.dtype == jnp.float32
        np.testing.assert_array_equal(a, b)  # same initial draw too


def test_both_paths_give_the_same_tokens_loss_and_gradients(tiny_jepa):
    cfg, params, x, m = tiny_jepa
    results = {k: _jepa_outputs(dataclasses.replace(cfg, kernels=k), params, x, m)
               for k in PATHS}
    (l_s, out_s, g_s), (l_c, out_c, g_c) = results['stock'], results['cpu']
    assert abs(float(l_c) - float(l_s)) <= REL_TOL * abs(float(l_s))
    for name, a, b in zip(('target tokens', 'context tokens', 'predictions'), out_c, out_s):
        assert _rel_err(a, b) < REL_TOL, name
    flat_s = jax.tree_util.tree_leaves_with_path(g_s)
    for (path, a), b in zip(flat_s, jax.tree_util.tree_leaves(g_c)):
        assert _rel_err(b, a) < REL_TOL, jax.tree_util.keystr(path)


@pytest.mark.parametrize('masked', [False, True])
def test_cpu_attention_gradients_in_bf16_are_as_accurate_as_stock(masked):
    """Against float32, the CPU attention's bf16 gradients err no more than the
    stock attention's (its backward keeps the softmax's rows summing to zero)."""
    q, k, v, w = jax.random.normal(jax.random.PRNGKey(0), (4, 2, 24, 4, 16))
    q = q * 4.0  # peaked softmax rows
    valid = (jnp.arange(24)[None, :] < jnp.array([[24], [13]])) if masked else None

    def stock(q, k, v, dtype):
        out = layers.attention(q.astype(dtype), k.astype(dtype), v.astype(dtype), valid)
        return (out.astype(jnp.float32) * w).sum()

    def cpu(q, k, v, dtype):
        mask = None if valid is None else valid[:, None, None, :]
        out = cpu_kernels.multihead_attention(q.astype(dtype), k.astype(dtype),
                                              v.astype(dtype), mask)
        return (out.astype(jnp.float32) * w).sum()

    grad = lambda f, dtype: jax.jit(jax.grad(f, argnums=(0, 1, 2)), static_argnums=3)(
        q, k, v, dtype)
    ref = grad(stock, jnp.float32)
    assert _rel_err(grad(cpu, jnp.float32), ref) < REL_TOL
    err_stock = [_rel_err(a, b) for a, b in zip(grad(stock, jnp.bfloat16), ref)]
    err_cpu = [_rel_err(a, b) for a, b in zip(grad(cpu, jnp.bfloat16), ref)]
    assert max(err_stock) < 0.02
    for c, s in zip(err_cpu, err_stock):
        assert c < 1.1 * s, (err_cpu, err_stock)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('kernels', PATHS)
def test_integrated_gradients_add_up_on_both_paths(kernels, dtype):
    """sum(IG) = f(x) - f(0): the input gradient is the gradient of the function
    the path computes. The head is scaled so the logits move by O(0.1)."""
    cfg = model_config('tiny', fs=100, kernels=kernels)
    model = build_classifier(cfg, 1, head='attentive', dtype=dtype)
    params = init_classifier(model, jax.random.PRNGKey(1), CROP)
    params['head']['proj']['kernel'] = params['head']['proj']['kernel'] * 300
    x = jax.random.normal(jax.random.PRNGKey(2), (4, CROP, 12))
    alphas = (jnp.arange(32, dtype=jnp.float32) + 0.5) / 32
    logit = lambda p, z: model.apply({'params': p}, z)[:, 0].astype(jnp.float32)

    @jax.jit
    def ig_and_difference(p, x):
        def one(x):
            grads = jax.grad(lambda z: logit(p, z).sum())(alphas[:, None, None] * x[None])
            return (grads.astype(jnp.float32).mean(axis=0) * x).sum()
        return jax.lax.map(one, x), logit(p, x) - logit(p, jnp.zeros_like(x))

    ig, diff = (np.asarray(a, np.float64) for a in ig_and_difference(params, x))
    assert np.abs(diff).max() > 0.1, diff  # the logits move
    if dtype == 'float32':
        np.testing.assert_allclose(ig, diff, rtol=1e-3, atol=2e-4)
    else:
        # bf16 matmul outputs carry 8 significant bits: with logits ~0.3 the
        # forward difference itself is uncertain by a few 1e-3 on either path.
        np.testing.assert_allclose(ig, diff, rtol=0, atol=0.02)
        assert np.sqrt(np.mean((ig - diff) ** 2)) < 0.01, ig - diff


def test_remat_changes_nothing_but_memory(tiny_jepa):
    """Rematerialised blocks: same parameter tree, loss and gradients."""
    cfg, params, x, m = tiny_jepa
    l_0, out_0, g_0 = _jepa_outputs(cfg, params, x, m)
    remat = dataclasses.replace(cfg, remat=True)
    shapes = jax.eval_shape(lambda: jepa.init_params(jax.random.PRNGKey(0), remat))
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(params)
    l_1, out_1, g_1 = _jepa_outputs(remat, params, x, m)
    assert abs(float(l_1) - float(l_0)) <= REL_TOL * abs(float(l_0))
    assert _rel_err(out_1, out_0) < REL_TOL
    assert _rel_err(g_1, g_0) < REL_TOL
