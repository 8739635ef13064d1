"""Fine-tuning state and steps as pure functions of pytrees (the twin of jepa_step).

State: the trainable params (in the optimiser), the frozen params (the
encoder under linear probing: outside the optimiser entirely), the
optimiser state and the step. The train step takes a global batch
`{'signal': (B, crop, leads), 'target': (B, C)}` and a base dropout key
(folded with the step); the predict step maps windows to logits.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from jepa_ecg.models.classifier import init_classifier


@flax.struct.dataclass
class ClassifierState:
    """Trainable params (in the optimiser), frozen params (not), optimiser state, step."""
    step: jax.Array
    trainable: Any
    frozen: Any
    opt_state: Any

    @property
    def params(self) -> dict:
        return {**self.frozen, **self.trainable}


def split_params(params: Mapping[str, Any], frozen_encoder: bool) -> tuple[dict, dict]:
    """(trainable, frozen): a frozen encoder stays out of the optimiser entirely."""
    params = dict(params)
    if frozen_encoder:
        return {'head': params['head']}, {'encoder': params['encoder']}
    return params, {}


def merge_pretrained(fresh: Any, pretrained: Any, what: str) -> Any:
    """Copies pretrained leaves over a freshly initialised tree (a strict=False load).

    Leaves missing from `pretrained` keep their fresh values (e.g. a register
    added to an encoder trained without one); unexpected or mis-shaped ones
    raise, since they mean the config does not match the weights.

    Args:
      fresh: the initialised params.
      pretrained: params to copy in (numpy or jax arrays).
      what: name for messages ('encoder', 'head').

    Returns:
      A tree shaped like `fresh`.
    """
    flat_fresh = flax.traverse_util.flatten_dict(flax.core.unfreeze(fresh))
    flat_pre = flax.traverse_util.flatten_dict(flax.core.unfreeze(pretrained))
    unexpected = sorted('/'.join(k) for k in flat_pre if k not in flat_fresh)
    if unexpected:
        raise ValueError(f'{what}: weights without a place in the model: {unexpected}')
    out = {}
    for k, v in flat_fresh.items():
        if k in flat_pre:
            if tuple(np.shape(flat_pre[k])) != tuple(v.shape):
                raise ValueError(f'{what}: {"/".join(k)} has shape {np.shape(flat_pre[k])}, '
                                 f'the model wants {v.shape}')
            out[k] = jnp.asarray(flat_pre[k], v.dtype)
        else:
            logging.info('%s: %s not in the checkpoint; freshly initialised', what, '/'.join(k))
            out[k] = v
    return flax.traverse_util.unflatten_dict(out)


def init_state(model, tx: optax.GradientTransformation, key: jax.Array, *, num_samples: int,
               num_leads: int, frozen_encoder: bool, encoder_params: Any = None,
               head_params: Any = None, encoder_key: jax.Array | None = None) -> ClassifierState:
    """The initial state: fresh params with any pre-trained encoder/head copied in.

    Args:
      model: from models.classifier.build_classifier.
      tx: the optimiser.
      key: init key.
      num_samples: input length the params are initialised for (the crop).
      num_leads: input leads.
      frozen_encoder: keep the encoder out of the optimiser (linear probing).
      encoder_params: pre-trained encoder params, or None.
      head_params: a previous run's head params, or None.
      encoder_key: without encoder_params, the key of the encoder's random
        init when it is not `key` (one random encoder probed with several
        head seeds); None: `key` draws both.

    Returns:
      ClassifierState on the default device (replicate it for a mesh).
    """
    init = jax.jit(lambda k: init_classifier(model, k, num_samples, num_leads))
    params = init(key)
    if encoder_params is None and encoder_key is not None:
        params['encoder'] = init(encoder_key)['encoder']
    if encoder_params is not None:
        params['encoder'] = merge_pretrained(params['encoder'], encoder_params, 'encoder')
    if head_params is not None:
        params['head'] = merge_pretrained(params['head'], head_params, 'head')
    trainable, frozen = split_params(params, frozen_encoder)
    return ClassifierState(step=jnp.zeros((), jnp.int32), trainable=trainable, frozen=frozen,
                           opt_state=tx.init(trainable))


def num_params(tree: Any) -> int:
    """Number of scalars in a pytree of arrays."""
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def loss_fn_for(single_label: bool) -> Callable:
    """Mean BCE-with-logits (multi-label) or softmax cross-entropy (single-label)."""
    if single_label:
        return lambda logits, y: optax.softmax_cross_entropy(logits, y).mean()
    return lambda logits, y: optax.sigmoid_binary_cross_entropy(logits, y).mean()


def make_steps(model, tx: optax.GradientTransformation, schedules: Mapping[str, Callable], *,
               single_label: bool) -> tuple[Callable, Callable]:
    """Builds the (unjitted) train and predict steps.

    Args:
      model: the classifier module.
      tx: the optimiser.
      schedules: {'lr': ...} (logged).
      single_label: softmax cross-entropy instead of per-class BCE.

    Returns:
      (train_step(state, batch, key) -> (state, metrics),
       predict_step(params, windows) -> logits).
    """
    loss_of = loss_fn_for(single_label)

    def train_step(state: ClassifierState, batch: dict, key: jax.Array):
        rng = jax.random.fold_in(key, state.step)

        def loss_fn(trainable):
            logits = model.apply({'params': {**state.frozen, **trainable}}, batch['signal'],
                                 deterministic=False, rngs={'dropout': rng})
            return loss_of(logits, batch['target'])

        loss, grads = jax.value_and_grad(loss_fn)(state.trainable)
        updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        metrics = {'loss': loss, 'grad_norm': optax.global_norm(grads),
                   'lr': schedules['lr'](state.step)}
        return state.replace(step=state.step + 1, trainable=trainable,
                             opt_state=opt_state), metrics

    def predict_step(params, windows):
        return model.apply({'params': params}, windows, deterministic=True)

    return train_step, predict_step
