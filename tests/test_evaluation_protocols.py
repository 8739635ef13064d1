"""Fine-tuning protocols: heads, frozen encoder, best checkpoint, early stopping, end to end."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from experiments.configs.finetune import PROTOCOLS, get_config
from jepa_ecg.data import ptbxl as data
from jepa_ecg.evaluation import metrics, plots
from jepa_ecg.inference import resolve
from jepa_ecg.models import ModelConfig, model_config
from jepa_ecg.models.classifier import build_classifier, init_classifier, probabilities
from jepa_ecg.training import checkpoint, config_checks, finetune_step, optim
from jepa_ecg.training import finetune_loop as protocols
from jepa_ecg.training import finetune_runs

FS = 100.0

# The file name of a Python absl INFO line (TensorFlow's C++ logging, which
# prints before absl starts, writes 'I0000 00:00:<epoch>' and is not matched).
ABSL_INFO = re.compile(r'^I\d{4} \d\d:\d\d:\d\d\.\d{6}\s+\d+ ([\w.]+):\d+\]', re.M)


def _config(tokens, **overrides):
    config = get_config(tokens)
    config.unlock()
    config.model.fs = FS
    config.plots = False
    for k, v in overrides.items():
        target = config
        *path, name = k.split('.')
        for p in path:
            target = target[p]
        target[name] = v
    return config


def _source():
    return protocols.EncoderSource(model_config('tiny', fs=FS), description='random tiny',
                                   spec='random:tiny')


def _windows(signals, crop=250, stride=125):
    """(R, T, L) records -> (R * W, crop, L) windows, records contiguous."""
    w = np.stack([data.eval_windows(x, crop, stride) for x in signals])
    return w.reshape((-1,) + w.shape[2:])


def _array_task(signals, labels, folds, classes) -> data.PtbxlTask:
    """A task over in-memory records (folds 1-8 train, 9 val, 10 test)."""
    return data.make_task(data.ArrayRecords(signals, FS), labels, folds,
                          np.arange(len(signals)), task='superdiagnostic', classes=classes,
                          fs=FS, num_samples=signals.shape[1])


def _preprocessed(task, split):
    """(N, T, 12) model inputs of a split's records, as the pipeline feeds them."""
    return np.stack(list(task.records(split)))


def _synthetic_task(flip_eval: bool, offset: float = 1.0, seed: int = 0) -> data.PtbxlTask:
    """Two classes told apart by the sign of a constant offset on lead II.

    With `flip_eval` the validation and test labels are the opposite of the
    training rule, so the better the model learns, the worse it validates:
    with a weak offset the validation AUC starts near chance and falls.
    """
    rng = np.random.default_rng(seed)
    n, t = 64, 500
    folds = np.repeat([1, 2, 9, 10], n // 4)
    y = rng.integers(0, 2, n)
    signals = rng.standard_normal((n, t, 12)).astype(np.float32)
    signals[:, :, 1] += offset * (2.0 * y - 1)[:, None]
    if flip_eval:
        y = np.where(folds >= 9, 1 - y, y)
    labels = np.eye(2, dtype=bool)[y]
    return _array_task(signals, labels, folds, ['neg', 'pos'])


def _record_logits(model, params, task, split, crop=250, stride=125):
    records = _preprocessed(task, split)
    logits = model.apply({'params': params}, _windows(records, crop, stride))
    return data.average_window_logits(np.asarray(logits), len(records))


# ---------------------------------------------------------------- classifier modules

@pytest.mark.slow
def test_heads_read_the_register_and_dropout_lives_in_the_encoder():
    cfg = model_config('tiny', fs=FS)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 250, 12))
    for head in ('attentive', 'register'):
        model = build_classifier(cfg, 3, head=head, dropout=0.5)
        params = init_classifier(model, jax.random.PRNGKey(0), 250)
        assert set(params) == {'encoder', 'head'}
        assert 'registers' in params['encoder']
        out = model.apply({'params': params}, x)
        assert out.shape == (2, 3) and out.dtype == jnp.float32

        def total(registers):
            p = {'encoder': {**params['encoder'], 'registers': registers},
                 'head': params['head']}
            return model.apply({'params': p}, x).sum()

        # The logits depend on the register token (the pooler attends to it too).
        assert np.abs(jax.grad(total)(params['encoder']['registers'])).max() > 0
        d1 = model.apply({'params': params}, x, deterministic=False,
                         rngs={'dropout': jax.random.PRNGKey(2)})
        d2 = model.apply({'params': params}, x, deterministic=False,
                         rngs={'dropout': jax.random.PRNGKey(3)})
        assert not np.allclose(d1, d2)
    # No biases anywhere in the heads (the reference's eval configs use none).
    pooled = init_classifier(build_classifier(cfg, 3, head='attentive'), jax.random.PRNGKey(0),
                             250)['head']
    assert set(pooled) == {'query_token', 'q', 'kv', 'proj'}
    assert all(set(v) == {'kernel'} for k, v in pooled.items() if k != 'query_token')
    linear = init_classifier(build_classifier(cfg, 3, head='register'), jax.random.PRNGKey(0),
                             250)['head']
    assert set(linear) == {'kernel'} and linear['kernel'].shape == (cfg.dim, 3)
    with pytest.raises(ValueError):
        build_classifier(cfg, 3, head='register', frozen=True)


def test_exported_encoder_and_random_specs_resolve(tmp_path):
    from jepa_ecg.training import jepa_step as jepa
    from jepa_ecg.inference.encoder import save_encoder
    cfg = model_config('tiny', fs=FS)
    params = jepa.init_params(jax.random.PRNGKey(3), cfg)['encoder']
    path = save_encoder(str(tmp_path / 'enc'), cfg, params)
    config = _config('finetune')
    source = resolve.resolve_encoder(path, config, task='all')
    assert resolve.make_resolver(path, config)('rhythm', 3).config == source.config
    assert source.config.dim == cfg.dim and source.config.patch_size == 5
    for a, b in zip(jax.tree_util.tree_leaves(params),
                    jax.tree_util.tree_leaves(source.encoder_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    random = resolve.resolve_encoder('random:XS', config, task='all')
    assert random.encoder_params is None
    assert (random.config.dim, random.config.fs, random.config.patch_size) == (192, 100.0, 5)
    # Pre-trained weights drop into the classifier; a missing register is added fresh.
    model = build_classifier(dataclasses.replace(cfg, num_registers=1), 2, head='register')
    fresh = init_classifier(model, jax.random.PRNGKey(0), 250)
    no_register = {k: v for k, v in params.items() if k != 'registers'}
    merged = finetune_step.merge_pretrained(fresh['encoder'], no_register, 'encoder')
    np.testing.assert_array_equal(merged['registers'], fresh['encoder']['registers'])
    np.testing.assert_array_equal(merged['patch_embed']['kernel'], params['patch_embed']['kernel'])
    with pytest.raises(ValueError):
        finetune_step.merge_pretrained(fresh['encoder'], {**params, 'extra': np.zeros(3)},
                                       'encoder')



def test_one_random_encoder_probed_with_another_head_seed():
    """encoder_key draws the encoder alone: the head stays the run key's."""
    model = build_classifier(model_config('tiny', fs=FS), 3, head='attentive', frozen=True)
    tx = optim.make_optimizer(get_config('linear,smoke'),
                              optim.make_schedules(get_config('linear,smoke')))
    kw = dict(num_samples=250, num_leads=12, frozen_encoder=True)
    key_a, key_b = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    a = finetune_step.init_state(model, tx, key_a, **kw)
    b = finetune_step.init_state(model, tx, key_b, **kw)
    mixed = finetune_step.init_state(model, tx, key_a, encoder_key=key_b, **kw)
    same = finetune_step.init_state(model, tx, key_a, encoder_key=key_a, **kw)
    leaves = jax.tree_util.tree_leaves
    for x, y in zip(leaves(mixed.frozen), leaves(b.frozen)):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(leaves(mixed.trainable), leaves(a.trainable)):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(leaves(same), leaves(a)):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(leaves(a.frozen), leaves(b.frozen)))

def test_bad_encoder_specs_fail_before_any_run(tmp_path):
    config = _config('linear')
    with pytest.raises(ValueError, match=r"random:XXL: unknown variant 'XXL'; choose from .*XS"):
        resolve.make_resolver('random:XXL', config)
    with pytest.raises(ValueError, match='no such file or directory'):
        resolve.make_resolver(str(tmp_path / 'nowhere'), config)
    fal = _config('finetune_after_linear')
    with pytest.raises(ValueError, match='linear-run workdir'):
        resolve.make_resolver(str(tmp_path), fal)


@pytest.mark.parametrize('field,value,message', [
    ('batch_size', 0, 'batch_size=0: must be an integer >= 1'),
    ('batch_size', -4, 'batch_size=-4'),
    ('batch_size', 6, 'multiple of the 4 devices'),
    ('total_steps', 0, 'total_steps=0'),
    ('head', 'mlp', r"head='mlp': choose from \['attentive', 'register'\]"),
])
def test_finetune_config_checks_name_the_field(field, value, message, tmp_path):
    config = _config('linear,smoke', **{field: value})
    with pytest.raises(config_checks.ConfigError, match=message):
        finetune_runs.train_and_evaluate(config, str(tmp_path / 'run'), encoder=_source(),
                                     task='superdiagnostic', task_data=_synthetic_task(False))
    assert not (tmp_path / 'run').exists()


def test_bad_encoder_is_a_usage_error_before_any_work(tmp_path):
    workdir = tmp_path / 'out'
    proc = subprocess.run(
        [sys.executable, '-m', 'experiments.finetune',
         '--config=experiments/configs/finetune.py:linear,smoke', '--encoder=random:XXL',
         '--task=superdiagnostic', f'--workdir={workdir}'],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "unknown variant 'XXL'" in proc.stderr
    assert not workdir.exists()


def test_protocol_configs_follow_the_reference():
    lin, ft, fal = (get_config(p) for p in ('linear', 'finetune', 'finetune_after_linear'))
    assert (lin.head, lin.frozen, lin.dropout, lin.total_steps, lin.batch_size) == \
        ('attentive', True, 0.0, 5000, 128)
    assert (lin.learning_rate, lin.final_learning_rate, lin.warmup_steps, lin.weight_decay,
            lin.b2, lin.grad_clip, lin.patience) == (1e-3, 1e-3, 0, 0.1, 0.999, 1.0, 5000)
    assert (ft.head, ft.frozen, ft.dropout, ft.total_steps) == ('register', False, 0.05, 10000)
    assert (ft.learning_rate, ft.final_learning_rate, ft.warmup_steps, ft.weight_decay,
            ft.b2, ft.grad_clip, ft.patience) == (1e-3, 1e-5, 200, 0.01, 0.99, 0.0, 2000)
    assert (fal.head, fal.frozen, fal.dropout, fal.total_steps) == \
        ('attentive', False, 0.1, 5000)
    assert (fal.learning_rate, fal.final_learning_rate, fal.warmup_steps, fal.weight_decay,
            fal.b2, fal.grad_clip) == (1e-4, 1e-6, 200, 0.0, 0.999, 1.0)
    for c in (lin, ft, fal):
        assert (c.b1, c.eval_every, c.data.crop_seconds, c.data.eval_stride_seconds) == \
            (0.9, 100, 2.5, 1.25)
        config_checks.check_finetune_config(c)
    assert set(PROTOCOLS) == set(config_checks.PROTOCOLS)
    lr = optim.make_schedules(ft)['lr']
    assert float(lr(0)) == pytest.approx(1e-6)
    assert float(lr(200)) == pytest.approx(1e-3)
    assert float(lr(9999)) == pytest.approx(1e-5)
    assert float(optim.make_schedules(lin)['lr'](1234)) == pytest.approx(1e-3)
    # Fine-tuning weight decay is constant, and there is no EMA.
    assert set(optim.make_schedules(ft)) == {'lr', 'wd'}
    assert float(optim.make_schedules(ft)['wd'](0)) == pytest.approx(0.01)
    assert float(optim.make_schedules(ft)['wd'](9999)) == pytest.approx(0.01)
    with pytest.raises(ValueError):
        get_config('smoke')


# ---------------------------------------------------------------- best checkpoint, early stop

@pytest.mark.slow
def test_best_checkpoint_and_early_stopping_when_validation_peaks_early(tmp_path):
    dataset = _synthetic_task(flip_eval=True, offset=0.05)
    config = _config('finetune,smoke', total_steps=80, eval_every=4, patience=12,
                     learning_rate=1e-3, warmup_steps=2)
    run = str(tmp_path / 'run')
    res = finetune_runs.train_and_evaluate(config, run, encoder=_source(), task='superdiagnostic',
                                       task_data=dataset)
    val = [(h['step'], h['val_auc']) for h in res['history'] if 'val_auc' in h]
    steps, aucs = zip(*val)
    assert steps == tuple(range(4, res['steps_run'] + 1, 4))
    # The best is the first maximum; training ran exactly `patience` steps past it.
    assert res['best_step'] == steps[int(np.argmax(aucs))]
    assert res['best_val_auc'] == max(aucs)
    assert res['stopped_early'] and res['steps_run'] == res['best_step'] + 12
    assert res['best_step'] <= 8, f'validation AUC should peak early: {val}'
    assert aucs[-1] < res['best_val_auc']
    # Orbax kept only the best step, and its weights reproduce the best AUC.
    assert sorted(os.listdir(os.path.join(run, checkpoint.BEST_DIR))) == [str(res['best_step'])]
    model = build_classifier(ModelConfig.from_dict(res['model']), 2,
                             head=config.head, dropout=config.dropout)
    best = checkpoint.restore_best(run)
    val_logits = _record_logits(model, best, dataset, 'val')
    val_prob = probabilities(val_logits, False)
    assert metrics.macro_roc_auc(dataset.splits['val'].targets, val_prob) == \
        pytest.approx(res['best_val_auc'], abs=1e-6)
    with np.load(os.path.join(run, checkpoint.PREDICTIONS_FILE)) as f:
        np.testing.assert_allclose(f['test_logits'],
                                   _record_logits(model, best, dataset, 'test'),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(f['val_predictions'], val_prob, rtol=1e-4, atol=1e-6)
    assert res['test']['macro_auc_ci'][0] <= res['test']['macro_auc'] <= \
        res['test']['macro_auc_ci'][1]


@pytest.mark.slow
def test_learnable_task_improves_and_linear_keeps_the_encoder_frozen(tmp_path):
    dataset = _synthetic_task(flip_eval=False)
    config = _config('linear,smoke', total_steps=24, eval_every=8, learning_rate=1e-2)
    run = str(tmp_path / 'linear')
    res = finetune_runs.train_and_evaluate(config, run, encoder=_source(), task='superdiagnostic',
                                       task_data=dataset)
    assert res['test']['macro_auc'] > 0.9
    model = build_classifier(model_config('tiny', fs=FS), 2, head='attentive', frozen=True)
    init_key, _ = jax.random.split(jax.random.PRNGKey(config.seed))
    fresh = init_classifier(model, init_key, 250)
    best = checkpoint.restore_best(run)
    for a, b in zip(jax.tree_util.tree_leaves(fresh['encoder']),
                    jax.tree_util.tree_leaves(best['encoder'])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(fresh['head']['proj']['kernel'], best['head']['proj']['kernel'])
    assert res['trainable_params'] == sum(x.size for x in jax.tree_util.tree_leaves(fresh['head']))

    # Plots of a run land in its folder.
    with np.load(os.path.join(run, checkpoint.PREDICTIONS_FILE)) as f:
        paths = plots.plot_run(run, res, f['test_targets'], f['test_predictions'])
    assert all(os.path.getsize(p) > 1000 for p in paths)


def test_single_label_task_uses_softmax():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    p = probabilities(logits, True)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    loss = finetune_step.loss_fn_for(True)(jnp.asarray(logits), jnp.eye(3)[jnp.array([0, 1])])
    expected = -np.mean(np.log(p[[0, 1], [0, 1]]))
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(probabilities(logits, False), 1 / (1 + np.exp(-logits)))


# ---------------------------------------------------------------- end to end on real PTB-XL

def _env(devices=2):
    env = dict(os.environ)
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
    env['JAX_PLATFORMS'] = 'cpu'
    return env


def _finetune_cmd(tokens, encoder, task, workdir, data_dir, seeds=1):
    return [sys.executable, '-m', 'experiments.finetune',
            f'--config=experiments/configs/finetune.py:{tokens}',
            f'--config.data.data_dir={data_dir}', '--config.model.fs=100',
            f'--encoder={encoder}', f'--task={task}', f'--seeds={seeds}',
            f'--workdir={workdir}']


@pytest.fixture(scope='module')
def linear_random_run(ptbxl_tfds_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp('linear_random')
    proc = subprocess.run(_finetune_cmd('linear,smoke', 'random:tiny', 'superdiagnostic',
                                        workdir, ptbxl_tfds_dir, seeds=2),
                          env=_env(), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, proc.stdout, proc.stderr


def _our_modules():
    return {name for root in ('jepa_ecg', 'experiments')
            for _, _, files in os.walk(REPO / root) for name in files if name.endswith('.py')}


def test_linear_protocol_on_random_encoder_end_to_end(linear_random_run):
    workdir, stdout, stderr = linear_random_run
    assert 'linear superdiagnostic: test macro AUC' in stdout
    # The console shows progress, loss and AUC, and no library INFO chatter.
    assert re.search(r'step \d+/\d+ loss', stderr) and 'val_auc' in stderr
    info_files = set(ABSL_INFO.findall(stderr))
    assert info_files and info_files <= _our_modules(), info_files - _our_modules()
    with open(workdir / 'results.json') as f:
        summary = json.load(f)
    task = summary['tasks']['superdiagnostic']
    assert task['test_macro_auc']['n'] == 2 and len(task['runs']) == 2
    assert task['test_macro_auc']['mean'] == pytest.approx(
        np.mean([r['test_macro_auc'] for r in task['runs']]))
    run = workdir / 'superdiagnostic' / 'seed1'
    with open(run / 'results.json') as f:
        res = json.load(f)
    assert res['seed'] == 1 and res['protocol'] == 'linear'
    assert res['data']['folds'] == {'train': [1, 2], 'val': [9], 'test': [10]}
    assert res['data']['classes'] == ['CD', 'HYP', 'MI', 'NORM', 'STTC']
    assert res['crop_samples'] == 250 and res['windows_per_record'] == 7
    assert [r['class'] for r in res['test']['per_class']] == res['data']['classes']
    assert 0.0 <= res['test']['macro_auprc'] <= 1.0
    for name in (plots.VAL_AUC_PNG, plots.ROC_PNG, plots.PER_CLASS_PNG,
                 checkpoint.PREDICTIONS_FILE):
        assert (run / name).exists(), name
    with np.load(run / checkpoint.PREDICTIONS_FILE) as f:
        assert f['test_predictions'].shape == (res['data']['test']['records'], 5)


def test_compare_command(linear_random_run):
    workdir = linear_random_run[0]
    out = workdir / 'compare.json'
    proc = subprocess.run(
        [sys.executable, '-m', 'experiments.compare',
         f'--a={workdir / "superdiagnostic" / "seed0"}',
         f'--b={workdir / "superdiagnostic" / "seed1" / "predictions.npz"}',
         '--num_resamples=100', f'--out={out}'],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'a - b =' in proc.stdout
    with open(out) as f:
        res = json.load(f)['pairs'][0]
    assert res['ci_low'] <= res['diff'] <= res['ci_high']


def test_finetune_after_linear_continues_the_linear_run(linear_random_run, ptbxl_tfds_dir,
                                                        tmp_path):
    workdir = linear_random_run[0]
    config = _config('finetune_after_linear,smoke', **{'data.data_dir': str(ptbxl_tfds_dir)})
    source = resolve.resolve_encoder(str(workdir), config, task='superdiagnostic')
    linear_best = checkpoint.restore_best(str(workdir / 'superdiagnostic' / 'seed0'))
    np.testing.assert_array_equal(source.head_params['proj']['kernel'],
                                  linear_best['head']['proj']['kernel'])
    summary = finetune_runs.run_all(config, str(tmp_path / 'fal'),
                                encoder=resolve.make_resolver(str(workdir), config),
                                tasks=['superdiagnostic'])
    res = summary['tasks']['superdiagnostic']
    assert 0.0 <= res['test_macro_auc']['mean'] <= 1.0
    with pytest.raises(ValueError):
        resolve.resolve_encoder(str(tmp_path / 'nothing'), config, task='superdiagnostic')


def test_smoke_pretraining_then_linear_protocol(ptbxl_tfds_dir, tmp_path):
    from experiments.configs.pretrain import get_config as pretrain_config
    from jepa_ecg.data.masking import sample_batch_masks
    from jepa_ecg.models.config import model_config_from
    from jepa_ecg.training import jepa_loop as loop

    pre = pretrain_config('vit_tiny,synthetic,100hz,smoke')
    pre.unlock()
    pre.total_steps, pre.checkpoint_every, pre.async_checkpoint = 4, 4, False
    cfg = model_config_from(pre)

    def batches(start_step):
        rng = np.random.default_rng(start_step)
        while True:
            x = rng.standard_normal((pre.global_batch_size, cfg.window_samples, 12))
            yield {'signal': x.astype(np.float32),
                   **sample_batch_masks(rng, pre.global_batch_size, cfg.num_patches)}

    pre_dir = str(tmp_path / 'pretrain')
    loop.train_and_evaluate(pre, pre_dir, input_iterator_fn=batches)
    config = _config('linear,smoke', **{'data.data_dir': str(ptbxl_tfds_dir)})
    res = finetune_runs.run_all(config, str(tmp_path / 'linear'),
                            encoder=resolve.make_resolver(pre_dir, config),
                            tasks=['st_mem'])['tasks']['st_mem']
    assert 0.0 <= res['test_macro_auc']['mean'] <= 1.0
    # The classifier's encoder is the pre-training run's target (EMA) encoder.
    state, _ = checkpoint.restore_params(pre_dir)
    best = checkpoint.restore_best(str(tmp_path / 'linear' / 'st_mem' / 'seed0'))
    for a, b in zip(jax.tree_util.tree_leaves(state['target_params']),
                    jax.tree_util.tree_leaves(best['encoder'])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
