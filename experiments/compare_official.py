r"""Side by side with the official PyTorch ECG-JEPA code (kweimann/ECG-JEPA).

  python -m experiments.compare_official --what=train_step --variant=XS --batch=32 \
      --official_dir=/path/to/ECG-JEPA          # or set JEPA_ECG_OFFICIAL_DIR
  python -m experiments.compare_official --what=pretrain --budget=cpu --seeds=0,1 \
      --linear_steps=1000 --official_dir=/path/to/ECG-JEPA --workdir=runs/side_by_side
  python -m experiments.compare_official --what=finetune --encoder=random:XS --seeds=0,1 \
      --linear_steps=400 --official_dir=/path/to/ECG-JEPA --workdir=runs/finetune_side_by_side

`--official_dir` (default $JEPA_ECG_OFFICIAL_DIR) is a checkout of the
published code; torch comes with `pip install -e '.[torch]'`.

--what=train_step: times one pre-training step of both implementations in
ONE process, on the same signals and the same masks (the keep count drawn
per batch as in the paper, each side given the identical block masks), in
`--reps` interleaved repetitions of `--steps_per_rep` steps each (the side
that goes first alternates). On a shared machine only the ratio of
back-to-back measurements means something: `ratio` = ours / official
records per second, the median of the per-repetition ratios. The official
step is what its pretrain.py runs per step (schedules, EMA update, target,
context encoder, predictor, L1, backward, non-fused AdamW, zero_grad); ours
is the jitted, donated train step of experiments/benchmark.py. With `--dtype=bfloat16` the official side runs
under `torch.autocast('cpu', torch.bfloat16)`. `--kernels` picks our model's
kernels (ModelConfig.kernels: auto, stock or cpu).

Prints one line per repetition and a summary JSON line (also to `--out`).

--what=pretrain: per seed, our input pipeline (the PTB-XL train folds of our
TFDS build at 100 Hz, ViT-XS, 800 steps x 64 with `--budget=cpu`) feeds the
same batches and masks to our train step and to the official one, each side
initialised from the seed by its own initialisers; both trajectories (loss,
target std, effective rank, lr, weight decay, EMA momentum, gradient norm)
are logged every `--log_every` steps; then the linear protocol scores both
target encoders (the official one through our torch import) and the paired
bootstrap compares them. Writes side_by_side.json and side_by_side.png in
`--workdir` (experiments/side_by_side.py); both sides are saved at every
logged step: the same command goes on from there and keeps finished seeds.
`--official_impl=reference` runs experiments/torch_reference.py (tests).

--what=finetune: per seed, the linear protocol (config `linear,100hz` at the
`--budget`'s CPU scale: 400 steps x 64, validation every 100) run by our
fine-tuning code and by the published evaluation from the same `--encoder`
(as experiments.finetune takes it), the same head initialisation, the same
batches of our input pipeline and the same validation points; validation
AUC curves, test macro AUC with bootstrap CIs per side and the paired
difference. Writes finetune_side_by_side.json and .png in `--workdir`
(experiments/compare_finetune.py); finished seeds are kept.
`--official_impl=reference` runs the statement of the published evaluation
(experiments/torch_finetune_reference.py) instead of its modules.

Torch's OpenMP threads spin-wait, so a busy co-tenant slows the official
side several-fold: for a per-core figure pin both to one core
(`taskset -c 0 ... --official_threads=1`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import statistics
import time

from absl import app, flags

from experiments import official_code

FLAGS = flags.FLAGS
flags.DEFINE_multi_enum('what', ['train_step'], ['train_step', 'pretrain', 'finetune'],
                        'What to compare (repeatable).')
flags.DEFINE_string('official_dir', os.environ.get('JEPA_ECG_OFFICIAL_DIR'),
                    'Checkout of github.com/kweimann/ECG-JEPA (default: $JEPA_ECG_OFFICIAL_DIR).')
flags.DEFINE_enum('variant', 'XS', ['XS', 'S', 'B', 'tiny'], 'Model variant (tiny: tests).')
flags.DEFINE_integer('batch', 32, 'Batch size (records per step).')
flags.DEFINE_float('fs', 500.0, 'Sampling rate (Hz); the patch is 50 ms, the window 10 s.')
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype of both sides.')
flags.DEFINE_enum('kernels', 'auto', ['auto', 'stock', 'cpu'], 'train_step: our model\'s '
                  'kernels (ModelConfig.kernels; auto: the XLA:CPU ones on CPU).')
flags.DEFINE_integer('reps', 5, 'Interleaved repetitions.')
flags.DEFINE_integer('steps_per_rep', 3, 'Steps per side and repetition.')
flags.DEFINE_integer('warmup', 2, 'Untimed steps per side (after compilation).')
flags.DEFINE_bool('official_sdpa', True, 'Official attention through '
                  'F.scaled_dot_product_attention (its default on GPU; its pretrain.py turns '
                  'it off on CPU).')
flags.DEFINE_integer('official_threads', None, 'torch.set_num_threads for the official side '
                     '(default: torch\'s own, one per core). With `taskset -c 0` and 1 this gives '
                     'a per-core ratio that co-tenants on a shared machine barely move.')
flags.DEFINE_integer('seed', 0, 'Seed of signals and masks.')
flags.DEFINE_string('out', None, 'Also append the summary JSON line to this file.')
flags.DEFINE_enum('official_impl', 'published', ['published', 'reference'],
                  'The PyTorch side is the published code (--official_dir) or '
                  'experiments/torch_reference.py (its statement, checked against it by '
                  'tests/test_official_step.py; finetune: experiments/'
                  'torch_finetune_reference.py, tests/test_finetune_official.py).')
flags.DEFINE_string('budget', 'cpu', 'pretrain, finetune: learning-curve config tokens '
                    '(experiments/configs/learning_curve.py), e.g. cpu (ViT-XS, 100 Hz, '
                    '800 steps x 64, warm-up 80, linear protocol shortened), cpu,steps=200, smoke.')
flags.DEFINE_list('seeds', ['0', '1'], 'pretrain, finetune: seeds, each run by both sides.')
flags.DEFINE_integer('linear_steps', None, 'pretrain, finetune: linear-protocol steps '
                     "(default: the budget's).")
flags.DEFINE_integer('max_records_per_fold', None, 'pretrain, finetune: records per fold in '
                     'the linear protocol (default: all).')
flags.DEFINE_bool('same_init', False, 'pretrain: start ours from the PyTorch side\'s initial '
                  'weights (converted) instead of our initialiser.')
flags.DEFINE_integer('log_every', 100, 'pretrain: record both trajectories every N steps.')
flags.DEFINE_string('workdir', None, 'pretrain, finetune: output folder (side_by_side.json or '
                    'finetune_side_by_side.json, .png, runs).')
flags.DEFINE_integer('stop_at_step', None, 'pretrain: stop the first unfinished seed after '
                     'this logged step (the same command goes on from there).')
flags.DEFINE_string('data_dir', None, 'pretrain, finetune: TFDS data_dir (default: TFDS\'s).')
flags.DEFINE_string('manual_dir', None, 'pretrain, finetune: raw PTB-XL folder, to build it '
                    'on first use.')
flags.DEFINE_string('encoder', 'random:XS', 'finetune: the encoder both sides start from, as '
                    'experiments.finetune takes it (pre-training workdir, encoder folder, '
                    'random:<variant> drawn from a fixed key).')
flags.DEFINE_string('task', 'superdiagnostic', 'finetune: PTB-XL task.')



def _official_dir() -> str:
    path = FLAGS.official_dir
    if not path or not os.path.isfile(os.path.join(path, 'models', 'JEPA.py')):
        raise app.UsageError(
            f'official ECG-JEPA code not found (--official_dir={path!r}): clone '
            'https://github.com/kweimann/ECG-JEPA outside this repository and pass '
            '--official_dir=<checkout> or set JEPA_ECG_OFFICIAL_DIR.')
    return os.path.abspath(path)


def make_batches(n: int, *, batch: int, num_patches: int, samples: int, leads: int,
                 keep_ratio_range, min_block_size: int, seed: int) -> list[dict]:
    """`n` batches shared by both sides: (B, T, leads) random signals and
    our block masks (bool (B, N), True = predicted)."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jepa_ecg.data import masking  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = masking.sample_num_keep(rng, num_patches, keep_ratio_range)
        masked = masking.sample_block_masks(rng, batch, num_patches, k, min_block_size)
        out.append({'signal': rng.standard_normal((batch, samples, leads)).astype(np.float32),
                    'masked': masked})
    return out


class Ours:
    """The jitted, donated jepa_ecg train step (as experiments/benchmark.py times it)."""

    def __init__(self, variant: str, fs: float, dtype: str, batches: list[dict], seed: int,
                 kernels: str = 'auto'):
        import jax  # pylint: disable=g-import-not-at-top
        from jepa_ecg import sharding  # pylint: disable=g-import-not-at-top
        from jepa_ecg.data import masking  # pylint: disable=g-import-not-at-top
        from jepa_ecg.models.config import model_config_from  # pylint: disable=g-import-not-at-top
        from jepa_ecg.training import jepa_step, optim  # pylint: disable=g-import-not-at-top
        config = _pretrain_config(variant, fs, batches[0]['signal'].shape[0], dtype, kernels)
        self.config, self.cfg = config, model_config_from(config)
        schedules = optim.make_schedules(config)
        tx = optim.make_optimizer(config, schedules)
        mesh = sharding.make_mesh()
        repl = sharding.replicated(mesh)
        step = jepa_step.make_train_step(self.cfg, tx, schedules, dtype=dtype,
                                         rank_every=config.rank_every)
        jitted = jax.jit(step, in_shardings=(repl, sharding.batch_sharded(mesh)),
                         out_shardings=(repl, repl), donate_argnums=(0,))
        self.batches = []
        for b in batches:
            keep_idx, keep_valid = masking.keep_indices(b['masked'], config.data.keep_bucket)
            self.batches.append(sharding.host_to_global(
                {'signal': b['signal'], 'keep_idx': keep_idx, 'keep_valid': keep_valid,
                 'predict_mask': b['masked']}, mesh))
        self.state = jax.jit(lambda k: jepa_step.init_train_state(k, self.cfg, tx),
                             out_shardings=repl)(jax.random.PRNGKey(seed))
        self.compiled, t0 = {}, time.perf_counter()
        for b in self.batches:
            k = b['keep_idx'].shape[1]
            if k not in self.compiled:
                self.compiled[k] = jitted.lower(self.state, b).compile()
        self.compile_s = time.perf_counter() - t0
        self._block = jax.block_until_ready

    def run(self, batches: list) -> float:
        for b in batches:
            self.state, metrics = self.compiled[b['keep_idx'].shape[1]](self.state, b)
        self._block(metrics)
        return float(metrics['loss'])


def _pretrain_config(variant: str, fs: float, batch: int, dtype: str, kernels: str = 'auto'):
    from experiments.configs.pretrain import get_config  # pylint: disable=g-import-not-at-top
    config = get_config(f'vit_{variant.lower()},synthetic')
    config.unlock()
    config.model.fs = fs
    config.model.kernels = kernels
    config.dtype = dtype
    config.global_batch_size = batch
    return config


class Official:
    """The official step, timed (see the module docstring)."""

    def __init__(self, path: str, variant: str, fs: float, dtype: str, batches: list[dict],
                 sdpa: bool, seed: int):
        import torch  # pylint: disable=g-import-not-at-top
        from experiments import torch_reference  # pylint: disable=g-import-not-at-top
        from jepa_ecg.models.config import model_config_from  # pylint: disable=g-import-not-at-top
        if FLAGS.official_threads:
            torch.set_num_threads(FLAGS.official_threads)
        torch.manual_seed(seed)
        config = _pretrain_config(variant, fs, batches[0]['signal'].shape[0], dtype)
        cfg = model_config_from(config)
        if path is None:  # --official_impl=reference
            from experiments import side_by_side  # pylint: disable=g-import-not-at-top
            self.code = side_by_side.ReferenceSide(cfg, config)
        else:
            self.code = official_code.OfficialCode(path, cfg, config, sdpa=sdpa)
        self.autocast = ((lambda: torch.autocast('cpu', dtype=torch.bfloat16))
                         if dtype == 'bfloat16' else contextlib.nullcontext)
        self.batches = [torch_reference.micro_batch(b['signal'], b['masked']) for b in batches]
        self.num_threads = torch.get_num_threads()

    def run(self, batches: list) -> float:
        for b in batches:
            loss = self.code.step([b], self.autocast)['loss']
        return loss


def _timed(side, batches) -> tuple[float, float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    loss = side.run(batches)
    return time.perf_counter() - t0, time.process_time() - c0, loss


def _require_torch() -> None:
    """A usage error naming the install step when torch (the official side) is absent."""
    if importlib.util.find_spec('torch') is None:
        raise app.UsageError("torch is missing: pip install -e '.[torch]'")


def compare_train_step() -> dict:
    _require_torch()
    import torch  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    path = _official_dir() if FLAGS.official_impl == 'published' else None
    batch, spr = FLAGS.batch, FLAGS.steps_per_rep
    n_batches = FLAGS.warmup + FLAGS.reps * spr
    from jepa_ecg.models.config import (model_config,  # pylint: disable=g-import-not-at-top
                                        resolve_kernels)
    cfg = model_config(FLAGS.variant, fs=FLAGS.fs)
    shared = make_batches(n_batches, batch=batch, num_patches=cfg.num_patches,
                          samples=cfg.window_samples, leads=cfg.num_leads,
                          keep_ratio_range=(0.15, 0.25), min_block_size=10, seed=FLAGS.seed)
    ours = Ours(FLAGS.variant, FLAGS.fs, FLAGS.dtype, shared, FLAGS.seed, FLAGS.kernels)
    official = Official(path, FLAGS.variant, FLAGS.fs, FLAGS.dtype, shared, FLAGS.official_sdpa,
                        FLAGS.seed)
    sides = {'ours': (ours, ours.batches), 'official': (official, official.batches)}
    for side, bs in sides.values():
        side.run(bs[:FLAGS.warmup])
    rows = []
    load_before = os.getloadavg()[0]
    for r in range(FLAGS.reps):
        lo = FLAGS.warmup + r * spr
        order = ['ours', 'official'] if r % 2 == 0 else ['official', 'ours']
        row = {}
        for name in order:
            side, bs = sides[name]
            wall, cpu, loss = _timed(side, bs[lo:lo + spr])
            row[name] = {'records_per_s': spr * batch / wall, 'cpu_s_per_step': cpu / spr,
                         'loss': loss}
        row['ratio'] = row['ours']['records_per_s'] / row['official']['records_per_s']
        rows.append(row)
        print(f"rep {r}: ours {row['ours']['records_per_s']:6.2f} rec/s "
              f"({row['ours']['cpu_s_per_step']:.2f} CPU-s/step), official "
              f"{row['official']['records_per_s']:6.2f} rec/s "
              f"({row['official']['cpu_s_per_step']:.2f} CPU-s/step), ratio {row['ratio']:.3f}",
              flush=True)
    med = lambda name, key: statistics.median(r[name][key] for r in rows)
    return {
        'what': 'train_step', 'variant': FLAGS.variant, 'batch': batch, 'fs': FLAGS.fs,
        'dtype': FLAGS.dtype, 'kernels': FLAGS.kernels,
        'kernels_resolved': resolve_kernels(FLAGS.kernels),
        'ratio': statistics.median(r['ratio'] for r in rows),
        'ratio_reps': [r['ratio'] for r in rows],
        'ours_records_per_s': med('ours', 'records_per_s'),
        'official_records_per_s': med('official', 'records_per_s'),
        'ours_cpu_s_per_step': med('ours', 'cpu_s_per_step'),
        'official_cpu_s_per_step': med('official', 'cpu_s_per_step'),
        'ours_compile_s': ours.compile_s, 'official_impl': FLAGS.official_impl,
        'official_sdpa': FLAGS.official_sdpa,
        'reps': FLAGS.reps, 'steps_per_rep': spr, 'warmup': FLAGS.warmup,
        'jax': jax.__version__, 'torch': torch.__version__,
        'torch_threads': official.num_threads, 'cpu_count': os.cpu_count(),
        'load_avg_1m': [load_before, os.getloadavg()[0]],
        'time': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
    }


def _linear_flags(linear) -> None:
    """The data and linear-protocol flags, onto a linear config."""
    linear.data.data_dir, linear.data.manual_dir = FLAGS.data_dir, FLAGS.manual_dir
    if FLAGS.linear_steps:
        linear.total_steps = FLAGS.linear_steps
        linear.eval_every = max(1, FLAGS.linear_steps // 4)
        linear.patience = max(linear.patience, FLAGS.linear_steps)
    if FLAGS.max_records_per_fold:
        linear.data.max_records_per_fold = FLAGS.max_records_per_fold


def compare_pretrain() -> dict:
    """Both sides pre-trained on the same batches per seed, then probed (experiments/side_by_side.py)."""
    _require_torch()
    from experiments import build_data, side_by_side  # pylint: disable=g-import-not-at-top
    from experiments.configs import learning_curve  # pylint: disable=g-import-not-at-top
    if not FLAGS.workdir:
        raise app.UsageError('--what=pretrain needs --workdir')
    config = learning_curve.get_config(FLAGS.budget)
    config.pretrain.data.data_dir = FLAGS.data_dir
    config.pretrain.data.manual_dir = FLAGS.manual_dir
    _linear_flags(config.linear)
    build_data.for_pretraining(config.pretrain)
    build_data.for_ptbxl(config.linear.data, config.linear.model.fs)
    if config.pretrain.grad_accum_steps != 1:
        raise app.UsageError('--what=pretrain feeds one micro-batch per step (grad_accum_steps=1)')
    if FLAGS.official_impl == 'published':
        path = _official_dir()
        make_side = lambda cfg, c, start_step=0: official_code.OfficialCode(path, cfg, c, start_step=start_step)
    else:
        make_side = side_by_side.ReferenceSide
    t0 = time.time()
    try:
        result = side_by_side.run(config, [int(s) for s in FLAGS.seeds], make_side,
                                  FLAGS.workdir, log_every=FLAGS.log_every,
                                  side_name=FLAGS.official_impl, same_init=FLAGS.same_init,
                                  stop_at=FLAGS.stop_at_step)
    except side_by_side.WorkdirMismatch as e:
        raise app.UsageError(str(e)) from e
    head = {'what': 'pretrain', 'workdir': FLAGS.workdir, 'minutes': (time.time() - t0) / 60}
    if 'stopped' in result:
        return {**head, 'stopped': result['stopped']}
    print_pretrain(result)
    return {**head, 'official_side': FLAGS.official_impl, 'seeds': FLAGS.seeds,
            'probe': {s['seed']: {k: s['probe'][k]['test_macro_auc'] for k in ('ours', 'official')}
                      for s in result['seeds']}}


def print_pretrain(result: dict) -> None:
    """Loss table (window means) and probe AUCs, per seed."""
    seeds = result['seeds']
    print('step  ' + '  '.join(f'ours s{s["seed"]}  official s{s["seed"]}' for s in seeds))
    for i, row in enumerate(seeds[0]['rows']):
        print(f'{row["step"]:>5d} ' + '  '.join(
            f'{s["rows"][i]["ours"]["loss_mean"]:9.4f}  {s["rows"][i]["official"]["loss_mean"]:12.4f}'
            for s in seeds))
    for s in seeds:
        p, d = s['probe'], s['probe']['paired_ours_minus_official']
        print(f'seed {s["seed"]}: linear test macro AUC ours {p["ours"]["test_macro_auc"]:.4f} '
              f'[{p["ours"]["ci"][0]:.4f}, {p["ours"]["ci"][1]:.4f}], official '
              f'{p["official"]["test_macro_auc"]:.4f} [{p["official"]["ci"][0]:.4f}, '
              f'{p["official"]["ci"][1]:.4f}], paired {d["diff"]:+.4f} '
              f'[{d["ci_low"]:+.4f}, {d["ci_high"]:+.4f}]')


def compare_finetune() -> dict:
    """The linear protocol by both sides per seed (experiments/compare_finetune.py)."""
    _require_torch()
    if not FLAGS.workdir:
        raise app.UsageError('--what=finetune needs --workdir')
    path = _official_dir() if FLAGS.official_impl == 'published' else None
    from experiments import (build_data, compare_finetune,  # pylint: disable=g-import-not-at-top
                             console)
    from experiments.configs import learning_curve  # pylint: disable=g-import-not-at-top
    from jepa_ecg.inference import resolve  # pylint: disable=g-import-not-at-top
    config = learning_curve.get_config(FLAGS.budget).linear
    _linear_flags(config)
    try:
        source = resolve.make_resolver(FLAGS.encoder, config)(FLAGS.task, 0)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    t0 = time.time()
    with console.run_errors(None):
        build_data.for_ptbxl(config.data, source.config.fs)
        try:
            result = compare_finetune.run(config, [int(s) for s in FLAGS.seeds], source,
                                          FLAGS.workdir, task=FLAGS.task, official_dir=path)
        except compare_finetune.ResultMismatch as e:
            raise app.UsageError(str(e)) from e
    print(compare_finetune.table(result))
    return {'what': 'finetune', 'workdir': FLAGS.workdir, 'minutes': (time.time() - t0) / 60,
            'official_side': result['settings']['official_side'], 'encoder': FLAGS.encoder,
            'test_macro_auc': {s['seed']: {k: s[k]['test_macro_auc'] for k in ('ours', 'official')}
                               for s in result['seeds']}}


COMPARISONS = {'train_step': compare_train_step, 'pretrain': compare_pretrain,
               'finetune': compare_finetune}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError('Too many command-line arguments.')
    from experiments import console  # pylint: disable=g-import-not-at-top
    console.quiet_library_logs()
    for what in dict.fromkeys(FLAGS.what):
        record = COMPARISONS[what]()
        line = json.dumps(record)
        print(line, flush=True)
        if FLAGS.out:
            with open(FLAGS.out, 'a') as f:
                f.write(line + '\n')


if __name__ == '__main__':
    app.run(main)
