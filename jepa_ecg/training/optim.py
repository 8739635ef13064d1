"""Optimiser and hyper-parameter schedules of pre-training and fine-tuning."""

from __future__ import annotations

from typing import Callable

import flax
import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[jax.Array], jax.Array]


def warmup_cosine(total_steps: int, peak: float, final: float, warmup_steps: int = 0,
                  warmup_start: float = 0.0) -> Schedule:
    """Linear warm-up from `warmup_start` to `peak`, then cosine down to `final`.

    The cosine reaches `final` at step `total_steps - 1` and stays there, so
    the last training step uses the final value (a schedule meant to end
    earlier than the run passes that step as `total_steps`). With
    `peak < final` the same curve rises (used for weight decay 0.01 -> 0.1).
    """
    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = warmup_start + (peak - warmup_start) * step / max(1, warmup_steps)
        progress = jnp.clip((step - warmup_steps) / max(1, total_steps - warmup_steps - 1), 0., 1.)
        cos = final + 0.5 * (1. + jnp.cos(jnp.pi * progress)) * (peak - final)
        return jnp.where(step < warmup_steps, warm, cos)
    return schedule


def linear(total_steps: int, start: float, final: float) -> Schedule:
    """Linear ramp from `start` (step 0) to `final` (step `total_steps`), then flat."""
    def schedule(step):
        frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(1, total_steps), 0., 1.)
        return start + (final - start) * frac
    return schedule


def decay_mask(params) -> dict:
    """True for weight matrices of Dense/Conv layers only.

    Flax names those `kernel`; LayerNorm scales/biases, biases, register and
    mask tokens and the pooler's query are excluded.
    """
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    return flax.traverse_util.unflatten_dict({k: k[-1] == 'kernel' for k in flat})


def make_schedules(config) -> dict[str, Schedule]:
    """Learning-rate, weight-decay and (pre-training) EMA-momentum schedules of a config.

    Pre-training and the fine-tuning protocols share the learning rate's
    shape: linear warm-up from `warmup_start_learning_rate` over
    `warmup_steps`, then cosine to `final_learning_rate` (equal to
    `learning_rate` for a constant rate), reached at
    `lr_decay_fraction` of `total_steps` (1 when absent: the cosine spans the
    run) and held after it. Weight decay follows a cosine from
    `weight_decay` to `final_weight_decay`, constant when the config has no
    final value (fine-tuning). The EMA momentum ramp exists only in configs
    with `ema_momentum` (pre-training).

    Args:
      config: pre-training or fine-tuning config.

    Returns:
      {'lr', 'wd'[, 'momentum']} -> schedule of the step.
    """
    steps = config.total_steps
    wd = config.weight_decay
    frac = config.get('lr_decay_fraction')
    lr_end = steps if frac is None else round(frac * steps)
    schedules = {
        'lr': warmup_cosine(lr_end, config.learning_rate, config.final_learning_rate,
                            config.warmup_steps, config.warmup_start_learning_rate),
        'wd': warmup_cosine(steps, wd, config.get('final_weight_decay', wd)),
    }
    if config.get('ema_momentum') is not None:
        schedules['momentum'] = linear(steps, config.ema_momentum, config.final_ema_momentum)
    return schedules


def make_optimizer(config, schedules: dict[str, Schedule]) -> optax.GradientTransformation:
    """AdamW with scheduled LR and weight decay on weight matrices only.

    Decoupled decay as in AdamW: p <- p - lr * (adam_update + wd * p).
    Optional global-norm clipping first (`config.grad_clip > 0`).
    """
    parts = []
    if config.get('grad_clip', 0.0) and config.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(config.grad_clip))
    parts.append(optax.adamw(
        learning_rate=schedules['lr'], b1=config.b1, b2=config.b2, eps=config.eps,
        weight_decay=schedules['wd'], mask=decay_mask))
    return optax.chain(*parts)
