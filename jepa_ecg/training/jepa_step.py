"""ECG-JEPA objective and train step as pure functions of pytrees.

State: the context encoder + predictor params (trained), the target encoder
params (EMA of the context encoder), the optimiser state, the step and a
PRNG key. The step takes a global batch: `signal` (B, T, leads),
`keep_idx`/`keep_valid` (B, K) and `predict_mask` (B, N).
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from jepa_ecg.models import ModelConfig, build_encoder, build_predictor


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any          # {'encoder': ..., 'predictor': ...}
    target_params: Any   # EMA of params['encoder']
    opt_state: Any


def init_params(rng: jax.Array, cfg: ModelConfig) -> dict:
    """Initial encoder and predictor params (float32)."""
    enc_key, pred_key = jax.random.split(rng)
    encoder, predictor = build_encoder(cfg, dtype='float32'), build_predictor(cfg, dtype='float32')
    n = cfg.num_patches
    x = jnp.zeros((1, cfg.window_samples, cfg.num_leads), jnp.float32)
    enc = encoder.init(enc_key, x)['params']
    k = max(1, n // 4)
    pred = predictor.init(pred_key, jnp.zeros((1, k, cfg.dim)), jnp.zeros((1, k), jnp.int32),
                          jnp.ones((1, k), bool), jnp.zeros((1, n), bool))['params']
    return {'encoder': enc, 'predictor': pred}


def init_train_state(rng: jax.Array, cfg: ModelConfig, tx: optax.GradientTransformation
                     ) -> TrainState:
    # The first half of a split, as when the state also held a key: the
    # same seed gives the same initial weights as before.
    param_key, _ = jax.random.split(rng)
    params = init_params(param_key, cfg)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      target_params=jax.tree_util.tree_map(jnp.copy, params['encoder']),
                      opt_state=tx.init(params))


def ema_update(target, online, momentum):
    """target <- momentum * target + (1 - momentum) * online, leafwise."""
    return jax.tree_util.tree_map(lambda t, o: momentum * t + (1. - momentum) * o, target, online)


def masked_l1(pred: jax.Array, target: jax.Array, predict_mask: jax.Array) -> jax.Array:
    """Mean absolute error over the masked positions and all channels."""
    w = predict_mask[..., None].astype(jnp.float32)
    err = jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32)) * w
    return err.sum() / (w.sum() * pred.shape[-1])


def effective_rank(features: jax.Array) -> jax.Array:
    """exp(entropy) of the normalised singular values of centred features (B, D).

    Near 1 means the embeddings collapsed onto a line; up to min(B, D).
    """
    x = features.astype(jnp.float32)
    x = x - x.mean(axis=0, keepdims=True)
    # Singular values of x itself, not square roots of a Gram matrix's
    # eigenvalues: in float32 those turn the zero singular values into
    # ~1e-3 of the largest, each adding entropy (the rank read too high).
    s = jnp.linalg.svd(x, compute_uv=False)
    p = s / jnp.maximum(s.sum(), 1e-12)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return jnp.exp(entropy)


def global_norm(tree) -> jax.Array:
    return optax.global_norm(tree)


def micro_batches(batch: dict, n: int) -> dict:
    """Splits every (B, ...) leaf into (n, B / n, ...) micro-batches.

    The split is strided (micro-batch i holds rows i, i + n, ...), which
    keeps each micro-batch spread over the data axis.
    """
    def split(x):
        b = x.shape[0]
        if b % n:
            raise ValueError(f'batch {b} not divisible by grad_accum_steps={n}')
        x = x.reshape((b // n, n) + x.shape[1:])
        return jnp.moveaxis(x, 1, 0)
    return jax.tree_util.tree_map(split, batch)


def make_train_step(cfg: ModelConfig, tx: optax.GradientTransformation,
                    schedules: dict[str, Callable], *, dtype: str = 'float32',
                    grad_accum_steps: int = 1, rank_every: int = 1,
                    ema_per_micro_batch: bool = False,
                    target_layer_norm: bool = False) -> Callable:
    """Builds `train_step(state, batch) -> (state, metrics)` (not yet jitted).

    Args:
      cfg: model config.
      tx: optax transformation (see training.optim.make_optimizer).
      schedules: dict with the 'momentum' schedule (and 'lr', 'wd' to log).
      dtype: compute dtype, 'float32' or 'bfloat16'; params stay float32.
      grad_accum_steps: split the batch into this many micro-batches and
        average their gradients before one optimiser update.
      rank_every: compute the effective rank of target embeddings on steps
        whose new step count is a multiple of this (0 in other steps): an
        eigendecomposition is not free.
      ema_per_micro_batch: with grad_accum_steps = n > 1, move the target
        towards the (not yet updated) online encoder before every
        micro-batch after the first as well, each time with the next value of
        the momentum schedule, so the schedule advances n times per optimiser
        step and reaches its final value after total_steps / n steps: the
        published ViT-B recipe. Off: one EMA update per optimiser step.
      target_layer_norm: regress the target tokens layer-normalised over
        their features (no scale or shift) instead of as they are; the
        logged target std and rank stay those of the raw targets.

    EMA timing: the momentum applied after step t's update is the schedule
    at index t + 1 (n * (t + 1) per micro-batch), which makes the target a
    step sees equal to the one of an implementation that moves the target
    at the start of each step (before computing the targets) with the
    schedule's value for that step, starting from a copy of the encoder.
    """
    encoder = build_encoder(cfg, dtype=dtype)
    predictor = build_predictor(cfg, dtype=dtype)

    def loss_fn(params, target_params, batch):
        targets = encoder.apply({'params': target_params}, batch['signal'])
        targets = jax.lax.stop_gradient(targets)
        context = encoder.apply({'params': params['encoder']}, batch['signal'],
                                batch['keep_idx'], batch['keep_valid'])
        pred = predictor.apply({'params': params['predictor']}, context, batch['keep_idx'],
                               batch['keep_valid'], batch['predict_mask'])
        # Layer-normalised without scale or shift: each token standardised over its features.
        goal = (jax.nn.standardize(targets.astype(jnp.float32), axis=-1, epsilon=1e-5)
                if target_layer_norm else targets)
        loss = masked_l1(pred, goal, batch['predict_mask'])
        return loss, targets

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: dict):
        n = grad_accum_steps
        ema_ticks = n if ema_per_micro_batch else 1
        target_params = state.target_params
        if n == 1:
            (loss, targets), grads = grad_fn(state.params, target_params, batch)
        else:
            def body(carry, xs):
                loss_sum, grad_sum, target = carry
                j, mb = xs
                if ema_per_micro_batch:
                    moved = ema_update(target, state.params['encoder'],
                                       schedules['momentum'](n * state.step + j))
                    target = jax.tree_util.tree_map(
                        lambda a, b: jnp.where(j > 0, a, b), moved, target)
                (l, t), g = grad_fn(state.params, target, mb)
                return (loss_sum + l, jax.tree_util.tree_map(jnp.add, grad_sum, g), target), t
            zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
            (loss, grads, target_params), targets = jax.lax.scan(
                body, (jnp.zeros(()), zeros, target_params),
                (jnp.arange(n), micro_batches(batch, n)))
            loss = loss / n
            grads = jax.tree_util.tree_map(lambda g: g / n, grads)
            targets = targets.reshape((-1,) + targets.shape[2:])
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        momentum = schedules['momentum'](ema_ticks * (state.step + 1))
        target_params = ema_update(target_params, params['encoder'], momentum)

        pooled = targets.astype(jnp.float32).mean(axis=1)  # (B, D) per-record embedding
        if rank_every > 0:
            rank = jax.lax.cond((state.step + 1) % rank_every == 0, effective_rank,
                                lambda x: jnp.zeros((), jnp.float32), pooled)
        else:
            rank = jnp.zeros((), jnp.float32)
        metrics = {
            'loss': loss,
            'grad_norm': global_norm(grads),
            'param_norm': global_norm(params),
            'lr': schedules['lr'](state.step),
            'wd': schedules['wd'](state.step),
            # The momentum whose update produced this step's target (the
            # published code's value for this step).
            'momentum': schedules['momentum'](ema_ticks * state.step),
            # Std over the batch, taken along the last axis: XLA:CPU's library
            # reduction over a short leading axis is ~20x slower (~3% of a step).
            'target_std': jnp.std(jnp.moveaxis(targets.astype(jnp.float32), 0, -1),
                                  axis=-1).mean(),
            'target_rank': rank,
        }
        new_state = state.replace(step=state.step + 1, params=params,
                                  target_params=target_params, opt_state=opt_state)
        return new_state, metrics

    return train_step
