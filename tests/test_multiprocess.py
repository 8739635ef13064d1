"""Two processes over loopback (gloo) with 2 CPU devices each == one process with 4."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

# Full tier (make test-all): see README's test tiers.
pytestmark = pytest.mark.slow

WORKER = str(REPO / 'tests' / 'multiprocess_worker.py')


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_')}
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
    env['JAX_PLATFORMS'] = 'cpu'
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _run_single_and_two(tmp_path, *args):
    """The worker as one process with 4 devices, then as 2 processes with 2 each."""
    single = tmp_path / 'single.npz'
    subprocess.run([sys.executable, WORKER, str(single), *args], env=_env(4),
                   check=True, timeout=600, cwd=REPO)
    multi = tmp_path / 'multi.npz'
    addr = f'127.0.0.1:{_free_port()}'
    procs = [subprocess.Popen(
        [sys.executable, WORKER, str(multi), *args],
        env=_env(2, JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(i), JAX_COORDINATOR_ADDRESS=addr),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=600)
            outputs.append(out)
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    return np.load(single), np.load(multi)


def test_two_processes_match_one_process(tmp_path):
    a, b = _run_single_and_two(tmp_path, '2')
    assert int(a['devices']) == 4 and int(a['processes']) == 1
    assert int(b['devices']) == 4 and int(b['processes']) == 2
    np.testing.assert_allclose(a['losses'], b['losses'], rtol=1e-5, atol=1e-6)
    keys = [k for k in a.files if k not in ('losses', 'devices', 'processes')]
    assert keys and set(keys) == set(b.files) - {'losses', 'devices', 'processes'}
    for k in keys:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=1e-5, err_msg=k)


def test_two_processes_finetune_like_one(tmp_path):
    # Each process reads only its rows of every batch (in Grain); the run
    # is the same as one process's.
    a, b = _run_single_and_two(tmp_path, '6', 'finetune')
    assert int(a['processes']) == 1 and int(b['processes']) == 2
    np.testing.assert_allclose(a['test_logits'], b['test_logits'], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a['best_val_auc'], b['best_val_auc'], atol=1e-6)
    keys = [k for k in a.files if k not in ('test_logits', 'best_val_auc', 'processes')]
    assert keys
    for k in keys:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=1e-5, err_msg=k)
