"""Transformer building blocks shared by the encoder, predictor and heads."""

from __future__ import annotations

import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jepa_ecg.models.config import INITS

Dtype = Any


def trunc_normal(stddev: float = 0.02, bound: float = 2.0):
    """Normal(0, stddev) truncated to [-bound, bound] in absolute units.

    The reference initialisation truncates at +-2 absolute (not +-2 std), which
    for std 0.02 is practically an untruncated normal; we keep that.
    """
    def init(key, shape, dtype=jnp.float32):
        lim = bound / stddev
        return jax.random.truncated_normal(key, -lim, lim, shape, jnp.float32).astype(dtype) * stddev
    return init


def xavier_uniform(fan_in: Optional[int] = None, fan_out: Optional[int] = None):
    """Uniform(-a, a) with a = sqrt(6 / (fan_in + fan_out)), torch's xavier-uniform.

    The fans default to those of a Dense kernel (in, out); layers whose torch
    counterpart counts them otherwise (a Conv1d counts the kernel width in
    both) pass them explicitly.
    """
    def init(key, shape, dtype=jnp.float32):
        fi = shape[-2] if fan_in is None else fan_in
        fo = shape[-1] if fan_out is None else fan_out
        a = math.sqrt(6.0 / (fi + fo))
        return jax.random.uniform(key, shape, jnp.float32, -a, a).astype(dtype)
    return init


def kernel_init(init: str, std: float = 0.02, fan_in: Optional[int] = None,
                fan_out: Optional[int] = None):
    """The initialiser of a Linear/Conv kernel under a ModelConfig `init`.

    'trunc_normal': trunc_normal(std) (std carries any depth scaling);
    'xavier': xavier_uniform(fan_in, fan_out), whatever `std` says.
    """
    if init == 'trunc_normal':
        return trunc_normal(std)
    if init == 'xavier':
        return xavier_uniform(fan_in, fan_out)
    raise ValueError(f'unknown init {init!r}; choose from {INITS}')


def sincos_pos_embed(dim: int, num_positions: int) -> np.ndarray:
    """Fixed 1D sine-cosine positions, (num_positions, dim).

    Even channels hold sin(p * w_i), odd channels cos(p * w_i), with
    w_i = 10000^(-2i/dim).
    """
    if dim % 2:
        raise ValueError(f'positional embedding needs an even dim, got {dim}')
    pos = np.arange(num_positions, dtype=np.float64)[:, None]
    freq = np.exp(np.arange(0, dim, 2, dtype=np.float64) * (-math.log(10000.0) / dim))
    out = np.zeros((num_positions, dim), np.float32)
    out[:, 0::2] = np.sin(pos * freq)
    out[:, 1::2] = np.cos(pos * freq)
    return out


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
    and phi as extra activation-sized tensors with passes of their own. Equal to jax.nn.gelu(approximate=False) to
    float32 rounding, values and gradients (tests/test_numerics.py).
    """
    return x * _gelu_cdf_pdf(x)[0]


def _gelu_exact_fwd(x):
    return gelu_exact(x), x


def _gelu_exact_bwd(x, g):
    cdf, pdf = _gelu_cdf_pdf(x)
    return (g * (cdf + x * pdf),)


gelu_exact.defvjp(_gelu_exact_fwd, _gelu_exact_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x, scale, bias, eps):
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


_layer_norm.defvjp(lambda x, scale, bias, eps: _layer_norm_fwd(x, scale, bias, eps),
                   _layer_norm_bwd)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis, float32 statistics and output.

    Same params as flax's nn.LayerNorm ('scale', optional 'bias'). Mean and
    variance are taken in two passes ((x - mean)^2, not E[x^2] - E[x]^2),
    and the backward pass is written out (x, mean and 1/std are its only
    residuals), which lets XLA fuse each direction into a couple of passes
    over the activations instead of the chain autodiff leaves.
    """
    epsilon: float = 1e-6
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        scale = self.param('scale', nn.initializers.ones_init(), (d,), jnp.float32)
        bias = (self.param('bias', nn.initializers.zeros_init(), (d,), jnp.float32)
                if self.use_bias else None)
        return _layer_norm(x.astype(jnp.float32), scale, bias, self.epsilon)


def attention_scores_mask(key_valid: Optional[jax.Array]) -> Optional[jax.Array]:
    """(B, L) validity of keys -> (B, 1, 1, L) boolean mask, or None."""
    if key_valid is None:
        return None
    return key_valid[:, None, None, :]


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _cotangent_as(x, dtype):
    """Identity whose backward pass casts the cotangent to `dtype`."""
    return x


_cotangent_as.defvjp(lambda x, dtype: (x, None), lambda dtype, _, g: (g.astype(dtype),))


def _f32_product(subscripts, a, b):
    """einsum of (possibly bf16) operands accumulated and returned in float32;
    its backward products take operands in the operands' dtype, like autocast."""
    out = jnp.einsum(subscripts, a, b, preferred_element_type=jnp.float32)
    return out if a.dtype == jnp.float32 else _cotangent_as(out, a.dtype)


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
    logits = _f32_product('bhqd,bhkd->bhqk', q, k)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    # The max only stabilises the exponent; its gradient cancels exactly.
    weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
    norm = weights.sum(axis=-1, keepdims=True)
    out = _f32_product('bhqk,bhkd->bhqd', weights.astype(v.dtype), v)
    return (out / norm).astype(v.dtype)


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
    same tree; the caller applies them (see `dense`).
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


class Attention(nn.Module):
    """Multi-head self-attention; qkv has its own bias switch (off in ECG-JEPA).

    Parameters are those of Dense layers 'qkv' (dim -> 3 * dim, columns
    ordered [q|k|v] x heads x head_dim) and 'proj' (dim -> dim). The
    projections are 2-D matmuls over all B * L tokens (see `dense`): q, k
    and v each from its third of the kernel (cheaper on XLA:CPU than one
    (B * L, 3 * dim) product sliced afterwards), each moved to head-major
    (B, H, L, Dh) for the attention products, and the output moved back to
    (B * L, dim), one small copy each, as the official code does. The
    1/sqrt(Dh) scale is folded into the q columns of the kernel.
    tests/test_numerics.py checks it against the plain formulation.
    """
    dim: int
    num_heads: int
    qkv_bias: bool = False
    bias: bool = False
    dropout: float = 0.0
    proj_std: float = 0.02
    dtype: Dtype = jnp.float32
    weight_init: str = 'trunc_normal'

    @nn.compact
    def __call__(self, x, key_valid=None, deterministic: bool = True):
        b, n, d = x.shape
        h = self.num_heads
        head_dim = self.dim // h
        init = self.weight_init
        w_qkv, b_qkv = DenseParams(3 * self.dim, self.qkv_bias, kernel_init(init), name='qkv')(d)
        w_proj, b_proj = DenseParams(self.dim, self.bias, kernel_init(init, self.proj_std),
                                     name='proj')(self.dim)
        scale = jnp.concatenate([jnp.full((self.dim,), head_dim ** -0.5, jnp.float32),
                                 jnp.ones((2 * self.dim,), jnp.float32)])
        w_qkv = (w_qkv * scale).reshape(d, 3, self.dim)
        if b_qkv is not None:
            b_qkv = (b_qkv * scale).reshape(3, self.dim)
        heads = lambda t: jnp.transpose(t.reshape(b, n, h, head_dim), (0, 2, 1, 3))
        q, k, v = (heads(dense(x, w_qkv[:, i], None if b_qkv is None else b_qkv[i], self.dtype))
                   for i in range(3))
        out = softmax_attention(q, k, v, attention_scores_mask(key_valid))
        out = jnp.swapaxes(out, 1, 2).reshape(b, n, self.dim)
        out = dense(out, w_proj, b_proj, self.dtype)
        return nn.Dropout(self.dropout)(out, deterministic=deterministic)


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2; the GELU runs in float32 on the fc1 output."""
    hidden_dim: int
    out_dim: int
    bias: bool = False
    dropout: float = 0.0
    fc2_std: float = 0.02
    dtype: Dtype = jnp.float32
    weight_init: str = 'trunc_normal'

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        init = self.weight_init
        x = Dense(self.hidden_dim, self.bias, self.dtype, kernel_init(init), name='fc1')(x)
        x = gelu_exact(x.astype(jnp.float32)).astype(self.dtype)
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        x = Dense(self.out_dim, self.bias, self.dtype, kernel_init(init, self.fc2_std),
                  name='fc2')(x)
        return nn.Dropout(self.dropout)(x, deterministic=deterministic)


def layer_norm(bias: bool, eps: float, name: str) -> LayerNorm:
    """LayerNorm with float32 statistics and float32 output (the residual
    stream's dtype), whatever the compute dtype: as under autocast."""
    return LayerNorm(epsilon=eps, use_bias=bias, name=name)


class Block(nn.Module):
    """Pre-LN transformer block: x + MHSA(LN(x)); x + MLP(LN(x)).

    The residual stream `x` and the LayerNorms are float32; only the matmul
    inputs (and outputs) of attention and MLP are in `dtype`, whose results
    are added back in float32. `residual_depth` sets the scaled init std
    0.02 / sqrt(2 * residual_depth) of the two residual projections under
    weight_init='trunc_normal' ('xavier' has no depth scaling). The
    LayerNorms have a bias when `bias` or `norm_bias`.
    """
    dim: int
    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    bias: bool = False
    dropout: float = 0.0
    norm_eps: float = 1e-6
    residual_depth: int = 1
    dtype: Dtype = jnp.float32
    weight_init: str = 'trunc_normal'
    norm_bias: bool = False

    @nn.compact
    def __call__(self, x, key_valid=None, deterministic: bool = True):
        res_std = 0.02 / math.sqrt(2 * self.residual_depth)
        ln_bias = self.bias or self.norm_bias
        x = x.astype(jnp.float32)
        h = layer_norm(ln_bias, self.norm_eps, 'norm1')(x)
        h = Attention(self.dim, self.num_heads, self.qkv_bias, self.bias, self.dropout, res_std,
                      self.dtype, self.weight_init, name='attn')(h, key_valid, deterministic)
        x = x + h.astype(jnp.float32)
        h = layer_norm(ln_bias, self.norm_eps, 'norm2')(x)
        h = Mlp(int(self.dim * self.mlp_ratio), self.dim, self.bias, self.dropout,
                res_std, self.dtype, self.weight_init, name='mlp')(h, deterministic)
        return x + h.astype(jnp.float32)


class AttentivePooler(nn.Module):
    """One learnable query cross-attends over tokens and projects to `out_dim`.

    This is the linear-probe head: no MLP, the attention output projection
    maps straight to the classes. `weight_init` sets the q/kv/proj kernels;
    the query token is N(0, 0.02) either way.
    """
    dim: int
    num_heads: int
    out_dim: int
    num_queries: int = 1
    qkv_bias: bool = False
    bias: bool = False
    dtype: Dtype = jnp.float32
    weight_init: str = 'trunc_normal'

    @nn.compact
    def __call__(self, x, key_valid=None):
        b, n, _ = x.shape
        head_dim = self.dim // self.num_heads
        query = self.param('query_token', trunc_normal(0.02), (1, self.num_queries, self.dim))
        query = jnp.broadcast_to(query, (b, self.num_queries, self.dim))
        init = kernel_init(self.weight_init)
        q = Dense(self.dim, self.qkv_bias, self.dtype, init, name='q')(query)
        kv = Dense(2 * self.dim, self.qkv_bias, self.dtype, init, name='kv')(x)
        kv = kv.reshape(b, n, 2, self.num_heads, head_dim)
        q = q.reshape(b, self.num_queries, self.num_heads, head_dim)
        out = multihead_attention(q, kv[:, :, 0], kv[:, :, 1], attention_scores_mask(key_valid))
        out = out.reshape(b, self.num_queries, self.dim)
        out = Dense(self.out_dim, self.bias, self.dtype, init, name='proj')(out)
        return out  # (B, num_queries, out_dim)
