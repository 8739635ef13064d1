"""The pre-training loop: configs, config checks, NaN stop, logging outputs, resume log."""

import json
import os
import signal
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from conftest import REPO
from experiments.configs import common
from experiments.configs.pretrain import get_config
from jepa_ecg.data.masking import sample_batch_masks
from jepa_ecg.models.config import model_config_from
from jepa_ecg.training import config_checks, guard, metrics_writer
from jepa_ecg.training import jepa_loop as loop


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
    cfg = model_config_from(c)
    assert cfg.num_patches == 200
    from jepa_ecg.data.sources import MIXTURES
    assert c.data.mixture in MIXTURES
    config_checks.check_pretrain_config(c)


def test_unknown_config_token():
    with pytest.raises(ValueError, match='vit_xxl'):
        get_config('vit_xxl,ptbxl')


def test_config_argument_parser():
    spec = dict(variant=common.Choice({'vit_xs': 'XS', 'vit_s': 'S'}, 'vit_xs'),
                fs=500.0, smoke=False, steps=(10, int))
    a = common.parse_arg('vit_s,smoke,fs=250,steps=7', **spec)
    assert (a.variant, a.fs, a.smoke, a.steps) == ('S', 250.0, True, 7)
    a = common.parse_arg('', **spec)
    assert (a.variant, a.fs, a.smoke, a.steps) == ('XS', 500.0, False, 10)
    assert common.parse_arg('variant=vit_s,smoke=false', **spec).variant == 'S'
    assert common.parse_arg('100hz', aliases={'100hz': 'fs=100'}, **spec).fs == 100.0
    with pytest.raises(ValueError, match='twice'):
        common.parse_arg('vit_s,vit_xs', **spec)
    with pytest.raises(ValueError, match='fs'):
        common.parse_arg('fs=fast', **spec)
    with pytest.raises(ValueError, match='choose from'):
        common.parse_arg('variant=vit_q', **spec)
    with pytest.raises(ValueError, match='required'):
        common.parse_arg('smoke', mode=common.Choice({'a': 1}), **spec)
    # Variants and mixtures come from their registries.
    from jepa_ecg.data.sources import MIXTURES
    from jepa_ecg.models.config import VARIANTS
    from experiments.configs import pretrain
    assert set(pretrain.VARIANT_TOKENS.values()) == set(VARIANTS)
    for mix in MIXTURES:
        assert get_config(mix).data.mixture.startswith(mix)


@pytest.mark.parametrize('field,value,message', [
    ('global_batch_size', 0, 'global_batch_size=0: must be an integer >= 1'),
    ('global_batch_size', -8, 'global_batch_size=-8'),
    ('global_batch_size', 6, 'multiple of the 4 devices'),
    ('total_steps', 0, 'total_steps=0'),
    ('grad_accum_steps', 3, 'grad_accum_steps=3'),
])
def test_config_checks_name_the_field(field, value, message):
    c = get_config('vit_tiny,synthetic,100hz,smoke')
    c[field] = value
    with pytest.raises(config_checks.ConfigError, match=message):
        config_checks.check_pretrain_config(c)


def test_config_checks_list_the_choices(tmp_path):
    c = get_config('vit_tiny,synthetic,100hz,smoke')
    c.model.variant = 'XXL'
    with pytest.raises(config_checks.ConfigError, match=r"model.variant='XXL': choose from .*tiny"):
        config_checks.check_pretrain_config(c)
    # The loop checks before it creates anything.
    c = get_config('vit_tiny,synthetic,100hz,smoke')
    c.total_steps = -1
    with pytest.raises(config_checks.ConfigError):
        loop.train_and_evaluate(c, str(tmp_path / 'run'))
    assert not (tmp_path / 'run').exists()


@pytest.mark.slow
def test_bad_config_is_a_usage_error_before_any_work(tmp_path):
    workdir = tmp_path / 'run'
    proc = subprocess.run(
        [sys.executable, '-m', 'experiments.pretrain',
         '--config=experiments/configs/pretrain.py:vit_tiny,synthetic,100hz,smoke',
         '--config.global_batch_size=0', f'--workdir={workdir}'],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'global_batch_size=0' in proc.stderr
    assert not workdir.exists()


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


@pytest.mark.slow
def test_stops_with_a_clear_message_on_nan(tmp_path):
    c = _config(10)
    cfg = model_config_from(c)
    with pytest.raises(guard.NonFiniteLossError, match='non-finite metrics at step 4'):
        loop.train_and_evaluate(c, str(tmp_path), input_iterator_fn=_batches(cfg, 4, poison_at=3))
    # Good checkpoints are kept, and none holds the non-finite state.
    steps = sorted(int(d) for d in os.listdir(tmp_path / 'checkpoints') if d.isdigit())
    assert steps and max(steps) == 2


@pytest.mark.slow
def test_the_loop_runs_at_most_one_step_ahead_of_the_device(tmp_path):
    # No log or periodic checkpoint before step 40: only the wait for the
    # previous step can see step 6's NaN. Asynchronous dispatch alone would
    # queue steps up to the first log; a stop signal would then wait for all.
    c = _config(40)
    c.log_every = c.checkpoint_every = c.rank_every = 40
    cfg = model_config_from(c)
    pulled = []

    def counted(start_step):
        for batch in _batches(cfg, 4, poison_at=5)(start_step):
            pulled.append(1)
            yield batch

    with pytest.raises(guard.NonFiniteLossError, match='non-finite loss nan at step 6;'):
        loop.train_and_evaluate(c, str(tmp_path), input_iterator_fn=counted)
    # Step 7 dispatched while 6 ran, and one batch staged for the device beyond it.
    assert len(pulled) <= 8, len(pulled)
    assert all(int(d) < 6 for d in os.listdir(tmp_path / 'checkpoints') if d.isdigit())


@pytest.mark.slow
def test_a_signal_in_the_last_step_of_a_segment_is_not_lost(tmp_path):
    # The learning curve trains to `stop_at_step`, probes, then trains on: a
    # SIGTERM whose step is the segment's last must stop it, not vanish with
    # the segment's handlers.
    c = _config(6)
    c.stop_at_step = 3
    cfg = model_config_from(c)

    def signalled(start_step):
        for i, batch in enumerate(_batches(cfg, 4)(start_step)):
            if i == 3:  # staged while step 3 runs
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    with pytest.raises(guard.StopRequested) as e:
        loop.train_and_evaluate(c, str(tmp_path), input_iterator_fn=signalled)
    assert e.value.step == 3 and e.value.signum == signal.SIGTERM


@pytest.mark.slow
def test_a_signal_in_the_runs_last_step_is_left_to_the_caller_holding_the_handlers(
        tmp_path, synthetic_tfds_dir):
    # The learning curve holds one set of stop handlers over its pre-training
    # segments and probes. A SIGTERM in the run's very last step completes the
    # run (saved) and stays in `stop.received`; the curve then stops before
    # probing instead of going on as if nothing arrived.
    from experiments import learning_curve
    c = _config(3)
    c.data.data_dir = synthetic_tfds_dir
    cfg = model_config_from(c)

    def signalled(start_step):
        for i, batch in enumerate(_batches(cfg, 4)(start_step)):
            if i == 3:  # pulled ahead while step 3, the last, runs
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    before = signal.getsignal(signal.SIGTERM)
    with guard.StopSignals() as stop:
        held = signal.getsignal(signal.SIGTERM)
        summary = loop.train_and_evaluate(c, str(tmp_path), input_iterator_fn=signalled,
                                          stop=stop)
        assert summary['step'] == 3 and stop.received == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) == held  # still the caller's
        curve = ml_collections.ConfigDict({'pretrain': c})
        with pytest.raises(guard.StopRequested) as e:
            learning_curve.pretrain_to(curve, str(tmp_path), 3, stop)
        assert e.value.step == 3 and e.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before
    assert '3' in os.listdir(tmp_path / 'checkpoints')


@pytest.mark.slow
def test_logs_metrics_and_event_files(tmp_path):
    c = _config(4)
    cfg = model_config_from(c)
    summary = loop.train_and_evaluate(c, str(tmp_path), input_iterator_fn=_batches(cfg, 4))
    assert summary['step'] == 4
    rows = metrics_writer.read_metrics(str(tmp_path))
    assert [r['step'] for r in rows] == [1, 2, 3, 4]
    for key in ('loss', 'lr', 'wd', 'momentum', 'grad_norm', 'param_norm', 'records_per_s',
                'target_std'):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert 'target_rank' in rows[1] and 'target_rank' not in rows[0]
    assert os.listdir(tmp_path / 'tensorboard')
    text = metrics_writer.loss_curve_summary(str(tmp_path))
    assert 'loss curve' in text and os.path.exists(tmp_path / 'loss_curve.png')
    with open(tmp_path / 'config.json') as f:
        assert json.load(f)['model']['variant'] == 'tiny'


def test_resume_drops_the_rows_logged_after_the_checkpoint(tmp_path):
    # A killed run logged steps 1..5 but its last checkpoint is step 4: the
    # resumed run replays step 5, which must then be in the log once.
    path = tmp_path / 'metrics.jsonl'
    path.write_text(''.join(json.dumps({'step': s, 'loss': 1.0 / s}) + '\n' for s in range(1, 6)))
    writer = metrics_writer.MetricsWriter(str(tmp_path), start_step=4)
    writer.write(5, {'loss': 0.5})
    writer.write(6, {'loss': 0.25})
    writer.close()
    steps = [json.loads(line)['step'] for line in path.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert metrics_writer.read_metrics(str(tmp_path))[4]['loss'] == 0.5
    # A fresh run (step 0) starts a fresh log.
    metrics_writer.MetricsWriter(str(tmp_path)).close()
    assert path.read_text() == ''


def test_a_rank_collapse_is_warned_once(caplog):
    watch = metrics_writer.RankWatch([30.0, 28.0])
    with caplog.at_level('WARNING'):
        assert not watch.add(25, 26.0)   # steady
        assert not watch.add(50, 8.0)    # below half, not below a quarter of 28
        assert watch.add(75, 6.5)        # below 7 = a quarter of the median 28
        assert not watch.add(100, 2.0)   # once per run
    warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
    assert len(warnings) == 1 and 'step 75' in warnings[0] and 'collapsing' in warnings[0]
    # Too little history to judge: no warning however low.
    assert not metrics_writer.RankWatch([30.0]).add(25, 0.5)


@pytest.mark.slow
def test_pretraining_reads_the_logged_ranks_back_when_it_resumes(tmp_path, caplog):
    # The ranks logged before a resume count towards the running median: a
    # history of high ranks makes the resumed run's ordinary ranks a collapse.
    c = _config(4)
    cfg = model_config_from(c)
    loop.train_and_evaluate(c, str(tmp_path), input_iterator_fn=_batches(cfg, 4))
    rows = metrics_writer.read_metrics(str(tmp_path))
    logged = max(r['target_rank'] for r in rows if 'target_rank' in r)
    path = tmp_path / 'metrics.jsonl'
    text = path.read_text().splitlines()
    high = [json.loads(line) for line in text]
    for r in high:
        if 'target_rank' in r:
            r['target_rank'] = 100 * logged
    high.append({'step': 1, 'target_rank': 100 * logged})  # a third high rank
    path.write_text(''.join(json.dumps(r) + '\n' for r in high))
    with c.unlocked():
        c.total_steps = 6
    with caplog.at_level('WARNING'):
        loop.train_and_evaluate(c, str(tmp_path), input_iterator_fn=_batches(cfg, 4))
    assert any('collapsing' in r.getMessage() for r in caplog.records), caplog.text
