r"""The one command to run on a new GPU/TPU host: what this machine gives us.

  python -m experiments.accelerator_check                      # full table
  python -m experiments.accelerator_check --peak_tflops=312    # a device not in the table
  python -m experiments.accelerator_check --smoke              # CPU, seconds, tiny model

Prints, as a table (and the rows as JSON lines with --out):
  * the devices JAX sees;
  * per ViT variant (XS, S, B at 500 Hz), dtype (float32, bfloat16) and
    per-device batch (64, 128): compile seconds, median step seconds,
    records/s, model FLOP utilisation against the device's dense peak
    (jepa_ecg/training/flops.py, or --peak_tflops) and the peak device
    memory (device.memory_stats(), where the backend keeps it);
  * the input pipeline's records/s per Grain worker count (offline
    synthetic source) against what the fastest step consumes;
  * when torch is installed, the one-step equivalence with the PyTorch
    statement of the published step (experiments/torch_reference.py) on
    this backend: loss and online weights after one AdamW step.
"""

from __future__ import annotations

import copy
import json
import shutil
import statistics
import tempfile
import time
from typing import Any, Sequence

import jax
import numpy as np

from experiments.configs.pretrain import get_config
from jepa_ecg import sharding
from jepa_ecg.data import masking
from jepa_ecg.models.config import model_config_from, resolve_kernels
from jepa_ecg.training import flops, optim
from jepa_ecg.training import jepa_step as jepa

KEEP_RATIO = 0.2  # context patches of the step (the paper's masks keep 15-25 %)


def device_rows() -> list[dict]:
    """One row per device JAX sees."""
    return [{'id': d.id, 'platform': d.platform, 'kind': d.device_kind,
             'process': d.process_index} for d in jax.devices()]


def _peak_memory_gb(device) -> float | None:
    try:
        stats = device.memory_stats() or {}
    except Exception:  # pylint: disable=broad-except  # backends without the call
        return None
    peak = stats.get('peak_bytes_in_use')
    return None if peak is None else peak / 2**30


def _pretrain_config(variant: str, dtype: str, batch: int, *, fs: float, kernels: str,
                     remat: bool):
    config = get_config(f'vit_{variant.lower()},synthetic')
    config.unlock()
    config.model.fs = fs
    config.model.kernels, config.model.remat = kernels, remat
    config.dtype, config.global_batch_size, config.grad_accum_steps = dtype, batch, 1
    return config


def step_row(variant: str, dtype: str, per_device_batch: int, *, fs: float = 500.0,
             steps: int = 5, warmup: int = 2, peak_tflops: float | None = None,
             kernels: str = 'auto', remat: bool = False) -> dict:
    """Compiles and times the data-parallel pre-training step on all devices.

    Returns:
      dict with the settings, `compile_s`, `step_s` (median), `records_per_s`,
      `mfu` (None without a known peak), `peak_memory_gb` (None where the
      backend does not report it) and the step's `loss`.
    """
    ndev = jax.device_count()
    batch = per_device_batch * ndev
    config = _pretrain_config(variant, dtype, batch, fs=fs, kernels=kernels, remat=remat)
    cfg = model_config_from(config)
    schedules = optim.make_schedules(config)
    tx = optim.make_optimizer(config, schedules)
    mesh = sharding.make_mesh()
    repl, bsh = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    step_fn = jepa.make_train_step(cfg, tx, schedules, dtype=dtype, rank_every=0)
    jitted = jax.jit(step_fn, in_shardings=(repl, bsh), out_shardings=(repl, repl),
                     donate_argnums=(0,))
    rng = np.random.default_rng(0)
    n = cfg.num_patches
    k = max(1, round(KEEP_RATIO * n))
    signal = rng.standard_normal((batch, cfg.window_samples, cfg.num_leads)).astype(np.float32)
    batches = [sharding.host_to_global(
        {'signal': signal, **masking.sample_batch_masks(
            rng, batch, n, bucket=config.data.keep_bucket, num_keep=k)}, mesh)
        for _ in range(2)]
    state = jax.jit(lambda key: jepa.init_train_state(key, cfg, tx),
                    out_shardings=repl)(jax.random.PRNGKey(0))
    t0 = time.perf_counter()
    compiled = jitted.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batches[i % 2])
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times[warmup:])
    model_flops = flops.train_step_flops(cfg, batch, k)['total']
    peak = (peak_tflops * 1e12 if peak_tflops
            else flops.peak_flops(jax.devices()[0].device_kind, dtype))
    return {'what': 'step', 'variant': variant, 'fs': fs, 'dtype': dtype,
            'per_device_batch': per_device_batch, 'batch': batch,
            'kernels': resolve_kernels(kernels), 'remat': remat, 'compile_s': compile_s,
            'step_s': step_s, 'records_per_s': batch / step_s,
            'mfu': model_flops / step_s / (peak * ndev) if peak else None,
            'peak_memory_gb': _peak_memory_gb(jax.devices()[0]),
            'loss': float(metrics['loss'])}


def pipeline_rows(batch: int, worker_counts: Sequence[int], *, smoke: bool,
                  steps: int = 10) -> list[dict]:
    """Records/s of the pre-training input pipeline over the offline synthetic
    source (built in a temporary folder), one row per Grain worker count."""
    from experiments import pipeline_bench  # pylint: disable=g-import-not-at-top
    from jepa_ecg.data import source_stats as stats  # pylint: disable=g-import-not-at-top
    from jepa_ecg.data.sources import Source  # pylint: disable=g-import-not-at-top
    from tfds_builders import build  # pylint: disable=g-import-not-at-top
    sharding.hide_accelerators_from_tensorflow()
    path = tempfile.mkdtemp(prefix='jepa_accel_tfds_')
    try:
        src = Source('accel_synthetic', f'synthetic_ecg/{"tiny" if smoke else "small"}', 500.0)
        build.build_dataset(src.tfds_name, path)
        stats.save_lead_stats(stats.compute_lead_stats(src, path, max_records=32), src, path)
        fs = 100.0 if smoke else 500.0
        rows = []
        for workers in worker_counts:
            r = pipeline_bench.measure({src.name: 1.0}, data_dir=path, global_batch_size=batch,
                                       fs=fs, patch_size=int(round(fs * 0.05)),
                                       num_steps=steps, warmup_steps=1,
                                       worker_count=workers, sources={src.name: src})
            rows.append({'what': 'pipeline', 'workers': workers, 'batch': batch,
                         'records_per_s': r['records_per_s']})
        return rows
    finally:
        shutil.rmtree(path, ignore_errors=True)


def equivalence_row(kernels: str = 'auto') -> dict:
    """One pre-training step of ours and of the PyTorch statement of the published
    step (torch on CPU) from the same weights, signals and masks (tiny ViT, 100 Hz).

    Returns:
      dict with both losses, their relative difference and the largest per-leaf
      relative error of the online weights after the step; `ok` when within
      the tolerances of tests/test_official_step.py.
    """
    import torch  # pylint: disable=g-import-not-at-top
    from experiments import torch_reference as ref  # pylint: disable=g-import-not-at-top
    from jepa_ecg.inference import torch_import  # pylint: disable=g-import-not-at-top
    config = get_config('vit_tiny,smoke,100hz')
    config.unlock()
    config.model.kernels = kernels
    config.total_steps, config.warmup_steps, config.global_batch_size = 20, 0, 4
    config.grad_accum_steps = 1
    cfg = model_config_from(config)
    torch.manual_seed(0)
    model = ref.Jepa(cfg)
    arrays = lambda m: {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}
    with torch.no_grad():  # a target apart from the online encoder, as mid-training
        for p in model.target_encoder.parameters():
            p.add_(0.02 * torch.randn_like(p))
    opt = ref.make_optimizer(model, b1=config.b1, b2=config.b2, eps=config.eps)
    sched = ref.Schedules.from_config(config)
    schedules = optim.make_schedules(config)
    tx = optim.make_optimizer(config, schedules)
    params = torch_import.convert_context_state(arrays(model), cfg)
    moved = copy.deepcopy(model)
    moved.move_target(sched.momentum(0))  # our state holds the target after its EMA move
    state = jepa.TrainState(step=jax.numpy.asarray(0, jax.numpy.int32), params=params,
                            target_params=torch_import.convert_target_state(arrays(moved), cfg),
                            opt_state=tx.init(params))
    rng = np.random.default_rng(0)
    k = masking.sample_num_keep(rng, cfg.num_patches, (0.15, 0.25))
    signal = rng.standard_normal((4, cfg.window_samples, cfg.num_leads)).astype(np.float32)
    masked = masking.sample_block_masks(rng, 4, cfg.num_patches, k, 10)
    keep_idx, keep_valid = masking.keep_indices(masked, config.data.keep_bucket)
    step = jax.jit(jepa.make_train_step(cfg, tx, schedules, rank_every=0,
                                        ema_per_micro_batch=config.ema_per_micro_batch))
    with jax.default_matmul_precision('float32'):  # no TF32 on GPUs for this check
        state, metrics = step(state, {'signal': signal, 'keep_idx': keep_idx,
                                      'keep_valid': keep_valid, 'predict_mask': masked})
    loss_ref, _, _ = ref.train_step(model, opt, sched, 0, [ref.micro_batch(signal, masked)], 0)
    theirs = torch_import.convert_context_state(arrays(model), cfg)
    err = max(float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)) /
                    max(np.linalg.norm(np.asarray(b, np.float64)), 1e-12))
              for a, b in zip(jax.tree_util.tree_leaves(state.params),
                              jax.tree_util.tree_leaves(theirs), strict=True))
    loss = float(metrics['loss'])
    loss_err = abs(loss - loss_ref) / abs(loss_ref)
    return {'what': 'equivalence', 'kernels': resolve_kernels(kernels), 'loss': loss,
            'loss_torch': float(loss_ref), 'loss_rel_err': loss_err, 'param_rel_err': err,
            'ok': loss_err < 1e-5 and err < 2e-6}


def _fmt(v: Any) -> str:
    if v is None:
        return '-'
    if isinstance(v, float):
        return f'{v:.3g}'
    return str(v)


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Rows as a plain-text table of `columns` ('-' where a row has no value)."""
    cells = [list(columns)] + [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return '\n'.join('  '.join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)


STEP_COLUMNS = ('variant', 'dtype', 'per_device_batch', 'kernels', 'compile_s', 'step_s',
                'records_per_s', 'mfu', 'peak_memory_gb', 'error')


def run(*, variants: Sequence[str], dtypes: Sequence[str], batches: Sequence[int], fs: float,
        steps: int, warmup: int, peak_tflops: float | None, kernels: str, remat: bool,
        workers: Sequence[int], pipeline_batch: int, smoke: bool,
        equivalence: bool = True) -> dict[str, list[dict]]:
    """Every measurement of the check. A case that fails (e.g. out of device
    memory) is a row with its one-line `error`, and the others still run.

    Returns:
      {'devices': ..., 'steps': ..., 'pipeline': ..., 'equivalence': ...} rows.
    """
    out = {'devices': device_rows(), 'steps': [], 'pipeline': [], 'equivalence': []}
    for variant in variants:
        for dtype in dtypes:
            for b in batches:
                try:
                    row = step_row(variant, dtype, b, fs=fs, steps=steps, warmup=warmup,
                                   peak_tflops=peak_tflops, kernels=kernels, remat=remat)
                except Exception as e:  # pylint: disable=broad-except
                    row = {'what': 'step', 'variant': variant, 'dtype': dtype,
                           'per_device_batch': b, 'error': str(e).strip().splitlines()[0][:100]}
                out['steps'].append(row)
                print(format_table([row], STEP_COLUMNS).splitlines()[-1], flush=True)
    if workers:
        out['pipeline'] = pipeline_rows(pipeline_batch, workers, smoke=smoke,
                                        steps=2 if smoke else 10)
        fastest = max((r.get('records_per_s', 0.0) for r in out['steps']), default=0.0)
        for r in out['pipeline']:
            r['step_records_per_s'] = fastest
            r['keeps_up'] = r['records_per_s'] >= fastest
    if equivalence:
        import importlib.util  # pylint: disable=g-import-not-at-top
        if importlib.util.find_spec('torch') is None:
            out['equivalence'] = [{'what': 'equivalence', 'error': "torch is not installed "
                                   "(pip install -e '.[torch]')"}]
        else:
            out['equivalence'] = [equivalence_row(kernels)]
    return out


def report(result: dict[str, list[dict]]) -> str:
    """The check's result as the tables a person reads."""
    parts = ['devices', format_table(result['devices'], ('id', 'platform', 'kind', 'process')),
             '', 'pre-training step (data-parallel over all devices)',
             format_table(result['steps'], STEP_COLUMNS)]
    if result['pipeline']:
        parts += ['', 'input pipeline (Grain, synthetic source)',
                  format_table(result['pipeline'], ('workers', 'batch', 'records_per_s',
                                                    'step_records_per_s', 'keeps_up'))]
    if result['equivalence']:
        parts += ['', 'one step against the PyTorch statement of the published step',
                  format_table(result['equivalence'], ('kernels', 'loss', 'loss_torch',
                                                       'loss_rel_err', 'param_rel_err', 'ok',
                                                       'error'))]
    return '\n'.join(parts)


def main(argv):
    del argv
    from experiments import console  # pylint: disable=g-import-not-at-top
    console.quiet_library_logs()
    f = FLAGS
    if f.smoke:  # the CPU-seconds version: tiny model, tiny batch, one step
        variants, dtypes, batches, fs, steps, warmup = ['tiny'], ['float32'], [4], 100.0, 1, 1
        workers, pipeline_batch = [0], 8
    else:
        variants, dtypes = f.variants, f.dtypes
        batches, fs, steps, warmup = [int(b) for b in f.batches], f.fs, f.steps, f.warmup
        workers, pipeline_batch = [int(w) for w in f.workers], f.pipeline_batch
    result = run(variants=variants, dtypes=dtypes, batches=batches, fs=fs, steps=steps,
                 warmup=warmup, peak_tflops=f.peak_tflops, kernels=f.kernels, remat=f.remat,
                 workers=workers, pipeline_batch=pipeline_batch, smoke=f.smoke,
                 equivalence=f.equivalence)
    print(report(result), flush=True)
    if f.out:
        with open(f.out, 'a') as fh:
            for rows in result.values():
                for r in rows:
                    fh.write(json.dumps(r) + '\n')


if __name__ == '__main__':
    # Flags live here so that importing this module (tests) defines none.
    from absl import app, flags  # pylint: disable=g-import-not-at-top
    FLAGS = flags.FLAGS
    flags.DEFINE_bool('smoke', False, 'Seconds on CPU: tiny model, batch 4, one step.')
    flags.DEFINE_list('variants', ['XS', 'S', 'B'], 'ViT variants.')
    flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes.')
    flags.DEFINE_list('batches', ['64', '128'], 'Per-device batch sizes.')
    flags.DEFINE_float('fs', 500.0, 'Sampling rate (Hz); 10 s windows, 50 ms patches.')
    flags.DEFINE_integer('steps', 5, 'Timed steps per case (the median is reported).')
    flags.DEFINE_integer('warmup', 2, 'Untimed steps per case after compilation.')
    flags.DEFINE_float('peak_tflops', None, 'Dense peak TFLOP/s of one device for the MFU '
                       'column (default: jepa_ecg/training/flops.py\'s table by device kind).')
    flags.DEFINE_enum('kernels', 'auto', ['auto', 'stock', 'cpu'], 'ModelConfig.kernels.')
    flags.DEFINE_bool('remat', False, 'Rematerialise the blocks (ModelConfig.remat).')
    flags.DEFINE_list('workers', ['0', '4', '8'], 'Grain worker counts of the pipeline rows '
                      '(empty: skip the pipeline).')
    flags.DEFINE_integer('pipeline_batch', 256, 'Global batch of the pipeline rows.')
    flags.DEFINE_bool('equivalence', True, 'One-step check against PyTorch (needs torch).')
    flags.DEFINE_string('out', None, 'Also append every row as a JSON line to this file.')
    app.run(main)
