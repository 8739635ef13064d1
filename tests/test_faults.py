"""Faults: damaged checkpoints and runs, and bad input at every entry point.

Each test names the fault class of issue 12 it covers. What a user sees is
asserted: one warning and the previous good checkpoint, or one clear line
naming the file/option; never a traceback, a hang or silent nonsense.
"""

import glob
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from jepa_ecg import cli
from jepa_ecg.ecg.leads import LEADS
from jepa_ecg.models.config import model_config_from
from jepa_ecg.training import checkpoint, metrics_writer
from jepa_ecg.training import jepa_loop as loop
from test_loop import _batches, _config


def _damage(step_dir):
    """Overwrites 64 bytes in the middle of a checkpoint's largest array data file."""
    files = [f for f in glob.glob(os.path.join(step_dir, '**', '*'), recursive=True)
             if os.path.isfile(f) and os.sep + 'd' + os.sep in f]
    path = max(files, key=os.path.getsize)
    with open(path, 'r+b') as f:
        f.seek(os.path.getsize(path) // 2)
        data = f.read(64)
        f.seek(os.path.getsize(path) // 2)
        f.write(bytes((b + 0x5A) % 256 for b in data))  # never undone by a second call
    return path


def _steps(workdir):
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())


def _warnings(caplog, text):
    return [r for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


@pytest.fixture(scope='module')
def damaged_run(tmp_path_factory):
    """A real 4-step pre-training run (checkpoints 2 and 4) whose step 4 is damaged."""
    workdir = str(tmp_path_factory.mktemp('run'))
    c = _config(4)
    c.keep_checkpoints = 3
    cfg = model_config_from(c)
    loop.train_and_evaluate(c, workdir, input_iterator_fn=_batches(cfg, 4))
    assert 2 in _steps(workdir) and max(_steps(workdir)) == 4
    assert os.path.exists(os.path.join(workdir, 'checkpoints', '4', checkpoint.SHA256_FILE))
    _damage(os.path.join(workdir, 'checkpoints', '4'))
    return workdir, cfg


# ------------------------------------------------ class: a corrupt newest checkpoint
@pytest.mark.slow
def test_resume_skips_a_damaged_newest_checkpoint(damaged_run, caplog):
    workdir, cfg = damaged_run
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger='absl')  # a CLI test may have quietened absl
    c = _config(6)
    c.keep_checkpoints = 3
    summary = loop.train_and_evaluate(c, workdir, input_iterator_fn=_batches(cfg, 4))
    assert summary['step'] == 6
    warned = _warnings(caplog, 'do not restore')
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]
    assert 'step 4' in warned[0].getMessage() and 'step 2' in warned[0].getMessage()
    assert any('resuming at step 2' in r.getMessage() for r in caplog.records)
    # The damaged one was moved aside (kept for a look), and step 4 saved anew.
    assert os.path.isdir(os.path.join(workdir, checkpoint.DAMAGED_DIR, '4'))
    assert 4 in _steps(workdir) and max(_steps(workdir)) == 6
    # The log holds every step once.
    assert [r['step'] for r in metrics_writer.read_metrics(workdir)] == list(range(1, 7))
    _, meta = checkpoint.restore_params(workdir)
    assert meta['step'] == 6


def test_export_and_embed_skip_a_damaged_newest_checkpoint(damaged_run, tmp_path, caplog,
                                                           capsys):
    workdir, _ = damaged_run
    newest = max(_steps(workdir))
    _damage(os.path.join(workdir, 'checkpoints', str(newest)))
    good = max(s for s in _steps(workdir) if s < newest)
    caplog.set_level(logging.WARNING)

    out = tmp_path / 'enc'
    assert cli.main(['export', workdir, '--out', str(out)]) == 0, capsys.readouterr().err
    assert len(_warnings(caplog, 'do not restore')) == 1
    doc = json.loads((out / 'encoder.json').read_text())
    assert doc['provenance']['step'] == good
    # A read-only user never moves a run's files.
    assert newest in _steps(workdir)

    caplog.clear()
    rng = np.random.default_rng(0)
    np.savez(tmp_path / 'rec.npz', signal=rng.standard_normal((1000, 12)).astype(np.float32),
             fs=100.0, leads=np.asarray(LEADS))
    emb = tmp_path / 'emb.npz'
    code = cli.main(['embed', str(tmp_path / 'rec.npz'), '--checkpoint', workdir,
                     '--normalize=record', '--out', str(emb), '--quiet'])
    assert code == 0, capsys.readouterr().err
    assert len(_warnings(caplog, 'do not restore')) == 1
    with np.load(emb) as z:
        assert np.isfinite(z['mean']).all() and z['mean'].shape[0] == 1


@pytest.mark.slow
def test_no_checkpoint_restores_is_a_clear_error(tmp_path, damaged_run, capsys):
    workdir, cfg = damaged_run
    broken = tmp_path / 'broken'
    os.makedirs(broken / 'checkpoints')
    for step in _steps(workdir):
        src = os.path.join(workdir, 'checkpoints', str(step))
        dst = str(broken / 'checkpoints' / str(step))
        subprocess.run(['cp', '-r', src, dst], check=True)
        _damage(dst)
    with pytest.raises(checkpoint.CheckpointError, match=f'no checkpoint in .*{broken}.* restores'):
        checkpoint.restore_params(str(broken))
    assert cli.main(['export', str(broken), '--out', str(tmp_path / 'enc')]) == 2
    err = capsys.readouterr().err
    assert 'error: no checkpoint in' in err and str(broken) in err and 'Traceback' not in err
    # Resuming stops too, and moves nothing (a changed config fails the same way).
    with pytest.raises(checkpoint.CheckpointError, match=str(broken)):
        loop.train_and_evaluate(_config(6), str(broken), input_iterator_fn=_batches(cfg, 4))
    assert not os.path.exists(broken / checkpoint.DAMAGED_DIR)


def test_damaged_best_checkpoint_of_a_finetune_run_names_the_run(tmp_path, capsys):
    from test_cli_predict import CLASSES, make_params, signals, write_finetune_run, write_npz
    cfg, _, params = make_params('attentive')
    run = str(tmp_path / 'ft' / 'superdiagnostic' / 'seed0')
    write_finetune_run(run, cfg, params, task='superdiagnostic', classes=CLASSES)
    shutil.rmtree(os.path.join(run, checkpoint.BEST_DIR))  # saved as finetune_loop saves it:
    with checkpoint.best_manager(run) as manager:
        checkpoint.save_best(manager, 100, params, 0.8)
    write_npz(tmp_path / 'in', signals(1))
    args = ['predict', str(tmp_path / 'in'), '--checkpoint', run, '--out',
            str(tmp_path / 'p.csv'), '--quiet']
    assert cli.main(args) == 0, capsys.readouterr().err
    _damage(os.path.join(run, checkpoint.BEST_DIR, '100'))
    # A run keeps only its best weights: nothing older to fall back on.
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert f'no checkpoint in {run}/best restores' in err and 'Traceback' not in err, err


# ------------------------------------------- class: inputs that cannot be a usable ECG
@pytest.mark.parametrize('fs', [1.0, 10.0, 1e6])
def test_record_at_an_implausible_stored_rate_is_refused(tmp_path, fs):
    from jepa_ecg.ecg import files as files_lib
    path = tmp_path / 'odd.npz'
    np.savez(path, signal=np.zeros((5000, 12), np.float32) + 0.1, fs=fs,
             leads=np.asarray(LEADS))
    with pytest.raises(files_lib.RecordReadError, match=r'odd.npz.*not a plausible ECG rate'):
        files_lib.read_record(str(path))


# ------------------------------------------------------- first run: PTB-XL not built
@pytest.mark.slow
def test_finetune_without_ptbxl_names_the_build_command(tmp_path):
    empty, workdir = tmp_path / 'tfds', tmp_path / 'ft'
    empty.mkdir()
    proc = subprocess.run(
        [sys.executable, '-m', 'experiments.finetune',
         '--config=experiments/configs/finetune.py:linear,smoke', '--encoder=random:tiny',
         '--task=superdiagnostic', f'--config.data.data_dir={empty}', f'--workdir={workdir}'],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert 'error: PTB-XL is not built' in proc.stderr
    assert 'python -m tfds_builders ptb_xl' in proc.stderr
    assert 'Traceback' not in proc.stderr and not workdir.exists()
