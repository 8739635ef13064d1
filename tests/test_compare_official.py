"""Smoke run of the side-by-side pre-training comparison (experiments/compare_official.py).

The PyTorch side here is experiments/torch_reference.py (the published code
is not part of the project; tests/test_official_step.py ties the two
together where it is checked out).
"""

import json
import subprocess
import sys

import pytest

pytest.importorskip(
    'torch', reason="torch is not installed (pip install -e '.[torch]'; make test installs it)")

from experiments import side_by_side  # noqa: E402

# Full tier (make test-all): see README's test tiers.
pytestmark = pytest.mark.slow


def _side_by_side(tmp_path, data_dir, *extra):
    return subprocess.run(
        [sys.executable, '-m', 'experiments.compare_official', '--what=pretrain',
         '--official_impl=reference', '--budget=smoke,vit_tiny', '--max_records_per_fold=24',
         f'--workdir={tmp_path}', f'--data_dir={data_dir}', *extra],
        capture_output=True, text=True, timeout=900)


def test_pretrain_side_by_side_smoke(ptbxl_tfds_dir, tmp_path):
    # A seed stopped after step 10 goes on from there, exactly as if it had
    # not stopped (an uninterrupted run to step 15, elsewhere, is the yardstick).
    whole = tmp_path / 'whole'
    proc = _side_by_side(whole, ptbxl_tfds_dir, '--seeds=1', '--log_every=5', '--stop_at_step=15')
    assert proc.returncode == 0, proc.stderr[-3000:]
    (saved,) = (whole / 'seed1' / 'pair_checkpoint').iterdir()
    uninterrupted = json.loads((saved / 'progress.json').read_text())['rows']
    assert [r['step'] for r in uninterrupted] == [5, 10, 15]
    assert not (whole / side_by_side.RESULT_FILE).exists()
    proc = _side_by_side(tmp_path, ptbxl_tfds_dir, '--seeds=1', '--log_every=5', '--stop_at_step=10')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'stopped after step 10' in proc.stdout
    proc = _side_by_side(tmp_path, ptbxl_tfds_dir, '--seeds=1', '--log_every=5')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'going on from step 10' in proc.stdout and 'seed 1 step 5:' not in proc.stdout
    assert not (tmp_path / 'seed1' / 'pair_checkpoint').exists()
    first = json.loads((tmp_path / side_by_side.RESULT_FILE).read_text())['seeds']
    resumed = first[0]['rows'][2]
    for side in ('ours', 'official'):
        for k in ('loss', 'loss_mean', 'target_std', 'grad_norm', 'lr', 'momentum'):
            assert resumed[side][k] == pytest.approx(uninterrupted[2][side][k], rel=1e-6), (side, k)
    # Seeds run in separate sittings pool into one result; a finished seed is not re-run.
    assert [s['seed'] for s in first] == [1]
    proc = _side_by_side(tmp_path, ptbxl_tfds_dir, '--seeds=0,1', '--log_every=5')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'seed 1: kept from' in proc.stdout and 'seed 1 step' not in proc.stdout
    result = json.loads((tmp_path / side_by_side.RESULT_FILE).read_text())
    assert [s['seed'] for s in result['seeds']] == [0, 1]
    assert result['seeds'][1] == first[0]
    for s in result['seeds']:
        assert [r['step'] for r in s['rows']] == [5, 10, 15, 20]
        for row in s['rows']:
            for side in ('ours', 'official'):
                assert set(side_by_side.METRICS) <= set(row[side]), (side, row[side])
            # Same schedules on both sides, step for step.
            for k in ('lr', 'wd', 'momentum'):
                assert row['ours'][k] == pytest.approx(row['official'][k], rel=1e-5), k
        # Same batches, same recipe: the two losses start and fall together.
        first, last = s['rows'][0], s['rows'][-1]
        assert last['ours']['loss_mean'] < first['ours']['loss_mean']
        assert last['official']['loss_mean'] < first['official']['loss_mean']
        assert abs(last['ours']['loss'] - last['official']['loss']) < 0.1 * last['official']['loss']
        for side in ('ours', 'official'):
            assert 0 < s['probe'][side]['test_macro_auc'] < 1
        assert 'diff' in s['probe']['paired_ours_minus_official']
    assert len(result['spreads']) == 4 and 'ours_mean_within_official' in result['spreads'][0]['loss']
    assert (tmp_path / side_by_side.PLOT_FILE).stat().st_size > 0
    assert 'linear test macro AUC ours' in proc.stdout
    # Other settings in the same workdir: a clear refusal, the result untouched.
    before = (tmp_path / side_by_side.RESULT_FILE).read_text()
    proc = _side_by_side(tmp_path, ptbxl_tfds_dir, '--seeds=2', '--log_every=4')
    assert proc.returncode != 0
    assert 'other settings' in proc.stderr and 'log_every' in proc.stderr, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
    assert (tmp_path / side_by_side.RESULT_FILE).read_text() == before


def test_same_init_makes_the_two_trajectories_agree(ptbxl_tfds_dir, tmp_path):
    """From the same initial weights, same batches and masks, the two sides
    stay together to float tolerance over 20 steps (own inits: they differ)."""
    proc = subprocess.run(
        [sys.executable, '-m', 'experiments.compare_official', '--what=pretrain',
         '--official_impl=reference', '--budget=smoke,vit_tiny', '--seeds=3', '--log_every=5',
         '--max_records_per_fold=24', '--linear_steps=4', '--same_init', f'--workdir={tmp_path}',
         f'--data_dir={ptbxl_tfds_dir}'], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / side_by_side.RESULT_FILE).read_text())
    assert result['same_init']
    for row in result['seeds'][0]['rows']:
        for k in ('loss', 'target_std', 'grad_norm'):
            assert row['ours'][k] == pytest.approx(row['official'][k], rel=1e-3), (row['step'], k)


def test_train_step_timing_prints_the_ratio():
    proc = subprocess.run(
        [sys.executable, '-m', 'experiments.compare_official', '--what=train_step',
         '--official_impl=reference', '--variant=tiny', '--batch=4', '--fs=100', '--reps=2',
         '--steps_per_rep=1', '--warmup=1'], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('ratio') >= 2
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary['what'] == 'train_step' and summary['official_impl'] == 'reference'
    assert summary['ratio'] > 0 and len(summary['ratio_reps']) == 2


def test_pretrain_needs_a_workdir():
    proc = subprocess.run(
        [sys.executable, '-m', 'experiments.compare_official', '--what=pretrain',
         '--official_impl=reference'], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and '--workdir' in proc.stderr
