"""A SIGTERM to one of two processes (loopback, gloo): both save the same step and stop."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO
from test_multiprocess import _env, _free_port

# One process of a 2-process pre-training on in-memory batches; prints the
# step it stopped at (StopRequested) and exits with its status.
WORKER = '''
import sys
from jepa_ecg import sharding
sharding.initialize_distributed()
import jax
import numpy as np
from experiments.configs.pretrain import get_config
from jepa_ecg.data.masking import sample_batch_masks
from jepa_ecg.models.config import model_config_from
from jepa_ecg.training import guard, jepa_loop

workdir, total = sys.argv[1], int(sys.argv[2])
c = get_config('vit_tiny,synthetic,100hz,smoke')
c.total_steps, c.log_every, c.rank_every, c.checkpoint_every = total, 1, 0, 1000
c.global_batch_size = 8
cfg = model_config_from(c)


def batches(start):
    local = c.global_batch_size // jax.process_count()
    lo = jax.process_index() * local
    step = start
    while True:
        rng = np.random.default_rng(step)
        x = rng.standard_normal((c.global_batch_size, cfg.window_samples, 12)).astype(np.float32)
        b = {'signal': x, **sample_batch_masks(rng, c.global_batch_size, cfg.num_patches)}
        yield {k: v[lo:lo + local] for k, v in b.items()}
        step += 1


try:
    jepa_loop.train_and_evaluate(c, workdir, input_iterator_fn=batches)
except guard.StopRequested as e:
    print(f'STOPPED {e.step} {e.signum}', flush=True)
    sys.exit(e.exitcode)
'''


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_saved_step(tmp_path):
    workdir = tmp_path / 'run'
    addr = f'127.0.0.1:{_free_port()}'
    procs = [subprocess.Popen(
        [sys.executable, '-c', WORKER, str(workdir), '300'],
        env=_env(2, JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(i), JAX_COORDINATOR_ADDRESS=addr,
                 PYTHONPATH=str(REPO)),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for i in range(2)]
    metrics = workdir / 'metrics.jsonl'
    try:
        deadline = time.time() + 600
        while time.time() < deadline and all(p.poll() is None for p in procs):
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGTERM)  # process 0 hears of it through JAX
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    stops = [[line for line in out.splitlines() if line.startswith('STOPPED')] for out in outputs]
    assert all(p.returncode == 128 + signal.SIGTERM for p in procs), outputs
    steps = {int(s[-1].split()[1]) for s in stops}
    assert len(steps) == 1, stops
    step = steps.pop()
    assert 3 <= step < 300
    saved = sorted(int(d) for d in os.listdir(workdir / 'checkpoints') if d.isdigit())
    assert saved[-1] == step
    with open(workdir / 'checkpoints' / str(step) / 'meta' / 'metadata') as f:
        assert json.load(f)['step'] == step
