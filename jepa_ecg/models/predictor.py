"""The JEPA predictor: context tokens + mask tokens -> predicted target tokens."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jepa_ecg.models.config import ModelConfig
from jepa_ecg.models.layers import (block_class, dense, kernel_init, layer_norm, sincos_pos_embed,
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
    Its width, depth and heads are cfg.pred_dim, pred_depth, pred_num_heads;
    the mask token is N(0, 0.02) whatever cfg.init says.
    """
    cfg: ModelConfig
    dtype: Dtype = jnp.float32

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
        cfg, n = self.cfg, predict_mask.shape[1]
        init = kernel_init(cfg.init)
        embedded = dense(cfg, cfg.pred_dim, cfg.bias, self.dtype, init, 'embed')(context)
        embedded = embedded.astype(jnp.float32)
        # Place each valid context token at its patch position (padding lands nowhere).
        placement = (jax.nn.one_hot(keep_idx, n, dtype=jnp.float32) *
                     keep_valid[..., None].astype(jnp.float32))  # (B, K, N)
        placed = jnp.einsum('bkn,bkd->bnd', placement, embedded)
        mask_token = self.param('mask_token', trunc_normal(0.02), (1, 1, cfg.pred_dim))
        tokens = jnp.where(predict_mask[..., None], mask_token, placed)
        pos = jnp.asarray(sincos_pos_embed(cfg.pred_dim, cfg.num_patches)[:n], jnp.float32)
        tokens = tokens + pos[None]
        block = block_class(cfg)
        for i in range(cfg.pred_depth):
            tokens = block(cfg, cfg.pred_dim, cfg.pred_num_heads, 0.0, self.dtype,
                           name=f'blocks_{i}')(tokens, None, True)
        tokens = layer_norm(cfg, 'norm')(tokens)
        return dense(cfg, cfg.dim, cfg.bias, self.dtype, init, 'proj')(tokens).astype(jnp.float32)
