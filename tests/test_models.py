"""Model shapes, parameter counts, initialisation and equivalences."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_ecg.models import (Block, build_encoder, build_predictor, model_config,
                             sincos_pos_embed)
from jepa_ecg.models.__main__ import param_counts
from jepa_ecg.training import jepa_step as jepa

from conftest import REPO


@pytest.mark.parametrize('variant,enc,pred', [
    ('XS', 3_600_000, 923_328), ('S', 14_277_888, 3_689_856), ('B', 85_185_024, 21_833_472)])
def test_param_counts(variant, enc, pred):
    assert param_counts(model_config(variant)) == (enc, pred)


def test_param_count_cli():
    out = subprocess.run([sys.executable, '-m', 'jepa_ecg.models', '--variant', 'XS'],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip().splitlines()[-1] == 'encoder_params=3600000 predictor_params=923328'


def test_patch_size_follows_sampling_rate():
    assert model_config('XS', fs=500).patch_size == 25
    cfg = model_config('XS', fs=100)
    assert cfg.patch_size == 5 and cfg.num_patches == 200
    # Parameter count changes only through the patch embedding (5*12 vs 25*12 inputs).
    assert param_counts(cfg)[0] == 3_600_000 - 192 * 12 * 20


def test_sincos_layout():
    pe = sincos_pos_embed(8, 4)
    np.testing.assert_allclose(pe[0, 0::2], 0.0)
    np.testing.assert_allclose(pe[0, 1::2], 1.0)
    np.testing.assert_allclose(pe[3, 0], np.sin(3.0), rtol=1e-6)
    np.testing.assert_allclose(pe[3, 3], np.cos(3.0 * 10000 ** (-2 / 8)), rtol=1e-6)


def _params(variant='tiny', **kw):
    cfg = model_config(variant, **kw)
    return cfg, jepa.init_params(jax.random.PRNGKey(0), cfg)


def test_no_biases_and_init_scheme():
    cfg, params = _params('XS', fs=100)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    names = ['/'.join(str(getattr(k, 'key', k)) for k in path) for path, _ in flat]
    assert not any(n.endswith('bias') for n in names)
    enc = params['encoder']
    res_std = 0.02 / np.sqrt(2 * cfg.depth)
    # Large matrices: empirical std close to the intended one.
    assert abs(np.std(enc['blocks_0']['attn']['qkv']['kernel']) - 0.02) < 0.001
    assert abs(np.std(enc['blocks_0']['mlp']['fc2']['kernel']) - res_std) < 0.0005
    assert abs(np.std(enc['blocks_0']['attn']['proj']['kernel']) - res_std) < 0.0005
    # Predictor residual projections use the encoder depth, as in the reference.
    pred = params['predictor']
    assert abs(np.std(pred['blocks_0']['mlp']['fc2']['kernel']) - res_std) < 0.0007
    np.testing.assert_array_equal(enc['norm']['scale'], 1.0)
    assert enc['registers'].shape == (1, 1, cfg.dim)


@pytest.mark.slow
def test_encoder_masked_equals_gathered_full_free_tokens():
    """Encoding kept tokens with padding equals encoding them without padding."""
    cfg, params = _params('tiny', fs=100)
    enc = build_encoder(cfg)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, cfg.window_samples, 12))
    keep = np.array([[3, 10, 50, 199], [0, 1, 2, 3]], np.int32)
    out = enc.apply({'params': params['encoder']}, x, keep, np.ones((2, 4), bool))
    padded = np.concatenate([keep, np.zeros((2, 3), np.int32)], 1)
    valid = np.concatenate([np.ones((2, 4), bool), np.zeros((2, 3), bool)], 1)
    out_pad = enc.apply({'params': params['encoder']}, x, padded, valid)
    np.testing.assert_allclose(out_pad[:, :4], out, atol=1e-5)


def test_patch_embedding_matches_strided_conv():
    cfg, params = _params('tiny', fs=100)
    kernel = np.asarray(params['encoder']['patch_embed']['kernel'])  # (P*C, D)
    x = np.random.default_rng(0).standard_normal((1, cfg.window_samples, 12)).astype(np.float32)
    p = cfg.patch_size
    conv_w = kernel.reshape(p, 12, cfg.dim).transpose(2, 1, 0)  # (D, C, P) like Conv1d
    ref = np.stack([np.einsum('dcp,pc->d', conv_w, x[0, i * p:(i + 1) * p])
                    for i in range(cfg.num_patches)])
    from jepa_ecg.models.vit import patchify
    ours = patchify(jnp.asarray(x), p)[0] @ kernel
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_predictor_matches_concatenated_ordering():
    """Patch-ordered predictor == the reference [kept..., masked...] sequence."""
    cfg, params = _params('tiny', fs=100)
    pred_mod = build_predictor(cfg)
    pp = params['predictor']
    rng = np.random.default_rng(0)
    n, k = cfg.num_patches, 40
    keep = np.sort(rng.choice(n, size=(k,), replace=False))[None].astype(np.int32)
    masked = np.ones((1, n), bool)
    masked[0, keep[0]] = False
    context = rng.standard_normal((1, k, cfg.dim)).astype(np.float32)
    ours = pred_mod.apply({'params': pp}, context, keep, np.ones((1, k), bool), masked)
    ours = np.asarray(ours)[0, masked[0]]

    # Reference: embed kept + their positions, then mask tokens + positions, concatenated.
    pos = sincos_pos_embed(cfg.pred_dim, n)
    h = context[0] @ np.asarray(pp['embed']['kernel']) + pos[keep[0]]
    m_idx = np.nonzero(masked[0])[0]
    h = np.concatenate([h, np.asarray(pp['mask_token'])[0] + pos[m_idx]])[None]
    block = Block(cfg, cfg.pred_dim, cfg.pred_num_heads)
    for i in range(cfg.pred_depth):
        h = block.apply({'params': pp[f'blocks_{i}']}, h)
    scale = np.asarray(pp['norm']['scale'])
    h = np.asarray(h)[0, k:]
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-6) * scale
    ref = h @ np.asarray(pp['proj']['kernel'])
    np.testing.assert_allclose(ours, ref, atol=2e-5)


@pytest.mark.parametrize('kernels', ['stock', 'cpu'])
def test_exact_gelu(kernels):
    from jepa_ecg.models.layers import gelu
    from scipy.special import erf
    x = np.linspace(-4, 4, 101)
    y = gelu(model_config('tiny', kernels=kernels), jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(y, 0.5 * x * (1 + erf(x / np.sqrt(2))), atol=1e-6)
