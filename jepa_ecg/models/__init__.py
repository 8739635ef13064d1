"""Flax modules of ECG-JEPA and builders from a ModelConfig."""

from __future__ import annotations

import jax.numpy as jnp

from jepa_ecg.models.config import VARIANTS, ModelConfig, model_config
from jepa_ecg.models.layers import AttentivePooler, Block, sincos_pos_embed
from jepa_ecg.models.predictor import Predictor
from jepa_ecg.models.vit import VisionTransformer

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def compute_dtype(name: str):
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f'unknown dtype {name!r}; choose from {sorted(DTYPES)}') from None


def build_encoder(cfg: ModelConfig, *, dropout: float = 0.0, dtype: str | None = None
                  ) -> VisionTransformer:
    """The encoder (context and target share this module definition)."""
    return VisionTransformer(
        dim=cfg.dim, depth=cfg.depth, num_heads=cfg.num_heads, patch_size=cfg.patch_size,
        num_patches=cfg.num_patches, num_leads=cfg.num_leads, mlp_ratio=cfg.mlp_ratio,
        num_registers=cfg.num_registers, bias=cfg.bias, qkv_bias=cfg.qkv_bias,
        norm_eps=cfg.norm_eps, dropout=dropout, dtype=compute_dtype(dtype or cfg.dtype),
        weight_init=cfg.init, norm_bias=cfg.norm_bias)


def build_predictor(cfg: ModelConfig, *, dtype: str | None = None) -> Predictor:
    return Predictor(
        dim=cfg.dim, pred_dim=cfg.pred_dim, depth=cfg.pred_depth, num_heads=cfg.pred_num_heads,
        num_patches=cfg.num_patches, residual_depth=cfg.depth, mlp_ratio=cfg.mlp_ratio,
        bias=cfg.bias, qkv_bias=cfg.qkv_bias, norm_eps=cfg.norm_eps,
        dtype=compute_dtype(dtype or cfg.dtype), weight_init=cfg.init,
        norm_bias=cfg.norm_bias)


__all__ = ['VARIANTS', 'ModelConfig', 'model_config', 'AttentivePooler', 'Block',
           'Predictor', 'VisionTransformer', 'build_encoder', 'build_predictor',
           'compute_dtype', 'sincos_pos_embed']
