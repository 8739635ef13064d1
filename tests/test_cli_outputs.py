"""`jepa-ecg embed`/`predict` outputs: parts and resume, the claim on --out, formats, memory."""

import csv
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import wfdb

from jepa_ecg import cli
from jepa_ecg.ecg.leads import LEADS
from jepa_ecg.inference import encoder as encoder_lib
from jepa_ecg.inference import stream
from jepa_ecg.models import build_encoder, model_config

FS = 100.0  # the tiny test model's rate; a patch is 5 samples = 0.05 s
STATS = {'mean': [0.0] * 12, 'std': [0.5] * 12, 'source': 'test'}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def encoder_dir(tmp_path_factory):
    cfg = model_config('tiny', fs=FS)
    x = np.zeros((1, cfg.window_samples, 12), np.float32)
    params = build_encoder(cfg).init(jax.random.PRNGKey(0), x)['params']
    path = str(tmp_path_factory.mktemp('enc') / 'tiny')
    encoder_lib.save_encoder(path, cfg, params, lead_stats=STATS, provenance={'kind': 'test'})
    return path


def ecg(seconds, fs=FS, seed=0):
    t = np.arange(int(round(seconds * fs))) / fs
    rng = np.random.default_rng(seed)
    f = rng.uniform(0.5, 15, 12)
    return (0.3 * np.sin(2 * np.pi * f * t[:, None] + rng.uniform(0, 6, 12))).astype(np.float32)


def write_records(folder, count, seconds):
    """`count` records of `seconds` each, in turn NPZ, WFDB, NPY and CSV; returns their paths.

    NPY and CSV need `--fs 100 --leads I,...` (NPZ and WFDB say so themselves).
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        sig, name = ecg(seconds, seed=i), f'r{i:03d}'
        if i % 4 == 0:
            np.savez(folder / f'{name}.npz', signal=sig, fs=FS, leads=np.asarray(LEADS))
            paths.append(folder / f'{name}.npz')
        elif i % 4 == 1:
            wfdb.wrsamp(name, fs=FS, units=['mV'] * 12, sig_name=list(LEADS),
                        p_signal=sig.astype(np.float64), fmt=['16'] * 12,
                        adc_gain=[10000.0] * 12, baseline=[0] * 12, write_dir=str(folder))
            paths.append(folder / f'{name}.hea')
        elif i % 4 == 2:
            np.save(folder / f'{name}.npy', sig)
            paths.append(folder / f'{name}.npy')
        else:
            np.savetxt(folder / f'{name}.csv', sig, delimiter=',', fmt='%.6f',
                       header=','.join(LEADS), comments='')
            paths.append(folder / f'{name}.csv')
    return [str(p) for p in paths]


def run_cli(args, capsys):
    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def cli_process(args, **kwargs):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
    return subprocess.Popen([sys.executable, '-m', 'jepa_ecg.cli'] + [str(a) for a in args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def assert_same_embeddings(a, b):
    za, zb = np.load(a), np.load(b)
    for key in ('names', 'paths', 'num_windows', 'failed'):
        np.testing.assert_array_equal(za[key], zb[key], err_msg=key)
    for key in ('mean', 'register'):
        # Batches group other windows after a resume: equal up to float32 rounding.
        np.testing.assert_allclose(za[key], zb[key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGKILL], ids=['SIGTERM', 'SIGKILL'])
def test_interrupted_embed_keeps_parts_and_resumes(tmp_path, encoder_dir, capsys, sig):
    paths = write_records(tmp_path / 'in', 24, seconds=120)
    args = ['embed', tmp_path / 'in', '--checkpoint', encoder_dir, '--stride-seconds', 0.25,
            '--batch-size', 8, '--workers', 1, '--save-every', 1, '--quiet', '--fs', FS,
            '--leads', ','.join(LEADS)]
    clean = tmp_path / 'clean.npz'
    code, _, stderr = run_cli(args + ['--out', clean], capsys)
    assert code == 0, stderr
    out = tmp_path / 'emb.npz'
    parts = tmp_path / 'emb.npz.parts'
    proc = cli_process(args + ['--out', out])
    # Generous: the first part waits for imports and compilation on a loaded machine.
    deadline = time.time() + 600
    while not (parts / 'part-00001.npz').exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, 'no part written within 600 s'
        time.sleep(0.02)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    if sig == signal.SIGTERM:
        assert proc.returncode == 1, stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and 'interrupted (SIGTERM)' in lines[0], stderr
        assert '--resume' in lines[0] and str(parts) in lines[0]
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    saved = sorted(p for p in os.listdir(parts) if p.startswith('part-'))
    assert saved
    # A rerun without --resume does not silently start over.
    code, _, stderr = run_cli(args + ['--out', out], capsys)
    assert code == 1 and '--resume' in stderr and 'Traceback' not in stderr
    code, stdout, stderr = run_cli(args + ['--out', out, '--resume'], capsys)
    assert code == 0, stderr
    done = int(stderr.split('resuming: ')[1].split()[0])
    assert 1 <= done < len(paths), stderr  # stopped part-way, resumed the rest
    assert f'embedded {len(paths) - done} records' in stdout
    assert_same_embeddings(out, clean)
    assert sorted(os.listdir(tmp_path)) == ['clean.npz', 'emb.npz', 'in']  # parts, lock gone


@pytest.mark.slow
def test_second_run_on_the_same_out_stops_at_once(tmp_path, encoder_dir, capsys):
    write_records(tmp_path / 'in', 2, seconds=10)
    out = tmp_path / 'emb.npz'
    holder = subprocess.Popen(
        [sys.executable, '-c', 'import sys; from jepa_ecg.inference import outputs\n'
         f'with outputs.claim({str(out)!r}):\n    print("held", flush=True); sys.stdin.read()'],
        env=dict(os.environ, PYTHONPATH=ROOT), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        args = ['embed', tmp_path / 'in', '--checkpoint', encoder_dir, '--out', out, '--quiet']
        start = time.time()
        code, stdout, stderr = run_cli(args, capsys)
        assert code == 1 and stdout == ''
        assert len(stderr.strip().splitlines()) == 1, stderr
        assert 'being written by another run' in stderr and f'pid {holder.pid} on ' in stderr
        assert not out.exists() and not os.path.exists(f'{out}.parts')
        assert time.time() - start < 30  # at once: no model was loaded or run
    finally:
        holder.kill()  # dies holding the lock: the kernel releases it
        holder.wait()
    assert os.path.exists(f'{out}.lock')  # left behind by the killed holder
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    assert len(np.load(out)['names']) == 2 and not os.path.exists(f'{out}.lock')


def test_output_format_follows_the_extension(tmp_path, encoder_dir, capsys):
    paths = write_records(tmp_path / 'in', 3, seconds=12)
    args = ['embed', tmp_path / 'in', '--checkpoint', encoder_dir, '--quiet', '--fs', FS,
            '--leads', ','.join(LEADS), '--out']
    code, _, stderr = run_cli(args + [tmp_path / 'emb.npz'], capsys)
    assert code == 0, stderr
    code, _, stderr = run_cli(args + [tmp_path / 'emb.csv'], capsys)
    assert code == 0, stderr
    z = np.load(tmp_path / 'emb.npz')
    with open(tmp_path / 'emb.csv', newline='') as f:
        rows = list(csv.reader(f))
    assert rows[0] == (['record', 'path'] + [f'mean_{i}' for i in range(32)]
                       + [f'register_{i}' for i in range(32)])
    assert [r[0] for r in rows[1:]] == list(z['names']) and [r[1] for r in rows[1:]] == paths
    values = np.asarray([r[2:] for r in rows[1:]], np.float32)
    np.testing.assert_array_equal(values, np.concatenate([z['mean'], z['register']], 1))
    for bad in ('emb.txt', 'emb'):
        code, stdout, stderr = run_cli(args + [tmp_path / bad], capsys)
        assert code == 2 and stdout == '' and len(stderr.strip().splitlines()) == 1
        assert 'name it .npz or .csv' in stderr and not (tmp_path / bad).exists()


def test_stride_below_one_patch_is_a_usage_error(tmp_path, encoder_dir, capsys):
    write_records(tmp_path / 'in', 1, seconds=12)
    code, stdout, stderr = run_cli(['embed', tmp_path / 'in', '--checkpoint', encoder_dir,
                                    '--out', tmp_path / 'e.npz', '--stride-seconds', 0.001,
                                    '--quiet'], capsys)
    assert code == 2 and stdout == '' and len(stderr.strip().splitlines()) == 1
    assert 'below one patch (0.05 s at 100 Hz)' in stderr and not (tmp_path / 'e.npz').exists()


def test_windows_are_cut_a_batch_at_a_time():
    x = ecg(7200)  # a 2-hour record
    wins, valid = stream.lazy_windows(x, length=1000, stride=5, patch_size=5, fs=FS)
    assert len(wins) == 143_801 and valid == 200  # every 0.05 s, plus one at the end
    assert isinstance(wins, stream.LazyWindows)  # nothing cut yet
    head = np.asarray(wins[:3])
    np.testing.assert_array_equal(head[2], x[10:1010])
    np.testing.assert_array_equal(np.asarray(wins[len(wins) - 1:])[0], x[-1000:])
    short = x[:2503]
    np.testing.assert_array_equal(
        np.asarray(stream.lazy_windows(short, length=1000, stride=300, patch_size=5, fs=FS)[0]),
        stream.cut_windows(short, length=1000, stride=300, patch_size=5, fs=FS)[0])

    # Pooling as batches finish equals pooling every window's output at the end.
    def forward(w, v):
        return np.stack([w.mean((1, 2)), w.std((1, 2))], 1) + v[:, None]

    records = [x[:2000], x[:1234], x[:5000]]
    done = []
    on = stream.WindowBatcher(forward, 16, on_done=lambda i, m, n: done.append((i, m, n)))
    off = stream.WindowBatcher(forward, 16)
    for r in records:
        on.add(*stream.lazy_windows(r, length=1000, stride=50, patch_size=5, fs=FS))
        off.add(*stream.cut_windows(r, length=1000, stride=50, patch_size=5, fs=FS))
    assert on.finish() == []
    outputs = off.finish()
    assert [i for i, _, _ in done] == [0, 1, 2]
    assert [n for _, _, n in done] == [len(o) for o in outputs]
    np.testing.assert_allclose(np.stack([m for _, m, _ in done]), stream.pool(outputs, (2,)),
                               rtol=1e-6)
