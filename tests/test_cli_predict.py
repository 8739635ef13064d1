"""`jepa-ecg predict`: classifier directories and experiments/finetune.py run folders."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jepa_ecg import cli
from jepa_ecg.inference import classifier as classifier_lib
from jepa_ecg.inference import encoder as encoder_lib
from jepa_ecg.inference import runs
from jepa_ecg.ecg.leads import LEADS
from jepa_ecg.models import model_config
from jepa_ecg.models.classifier import build_classifier, init_classifier

FS = 100.0
CLASSES = ['NORM', 'MI', 'STTC', 'CD', 'HYP']
STATS = {'mean': [0.0] * 12, 'std': [0.3] * 12, 'source': 'ptb-xl train folds (test)'}


def make_params(head, seed=0):
    cfg = model_config('tiny', fs=FS)
    model = build_classifier(cfg, len(CLASSES), head=head)
    params = init_classifier(model, jax.random.PRNGKey(seed), 250)
    # Larger head weights so the probabilities differ visibly between records.
    params = jax.tree_util.tree_map(np.asarray, params)
    params['head'] = jax.tree_util.tree_map(lambda a: a * 50, params['head'])
    return cfg, model, params


def signals(n, seconds=10, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * FS)) / FS
    return [(np.sin(2 * np.pi * rng.uniform(0.5, 3, 12) * t[:, None]) * rng.uniform(0.2, 1, 12)
             ).astype(np.float32) for _ in range(n)]


def manual_probs(model, params, sig, *, single_label=False):
    x = np.clip((sig - np.asarray(STATS['mean'])) / np.asarray(STATS['std']), -5, 5)
    wins = np.stack([x[s:s + 250] for s in range(0, len(x) - 250 + 1, 125)]).astype(np.float32)
    logits = np.asarray(model.apply({'params': params}, wins)).mean(0)
    if single_label:
        e = np.exp(logits - logits.max())
        return e / e.sum()
    return 1 / (1 + np.exp(-logits))


def write_npz(directory, sigs):
    directory.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(sigs):
        np.savez(directory / f'r{i}.npz', signal=s, fs=FS, leads=np.asarray(LEADS))


def read_csv(path):
    with open(path) as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


@pytest.mark.parametrize('head', ['attentive', 'register'])
def test_predict_classifier_dir(tmp_path, head, capsys):
    cfg, model, params = make_params(head)
    clf_dir = tmp_path / 'clf'
    classifier_lib.save_classifier(str(clf_dir), cfg, params, head=head, class_names=CLASSES,
                                lead_stats=STATS, task='superdiagnostic')
    sigs = signals(3)
    write_npz(tmp_path / 'in', sigs)
    out = tmp_path / 'preds.csv'
    code = cli.main(['predict', str(tmp_path / 'in'), '--checkpoint', str(clf_dir), '--out',
                     str(out), '--quiet'])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert 'records/s' in captured.out
    header, rows = read_csv(out)
    assert header == ['record', 'path'] + CLASSES
    assert [r[0] for r in rows] == ['r0', 'r1', 'r2']
    got = np.asarray([[float(v) for v in r[2:]] for r in rows])
    want = np.stack([manual_probs(model, params, s) for s in sigs])
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert got.std(0).max() > 1e-5  # records get different predictions
    # The API gives the same numbers.
    clf = runs.load_classifier(str(clf_dir))
    np.testing.assert_allclose(clf.predict(sigs, FS, list(LEADS)), want, atol=2e-5)


def write_finetune_run(run, cfg, params, *, task, classes, with_stats=True):
    """A run folder as experiments/finetune.py writes it (results.json + best/)."""
    os.makedirs(run, exist_ok=True)
    options = ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m['val_auc'],
                                           best_mode='max', enable_async_checkpointing=False)
    with ocp.CheckpointManager(os.path.join(run, 'best'), options=options) as manager:
        manager.save(100, args=ocp.args.StandardSave(params), metrics={'val_auc': 0.8},
                     force=True)
        manager.wait_until_finished()
    results = {'protocol': 'linear', 'task': task, 'head': 'attentive', 'model': cfg.to_dict(),
               'config': {'head': 'attentive', 'head_bias': False},
               'data': {'classes': classes, 'fs': FS}, 'crop_samples': 250,
               'eval_stride_samples': 125, 'best_val_auc': 0.8}
    if with_stats:
        results['lead_stats'] = {'mean': STATS['mean'], 'std': STATS['std']}
    with open(os.path.join(run, 'results.json'), 'w') as f:
        json.dump(results, f)


def test_predict_finetune_workdir_and_export(tmp_path, capsys):
    cfg, model, params = make_params('attentive', seed=1)
    work = tmp_path / 'ft'
    write_finetune_run(str(work / 'st_mem' / 'seed0'), cfg, params, task='st_mem',
                       classes=CLASSES)
    sigs = signals(2, seed=1)
    write_npz(tmp_path / 'in', sigs)
    out = tmp_path / 'p.csv'
    code = cli.main(['predict', str(tmp_path / 'in'), '--checkpoint', str(work), '--out',
                     str(out), '--quiet'])
    assert code == 0, capsys.readouterr().err
    _, rows = read_csv(out)
    got = np.asarray([[float(v) for v in r[2:]] for r in rows])
    want = np.stack([manual_probs(model, params, s, single_label=True) for s in sigs])
    np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_allclose(got.sum(1), 1, atol=1e-5)  # softmax for the single-label task
    # Exported to a self-contained classifier directory: same predictions.
    assert cli.main(['export', str(work), '--out', str(tmp_path / 'clf')]) == 0
    assert os.path.exists(tmp_path / 'clf' / 'classifier.json')
    out2 = tmp_path / 'p2.csv'
    assert cli.main(['predict', str(tmp_path / 'in'), '--checkpoint', str(tmp_path / 'clf'),
                     '--out', str(out2), '--quiet']) == 0
    assert read_csv(out2)[1] == rows


def test_predict_without_stats_needs_a_choice(tmp_path, capsys):
    cfg, _, params = make_params('attentive')
    run = tmp_path / 'run'
    write_finetune_run(str(run), cfg, params, task='all', classes=CLASSES, with_stats=False)
    write_npz(tmp_path / 'in', signals(1))
    args = ['predict', str(tmp_path / 'in'), '--checkpoint', str(run), '--out',
            str(tmp_path / 'p.csv'), '--quiet']
    assert cli.main(args) == 2
    assert '--stats' in capsys.readouterr().err
    stats = tmp_path / 'stats.json'
    stats.write_text(json.dumps(STATS))
    assert cli.main(args + ['--stats', str(stats)]) == 0
    assert cli.main(args + ['--normalize=record']) == 0


def test_predict_rejects_an_encoder(tmp_path, capsys):
    cfg, _, params = make_params('attentive')
    encoder_lib.save_encoder(str(tmp_path / 'enc'), cfg, params['encoder'], lead_stats=STATS)
    write_npz(tmp_path / 'in', signals(1))
    code = cli.main(['predict', str(tmp_path / 'in'), '--checkpoint', str(tmp_path / 'enc'),
                     '--out', str(tmp_path / 'p.csv')])
    assert code == 2 and 'not a fine-tuned classifier' in capsys.readouterr().err


_CLI_WITH_SIGINT = ('import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); '
                    "runpy.run_module('jepa_ecg.cli', run_name='__main__', alter_sys=True)")


@pytest.mark.slow
def test_predict_interrupted_by_sigint_resumes_and_writes_npz(tmp_path, capsys):
    cfg, _, params = make_params('attentive')
    clf_dir = tmp_path / 'clf'
    classifier_lib.save_classifier(str(clf_dir), cfg, params, head='attentive',
                                   class_names=CLASSES, lead_stats=STATS)
    # Enough work after the first part (48 ten-minute records, about 480
    # windows a file) that the run is still going many seconds after the
    # signal is sent, even on a loaded machine.
    write_npz(tmp_path / 'in', signals(48, seconds=600))
    args = ['predict', str(tmp_path / 'in'), '--checkpoint', str(clf_dir), '--batch-size', '1',
            '--workers', '1', '--save-every', '1', '--quiet', '--out']
    assert cli.main(args + [str(tmp_path / 'clean.csv')]) == 0
    out, parts = tmp_path / 'preds.csv', tmp_path / 'preds.csv.parts'
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # A child inherits an ignored SIGINT from a shell that started the tests in
    # the background (`cmd &` without job control), and Python then leaves it
    # ignored: the child restores Python's own handler, as a terminal run has.
    proc = subprocess.Popen([sys.executable, '-c', _CLI_WITH_SIGINT] + args + [str(out)],
                            env=dict(os.environ, PYTHONPATH=root), stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    # Generous: the first part waits for imports and compilation on a loaded machine.
    deadline = time.time() + 600
    while not (parts / 'part-00001.npz').exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    sent = time.time()
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1 and 'interrupted (SIGINT)' in stderr, (
        f'rc {proc.returncode} {time.time() - sent:.1f} s after the signal, parts '
        f'{sorted(os.listdir(parts)) if parts.exists() else None}: {stderr[-3000:]}')
    assert 'Traceback' not in stderr and not out.exists()
    capsys.readouterr()
    assert cli.main(args + [str(out), '--resume']) == 0, capsys.readouterr().err
    assert 'resuming: ' in capsys.readouterr().err
    header, rows = read_csv(out)
    clean_header, clean_rows = read_csv(tmp_path / 'clean.csv')
    assert header == clean_header and [r[:2] for r in rows] == [r[:2] for r in clean_rows]
    got = np.asarray([[float(v) for v in r[2:]] for r in rows])
    want = np.asarray([[float(v) for v in r[2:]] for r in clean_rows])
    np.testing.assert_allclose(got, want, atol=2e-6)
    # .npz holds the same probabilities unrounded.
    assert cli.main(args + [str(tmp_path / 'preds.npz')]) == 0
    z = np.load(tmp_path / 'preds.npz')
    assert list(z['classes']) == CLASSES and list(z['names']) == [r[0] for r in rows]
    np.testing.assert_allclose(z['probabilities'], want, atol=1e-6)
