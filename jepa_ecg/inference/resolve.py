"""Turns a fine-tuning `--encoder` spec into the weights a run starts from.

A spec is one of

* `random:<variant>`: fresh weights of a model variant at the config's rate;
* a pre-training workdir (its target encoder), an exported or imported
  encoder directory, a classifier directory (their encoder);
* a fine-tuning output (a run folder holding `best/`, or a workdir with
  `<task>/seed<k>/` runs): its encoder and, for the same head, its head.
  finetune_after_linear continues a linear run this way.

Training receives the result as a `training.finetune_loop.EncoderSource`
(or a resolver `(task, seed_index) -> EncoderSource`), so training never
imports inference.
"""

from __future__ import annotations

import json
import os

import ml_collections
from absl import logging

from jepa_ecg.data.stats import as_lead_stats
from jepa_ecg.inference.runs import find_finetune_run, is_finetune_output, load_encoder
from jepa_ecg.models.config import VARIANTS, ModelConfig, model_config_from
from jepa_ecg.training.checkpoint import BEST_DIR, RESULTS_FILE, restore_best
from jepa_ecg.training.finetune_loop import EncoderSource, Resolver

RANDOM_PREFIX = 'random:'


def _check_exists(spec: str) -> None:
    if not os.path.exists(spec):
        raise ValueError(f'--encoder={spec}: no such file or directory; expected '
                         f'{RANDOM_PREFIX}<variant> (variants {sorted(VARIANTS)}), a '
                         f'pre-training workdir, an encoder directory or a fine-tuning output')


def _random_source(spec: str, config: ml_collections.ConfigDict) -> EncoderSource:
    variant = spec[len(RANDOM_PREFIX):]
    if variant not in VARIANTS:
        raise ValueError(f'--encoder={spec}: unknown variant {variant!r}; choose from '
                         f'{sorted(VARIANTS)} (random:<variant>)')
    cfg = model_config_from(config, variant=variant)
    return EncoderSource(cfg, description=f'random init ({variant}, {cfg.fs:g} Hz, '
                                          f'patch {cfg.patch_size})', spec=spec)


def _run_source(spec: str, run: str, config: ml_collections.ConfigDict) -> EncoderSource:
    with open(os.path.join(run, RESULTS_FILE)) as f:
        previous = json.load(f)
    params = restore_best(run)
    if config.protocol == 'finetune_after_linear' and previous.get('protocol') != 'linear':
        logging.warning('%s is a %s run, not a linear one', run, previous.get('protocol'))
    head = params['head'] if config.head == previous.get('head') else None
    return EncoderSource(ModelConfig.from_dict(previous['model']), params['encoder'], head,
                         lead_stats=as_lead_stats(previous.get('lead_stats')),
                         description=f'{previous.get("protocol")} run {os.path.abspath(run)}',
                         spec=spec)


def resolve_encoder(spec: str, config: ml_collections.ConfigDict, *, task: str,
                    seed_index: int = 0) -> EncoderSource:
    """Turns `--encoder` into a config and starting weights.

    Args:
      spec: see the module docstring.
      config: the fine-tuning config.
      task: the task being run (selects the previous run's folder).
      seed_index: which seed (selects the previous run's folder).

    Returns:
      EncoderSource.

    Raises:
      ValueError: for an unknown variant, a path that does not exist, or a
        finetune_after_linear spec that is no linear-run output.
    """
    if spec.startswith(RANDOM_PREFIX):
        return _random_source(spec, config)
    run = find_finetune_run(spec, task or None, seed_index)
    if run is not None:
        return _run_source(spec, run, config)
    if config.protocol == 'finetune_after_linear':
        raise ValueError(f'finetune_after_linear continues a linear run: --encoder must be '
                         f'a linear-run workdir with {task}/seed<k>/{BEST_DIR}, got {spec}')
    _check_exists(spec)
    enc = load_encoder(spec)
    return EncoderSource(enc.config, enc.params, lead_stats=as_lead_stats(enc.lead_stats),
                         description=f'encoder {os.path.abspath(spec)}', spec=spec)


def make_resolver(spec: str, config: ml_collections.ConfigDict) -> Resolver:
    """A `(task, seed_index) -> EncoderSource` resolver for `spec`, checked now.

    The spec is checked before any run starts (an unknown variant or path
    fails at once). A fine-tuning output resolves per task and seed; any
    other spec is loaded once and shared by every run.

    Args:
      spec: see the module docstring.
      config: the fine-tuning config.

    Returns:
      The resolver.

    Raises:
      ValueError: as resolve_encoder.
    """
    if spec.startswith(RANDOM_PREFIX):
        source = _random_source(spec, config)
        return lambda task, seed_index: source
    _check_exists(spec)
    if is_finetune_output(spec):
        return lambda task, seed_index: resolve_encoder(spec, config, task=task,
                                                        seed_index=seed_index)
    if config.protocol == 'finetune_after_linear':
        raise ValueError(f'finetune_after_linear continues a linear run: --encoder must be '
                         f'a linear-run workdir with <task>/seed<k>/{BEST_DIR}, got {spec}')
    source = resolve_encoder(spec, config, task='', seed_index=0)
    return lambda task, seed_index: source
