"""experiments/benchmark.py runs (smoke mode) and prints comparable JSON lines; FLOP counts."""

import json
import os
import subprocess
import sys

import pytest

from jepa_ecg.models import model_config
from jepa_ecg.training import flops

from conftest import REPO

REQUIRED = {'what', 'variant', 'batch', 'fs', 'dtype', 'records_per_s', 'peak_rss_mb',
            'compile_s', 'device'}


def _run(*args):
    env = dict(os.environ)
    # One CPU device, as a user's `make bench` sees (conftest fakes 4 for tests).
    env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                                if 'xla_force_host_platform_device_count' not in f)
    out = subprocess.run([sys.executable, '-m', 'experiments.benchmark', '--smoke', *args],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(l) for l in out.stdout.splitlines() if l.startswith('{')]
    return lines


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    """One smoke run of all three measurements (one process: startup and compiles are slow)."""
    out_file = tmp_path_factory.mktemp('bench') / 'bench.jsonl'
    lines = _run('--what=embed', '--what=pipeline', '--what=train_step', f'--out={out_file}')
    return lines, out_file


@pytest.mark.slow
def test_smoke_prints_comparable_json_lines(smoke):
    lines, out_file = smoke
    # The step runs first so that the pipeline line can carry both rates.
    assert [l['what'] for l in lines] == ['train_step', 'pipeline', 'embed']
    for l in lines:
        assert REQUIRED <= l.keys(), REQUIRED - l.keys()
        assert l['records_per_s'] > 0 and l['peak_rss_mb'] > 0
        assert l['variant'] == 'tiny' and l['batch'] == 8 and l['dtype'] == 'float32'
    # The --out file holds the same lines, for comparisons across commits.
    assert [json.loads(l) for l in out_file.read_text().splitlines()] == lines


def test_smoke_train_step_fields(smoke):
    step = smoke[0][0]
    assert step['compile_s'] > 0 and step['compile_total_s'] >= step['compile_s']
    assert step['model_flops_per_step'] == pytest.approx(step['model_flops_parts']['total'])
    assert step['mfu'] is None  # CPU: no peak to compare with
    assert step['keep_buckets'] and all(k % 10 == 0 for k in step['keep_buckets'])


def test_smoke_pipeline_reports_both_rates(smoke):
    step, pipe = smoke[0][0], smoke[0][1]
    assert pipe['train_step_records_per_s'] == pytest.approx(step['records_per_s'])
    assert isinstance(pipe['keeps_up'], bool)


def test_flop_count_of_vit_xs_step():
    cfg = model_config('XS')
    # Hand count for one block of dim 192 on L tokens: 24*L*d^2 + 4*L^2*d.
    def blocks(L, d, depth):
        return depth * (24 * L * d * d + 4 * L * L * d)
    target = 2 * 200 * 300 * 192 + blocks(201, 192, 8)
    context = 2 * 40 * 300 * 192 + blocks(41, 192, 8)
    pred = 2 * 40 * 192 * 96 + 2 * 200 * 96 * 192 + blocks(200, 96, 8)
    f = flops.train_step_flops(cfg, 32, 40)
    assert f['target_encoder'] == 32 * target
    assert f['total'] == pytest.approx(32 * (target + 3 * (context + pred)))
    # ~130 GFLOP per step of 32 records; XLA's own count (elementwise ops
    # included) is ~137 GFLOP for this step.
    assert 1.2e11 < f['total'] < 1.4e11


def test_peak_flops_lookup():
    assert flops.peak_flops('NVIDIA H100 80GB HBM3', 'bfloat16') == 989e12
    assert flops.peak_flops('TPU v4', 'bfloat16') == 275e12
    assert flops.peak_flops('cpu', 'float32') is None


def test_prefetch_to_device_keeps_order_and_places_batches():
    import jax
    import numpy as np
    from jepa_ecg import sharding as parallel
    mesh = parallel.make_mesh(jax.devices()[:2])
    host = [{'x': np.full((4, 3), i, np.float32)} for i in range(5)]
    got = list(parallel.prefetch_to_device(iter(host), mesh, size=2))
    assert [int(b['x'][0, 0]) for b in got] == list(range(5))
    assert all(b['x'].sharding.spec == parallel.batch_sharded(mesh).spec for b in got)
