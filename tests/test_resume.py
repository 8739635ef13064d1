"""Kill-and-resume: a SIGKILLed pre-training run resumes to the same params."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO
from jepa_ecg.training import checkpoint

# Full tier (make test-all): see README's test tiers.
pytestmark = pytest.mark.slow

# The file name of a Python absl INFO line (TensorFlow's C++ logging, which
# prints before absl starts, writes 'I0000 00:00:<epoch>' and is not matched).
ABSL_INFO = re.compile(r'^I\d{4} \d\d:\d\d:\d\d\.\d{6}\s+\d+ ([\w.]+):\d+\]', re.M)


def _cmd(workdir, data_dir, total_steps):
    return [sys.executable, '-m', 'experiments.pretrain',
            '--config=experiments/configs/pretrain.py:vit_tiny,synthetic,100hz,smoke',
            f'--config.data.data_dir={data_dir}', f'--config.total_steps={total_steps}',
            '--config.checkpoint_every=2', '--config.keep_checkpoints=2',
            '--config.log_every=1', '--config.rank_every=0', '--config.warmup_steps=2',
            '--config.data.num_threads=1', f'--workdir={workdir}']


def _env():
    env = dict(os.environ)
    env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'
    env['JAX_PLATFORMS'] = 'cpu'
    return env


def _logged_steps(workdir):
    path = os.path.join(workdir, 'metrics.jsonl')
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line)['step'] for line in f if line.strip()]


def _leaves(tree):
    return jax.tree_util.tree_leaves(tree)


def test_kill_and_resume_is_exact(tmp_path, synthetic_tfds_dir):
    # Many steps after the kill point, so the kill lands mid-run however
    # fast the machine is.
    total, kill_after = 60, 5
    straight = str(tmp_path / 'straight')
    subprocess.run(_cmd(straight, synthetic_tfds_dir, total), env=_env(), cwd=REPO,
                   check=True, timeout=900, capture_output=True)

    resumed = str(tmp_path / 'resumed')
    log_path = tmp_path / 'killed.log'
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(_cmd(resumed, synthetic_tfds_dir, total), env=_env(), cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if any(s >= kill_after for s in _logged_steps(resumed)):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, log_path.read_text()[-3000:]
    ckpt_dir = os.path.join(resumed, 'checkpoints')
    complete = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
    assert complete and max(complete) < total

    # A checkpoint left half-written (as a kill during a save leaves it) must
    # never be restored: plant one for a later step with a truncated payload.
    partial = os.path.join(ckpt_dir, f'{total}.orbax-checkpoint-tmp-1')
    os.makedirs(os.path.join(partial, 'state'))
    with open(os.path.join(partial, 'state', '_METADATA'), 'w') as f:
        f.write('{"tree_metadata": {"trunc')

    out = subprocess.run(_cmd(resumed, synthetic_tfds_dir, total), env=_env(), cwd=REPO,
                         check=True, timeout=900, capture_output=True, text=True)
    assert f'resuming at step {max(complete)}' in out.stderr
    assert not os.path.exists(partial)
    # The log holds every step once: the rows the killed run wrote after its
    # last checkpoint were dropped when it resumed.
    assert _logged_steps(resumed) == list(range(1, total + 1))
    # The console shows progress and no library INFO chatter (Orbax logs a
    # dozen lines per checkpoint).
    assert re.search(r'step \d+/\d+ loss', out.stderr)
    ours = {name for root in ('jepa_ecg', 'experiments')
            for _, _, files in os.walk(REPO / root) for name in files if name.endswith('.py')}
    info_files = set(ABSL_INFO.findall(out.stderr))
    assert info_files and info_files <= ours, info_files - ours

    a, meta_a = checkpoint.restore_params(straight)
    b, meta_b = checkpoint.restore_params(resumed)
    assert meta_a['step'] == meta_b['step'] == total
    for key in ('params', 'target_params', 'opt_state', 'step'):
        for x, y in zip(_leaves(a[key]), _leaves(b[key])):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=key)
    # The curves agree too: same losses at every step after the restart.
    rows_a = {r['step']: r['loss'] for r in map(json.loads, open(os.path.join(straight, 'metrics.jsonl')))}
    rows_b = {r['step']: r['loss'] for r in map(json.loads, open(os.path.join(resumed, 'metrics.jsonl')))}
    for s in range(max(complete) + 1, total + 1):
        assert rows_a[s] == rows_b[s]


# Runs argv[1:] with SIGINT at its default (which an exec keeps).
_WITH_DEFAULT_SIGINT = ('import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); '
                        'os.execv(sys.argv[1], sys.argv[1:])')


def _run_until(cmd, workdir, steps, sig, tmp_path):
    """Starts a run, sends `sig` once it logged `steps` steps; returns (rc, stderr)."""
    log_path = tmp_path / f'{os.path.basename(workdir)}-{sig}.log'
    with open(log_path, 'w') as log:
        # A shell that started the tests in the background passes SIGINT on
        # ignored, and the run leaves an ignored SIGINT ignored: the child gets
        # the default back, as from a terminal.
        proc = subprocess.Popen([sys.executable, '-c', _WITH_DEFAULT_SIGINT] + cmd, env=_env(),
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.time() + 900
        while time.time() < deadline and proc.poll() is None:
            if any(s >= steps for s in _logged_steps(workdir)):
                break
            time.sleep(0.01)
        proc.send_signal(sig)
        proc.wait(timeout=120)
    return proc.returncode, log_path.read_text()


@pytest.mark.slow
def test_sigint_and_sigterm_save_the_step_and_resume_exactly(tmp_path, synthetic_tfds_dir):
    # No periodic checkpoint in reach: whatever is saved is saved by the signals.
    # Steps to spare, so each signal lands mid-run however slow the poll is.
    total = 60
    straight = str(tmp_path / 'straight')
    subprocess.run(_cmd(straight, synthetic_tfds_dir, total) + ['--config.checkpoint_every=1000'],
                   env=_env(), cwd=REPO, check=True, timeout=900, capture_output=True)
    stopped = str(tmp_path / 'stopped')
    cmd = _cmd(stopped, synthetic_tfds_dir, total) + ['--config.checkpoint_every=1000']
    saved = [0]
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Rows past the last save come from this process only (a resume drops the others).
        after = saved[-1] + 3
        rc, err = _run_until(cmd, stopped, after, sig, tmp_path)
        assert rc == 128 + sig, err[-3000:]
        assert 'Traceback' not in err and 'KeyboardInterrupt' not in err, err[-3000:]
        last = err.strip().splitlines()[-1]
        m = re.fullmatch(rf'stopped by {sig.name} at step (\d+): checkpoint saved in '
                         rf'{re.escape(stopped)}/checkpoints; run the same command to resume',
                         last)
        assert m, last
        step = int(m.group(1))
        assert after <= step < total
        # The step the line names is saved, sealed, and the newest checkpoint.
        assert max(int(d) for d in os.listdir(os.path.join(stopped, 'checkpoints'))
                   if d.isdigit()) == step
        assert os.path.exists(os.path.join(stopped, 'checkpoints', str(step),
                                           checkpoint.SHA256_FILE))
        saved.append(step)
    out = subprocess.run(cmd, env=_env(), cwd=REPO, timeout=900, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f'resuming at step {saved[-1]}' in out.stderr
    assert _logged_steps(stopped) == list(range(1, total + 1))
    a, _ = checkpoint.restore_params(straight)
    b, meta = checkpoint.restore_params(stopped)
    assert meta['step'] == total
    for key in ('params', 'target_params', 'opt_state', 'step'):
        for x, y in zip(_leaves(a[key]), _leaves(b[key])):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=key)
