"""The evaluation protocols of jepa_ecg equal those of the published finetune.py.

From identical encoder and head weights (a PyTorch classifier under the
published parameter names, converted to ours) and the same batches, steps of
the `linear`, `finetune` and `finetune_after_linear` protocols give the same
losses, weights and AdamW moments within float32 tolerance: frozen encoder
with clipping (engaged or not), the fine-tuning warm-up and cosine with
dropout (our dropout masks applied on the PyTorch side), the single-label
task. Our protocol table equals the published eval configs and our
learning-rate and weight-decay schedules equal the published ones over whole
runs; our evaluator's record probabilities (2.5 s windows at 1.25 s stride,
logits averaged) equal those of the published evaluation transform.

The PyTorch side is experiments/torch_finetune_reference.py, a statement of
the published step; the tests that name the published code run its modules
themselves (JEPA_ECG_OFFICIAL_DIR, default ../shared/reference/
official-ECG-JEPA beside the repository) and require the same numbers.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip(
    'torch', reason="torch is not installed (pip install -e '.[torch]'; make test installs it)")

from experiments import torch_finetune_reference as ref  # noqa: E402
from experiments.configs.finetune import PROTOCOLS, get_config  # noqa: E402
from jepa_ecg import sharding  # noqa: E402
from jepa_ecg.data import ptbxl  # noqa: E402
from jepa_ecg.evaluation import metrics  # noqa: E402
from jepa_ecg.evaluation.evaluator import Evaluator  # noqa: E402
from jepa_ecg.models.classifier import build_classifier  # noqa: E402
from jepa_ecg.models.config import model_config  # noqa: E402
from jepa_ecg.training import finetune_step, optim  # noqa: E402

# Full tier (make test-all): see README's test tiers.
pytestmark = pytest.mark.slow

FS, CROP, STRIDE, RECORD = 100.0, 250, 125, 1000
BATCH, NUM_CLASSES = 4, 5
# Per-leaf relative L2 error allowed between the two implementations.
PARAM_TOL = 2e-6
MOMENT_TOL = 2e-4
LOSS_RTOL = 1e-5


def _config(protocol: str, **overrides):
    config = get_config(f'{protocol},100hz')
    config.unlock()
    config.update(overrides)
    return config


def _cfg():
    return model_config('tiny', fs=FS)


def _batches(n: int, seed: int, single_label: bool) -> list:
    """`n` batches of (signal (B, crop, leads), target (B, C)); one-hot targets
    when single-label."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        signal = rng.standard_normal((BATCH, CROP, 12)).astype(np.float32)
        if single_label:
            target = np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, BATCH)]
        else:
            target = (rng.random((BATCH, NUM_CLASSES)) < 0.3).astype(np.float32)
        out.append((signal, target))
    return out


def _torch_batch(signal, target):
    return (torch.from_numpy(np.ascontiguousarray(signal.transpose(0, 2, 1))),
            torch.from_numpy(target))


def _state_arrays(model) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


# Our dropout modules -> the published ones (attention output, after GELU, after fc2).
_DROPOUT_NAMES = {('attn', 'Dropout_0'): 'attn.proj_dropout', ('mlp', 'Dropout_0'): 'mlp.drop1',
                  ('mlp', 'Dropout_1'): 'mlp.drop2'}


def _dropout_masks_fn(model):
    """(params, signal, rng) -> the (scaled) masks our dropout layers draw in a
    training forward pass with `rng`, by the name of the matching PyTorch
    module: a mask depends only on the rng and the shape, so this pass draws
    the train step's."""

    def draw(params, signal, rng):
        masks = {}

        def record(next_fun, args, kwargs, context):
            if not isinstance(context.module, nn.Dropout):
                return next_fun(*args, **kwargs)
            x = args[0]
            mask = next_fun(jnp.ones_like(x), *args[1:], **kwargs)
            encoder, block, *rest = context.module.path
            masks[f'{encoder}.blocks.{block.split("_")[1]}.{_DROPOUT_NAMES[tuple(rest)]}'] = mask
            return x * mask

        with nn.intercept_methods(record):
            model.apply({'params': params}, signal, deterministic=False, rngs={'dropout': rng})
        return masks

    draw = jax.jit(draw)
    return lambda *args: {k: np.asarray(v) for k, v in draw(*args).items()}


def _assert_trees_close(ours, theirs, tol, what):
    flat_a = jax.tree_util.tree_flatten_with_path(ours)[0]
    flat_b = dict(jax.tree_util.tree_flatten_with_path(theirs)[0])
    assert len(flat_a) == len(flat_b), what
    for path, a in flat_a:
        a, b = np.asarray(a, np.float64), np.asarray(flat_b[path], np.float64)
        err = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)
        assert err < tol, f'{what} {jax.tree_util.keystr(path)}: relative error {err:.2e}'


def _moments(model, opt, cfg, head: str, frozen: bool) -> tuple:
    """AdamW's first and second moments in our layout (the head's only when frozen)."""
    out = []
    for key in ('exp_avg', 'exp_avg_sq'):
        state = {n: opt.state[p][key] for n, p in model.named_parameters() if p.requires_grad}
        out.append({'head': ref.head_to_ours(state, head)} if frozen
                   else ref.to_ours(state, cfg, head))
    return out


def _run_both(config, *, start: int, steps: int, single_label: bool):
    """`steps` steps of both sides from the same weights, Adam at count `start`."""
    cfg = _cfg()
    torch.manual_seed(0)
    model = ref.Classifier(cfg, NUM_CLASSES, head=config.head, dropout=config.dropout,
                           frozen=config.frozen)
    start_weights = _state_arrays(model)
    opt = ref.make_optimizer(model, b1=config.b1, b2=config.b2, eps=config.eps,
                             weight_decay=config.weight_decay)
    for p in model.parameters():
        if p.requires_grad:
            opt.state[p] = {'step': torch.tensor(float(start)), 'exp_avg': torch.zeros_like(p),
                            'exp_avg_sq': torch.zeros_like(p)}

    flax_model = build_classifier(cfg, NUM_CLASSES, head=config.head, dropout=config.dropout,
                                  frozen=config.frozen, head_bias=config.head_bias)
    schedules = optim.make_schedules(config)
    tx = optim.make_optimizer(config, schedules)
    trainable, frozen = finetune_step.split_params(ref.to_ours(start_weights, cfg, config.head),
                                                   config.frozen)
    state = finetune_step.ClassifierState(
        step=jnp.asarray(start, jnp.int32), trainable=trainable, frozen=frozen,
        # Both optimisers at step `start` with zero moments: optax takes the
        # schedule's step and Adam's bias correction from its count, torch
        # from each parameter's 'step'.
        opt_state=optax.tree_utils.tree_set(tx.init(trainable),
                                            count=jnp.asarray(start, jnp.int32)))
    train_step, _ = finetune_step.make_steps(flax_model, tx, schedules, single_label=single_label)
    train_step = jax.jit(train_step)
    key = jax.random.PRNGKey(1)
    dropout_masks = _dropout_masks_fn(flax_model)
    ours, theirs = [], []
    for i, (signal, target) in enumerate(_batches(steps, seed=start, single_label=single_label)):
        model.set_dropout_masks(dropout_masks(state.params, signal,
                                              jax.random.fold_in(key, start + i))
                                if config.dropout else None)
        state, m = train_step(state, {'signal': signal, 'target': target}, key)
        ours.append((float(m['loss']), float(m['grad_norm']), float(m['lr'])))
        lr = ref.learning_rate(start + i, total=config.total_steps, peak=config.learning_rate,
                               final=config.final_learning_rate, warmup=config.warmup_steps)
        out = ref.train_step(model, opt, *_torch_batch(signal, target), lr=lr,
                             clip=config.grad_clip, single_label=single_label)
        theirs.append((out['loss'], out['grad_norm'], lr))
    return cfg, state, np.array(ours), np.array(theirs), model, opt, start_weights


CASES = {  # protocol, overrides, start step, steps, single-label
    'linear': ('linear', {}, 0, 2, False),
    # A clip threshold below the gradient norm: the clipped update is compared.
    'linear_clipped': ('linear', {'grad_clip': 1e-3}, 0, 2, False),
    'finetune_warmup': ('finetune', {}, 100, 2, False),
    'finetune_cosine_single_label': ('finetune', {}, 6000, 2, True),
    'finetune_after_linear': ('finetune_after_linear', {'grad_clip': 1e-2}, 150, 2, False),
}
# Over ~10 s each on a busy CPU (dropout masks drawn in a second forward pass).
SLOW_CASES = ('finetune_warmup', 'finetune_cosine_single_label', 'finetune_after_linear')


@pytest.mark.parametrize('case', [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES
                                  else c for c in CASES])
def test_steps_equal_the_published_step(case):
    protocol, overrides, start, steps, single_label = CASES[case]
    config = _config(protocol, **overrides)
    cfg, state, ours, theirs, model, opt, start_weights = _run_both(
        config, start=start, steps=steps, single_label=single_label)
    np.testing.assert_allclose(ours, theirs, rtol=LOSS_RTOL)  # loss, grad norm, lr
    if config.grad_clip:  # the clip did what the case says
        assert (theirs[:, 1] > config.grad_clip).all() == (case != 'linear')
    if config.dropout:
        assert any(m.mask is not None for m in model.modules() if isinstance(m, ref.Dropout))
    weights = ref.to_ours(_state_arrays(model), cfg, config.head)
    _assert_trees_close(state.params, weights, PARAM_TOL, 'params')
    start_encoder = ref.to_ours(start_weights, cfg, config.head)['encoder']
    leaves = jax.tree_util.tree_leaves
    moved = [not np.array_equal(a, b)
             for a, b in zip(leaves(state.params['encoder']), leaves(start_encoder))]
    assert not any(moved) if config.frozen else all(moved)
    mu, nu = _moments(model, opt, cfg, config.head, config.frozen)
    _assert_trees_close(optax.tree_utils.tree_get(state.opt_state, 'mu'), mu, MOMENT_TOL,
                        'Adam first moment')
    _assert_trees_close(optax.tree_utils.tree_get(state.opt_state, 'nu'), nu, MOMENT_TOL,
                        'Adam second moment')


def _published_yaml(official_dir, protocol: str) -> dict:
    import yaml  # pylint: disable=g-import-not-at-top
    with open(os.path.join(official_dir, 'configs', 'eval', f'{protocol}.yaml')) as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize('protocol', list(PROTOCOLS))
def test_protocols_and_schedules_equal_the_published_ones(protocol, official_dir):
    """Every hyper-parameter of the protocol equals the published eval config,
    and the learning rate of every step of a whole run (and the constant
    weight decay) equal the published schedule's."""
    y, c = _published_yaml(official_dir, protocol), _config(protocol)
    assert c.head == ('attentive' if y['attn_pooling'] else 'register') and y['use_register']
    assert (c.frozen, c.dropout, c.head_bias, y['layer_scale_eps']) == (
        y['frozen'], y['dropout'], y['bias'], 0)
    assert (c.total_steps, c.batch_size, c.eval_every, c.patience) == (
        y['steps'], y['batch_size'], y['checkpoint_interval'], y['early_stopping_patience'])
    assert (c.learning_rate, c.final_learning_rate, c.warmup_steps, c.weight_decay) == (
        y['learning_rate'], y['final_learning_rate'], y['learning_rate_warmup_steps'],
        y['weight_decay'])
    # The published AdamW takes torch's default eps; the warm-up starts at 1e-6.
    assert ((c.b1, c.b2), c.grad_clip, c.eps, c.warmup_start_learning_rate) == (
        tuple(y['opt_betas']), y['gradient_clip'], 1e-8, 1e-6)
    assert (c.data.crop_seconds, c.data.eval_stride_seconds) == (
        y['crop_duration'], y['crop_stride'])

    with ref.published_code(str(official_dir)):
        from utils import schedules as published  # pylint: disable=g-import-not-at-top
        gen = published.cosine_schedule(
            total_steps=y['steps'], start_value=y['learning_rate'],
            final_value=y['final_learning_rate'], warmup_steps=y['learning_rate_warmup_steps'],
            warmup_start_value=1e-6)
    theirs = np.array([next(gen) for _ in range(y['steps'])])
    ours = optim.make_schedules(c)
    steps = np.arange(c.total_steps)
    # float32 against float64: a float32 cosine is exact to ~1e-7 of the peak.
    np.testing.assert_allclose(np.asarray(ours['lr'](steps)), theirs, rtol=2e-6,
                               atol=1e-6 * c.learning_rate)
    np.testing.assert_array_equal(np.asarray(ours['wd'](steps)), np.float32(y['weight_decay']))
    statement = [ref.learning_rate(s, total=c.total_steps, peak=c.learning_rate,
                                   final=c.final_learning_rate, warmup=c.warmup_steps)
                 for s in steps]
    np.testing.assert_allclose(statement, theirs, rtol=1e-12)


@pytest.mark.parametrize('protocol,single_label', [('linear', False), ('finetune', True),
                                                   ('finetune_after_linear', False)])
def test_reference_statement_equals_the_published_code(protocol, single_label, official_dir):
    """The statement and the published modules, stepped as finetune.py's loop
    does from the same weights (dropout masks from the same torch seed),
    give the same losses, weights and AdamW moments."""
    start = 120
    c = _config(protocol)
    cfg = _cfg()
    torch.manual_seed(0)
    model = ref.Classifier(cfg, NUM_CLASSES, head=c.head, dropout=c.dropout, frozen=c.frozen)
    published = ref.PublishedEvaluation(str(official_dir), cfg, protocol, NUM_CLASSES,
                                        single_label=single_label, start_step=start)
    published.model.load_state_dict(model.state_dict())
    opt = ref.make_optimizer(model, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay)
    for i, (signal, target) in enumerate(_batches(3, seed=7, single_label=single_label)):
        x, y = _torch_batch(signal, target)
        torch.manual_seed(100 + i)
        theirs = published.step(x, y)
        torch.manual_seed(100 + i)
        lr = ref.learning_rate(start + i, total=c.total_steps, peak=c.learning_rate,
                               final=c.final_learning_rate, warmup=c.warmup_steps)
        ours = ref.train_step(model, opt, x, y, lr=lr, clip=c.grad_clip,
                              single_label=single_label)
        np.testing.assert_allclose(ours['loss'], theirs, rtol=1e-6)
    ours, theirs = _state_arrays(model), _state_arrays(published.model)
    assert set(ours) == set(theirs)
    for k in ours:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-5, atol=1e-7, err_msg=k)
    names = dict(published.model.named_parameters())
    for name, p in model.named_parameters():
        assert p.requires_grad == names[name].requires_grad, name
        if p.requires_grad:
            for key in ('exp_avg', 'exp_avg_sq'):
                np.testing.assert_allclose(opt.state[p][key], published.opt.state[names[name]][key],
                                           rtol=1e-5, atol=1e-12, err_msg=f'{name} {key}')


@pytest.mark.parametrize('single_label', [False, True])
def test_evaluation_probabilities_equal_the_published_ones(single_label, official_dir):
    """Our evaluator (windows, fixed-shape padded batches over 4 devices,
    logits averaged per record, sigmoid or softmax) gives the published
    evaluation's probabilities on the same records, normalised as
    finetune.py does."""
    rng = np.random.default_rng(3)
    n = 40
    signals = rng.standard_normal((n, RECORD, 12)).astype(np.float32)
    # Every class positive in 2 of a fold's 10 records (and negative in some): AUC is defined.
    labels = np.eye(NUM_CLASSES, dtype=bool)[np.arange(n) % NUM_CLASSES]
    if not single_label:
        labels |= rng.random((n, NUM_CLASSES)) < 0.2
    folds = np.repeat([1, 2, 9, 10], n // 4)
    task = ptbxl.make_task(ptbxl.ArrayRecords(signals, FS), labels, folds, np.arange(n),
                           task='st_mem' if single_label else 'superdiagnostic',
                           classes=list('ABCDE'), fs=FS, num_samples=RECORD)
    protocol = 'finetune_after_linear'  # dropout 0.1: evaluation must switch it off
    c, cfg = _config(protocol), _cfg()
    torch.manual_seed(0)
    model = ref.Classifier(cfg, task.num_classes, head=c.head, dropout=c.dropout, frozen=False)
    published = ref.PublishedEvaluation(str(official_dir), cfg, protocol, task.num_classes,
                                        single_label=single_label)
    published.model.load_state_dict(model.state_dict())

    flax_model = build_classifier(cfg, task.num_classes, head=c.head, dropout=c.dropout)
    _, predict = finetune_step.make_steps(flax_model, optax.sgd(0.0), {},
                                          single_label=single_label)
    evaluator = Evaluator(predict, task, mesh=sharding.make_mesh(), crop=CROP, stride=STRIDE,
                          records_per_batch=3)
    scores = evaluator.evaluate(ref.to_ours(_state_arrays(model), cfg, c.head), 'test')

    records = np.stack(list(task.records('test')))
    # finetune.py's normalisation: per-lead mean and std of the train folds, then clip at 5.
    train = signals[task.splits['train'].rows]
    mean = np.mean(train, axis=(0, 1), dtype=np.float32)
    std = np.std(train, axis=(0, 1), dtype=np.float32)
    np.testing.assert_allclose(task.stats.mean, mean, atol=1e-6)
    np.testing.assert_allclose(task.stats.std, std, rtol=1e-5)
    np.testing.assert_allclose(
        records, np.clip((signals[task.splits['test'].rows] - mean) / std, -5, 5), atol=1e-5)
    assert evaluator.windows_per_record == len(ref.windows(records[0], CROP, STRIDE)) == 7
    theirs = published.probabilities(records)
    statement = ref.record_probabilities(model, records, size=CROP, stride=STRIDE,
                                         single_label=single_label)
    np.testing.assert_allclose(statement, theirs, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(scores.probabilities, theirs, rtol=1e-5, atol=1e-6)
    from sklearn.metrics import roc_auc_score  # pylint: disable=g-import-not-at-top
    targets = task.splits['test'].targets
    np.testing.assert_allclose(scores.macro_auc, roc_auc_score(targets, theirs, average='macro'),
                               rtol=1e-6)
    np.testing.assert_allclose(metrics.macro_roc_auc(targets, theirs), scores.macro_auc,
                               rtol=1e-6)


def test_training_crops_are_the_published_random_crops():
    """A training example is a crop-long slice of its preprocessed record whose
    start is uniform on the integers 0..T-crop, as the published random_crop
    (np.random.randint(T - crop + 1)): each of the T-crop+1 starts takes an
    equal share of the pipeline's uniform position in [0, 1), and the
    pipeline's crops are exact slices of the record."""
    from jepa_ecg.data import preprocess as prep  # pylint: disable=g-import-not-at-top
    from jepa_ecg.ecg.leads import LEADS  # pylint: disable=g-import-not-at-top
    ramp = np.repeat(np.linspace(-1, 1, RECORD, dtype=np.float32)[:, None], 12, axis=1)
    stats = prep.LeadStats(np.zeros(12), np.ones(12))
    starts = RECORD - CROP + 1
    for s in range(starts):
        for position in ((s + 0.001) / starts, (s + 0.999) / starts):
            crop = prep.preprocess(ramp, FS, LEADS, target_fs=FS, stats=stats,
                                   window=prep.Window(CROP, position))
            np.testing.assert_array_equal(crop, ramp[s:s + CROP])

    n = 8
    task = ptbxl.make_task(ptbxl.ArrayRecords([ramp] * n, FS), np.ones((n, 1), bool),
                           np.repeat([1, 2, 9, 10], n // 4), np.arange(n), task='all',
                           classes=['x'], fs=FS, num_samples=RECORD)
    record = next(task.records('train'))
    data = task.train_dataset(batch_size=4, crop=CROP, seed=0)
    seen = []
    for step in range(50):
        for crop in data[step]['signal']:
            s = int(np.argmin(np.abs(record[:, 0] - crop[0, 0])))
            np.testing.assert_array_equal(crop, record[s:s + CROP])
            seen.append(s)
    # 200 draws of a uniform start: mean (T - crop) / 2 within 4 standard errors.
    sd = np.sqrt((starts ** 2 - 1) / 12)
    assert abs(np.mean(seen) - (starts - 1) / 2) < 4 * sd / np.sqrt(len(seen))
    assert len(set(seen)) > 150
