r"""Where the pre-training step's CPU time goes, and what its matmuls alone cost.

  python -m experiments.step_profile --variant=XS --batch=32 --fs=500
  taskset -c 0 python -m experiments.step_profile --variant=XS --matmuls   # one core

1. Profiles `--profile_steps` jitted, donated train steps (the step of
   experiments/benchmark.py, one kept-token count) with jax.profiler and sums
   the XLA operations' time per step by kind: `ynn_fusion` (matmuls and the
   element-wise work fused into them, run by the YNNPACK library),
   `dot_general` (matmuls XLA's own kernels run), `transpose`/`copy` fusions
   (layout changes), the element-wise fusions, and so on. Summed over the
   executor threads, so the total is CPU seconds per step.
2. With `--matmuls`: every dot_general of the step (read from its jaxpr,
   forward and backward), each timed alone in XLA with the step's own
   dimension layout, and, with torch installed, as a contiguous
   `torch.matmul` of the same sizes. Summed with multiplicity, this is the
   matmul-only time of one step for each library: a floor under the whole
   step that no change outside the matmul kernels can go below.

Prints a table and one JSON line (also appended to `--out`). Run it on a
quiet core: with a co-tenant, compare only figures from the same run.
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments.configs.pretrain import get_config
from jepa_ecg.data import masking
from jepa_ecg.models.config import model_config_from
from jepa_ecg.training import flops, optim
from jepa_ecg.training import jepa_step as jepa

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Only when run: the module is also imported beside other experiments' flags."""
    flags.DEFINE_string('variant', 'XS', 'Model variant: XS, S, B or tiny (vit_xs etc. accepted).')
    flags.DEFINE_integer('batch', 32, 'Global batch size.')
    flags.DEFINE_float('fs', 500.0, 'Model sampling rate (Hz); the patch is 50 ms at this rate.')
    flags.DEFINE_float('context_fraction', 0.2, 'Context tokens kept per record (before '
                       'bucketing).')
    flags.DEFINE_integer('profile_steps', 3, 'Profiled steps (after 2 untimed ones).')
    flags.DEFINE_bool('matmuls', False, 'Also time every matmul of the step alone (XLA, torch).')
    flags.DEFINE_integer('matmul_reps', 5, 'Timed repetitions per matmul (median).')
    flags.DEFINE_string('out', None, 'Also append the JSON line to this file.')


# XLA operations are named like HLO instructions (lower case, '_' and '-');
# the runtime's own events (ThunkExecutor, PjitFunction(...), waits) are not.
_HLO_NAME = re.compile(r'^[a-z][a-z0-9_\-]*$')
_NOT_OPS = {'end', 'cond', 'while', 'call'}  # envelopes of other operations


def _step(variant: str, batch: int, fs: float, keep_ratio: float, seed: int = 0):
    """(jitted donated step, state, one batch, model config, kept count)."""
    name = variant.lower().removeprefix('vit_')
    config = get_config(f'vit_{name},synthetic,fs={fs:g}')
    config.unlock()
    config.grad_accum_steps = 1  # one micro-batch per step, as the benchmark times it
    cfg = model_config_from(config)
    schedules = optim.make_schedules(config)
    tx = optim.make_optimizer(config, schedules)
    step = jax.jit(jepa.make_train_step(cfg, tx, schedules, dtype='float32',
                                        rank_every=config.rank_every), donate_argnums=(0,))
    rng = np.random.default_rng(seed)
    n = cfg.num_patches
    keep = masking.bucketed_length(max(1, int(keep_ratio * n)), n, config.data.keep_bucket)
    signal = rng.standard_normal((batch, cfg.window_samples, cfg.num_leads)).astype(np.float32)
    masks = masking.sample_batch_masks(rng, batch, n, bucket=config.data.keep_bucket,
                                       num_keep=keep)
    state = jepa.init_train_state(jax.random.PRNGKey(seed), cfg, tx)
    return step, state, {'signal': signal, **masks}, cfg, keep


def op_kind(event_name: str) -> str:
    """'ynn_fusion.12' -> 'ynn_fusion'; 'dot_general.3' -> 'dot_general'."""
    return event_name.split(':')[0].split('.')[0]


def profile_ops(step, state, batch: dict, steps: int) -> tuple[dict, float, object]:
    """CPU seconds per step by operation kind, wall seconds per step, final state."""
    for _ in range(2):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        with jax.profiler.trace(d):
            for _ in range(steps):
                state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
        wall = (time.perf_counter() - t0) / steps
        found = [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs
                 if f.endswith('.xplane.pb')]
        if not found:
            raise RuntimeError(f'jax.profiler wrote no .xplane.pb under {d}')
        data = jax.profiler.ProfileData.from_file(found[0])
    seconds = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if line.name == 'python' or not plane.name.startswith('/host'):
                continue
            for ev in line.events:
                kind = op_kind(ev.name)
                if _HLO_NAME.match(kind) and kind not in _NOT_OPS:
                    seconds[kind] += ev.duration_ns / 1e9 / steps
    return dict(seconds.most_common()), wall, state


def step_matmuls(step, state, batch: dict) -> collections.Counter:
    """Every float32 dot_general of the step: (lhs shape, rhs shape, dims) -> count."""
    found = collections.Counter()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == 'dot_general':
                (lc, rc), (lb, rb) = eqn.params['dimension_numbers']
                a, b = eqn.invars[0].aval, eqn.invars[1].aval
                if a.dtype == jnp.float32:
                    found[(tuple(a.shape), tuple(b.shape),
                           tuple(map(tuple, (lc, rc, lb, rb))))] += 1
            for p in eqn.params.values():
                for sub in (p if isinstance(p, (list, tuple)) else [p]):
                    if hasattr(sub, 'jaxpr') and hasattr(sub, 'consts'):
                        walk(sub.jaxpr)
                    elif hasattr(sub, 'eqns'):
                        walk(sub)

    walk(jax.make_jaxpr(step)(state, batch).jaxpr)
    return found


def matmul_sizes(lhs: tuple, rhs: tuple, dims: tuple) -> tuple[int, int, int, int]:
    """(batch, M, K, N) of a dot_general."""
    lc, _, lb, _ = dims
    b = math.prod(lhs[i] for i in lb)
    k = math.prod(lhs[i] for i in lc)
    return b, math.prod(lhs) // (b * k), k, math.prod(rhs) // (b * k)


def _median_seconds(fn, reps: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_matmuls(found: collections.Counter, reps: int) -> list[dict]:
    """Each matmul alone: XLA (the step's layout) and torch (contiguous), seconds."""
    try:
        import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
        torch = None
    else:
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    rng = np.random.default_rng(0)
    rows = []
    for (lhs, rhs, dims), count in found.items():
        lc, rc, lb, rb = dims
        x = jnp.asarray(rng.standard_normal(lhs, dtype=np.float32))
        y = jnp.asarray(rng.standard_normal(rhs, dtype=np.float32))
        dot = jax.jit(lambda a, b, dn=((lc, rc), (lb, rb)): jax.lax.dot_general(a, b, dn))
        b, m, k, n = matmul_sizes(lhs, rhs, dims)
        row = {'batch': b, 'm': m, 'k': k, 'n': n, 'count': count, 'flop': 2 * b * m * k * n,
               'xla_s': _median_seconds(lambda: dot(x, y).block_until_ready(), reps)}
        if torch is not None:
            tx, ty = torch.randn(b, m, k), torch.randn(b, k, n)
            row['torch_s'] = _median_seconds(lambda: torch.matmul(tx, ty), reps)
        rows.append(row)
    return sorted(rows, key=lambda r: -r['count'] * r['xla_s'])


def run(variant: str, batch: int, fs: float, keep_ratio: float, steps: int,
        matmuls: bool, matmul_reps: int = 5) -> dict:
    step, state, data, cfg, keep = _step(variant, batch, fs, keep_ratio)
    found = step_matmuls(step, state, data) if matmuls else None
    ops, wall, _ = profile_ops(step, state, data, steps)
    total = sum(ops.values())
    library = ops.get('ynn_fusion', 0.0) + ops.get('dot_general', 0.0)
    record = {'what': 'step_profile', 'variant': variant, 'batch': batch, 'fs': fs,
              'context_tokens': keep, 'wall_s_per_step': wall, 'op_cpu_s_per_step': total,
              'matmul_kernel_share': library / total if total else None,
              'op_cpu_s_by_kind': ops,
              'model_flop_per_step': flops.train_step_flops(cfg, batch, keep)['total'],
              'threads': len(os.sched_getaffinity(0))}
    if found is not None:
        rows = time_matmuls(found, matmul_reps)
        record['matmuls'] = {
            'count': sum(r['count'] for r in rows),
            'flop_per_step': sum(r['count'] * r['flop'] for r in rows),
            'xla_alone_s_per_step': sum(r['count'] * r['xla_s'] for r in rows),
            'torch_alone_s_per_step': (sum(r['count'] * r['torch_s'] for r in rows)
                                       if rows and 'torch_s' in rows[0] else None),
            'rows': rows}
    return record


def print_record(r: dict) -> None:
    print(f"{r['variant']} batch {r['batch']} at {r['fs']:g} Hz, {r['context_tokens']} context "
          f"tokens, {r['threads']} core(s): {r['wall_s_per_step']:.3f} s/step wall, "
          f"{r['op_cpu_s_per_step']:.3f} CPU-s/step in XLA operations")
    for kind, s in list(r['op_cpu_s_by_kind'].items())[:12]:
        print(f'  {s:8.4f} s  {100 * s / r["op_cpu_s_per_step"]:5.1f} %  {kind}')
    m = r.get('matmuls')
    if m:
        torch_s = m['torch_alone_s_per_step']
        print(f"{m['count']} matmuls, {m['flop_per_step'] / 1e9:.1f} GFLOP/step; timed alone: "
              f"XLA {m['xla_alone_s_per_step']:.3f} s"
              + (f', torch {torch_s:.3f} s' if torch_s is not None else ''))
        for row in m['rows'][:15]:
            gf = row['flop'] / 1e9
            line = (f"  {row['count']:3d} x [{row['batch']}] {row['m']}x{row['k']} @ "
                    f"{row['k']}x{row['n']}: XLA {1e3 * row['xla_s']:7.2f} ms "
                    f"({gf / row['xla_s']:5.1f} GFLOP/s)")
            if 'torch_s' in row:
                line += f", torch {1e3 * row['torch_s']:7.2f} ms ({gf / row['torch_s']:5.1f})"
            print(line)


def main(argv):
    del argv
    record = run(FLAGS.variant, FLAGS.batch, FLAGS.fs, FLAGS.context_fraction,
                 FLAGS.profile_steps, FLAGS.matmuls, FLAGS.matmul_reps)
    print_record(record)
    line = json.dumps({k: v for k, v in record.items() if k != 'matmuls'}
                      | ({'matmuls': {k: v for k, v in record['matmuls'].items() if k != 'rows'}}
                         if 'matmuls' in record else {}))
    print(line)
    if FLAGS.out:
        with open(FLAGS.out, 'a') as f:
            f.write(line + '\n')


if __name__ == '__main__':
    define_flags()
    app.run(main)
