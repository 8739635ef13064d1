r"""Throughput benchmarks: pre-training step, input pipeline, embedding.

  python -m experiments.benchmark --what=train_step --variant=XS --batch=32 --fs=500
  python -m experiments.benchmark --what=train_step --what=pipeline   # both rates together
  python -m experiments.benchmark --what=embed --batch=64
  python -m experiments.benchmark --what=pipeline_vs_published --data_dir=DIR \
      --mixture=ptbxl_100hz --fs=100 --batch=256   # ours / the published loader
  make bench            # all three at the defaults
  python -m experiments.benchmark --smoke --what=train_step   # seconds, tiny model

Prints one JSON line per measurement (and appends it to --out), with at
least `what, variant, batch, fs, dtype, records_per_s, peak_rss_mb,
compile_s, device`, plus the load average of the machine before and after
(wall-clock numbers on a shared machine are only comparable at similar
load), CPU seconds per step, the commit and, on GPU/TPU, the model FLOPs
utilisation (encoder, target encoder and predictor, forward and backward;
see jepa_ecg/training/flops.py).

Method: compile every kept-token bucket the masks can produce (AOT, timed
as `compile_s` for the first and `compile_total_s` for all), run
`--warmup` steps, then `--reps` timed repetitions of `--steps_per_rep`
steps each (state donated, batches already on the device, one
block_until_ready per repetition); `records_per_s` is the median over
repetitions. `peak_rss_mb` is the largest resident set sampled (every
20 ms) during that measurement.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time

import jax
import numpy as np
import psutil
from absl import app, flags

from experiments import pipeline_bench
from experiments.configs.pretrain import get_config
from jepa_ecg import inference, sharding
from jepa_ecg.data import masking
from jepa_ecg.data import source_stats as stats
from jepa_ecg.data.sources import MIXTURES, Source
from jepa_ecg.models.config import model_config, model_config_from
from jepa_ecg.training import flops, optim
from jepa_ecg.training import jepa_step as jepa
from tfds_builders import build

FLAGS = flags.FLAGS
flags.DEFINE_multi_enum('what', ['train_step'], ['train_step', 'pipeline', 'embed',
                                                 'pipeline_vs_published'],
                        'What to measure (repeatable).')
flags.DEFINE_string('variant', 'XS', 'Model variant: XS, S, B or tiny (vit_xs etc. accepted).')
flags.DEFINE_integer('batch', None, 'Global batch size (default 32, 64 for embed; 8 with --smoke).')
flags.DEFINE_float('fs', 500.0, 'Model sampling rate (Hz); the patch is 50 ms at this rate.')
flags.DEFINE_float('window_seconds', 10.0, 'Pre-training window (s).')
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
flags.DEFINE_string('keep_ratio', '0.15,0.25', 'Range of the per-step keep ratio.')
flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation.')
flags.DEFINE_integer('reps', 5, 'Timed repetitions (median reported).')
flags.DEFINE_integer('steps_per_rep', 2, 'Steps per timed repetition.')
flags.DEFINE_integer('seed', 0, 'Seed of masks and signals.')
flags.DEFINE_bool('smoke', False, 'Tiny model, 100 Hz, batch 8, one short repetition: '
                  'checks that everything runs (tests use it); numbers mean nothing.')
flags.DEFINE_string('bench_data_dir', None, 'Where the standard pipeline cases build their '
                    'synthetic datasets (~1.3 GB, reused; default ~/.cache/jepa_ecg/bench_tfds).')
flags.DEFINE_string('data_dir', None, 'TFDS data_dir for --what=pipeline; default: build the '
                    'offline synthetic_ecg source in a temporary directory.')
flags.DEFINE_string('mixture', 'synthetic', 'Data mixture for --what=pipeline (with --data_dir).')
flags.DEFINE_integer('pipeline_steps', 100, 'Timed pipeline steps.')
flags.DEFINE_integer('threads', None, 'Pipeline threads per process (default: CPUs).')
flags.DEFINE_multi_integer('worker_count', [0], 'Grain worker processes of the pipeline '
                           '(repeatable: one measurement each; 0 = threads in this process).')
flags.DEFINE_string('encoder', None, 'Encoder directory for --what=embed (default: random '
                    'weights of --variant).')
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_string('official_dir', os.environ.get('JEPA_ECG_OFFICIAL_DIR', os.path.join(
    _REPO, '..', 'shared', 'reference', 'official-ECG-JEPA')), 'The published code '
                    '(--what=pipeline_vs_published).')
flags.DEFINE_string('out', None, 'Also append the JSON lines to this file.')

_LAST_STEP_RATE: dict = {}


# ----------------------------------------------------------------- helpers
class PeakRss:
    """Samples this process's resident set size in a thread; `.peak_mb` after exit."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        return psutil.Process().memory_info().rss

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def _commit() -> str | None:
    try:
        out = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=_REPO,
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'],
                               cwd=_REPO, capture_output=True, text=True, timeout=10).stdout
        return out.stdout.strip() + ('+dirty' if dirty.strip() else '') if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _variant(name: str) -> str:
    name = name.strip()
    if name.lower().startswith('vit_'):
        name = name[4:]
    return 'tiny' if name.lower() == 'tiny' else name.upper()


def _settings() -> dict:
    """Effective settings after --smoke."""
    smoke = FLAGS.smoke
    return {
        'variant': 'tiny' if smoke else _variant(FLAGS.variant),
        'fs': 100.0 if smoke else FLAGS.fs,
        'window_seconds': FLAGS.window_seconds,
        'dtype': FLAGS.dtype,
        'warmup': 1 if smoke else FLAGS.warmup,
        'reps': 1 if smoke else FLAGS.reps,
        'steps_per_rep': 1 if smoke else FLAGS.steps_per_rep,
        'keep_ratio': tuple(float(v) for v in FLAGS.keep_ratio.split(',')),
    }


def _base_record(what: str, s: dict, batch: int) -> dict:
    dev = jax.devices()[0]
    return {
        'what': what, 'variant': s['variant'], 'batch': batch, 'fs': s['fs'],
        'window_seconds': s['window_seconds'], 'dtype': s['dtype'],
        'device': dev.device_kind, 'platform': dev.platform, 'num_devices': jax.device_count(),
        'cpu_count': os.cpu_count(), 'smoke': FLAGS.smoke, 'commit': _commit(),
        'jax': jax.__version__, 'time': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
    }


def _emit(record: dict) -> None:
    line = json.dumps(record, sort_keys=False)
    print(line, flush=True)
    if FLAGS.out:
        with open(FLAGS.out, 'a') as f:
            f.write(line + '\n')


def _model_config(s: dict):
    tokens = {'XS': 'vit_xs', 'S': 'vit_s', 'B': 'vit_b', 'tiny': 'vit_tiny'}[s['variant']]
    config = get_config(tokens + ',synthetic')
    config.unlock()
    config.model.fs = s['fs']
    config.model.window_seconds = s['window_seconds']
    config.dtype = s['dtype']
    config.grad_accum_steps = 1
    return config, model_config_from(config)


# -------------------------------------------------------------- train step
def _time_steps(compiled: dict, state, batches: list, s: dict, batch: int):
    """Warm-up steps, then timed repetitions (state donated, one sync per repetition).

    Returns:
      (records/s per repetition, CPU seconds per step per repetition, last metrics).
    """
    def run(state, b):
        return compiled[b['keep_idx'].shape[1]](state, b)

    for b in batches[:s['warmup']]:
        state, metrics = run(state, b)
    jax.block_until_ready(metrics)
    rates, cpu, i = [], [], s['warmup']
    for _ in range(s['reps']):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(s['steps_per_rep']):
            state, metrics = run(state, batches[i])
            i += 1
        jax.block_until_ready(metrics)
        rates.append(s['steps_per_rep'] * batch / (time.perf_counter() - t0))
        cpu.append((time.process_time() - c0) / s['steps_per_rep'])
    return rates, cpu, metrics


def bench_train_step(s: dict, batch: int) -> dict:
    """Times the jitted, donated pre-training step on device-resident batches."""
    config, cfg = _model_config(s)
    schedules = optim.make_schedules(config)
    tx = optim.make_optimizer(config, schedules)
    mesh = sharding.make_mesh()
    repl, bsh = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    step_fn = jepa.make_train_step(cfg, tx, schedules, dtype=s['dtype'],
                                   rank_every=config.rank_every)
    jitted = jax.jit(step_fn, in_shardings=(repl, bsh), out_shardings=(repl, repl),
                     donate_argnums=(0,))

    rng = np.random.default_rng(FLAGS.seed)
    n = cfg.num_patches
    n_batches = s['warmup'] + s['reps'] * s['steps_per_rep']
    signal = rng.standard_normal((batch, cfg.window_samples, cfg.num_leads)).astype(np.float32)
    host = [{'signal': signal,
             **masking.sample_batch_masks(rng, batch, n, keep_ratio_range=s['keep_ratio'],
                                          min_block_size=config.data.min_block_size,
                                          bucket=config.data.keep_bucket)}
            for _ in range(n_batches)]
    batches = [sharding.host_to_global(b, mesh) for b in host]
    lo, hi = s['keep_ratio']
    buckets = sorted({masking.bucketed_length(k, n, config.data.keep_bucket)
                      for k in range(max(1, math.ceil(lo * n)), min(n, math.ceil(hi * n)) + 1)})

    with PeakRss() as rss:
        state = jax.jit(lambda k: jepa.init_train_state(k, cfg, tx),
                        out_shardings=repl)(jax.random.PRNGKey(FLAGS.seed))
        compiled, compile_times, xla_flops = {}, [], None
        for k_pad in buckets:
            idx = next((i for i, b in enumerate(host) if b['keep_idx'].shape[1] == k_pad), None)
            proto = batches[idx] if idx is not None else sharding.host_to_global(
                {'signal': signal, **masking.sample_batch_masks(
                    rng, batch, n, bucket=config.data.keep_bucket,
                    num_keep=k_pad)}, mesh)
            t0 = time.perf_counter()
            compiled[k_pad] = jitted.lower(state, proto).compile()
            compile_times.append(time.perf_counter() - t0)
            if xla_flops is None:
                try:
                    xla_flops = float(compiled[k_pad].cost_analysis().get('flops', float('nan')))
                except Exception:  # pylint: disable=broad-except
                    xla_flops = None

        load_before = os.getloadavg()[0]
        rates, cpu, metrics = _time_steps(compiled, state, batches, s, batch)
        load_after = os.getloadavg()[0]
        loss = float(metrics['loss'])

    rate = statistics.median(rates)
    keep_mean = float(np.mean([b['keep_idx'].shape[1] for b in host[s['warmup']:]]))
    f = flops.train_step_flops(cfg, batch, keep_mean)
    achieved = f['total'] * rate / batch
    peak = flops.peak_flops(jax.devices()[0].device_kind, s['dtype'])
    _LAST_STEP_RATE[(s['variant'], batch)] = rate
    return {
        **_base_record('train_step', s, batch),
        'records_per_s': rate, 'records_per_s_reps': rates,
        'step_s_median': batch / rate, 'cpu_s_per_step': statistics.median(cpu),
        'peak_rss_mb': rss.peak_mb, 'compile_s': compile_times[0],
        'compile_total_s': sum(compile_times), 'keep_buckets': buckets,
        'keep_ratio': list(s['keep_ratio']), 'mean_context_tokens': keep_mean,
        'model_flops_per_step': f['total'], 'model_flops_parts': f,
        'xla_flops_per_step': xla_flops, 'model_flops_per_s': achieved,
        'mfu': (achieved / (peak * jax.device_count())) if peak else None,
        'load_avg_1m': [load_before, load_after], 'loss': loss,
        'warmup': s['warmup'], 'reps': s['reps'], 'steps_per_rep': s['steps_per_rep'],
    }


# ---------------------------------------------------------------- pipeline
def _synthetic_data_dir(smoke: bool):
    """Builds the offline synthetic source in a temp dir; returns (dir, mixture, sources)."""
    path = tempfile.mkdtemp(prefix='jepa_bench_tfds_')
    config = 'tiny' if smoke else 'small'
    src = Source('bench_synthetic', f'synthetic_ecg/{config}', 500.0)
    build.build_dataset(f'synthetic_ecg/{config}', path)
    stats.save_lead_stats(stats.compute_lead_stats(src, path, max_records=32), src, path)
    return path, {src.name: 1.0}, {src.name: src}


def _pipeline_record(s: dict, batch: int, r: dict, steps: int) -> dict:
    step_rate = _LAST_STEP_RATE.get((s['variant'], batch)) or next(
        iter(_LAST_STEP_RATE.values()), None)
    return {
        **_base_record('pipeline', s, batch),
        'records_per_s': r['records_per_s'], 'steps_per_s': r['steps_per_s'],
        'records_per_cpu_s': r.get('records_per_cpu_s'),
        'peak_rss_mb': r.get('rss_peak_mb'), 'rss_start_mb': r.get('rss_start_mb'),
        'compile_s': None, 'num_threads': r.get('num_threads'),
        'worker_count': r.get('worker_count'), 'pipeline_steps': steps,
        'train_step_records_per_s': step_rate,
        'keeps_up': None if step_rate is None else r['records_per_s'] >= step_rate,
        'load_avg_1m': r.get('load_average_1min'),
    }


def bench_pipeline(s: dict, batch: int):
    """Input-pipeline records/s and peak RSS.

    With --data_dir (or --smoke): one measurement of that mixture in this
    process. Otherwise the standard cases of experiments/pipeline_bench.py,
    each in a fresh process so its peak RSS is its own.
    """
    if not FLAGS.data_dir and not FLAGS.smoke:
        return bench_pipeline_suite(s, batch)
    sharding.hide_accelerators_from_tensorflow()
    cfg = model_config(s['variant'], fs=s['fs'], window_seconds=s['window_seconds'])
    if FLAGS.data_dir:
        data_dir, mixture, sources, tmp = FLAGS.data_dir, MIXTURES[FLAGS.mixture], None, None
    else:
        data_dir, mixture, sources = _synthetic_data_dir(FLAGS.smoke)
        tmp = data_dir
    steps = 2 if FLAGS.smoke else FLAGS.pipeline_steps
    records = []
    try:
        for workers in FLAGS.worker_count:
            r = pipeline_bench.measure(
                mixture, data_dir=data_dir, global_batch_size=batch, fs=cfg.fs,
                window_seconds=cfg.window_seconds, patch_size=cfg.patch_size,
                num_steps=steps, warmup_steps=1 if FLAGS.smoke else 3, seed=FLAGS.seed,
                num_threads=FLAGS.threads, worker_count=workers, sources=sources)
            records.append({**_pipeline_record(s, batch, r, steps), 'mixture': sorted(mixture),
                            'data_dir': None if tmp else data_dir})
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return records


def bench_pipeline_suite(s: dict, batch: int) -> list[dict]:
    if s['fs'] != 500.0 or s['window_seconds'] != 10.0:
        raise app.UsageError('the standard pipeline cases are 10 s at 500 Hz; pass --data_dir '
                             'and --mixture to measure another setting')
    data_dir = FLAGS.bench_data_dir or os.path.join(
        os.path.expanduser('~'), '.cache', 'jepa_ecg', 'bench_tfds')
    results = pipeline_bench.run_suite(data_dir, global_batch_size=batch,
                                       num_steps=FLAGS.pipeline_steps, num_threads=FLAGS.threads,
                                       worker_counts=FLAGS.worker_count)
    return [{**_pipeline_record(s, batch, r, FLAGS.pipeline_steps), 'case': r['case'],
             'description': r['description'], 'data_dir': data_dir} for r in results]


def bench_pipeline_vs_published(s: dict, batch: int) -> dict:
    """Our pipeline and the published in-memory loader, alternating in this
    process (experiments/pipeline_bench.py:compare_published)."""
    sharding.hide_accelerators_from_tensorflow()
    cfg, tmp = model_config(s['variant'], fs=s['fs'], window_seconds=s['window_seconds']), None
    if FLAGS.data_dir:
        data_dir, sources = FLAGS.data_dir, None
        names = [n for n, w in MIXTURES[FLAGS.mixture].items() if w > 0]
        if len(names) != 1:
            raise app.UsageError(f'--mixture={FLAGS.mixture} has {len(names)} sources; the '
                                 'published loader is compared on one (e.g. ptbxl_100hz)')
        source = names[0]
        stats.ensure_lead_stats(source, data_dir)
    else:
        data_dir, mixture, sources = _synthetic_data_dir(FLAGS.smoke)
        (source,), tmp = mixture, data_dir
    try:
        r = pipeline_bench.compare_published(
            FLAGS.official_dir, source, data_dir=data_dir, global_batch_size=batch,
            fs=cfg.fs, window_seconds=cfg.window_seconds, patch_size=cfg.patch_size,
            keep_ratio_range=s['keep_ratio'], reps=max(2, s['reps']),
            steps_per_rep=s['steps_per_rep'] * 4, seed=FLAGS.seed, sources=sources)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return {**_base_record('pipeline_vs_published', s, batch), 'compile_s': None,
            'records_per_s': r['ours_records_per_s'], 'peak_rss_mb': r['rss_peak_mb'], **r}


# ------------------------------------------------------------------- embed
def bench_embed(s: dict, batch: int) -> dict:
    """Records/s of the encoder forward pass on full windows (inference)."""
    _, cfg = _model_config(s)
    if FLAGS.encoder:
        enc = inference.load_encoder(FLAGS.encoder)
        cfg = enc.config
    else:
        params = jepa.init_params(jax.random.PRNGKey(FLAGS.seed), cfg)['encoder']
        enc = inference.Encoder(cfg, params)
    forward, how = enc.tokens, 'Encoder.tokens'
    x = np.random.default_rng(FLAGS.seed).standard_normal(
        (batch, cfg.window_samples, cfg.num_leads)).astype(np.float32)
    with PeakRss() as rss:
        t0 = time.perf_counter()
        jax.block_until_ready(forward(x))
        compile_s = time.perf_counter() - t0
        for _ in range(s['warmup']):
            out = forward(x)
        jax.block_until_ready(out)
        load_before = os.getloadavg()[0]
        rates = []
        for _ in range(s['reps']):
            t0 = time.perf_counter()
            for _ in range(s['steps_per_rep']):
                out = forward(x)
            jax.block_until_ready(out)
            rates.append(s['steps_per_rep'] * batch / (time.perf_counter() - t0))
        load_after = os.getloadavg()[0]
    rate = statistics.median(rates)
    f = flops.encoder_forward_flops(cfg) * batch
    peak = flops.peak_flops(jax.devices()[0].device_kind, s['dtype'])
    return {
        **_base_record('embed', s, batch),
        'records_per_s': rate, 'records_per_s_reps': rates, 'peak_rss_mb': rss.peak_mb,
        'compile_s': compile_s, 'api': how, 'model_flops_per_batch': f,
        'mfu': (f * rate / batch / (peak * jax.device_count())) if peak else None,
        'load_avg_1m': [load_before, load_after],
    }


BENCHMARKS = {'train_step': bench_train_step, 'pipeline': bench_pipeline, 'embed': bench_embed,
              'pipeline_vs_published': bench_pipeline_vs_published}
DEFAULT_BATCH = {'train_step': 32, 'pipeline': 32, 'embed': 64, 'pipeline_vs_published': 256}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError('Too many command-line arguments.')
    s = _settings()
    # Measure the step first so the pipeline line can report both rates.
    order = sorted(set(FLAGS.what), key=list(BENCHMARKS).index)
    for what in order:
        batch = FLAGS.batch or (8 if FLAGS.smoke else DEFAULT_BATCH[what])
        result = BENCHMARKS[what](s, batch)
        for record in (result if isinstance(result, list) else [result]):
            _emit(record)


if __name__ == '__main__':
    app.run(main)
