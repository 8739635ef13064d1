"""The PTB-XL evaluation protocols of ECG-JEPA: linear, finetune, finetune_after_linear.

One run = one (task, seed): build the classifier around an encoder, train on
random 2.5 s crops of the train folds, score the validation fold every
`eval_every` steps (logits averaged over each record's 2.5 s windows at
1.25 s stride), keep the best-validation weights in an Orbax checkpoint,
stop early after `patience` steps without improvement, then score the test
fold with the best weights.

The protocols differ only in their config (experiments/configs/finetune.py):

* linear: attentive pooler over all tokens (register kept), frozen encoder;
  AdamW (0.9, 0.999), lr 1e-3 constant, wd 0.1, clip 1.0; 5,000 steps.
* finetune: linear layer on the register token, encoder trained with
  dropout 0.05; AdamW (0.9, 0.99), warm-up 200 steps to 1e-3, cosine to
  1e-5, wd 0.01, no clipping; 10,000 steps, patience 2,000.
* finetune_after_linear: the linear run's pooler, encoder trained with
  dropout 0.1; AdamW (0.9, 0.999), warm-up 200 to 1e-4, cosine to 1e-6,
  wd 0, clip 1.0; 5,000 steps, patience 2,000.

Where the starting weights come from (`--encoder`) is resolved outside
training (inference/resolve.py) and handed in as an `EncoderSource`, or as
a resolver `(task, seed_index) -> EncoderSource` for many runs. Training is
data parallel: the step is jitted over the 'data' mesh with the batch
sharded and the state replicated (donated).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from typing import Any, Callable, Iterator, Union

import jax
import ml_collections
import numpy as np
from absl import logging

from jepa_ecg import sharding
from jepa_ecg.data import ptbxl as data_lib
from jepa_ecg.data.stats import LeadStats
from jepa_ecg.ecg import transforms
from jepa_ecg.evaluation.evaluator import EvaluationInterrupted, Evaluator, SplitScores
from jepa_ecg.models import ModelConfig
from jepa_ecg.models.classifier import build_classifier
from jepa_ecg.training import checkpoint, finetune_step, guard, optim


@dataclasses.dataclass
class EncoderSource:
    """What a fine-tuning run starts from.

    Attributes:
      config: the encoder's ModelConfig.
      encoder_params: pre-trained encoder params, or None (random init).
      head_params: head params of a previous run (finetune_after_linear).
      lead_stats: the normalisation statistics the encoder came with, if
        any (for the record: PTB-XL runs normalise with the train folds').
      description: for results.json.
      spec: the `--encoder` string it was resolved from.
      init_seed: with no encoder_params, the seed of the encoder's random
        init when it is not the run's (several probe seeds of one random
        encoder); None: the run's seed draws encoder and head alike.
    """
    config: ModelConfig
    encoder_params: Any = None
    head_params: Any = None
    lead_stats: LeadStats | None = None
    description: str = ''
    spec: str = ''
    init_seed: int | None = None


Resolver = Callable[[str, int], EncoderSource]
EncoderArg = Union[EncoderSource, Resolver]


def resolver_of(encoder: EncoderArg) -> Resolver:
    if isinstance(encoder, EncoderSource):
        return lambda task, seed_index: encoder
    return encoder


def load_task_data(config: ml_collections.ConfigDict, task: str,
                   fs: float) -> data_lib.PtbxlTask:
    """The task's PTB-XL data at `fs` (only the first records of each fold in smoke runs)."""
    d = config.data
    return data_lib.load_task(task, fs=fs, data_dir=d.get('data_dir'),
                              builder_name=d.get('builder'), clip=d.clip,
                              max_records_per_fold=d.get('max_records_per_fold'))


# ----------------------------------------------------------------------------- one run
@dataclasses.dataclass
class Run:
    """Everything one (task, seed) run trains and scores with."""
    config: ml_collections.ConfigDict
    task: data_lib.PtbxlTask
    cfg: ModelConfig
    mesh: Any
    state: finetune_step.ClassifierState
    train_step: Callable
    evaluator: Evaluator
    crop: int
    stride: int
    seed: int
    dropout_key: jax.Array
    num_trainable: int
    tag: str


def build_run(config: ml_collections.ConfigDict, task: data_lib.PtbxlTask,
              source: EncoderSource, seed: int) -> Run:
    """Model, replicated state, jitted train step and evaluator of one run.

    Args:
      config: fine-tuning config.
      task: the task's data.
      source: the starting weights.
      seed: the run's seed (init, dropout and data order).

    Returns:
      Run.
    """
    # Both heads read the register: add a fresh one (as the reference does).
    cfg = dataclasses.replace(source.config, num_registers=max(1, source.config.num_registers),
                              dtype=config.dtype)
    crop = transforms.samples(cfg.fs, config.data.crop_seconds)
    stride = transforms.samples(cfg.fs, config.data.eval_stride_seconds)
    if crop % cfg.patch_size:
        raise ValueError(f'config.data.crop_seconds={config.data.crop_seconds}: {crop} samples '
                         f'is not a multiple of the encoder\'s patch size {cfg.patch_size}')
    model = build_classifier(cfg, task.num_classes, head=config.head, dropout=config.dropout,
                             frozen=config.frozen, head_bias=config.head_bias)
    mesh = sharding.make_mesh()
    sharding.local_batch_size(config.batch_size, mesh)  # checks divisibility
    init_key, dropout_key = _run_keys(seed)
    # One derivation for both keys: init_seed == seed draws as without it.
    encoder_key = None if source.init_seed is None else _run_keys(source.init_seed)[0]
    schedules = optim.make_schedules(config)
    tx = optim.make_optimizer(config, schedules)
    state = finetune_step.init_state(
        model, tx, init_key, num_samples=crop, num_leads=cfg.num_leads,
        frozen_encoder=config.frozen, encoder_params=source.encoder_params,
        head_params=source.head_params, encoder_key=encoder_key)
    train_step, predict_step = finetune_step.make_steps(model, tx, schedules,
                                                        single_label=task.single_label)
    return Run(
        config=config, task=task, cfg=cfg, mesh=mesh,
        state=jax.device_put(state, sharding.replicated(mesh)),
        train_step=sharding.jit_data_parallel(train_step, mesh, batch_argnums=(1,),
                                              donate_argnums=(0,)),
        evaluator=Evaluator(predict_step, task, mesh=mesh, crop=crop, stride=stride,
                            records_per_batch=config.eval_records_per_batch),
        crop=crop, stride=stride, seed=seed, dropout_key=dropout_key,
        num_trainable=finetune_step.num_params(state.trainable),
        tag=f'[{config.protocol} {task.task} seed {seed}]')



def _run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """(init key, dropout key) of a run seed."""
    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
    return init_key, dropout_key

@dataclasses.dataclass
class FitResult:
    """What the training loop hands back: final state, the best validation and the log."""
    state: finetune_step.ClassifierState
    best_step: int
    best_val_auc: float
    best_val: SplitScores | None
    history: list
    steps_run: int
    stopped_early: bool
    train_steps_per_second: float


class _Progress:
    """Mean loss and throughput every `log_every` steps; evaluation time is not training."""

    def __init__(self, total: int, log_every: int, tag: str):
        self.total, self.log_every, self.tag = total, log_every, tag
        self.t_last, self.step_last, self.losses, self.train_time = time.time(), 0, [], 0.0

    def after_step(self, step: int, m: dict) -> dict | None:
        """Records a step's metrics; returns the history row when one is due."""
        self.losses.append(m['loss'])
        if step % self.log_every and step != self.total:
            return None
        loss = float(np.mean(jax.device_get(self.losses)))
        if not np.isfinite(loss):
            raise guard.NonFiniteLossError(f'{self.tag} non-finite training loss at step {step}')
        now = time.time()
        rate = (step - self.step_last) / max(now - self.t_last, 1e-9)
        self.train_time += now - self.t_last
        logging.info('%s step %d/%d loss %.4f lr %.2e grad_norm %.3f %.2f steps/s, '
                     'training ETA %.1f min', self.tag, step, self.total, loss, float(m['lr']),
                     float(m['grad_norm']), rate, (self.total - step) / max(rate, 1e-9) / 60)
        self.t_last, self.step_last, self.losses = time.time(), step, []
        return {'step': step, 'loss': loss, 'lr': float(m['lr'])}

    def exclude(self, seconds: float) -> None:
        self.t_last += seconds

    @property
    def steps_per_second(self) -> float:
        return self.step_last / max(self.train_time, 1e-9)


@contextlib.contextmanager
def stop_between_batches(stop: guard.StopSignals | None, step: int,
                         workdir: str) -> Iterator[Callable[[], bool] | None]:
    """The `interrupted` check for evaluation passes, and the stop it raises.

    Yields what `Evaluator.logits` asks before each batch (None: never
    interrupted); an abandoned pass leaves the block as the stop of the run
    at `step`. A fine-tuning run restarts from scratch, so a half-done pass
    loses nothing, and a preemption grace shorter than a pass on a slow host
    is met. With several processes the signal waits for the next step
    boundary, where they agree on it (one leaving a pass alone would block
    the others).

    Raises:
      guard.StopRequested: a stop signal arrived during a pass.
    """
    def signalled() -> bool:
        return stop.received is not None

    alone = stop is not None and jax.process_count() == 1
    try:
        yield signalled if alone else None
    except EvaluationInterrupted:
        raise guard.StopRequested(stop.received, step, workdir, resumable=False) from None


def evaluate_or_stop(run: Run, params: Any, split: str, stop: guard.StopSignals | None,
                     step: int, workdir: str) -> SplitScores:
    """`run.evaluator.evaluate`, abandoned between batches when a stop signal arrives.

    Raises:
      guard.StopRequested: a stop signal arrived during the pass
        (`stop_between_batches`).
    """
    with stop_between_batches(stop, step, workdir) as interrupted:
        return run.evaluator.evaluate(params, split, interrupted)


def fit_with_validation(run: Run, workdir: str,
                        stop: guard.StopSignals | None = None) -> FitResult:
    """Trains with validation every `eval_every` steps, best weights to Orbax, early stop.

    The best-validation params are saved (only) when the validation macro
    AUC improves, so `<workdir>/best` always holds the best so far; training
    stops once `patience` steps passed without improvement.

    Args:
      run: from build_run.
      workdir: run folder (the checkpoint goes to `<workdir>/best`).
      stop: stop-signal handlers read at each step boundary.

    Returns:
      FitResult.

    Raises:
      guard.StopRequested: a stop signal arrived (a run restarts from scratch).
    """
    config = run.config
    total = int(config.total_steps)
    manager = checkpoint.best_manager(workdir)
    checkpoint.clear(manager)  # a re-run starts from scratch
    progress = _Progress(total, config.log_every, run.tag)
    history: list[dict] = []
    best_auc, best_step, best_val = -math.inf, 0, None
    state, step, stopped_early = run.state, 0, False
    batches = run.task.train_batches(batch_size=config.batch_size, crop=run.crop, seed=run.seed,
                                     lead_dropout=config.data.get('lead_dropout', 0.0),
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count())
    # Keeps the next batch's host-to-device copy in flight while a step runs.
    device_batches = sharding.prefetch_to_device(batches, run.mesh, size=1)
    try:
        while step < total:
            state, m = run.train_step(state, next(device_batches), run.dropout_key)
            step += 1
            if stop is not None and stop.should_stop(step):
                raise guard.StopRequested(stop.received, step, workdir, resumable=False)
            row = progress.after_step(step, m)
            if row is not None:
                history.append(row)
            if step % config.eval_every and step != total:
                continue
            t0 = time.time()
            scores = evaluate_or_stop(run, state.params, 'val', stop, step, workdir)
            improved = scores.macro_auc > best_auc
            if improved:
                best_auc, best_step, best_val = scores.macro_auc, step, scores
                checkpoint.save_best(manager, step, state.params, scores.macro_auc)
            history.append({'step': step, 'val_auc': scores.macro_auc})
            logging.info('%s step %d val_auc %.4f %s(best %.4f at %d; eval %.1f s)', run.tag,
                         step, scores.macro_auc, '(*) ' if improved else '', best_auc,
                         best_step, time.time() - t0)
            progress.exclude(time.time() - t0)
            if step - best_step >= config.patience:
                logging.info('%s stopping early: no better validation AUC for %d steps',
                             run.tag, step - best_step)
                stopped_early = True
                break
    finally:
        if hasattr(batches, 'close'):
            batches.close()
        manager.wait_until_finished()
        manager.close()
    return FitResult(state, best_step, best_auc, best_val, history, step, stopped_early,
                     progress.steps_per_second)
