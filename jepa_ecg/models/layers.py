"""Transformer building blocks shared by the encoder, predictor and heads."""

from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


@jax.custom_jvp
def gelu_exact(x):
    """Exact (erf) GELU, x * Phi(x), as torch.nn.GELU() computes it.

    Written with `erf` rather than jax.nn.gelu's `erfc`, which XLA:CPU
    expands into a branchy select chain, and with a hand-written derivative
    Phi(x) + x * phi(x) so the backward pass is one fused elementwise
    product instead of a re-derivation through erfc (see
    experiments/benchmark.py; equal to jax.nn.gelu(approximate=False) to
    float32 rounding, checked in tests/test_numerics.py).
    """
    return x * (0.5 + 0.5 * jax.lax.erf(x * jnp.asarray(_SQRT_HALF, x.dtype)))


@gelu_exact.defjvp
def _gelu_exact_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    cdf = 0.5 + 0.5 * jax.lax.erf(x * jnp.asarray(_SQRT_HALF, x.dtype))
    pdf = jnp.exp(-0.5 * x * x) * jnp.asarray(_INV_SQRT_2PI, x.dtype)
    return x * cdf, t * (cdf + x * pdf)


def attention_scores_mask(key_valid: Optional[jax.Array]) -> Optional[jax.Array]:
    """(B, L) validity of keys -> (B, 1, 1, L) boolean mask, or None."""
    if key_valid is None:
        return None
    return key_valid[:, None, None, :]


def softmax_attention(q, k, v, mask=None):
    """Softmax attention on head-major (B, H, L, Dh) tensors, q already scaled.

    The softmax normalisation is applied after the value product:
    (exp(s - max) @ v) / sum(exp(s - max)) equals softmax(s) @ v but divides
    the (B, H, Lq, Dh) output instead of the (B, H, Lq, Lk) weights, saving a
    full pass over the attention matrix forward and backward. Exponentials,
    sums and the division run in float32 even under bf16 compute.
    `mask` (True = attend) broadcasts to (B, H, Lq, Lk).
    """
    logits = jnp.einsum('bhqd,bhkd->bhqk', q, k)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    logits = logits.astype(jnp.float32)
    # The max only stabilises the exponent; its gradient cancels exactly.
    weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
    norm = weights.sum(axis=-1, keepdims=True)
    out = jnp.einsum('bhqk,bhkd->bhqd', weights.astype(v.dtype), v,
                     preferred_element_type=jnp.float32)
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
    same tree; the caller applies them in whatever contraction order is
    fastest (e.g. straight into head-major q, k, v).
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


class Attention(nn.Module):
    """Multi-head self-attention; qkv has its own bias switch (off in ECG-JEPA).

    Parameters are those of Dense layers 'qkv' (dim -> 3 * dim, columns
    ordered [q|k|v] x heads x head_dim) and 'proj' (dim -> dim). The
    projections contract straight into head-major (B, H, L, Dh) q, k, v and
    back, one einsum each, instead of one (B, L, 3 * dim) matmul followed by
    reshapes, slices and transposes (whose backward pads, sums and
    re-transposes activations). Together with the deferred softmax
    normalisation this cut the CPU train step's time by ~20% (see
    experiments/benchmark.py); tests/test_numerics.py checks it against the
    plain formulation.
    """
    dim: int
    num_heads: int
    qkv_bias: bool = False
    bias: bool = False
    dropout: float = 0.0
    proj_std: float = 0.02
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, key_valid=None, deterministic: bool = True):
        d = x.shape[-1]
        h = self.num_heads
        head_dim = self.dim // h
        w_qkv, b_qkv = DenseParams(3 * self.dim, self.qkv_bias, trunc_normal(0.02), name='qkv')(d)
        w_proj, b_proj = DenseParams(self.dim, self.bias, trunc_normal(self.proj_std),
                                     name='proj')(self.dim)
        x = x.astype(self.dtype)
        w_qkv = w_qkv.astype(self.dtype).reshape(d, 3, h, head_dim)
        # Folding the 1/sqrt(Dh) scale into the (small) q kernel.
        scale = jnp.asarray(head_dim ** -0.5, self.dtype)
        q = jnp.einsum('bld,dhe->bhle', x, w_qkv[:, 0] * scale)
        k = jnp.einsum('bld,dhe->bhle', x, w_qkv[:, 1])
        v = jnp.einsum('bld,dhe->bhle', x, w_qkv[:, 2])
        if b_qkv is not None:
            b_qkv = b_qkv.astype(self.dtype).reshape(3, 1, h, 1, head_dim)
            q, k, v = q + b_qkv[0] * scale, k + b_qkv[1], v + b_qkv[2]
        out = softmax_attention(q, k, v, attention_scores_mask(key_valid))
        out = jnp.einsum('bhle,hed->bld', out,
                         w_proj.astype(self.dtype).reshape(h, head_dim, self.dim))
        if b_proj is not None:
            out = out + b_proj.astype(self.dtype)
        return nn.Dropout(self.dropout)(out, deterministic=deterministic)


class Mlp(nn.Module):
    hidden_dim: int
    out_dim: int
    bias: bool = False
    dropout: float = 0.0
    fc2_std: float = 0.02
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        x = nn.Dense(self.hidden_dim, use_bias=self.bias, dtype=self.dtype,
                     kernel_init=trunc_normal(0.02), name='fc1')(x)
        x = gelu_exact(x)
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        x = nn.Dense(self.out_dim, use_bias=self.bias, dtype=self.dtype,
                     kernel_init=trunc_normal(self.fc2_std), name='fc2')(x)
        return nn.Dropout(self.dropout)(x, deterministic=deterministic)


def layer_norm(bias: bool, eps: float, dtype: Dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=eps, use_bias=bias, use_scale=True, dtype=dtype, name=name)


class Block(nn.Module):
    """Pre-LN transformer block: x + MHSA(LN(x)); x + MLP(LN(x)).

    `residual_depth` sets the scaled init std 0.02 / sqrt(2 * residual_depth)
    of the two residual projections.
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

    @nn.compact
    def __call__(self, x, key_valid=None, deterministic: bool = True):
        res_std = 0.02 / math.sqrt(2 * self.residual_depth)
        h = layer_norm(self.bias, self.norm_eps, self.dtype, 'norm1')(x)
        x = x + Attention(self.dim, self.num_heads, self.qkv_bias, self.bias, self.dropout,
                          res_std, self.dtype, name='attn')(h, key_valid, deterministic)
        h = layer_norm(self.bias, self.norm_eps, self.dtype, 'norm2')(x)
        x = x + Mlp(int(self.dim * self.mlp_ratio), self.dim, self.bias, self.dropout,
                    res_std, self.dtype, name='mlp')(h, deterministic)
        return x


class AttentivePooler(nn.Module):
    """One learnable query cross-attends over tokens and projects to `out_dim`.

    This is the linear-probe head: no MLP, the attention output projection
    maps straight to the classes.
    """
    dim: int
    num_heads: int
    out_dim: int
    num_queries: int = 1
    qkv_bias: bool = False
    bias: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, key_valid=None):
        b, n, _ = x.shape
        head_dim = self.dim // self.num_heads
        query = self.param('query_token', trunc_normal(0.02), (1, self.num_queries, self.dim))
        query = jnp.broadcast_to(query, (b, self.num_queries, self.dim)).astype(self.dtype)
        q = nn.Dense(self.dim, use_bias=self.qkv_bias, dtype=self.dtype,
                     kernel_init=trunc_normal(0.02), name='q')(query)
        kv = nn.Dense(2 * self.dim, use_bias=self.qkv_bias, dtype=self.dtype,
                      kernel_init=trunc_normal(0.02), name='kv')(x)
        kv = kv.reshape(b, n, 2, self.num_heads, head_dim)
        q = q.reshape(b, self.num_queries, self.num_heads, head_dim)
        out = multihead_attention(q, kv[:, :, 0], kv[:, :, 1], attention_scores_mask(key_valid))
        out = out.reshape(b, self.num_queries, self.dim)
        out = nn.Dense(self.out_dim, use_bias=self.bias, dtype=self.dtype,
                       kernel_init=trunc_normal(0.02), name='proj')(out)
        return out  # (B, num_queries, out_dim)
