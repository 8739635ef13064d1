"""bfloat16 compute is autocast-like: bf16 matmul inputs, float32 everything else.

The reference trains under torch.autocast(bfloat16): Linear/conv/attention
matmuls take bf16 inputs, while the residual stream, LayerNorm statistics
and outputs, the softmax and the JEPA targets stay float32. These tests pin
that split down structurally (dtypes of every module output and primitive)
and numerically (a bf16 forward, loss and gradient against float32).
"""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_ecg.models import build_encoder, build_predictor
from jepa_ecg.training import jepa_step as jepa

# bf16 keeps 8 significant bits (relative rounding 2^-9 ~ 0.2%); with float32
# accumulation, residual stream and LayerNorms the errors stay at that scale.
TARGET_MEAN_ABS_TOL = 0.01   # targets are LayerNorm outputs, O(1) per channel
TARGET_MAX_ABS_TOL = 0.05
LOSS_REL_TOL = 0.01
GRAD_COSINE_MIN = 0.99


@pytest.fixture(scope='module')
def setup(tiny_jepa):
    return tiny_jepa


def _loss_fn(cfg, dtype):
    enc, pred = build_encoder(cfg, dtype=dtype), build_predictor(cfg, dtype=dtype)

    def loss(p, target_p, x, m):
        targets = jax.lax.stop_gradient(enc.apply({'params': target_p}, x))
        context = enc.apply({'params': p['encoder']}, x, m['keep_idx'], m['keep_valid'])
        preds = pred.apply({'params': p['predictor']}, context, m['keep_idx'], m['keep_valid'],
                           m['predict_mask'])
        return jepa.masked_l1(preds, targets, m['predict_mask']), (targets, preds)
    return loss


def _run(cfg, params, x, m, dtype):
    f = jax.jit(jax.value_and_grad(_loss_fn(cfg, dtype), has_aux=True))
    (loss, (targets, preds)), grads = f(params, params['encoder'], x, m)
    return loss, targets, preds, grads


@pytest.mark.slow
def test_bf16_targets_and_predictions_are_float32(setup):
    cfg, params, x, m = setup
    _, targets, preds, grads = _run(cfg, params, x, m, 'bfloat16')
    assert targets.dtype == jnp.float32
    assert preds.dtype == jnp.float32
    assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grads))


def test_bf16_forward_loss_and_gradients_track_float32(setup):
    cfg, params, x, m = setup
    l32, t32, _, g32 = _run(cfg, params, x, m, 'float32')
    l16, t16, _, g16 = _run(cfg, params, x, m, 'bfloat16')
    err = np.abs(np.asarray(t16) - np.asarray(t32))
    assert np.isfinite(err).all()
    assert err.mean() < TARGET_MEAN_ABS_TOL and err.max() < TARGET_MAX_ABS_TOL, (err.mean(), err.max())
    assert abs(float(l16) - float(l32)) <= LOSS_REL_TOL * abs(float(l32)), (l16, l32)
    a = np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(g32)])
    b = np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(g16)])
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > GRAD_COSINE_MIN


def test_bf16_module_outputs_keep_the_residual_stream_float32(setup):
    """Matmul outputs are bf16; LayerNorms, blocks (the residual stream) float32."""
    cfg, params, x, m = setup
    enc = build_encoder(cfg, dtype='bfloat16')
    _, state = enc.apply({'params': params['encoder']}, x, m['keep_idx'], m['keep_valid'],
                         capture_intermediates=True, mutable=['intermediates'])
    seen = {'Dense': 0, 'LayerNorm': 0, 'Block': 0}

    def walk(tree, path=()):
        for k, v in tree.items():
            if k == '__call__':
                name = path[-1] if path else ''
                out = v[0]
                if name.startswith('norm'):
                    assert out.dtype == jnp.float32, path
                    seen['LayerNorm'] += 1
                elif name.startswith('blocks'):
                    assert out.dtype == jnp.float32, path
                    seen['Block'] += 1
                elif name in ('patch_embed', 'fc1', 'fc2'):
                    assert out.dtype == jnp.bfloat16, path
                    seen['Dense'] += 1
            elif isinstance(v, dict):
                walk(v, path + (k,))
    walk(state['intermediates'])
    assert seen['LayerNorm'] == 2 * cfg.depth + 1 and seen['Block'] == cfg.depth
    assert seen['Dense'] == 1 + 2 * cfg.depth


def _primitives(jaxpr):
    """All equations of a jaxpr, recursing into sub-jaxprs (custom_vjp, pjit, ...)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (list, tuple)) else [p]):
                inner = getattr(sub, 'jaxpr', sub)
                if isinstance(inner, jax.extend.core.Jaxpr):
                    yield from _primitives(inner)


def test_bf16_matmul_inputs_are_bf16_and_softmax_is_float32(setup):
    cfg, params, x, m = setup
    loss = _loss_fn(cfg, 'bfloat16')
    jaxpr = jax.make_jaxpr(jax.grad(lambda p: loss(p, params['encoder'], x, m)[0]))(params).jaxpr
    eqns = list(_primitives(jaxpr))
    dots = [e for e in eqns if e.primitive.name == 'dot_general']
    exps = [e for e in eqns if e.primitive.name == 'exp']
    assert dots and exps
    # Every learned projection and attention product takes bf16 operands; the
    # only float32 matmul is the predictor's exact one-hot placement of the
    # context tokens (a scatter written as a batched matmul) and its gradient.
    f32_dots = [e for e in dots if any(v.aval.dtype == jnp.float32 for v in e.invars)]
    assert len(f32_dots) <= 2, [str(e) for e in f32_dots]
    assert len(dots) - len(f32_dots) > 10 * cfg.depth
    assert all(e.invars[0].aval.dtype == jnp.float32 for e in exps)
