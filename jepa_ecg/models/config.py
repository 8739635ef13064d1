"""Model variants and the shape facts that follow from sampling rate and window."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

VARIANTS: dict[str, dict[str, int]] = {
    'XS': dict(dim=192, depth=8, num_heads=4, pred_dim=96, pred_depth=8, pred_num_heads=4),
    'S': dict(dim=384, depth=8, num_heads=6, pred_dim=192, pred_depth=8, pred_num_heads=6),
    'B': dict(dim=768, depth=12, num_heads=12, pred_dim=384, pred_depth=12, pred_num_heads=12),
    # Not a published size: for smoke runs and tests only.
    'tiny': dict(dim=32, depth=2, num_heads=2, pred_dim=16, pred_depth=1, pred_num_heads=2),
}

PATCH_SECONDS = 0.05  # one token = 50 ms of all leads

# Weight initialisations of Linear/Conv kernels (encoder, predictor, heads):
# 'trunc_normal': N(0, 0.02) truncated, the two residual projections of each
#   block (attn.proj, mlp.fc2) at 0.02 / sqrt(2 * depth) (the later official code);
# 'xavier': xavier-uniform on torch's fan_in + fan_out, no depth scaling (the
#   official first release, behind the published numbers).
# Registers, the mask token and the pooler query are N(0, 0.02) in both.
INITS = ('trunc_normal', 'xavier')

# Kernels the model runs on: 'stock' (Flax Dense/LayerNorm, exact GELU,
# jax.nn.dot_product_attention: each backend picks its own), 'cpu' (the
# XLA:CPU kernels of jepa_ecg.models.cpu_kernels), 'auto' (cpu on the CPU
# backend, stock elsewhere). Both paths declare the same parameter tree.
KERNELS = ('auto', 'stock', 'cpu')


def resolve_kernels(kernels: str) -> str:
    """'stock' or 'cpu' for a ModelConfig.kernels value on the current backend."""
    if kernels not in KERNELS:
        raise ValueError(f'model.kernels: unknown {kernels!r}; choose from {KERNELS}')
    if kernels == 'auto':
        import jax  # the config module stays importable without initialising JAX
        return 'cpu' if jax.default_backend() == 'cpu' else 'stock'
    return kernels


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild an encoder/predictor pair.

    `patch_size` defaults to 50 ms at `fs` (25 samples at 500 Hz, 5 at 100 Hz).
    `num_patches` is the number of positions of the full pre-training window;
    shorter inputs (e.g. 2.5 s fine-tuning crops) use its first positions.
    `init` is one of INITS. `bias` switches the Linear/Conv biases and the
    LayerNorm biases; `norm_bias` gives the LayerNorms a bias whatever
    `bias` says (the first official release did, with `bias: False`).
    `kernels` is one of KERNELS (how the model computes, not what: files
    without it read as 'auto'); `remat` recomputes each transformer block's
    activations in the backward pass instead of storing them.
    """
    variant: str = 'XS'
    dim: int = 192
    depth: int = 8
    num_heads: int = 4
    pred_dim: int = 96
    pred_depth: int = 8
    pred_num_heads: int = 4
    mlp_ratio: float = 4.0
    num_leads: int = 12
    fs: float = 500.0
    window_seconds: float = 10.0
    patch_size: int = 25
    num_registers: int = 1
    bias: bool = False
    qkv_bias: bool = False
    norm_eps: float = 1e-6
    dtype: str = 'float32'
    init: str = 'trunc_normal'
    norm_bias: bool = False
    kernels: str = 'auto'
    remat: bool = False

    def __post_init__(self):
        if self.init not in INITS:
            raise ValueError(f'unknown init {self.init!r}; choose from {INITS}')
        if self.kernels not in KERNELS:
            raise ValueError(f'unknown kernels {self.kernels!r}; choose from {KERNELS}')

    @property
    def window_samples(self) -> int:
        return int(round(self.fs * self.window_seconds))

    @property
    def num_patches(self) -> int:
        if self.window_samples % self.patch_size:
            raise ValueError(f'window of {self.window_samples} samples is not a multiple '
                             f'of patch_size={self.patch_size}')
        return self.window_samples // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> 'ModelConfig':
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(d).items() if k in names})


def model_config(variant: str = 'XS', *, fs: float = 500.0, window_seconds: float = 10.0,
                 patch_size: int | None = None, **overrides) -> ModelConfig:
    """Builds the config of a named variant at a sampling rate.

    Args:
      variant: one of VARIANTS ('XS', 'S', 'B', or 'tiny' for tests).
      fs: sampling rate of the model's input in Hz.
      window_seconds: pre-training window length.
      patch_size: samples per token; default 50 ms at `fs`.
      **overrides: any other ModelConfig field.
    """
    try:
        shape = VARIANTS[variant]
    except KeyError:
        raise ValueError(f'unknown variant {variant!r}; choose from {sorted(VARIANTS)}') from None
    if patch_size is None:
        patch_size = int(round(fs * PATCH_SECONDS))
    return ModelConfig(variant=variant, fs=float(fs), window_seconds=float(window_seconds),
                       patch_size=int(patch_size), **{**shape, **overrides})


def model_config_from(config: Any, variant: str | None = None) -> ModelConfig:
    """The ModelConfig an experiment config (ml_collections.ConfigDict) asks for.

    Pre-training and fine-tuning (`--encoder=random:<variant>`) configs and
    the benchmark all describe the model the same way; this reads it.

    Args:
      config: a config with `model.fs`, `model.window_seconds`, optional
        `model.variant`, `model.patch_size` (None: 50 ms at fs),
        `model.num_registers`, `model.init` (None: 'trunc_normal'),
        `model.norm_bias`, `model.kernels` (None: 'auto'), `model.remat`,
        and optional `dtype`.
      variant: the variant, when the config does not name it.

    Returns:
      ModelConfig.
    """
    m = config.model
    variant = variant or m.get('variant')
    if variant is None:
        raise ValueError(f'model.variant: not set; choose from {sorted(VARIANTS)}')
    overrides = {}
    if m.get('num_registers') is not None:
        overrides['num_registers'] = int(m.num_registers)
    if m.get('init') is not None:
        overrides['init'] = str(m.init)
    if m.get('norm_bias') is not None:
        overrides['norm_bias'] = bool(m.norm_bias)
    if m.get('kernels') is not None:
        overrides['kernels'] = str(m.kernels)
    if m.get('remat') is not None:
        overrides['remat'] = bool(m.remat)
    return model_config(variant, fs=m.fs, window_seconds=m.window_seconds,
                        patch_size=m.get('patch_size'), dtype=config.get('dtype', 'float32'),
                        **overrides)
