"""The pre-training loop: configs, NaN stop, logging outputs."""

import json
import os

import numpy as np
import pytest

from experiments.configs.pretrain import get_config
from jepa_ecg.data.masking import sample_batch_masks
from jepa_ecg.training import loop


@pytest.mark.parametrize('arg,variant,mix,fs,batch,accum', [
    ('vit_xs,all', 'XS', 'all', 500.0, 2048, 1),
    ('vit_s,mimic', 'S', 'mimic', 500.0, 2048, 1),
    ('vit_b,all', 'B', 'all', 500.0, 1024, 2),
    ('vit_xs,ptbxl,100hz', 'XS', 'ptbxl_100hz', 100.0, 2048, 1),
    ('vit_xs,synthetic,smoke', 'XS', 'synthetic', 500.0, 8, 1),
])
def test_configs(arg, variant, mix, fs, batch, accum):
    c = get_config(arg)
    assert (c.model.variant, c.data.mixture, c.model.fs) == (variant, mix, fs)
    assert (c.global_batch_size, c.grad_accum_steps) == (batch, accum)
    cfg = loop.model_config_from(c)
    assert cfg.num_patches == 200
    from jepa_ecg.data.sources import MIXTURES
    assert c.data.mixture in MIXTURES


def test_unknown_config_token():
    with pytest.raises(ValueError, match='vit_xxl'):
        get_config('vit_xxl,ptbxl')


def _batches(cfg, batch_size, poison_at=None):
    def make(start_step):
        step = start_step
        while True:
            rng = np.random.default_rng(step)
            x = rng.standard_normal((batch_size, cfg.window_samples, 12)).astype(np.float32)
            if poison_at is not None and step >= poison_at:
                x[:] = np.nan
            yield {'signal': x, **sample_batch_masks(rng, batch_size, cfg.num_patches)}
            step += 1
    return make


def _config(steps):
    c = get_config('vit_tiny,synthetic,100hz,smoke')
    c.total_steps = steps
    c.log_every = 1
    c.rank_every = 2
    c.checkpoint_every = 2
    c.global_batch_size = 4
    return c


def test_stops_with_a_clear_message_on_nan(tmp_path):
    c = _config(10)
    cfg = loop.model_config_from(c)
    with pytest.raises(loop.NonFiniteLossError, match='non-finite metrics at step 4'):
        loop.train_and_evaluate(c, str(tmp_path), input_iterator_fn=_batches(cfg, 4, poison_at=3))
    # Good checkpoints are kept, and none holds the non-finite state.
    steps = sorted(int(d) for d in os.listdir(tmp_path / 'checkpoints') if d.isdigit())
    assert steps and max(steps) == 2


def test_logs_metrics_and_event_files(tmp_path):
    c = _config(4)
    cfg = loop.model_config_from(c)
    summary = loop.train_and_evaluate(c, str(tmp_path), input_iterator_fn=_batches(cfg, 4))
    assert summary['step'] == 4
    rows = loop.read_metrics(str(tmp_path))
    assert [r['step'] for r in rows] == [1, 2, 3, 4]
    for key in ('loss', 'lr', 'wd', 'momentum', 'grad_norm', 'param_norm', 'records_per_s',
                'target_std'):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert 'target_rank' in rows[1] and 'target_rank' not in rows[0]
    assert os.listdir(tmp_path / 'tensorboard')
    text = loop.loss_curve_summary(str(tmp_path))
    assert 'loss curve' in text and os.path.exists(tmp_path / 'loss_curve.png')
    with open(tmp_path / 'config.json') as f:
        assert json.load(f)['model']['variant'] == 'tiny'
