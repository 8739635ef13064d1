"""The pre-training loop: data-parallel jitted steps, logging, checkpoints, resume."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
from absl import logging

from jepa_ecg import jepa
from jepa_ecg.models import ModelConfig, model_config
from jepa_ecg.training import checkpoint, optim, parallel


class NonFiniteLossError(RuntimeError):
    pass


def model_config_from(config: ml_collections.ConfigDict) -> ModelConfig:
    m = config.model
    return model_config(m.variant, fs=m.fs, window_seconds=m.window_seconds,
                        patch_size=m.get('patch_size'), num_registers=m.num_registers,
                        dtype=config.dtype)


class MetricsWriter:
    """Console + TensorBoard + metrics.jsonl, written by process 0 only."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, 'metrics.jsonl')
        self._tb = None
        if self.enabled:
            try:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
            except ImportError:  # pragma: no cover - tensorboardX is a dependency
                logging.warning('tensorboardX missing: no event files')

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, 'a') as f:
            f.write(json.dumps({'step': step, **scalars}) + '\n')
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(f'train/{k}', v, step)
            self._tb.flush()

    def close(self):
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """Rows of metrics.jsonl; when a run resumed, later rows replace earlier ones."""
    path = os.path.join(workdir, 'metrics.jsonl')
    rows: dict[int, dict] = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    rows[row['step']] = row
    return [rows[k] for k in sorted(rows)]


def make_input_iterator(config, cfg: ModelConfig, start_step: int) -> Iterator[dict]:
    from jepa_ecg.data import pipeline
    from jepa_ecg.data.sources import MIXTURES
    mix = config.data.mixture
    if mix not in MIXTURES:
        raise ValueError(f'unknown data mixture {mix!r}; known: {sorted(MIXTURES)}')
    return pipeline.make_pretrain_iterator(
        MIXTURES[mix], data_dir=config.data.data_dir, global_batch_size=config.global_batch_size,
        fs=cfg.fs, window_seconds=cfg.window_seconds, patch_size=cfg.patch_size,
        keep_ratio_range=tuple(config.data.keep_ratio_range),
        min_block_size=config.data.min_block_size, keep_bucket=config.data.keep_bucket,
        seed=config.seed, start_step=start_step, process_index=jax.process_index(),
        process_count=jax.process_count(), num_workers=config.data.get('num_workers'),
        prefetch=config.data.get('prefetch', 2))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       input_iterator_fn=None) -> dict[str, Any]:
    """Pre-trains (or resumes) until `config.total_steps`.

    Args:
      config: see experiments/configs/pretrain.py.
      workdir: checkpoints, metrics.jsonl, TensorBoard events, config.json.
      input_iterator_fn: optional `(start_step) -> iterator` replacing the
        TFDS pipeline (each item a local batch dict as the pipeline yields).

    Returns:
      Summary dict: final step, last logged metrics, records/s.
    """
    os.makedirs(workdir, exist_ok=True)
    cfg = model_config_from(config)
    mesh = parallel.make_mesh()
    parallel.local_batch_size(config.global_batch_size, mesh)  # checks divisibility
    schedules = optim.make_schedules(config)
    tx = optim.make_optimizer(config, schedules)
    step_fn = jepa.make_train_step(cfg, tx, schedules, dtype=config.dtype,
                                   grad_accum_steps=config.grad_accum_steps,
                                   rank_every=config.rank_every)
    repl, batch_sh = parallel.replicated(mesh), parallel.batch_sharded(mesh)

    init = jax.jit(lambda key: jepa.init_train_state(key, cfg, tx), out_shardings=repl)
    state = init(jax.random.PRNGKey(config.seed))

    manager = checkpoint.make_manager(workdir, save_every=config.checkpoint_every,
                                      keep=config.keep_checkpoints,
                                      async_save=config.async_checkpoint)
    start_step = 0
    restored = checkpoint.restore_latest(manager, state)
    if restored is not None:
        state, meta = restored
        start_step = int(meta['data_step'])
        logging.info('resuming at step %d', start_step)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, 'config.json'), 'w') as f:
            json.dump({'config': config.to_dict(), 'model': cfg.to_dict()}, f, indent=2,
                      default=str)

    train_step = jax.jit(step_fn, in_shardings=(repl, batch_sh), out_shardings=(repl, repl),
                         donate_argnums=(0,))
    source_iter = (input_iterator_fn or (lambda s: make_input_iterator(config, cfg, s)))(start_step)

    def model_inputs():
        for batch in source_iter:
            # Only what the step consumes goes to the devices.
            yield {k: batch[k] for k in ('signal', 'keep_idx', 'keep_valid', 'predict_mask')}
    # Keeps the next batch's host-to-device copy in flight while a step runs.
    it = parallel.prefetch_to_device(model_inputs(), mesh, size=1)
    writer = MetricsWriter(workdir)
    meta_base = {'model': cfg.to_dict(), 'seed': config.seed,
                 'global_batch_size': config.global_batch_size}

    total = config.total_steps
    logging.info('training %s (%s) on %d devices, %d processes, global batch %d, steps %d -> %d',
                 cfg.variant, config.dtype, mesh.devices.size, jax.process_count(),
                 config.global_batch_size, start_step, total)
    t_last, step_last = time.time(), start_step
    t_start = t_last
    last: dict[str, float] = {}
    step = start_step
    try:
        while step < total:
            state, metrics = train_step(state, next(it))
            step += 1
            due_save = manager.should_save(step) or step == total
            if due_save and step % config.log_every:
                # Never write a non-finite state into a checkpoint.
                loss = float(metrics['loss'])
                if not math.isfinite(loss):
                    raise NonFiniteLossError(
                        f'non-finite loss {loss} at step {step}; the last good checkpoint '
                        f'is in {manager.directory}')
            if step % config.log_every == 0 or step == total:
                scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if config.rank_every <= 0 or step % config.rank_every:
                    scalars.pop('target_rank', None)
                if not all(math.isfinite(v) for v in scalars.values()):
                    raise NonFiniteLossError(
                        f'non-finite metrics at step {step}: {scalars}. The last good '
                        f'checkpoint is in {manager.directory}; lower the learning rate, '
                        f'enable grad_clip or use float32.')
                now = time.time()
                rate = (step - step_last) / max(now - t_last, 1e-9)
                scalars['steps_per_s'] = rate
                scalars['records_per_s'] = rate * config.global_batch_size
                eta = (total - step) / max(rate, 1e-9)
                writer.write(step, scalars)
                logging.info('step %d/%d loss %.4f lr %.2e wd %.3f m %.5f |g| %.3f |p| %.1f '
                             'std %.4f rank %s %.1f rec/s ETA %s', step, total, scalars['loss'],
                             scalars['lr'], scalars['wd'], scalars['momentum'],
                             scalars['grad_norm'], scalars['param_norm'], scalars['target_std'],
                             f"{scalars['target_rank']:.1f}" if 'target_rank' in scalars else '-',
                             scalars['records_per_s'], _fmt_seconds(eta))
                t_last, step_last = now, step
                last = scalars
            if due_save:
                checkpoint.save(manager, step, state,
                                {**meta_base, 'step': step, 'data_step': step},
                                force=step == total)
    finally:
        if hasattr(source_iter, 'close'):
            source_iter.close()
        manager.wait_until_finished()
        manager.close()
        writer.close()
    elapsed = time.time() - t_start
    return {'step': step, 'last': last, 'seconds': elapsed,
            'records_per_s': (step - start_step) * config.global_batch_size / max(elapsed, 1e-9)}


def _fmt_seconds(s: float) -> str:
    s = int(s)
    return f'{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}'


SPARK = ' ▁▂▃▄▅▆▇█'


def loss_curve_summary(workdir: str, *, points: int = 10, plot: bool = True) -> str:
    """A printable summary of the loss curve in metrics.jsonl (+ loss_curve.png).

    Args:
      workdir: a pre-training workdir.
      points: rows of the table.
      plot: also write `<workdir>/loss_curve.png`.
    """
    rows = read_metrics(workdir)
    if not rows:
        return f'no metrics in {workdir}'
    steps = np.array([r['step'] for r in rows])
    loss = np.array([r['loss'] for r in rows])
    lo, hi = loss.min(), loss.max()
    spark = ''.join(SPARK[1 + int((v - lo) / max(hi - lo, 1e-12) * (len(SPARK) - 2))]
                    for v in loss)
    picks = sorted(set(np.linspace(0, len(rows) - 1, min(points, len(rows))).astype(int)))
    lines = [f'loss curve ({len(rows)} logged steps, {steps[0]}..{steps[-1]}): {spark}',
             f'{"step":>8} {"loss":>9} {"lr":>9} {"target_std":>10} {"eff_rank":>8} {"rec/s":>8}']
    for i in picks:
        r = rows[i]
        rank = r.get('target_rank')
        lines.append(f'{r["step"]:>8d} {r["loss"]:>9.4f} {r["lr"]:>9.2e} {r["target_std"]:>10.4f} '
                     f'{(f"{rank:.1f}" if rank is not None else "-"):>8} '
                     f'{r.get("records_per_s", float("nan")):>8.1f}')
    first, last = loss[0], loss[-1]
    lines.append(f'loss {first:.4f} -> {last:.4f} ({100 * (last - first) / first:+.1f}%), '
                 f'min {lo:.4f} at step {steps[loss.argmin()]}')
    if plot:
        path = plot_loss_curve(rows, os.path.join(workdir, 'loss_curve.png'))
        lines.append(f'plot: {path}')
    return '\n'.join(lines)


def plot_loss_curve(rows: list[dict], path: str) -> str:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    steps = [r['step'] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot(steps, [r['loss'] for r in rows])
    axes[0].set(title='L1 loss (masked patches)', xlabel='step')
    axes[1].plot(steps, [r['target_std'] for r in rows])
    axes[1].set(title='target embedding std', xlabel='step')
    ranked = [(r['step'], r['target_rank']) for r in rows if 'target_rank' in r]
    if ranked:
        axes[2].plot(*zip(*ranked), marker='.')
    axes[2].set(title='effective rank of target embeddings', xlabel='step')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
