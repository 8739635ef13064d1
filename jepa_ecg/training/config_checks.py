"""Checks of a pre-training or fine-tuning config, run before any work.

A bad value (a zero batch, a batch the devices cannot split, an unknown
variant) should fail in a second with a message naming the field and what
it accepts, not minutes later inside a compiled step, and before a workdir
exists. The mains turn `ConfigError` into a usage error (exit status 2).
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

import jax

from jepa_ecg.data.lead_subsets import parse_lead_subsets
from jepa_ecg.data.sources import MIXTURES
from jepa_ecg.models import DTYPES
from jepa_ecg.models.classifier import HEADS
from jepa_ecg.models.config import VARIANTS

PROTOCOLS = ('linear', 'finetune', 'finetune_after_linear')


class ConfigError(ValueError):
    """A config value that cannot work."""


def _get(config, field: str) -> Any:
    node = config
    for part in field.split('.'):
        node = node[part]
    return node


def check_positive(config, fields: Iterable[str]) -> None:
    """Raises ConfigError unless every field is an integer >= 1."""
    for field in fields:
        value = _get(config, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f'config.{field}={value!r}: must be an integer >= 1')


def check_non_negative(config, fields: Iterable[str]) -> None:
    """Raises ConfigError unless every field is an integer >= 0."""
    for field in fields:
        value = _get(config, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f'config.{field}={value!r}: must be an integer >= 0')


def check_choice(config, field: str, allowed: Iterable[str]) -> None:
    """Raises ConfigError unless the field is one of `allowed`."""
    value, allowed = _get(config, field), sorted(allowed)
    if value not in allowed:
        raise ConfigError(f'config.{field}={value!r}: choose from {allowed}')


def check_batch_divides(config, field: str, num_devices: int | None = None) -> None:
    """Raises ConfigError unless the batch splits evenly over all devices."""
    n = jax.device_count() if num_devices is None else num_devices
    value = _get(config, field)
    if value % n:
        raise ConfigError(f'config.{field}={value}: must be a multiple of the {n} devices '
                          f'(e.g. {max(n, value - value % n)})')


def check_lead_options(config) -> None:
    """`data.lead_dropout` in [0, 1] and `eval_lead_subsets` parseable (when present)."""
    rate = config.data.get('lead_dropout', 0.0)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise ConfigError(f'config.data.lead_dropout={rate!r}: must be a probability in [0, 1]')
    try:
        parse_lead_subsets(config.get('eval_lead_subsets') or '')
    except ValueError as e:
        raise ConfigError(f'config.eval_lead_subsets: {e}') from None


def check_pretrain_config(config) -> None:
    """Validates a pre-training config (see experiments/configs/pretrain.py).

    Raises:
      ConfigError: naming the first bad field and its allowed values.
    """
    check_positive(config, ('global_batch_size', 'total_steps', 'log_every',
                            'checkpoint_every', 'keep_checkpoints', 'grad_accum_steps'))
    check_non_negative(config, ('warmup_steps', 'rank_every'))
    check_choice(config, 'model.variant', VARIANTS)
    check_choice(config, 'data.mixture', MIXTURES)
    check_choice(config, 'dtype', DTYPES)
    check_batch_divides(config, 'global_batch_size')
    check_lead_options(config)
    if config.global_batch_size % config.grad_accum_steps:
        raise ConfigError(f'config.global_batch_size={config.global_batch_size}: must be a '
                          f'multiple of config.grad_accum_steps={config.grad_accum_steps}')


def check_finetune_config(config) -> None:
    """Validates a fine-tuning config (see experiments/configs/finetune.py).

    Raises:
      ConfigError: naming the first bad field and its allowed values.
    """
    check_choice(config, 'protocol', PROTOCOLS)
    check_choice(config, 'head', HEADS)
    check_choice(config, 'dtype', DTYPES)
    check_positive(config, ('batch_size', 'total_steps', 'eval_every', 'log_every',
                            'patience', 'eval_records_per_batch',
                            'bootstrap.num_resamples'))
    check_non_negative(config, ('warmup_steps',))
    check_batch_divides(config, 'batch_size')
    check_lead_options(config)
    fraction = config.data.get('train_fraction', 1.0)
    if not 0 < fraction <= 1:
        raise ConfigError(f'config.data.train_fraction={fraction}: must be in (0, 1] '
                          f'(the share of the train-fold labels used)')
    if config.head == 'register' and config.frozen:
        raise ConfigError('config.head=register with config.frozen=True: the register head '
                          'is for full fine-tuning; use head=attentive for a frozen encoder')


# The ModelConfig fields that fix the shapes of the parameters (and of the
# input), in the order a message names them: a workdir's checkpoints restore
# only into the same values.
SHAPE_FIELDS = ('variant', 'dim', 'depth', 'num_heads', 'pred_dim', 'pred_depth',
                'pred_num_heads', 'mlp_ratio', 'num_leads', 'fs', 'window_seconds',
                'patch_size', 'num_registers', 'bias', 'qkv_bias', 'norm_bias')


def _recorded(config_path: str) -> dict | None:
    """A workdir's config.json (None: a new workdir), or ConfigError naming it."""
    try:
        with open(config_path, encoding='utf-8') as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(f'{config_path} does not read ({e}); it records the config of the '
                          f'run in {os.path.dirname(config_path)}') from None


def _refuse(config_path: str, field: str, recorded: Any, new: Any) -> ConfigError:
    return ConfigError(
        f'{os.path.dirname(config_path) or "."} holds a run with {field}={recorded!r} but the '
        f'new config has {field}={new!r}; use the same config to resume or another --workdir '
        f'for a new run')


def check_same_model(config_path: str, cfg) -> None:
    """Raises ConfigError when a workdir's recorded model differs in shape from `cfg`.

    Args:
      config_path: the workdir's config.json (absent for a new workdir: no check).
      cfg: the new run's ModelConfig.
    """
    recorded = (_recorded(config_path) or {}).get('model') or {}
    new = cfg.to_dict()
    for field in SHAPE_FIELDS:
        if field in recorded and recorded[field] != new.get(field):
            raise _refuse(config_path, f'model.{field}', recorded[field], new.get(field))


# The pre-training fields that decide where a run goes from a checkpoint (its
# batches, masks, schedules, optimizer and target): a resumed run keeps the
# values it started with, or its later steps belong to another recipe. How it
# computes (kernels, dtype, threads, logging, checkpoint cadence, the
# learning curve's stop_at_step) may change between segments, and so may
# total_steps: a run lengthened on purpose (its schedules then span the new
# length from the step reached).
RECIPE_FIELDS = ('seed', 'global_batch_size', 'warmup_steps', 'learning_rate',
                 'final_learning_rate', 'lr_decay_fraction', 'warmup_start_learning_rate',
                 'weight_decay', 'final_weight_decay', 'b1', 'b2', 'eps', 'grad_clip',
                 'grad_accum_steps', 'ema_momentum', 'final_ema_momentum',
                 'ema_per_micro_batch', 'target_layer_norm', 'data.mixture',
                 'data.keep_ratio_range', 'data.min_block_size', 'data.keep_bucket',
                 'data.lead_dropout')


def check_same_recipe(config_path: str, config) -> None:
    """Raises ConfigError when a run resumed from a workdir would change its recipe.

    Args:
      config_path: the workdir's config.json (absent for a new workdir: no check).
      config: the new pre-training config; fields the recorded one lacks (an
        older run) are not compared.
    """
    recorded = (_recorded(config_path) or {}).get('config') or {}
    new = json.loads(json.dumps(config.to_dict(), default=str))  # as recorded (tuples: lists)
    for field in RECIPE_FIELDS:
        try:
            old_value = _get(recorded, field)
        except (KeyError, TypeError):
            continue  # recorded before the field existed
        try:
            new_value = _get(new, field)
        except (KeyError, TypeError):
            new_value = None
        if old_value != new_value:
            raise _refuse(config_path, field, old_value, new_value)
