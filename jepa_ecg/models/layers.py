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


def gelu_exact(x):
    return jax.nn.gelu(x, approximate=False)


def attention_scores_mask(key_valid: Optional[jax.Array]) -> Optional[jax.Array]:
    """(B, L) validity of keys -> (B, 1, 1, L) boolean mask, or None."""
    if key_valid is None:
        return None
    return key_valid[:, None, None, :]


def multihead_attention(q, k, v, mask=None):
    """Softmax attention on (B, L, H, Dh) tensors; `mask` broadcasts to (B, H, Lq, Lk)."""
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum('bqhd,bkhd->bhqk', q * jnp.asarray(scale, q.dtype), k)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    # Softmax in float32 even under bf16 compute, for stable normalisation.
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum('bhqk,bkhd->bqhd', weights, v)


class Attention(nn.Module):
    """Multi-head self-attention; qkv has its own bias switch (off in ECG-JEPA)."""
    dim: int
    num_heads: int
    qkv_bias: bool = False
    bias: bool = False
    dropout: float = 0.0
    proj_std: float = 0.02
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, key_valid=None, deterministic: bool = True):
        b, n, _ = x.shape
        head_dim = self.dim // self.num_heads
        qkv = nn.Dense(3 * self.dim, use_bias=self.qkv_bias, dtype=self.dtype,
                       kernel_init=trunc_normal(0.02), name='qkv')(x)
        qkv = qkv.reshape(b, n, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        out = multihead_attention(q, k, v, attention_scores_mask(key_valid))
        out = out.reshape(b, n, self.dim)
        out = nn.Dense(self.dim, use_bias=self.bias, dtype=self.dtype,
                       kernel_init=trunc_normal(self.proj_std), name='proj')(out)
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
