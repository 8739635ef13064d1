"""What pre-training buys: train-fraction subsets, compare on run folders, the learning curve."""

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
from experiments import compare
from jepa_ecg.data import label_fraction
from jepa_ecg.data import ptbxl as data
from jepa_ecg.training import checkpoint


def _imbalanced_labels(n=2000, seed=0):
    """Multi-hot labels with PTB-XL-like imbalance: common, rare and single-record classes."""
    rng = np.random.default_rng(seed)
    prevalence = np.array([0.45, 0.25, 0.2, 0.1, 0.03, 0.008, 0.002])
    y = rng.random((n, len(prevalence))) < prevalence
    y[:, -1] = False
    y[rng.integers(n), -1] = True  # a class with one positive record
    y[~y.any(axis=1), 0] = True    # every record has a label, as in a task
    return y.astype(np.float32)


@pytest.mark.parametrize('fraction', [0.01, 0.1, 0.5])
def test_subset_is_stratified_and_has_every_class(fraction):
    y = _imbalanced_labels()
    keep = label_fraction.stratified_subset(y, fraction, seed=3)
    assert len(keep) == round(fraction * len(y)) and len(set(keep.tolist())) == len(keep)
    got, wanted = y[keep].sum(axis=0), fraction * y.sum(axis=0)
    assert (got >= 1).all(), got  # every class present, the one-record class too
    # Each class within a few records (or 15 %) of its share; a random subset
    # of 1 % misses rare classes and is off by far more.
    assert (np.abs(got - wanted) <= np.maximum(3.0, 0.15 * wanted)).all(), (got, wanted)


def test_subset_is_a_function_of_the_seed():
    y = _imbalanced_labels()
    a = label_fraction.stratified_subset(y, 0.1, seed=1)
    np.testing.assert_array_equal(a, label_fraction.stratified_subset(y, 0.1, seed=1))
    assert not np.array_equal(a, label_fraction.stratified_subset(y, 0.1, seed=2))
    np.testing.assert_array_equal(label_fraction.stratified_subset(y, 1.0, seed=1),
                                  np.arange(len(y)))


def test_coverage_stops_at_the_subset_size():
    # 10 classes with one record each, room for 3: 3 records, the rarest classes first.
    y = np.eye(10, dtype=np.float32)
    keep = label_fraction.stratified_subset(y, 0.3, seed=0)
    assert len(keep) == 3
    with pytest.raises(ValueError, match='train_fraction'):
        label_fraction.stratified_subset(y, 0.0, seed=0)


def test_train_fraction_only_touches_the_train_split():
    y = _imbalanced_labels(400)[:, :5]
    folds = np.tile([1, 2, 9, 10], 100)
    signals = np.random.default_rng(0).normal(size=(400, 1000, 12)).astype(np.float32)
    task = data.make_task(data.ArrayRecords(signals, 100.0), y, folds, np.arange(400),
                          task='superdiagnostic', classes=list('ABCDE'), fs=100.0,
                          num_samples=1000)
    sub = label_fraction.with_train_fraction(task, 0.1, seed=7)
    n = len(task.splits['train'])
    assert n > 150 and len(sub.splits['train']) == round(0.1 * n)
    for split in ('val', 'test'):
        assert sub.splits[split] is task.splits[split]
    assert set(sub.splits['train'].ecg_ids) <= set(task.splits['train'].ecg_ids)
    info = label_fraction.describe(sub)
    assert info['fraction'] == 0.1 and info['subset_seed'] == 7
    assert len(info['ecg_ids']) == info['records'] == round(0.1 * n)
    assert label_fraction.with_train_fraction(task, 1.0, seed=7) is task


# ---------------------------------------------------------------- real run folders

def _env(devices=1):
    env = dict(os.environ)
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
    env['JAX_PLATFORMS'] = 'cpu'
    return env


def _finetune(workdir, data_dir, seeds, *extra):
    proc = subprocess.run(
        [sys.executable, '-m', 'experiments.finetune',
         '--config=experiments/configs/finetune.py:linear,smoke,100hz',
         f'--config.data.data_dir={data_dir}', '--config.data.max_records_per_fold=24',
         '--config.plots=false', '--encoder=random:tiny', '--task=superdiagnostic',
         f'--seeds={seeds}', f'--workdir={workdir}', *extra],
        env=_env(), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope='module')
def two_runs(ptbxl_tfds_dir, tmp_path_factory):
    a, b = tmp_path_factory.mktemp('run_a'), tmp_path_factory.mktemp('run_b')
    _finetune(a, ptbxl_tfds_dir, 2)
    _finetune(b, ptbxl_tfds_dir, 1, '--config.seed=5', '--config.data.train_fraction=0.5')
    return a, b


def test_train_fraction_is_recorded(two_runs):
    with open(two_runs[1] / 'superdiagnostic' / 'seed0' / 'results.json') as f:
        res = json.load(f)
    sub = res['train_subset']
    assert sub['fraction'] == 0.5 and sub['subset_seed'] == 5
    assert sub['records'] == res['data']['train']['records'] == len(sub['ecg_ids'])
    assert res['config']['data']['train_fraction'] == 0.5


def test_compare_pairs_workdirs_by_task_and_seed(two_runs):
    a, b = two_runs
    res = compare.compare_runs(str(a), str(b), num_resamples=50)
    assert [(p['task'], p['seed']) for p in res['pairs']] == [('superdiagnostic', 'seed0')]
    res = compare.compare_runs(str(a), str(a / 'superdiagnostic' / 'seed1'), num_resamples=50)
    assert [p['seed'] for p in res['pairs']] == ['seed1'] and res['pairs'][0]['diff'] == 0.0
    assert len(compare.find_runs(str(a))) == 2


def test_compare_command_on_workdirs_and_a_folder_without_predictions(two_runs, tmp_path):
    a, b = two_runs
    cmd = [sys.executable, '-m', 'experiments.compare', '--num_resamples=50']
    proc = subprocess.run(cmd + [f'--a={a}', f'--b={a}'], env=_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('a - b = +0.0000') == 2 and 'mean a - b over 2 pairs' in proc.stdout
    (tmp_path / 'empty' / 'superdiagnostic' / 'seed0').mkdir(parents=True)
    proc = subprocess.run(cmd + [f'--a={a}', f'--b={tmp_path / "empty"}'], env=_env(),
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert 'no predictions found' in proc.stderr


def _sigterm_once_pretraining_logged(cmd, workdir) -> subprocess.CompletedProcess:
    """Runs `cmd`, sends SIGTERM once its pre-training logged a step; rc and stderr."""
    metrics = os.path.join(workdir, 'pretrain', 'metrics.jsonl')
    proc = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, proc.returncode, '', err)


def test_smoke_learning_curve_end_to_end(ptbxl_tfds_dir, tmp_path):
    cmd = [sys.executable, '-m', 'experiments.learning_curve',
           '--config=experiments/configs/learning_curve.py:smoke,vit_tiny,budgets=2',
           f'--config.data_dir={ptbxl_tfds_dir}', '--config.linear.data.max_records_per_fold=24',
           f'--workdir={tmp_path}']
    # A stop signal mid pre-training: one line naming the saved step, then it resumes.
    stopped = _sigterm_once_pretraining_logged(cmd, str(tmp_path))
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert 'Traceback' not in stopped.stderr, stopped.stderr[-3000:]
    assert re.fullmatch(rf'stopped by SIGTERM at step \d+: checkpoint saved in '
                        rf'{re.escape(str(tmp_path))}/pretrain/checkpoints; run the same '
                        rf'command to resume', stopped.stderr.strip().splitlines()[-1])
    proc = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'resuming at step' in proc.stderr
    with open(tmp_path / 'curve.json') as f:
        curve = json.load(f)
    assert [p['step'] for p in curve['points']] == [10, 20]
    assert (curve['recipe'], curve['learning_rate'], curve['pretrain_seed']) == ('published',
                                                                                1e-3, 0)
    assert [p['records_seen'] for p in curve['points']] == [80, 160]
    assert len(curve['random']['runs']) == 2
    for p in curve['points']:
        assert p['ci'][0] <= p['test_macro_auc'] <= p['ci'][1]
        assert [d['random_seed'] for d in p['paired']] == [0, 1]
    best = curve['best_by_validation']
    assert best['best_val_auc'] == max(p['best_val_auc'] for p in curve['points'])
    assert best['step'] in (10, 20) and 'best budget by validation AUC' in proc.stdout
    # The budgets are checkpoints of ONE run: the later one resumed the earlier.
    assert {'10', '20'} <= set(os.listdir(tmp_path / 'pretrain' / 'checkpoints'))
    assert (tmp_path / 'learning_curve.png').exists() and 'records seen' in proc.stdout
    _probe_seeds_added_later(cmd, tmp_path, curve)
    # The recipes' comparison reads the workdir (here as two seeds of one recipe);
    # with two probes per encoder its noise comes from their spread.
    cmp = subprocess.run(
        [sys.executable, '-m', 'experiments.compare_curves',
         f'--curve=published:{tmp_path},{tmp_path}', f'--out={tmp_path / "recipes"}'],
        env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert cmp.returncode == 0, cmp.stderr[-3000:]
    assert (f'published ({curve["lr_schedule"]}; 2 pre-training seeds' in cmp.stdout
            and curve['lr_schedule'].endswith('cosine to 1e-06 over the run'))
    with open(tmp_path / 'recipes.json') as f:
        summary = json.load(f)['published']
    assert [r['step'] for r in summary['rows']] == [10, 20]
    assert summary['noise_source'] == 'probe spread, 2 probes per encoder'
    assert (tmp_path / 'recipes.png').exists()
    missing = subprocess.run(
        [sys.executable, '-m', 'experiments.compare_curves', f'--curve=x:{tmp_path / "nope"}'],
        env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and 'no learning curve here' in missing.stderr
    assert 'Traceback' not in missing.stderr


def _probe_seeds_added_later(cmd, workdir, curve):
    """The same curve rerun with two probe seeds: every encoder gets a second
    probe, pre-training is not rerun, the first probes are read back."""
    proc = subprocess.run(cmd + ['--config.probe_seeds=2'], env=_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'steps 0 ->' not in proc.stderr and 'probed with 2 probe seeds' in proc.stdout
    with open(workdir / 'curve.json') as f:
        probed = json.load(f)
    assert probed['probe_seeds'] == 2
    for one, two in zip(curve['points'], probed['points']):
        assert two['probe_runs'] == [one['run'], one['run'][:-len('seed0')] + 'seed1']
        assert [p['seed'] for p in two['probes']] == [0, 1]
        assert two['probes'][0]['test_macro_auc'] == one['test_macro_auc']
        assert two['test_macro_auc'] == pytest.approx(
            np.mean([p['test_macro_auc'] for p in two['probes']]))
        assert two['best_val_auc'] == pytest.approx(
            np.mean([p['best_val_auc'] for p in two['probes']]))
        assert two['ci'][0] <= two['test_macro_auc'] <= two['ci'][1]
        assert [d['random_seed'] for d in two['paired']] == [0, 1]
    # Random encoder k's probes are runs k and k + 2: one encoder, two heads.
    band = workdir / 'random' / 'superdiagnostic'
    for k, (one, two) in enumerate(zip(curve['random']['runs'], probed['random']['runs'])):
        assert two['probe_runs'] == [str(band / f'seed{k}'), str(band / f'seed{k + 2}')]
        assert two['probes'][0]['test_macro_auc'] == one['test_macro_auc']
    enc = {k: jax.tree_util.tree_leaves(checkpoint.restore_best(str(band / f'seed{k}'))['encoder'])
           for k in range(4)}
    for x, y in zip(enc[0], enc[2]):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(enc[0], enc[1]))
