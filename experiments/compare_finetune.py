"""The linear evaluation protocol run by jepa_ecg and by the published PyTorch code, side by side.

`experiments.compare_official --what=finetune` drives this. Per seed, both
implementations fit the linear protocol (frozen encoder, attentive pooler)
from the SAME start:

* the same encoder weights: the `--encoder` spec resolved as fine-tuning
  resolves it (inference/resolve.py); a `random:<variant>` encoder is drawn
  once from a fixed key, and a register the encoder lacks is added from that
  key too, so both sides hold the identical register;
* the same head: the PyTorch classifier initialises its pooler from the seed
  (torch.manual_seed) and ours starts from it, converted;
* the same training batches in the same order: our input pipeline's crops
  (PtbxlTask.train_batches with the run's seed) go to our loop and, transposed
  to (B, leads, T), to the PyTorch steps;
* the same schedule, validation points (every `eval_every` steps and the
  last), best-validation weights for the test fold and early-stopping rule.

Ours is jepa_ecg.training.finetune_runs.train_and_evaluate as is (its run
folder under `<workdir>/seed<k>/ours`). The PyTorch side is either the
published modules (`PublishedEvaluation` of
experiments/torch_finetune_reference.py: the ViTClassifier, AdamW and
schedule of the published finetune.py, stepped as its loop steps them) or
that file's statement of them. Both score records with their own evaluation
(logits averaged over 2.5 s windows at 1.25 s stride), ours through our
Evaluator. The test fold is compared by the paired bootstrap of
experiments/compare.py on the same resamples.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np

from experiments import compare
from jepa_ecg.ecg import transforms
from jepa_ecg.evaluation import metrics
from jepa_ecg.models.classifier import build_classifier, init_classifier
from jepa_ecg.training import finetune_loop, finetune_runs
from jepa_ecg.training.finetune_step import merge_pretrained

RESULT_FILE = 'finetune_side_by_side.json'
PLOT_FILE = 'finetune_side_by_side.png'
# The key of a `random:<variant>` encoder (and of a register added to an encoder without one).
ENCODER_SEED = 0
# Records per PyTorch evaluation forward pass (x 7 windows each at 10 s / 2.5 s / 1.25 s).
EVAL_CHUNK = 128


class ResultMismatch(ValueError):
    """The workdir holds a result of other settings."""


def encoder_state_dict(params: Mapping[str, Any], cfg) -> dict[str, np.ndarray]:
    """Our encoder params -> the published encoder's state dict (no prefix);
    the inverse of torch_import.convert_encoder_state."""
    d, c, p = cfg.dim, cfg.num_leads, cfg.patch_size
    a = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))
    ln_bias = cfg.bias or cfg.norm_bias
    out = {'patch_embed.proj.weight':
           a(np.asarray(params['patch_embed']['kernel']).reshape(p, c, d).transpose(2, 1, 0))}
    if cfg.bias:
        out['patch_embed.proj.bias'] = a(params['patch_embed']['bias'])
    if cfg.num_registers:
        out['registers'] = a(params['registers'])

    def linear(name: str, tree: Mapping, bias: bool) -> None:
        out[f'{name}.weight'] = a(np.asarray(tree['kernel']).T)
        if bias:
            out[f'{name}.bias'] = a(tree['bias'])

    def norm(name: str, tree: Mapping) -> None:
        out[f'{name}.weight'] = a(tree['scale'])
        if ln_bias:
            out[f'{name}.bias'] = a(tree['bias'])

    for i in range(cfg.depth):
        b, n = params[f'blocks_{i}'], f'blocks.{i}'
        norm(f'{n}.norm1', b['norm1'])
        linear(f'{n}.attn.qkv', b['attn']['qkv'], cfg.qkv_bias)
        linear(f'{n}.attn.proj', b['attn']['proj'], cfg.bias)
        norm(f'{n}.norm2', b['norm2'])
        linear(f'{n}.mlp.fc1', b['mlp']['fc1'], cfg.bias)
        linear(f'{n}.mlp.fc2', b['mlp']['fc2'], cfg.bias)
    norm('norm', params['norm'])
    return out


class StatementEvaluation:
    """experiments/torch_finetune_reference.py's statement behind the interface
    of its PublishedEvaluation (`model`, `step`, `probabilities`)."""

    def __init__(self, cfg, config, num_classes: int, *, single_label: bool, crop: int,
                 stride: int):
        from experiments import torch_finetune_reference as ref  # pylint: disable=g-import-not-at-top
        self.ref, self.config, self.single_label = ref, config, single_label
        self.crop, self.stride, self.index = crop, stride, 0
        self.model = ref.Classifier(cfg, num_classes, head=config.head, dropout=config.dropout,
                                    frozen=config.frozen)
        self.opt = ref.make_optimizer(self.model, b1=config.b1, b2=config.b2, eps=config.eps,
                                      weight_decay=config.weight_decay)

    def step(self, x, y) -> float:
        c = self.config
        lr = self.ref.learning_rate(self.index, total=c.total_steps, peak=c.learning_rate,
                                    final=c.final_learning_rate, warmup=c.warmup_steps)
        self.index += 1
        return self.ref.train_step(self.model, self.opt, x, y, lr=lr, clip=c.grad_clip,
                                   single_label=self.single_label)['loss']

    def probabilities(self, records: np.ndarray) -> np.ndarray:
        return self.ref.record_probabilities(self.model, records, size=self.crop,
                                             stride=self.stride, single_label=self.single_label)


def make_torch_side(official_dir: str | None, cfg, config, num_classes: int, *,
                    single_label: bool, crop: int, stride: int):
    """The published modules (`official_dir`) or, without one, the statement."""
    if official_dir is None:
        return StatementEvaluation(cfg, config, num_classes, single_label=single_label,
                                   crop=crop, stride=stride)
    from experiments import torch_finetune_reference as ref  # pylint: disable=g-import-not-at-top
    overrides = {'steps': int(config.total_steps), 'batch_size': int(config.batch_size),
                 'checkpoint_interval': int(config.eval_every),
                 'early_stopping_patience': int(config.patience)}
    return ref.PublishedEvaluation(official_dir, cfg, config.protocol, num_classes,
                                   single_label=single_label, overrides=overrides)


def classifier_config(source, config):
    """The encoder config a run builds its classifier with (a register added
    when the encoder has none, as finetune_loop.build_run does)."""
    return dataclasses.replace(source.config, num_registers=max(1, source.config.num_registers),
                               dtype=config.dtype)


def start_encoder(source, cfg, config, num_classes: int, crop: int):
    """The resolved encoder's params completed to `cfg` (a register the
    encoder lacks drawn from ENCODER_SEED), as numpy."""
    model = build_classifier(cfg, num_classes, head=config.head, dropout=config.dropout,
                             frozen=config.frozen, head_bias=config.head_bias)
    fresh = init_classifier(model, jax.random.PRNGKey(ENCODER_SEED), crop, cfg.num_leads)
    encoder = fresh['encoder']
    if source.encoder_params is not None:
        encoder = merge_pretrained(encoder, source.encoder_params, 'encoder')
    return jax.tree_util.tree_map(np.asarray, jax.device_get(encoder))


def _probabilities(side, records: np.ndarray) -> np.ndarray:
    return np.concatenate([side.probabilities(records[i:i + EVAL_CHUNK])
                           for i in range(0, len(records), EVAL_CHUNK)])


def fit_torch(side, task, config, *, seed: int, crop: int,
              progress: Callable[[str], None]) -> dict:
    """The linear protocol's loop on the PyTorch side, fed our batches; the
    best-validation weights score the test fold."""
    import torch  # pylint: disable=g-import-not-at-top
    t_start = time.time()
    total, every = int(config.total_steps), int(config.eval_every)
    val = np.stack(list(task.records('val')))
    batches = task.train_batches(batch_size=config.batch_size, crop=crop, seed=seed,
                                 lead_dropout=config.data.get('lead_dropout', 0.0))
    curve, losses, train_s = [], [], 0.0
    best_auc, best_step, best_state, step = -np.inf, 0, None, 0
    try:
        while step < total:
            b = next(batches)
            x = torch.from_numpy(np.ascontiguousarray(np.transpose(b['signal'], (0, 2, 1))))
            t0 = time.perf_counter()
            losses.append(side.step(x, torch.from_numpy(np.asarray(b['target'], np.float32))))
            train_s += time.perf_counter() - t0
            step += 1
            if step % every and step != total:
                continue
            auc = metrics.macro_roc_auc(task.splits['val'].targets, _probabilities(side, val))
            curve.append({'step': step, 'val_auc': float(auc), 'loss': float(np.mean(losses))})
            losses = []
            if auc > best_auc:
                best_auc, best_step = auc, step
                best_state = copy.deepcopy(side.model.state_dict())
            progress(f'seed {seed} official step {step}: val AUC {auc:.4f}')
            if step - best_step >= config.patience:
                break
    finally:
        if hasattr(batches, 'close'):
            batches.close()
    side.model.load_state_dict(best_state)
    test = _probabilities(side, np.stack(list(task.records('test'))))
    boot = config.bootstrap
    report = metrics.classification_report(
        task.splits['test'].targets, test, task.classes, num_resamples=boot.num_resamples,
        confidence=boot.confidence, seed=seed)
    return {'val_curve': curve, 'best_val_auc': float(best_auc), 'best_step': best_step,
            'steps_run': step, 'test_macro_auc': report['macro_auc'],
            'ci': list(report['macro_auc_ci']), 'train_seconds': train_s,
            'seconds': time.time() - t_start, 'test_predictions': test}


def _ours_summary(results: dict, run: str, seconds: float) -> dict:
    return {'val_curve': [{'step': h['step'], 'val_auc': h['val_auc']}
                          for h in results['history'] if 'val_auc' in h],
            'best_val_auc': results['best_val_auc'], 'best_step': results['best_step'],
            'steps_run': results['steps_run'], 'test_macro_auc': results['test']['macro_auc'],
            'ci': list(results['test']['macro_auc_ci']),
            'train_seconds': results['steps_run'] / max(results['train_steps_per_second'], 1e-9),
            'seconds': seconds, 'run': run}


def seed_entry(seed: int, ours: dict, official: dict, paired: dict) -> dict:
    """One seed's record: both sides, the paired test difference and how far
    the two validation curves lie apart at their common steps."""
    theirs = {p['step']: p['val_auc'] for p in official['val_curve']}
    gaps = [abs(p['val_auc'] - theirs[p['step']]) for p in ours['val_curve']
            if p['step'] in theirs]
    return {'seed': seed, 'ours': ours,
            'official': {k: v for k, v in official.items() if k != 'test_predictions'},
            'paired_ours_minus_official': paired,
            'val_auc_max_abs_diff': max(gaps) if gaps else None}


def settings_of(config, cfg, *, spec: str, task: str, side_name: str) -> dict:
    """What two runs must share for their seeds to be pooled in one result."""
    return {'official_side': side_name, 'encoder': spec, 'task': task,
            'protocol': config.protocol, 'steps': int(config.total_steps),
            'batch': int(config.batch_size), 'eval_every': int(config.eval_every),
            'patience': int(config.patience),
            'max_records_per_fold': config.data.get('max_records_per_fold'),
            'encoder_seed': ENCODER_SEED, 'model': cfg.to_dict()}


def earlier_seeds(path: str, settings: dict) -> list[dict]:
    """The seeds a run of the same settings already finished in `path`."""
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            earlier = json.load(f)
        seeds, theirs = earlier['seeds'], earlier['settings']
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ResultMismatch(f'{path}: not a fine-tuning side-by-side result ({e!r}); move it '
                             'away or use another --workdir') from e
    differ = sorted(k for k in set(theirs) | set(settings) if theirs.get(k) != settings.get(k))
    if differ:
        raise ResultMismatch(f'{path} holds seeds run with other settings ({", ".join(differ)}); '
                             'use another --workdir to keep both')
    return seeds


def run(config, seeds: list[int], source, workdir: str, *, task: str,
        official_dir: str | None, progress: Callable[[str], None] = print) -> dict:
    """Both sides per seed, the paired comparison; writes the JSON (+ plot).

    Args:
      config: the linear protocol's fine-tuning config (data dirs set).
      seeds: the seeds (head init, crops and batch order of both sides).
      source: the resolved `--encoder` (an EncoderSource, see inference/resolve.py).
      workdir: output folder; seeds already in its result are kept.
      task: the PTB-XL task.
      official_dir: the published code's checkout, or None for the statement.
      progress: where progress lines go.

    Returns:
      The result written to `<workdir>/finetune_side_by_side.json`.
    """
    config = config.copy_and_resolve_references()
    config.seed = 0  # seed k runs as seed_index k
    spec, cfg = source.spec, classifier_config(source, config)
    side_name = 'published' if official_dir else 'reference'
    result = {'what': 'finetune', 'encoder_description': source.description,
              'settings': settings_of(config, cfg, spec=spec, task=task, side_name=side_name)}
    path = os.path.join(workdir, RESULT_FILE)
    result['seeds'] = earlier_seeds(path, result['settings'])
    os.makedirs(workdir, exist_ok=True)
    for seed in [s['seed'] for s in result['seeds'] if s['seed'] in seeds]:
        progress(f'seed {seed}: kept from {path}')
    todo = [s for s in dict.fromkeys(seeds) if s not in {e['seed'] for e in result['seeds']}]
    if todo:
        task_data = finetune_loop.load_task_data(config, task, cfg.fs)
        crop = transforms.samples(cfg.fs, config.data.crop_seconds)
        stride = transforms.samples(cfg.fs, config.data.eval_stride_seconds)
        encoder = start_encoder(source, cfg, config, task_data.num_classes, crop)
        torch_encoder = {f'encoder.{k}': v for k, v in encoder_state_dict(encoder, cfg).items()}
    for seed in todo:
        import torch  # pylint: disable=g-import-not-at-top
        from experiments import torch_finetune_reference as ref  # pylint: disable=g-import-not-at-top
        torch.manual_seed(seed)
        side = make_torch_side(official_dir, cfg, config, task_data.num_classes,
                               single_label=task_data.single_label, crop=crop, stride=stride)
        state = {k: v for k, v in side.model.state_dict().items() if not k.startswith('encoder.')}
        if any(k.endswith('bias') for k in state):  # head_to_ours converts weights only
            raise ValueError(f'a head with biases ({sorted(state)}) is not compared here')
        side.model.load_state_dict({**state, **{k: torch.tensor(v)
                                                for k, v in torch_encoder.items()}})
        head = ref.head_to_ours(state, config.head)
        start = finetune_loop.EncoderSource(cfg, encoder, head, lead_stats=source.lead_stats,
                                            description=source.description, spec=spec)
        run_dir = os.path.join(workdir, f'seed{seed}', 'ours')
        t0 = time.time()
        results = finetune_runs.train_and_evaluate(config, run_dir, encoder=start, task=task,
                                                   seed_index=seed, task_data=task_data)
        ours = _ours_summary(results, run_dir, time.time() - t0)
        progress(f'seed {seed} ours: val AUC ' + ', '.join(
            f'{p["val_auc"]:.4f} @{p["step"]}' for p in ours['val_curve']))
        official = fit_torch(side, task_data, config, seed=seed, crop=crop, progress=progress)
        split, boot = task_data.splits['test'], config.bootstrap
        ours_test = compare.load_predictions(run_dir)
        paired = compare.compare(
            ours_test, {'targets': split.targets, 'predictions': official['test_predictions'],
                        'ecg_ids': split.ecg_ids, 'classes': np.asarray(task_data.classes)},
            num_resamples=boot.num_resamples, confidence=boot.confidence, seed=0)
        entry = seed_entry(seed, ours, official, paired)
        entry['test_probability_max_abs_diff'] = float(
            np.max(np.abs(ours_test['predictions'] - official['test_predictions'])))
        result['seeds'] = sorted(result['seeds'] + [entry], key=lambda e: e['seed'])
        with open(path + '.tmp', 'w') as f:
            json.dump(result, f, indent=2)
        os.replace(path + '.tmp', path)
    plot(result, os.path.join(workdir, PLOT_FILE))
    return result


def table(result: dict) -> str:
    """A short text table: per seed, both sides and the paired difference."""
    lines = [f'{"seed":>4}  {"side":<9} {"test macro AUC [95% CI]":<27} {"best val":>8} '
             f'{"minutes":>7}']
    for s in result['seeds']:
        for name in ('ours', 'official'):
            r = s[name]
            lines.append(f'{s["seed"]:>4}  {name:<9} {r["test_macro_auc"]:.4f} '
                         f'[{r["ci"][0]:.4f}, {r["ci"][1]:.4f}]   {r["best_val_auc"]:8.4f} '
                         f'{r["seconds"] / 60:7.2f}')
        d = s['paired_ours_minus_official']
        lines.append(f'{s["seed"]:>4}  ours-off  {d["diff"]:+.4f} [{d["ci_low"]:+.4f}, '
                     f'{d["ci_high"]:+.4f}]  p={d["p_value"]:.3f}; val AUC max |diff| '
                     f'{s["val_auc_max_abs_diff"]:.2e}')
    return '\n'.join(lines)


def plot(result: dict, path: str) -> None:
    """Validation macro AUC of both sides per seed, test AUCs in the legend."""
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    seeds = result['seeds']
    fig, axes = plt.subplots(1, max(1, len(seeds)), figsize=(5 * max(1, len(seeds)), 4),
                             squeeze=False)
    for ax, s in zip(axes[0], seeds):
        for name, style in (('ours', dict(color='tab:blue', marker='o')),
                            ('official', dict(color='tab:orange', marker='x', linestyle='--'))):
            r = s[name]
            ax.plot([p['step'] for p in r['val_curve']], [p['val_auc'] for p in r['val_curve']],
                    label=f'{name} (test {r["test_macro_auc"]:.3f})', **style)
        ax.set_title(f'seed {s["seed"]}')
        ax.set_xlabel('step')
        ax.set_ylabel('validation macro AUC')
        ax.legend(fontsize=8)
    st = result['settings']
    fig.suptitle(f'linear protocol, jepa_ecg vs {st["official_side"]}: {st["encoder"]}, '
                 f'{st["steps"]} steps x {st["batch"]}')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
