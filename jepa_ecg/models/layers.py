"""Transformer building blocks shared by the encoder, predictor and heads.

Written with stock Flax/JAX layers (Dense, LayerNorm, exact GELU,
`jax.nn.dot_product_attention`) so each backend picks its own kernels. Under
`ModelConfig.kernels='cpu'` the same parameters are applied by the XLA:CPU
kernels of `cpu_kernels` instead.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jepa_ecg.models import cpu_kernels
from jepa_ecg.models.config import INITS, ModelConfig, resolve_kernels

Dtype = Any


def trunc_normal(stddev: float = 0.02, bound: float = 2.0):
    """Normal(0, stddev) truncated to [-bound, bound] in absolute units.

    The reference initialisation truncates at +-2 absolute (not +-2 std), which
    for std 0.02 is practically an untruncated normal; we keep that.
    """
    def init(key, shape, dtype=jnp.float32):
        lim = bound / stddev
        sample = jax.random.truncated_normal(key, -lim, lim, shape, jnp.float32)
        return sample.astype(dtype) * stddev
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


def dense(cfg: ModelConfig, features: int, use_bias: bool, dtype: Dtype, init: Any,
          name: str) -> nn.Module:
    """A Linear layer: `nn.Dense`, or its XLA:CPU twin with the same params.

    Params are float32; inputs and kernel are cast to `dtype` and the output
    is in `dtype` (what autocast gives a Linear).
    """
    if resolve_kernels(cfg.kernels) == 'cpu':
        return cpu_kernels.Dense(features, use_bias, dtype, init, name=name)
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=init, name=name)


def layer_norm(cfg: ModelConfig, name: str) -> nn.Module:
    """LayerNorm with float32 statistics and float32 output (the residual
    stream's dtype), whatever the compute dtype: as under autocast. It has a
    bias when `cfg.bias` or `cfg.norm_bias`."""
    use_bias = cfg.bias or cfg.norm_bias
    if resolve_kernels(cfg.kernels) == 'cpu':
        return cpu_kernels.LayerNorm(cfg.norm_eps, use_bias, name=name)
    # Two-pass variance, as torch computes it.
    return nn.LayerNorm(cfg.norm_eps, dtype=jnp.float32, use_bias=use_bias,
                        use_fast_variance=False, name=name)


def gelu(cfg: ModelConfig, x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, as torch.nn.GELU() computes it."""
    if resolve_kernels(cfg.kernels) == 'cpu':
        return cpu_kernels.gelu_exact(x)
    return jax.nn.gelu(x, approximate=False)


def attention(q: jax.Array, k: jax.Array, v: jax.Array,
              key_valid: Optional[jax.Array] = None) -> jax.Array:
    """Scaled dot-product attention on (B, L, H, Dh) tensors; `key_valid` (B, Lk)
    is False at padding keys. The logits and softmax are float32."""
    mask = None if key_valid is None else key_valid[:, None, None, :].astype(bool)
    return jax.nn.dot_product_attention(q, k, v, mask=mask)


def residual_std(cfg: ModelConfig) -> float:
    """Init std of the two residual projections of a block under 'trunc_normal'."""
    return 0.02 / math.sqrt(2 * cfg.depth)


class Attention(nn.Module):
    """Multi-head self-attention: Dense 'qkv' (dim -> 3 * dim, columns ordered
    [q|k|v] x heads x head_dim; bias by cfg.qkv_bias) and 'proj' (dim -> dim)."""
    cfg: ModelConfig
    dim: int
    num_heads: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, key_valid=None, deterministic: bool = True):
        cfg, (b, n, d) = self.cfg, x.shape
        qkv_init, proj_init = kernel_init(cfg.init), kernel_init(cfg.init, residual_std(cfg))
        if resolve_kernels(cfg.kernels) == 'cpu':
            qkv = cpu_kernels.DenseParams(3 * self.dim, cfg.qkv_bias, qkv_init, name='qkv')(d)
            proj = cpu_kernels.DenseParams(self.dim, cfg.bias, proj_init, name='proj')(self.dim)
            out = cpu_kernels.self_attention(x, *qkv, *proj, self.num_heads, key_valid,
                                             self.dtype)
        else:
            qkv = dense(cfg, 3 * self.dim, cfg.qkv_bias, self.dtype, qkv_init, 'qkv')(x)
            q, k, v = jnp.split(qkv.reshape(b, n, 3, self.num_heads, -1), 3, axis=2)
            out = attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], key_valid)
            out = dense(cfg, self.dim, cfg.bias, self.dtype, proj_init, 'proj')(
                out.reshape(b, n, self.dim))
        return nn.Dropout(self.dropout)(out, deterministic=deterministic)


class Mlp(nn.Module):
    """fc1 -> exact GELU (float32) -> fc2."""
    cfg: ModelConfig
    dim: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        cfg = self.cfg
        x = dense(cfg, int(self.dim * cfg.mlp_ratio), cfg.bias, self.dtype,
                  kernel_init(cfg.init), 'fc1')(x)
        x = gelu(cfg, x.astype(jnp.float32)).astype(self.dtype)
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        x = dense(cfg, self.dim, cfg.bias, self.dtype, kernel_init(cfg.init, residual_std(cfg)),
                  'fc2')(x)
        return nn.Dropout(self.dropout)(x, deterministic=deterministic)


class Block(nn.Module):
    """Pre-LN transformer block: x + MHSA(LN(x)); x + MLP(LN(x)).

    The residual stream `x` and the LayerNorms are float32; only the matmul
    inputs (and outputs) of attention and MLP are in `dtype`, whose results
    are added back in float32. Under init='trunc_normal' the two residual
    projections start at std 0.02 / sqrt(2 * cfg.depth) ('xavier' has no
    depth scaling).
    """
    cfg: ModelConfig
    dim: int
    num_heads: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, key_valid=None, deterministic: bool = True):
        cfg = self.cfg
        x = x.astype(jnp.float32)
        h = layer_norm(cfg, 'norm1')(x)
        h = Attention(cfg, self.dim, self.num_heads, self.dropout, self.dtype, name='attn')(
            h, key_valid, deterministic)
        x = x + h.astype(jnp.float32)
        h = layer_norm(cfg, 'norm2')(x)
        h = Mlp(cfg, self.dim, self.dropout, self.dtype, name='mlp')(h, deterministic)
        return x + h.astype(jnp.float32)


def block_class(cfg: ModelConfig):
    """Block, rematerialised in the backward pass when cfg.remat."""
    if cfg.remat:
        # deterministic (argument 3, counting the module) switches dropout: static.
        return nn.remat(Block, static_argnums=(3,))
    return Block


class AttentivePooler(nn.Module):
    """`num_queries` learnable queries cross-attend over the tokens; the attention
    output projection maps straight to `out_dim` (the linear-probe head: no MLP).

    Dense 'q' (dim -> dim), 'kv' (dim -> 2 * dim, keys first) and 'proj'
    follow cfg's bias switches and init; the query token is N(0, 0.02).
    """
    cfg: ModelConfig
    out_dim: int
    num_queries: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, key_valid=None):
        cfg, (b, n, _) = self.cfg, x.shape
        dim, heads = cfg.dim, cfg.num_heads
        query = self.param('query_token', trunc_normal(0.02), (1, self.num_queries, dim))
        query = jnp.broadcast_to(query, (b, self.num_queries, dim))
        init = kernel_init(cfg.init)
        q = dense(cfg, dim, cfg.qkv_bias, self.dtype, init, 'q')(query)
        kv = dense(cfg, 2 * dim, cfg.qkv_bias, self.dtype, init, 'kv')(x)
        kv = kv.reshape(b, n, 2, heads, dim // heads)
        q = q.reshape(b, self.num_queries, heads, dim // heads)
        if resolve_kernels(cfg.kernels) == 'cpu':
            mask = None if key_valid is None else key_valid[:, None, None, :]
            out = cpu_kernels.multihead_attention(q, kv[:, :, 0], kv[:, :, 1], mask)
        else:
            out = attention(q, kv[:, :, 0], kv[:, :, 1], key_valid)
        out = out.reshape(b, self.num_queries, dim)
        return dense(cfg, self.out_dim, cfg.bias, self.dtype, init, 'proj')(out)
