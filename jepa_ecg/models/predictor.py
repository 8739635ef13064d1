"""The JEPA predictor: context tokens + mask tokens -> predicted target tokens."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jepa_ecg.models.layers import (Block, Dense, kernel_init, layer_norm, sincos_pos_embed,
                                     trunc_normal)

Dtype = Any


class Predictor(nn.Module):
    """Predicts the target encoder's outputs at every masked patch in one pass.

    The predictor attends over exactly one token per patch position: the
    projected context-encoder output where the patch was kept, a learnable
    mask token where it was masked, each plus the sin-cos position of its
    patch. Attention is permutation-equivariant, so laying the tokens out in
    patch order gives the same outputs as [kept..., masked...] ordering while
    avoiding gathers and padding (the sequence is always N tokens long).
    `weight_init` (ModelConfig.init) sets the embed/blocks/proj kernels (the
    mask token is N(0, 0.02) either way); the LayerNorms have a bias when
    `bias` or `norm_bias`.
    """
    dim: int
    pred_dim: int
    depth: int
    num_heads: int
    num_patches: int
    residual_depth: int
    mlp_ratio: float = 4.0
    bias: bool = False
    qkv_bias: bool = False
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    weight_init: str = 'trunc_normal'
    norm_bias: bool = False

    @nn.compact
    def __call__(self, context: jax.Array, keep_idx: jax.Array, keep_valid: jax.Array,
                 predict_mask: jax.Array) -> jax.Array:
        """Args:
          context: (B, K, dim) context-encoder outputs (registers removed).
          keep_idx: (B, K) patch index of each context token.
          keep_valid: (B, K) False for padding context tokens.
          predict_mask: (B, N) True at the patches to predict.

        Returns:
          (B, N, dim) float32 predictions; only positions with predict_mask
          are meaningful. Under a bfloat16 `dtype` only matmul inputs are
          bfloat16; the token stream and LayerNorms are float32.
        """
        n = predict_mask.shape[1]
        embedded = Dense(self.pred_dim, self.bias, self.dtype, kernel_init(self.weight_init),
                         name='embed')(context).astype(jnp.float32)
        # Place each valid context token at its patch position (padding lands nowhere).
        placement = (jax.nn.one_hot(keep_idx, n, dtype=jnp.float32) *
                     keep_valid[..., None].astype(jnp.float32))  # (B, K, N)
        placed = jnp.einsum('bkn,bkd->bnd', placement, embedded)
        mask_token = self.param('mask_token', trunc_normal(0.02), (1, 1, self.pred_dim))
        tokens = jnp.where(predict_mask[..., None], mask_token, placed)
        pos = jnp.asarray(sincos_pos_embed(self.pred_dim, self.num_patches)[:n], jnp.float32)
        tokens = tokens + pos[None]
        for i in range(self.depth):
            tokens = Block(self.pred_dim, self.num_heads, self.mlp_ratio, self.qkv_bias,
                           self.bias, 0.0, self.norm_eps, residual_depth=self.residual_depth,
                           dtype=self.dtype, weight_init=self.weight_init,
                           norm_bias=self.norm_bias, name=f'blocks_{i}')(tokens)
        tokens = layer_norm(self.bias or self.norm_bias, self.norm_eps, 'norm')(tokens)
        return Dense(self.dim, self.bias, self.dtype, kernel_init(self.weight_init),
                     name='proj')(tokens).astype(jnp.float32)
