"""The pre-training loop: data-parallel jitted steps, logging, checkpoints, resume."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from typing import Any, Callable, Iterator

import jax
import ml_collections
from absl import logging

from jepa_ecg import sharding
from jepa_ecg.data import pretrain as pipeline
from jepa_ecg.data.sources import MIXTURES
from jepa_ecg.models import ModelConfig
from jepa_ecg.models.config import model_config_from
from jepa_ecg.training import checkpoint, config_checks, guard, optim
from jepa_ecg.training import jepa_step as jepa
from jepa_ecg.training.metrics_writer import MetricsWriter, RankWatch, read_metrics

# What the step consumes; anything else the pipeline yields stays on the host.
STEP_INPUTS = ('signal', 'keep_idx', 'keep_valid', 'predict_mask')



def make_input_iterator(config: ml_collections.ConfigDict, cfg: ModelConfig,
                        start_step: int) -> Iterator[dict]:
    """The pre-training pipeline of `config.data` from `start_step` (local batches).

    The sources must be built (entry points build them first: see
    experiments/build_data.py); a missing one stops with a message naming
    its build command.
    """
    mixture = MIXTURES[config.data.mixture]
    return pipeline.make_pretrain_iterator(
        mixture, data_dir=config.data.data_dir,
        global_batch_size=config.global_batch_size, fs=cfg.fs,
        window_seconds=cfg.window_seconds, patch_size=cfg.patch_size,
        keep_ratio_range=tuple(config.data.keep_ratio_range),
        min_block_size=config.data.min_block_size, keep_bucket=config.data.keep_bucket,
        seed=config.seed, start_step=start_step, process_index=jax.process_index(),
        process_count=jax.process_count(), num_threads=config.data.get('num_threads'),
        worker_count=config.data.get('worker_count', 0), prefetch=config.data.get('prefetch', 2),
        lead_dropout=config.data.get('lead_dropout', 0.0))


def _restore_or_init(config: ml_collections.ConfigDict, cfg: ModelConfig, tx, mesh,
                     manager) -> tuple[jepa.TrainState, int]:
    """The latest checkpoint's state and step, or a fresh state at step 0."""
    init = sharding.jit_data_parallel(lambda key: jepa.init_train_state(key, cfg, tx), mesh,
                                      batch_argnums=())
    state = init(jax.random.PRNGKey(config.seed))
    restored = checkpoint.restore_latest(manager, state)
    if restored is None:
        return state, 0
    state, meta = restored
    start_step = int(meta['data_step'])
    logging.info('resuming at step %d', start_step)
    return state, start_step


def _check_finite(scalars: dict[str, float], step: int, manager) -> None:
    if not all(math.isfinite(v) for v in scalars.values()):
        raise guard.NonFiniteLossError(
            f'non-finite metrics at step {step}: {scalars}. The last good '
            f'checkpoint is in {manager.directory}; lower the learning rate, '
            f'enable grad_clip or use float32.')


def _check_loss(step: int, loss, manager) -> None:
    loss = float(loss)
    if not math.isfinite(loss):
        raise guard.NonFiniteLossError(
            f'non-finite loss {loss} at step {step}; the last good checkpoint '
            f'is in {manager.directory}')


def _log_line(step: int, total: int, scalars: dict[str, float], eta: float) -> None:
    rank = scalars.get('target_rank')
    logging.info('step %d/%d loss %.4f lr %.2e wd %.3f m %.5f |g| %.3f |p| %.1f '
                 'std %.4f rank %s %.1f rec/s ETA %s', step, total, scalars['loss'],
                 scalars['lr'], scalars['wd'], scalars['momentum'], scalars['grad_norm'],
                 scalars['param_norm'], scalars['target_std'],
                 f'{rank:.1f}' if rank is not None else '-', scalars['records_per_s'],
                 _fmt_seconds(eta))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       input_iterator_fn: Callable[[int], Iterator[dict]] | None = None,
                       stop: guard.StopSignals | None = None) -> dict[str, Any]:
    """Pre-trains (or resumes) until `config.total_steps`.

    Args:
      config: see experiments/configs/pretrain.py.
      workdir: checkpoints, metrics.jsonl, TensorBoard events, config.json.
      input_iterator_fn: optional `(start_step) -> iterator` replacing the
        TFDS pipeline (each item a local batch dict as the pipeline yields).
      stop: stop-signal handlers the caller holds across several runs (the
        learning curve's segments and probes); None: this run installs its own.
        A signal that arrives in the last step of the whole run is left in
        `stop.received` for the caller (the run itself is complete and saved).

    Returns:
      Summary dict: final step, last logged metrics, records/s.

    Raises:
      guard.StopRequested: SIGTERM/SIGINT arrived; the step reached is saved.
      guard.WorkdirBusyError: another run holds `workdir`.
      config_checks.ConfigError: the workdir holds a run of another model shape or,
        resuming, another recipe (`config_checks.RECIPE_FIELDS`).
      checkpoint.CheckpointSaveError: a save failed (earlier ones are intact).
    """
    config_checks.check_pretrain_config(config)
    cfg = model_config_from(config)
    signals = guard.StopSignals() if stop is None else contextlib.nullcontext(stop)
    with guard.WorkdirLock(workdir, 'pre-training'), signals as stop:
        previous_hook = guard.ignore_closed_loop_callbacks()
        try:
            return _run(config, cfg, workdir, input_iterator_fn, stop)
        finally:
            sys.unraisablehook = previous_hook


def _run(config: ml_collections.ConfigDict, cfg: ModelConfig, workdir: str,
         input_iterator_fn: Callable[[int], Iterator[dict]] | None,
         stop: guard.StopSignals) -> dict[str, Any]:
    """train_and_evaluate inside the workdir's lock and the stop-signal handlers."""
    mesh = sharding.make_mesh()
    schedules = optim.make_schedules(config)
    tx = optim.make_optimizer(config, schedules)
    step_fn = jepa.make_train_step(cfg, tx, schedules, dtype=config.dtype,
                                   grad_accum_steps=config.grad_accum_steps,
                                   rank_every=config.rank_every,
                                   ema_per_micro_batch=config.get('ema_per_micro_batch', False),
                                   target_layer_norm=config.get('target_layer_norm', False))
    train_step = sharding.jit_data_parallel(step_fn, mesh, donate_argnums=(0,))
    config_path = os.path.join(workdir, checkpoint.CONFIG_FILE)
    # Before Orbax meets arrays of another shape: one line naming the field.
    config_checks.check_same_model(config_path, cfg)
    manager = checkpoint.make_manager(workdir, save_every=config.checkpoint_every,
                                      keep=config.keep_checkpoints,
                                      async_save=config.async_checkpoint)
    source_iter = writer = None
    try:
        if manager.latest_step() is not None:  # resuming: the same recipe, or one line
            config_checks.check_same_recipe(config_path, config)
        state, start_step = _restore_or_init(config, cfg, tx, mesh, manager)
        if jax.process_index() == 0:
            with open(config_path, 'w') as f:
                json.dump({'config': config.to_dict(), 'model': cfg.to_dict()}, f, indent=2,
                          default=str)
        source_iter = (input_iterator_fn or (lambda s: make_input_iterator(config, cfg, s)))(
            start_step)
        # Keeps the next batch's host-to-device copy in flight while a step runs.
        it = sharding.prefetch_to_device(({k: b[k] for k in STEP_INPUTS} for b in source_iter),
                                         mesh, size=1)
        writer = MetricsWriter(workdir, start_step=start_step)
        ranks = RankWatch([r['target_rank'] for r in read_metrics(workdir)
                           if 'target_rank' in r])
        logging.info('training %s (%s) on %d devices, %d processes, global batch %d, '
                     'steps %d -> %d', cfg.variant, config.dtype, mesh.devices.size,
                     jax.process_count(), config.global_batch_size, start_step,
                     config.total_steps)
        t_start = time.time()
        step, last = _train(config, cfg, state, start_step, train_step, it, manager, writer,
                            stop, ranks)
    except BaseException:
        _close_quietly(source_iter, manager, writer)
        raise
    _close_quietly(source_iter, None, writer)
    checkpoint.close(manager)  # waits for the last save and writes its digests
    # Also at `stop_at_step`: a caller that would go on (the learning curve's next
    # budget) must see the signal, not lose it with this segment's handlers.
    if stop.received is not None and step < config.total_steps:
        raise guard.StopRequested(stop.received, step, os.fspath(manager.directory))
    elapsed = time.time() - t_start
    return {'step': step, 'last': last, 'seconds': elapsed,
            'records_per_s': (step - start_step) * config.global_batch_size / max(elapsed, 1e-9)}


def _close_quietly(source_iter, manager, writer) -> None:
    """Closes what a run opened; an error here must not hide the one on its way out."""
    if hasattr(source_iter, 'close'):
        source_iter.close()
    if manager is not None:
        checkpoint.close(manager, quiet=True)
    if writer is not None:
        writer.close()


def _train(config: ml_collections.ConfigDict, cfg: ModelConfig, state, start_step: int,
           train_step, it: Iterator[dict], manager, writer: MetricsWriter,
           stop_signals: guard.StopSignals, ranks: RankWatch
           ) -> tuple[int, dict[str, float]]:
    """Steps from `start_step` to `config.total_steps`; logs and checkpoints on the way.

    A stop signal ends the loop after the step in progress, with a checkpoint
    of that step (the caller waits for it and raises StopRequested).

    `config.stop_at_step` (optional) stops earlier with a checkpoint there while
    the schedules keep their `total_steps` horizon: a later call resumes exactly
    (the learning curve keeps the encoder at several budgets of one run this way).
    """
    total = config.total_steps
    stop = min(total, int(config.get('stop_at_step') or total))
    meta_base = {'model': cfg.to_dict(), 'seed': config.seed,
                 'global_batch_size': config.global_batch_size}
    t_last, step_last = time.time(), start_step
    last: dict[str, float] = {}
    step = start_step
    previous = None  # (step, loss) of the step dispatched before this one
    while step < stop:
        state, metrics = train_step(state, next(it))
        step += 1
        if previous is not None:
            # Waits for the previous step while this one runs: at most one step
            # is ever in flight, so a stop signal or a NaN is acted on within a
            # step, not after everything asynchronous dispatch queued ahead.
            _check_loss(*previous, manager)
        previous = (step, metrics['loss'])
        stopping = stop_signals.should_stop(step)
        due_save = manager.should_save(step) or step == stop or stopping
        if due_save and step % config.log_every:
            _check_loss(step, metrics['loss'], manager)  # no non-finite state is saved
            previous = None  # checked: not fetched again next step
        if step % config.log_every == 0 or step == stop:
            scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if config.rank_every <= 0 or step % config.rank_every:
                scalars.pop('target_rank', None)
            _check_finite(scalars, step, manager)
            previous = None
            now = time.time()
            rate = (step - step_last) / max(now - t_last, 1e-9)
            scalars['steps_per_s'] = rate
            scalars['records_per_s'] = rate * config.global_batch_size
            writer.write(step, scalars)
            _log_line(step, total, scalars, (total - step) / max(rate, 1e-9))
            if 'target_rank' in scalars:
                ranks.add(step, scalars['target_rank'])
            t_last, step_last, last = now, step, scalars
        if due_save:
            checkpoint.save(manager, step, state, {**meta_base, 'step': step, 'data_step': step},
                            force=step == stop or stopping)
        if stopping:
            logging.info('stop signal: saved the checkpoint of step %d', step)
            break
    return step, last


def _fmt_seconds(s: float) -> str:
    s = int(s)
    return f'{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}'
