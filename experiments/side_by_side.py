"""Pre-training side by side with the published PyTorch step, then a linear probe of both.

`experiments.compare_official --what=pretrain` drives this: per seed, ONE
input pipeline (ours, on our TFDS build) feeds the same batches and masks to
our jitted train step and to the PyTorch one (the published code, or
experiments/torch_reference.py), both initialised from that seed by their
own initialisers; every `log_every` steps both trajectories are recorded
(loss as the step's and as the window's mean, target std, effective rank of
the record-pooled targets, lr, weight decay, EMA momentum, gradient norm).
Afterwards each side's target encoder goes through the same linear protocol
(the PyTorch one converted by jepa_ecg.inference.torch_import), and the
paired bootstrap compares the two on the test fold.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Callable

import jax
import numpy as np
from flax import serialization

from experiments import compare
from experiments import torch_reference as ref
from jepa_ecg.inference import torch_import
from jepa_ecg.models.config import model_config_from
from jepa_ecg.training import finetune_loop, finetune_runs, jepa_loop, optim
from jepa_ecg.training import jepa_step as jepa

METRICS = ('loss', 'loss_mean', 'target_std', 'target_rank', 'lr', 'wd', 'momentum', 'grad_norm')
RESULT_FILE = 'side_by_side.json'
# What seeds must share to be pooled (with the run's settings, see _settings).
POOLED_KEYS = ('official_side', 'same_init', 'task', 'steps', 'batch')
PLOT_FILE = 'side_by_side.png'


class WorkdirMismatch(ValueError):
    """The workdir holds a side-by-side result that cannot be pooled with this run."""


def effective_rank(pooled: np.ndarray) -> float:
    """As jepa_step.effective_rank: exp(entropy) of the normalised singular
    values of the centred (B, D) features."""
    x = pooled.astype(np.float64) - pooled.mean(axis=0, keepdims=True)
    s = np.linalg.svd(x, compute_uv=False)
    p = s / max(s.sum(), 1e-12)
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


class ReferenceSide:
    """experiments/torch_reference.py behind the interface of OfficialCode."""

    def __init__(self, cfg, config, *, start_step: int = 0):
        self.model = ref.Jepa(cfg)
        self.opt = ref.make_optimizer(self.model, b1=config.b1, b2=config.b2, eps=config.eps)
        self.schedules = ref.Schedules.from_config(config)
        # One momentum tick per forward pass: one micro-batch per step here.
        self.step_index, self.ticks = start_step, start_step * config.grad_accum_steps

    def step(self, micro_batches, autocast=None, *, measure: bool = False) -> dict:
        if autocast is not None:
            with autocast():
                return self.step(micro_batches, measure=measure)
        loss, self.ticks, info = ref.train_step(self.model, self.opt, self.schedules,
                                                self.step_index, micro_batches, self.ticks)
        self.step_index += 1
        return {'loss': loss, **({k: info[k] for k in ('lr', 'wd', 'momentum', 'grad_norm')}
                                 if measure else {})}


def _torch_target_stats(side, micro, torch) -> dict:
    """Std over the batch and effective rank of the targets the step just used."""
    with torch.no_grad():
        h = side.model.target_encoder(micro[0]).numpy()
    return {'target_std': float(h.std(axis=0).mean()),
            'target_rank': effective_rank(h.mean(axis=1))}


def _window_means(rows: list, losses: list, side: str) -> None:
    start = rows[-2]['step'] if len(rows) > 1 else 0
    rows[-1][side]['loss_mean'] = float(np.mean(losses[start:]))


def _weights_from(side, cfg) -> tuple[dict, dict]:
    """The PyTorch side's (online encoder + predictor, target encoder) in our layout."""
    sd = {k: v.detach().numpy() for k, v in side.model.state_dict().items()}
    return torch_import.convert_context_state(sd, cfg), torch_import.convert_target_state(sd, cfg)


class PairCheckpoints:
    """Both sides' state every few steps, so a long comparison can stop and go on.

    One folder per saved step under `path` (ours.msgpack: our TrainState;
    official.pt: the PyTorch module and optimiser; progress.json: step,
    trajectories so far, timings, and the settings of the run). A folder
    counts once its progress.json is there (written last); older ones go.
    """

    def __init__(self, path: str, fingerprint: dict):
        self.path, self.fingerprint = path, fingerprint

    def _complete(self) -> list[str]:
        if not os.path.isdir(self.path):
            return []
        return sorted(d for d in os.listdir(self.path)
                      if os.path.exists(os.path.join(self.path, d, 'progress.json')))

    def save(self, step: int, state, side, progress: dict) -> None:
        import torch  # pylint: disable=g-import-not-at-top
        folder = os.path.join(self.path, f'step_{step:08d}')
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        with open(os.path.join(folder, 'ours.msgpack'), 'wb') as f:
            f.write(serialization.to_bytes(jax.device_get(state)))
        torch.save({'model': side.model.state_dict(), 'opt': side.opt.state_dict()},
                   os.path.join(folder, 'official.pt'))
        with open(os.path.join(folder, 'progress.json.tmp'), 'w') as f:
            json.dump({**progress, 'step': step, 'fingerprint': self.fingerprint}, f)
        os.replace(os.path.join(folder, 'progress.json.tmp'),
                   os.path.join(folder, 'progress.json'))
        for old in self._complete()[:-1]:
            shutil.rmtree(os.path.join(self.path, old), ignore_errors=True)

    def latest(self) -> tuple[str, dict] | None:
        """(folder, progress) of the newest complete save, or None."""
        done = self._complete()
        if not done:
            return None
        folder = os.path.join(self.path, done[-1])
        with open(os.path.join(folder, 'progress.json')) as f:
            saved = json.load(f)
        theirs = saved['fingerprint']
        if theirs != self.fingerprint:
            differ = sorted(k for k in set(theirs) | set(self.fingerprint)
                            if theirs.get(k) != self.fingerprint.get(k))
            raise WorkdirMismatch(f'{folder} was saved by a run with other settings '
                                  f'({", ".join(differ)}); use another --workdir')
        return folder, saved

    def restore(self, folder: str, state, side):
        """Our TrainState from the save (shaped like `state`); `side` loaded in place."""
        import torch  # pylint: disable=g-import-not-at-top
        with open(os.path.join(folder, 'ours.msgpack'), 'rb') as f:
            state = serialization.from_bytes(state, f.read())
        saved = torch.load(os.path.join(folder, 'official.pt'))
        side.model.load_state_dict(saved['model'])
        side.opt.load_state_dict(saved['opt'])
        return state

    def clear(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def run_pair(config, seed: int, make_torch_side: Callable, log_every: int,
             progress: Callable[[str], None] = print, *, same_init: bool = False,
             checkpoints: PairCheckpoints | None = None, stop_at: int | None = None
             ) -> dict | None:
    """Pre-trains both sides for config.total_steps on the same batches.

    `same_init`: ours starts from the PyTorch side's initial weights
    (converted) instead of its own initialiser, which separates what the
    two initialisations do from what the steps do. `checkpoints`: both sides
    are saved at every logged step and a run goes on from the latest save;
    `stop_at`: stop after saving that step (returns None).
    """
    import torch  # pylint: disable=g-import-not-at-top
    config = config.copy_and_resolve_references()
    config.seed = seed
    cfg = model_config_from(config)
    schedules = optim.make_schedules(config)
    tx = optim.make_optimizer(config, schedules)
    step_fn = jax.jit(jepa.make_train_step(
        cfg, tx, schedules, dtype=config.dtype, grad_accum_steps=config.grad_accum_steps,
        rank_every=log_every, ema_per_micro_batch=config.get('ema_per_micro_batch', False)))
    state = jepa.init_train_state(jax.random.PRNGKey(seed), cfg, tx)
    torch.manual_seed(seed)
    saved, done = (checkpoints.latest() if checkpoints else None) or (None, None)
    start = done['step'] if saved else 0
    side = make_torch_side(cfg, config, start_step=start)
    rows, losses = [], {'ours': [], 'official': []}
    seconds = {'ours': 0.0, 'official': 0.0}
    if saved:
        state = checkpoints.restore(saved, state, side)
        rows, losses, seconds = done['rows'], done['losses'], done['seconds']
        progress(f'seed {seed}: going on from step {start} ({saved})')
    elif same_init:
        params, target = _weights_from(side, cfg)
        state = state.replace(params=params, target_params=target, opt_state=tx.init(params))
    it = jepa_loop.make_input_iterator(config, cfg, start)
    for step in range(start, config.total_steps):
        batch = next(it)
        t0 = time.perf_counter()
        state, m = step_fn(state, {k: batch[k] for k in jepa_loop.STEP_INPUTS})
        m = jax.device_get(m)
        t1 = time.perf_counter()
        micro = ref.micro_batch(np.asarray(batch['signal']), np.asarray(batch['predict_mask']))
        log = (step + 1) % log_every == 0 or step + 1 == config.total_steps
        theirs = side.step([micro], measure=log)
        seconds['ours'] += t1 - t0
        seconds['official'] += time.perf_counter() - t1
        losses['ours'].append(float(m['loss']))
        losses['official'].append(theirs['loss'])
        if log:
            ours = {k: float(m[k]) for k in ('loss', 'target_std', 'target_rank', 'lr', 'wd',
                                              'momentum', 'grad_norm')}
            rows.append({'step': step + 1, 'ours': ours,
                         'official': {**theirs, **_torch_target_stats(side, micro, torch)}})
            for name in ('ours', 'official'):
                _window_means(rows, losses[name], name)
            progress(f'seed {seed} step {step + 1}: loss ours {ours["loss"]:.4f} '
                     f'official {theirs["loss"]:.4f}')
            if checkpoints:
                checkpoints.save(step + 1, state, side,
                                 {'rows': rows, 'losses': losses, 'seconds': seconds})
            if stop_at is not None and step + 1 >= stop_at:
                break
    if hasattr(it, 'close'):
        it.close()
    if stop_at is not None and rows and rows[-1]['step'] < config.total_steps:
        progress(f'seed {seed}: stopped after step {rows[-1]["step"]}; the same command '
                 'goes on from there')
        return None
    return {'seed': seed, 'rows': rows, 'seconds': seconds, 'cfg': cfg,
            'encoders': {'ours': jax.device_get(state.target_params),
                         'official': _weights_from(side, cfg)[1]}}


def probe(linear_config, task: str, cfg, params, out: str, description: str) -> str:
    """The linear protocol on one encoder; its run folder."""
    run = os.path.join(out, task, 'seed0')
    if not os.path.exists(os.path.join(run, 'results.json')):
        source = finetune_loop.EncoderSource(cfg, params, spec=description,
                                             description=description)
        finetune_runs.run_all(linear_config, out, encoder=source, tasks=[task])
    return run


def _summary(run: str) -> dict:
    with open(os.path.join(run, 'results.json')) as f:
        r = json.load(f)
    return {'test_macro_auc': r['test']['macro_auc'], 'ci': r['test']['macro_auc_ci'],
            'best_val_auc': r['best_val_auc'], 'run': run}


def spreads(seeds: list[dict]) -> list[dict]:
    """Per logged step and metric: each side's min/max over seeds, and whether
    our seed mean lies within the official range."""
    out = []
    for i, row in enumerate(seeds[0]['rows']):
        entry = {'step': row['step']}
        for k in METRICS:
            ours = [s['rows'][i]['ours'][k] for s in seeds]
            theirs = [s['rows'][i]['official'][k] for s in seeds]
            entry[k] = {'ours': [min(ours), max(ours)], 'official': [min(theirs), max(theirs)],
                        'ours_mean_within_official': min(theirs) <= float(np.mean(ours))
                        <= max(theirs)}
        out.append(entry)
    return out


def _settings(config, log_every: int) -> dict:
    """What two runs must share for their seeds to be pooled."""
    p, lin = config.pretrain, config.linear
    return {'log_every': int(log_every), 'model': p.model.to_dict(),
            'warmup_steps': int(p.warmup_steps), 'learning_rate': float(p.learning_rate),
            'weight_decay': [float(p.weight_decay), float(p.final_weight_decay)],
            'ema_momentum': [float(p.ema_momentum), float(p.final_ema_momentum)],
            'mixture': str(p.data.mixture), 'linear_steps': int(lin.total_steps),
            'max_records_per_fold': lin.data.get('max_records_per_fold')}


def earlier_seeds(path: str, result: dict) -> list[dict]:
    """The seeds a run in the same workdir already finished, if its settings
    are this run's; a clear error if they are not (never a silent mix)."""
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            earlier = json.load(f)
        seeds = earlier['seeds']
        logged = [[r['step'] for r in s['rows']] for s in seeds]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WorkdirMismatch(f'{path}: not a side-by-side result ({e!r}); move it away or use '
                              'another --workdir') from e
    keys = list(POOLED_KEYS)
    if 'settings' in earlier:  # (the first runs of the script did not record them)
        keys.append('settings')
    differ = [f'{k}: {earlier.get(k)!r} there, {result[k]!r} now' for k in keys
              if earlier.get(k) != result[k]]
    every, steps = result['settings']['log_every'], result['steps']
    expected = [k for k in range(1, steps + 1) if k % every == 0 or k == steps]
    if any(s != expected for s in logged):
        differ.append(f'logged steps: {logged[0][:3]}... there, {expected[:3]}... now')
    if differ:
        raise WorkdirMismatch(f'{path} holds seeds run with other settings ({"; ".join(differ)}); '
                              'use another --workdir to keep both')
    return seeds


def run(config, seeds: list[int], make_torch_side: Callable, workdir: str, *,
        log_every: int, side_name: str, same_init: bool = False,
        progress: Callable[[str], None] = print, stop_at: int | None = None) -> dict:
    """All seeds, probes and the paired comparison; writes side_by_side.json (+ plot).

    Seeds already in the workdir's side_by_side.json (same settings) are kept
    and not run again, and a seed's pre-training goes on from its latest
    logged step (seed<k>/pair_checkpoint), so one comparison can be run in
    separate sittings and pool into one result. `stop_at`: stop the first
    unfinished seed after that step (result['stopped'] names it).
    """
    os.makedirs(workdir, exist_ok=True)
    result = {'official_side': side_name, 'same_init': same_init, 'task': config.task,
              'steps': int(config.pretrain.total_steps),
              'batch': int(config.pretrain.global_batch_size),
              'settings': _settings(config, log_every), 'seeds': []}
    result['seeds'] = earlier_seeds(os.path.join(workdir, RESULT_FILE), result)
    done = {s['seed'] for s in result['seeds']}
    for seed in seeds:
        if seed in done:
            progress(f'seed {seed}: kept from {os.path.join(workdir, RESULT_FILE)}')
            continue
        fingerprint = {k: result[k] for k in (*POOLED_KEYS, 'settings')}
        checkpoints = PairCheckpoints(os.path.join(workdir, f'seed{seed}', 'pair_checkpoint'),
                                      {**fingerprint, 'seed': seed})
        pair = run_pair(config.pretrain, seed, make_torch_side, log_every, progress,
                        same_init=same_init, checkpoints=checkpoints, stop_at=stop_at)
        if pair is None:
            result['stopped'] = seed
            return result
        entry = {'seed': seed, 'rows': pair['rows'], 'seconds': pair['seconds'], 'probe': {}}
        runs = {}
        for name, params in pair['encoders'].items():
            runs[name] = probe(config.linear, config.task, pair['cfg'], params,
                               os.path.join(workdir, f'seed{seed}', name),
                               f'{name} JEPA target encoder, seed {seed}')
            entry['probe'][name] = _summary(runs[name])
        boot = config.linear.bootstrap
        entry['probe']['paired_ours_minus_official'] = compare.compare(
            compare.load_predictions(runs['ours']), compare.load_predictions(runs['official']),
            num_resamples=boot.num_resamples, confidence=boot.confidence, seed=0)
        result['seeds'] = sorted(result['seeds'] + [entry], key=lambda e: e['seed'])
        result['spreads'] = spreads(result['seeds'])
        with open(os.path.join(workdir, RESULT_FILE) + '.tmp', 'w') as f:
            json.dump(result, f, indent=2)
        os.replace(os.path.join(workdir, RESULT_FILE) + '.tmp', os.path.join(workdir, RESULT_FILE))
        checkpoints.clear()
    if config.plots:
        plot(result, os.path.join(workdir, PLOT_FILE))
    return result


def plot(result: dict, path: str) -> None:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    panels = ('loss_mean', 'target_std', 'target_rank', 'grad_norm', 'lr', 'wd', 'momentum')
    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    styles = ('-', '--', ':', '-.')  # one per seed; colour = side
    for ax, k in zip(axes.flat, panels):
        for i, s in enumerate(result['seeds']):
            steps = [r['step'] for r in s['rows']]
            for side, color in (('ours', 'tab:blue'), ('official', 'tab:orange')):
                ax.plot(steps, [r[side][k] for r in s['rows']], color=color, alpha=0.8,
                        linestyle=styles[i % len(styles)], label=f'{side} seed {s["seed"]}')
        ax.set_title(k + (' (log scale)' if k == 'loss_mean' else ''))
        ax.set_xlabel('step')
    axes.flat[0].set_yscale('log')
    ax = axes.flat[-1]
    for i, s in enumerate(result['seeds']):
        for j, side in enumerate(('ours', 'official')):
            p = s['probe'][side]
            ax.errorbar([i + 0.2 * j], [p['test_macro_auc']],
                        yerr=[[p['test_macro_auc'] - p['ci'][0]], [p['ci'][1] - p['test_macro_auc']]],
                        fmt='o', color=('tab:blue', 'tab:orange')[j])
    ax.set_xticks([i + 0.1 for i in range(len(result['seeds']))],
                  [f'seed {s["seed"]}' for s in result['seeds']])
    ax.set_title('linear probe, test macro AUC (95% CI)')
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f'jepa_ecg vs {result["official_side"]}: {result["steps"]} steps x '
                 f'{result["batch"]}')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
