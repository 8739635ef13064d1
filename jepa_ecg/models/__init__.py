"""Flax modules of ECG-JEPA and builders from a ModelConfig."""

from __future__ import annotations

import jax.numpy as jnp

from jepa_ecg.models.config import KERNELS, VARIANTS, ModelConfig, model_config
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
    return VisionTransformer(cfg, dropout=dropout, dtype=compute_dtype(dtype or cfg.dtype))


def build_predictor(cfg: ModelConfig, *, dtype: str | None = None) -> Predictor:
    return Predictor(cfg, dtype=compute_dtype(dtype or cfg.dtype))


__all__ = ['KERNELS', 'VARIANTS', 'ModelConfig', 'model_config', 'AttentivePooler', 'Block',
           'Predictor', 'VisionTransformer', 'build_encoder', 'build_predictor',
           'compute_dtype', 'sincos_pos_embed']
