"""Classifiers for fine-tuning: a pre-trained encoder plus a small head.

Both heads read the encoder's output WITH its register token(s) in front:

* `AttentiveClassifier`: one learnable query cross-attends over all tokens
  (registers included) and the attention output projection maps straight to
  the classes (the `linear` and `finetune_after_linear` protocols).
* `RegisterClassifier`: a bias-free linear layer on the first register token
  (the `finetune` protocol); dropout lives inside the encoder's blocks only.

Params are `{'encoder': <VisionTransformer params>, 'head': <head params>}`,
so pre-trained encoder weights drop in under 'encoder' unchanged.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jepa_ecg.models.config import ModelConfig
from jepa_ecg.models.layers import AttentivePooler, dense, kernel_init
from jepa_ecg.models.vit import VisionTransformer

HEADS = ('attentive', 'register')


class AttentiveClassifier(nn.Module):
    """Encoder + attentive pooler projecting to `num_classes` logits.

    Attributes:
      encoder: the ViT (its `dropout` is the fine-tuning dropout).
      num_classes: output size.
      frozen: stop gradients at the encoder output (linear probing); the
        caller must also keep the encoder params out of the optimiser.
    """
    encoder: VisionTransformer
    num_classes: int
    frozen: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        """Logits (B, num_classes) of signals x (B, T, leads)."""
        tokens = self.encoder(x, keep_registers=True, deterministic=deterministic)
        if self.frozen:
            tokens = jax.lax.stop_gradient(tokens)
        # The pooler's layers follow the encoder's bias switches (no biases in
        # ECG-JEPA), so the class projection has no bias either; its kernels
        # follow the encoder's init.
        logits = AttentivePooler(self.encoder.cfg, self.num_classes, num_queries=1,
                                 dtype=self.encoder.dtype, name='head')(tokens)
        return logits[:, 0].astype(jnp.float32)


class RegisterClassifier(nn.Module):
    """Encoder + linear layer on the first register token.

    Attributes:
      encoder: the ViT; needs num_registers >= 1.
      num_classes: output size.
      use_bias: bias of the linear layer (off in the reference protocol).

    The layer's kernel follows the encoder's init.
    """
    encoder: VisionTransformer
    num_classes: int
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        """Logits (B, num_classes) of signals x (B, T, leads)."""
        if self.encoder.cfg.num_registers < 1:
            raise ValueError('RegisterClassifier needs an encoder with a register token')
        tokens = self.encoder(x, keep_registers=True, deterministic=deterministic)
        logits = dense(self.encoder.cfg, self.num_classes, self.use_bias, self.encoder.dtype,
                       kernel_init(self.encoder.cfg.init), 'head')(tokens[:, 0])
        return logits.astype(jnp.float32)


def build_classifier(cfg: ModelConfig, num_classes: int, *, head: str, dropout: float = 0.0,
                     frozen: bool = False, head_bias: bool = False,
                     dtype: str | None = None) -> nn.Module:
    """A classifier around the encoder described by `cfg`.

    Args:
      cfg: encoder config (its num_registers must be >= 1 for both heads
        as used by the protocols).
      num_classes: number of outputs.
      head: 'attentive' (pooler over all tokens) or 'register' (linear on
        the register token).
      dropout: dropout inside the encoder blocks (after attention output
        projection, after the MLP activation and after fc2).
      frozen: stop gradients at the encoder output ('attentive' only).
      head_bias: bias of the register head's linear layer.
      dtype: compute dtype name; default cfg.dtype.

    Returns:
      A flax module mapping (B, T, leads) signals to (B, num_classes) logits.
    """
    from jepa_ecg.models import build_encoder  # the package imports this module's siblings
    encoder = build_encoder(cfg, dropout=dropout, dtype=dtype)
    if head == 'attentive':
        return AttentiveClassifier(encoder, num_classes, frozen=frozen)
    if head == 'register':
        if frozen:
            raise ValueError('the register head is for full fine-tuning; use head=attentive '
                             'for a frozen encoder')
        return RegisterClassifier(encoder, num_classes, use_bias=head_bias)
    raise ValueError(f'unknown head {head!r}; choose from {HEADS}')


def init_classifier(model: nn.Module, rng: jax.Array, num_samples: int,
                    num_leads: int = 12) -> dict[str, Any]:
    """Fresh float32 params {'encoder', 'head'} for inputs of `num_samples` samples."""
    x = jnp.zeros((1, num_samples, num_leads), jnp.float32)
    return model.init(rng, x)['params']


def probabilities(logits: np.ndarray, single_label: bool) -> np.ndarray:
    """Class probabilities of (N, C) record logits.

    Args:
      logits: (N, C) logits (e.g. averaged over a record's windows).
      single_label: softmax over the classes (one label per record) instead
        of an independent sigmoid per class (multi-label tasks).

    Returns:
      (N, C) float64 probabilities.
    """
    logits = np.asarray(logits, np.float64)
    if single_label:
        z = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return z / z.sum(axis=-1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-logits))
