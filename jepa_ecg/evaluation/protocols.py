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

Training is data parallel: the step is jitted over the 'data' mesh with the
batch sharded and the state replicated (donated), so it runs unchanged on
CPU, GPU and TPU hosts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from jepa_ecg.evaluation import data as data_lib
from jepa_ecg.evaluation import metrics
from jepa_ecg.models import ModelConfig, model_config
from jepa_ecg.models.classifier import build_classifier, init_classifier
from jepa_ecg.training import optim, parallel

PROTOCOLS = ('linear', 'finetune', 'finetune_after_linear')
RANDOM_PREFIX = 'random:'
BEST_DIR = 'best'           # Orbax checkpoint of the best-validation params
RESULTS_FILE = 'results.json'
PREDICTIONS_FILE = 'predictions.npz'


# ----------------------------------------------------------------------------- encoders
@dataclasses.dataclass
class EncoderSource:
    """Where the classifier's starting weights come from.

    Attributes:
      config: the encoder's ModelConfig.
      encoder_params: pre-trained encoder params, or None (random init).
      head_params: head params of a previous run (finetune_after_linear).
      description: for results.json.
    """
    config: ModelConfig
    encoder_params: Any = None
    head_params: Any = None
    description: str = ''


def find_run_dir(path: str, task: str, seed_index: int) -> str | None:
    """The run folder of a previous fine-tuning output for (task, seed), if `path` is one.

    Accepts a run folder itself (holding `best/`) or a finetune workdir
    (`<workdir>/<task>/seed<k>/`); falls back to seed 0 of the task.
    """
    if os.path.isdir(os.path.join(path, BEST_DIR)):
        return path
    for k in (seed_index, 0):
        run = os.path.join(path, task, f'seed{k}')
        if os.path.isdir(os.path.join(run, BEST_DIR)):
            return run
    return None


def resolve_encoder(spec: str, config: ml_collections.ConfigDict, *, task: str,
                    seed_index: int = 0) -> EncoderSource:
    """Turns `--encoder` into a config and starting weights.

    Args:
      spec: 'random:<variant>' (fresh weights at config.model.fs), a
        pre-training workdir (its target encoder), an exported encoder
        directory, or (for finetune_after_linear) a linear-run output.
      config: the fine-tuning config.
      task: the task being run (selects the previous run's folder).
      seed_index: which seed (selects the previous run's folder).

    Returns:
      EncoderSource.
    """
    if spec.startswith(RANDOM_PREFIX):
        variant = spec[len(RANDOM_PREFIX):]
        cfg = model_config(variant, fs=config.model.fs, patch_size=config.model.get('patch_size'),
                           window_seconds=config.model.window_seconds, dtype=config.dtype)
        return EncoderSource(cfg, description=f'random init ({variant}, {cfg.fs:g} Hz, '
                                              f'patch {cfg.patch_size})')
    run = find_run_dir(spec, task, seed_index)
    if run is not None:
        with open(os.path.join(run, RESULTS_FILE)) as f:
            previous = json.load(f)
        cfg = ModelConfig.from_dict(previous['model'])
        params = restore_best(run)
        if config.protocol == 'finetune_after_linear' and previous.get('protocol') != 'linear':
            logging.warning('%s is a %s run, not a linear one', run, previous.get('protocol'))
        head = params['head'] if config.head == previous.get('head') else None
        return EncoderSource(cfg, params['encoder'], head,
                             description=f'{previous.get("protocol")} run {os.path.abspath(run)}')
    if config.protocol == 'finetune_after_linear':
        raise ValueError(f'finetune_after_linear continues a linear run: --encoder must be '
                         f'a linear-run workdir with {task}/seed<k>/{BEST_DIR}, got {spec}')
    from jepa_ecg.encoder import load_encoder  # pylint: disable=g-import-not-at-top
    enc = load_encoder(spec)
    return EncoderSource(enc.config, enc.params, description=f'encoder {os.path.abspath(spec)}')


def merge_pretrained(fresh: Any, pretrained: Any, what: str) -> Any:
    """Copies pretrained leaves over a freshly initialised tree (strict=False load).

    Leaves missing from `pretrained` keep their fresh values (e.g. a register
    added to an encoder trained without one); unexpected or mis-shaped ones
    raise, since they mean the config does not match the weights.
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


# ----------------------------------------------------------------------------- state
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
    """(trainable, frozen): the frozen encoder stays out of the optimiser entirely."""
    params = dict(params)
    if frozen_encoder:
        return {'head': params['head']}, {'encoder': params['encoder']}
    return params, {}


def make_schedules(config: ml_collections.ConfigDict) -> dict[str, optim.Schedule]:
    """Learning rate (linear warm-up from 1e-6, then cosine) and constant weight decay."""
    wd = float(config.weight_decay)
    return {
        'lr': optim.warmup_cosine(config.total_steps, config.learning_rate,
                                  config.final_learning_rate, config.warmup_steps,
                                  config.warmup_start_learning_rate),
        'wd': lambda step: jnp.full((), wd, jnp.float32),
    }


def loss_fn_for(single_label: bool) -> Callable:
    """Mean BCE-with-logits (multi-label) or softmax cross-entropy (single-label)."""
    if single_label:
        return lambda logits, y: optax.softmax_cross_entropy(logits, y).mean()
    return lambda logits, y: optax.sigmoid_binary_cross_entropy(logits, y).mean()


def probabilities(logits: np.ndarray, single_label: bool) -> np.ndarray:
    """Sigmoid (multi-label) or softmax (single-label) of record logits."""
    logits = np.asarray(logits, np.float64)
    if single_label:
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-logits))


def make_steps(model, tx: optax.GradientTransformation, schedules, *, single_label: bool):
    """Builds the (unjitted) train and eval steps."""
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
        metrics_ = {'loss': loss, 'grad_norm': optax.global_norm(grads),
                    'lr': schedules['lr'](state.step)}
        return state.replace(step=state.step + 1, trainable=trainable,
                             opt_state=opt_state), metrics_

    def eval_step(params, windows):
        return model.apply({'params': params}, windows, deterministic=True)

    return train_step, eval_step


# ----------------------------------------------------------------------------- checkpoints
def _best_manager(run_dir: str, read_only: bool = False):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, best_fn=lambda m: m['val_auc'], best_mode='max',
        create=not read_only, read_only=read_only, enable_async_checkpointing=False,
        cleanup_tmp_directories=not read_only)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(run_dir), BEST_DIR),
                                 options=options)


def restore_best(run_dir: str, target: Any = None) -> dict:
    """Params of a run's best-validation checkpoint (onto `target`'s shardings if given)."""
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    with _best_manager(run_dir, read_only=True) as manager:
        step = manager.best_step()
        if step is None:
            raise FileNotFoundError(f'no best checkpoint in {run_dir}/{BEST_DIR}')
        if target is None:
            return manager.restore(step, args=ocp.args.StandardRestore())
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        return manager.restore(step, args=ocp.args.StandardRestore(abstract))


# ----------------------------------------------------------------------------- evaluation
class Evaluator:
    """Logits per record from all 2.5 s windows, batched with a fixed shape."""

    def __init__(self, eval_step, mesh, *, crop: int, stride: int, records_per_batch: int,
                 windows_per_record: int):
        # Windows per batch must split evenly over the devices (hence also
        # over the processes, which hold equal numbers of devices).
        n_dev = mesh.devices.size
        unit = n_dev // math.gcd(n_dev, windows_per_record)
        self.records_per_batch = max(unit, -(-records_per_batch // unit) * unit)
        self.crop, self.stride, self.mesh = crop, stride, mesh
        self._step = jax.jit(eval_step, in_shardings=(parallel.replicated(mesh),
                                                       parallel.batch_sharded(mesh)),
                             out_shardings=parallel.replicated(mesh))

    def logits(self, params, split: data_lib.Split) -> np.ndarray:
        """(N, C) window-averaged logits of every record of `split`."""
        out = []
        pid, n_proc = jax.process_index(), jax.process_count()
        for windows, real in data_lib.eval_batches(split, records_per_batch=self.records_per_batch,
                                                   crop=self.crop, stride=self.stride):
            if windows.shape[0] % n_proc:
                raise ValueError('eval batch not divisible over processes')
            share = windows.shape[0] // n_proc
            local = windows[pid * share:(pid + 1) * share]
            logits = np.asarray(self._step(params, parallel.host_to_global(
                {'x': local}, self.mesh)['x']))
            out.append(data_lib.average_window_logits(logits, self.records_per_batch)[:real])
        return np.concatenate(out).astype(np.float32)


@dataclasses.dataclass
class FitResult:
    """What the training loop hands back: final state, the best validation and the log."""
    state: ClassifierState
    best_step: int
    best_val_auc: float
    best_val_logits: np.ndarray
    history: list
    steps_run: int
    stopped_early: bool
    train_steps_per_second: float


def fit_with_validation(state: ClassifierState, train_step: Callable, evaluator: Evaluator,
                        dataset: data_lib.FinetuneData, config: ml_collections.ConfigDict, *,
                        mesh, workdir: str, seed: int, dropout_key: jax.Array,
                        tag: str = '') -> FitResult:
    """Trains with validation every `eval_every` steps, best weights to Orbax, early stop.

    The best-validation params are saved (only) when the validation macro
    AUC improves, so `<workdir>/best` always holds the best so far; training
    stops once `patience` steps passed without improvement.

    Args:
      state: replicated initial state.
      train_step: jitted `(state, batch, key) -> (state, metrics)`.
      evaluator: scores the validation split.
      dataset: the task's data.
      config: fine-tuning config (total_steps, batch_size, eval_every,
        patience, log_every).
      mesh: the data-parallel mesh.
      workdir: run folder (the checkpoint goes to `<workdir>/best`).
      seed: data-order seed.
      dropout_key: base key of the dropout masks (folded with the step).
      tag: log line prefix.

    Returns:
      FitResult.
    """
    single_label = dataset.single_label
    crop = evaluator.crop
    manager = _best_manager(workdir)
    for old in manager.all_steps():  # a re-run starts from scratch
        manager.delete(old)
    history: list[dict] = []
    best_auc, best_step, best_logits = -math.inf, 0, None
    total = int(config.total_steps)
    pid, n_proc = jax.process_index(), jax.process_count()
    local = config.batch_size // n_proc
    t_last, step_last, losses = time.time(), 0, []
    train_time = 0.0
    stopped_early = False
    step = 0
    while step < total:
        batch = data_lib.train_batch(dataset.train, batch_size=config.batch_size, crop=crop,
                                     seed=seed, step=step)
        batch = {k: v[pid * local:(pid + 1) * local] for k, v in batch.items()}
        state, m = train_step(state, parallel.host_to_global(batch, mesh), dropout_key)
        step += 1
        losses.append(m['loss'])
        if step % config.log_every == 0 or step == total:
            loss = float(np.mean(jax.device_get(losses)))
            if not np.isfinite(loss):
                raise FloatingPointError(f'{tag} non-finite training loss at step {step}')
            now = time.time()
            rate = (step - step_last) / max(now - t_last, 1e-9)
            train_time += now - t_last
            logging.info('%s step %d/%d loss %.4f lr %.2e grad_norm %.3f %.2f steps/s, '
                         'training ETA %.1f min', tag, step, total, loss, float(m['lr']),
                         float(m['grad_norm']), rate, (total - step) / max(rate, 1e-9) / 60)
            history.append({'step': step, 'loss': loss, 'lr': float(m['lr'])})
            t_last, step_last, losses = time.time(), step, []
        if step % config.eval_every == 0 or step == total:
            t0 = time.time()
            val_logits = evaluator.logits(state.params, dataset.val)
            val_auc = metrics.macro_roc_auc(dataset.val.targets,
                                            probabilities(val_logits, single_label))
            improved = val_auc > best_auc
            if improved:
                best_auc, best_step, best_logits = val_auc, step, val_logits
                manager.save(step, args=_save_args(state.params), metrics={'val_auc': val_auc},
                             force=True)
            history.append({'step': step, 'val_auc': val_auc})
            logging.info('%s step %d val_auc %.4f %s(best %.4f at %d; eval %.1f s)', tag, step,
                         val_auc, '(*) ' if improved else '', best_auc, best_step,
                         time.time() - t0)
            t_last += time.time() - t0  # throughput counts training only
            if step - best_step >= config.patience:
                logging.info('%s stopping early: no better validation AUC for %d steps', tag,
                             step - best_step)
                stopped_early = True
                break
    manager.wait_until_finished()
    manager.close()
    return FitResult(state, best_step, best_auc, best_logits, history, step, stopped_early,
                     step_last / max(train_time, 1e-9))


# ----------------------------------------------------------------------------- one run
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, encoder: str,
                       task: str, seed_index: int = 0,
                       dataset: data_lib.FinetuneData | None = None,
                       source: EncoderSource | None = None) -> dict:
    """Trains and tests one (task, seed) run; writes results, predictions and plots.

    Args:
      config: see experiments/configs/finetune.py.
      workdir: the run folder (results.json, predictions.npz, plots, best/).
      encoder: the `--encoder` spec (see resolve_encoder).
      task: one of data.TASKS.
      seed_index: k-th repetition; the seed is config.seed + k.
      dataset: the task's data when already loaded (shared across seeds).
      source: the encoder source when already resolved.

    Returns:
      The results dict written to results.json.
    """
    t_start = time.time()
    os.makedirs(workdir, exist_ok=True)
    seed = int(config.seed) + int(seed_index)
    source = source or resolve_encoder(encoder, config, task=task, seed_index=seed_index)
    cfg = source.config
    if cfg.num_registers < 1:
        # Both heads read the register: add a fresh one (as the reference does).
        cfg = dataclasses.replace(cfg, num_registers=1)
    cfg = dataclasses.replace(cfg, dtype=config.dtype)
    if dataset is None:
        dataset = load_task_data(config, task, cfg.fs)
    crop = data_lib.window_samples(cfg.fs, config.data.crop_seconds)
    stride = data_lib.window_samples(cfg.fs, config.data.eval_stride_seconds)
    data_lib.check_patch_multiple(crop, cfg.patch_size, 'the crop')
    single_label = dataset.single_label

    model = build_classifier(cfg, dataset.num_classes, head=config.head, dropout=config.dropout,
                             frozen=config.frozen, head_bias=config.head_bias)
    mesh = parallel.make_mesh()
    repl, batch_sh = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    parallel.local_batch_size(config.batch_size, mesh)  # checks divisibility

    key = jax.random.PRNGKey(seed)
    init_key, dropout_key = jax.random.split(key)
    params = jax.jit(lambda k: init_classifier(model, k, crop, cfg.num_leads))(init_key)
    if source.encoder_params is not None:
        params['encoder'] = merge_pretrained(params['encoder'], source.encoder_params, 'encoder')
    if source.head_params is not None:
        params['head'] = merge_pretrained(params['head'], source.head_params, 'head')
    trainable, frozen = split_params(params, config.frozen)
    schedules = make_schedules(config)
    tx = optim.make_optimizer(config, schedules)
    state = ClassifierState(step=jnp.zeros((), jnp.int32), trainable=trainable, frozen=frozen,
                            opt_state=tx.init(trainable))
    state = jax.device_put(state, repl)
    num_trainable = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(trainable))

    train_step, eval_step = make_steps(model, tx, schedules, single_label=single_label)
    train_step = jax.jit(train_step, in_shardings=(repl, batch_sh, repl),
                         out_shardings=(repl, repl), donate_argnums=(0,))
    windows_per_record = data_lib.transforms.num_windows(dataset.test.signals.shape[1], crop,
                                                         stride)
    evaluator = Evaluator(eval_step, mesh, crop=crop, stride=stride,
                          records_per_batch=config.eval_records_per_batch,
                          windows_per_record=windows_per_record)

    logging.info('%s on %s (%s): %d train / %d val / %d test records, %d classes, '
                 '%d trainable params, %d devices', config.protocol, task, source.description,
                 len(dataset.train), len(dataset.val), len(dataset.test), dataset.num_classes,
                 num_trainable, mesh.devices.size)

    fit = fit_with_validation(state, train_step, evaluator, dataset, config, mesh=mesh,
                              workdir=workdir, seed=seed, dropout_key=dropout_key,
                              tag=f'[{config.protocol} {task} seed {seed}]')
    best_params = restore_best(workdir, target=fit.state.params)
    test_logits = evaluator.logits(best_params, dataset.test)
    val_logits = fit.best_val_logits
    val_prob = probabilities(val_logits, single_label)
    test_prob = probabilities(test_logits, single_label)
    boot = dict(num_resamples=config.bootstrap.num_resamples,
                confidence=config.bootstrap.confidence, seed=seed)
    results = {
        'protocol': config.protocol,
        'task': task,
        'seed': seed,
        'encoder': encoder,
        'encoder_description': source.description,
        'head': config.head,
        'model': cfg.to_dict(),
        'config': json.loads(config.to_json_best_effort()),
        'data': dataset.counts(),
        'crop_samples': crop,
        'eval_stride_samples': stride,
        'windows_per_record': int(windows_per_record),
        'trainable_params': num_trainable,
        'steps_run': fit.steps_run,
        'stopped_early': fit.stopped_early,
        'best_step': fit.best_step,
        'best_val_auc': fit.best_val_auc,
        'val': metrics.classification_report(dataset.val.targets, val_prob, dataset.classes,
                                             **boot),
        'test': metrics.classification_report(dataset.test.targets, test_prob, dataset.classes,
                                              **boot),
        'history': fit.history,
        'minutes': (time.time() - t_start) / 60,
        'train_steps_per_second': fit.train_steps_per_second,
    }
    if jax.process_index() == 0:
        np.savez(os.path.join(workdir, PREDICTIONS_FILE), classes=np.asarray(dataset.classes),
                 val_ecg_ids=dataset.val.ecg_ids, val_targets=dataset.val.targets,
                 val_logits=val_logits, val_predictions=val_prob,
                 test_ecg_ids=dataset.test.ecg_ids, test_targets=dataset.test.targets,
                 test_logits=test_logits, test_predictions=test_prob)
        with open(os.path.join(workdir, RESULTS_FILE), 'w') as f:
            json.dump(results, f, indent=2)
        if config.plots:
            from jepa_ecg.evaluation import plots  # pylint: disable=g-import-not-at-top
            plots.plot_run(workdir, results, dataset.test.targets, test_prob)
    t = results['test']
    logging.info('[%s %s seed %d] best val AUC %.4f at step %d; test macro AUC %.4f '
                 '(%.0f%% CI %.4f-%.4f), AUPRC %.4f; %.1f min', config.protocol, task, seed,
                 fit.best_val_auc, fit.best_step, t['macro_auc'], 100 * t['confidence'],
                 t['macro_auc_ci'][0], t['macro_auc_ci'][1], t['macro_auprc'],
                 results['minutes'])
    return results


def _save_args(params):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    return ocp.args.StandardSave(params)


def load_task_data(config: ml_collections.ConfigDict, task: str,
                   fs: float) -> data_lib.FinetuneData:
    """The task's PTB-XL data at `fs` (only the first records of each fold in smoke runs)."""
    d = config.data
    return data_lib.load_ptbxl(task, fs=fs, data_dir=d.get('data_dir'),
                               builder_name=d.get('builder'), clip=d.clip,
                               storage_dtype=d.storage_dtype,
                               max_records_per_fold=d.get('max_records_per_fold'))


# ----------------------------------------------------------------------------- many runs
def run_all(config: ml_collections.ConfigDict, workdir: str, *, encoder: str,
            tasks: list[str], num_seeds: int = 1) -> dict:
    """Runs every task x seed; writes `<workdir>/<task>/seed<k>/` and a summary.

    Args:
      config: fine-tuning config.
      workdir: output root.
      encoder: `--encoder` spec.
      tasks: tasks to run.
      num_seeds: repetitions per task (seeds config.seed .. + num_seeds - 1).

    Returns:
      The summary written to `<workdir>/results.json`: per task the per-seed
      test metrics and their mean and std.
    """
    os.makedirs(workdir, exist_ok=True)
    summary = {'protocol': config.protocol, 'encoder': encoder, 'num_seeds': num_seeds,
               'config': json.loads(config.to_json_best_effort()), 'tasks': {}}
    for task in tasks:
        first = resolve_encoder(encoder, config, task=task, seed_index=0)
        dataset = load_task_data(config, task, first.config.fs)
        reports = []
        for k in range(num_seeds):
            source = first if k == 0 else resolve_encoder(encoder, config, task=task,
                                                          seed_index=k)
            reports.append(train_and_evaluate(
                config, os.path.join(workdir, task, f'seed{k}'), encoder=encoder, task=task,
                seed_index=k, dataset=dataset, source=source))
        summary['tasks'][task] = {
            'data': reports[0]['data'],
            'runs': [{'seed': r['seed'], 'best_step': r['best_step'],
                      'best_val_auc': r['best_val_auc'], 'test_macro_auc': r['test']['macro_auc'],
                      'test_macro_auc_ci': r['test']['macro_auc_ci'],
                      'test_macro_auprc': r['test']['macro_auprc'], 'minutes': r['minutes']}
                     for r in reports],
            **metrics.summarize_seeds(reports),
        }
        s = summary['tasks'][task]
        logging.info('%s %s over %d seeds: test macro AUC %.4f +- %.4f', config.protocol, task,
                     num_seeds, s['test_macro_auc']['mean'], s['test_macro_auc']['std'])
        if jax.process_index() == 0:
            with open(os.path.join(workdir, RESULTS_FILE), 'w') as f:
                json.dump(summary, f, indent=2)
    return summary
