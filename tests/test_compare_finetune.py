"""The linear protocol by jepa_ecg and by the published evaluation, side by side
(experiments/compare_finetune.py through `compare_official --what=finetune`).

With the same encoder, head initialisation and batches and no dropout (the
frozen encoder of the linear protocol), the two sides must give the same
validation curve and the same test predictions to float32 tolerance.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from experiments import compare_finetune as cf
from jepa_ecg.inference import torch_import
from jepa_ecg.models.config import model_config

STEPS = 8
# Validation AUC of the two sides at the same step. Early in the linear
# protocol on a random encoder a fold's probabilities lie within ~1e-3 of each
# other, neighbouring records a few float32 steps apart, so a last-bit
# difference between the implementations can tie or untie one pair of records:
# one pair of the 32-record smoke fold moves the macro AUC by ~6e-4.
VAL_AUC_TOL = 2e-3
# Test-fold probabilities of the best-validation weights (they agree to ~3e-7).
PROB_TOL = 1e-5


def _random_encoder_state(cfg, rng) -> dict:
    d, hidden = cfg.dim, int(cfg.dim * cfg.mlp_ratio)
    shapes = {'patch_embed.proj.weight': (d, cfg.num_leads, cfg.patch_size),
              'registers': (1, cfg.num_registers, d), 'norm.weight': (d,)}
    if cfg.bias:
        shapes.update({'patch_embed.proj.bias': (d,), 'norm.bias': (d,)})
    for i in range(cfg.depth):
        b = f'blocks.{i}.'
        layers = {'attn.qkv': (3 * d, d, cfg.qkv_bias), 'attn.proj': (d, d, cfg.bias),
                  'mlp.fc1': (hidden, d, cfg.bias), 'mlp.fc2': (d, hidden, cfg.bias)}
        for name, (out, inp, bias) in layers.items():
            shapes[f'{b}{name}.weight'] = (out, inp)
            if bias:
                shapes[f'{b}{name}.bias'] = (out,)
        for norm in ('norm1', 'norm2'):
            shapes[f'{b}{norm}.weight'] = (d,)
            if cfg.bias:
                shapes[f'{b}{norm}.bias'] = (d,)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


@pytest.mark.parametrize('bias', [False, True])
def test_encoder_state_dict_inverts_the_import(bias):
    cfg = model_config('tiny', fs=100, bias=bias, qkv_bias=bias)
    state = _random_encoder_state(cfg, np.random.default_rng(0))
    back = cf.encoder_state_dict(torch_import.convert_encoder_state(state, cfg), cfg)
    assert set(back) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)


def _side(curve, auc):
    return {'val_curve': [{'step': s, 'val_auc': a} for s, a in curve], 'best_val_auc': auc,
            'test_macro_auc': auc, 'ci': [auc - 0.1, auc + 0.1], 'seconds': 60.0}


def test_seed_entry_table_and_pooling_rules(tmp_path):
    official = {**_side([(2, 0.5), (4, 0.7)], 0.7), 'test_predictions': np.zeros(3)}
    paired = {'diff': 0.01, 'ci_low': -0.02, 'ci_high': 0.04, 'p_value': 0.5}
    entry = cf.seed_entry(3, _side([(2, 0.51), (4, 0.69), (6, 0.9)], 0.71), official, paired)
    assert entry['val_auc_max_abs_diff'] == pytest.approx(0.01)  # common steps only
    assert 'test_predictions' not in entry['official']
    json.dumps(entry)
    text = cf.table({'seeds': [entry]})
    assert '0.7100 [0.6100, 0.8100]' in text and '+0.0100 [-0.0200, +0.0400]' in text
    settings = {'steps': 8, 'encoder': 'random:XS'}
    path = tmp_path / cf.RESULT_FILE
    assert cf.earlier_seeds(str(path), settings) == []
    path.write_text(json.dumps({'settings': settings, 'seeds': [entry]}))
    assert cf.earlier_seeds(str(path), settings) == [entry]
    with pytest.raises(cf.ResultMismatch, match='steps'):
        cf.earlier_seeds(str(path), {**settings, 'steps': 4})


def _compare(workdir, data_dir, official_dir, *extra):
    return subprocess.run(
        [sys.executable, '-m', 'experiments.compare_official', '--what=finetune',
         '--budget=smoke', '--encoder=random:tiny', f'--linear_steps={STEPS}',
         '--max_records_per_fold=32', f'--workdir={workdir}', f'--data_dir={data_dir}',
         f'--official_dir={official_dir}', *extra],
        capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_both_sides_agree_from_the_same_start(ptbxl_tfds_dir, official_dir, tmp_path):
    pytest.importorskip('torch', reason="torch is not installed (pip install -e '.[torch]')")
    proc = _compare(tmp_path, ptbxl_tfds_dir, official_dir, '--seeds=0,1')
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / cf.RESULT_FILE).read_text())
    assert result['settings']['official_side'] == 'published'
    assert result['settings']['encoder'] == 'random:tiny'
    assert [s['seed'] for s in result['seeds']] == [0, 1]
    for s in result['seeds']:
        for side in ('ours', 'official'):
            r = s[side]
            assert 0 <= r['ci'][0] <= r['test_macro_auc'] <= r['ci'][1] <= 1, (side, r)
            assert [p['step'] for p in r['val_curve']] == [2, 4, 6, STEPS], side
            assert r['seconds'] > 0 and r['train_seconds'] > 0
        ours, theirs = s['ours'], s['official']
        # The point of the comparison: the same curve, the same best step, the same predictions.
        for a, b in zip(ours['val_curve'], theirs['val_curve']):
            assert abs(a['val_auc'] - b['val_auc']) < VAL_AUC_TOL, (s['seed'], a, b)
        assert s['val_auc_max_abs_diff'] < VAL_AUC_TOL
        assert ours['best_step'] == theirs['best_step']
        assert s['test_probability_max_abs_diff'] < PROB_TOL
        d = s['paired_ours_minus_official']
        assert abs(d['diff']) < 1e-3 and d['ci_low'] <= d['diff'] <= d['ci_high']
        assert 0 < d['num_records'] <= 32
    # The tolerance tells runs apart: the two seeds' curves differ by far more.
    a, b = (s['ours']['val_curve'] for s in result['seeds'])
    assert max(abs(x['val_auc'] - y['val_auc']) for x, y in zip(a, b)) > 10 * VAL_AUC_TOL
    assert (tmp_path / cf.PLOT_FILE).stat().st_size > 0
    assert 'ours-off' in proc.stdout
    # Finished seeds are read back, not run again (other settings: see the pooling test).
    before = (tmp_path / cf.RESULT_FILE).read_text()
    proc = _compare(tmp_path, ptbxl_tfds_dir, official_dir, '--seeds=1,0')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'seed 0: kept' in proc.stdout and 'seed 1: kept' in proc.stdout
    assert 'official step' not in proc.stdout
    assert (tmp_path / cf.RESULT_FILE).read_text() == before


@pytest.mark.slow
@pytest.mark.parametrize('case', ['encoder', 'official_dir', 'data'])
def test_bad_input_is_one_line(case, official_dir, tmp_path):
    args, message = {
        'encoder': (['--encoder=random:huge'], 'unknown variant'),
        'official_dir': (['--official_dir=/nonexistent'], 'official ECG-JEPA code not found'),
        'data': ([f'--data_dir={tmp_path / "empty"}'], 'is not built'),
    }[case]
    proc = subprocess.run(
        [sys.executable, '-m', 'experiments.compare_official', '--what=finetune',
         f'--workdir={tmp_path / "out"}', f'--official_dir={official_dir}', *args],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
