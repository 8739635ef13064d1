"""Many fine-tuning runs and what each leaves behind.

`train_and_evaluate` is one (task, seed) run of finetune_loop's steps: it
fits with validation, scores the test fold with the best weights and writes
results.json, predictions.npz and the plots; `run_all` runs every task x
seed under one workdir lock and stop-signal handler and writes the summary.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from jepa_ecg.data import label_fraction
from jepa_ecg.data import ptbxl as data_lib
from jepa_ecg.evaluation import metrics
from jepa_ecg.evaluation.evaluator import SplitScores
from jepa_ecg.training import checkpoint, config_checks, guard
from jepa_ecg.training.checkpoint import PREDICTIONS_FILE, RESULTS_FILE
from jepa_ecg.training.finetune_loop import (EncoderArg, EncoderSource, FitResult, Run,
                                             resolver_of, build_run, evaluate_or_stop,
                                             fit_with_validation, load_task_data,
                                             stop_between_batches)


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


def _score_lead_subsets(run: Run, params: Any, workdir: str,
                        stop: guard.StopSignals | None, step: int) -> dict:
    """Test macro AUC per `config.eval_lead_subsets` subset (+ its plot).

    Raises:
      guard.StopRequested: a stop signal arrived during a subset's pass.
    """
    # matplotlib is only needed when scoring subsets.
    from jepa_ecg.evaluation import lead_subsets  # pylint: disable=g-import-not-at-top
    config = run.config
    with stop_between_batches(stop, step, workdir) as interrupted:
        table = lead_subsets.evaluate_lead_subsets(
            run.evaluator, params, config.eval_lead_subsets,
            num_resamples=config.bootstrap.num_resamples,
            confidence=config.bootstrap.confidence, seed=run.seed, interrupted=interrupted)
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
    source = resolver_of(encoder)(task, seed_index)
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
    test = evaluate_or_stop(run, best_params, 'test', stop, fit.steps_run, workdir)
    results = _results(run, fit, test, source)
    results['train_subset'] = label_fraction.describe(task_data)
    if config.get('eval_lead_subsets'):
        results['lead_subsets'] = _score_lead_subsets(run, best_params, workdir, stop,
                                                      fit.steps_run)
    results['minutes'] = (time.time() - t_start) / 60
    _write_outputs(workdir, results, task_data, fit.best_val, test, config.plots)
    t = results['test']
    logging.info('%s best val AUC %.4f at step %d; test macro AUC %.4f (%.0f%% CI %.4f-%.4f), '
                 'AUPRC %.4f; %.1f min', run.tag, fit.best_val_auc, fit.best_step,
                 t['macro_auc'], 100 * t['confidence'], t['macro_auc_ci'][0],
                 t['macro_auc_ci'][1], t['macro_auprc'], results['minutes'])
    return results


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
            tasks: list[str], num_seeds: int = 1, skip_finished: bool = False,
            stop: guard.StopSignals | None = None) -> dict:
    """Runs every task x seed; writes `<workdir>/<task>/seed<k>/` and a summary.

    Args:
      config: fine-tuning config.
      workdir: output root.
      encoder: the starting weights, or a resolver `(task, seed_index) ->
        EncoderSource` (a linear run's output differs per task and seed).
      tasks: tasks to run.
      num_seeds: repetitions per task (seeds config.seed .. + num_seeds - 1).
      skip_finished: read back the runs that already wrote their results
        instead of training and testing them again (more seeds added later).
      stop: stop-signal handlers the caller holds across several calls; None:
        these runs install their own.

    Returns:
      The summary written to `<workdir>/results.json`: per task the per-seed
      test metrics and their mean and std.

    Raises:
      guard.StopRequested: SIGTERM/SIGINT arrived (the run in progress stops).
      guard.WorkdirBusyError: another run holds `workdir`.
    """
    config_checks.check_finetune_config(config)
    resolve = resolver_of(encoder)
    summary = {'protocol': config.protocol, 'encoder': None, 'num_seeds': num_seeds,
               'config': json.loads(config.to_json_best_effort()), 'tasks': {}}
    signals = guard.StopSignals() if stop is None else contextlib.nullcontext(stop)
    with guard.WorkdirLock(workdir, 'fine-tuning'), signals as stop:
        for task in tasks:
            first = resolve(task, 0)
            summary['encoder'] = summary['encoder'] or first.spec
            task_data = load_task_data(config, task, first.config.fs)
            reports = []
            for k in range(num_seeds):
                run_dir = os.path.join(workdir, task, f'seed{k}')
                done = os.path.join(run_dir, RESULTS_FILE)
                if skip_finished and os.path.exists(done):
                    with open(done) as f:
                        reports.append(json.load(f))
                    continue
                source = first if k == 0 else resolve(task, k)
                reports.append(train_and_evaluate(
                    config, run_dir, encoder=source, task=task,
                    seed_index=k, task_data=task_data, stop=stop))
            summary['tasks'][task] = s = _task_summary(reports)
            logging.info('%s %s over %d seeds: test macro AUC %.4f +- %.4f', config.protocol,
                         task, num_seeds, s['test_macro_auc']['mean'],
                         s['test_macro_auc']['std'])
            if jax.process_index() == 0:
                with open(os.path.join(workdir, RESULTS_FILE), 'w') as f:
                    json.dump(summary, f, indent=2)
    return summary
