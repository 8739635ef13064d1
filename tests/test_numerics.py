"""The XLA:CPU kernels compute what the straightforward formulation computes.

The model under kernels='cpu' (jepa_ecg.models.cpu_kernels) is written for
speed (head-major attention projections, deferred softmax normalisation,
erf GELU with a hand-written derivative, kept patches selected before the
patch embedding; see experiments/benchmark.py). This file keeps the plain, official-style
formulation (one qkv Dense + reshape + slices, softmax then weights @ v,
jax.nn.gelu(approximate=False), embed every patch then gather) and checks
that both give the same parameters, outputs, loss and gradients to float32
tolerance.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_ecg.training import jepa_step as jepa
from jepa_ecg.models import build_encoder, build_predictor, cpu_kernels, layers, model_config
from jepa_ecg.models.layers import sincos_pos_embed, trunc_normal

# Full tier (make test-all): see README's test tiers.
pytestmark = pytest.mark.slow


def layer_norm(bias, eps, name):
    return nn.LayerNorm(eps, use_bias=bias, use_fast_variance=False, name=name)


# ------------------------------------------------ reference (straightforward)
def ref_attention(q, k, v, mask=None):
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum('bqhd,bkhd->bhqk', q * scale, k)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum('bhqk,bkhd->bqhd', weights, v)


class RefAttention(nn.Module):
    dim: int
    num_heads: int
    proj_std: float = 0.02
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x, key_valid=None):
        b, n, _ = x.shape
        qkv = nn.Dense(3 * self.dim, use_bias=False, dtype=self.dtype,
                       kernel_init=trunc_normal(0.02), name='qkv')(x)
        qkv = qkv.reshape(b, n, 3, self.num_heads, self.dim // self.num_heads)
        mask = None if key_valid is None else key_valid[:, None, None, :]
        out = ref_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], mask).reshape(b, n, self.dim)
        return nn.Dense(self.dim, use_bias=False, dtype=self.dtype,
                        kernel_init=trunc_normal(self.proj_std), name='proj')(out)


class RefBlock(nn.Module):
    dim: int
    num_heads: int
    residual_depth: int
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x, key_valid=None):
        res_std = 0.02 / math.sqrt(2 * self.residual_depth)
        h = layer_norm(False, 1e-6, 'norm1')(x)
        x = x + RefAttention(self.dim, self.num_heads, res_std, self.dtype, name='attn')(h, key_valid)
        h = layer_norm(False, 1e-6, 'norm2')(x)
        h = nn.Dense(4 * self.dim, use_bias=False, dtype=self.dtype,
                     kernel_init=trunc_normal(0.02), name='fc1')(h)
        h = jax.nn.gelu(h, approximate=False)
        h = nn.Dense(self.dim, use_bias=False, dtype=self.dtype,
                     kernel_init=trunc_normal(res_std), name='fc2')(h)
        return x + h



class RefEncoder(nn.Module):
    cfg: object
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x, keep_idx=None, keep_valid=None):
        c = self.cfg
        b, t, ch = x.shape
        patches = x.astype(self.dtype).reshape(b, t // c.patch_size, c.patch_size * ch)
        tokens = nn.Dense(c.dim, use_bias=False, dtype=self.dtype, name='patch_embed')(patches)
        tokens = tokens + jnp.asarray(sincos_pos_embed(c.dim, c.num_patches), self.dtype)[None]
        if keep_idx is not None:  # embed everything, then gather (one-hot matmul)
            onehot = jax.nn.one_hot(keep_idx, tokens.shape[1], dtype=tokens.dtype)
            tokens = jnp.einsum('bkn,bnd->bkd', onehot, tokens)
        reg = self.param('registers', trunc_normal(0.02), (1, c.num_registers, c.dim))
        tokens = jnp.concatenate([jnp.broadcast_to(reg.astype(self.dtype),
                                                   (b, c.num_registers, c.dim)), tokens], 1)
        key_valid = None
        if keep_valid is not None:
            key_valid = jnp.concatenate([jnp.ones((b, c.num_registers), bool), keep_valid], 1)
        for i in range(c.depth):
            tokens = RefBlock(c.dim, c.num_heads, c.depth, self.dtype, name=f'blocks_{i}')(
                tokens, key_valid)
        tokens = layer_norm(False, 1e-6, 'norm')(tokens)
        return tokens[:, c.num_registers:]


class RefPredictor(nn.Module):
    """Reference [kept..., masked...] predictor is tested in test_models; here the
    patch-ordered predictor with plain blocks."""
    cfg: object
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, context, keep_idx, keep_valid, predict_mask):
        c = self.cfg
        n = predict_mask.shape[1]
        e = nn.Dense(c.pred_dim, use_bias=False, dtype=self.dtype, name='embed')(context)
        placement = jax.nn.one_hot(keep_idx, n, dtype=self.dtype) * keep_valid[..., None]
        placed = jnp.einsum('bkn,bkd->bnd', placement, e)
        mask_token = self.param('mask_token', trunc_normal(0.02), (1, 1, c.pred_dim))
        tokens = jnp.where(predict_mask[..., None], mask_token.astype(self.dtype), placed)
        tokens = tokens + jnp.asarray(sincos_pos_embed(c.pred_dim, c.num_patches), self.dtype)[None]
        for i in range(c.pred_depth):
            tokens = RefBlock(c.pred_dim, c.pred_num_heads, c.depth, self.dtype,
                              name=f'blocks_{i}')(tokens)
        tokens = layer_norm(False, 1e-6, 'norm')(tokens)
        return nn.Dense(c.dim, use_bias=False, dtype=self.dtype, name='proj')(tokens)


def to_ref(params):
    """Model params -> RefBlock layout (mlp/fc1 -> fc1); same arrays."""
    def fix(tree):
        if isinstance(tree, dict):
            out = {}
            for k, v in tree.items():
                if k == 'mlp':
                    out.update(v)
                else:
                    out[k] = fix(v)
            return out
        return tree
    return fix(jax.tree_util.tree_map(lambda x: x, params))


def close(a, b, rtol=2e-5, atol=2e-5):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32),
                                   rtol=rtol, atol=atol)


# ----------------------------------------------------------------- tests
def test_gelu_matches_jax_exact_gelu_values_and_gradients():
    x = jnp.linspace(-9.0, 9.0, 20001, dtype=jnp.float32)
    ref = jax.nn.gelu(x, approximate=False)
    np.testing.assert_allclose(cpu_kernels.gelu_exact(x), ref, atol=1e-6, rtol=1e-6)
    g = jax.vmap(jax.grad(cpu_kernels.gelu_exact))(x)
    g_ref = jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x)
    np.testing.assert_allclose(g, g_ref, atol=2e-6, rtol=1e-5)
    assert cpu_kernels.gelu_exact(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_layer_norm_matches_flax_values_and_gradients():
    """cpu_kernels.LayerNorm (two-pass statistics, written-out backward) equals flax's."""
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 7, 16)) * 3 + 1
    for bias in (False, True):
        ours = cpu_kernels.LayerNorm(epsilon=1e-6, use_bias=bias)
        ref = nn.LayerNorm(epsilon=1e-6, use_bias=bias)
        p = ref.init(jax.random.PRNGKey(1), x)['params']
        p = jax.tree_util.tree_map(lambda a: a + jax.random.normal(jax.random.PRNGKey(2), a.shape),
                                   p)
        assert jax.tree_util.tree_structure(p) == jax.tree_util.tree_structure(
            ours.init(jax.random.PRNGKey(1), x)['params'])
        f = lambda mod: lambda p, x: jnp.sum(jnp.sin(mod.apply({'params': p}, x)))
        close(ours.apply({'params': p}, x), ref.apply({'params': p}, x))
        close(jax.grad(f(ours), argnums=(0, 1))(p, x), jax.grad(f(ref), argnums=(0, 1))(p, x),
              rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('masked', [False, True])
def test_attention_matches_reference(masked):
    dim, heads, b, n = 48, 4, 3, 17
    x = jax.random.normal(jax.random.PRNGKey(0), (b, n, dim))
    key_valid = jnp.arange(n)[None, :] < jnp.array([[n], [5], [11]]) if masked else None
    cfg = model_config('tiny', kernels='cpu')  # depth 2: residual init std 0.01
    ours = layers.Attention(cfg, dim, heads)
    ref = RefAttention(dim, heads, proj_std=0.01)
    p = ours.init(jax.random.PRNGKey(1), x)['params']
    p_ref = ref.init(jax.random.PRNGKey(1), x)['params']
    # Same tree, shapes and initial values as the nn.Dense formulation.
    assert jax.tree_util.tree_structure(p) == jax.tree_util.tree_structure(p_ref)
    close(p, p_ref, rtol=0, atol=0)
    out = ours.apply({'params': p}, x, key_valid)
    out_ref = ref.apply({'params': p}, x, key_valid)
    close(out, out_ref)
    loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply({'params': p}, x, key_valid)))
    close(jax.grad(loss(ours), argnums=(0, 1))(p, x), jax.grad(loss(ref), argnums=(0, 1))(p, x))


def test_multihead_attention_matches_reference():
    q, k, v = jax.random.normal(jax.random.PRNGKey(2), (3, 2, 9, 3, 8))
    mask = (jnp.arange(9) < 6)[None, None, None, :]
    close(cpu_kernels.multihead_attention(q, k, v, mask), ref_attention(q, k, v, mask))


def test_encoder_matches_reference_full_and_masked(tiny_jepa):
    cfg, params, x, m = tiny_jepa
    cfg = dataclasses.replace(cfg, kernels='cpu')
    enc, ref = build_encoder(cfg), RefEncoder(cfg)
    p, p_ref = params['encoder'], to_ref(params['encoder'])
    close(enc.apply({'params': p}, x), ref.apply({'params': p_ref}, x))
    args = (x, m['keep_idx'], m['keep_valid'])
    valid = m['keep_valid'][..., None]
    ours = enc.apply({'params': p}, *args)
    theirs = ref.apply({'params': p_ref}, *args)
    close(ours * valid, theirs * valid)


def test_loss_and_gradients_match_reference(tiny_jepa):
    """The whole JEPA objective: target, context encoder, predictor, masked L1."""
    cfg, params, x, m = tiny_jepa
    cfg = dataclasses.replace(cfg, kernels='cpu')
    enc, pred = build_encoder(cfg), build_predictor(cfg)
    renc, rpred = RefEncoder(cfg), RefPredictor(cfg)
    target_params = jax.tree_util.tree_map(lambda a: a * 1.01, params['encoder'])

    def loss(encoder, predictor, conv):
        def f(p):
            t = encoder.apply({'params': conv(target_params)}, x)
            c = encoder.apply({'params': conv(p['encoder'])}, x, m['keep_idx'], m['keep_valid'])
            y = predictor.apply({'params': conv(p['predictor'])}, c, m['keep_idx'],
                                m['keep_valid'], m['predict_mask'])
            return jepa.masked_l1(y, jax.lax.stop_gradient(t), m['predict_mask'])
        return jax.jit(jax.value_and_grad(f))

    l, g = loss(enc, pred, lambda t: t)(params)
    l_ref, g_ref = loss(renc, rpred, to_ref)(params)
    np.testing.assert_allclose(l, l_ref, rtol=1e-5)
    close(to_ref(g), g_ref, rtol=1e-4, atol=1e-6)


def test_bfloat16_forward_tracks_float32_reference(tiny_jepa):
    cfg, params, x, m = tiny_jepa
    cfg = dataclasses.replace(cfg, kernels='cpu')
    ours = build_encoder(cfg, dtype='bfloat16').apply({'params': params['encoder']}, x)
    ref = RefEncoder(cfg).apply({'params': to_ref(params['encoder'])}, x)
    assert ours.dtype == jnp.float32  # bf16 matmul inputs, float32 LayerNorm output (autocast)
    err = np.abs(np.asarray(ours, np.float32) - np.asarray(ref))
    assert err.mean() < 0.02 and np.isfinite(err).all()
