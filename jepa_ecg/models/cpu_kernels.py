"""XLA:CPU kernels of the model (`ModelConfig.kernels='cpu'`).

The same computation as the stock Flax/JAX layers of jepa_ecg.models.layers
with the same parameters, arranged for XLA:CPU: 2-D matmuls over all tokens
with a backward pass that picks the GEMM's fast operand order, a written-out
LayerNorm and GELU backward, and attention that normalises the softmax after
the value product. tests/test_kernels.py checks both paths agree (values,
parameter and input gradients); tests/test_numerics.py checks these kernels
against the plain formulation.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


_SQRT_HALF = float(np.sqrt(0.5))
_INV_SQRT_2PI = float(1.0 / np.sqrt(2.0 * np.pi))


def _gelu_cdf_pdf(x):
    cdf = 0.5 + 0.5 * jax.lax.erf(x * jnp.asarray(_SQRT_HALF, x.dtype))
    pdf = jnp.exp(-0.5 * x * x) * jnp.asarray(_INV_SQRT_2PI, x.dtype)
    return cdf, pdf


@jax.custom_vjp
def gelu_exact(x):
    """Exact (erf) GELU, x * Phi(x), as torch.nn.GELU() computes it.

    Written with `erf` rather than jax.nn.gelu's `erfc`, which XLA:CPU
    expands into a branchy select chain. The backward pass keeps only the
    input and recomputes Phi(x) + x * phi(x) where it multiplies it into
    the incoming gradient; differentiating the formula instead stores Phi
    and phi as extra activation-sized tensors with passes of their own.
    Equal to jax.nn.gelu(approximate=False) to float32 rounding, values and
    gradients (tests/test_numerics.py).
    """
    return x * _gelu_cdf_pdf(x)[0]


def _gelu_exact_fwd(x):
    return gelu_exact(x), x


def _gelu_exact_bwd(x, g):
    cdf, pdf = _gelu_cdf_pdf(x)
    return (g * (cdf + x * pdf),)


gelu_exact.defvjp(_gelu_exact_fwd, _gelu_exact_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x, scale, bias, eps):
    """LayerNorm of float32 `x` over its last axis with `scale` and optional `bias`.

    Mean and variance are taken in two passes ((x - mean)^2, not
    E[x^2] - E[x]^2), and the backward pass is written out (x, mean and
    1/std are its only residuals), which lets XLA fuse each direction into a
    couple of passes over the activations instead of the chain autodiff leaves.
    """
    return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_fwd(x, scale, bias, eps):
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    rstd = jax.lax.rsqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)
    y = xc * rstd * scale
    if bias is not None:
        y = y + bias
    return y, (x, mean, rstd, scale, bias)


def _layer_norm_bwd(eps, res, g):
    del eps
    x, mean, rstd, scale, bias = res
    xhat = (x - mean) * rstd
    reduce = tuple(range(g.ndim - 1))
    d_scale = (g * xhat).sum(axis=reduce)
    d_bias = None if bias is None else g.sum(axis=reduce)
    gs = g * scale
    dx = rstd * (gs - gs.mean(axis=-1, keepdims=True)
                 - xhat * (gs * xhat).mean(axis=-1, keepdims=True))
    return dx, d_scale, d_bias


layer_norm.defvjp(lambda x, scale, bias, eps: _layer_norm_fwd(x, scale, bias, eps),
                   _layer_norm_bwd)


class LayerNorm(nn.Module):
    """nn.LayerNorm's params ('scale', optional 'bias'), applied by `layer_norm`
    in float32 whatever the input dtype."""
    epsilon: float = 1e-6
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        scale = self.param('scale', nn.initializers.ones_init(), (d,), jnp.float32)
        bias = (self.param('bias', nn.initializers.zeros_init(), (d,), jnp.float32)
                if self.use_bias else None)
        return layer_norm(x.astype(jnp.float32), scale, bias, self.epsilon)


@jax.custom_vjp
def _matmul(x, w):
    """x (n, in) @ w (in, out); the backward pass picks XLA:CPU's fast operand order."""
    return jnp.dot(x, w)


def _matmul_fwd(x, w):
    return jnp.dot(x, w), (x, w)


def _matmul_bwd(res, g):
    x, w = res
    dx = jnp.dot(g, w.T)
    if w.shape[0] > w.shape[1]:
        # The kernel gradient x^T g contracts over all n tokens; XLA:CPU's
        # GEMM runs that form ~1.4x faster with the narrower side as the
        # left operand, so a widening-to-narrowing layer (fc2) computes
        # (g^T x)^T. The barrier stops XLA from canonicalising it back; the
        # transpose is of the small (out, in) result.
        dw = jax.lax.optimization_barrier(jnp.dot(g.T, x)).T
    else:
        dw = jnp.dot(x.T, g)
    return dx, dw


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dense(x: jax.Array, kernel: jax.Array, bias: Optional[jax.Array] = None,
          dtype: Dtype = jnp.float32) -> jax.Array:
    """`x (..., in) @ kernel (in, out) [+ bias]` as ONE 2-D matmul in `dtype`.

    The leading axes are flattened first. Contracting a (B, L, in) input
    with a 3-D dot_general makes the kernel gradient a contraction over two
    axes (B and L); XLA:CPU canonicalises that dot by physically
    transposing the (B, L, out) output gradient (fused into the producer
    of that gradient, e.g. the GELU derivative) into an (out, B * L)
    buffer. That transposing loop reads with a stride of `out` floats and
    is bound by TLB and cache misses, so its cost swings with the
    machine's cache/TLB sizes, huge-page setting and co-tenants. On
    (B * L, in) the kernel gradient is a plain `x^T @ g`, which the matmul
    libraries take without any copy. Output dtype is `dtype` (what autocast
    gives a Linear).
    """
    lead = x.shape[:-1]
    y = _matmul(x.reshape(-1, x.shape[-1]).astype(dtype), kernel.astype(dtype))
    if bias is not None:
        y = y + bias.astype(dtype)
    return y.reshape(*lead, kernel.shape[-1])


def _dot_f32(subscripts, a, b):
    """einsum of (possibly bf16) operands accumulated and returned in float32."""
    return jnp.einsum(subscripts, a, b, preferred_element_type=jnp.float32)


@jax.custom_vjp
def softmax_attention(q, k, v, mask=None):
    """Softmax attention on head-major (B, H, L, Dh) tensors, q already scaled.

    The softmax normalisation is applied after the value product:
    (exp(s - max) @ v) / sum(exp(s - max)) equals softmax(s) @ v but divides
    the (B, H, Lq, Dh) output instead of the (B, H, Lq, Lk) weights, saving a
    full pass over the attention matrix forward and backward. The logits,
    exponentials, sums and the division are float32 even when q, k, v are
    bfloat16 (the matmul inputs); the output has v's dtype.
    `mask` (True = attend) broadcasts to (B, H, Lq, Lk).
    """
    return _attention_fwd(q, k, v, mask)[0]


def _attention_fwd(q, k, v, mask):
    logits = _dot_f32('bhqd,bhkd->bhqk', q, k)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jnp.exp(logits - logits.max(axis=-1, keepdims=True))
    norm = weights.sum(axis=-1, keepdims=True)
    out = _dot_f32('bhqk,bhkd->bhqd', weights.astype(v.dtype), v) / norm
    return out.astype(v.dtype), (q, k, v, mask, weights, norm)


def _attention_bwd(res, g):
    # The softmax backward p * (dp - sum(p * dp)) is formed from ONE rounded
    # dp, so its rows sum to zero as the softmax's do (a common shift of the
    # logits changes nothing). Differentiating the late-normalised forward
    # instead subtracts a float32 term from a bf16-rounded one and leaves a
    # spurious shift gradient in q and k at bf16 precision.
    q, k, v, mask, weights, norm = res
    g_norm = (g.astype(jnp.float32) / norm).astype(v.dtype)        # (B, H, Lq, Dh)
    dv = _dot_f32('bhqk,bhqd->bhkd', weights.astype(v.dtype), g_norm).astype(v.dtype)
    dp = _dot_f32('bhqd,bhkd->bhqk', g_norm, v)                     # dp / norm
    shift = (weights * dp).sum(axis=-1, keepdims=True) / norm
    d_logits = (weights * (dp - shift)).astype(q.dtype)
    dq = _dot_f32('bhqk,bhkd->bhqd', d_logits, k).astype(q.dtype)
    dk = _dot_f32('bhqk,bhqd->bhkd', d_logits, q).astype(k.dtype)
    return dq, dk, dv, None


softmax_attention.defvjp(_attention_fwd, _attention_bwd)


def multihead_attention(q, k, v, mask=None):
    """Softmax attention on (B, L, H, Dh) tensors; `mask` broadcasts to (B, H, Lq, Lk)."""
    scale = q.shape[-1] ** -0.5
    to_heads = lambda t: jnp.swapaxes(t, 1, 2)  # (B, L, H, Dh) -> (B, H, L, Dh)
    out = softmax_attention(to_heads(q * jnp.asarray(scale, q.dtype)), to_heads(k), to_heads(v),
                            mask)
    return to_heads(out)


class DenseParams(nn.Module):
    """Declares exactly the params of `nn.Dense(features)` and returns them.

    Same names ('kernel' (in, features), optional 'bias'), shapes, float32
    storage and initialisers, so checkpoints and the torch importer see the
    same tree; the caller applies them (see `self_attention`).
    """
    features: int
    use_bias: bool = False
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, in_features: int):
        kernel = self.param('kernel', self.kernel_init, (in_features, self.features), jnp.float32)
        bias = (self.param('bias', self.bias_init, (self.features,), jnp.float32)
                if self.use_bias else None)
        return kernel, bias


class Dense(nn.Module):
    """`nn.Dense` with the same params, applied as one 2-D matmul (see `dense`).

    Params are float32; inputs and kernel are cast to `dtype` and the
    output is in `dtype`.
    """
    features: int
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x):
        kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features), jnp.float32)
        bias = (self.param('bias', self.bias_init, (self.features,), jnp.float32)
                if self.use_bias else None)
        return dense(x, kernel, bias, self.dtype)


def self_attention(x, w_qkv, b_qkv, w_proj, b_proj, num_heads: int,
                   key_valid: Optional[jax.Array] = None, dtype: Dtype = jnp.float32):
    """Multi-head self-attention of x (B, L, dim) with the params of Dense 'qkv'
    (dim -> 3 * dim, columns [q|k|v] x heads x head_dim) and 'proj' (dim -> dim).

    The projections are 2-D matmuls over all B * L tokens (see `dense`): q, k
    and v each from its third of the kernel (cheaper on XLA:CPU than one
    (B * L, 3 * dim) product sliced afterwards), each moved to head-major
    (B, H, L, Dh) for the attention products, and the output moved back to
    (B * L, dim), one small copy each, as the official code does. The
    1/sqrt(Dh) scale is folded into the q columns of the kernel. `key_valid`
    (B, L) is False at padding keys. Returns (B, L, dim) in `dtype`.
    """
    b, n, d = x.shape
    dim = w_proj.shape[0]
    head_dim = dim // num_heads
    scale = jnp.concatenate([jnp.full((dim,), head_dim ** -0.5, jnp.float32),
                             jnp.ones((2 * dim,), jnp.float32)])
    w_qkv = (w_qkv * scale).reshape(d, 3, dim)
    if b_qkv is not None:
        b_qkv = (b_qkv * scale).reshape(3, dim)
    heads = lambda t: jnp.transpose(t.reshape(b, n, num_heads, head_dim), (0, 2, 1, 3))
    q, k, v = (heads(dense(x, w_qkv[:, i], None if b_qkv is None else b_qkv[i], dtype))
               for i in range(3))
    mask = None if key_valid is None else key_valid[:, None, None, :]
    out = softmax_attention(q, k, v, mask)
    out = jnp.swapaxes(out, 1, 2).reshape(b, n, dim)
    return dense(out, w_proj, b_proj, dtype)
