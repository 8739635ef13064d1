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

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Union

import jax
import ml_collections
import numpy as np
from absl import logging

from jepa_ecg import sharding
from jepa_ecg.data import label_fraction
from jepa_ecg.data import ptbxl as data_lib
from jepa_ecg.data.stats import LeadStats
from jepa_ecg.ecg import transforms
from jepa_ecg.evaluation import metrics
from jepa_ecg.evaluation.evaluator import Evaluator, SplitScores
from jepa_ecg.models import ModelConfig
from jepa_ecg.models.classifier import build_classifier
from jepa_ecg.training import checkpoint, config_checks, finetune_step, guard, optim
from jepa_ecg.training.checkpoint import PREDICTIONS_FILE, RESULTS_FILE


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
    """
    config: ModelConfig
    encoder_params: Any = None
    head_params: Any = None
    lead_stats: LeadStats | None = None
    description: str = ''
    spec: str = ''


Resolver = Callable[[str, int], EncoderSource]
EncoderArg = Union[EncoderSource, Resolver]


def _resolver(encoder: EncoderArg) -> Resolver:
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
    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
    schedules = optim.make_schedules(config)
    tx = optim.make_optimizer(config, schedules)
    state = finetune_step.init_state(
        model, tx, init_key, num_samples=crop, num_leads=cfg.num_leads,
        frozen_encoder=config.frozen, encoder_params=source.encoder_params,
        head_params=source.head_params)
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
            raise FloatingPointError(f'{self.tag} non-finite training loss at step {step}')
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
    local = config.batch_size // jax.process_count()
    lo = jax.process_index() * local
    manager = checkpoint.best_manager(workdir)
    checkpoint.clear(manager)  # a re-run starts from scratch
    progress = _Progress(total, config.log_every, run.tag)
    history: list[dict] = []
    best_auc, best_step, best_val = -math.inf, 0, None
    state, step, stopped_early = run.state, 0, False
    batches = run.task.train_batches(batch_size=config.batch_size, crop=run.crop, seed=run.seed,
                                     lead_dropout=config.data.get('lead_dropout', 0.0))
    try:
        while step < total:
            batch = {k: v[lo:lo + local] for k, v in next(batches).items()}
            state, m = run.train_step(state, sharding.host_to_global(batch, run.mesh),
                                      run.dropout_key)
            step += 1
            if stop is not None and stop.should_stop(step):
                raise guard.StopRequested(stop.received, step, workdir, resumable=False)
            row = progress.after_step(step, m)
            if row is not None:
                history.append(row)
            if step % config.eval_every and step != total:
                continue
            t0 = time.time()
            scores = run.evaluator.evaluate(state.params, 'val')
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


def _results(run: Run, fit: FitResult, test: SplitScores, source: EncoderSource) -> dict:
    """The results.json of one run."""
    config = run.config
    boot = dict(num_resamples=config.bootstrap.num_resamples,
                confidence=config.bootstrap.confidence, seed=run.seed)
    return {
        'protocol': config.protocol,
        'task': run.task.task,
        'single_label': run.task.single_label,
        'seed': run.seed,
        'encoder': source.spec,
        'encoder_description': source.description,
        'head': config.head,
        'model': run.cfg.to_dict(),
        'config': json.loads(config.to_json_best_effort()),
        'data': run.task.counts(),
        'lead_stats': run.task.stats.to_json(),
        'encoder_lead_stats': source.lead_stats.to_json() if source.lead_stats else None,
        'crop_samples': run.crop,
        'eval_stride_samples': run.stride,
        'windows_per_record': int(run.evaluator.windows_per_record),
        'trainable_params': run.num_trainable,
        'steps_run': fit.steps_run,
        'stopped_early': fit.stopped_early,
        'best_step': fit.best_step,
        'best_val_auc': fit.best_val_auc,
        'val': run.evaluator.report(fit.best_val, 'val', **boot),
        'test': run.evaluator.report(test, 'test', **boot),
        'history': fit.history,
        'train_steps_per_second': fit.train_steps_per_second,
    }


def _write_outputs(workdir: str, results: dict, task: data_lib.PtbxlTask, val: SplitScores,
                   test: SplitScores, plots: bool) -> None:
    """results.json, predictions.npz and (optionally) the plots of a run; process 0 only."""
    if jax.process_index() != 0:
        return
    v, t = task.splits['val'], task.splits['test']
    np.savez(os.path.join(workdir, PREDICTIONS_FILE), classes=np.asarray(task.classes),
             val_ecg_ids=v.ecg_ids, val_targets=v.targets, val_logits=val.logits,
             val_predictions=val.probabilities,
             test_ecg_ids=t.ecg_ids, test_targets=t.targets, test_logits=test.logits,
             test_predictions=test.probabilities)
    with open(os.path.join(workdir, RESULTS_FILE), 'w') as f:
        json.dump(results, f, indent=2)
    if plots:
        # matplotlib is only needed when plotting.
        from jepa_ecg.evaluation import plots as plots_lib  # pylint: disable=g-import-not-at-top
        plots_lib.plot_run(workdir, results, t.targets, test.probabilities)


def _score_lead_subsets(run: Run, params: Any, workdir: str) -> dict:
    """Test macro AUC per `config.eval_lead_subsets` subset (+ its plot)."""
    # matplotlib is only needed when scoring subsets.
    from jepa_ecg.evaluation import lead_subsets  # pylint: disable=g-import-not-at-top
    config = run.config
    table = lead_subsets.evaluate_lead_subsets(
        run.evaluator, params, config.eval_lead_subsets,
        num_resamples=config.bootstrap.num_resamples, confidence=config.bootstrap.confidence,
        seed=run.seed)
    logging.info('%s test macro AUC per lead subset:\n%s', run.tag,
                 lead_subsets.format_table(table))
    if config.plots and jax.process_index() == 0:
        lead_subsets.plot_lead_subsets({run.tag: table}, os.path.join(
            workdir, lead_subsets.LEAD_SUBSETS_PNG), title=f'{run.tag} lead subsets')
    return table


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       encoder: EncoderArg, task: str, seed_index: int = 0,
                       task_data: data_lib.PtbxlTask | None = None,
                       stop: guard.StopSignals | None = None) -> dict:
    """Trains and tests one (task, seed) run; writes results, predictions and plots.

    Args:
      config: see experiments/configs/finetune.py.
      workdir: the run folder (results.json, predictions.npz, plots, best/).
      encoder: the starting weights, or a resolver `(task, seed_index) ->
        EncoderSource` (see inference/resolve.py).
      task: one of data.ptbxl.TASKS.
      seed_index: k-th repetition; the seed is config.seed + k.
      task_data: the task's data when already loaded (shared across seeds).
      stop: stop-signal handlers (see fit_with_validation).

    Returns:
      The results dict written to results.json.
    """
    config_checks.check_finetune_config(config)
    t_start = time.time()
    seed = int(config.seed) + int(seed_index)
    source = _resolver(encoder)(task, seed_index)
    if task_data is None:
        task_data = load_task_data(config, task, source.config.fs)
    task_data = label_fraction.with_train_fraction(
        task_data, float(config.data.get('train_fraction', 1.0)), seed)
    os.makedirs(workdir, exist_ok=True)
    run = build_run(config, task_data, source, seed)
    logging.info('%s on %s (%s): %d train / %d val / %d test records, %d classes, '
                 '%d trainable params, %d devices', config.protocol, task, source.description,
                 *(len(task_data.splits[s]) for s in data_lib.SPLITS), task_data.num_classes,
                 run.num_trainable, run.mesh.devices.size)
    fit = fit_with_validation(run, workdir, stop)
    best_params = checkpoint.restore_best(workdir, target=fit.state.params)
    test = run.evaluator.evaluate(best_params, 'test')
    results = _results(run, fit, test, source)
    results['train_subset'] = label_fraction.describe(task_data)
    if config.get('eval_lead_subsets'):
        results['lead_subsets'] = _score_lead_subsets(run, best_params, workdir)
    results['minutes'] = (time.time() - t_start) / 60
    _write_outputs(workdir, results, task_data, fit.best_val, test, config.plots)
    t = results['test']
    logging.info('%s best val AUC %.4f at step %d; test macro AUC %.4f (%.0f%% CI %.4f-%.4f), '
                 'AUPRC %.4f; %.1f min', run.tag, fit.best_val_auc, fit.best_step,
                 t['macro_auc'], 100 * t['confidence'], t['macro_auc_ci'][0],
                 t['macro_auc_ci'][1], t['macro_auprc'], results['minutes'])
    return results


# ----------------------------------------------------------------------------- many runs
def _task_summary(reports: list[dict]) -> dict:
    return {
        'data': reports[0]['data'],
        'runs': [{'seed': r['seed'], 'best_step': r['best_step'],
                  'best_val_auc': r['best_val_auc'], 'test_macro_auc': r['test']['macro_auc'],
                  'test_macro_auc_ci': r['test']['macro_auc_ci'],
                  'test_macro_auprc': r['test']['macro_auprc'], 'minutes': r['minutes']}
                 for r in reports],
        **metrics.summarize_seeds(reports),
    }


def run_all(config: ml_collections.ConfigDict, workdir: str, *, encoder: EncoderArg,
            tasks: list[str], num_seeds: int = 1) -> dict:
    """Runs every task x seed; writes `<workdir>/<task>/seed<k>/` and a summary.

    Args:
      config: fine-tuning config.
      workdir: output root.
      encoder: the starting weights, or a resolver `(task, seed_index) ->
        EncoderSource` (a linear run's output differs per task and seed).
      tasks: tasks to run.
      num_seeds: repetitions per task (seeds config.seed .. + num_seeds - 1).

    Returns:
      The summary written to `<workdir>/results.json`: per task the per-seed
      test metrics and their mean and std.

    Raises:
      guard.StopRequested: SIGTERM/SIGINT arrived (the run in progress stops).
      guard.WorkdirBusyError: another run holds `workdir`.
    """
    config_checks.check_finetune_config(config)
    resolve = _resolver(encoder)
    summary = {'protocol': config.protocol, 'encoder': None, 'num_seeds': num_seeds,
               'config': json.loads(config.to_json_best_effort()), 'tasks': {}}
    with guard.WorkdirLock(workdir, 'fine-tuning'), guard.StopSignals() as stop:
        for task in tasks:
            first = resolve(task, 0)
            summary['encoder'] = summary['encoder'] or first.spec
            task_data = load_task_data(config, task, first.config.fs)
            reports = []
            for k in range(num_seeds):
                source = first if k == 0 else resolve(task, k)
                reports.append(train_and_evaluate(
                    config, os.path.join(workdir, task, f'seed{k}'), encoder=source, task=task,
                    seed_index=k, task_data=task_data, stop=stop))
            summary['tasks'][task] = s = _task_summary(reports)
            logging.info('%s %s over %d seeds: test macro AUC %.4f +- %.4f', config.protocol,
                         task, num_seeds, s['test_macro_auc']['mean'],
                         s['test_macro_auc']['std'])
            if jax.process_index() == 0:
                with open(os.path.join(workdir, RESULTS_FILE), 'w') as f:
                    json.dump(summary, f, indent=2)
    return summary
