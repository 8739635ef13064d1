"""1D-patch Vision Transformer encoder for 12-lead ECGs."""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jepa_ecg.models.config import ModelConfig
from jepa_ecg.models.layers import (block_class, dense, kernel_init, layer_norm, sincos_pos_embed,
                                    trunc_normal)

Dtype = Any


def patchify(x: jax.Array, patch_size: int) -> jax.Array:
    """(B, T, C) -> (B, T // patch, patch * C), time-major inside a patch."""
    b, t, c = x.shape
    if t % patch_size:
        raise ValueError(f'input length {t} is not a multiple of patch_size={patch_size}')
    return x.reshape(b, t // patch_size, patch_size * c)


class VisionTransformer(nn.Module):
    """ECG ViT: patch embedding + sin-cos positions + registers + pre-LN blocks.

    The patch embedding is a strided convolution over all leads at once
    (kernel = stride = patch_size), written as reshape + matmul. Under a
    bfloat16 `dtype` only the matmul inputs are bfloat16: the token stream,
    LayerNorms and the output stay float32 (see layers.Block). The
    patch embedding's xavier fans are those of the torch Conv1d
    (fan_in = leads * patch, fan_out = dim * patch).

    Attributes:
      cfg: the model (shape, biases, init, kernels, remat).
      dropout: dropout inside the blocks (fine-tuning).
      dtype: compute dtype of the matmuls.
    """
    cfg: ModelConfig
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, keep_idx: Optional[jax.Array] = None,
                 keep_valid: Optional[jax.Array] = None, *, keep_registers: bool = False,
                 deterministic: bool = True) -> jax.Array:
        """Encodes a batch of ECGs.

        Args:
          x: (B, T, leads) normalised signals, T a multiple of patch_size and
            at most num_patches * patch_size.
          keep_idx: optional (B, K) indices of the patches to encode (context
            encoder); None encodes all patches (target encoder, inference).
          keep_valid: optional (B, K) bool, False for padding entries of keep_idx.
          keep_registers: return the register tokens first in the output.
          deterministic: disables dropout.

        Returns:
          (B, K or N, dim) float32 token outputs after the final LayerNorm,
          with `num_registers` register tokens prepended when keep_registers.
        """
        cfg = self.cfg
        patches = patchify(x.astype(jnp.float32), cfg.patch_size)
        n = patches.shape[1]
        if n > cfg.num_patches:
            raise ValueError(f'{n} patches exceed the model\'s {cfg.num_patches} positions')
        pos = jnp.asarray(sincos_pos_embed(cfg.dim, cfg.num_patches)[:n], jnp.float32)
        if keep_idx is None:
            pos = pos[None]
        else:
            # Select the kept patches BEFORE the embedding: the embedding is
            # per patch, so this equals embedding all and gathering tokens,
            # but the context encoder embeds (and back-propagates into) only
            # K of N patches. Raw patches and positions carry no gradient,
            # so a plain gather is free of scatters in the backward pass.
            patches = jnp.take_along_axis(patches, keep_idx[..., None].astype(jnp.int32), axis=1,
                                          mode='clip')
            pos = jnp.take(pos, keep_idx, axis=0, mode='clip')
        embed_init = kernel_init(cfg.init, 0.02, fan_in=cfg.num_leads * cfg.patch_size,
                                 fan_out=cfg.dim * cfg.patch_size)
        tokens = dense(cfg, cfg.dim, cfg.bias, self.dtype, embed_init, 'patch_embed')(patches)
        tokens = tokens.astype(jnp.float32) + pos
        b = tokens.shape[0]
        key_valid = None
        if cfg.num_registers > 0:
            registers = self.param('registers', trunc_normal(0.02),
                                   (1, cfg.num_registers, cfg.dim))
            registers = jnp.broadcast_to(registers, (b, cfg.num_registers, cfg.dim))
            tokens = jnp.concatenate([registers, tokens], axis=1)
        if keep_valid is not None:
            key_valid = jnp.concatenate(
                [jnp.ones((b, cfg.num_registers), bool), keep_valid.astype(bool)], axis=1)
        block = block_class(cfg)
        for i in range(cfg.depth):
            tokens = block(cfg, cfg.dim, cfg.num_heads, self.dropout, self.dtype,
                           name=f'blocks_{i}')(tokens, key_valid, deterministic)
        tokens = layer_norm(cfg, 'norm')(tokens)
        if not keep_registers:
            tokens = tokens[:, cfg.num_registers:]
        return tokens
