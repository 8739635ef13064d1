"""Pre-training steps of jepa_ecg equal those of the published PyTorch code.

From identical weights (a PyTorch model under the published parameter names,
converted to ours with jepa_ecg.inference.torch_import), the same signals and
the same masks, a few JEPA steps of both give the same losses, online
weights, target weights and AdamW moments within float32 tolerance: at the
first step, in the middle of the learning-rate warm-up with weight decay on
its cosine, with 2 accumulated micro-batches whose target moves once per
micro-batch (the published ViT-B schedule), and for the first release's
model (xavier init, LayerNorms with biases). And each side's own
initialiser draws every parameter from the same distribution, so that two
runs from their own initial weights differ by their draw only.

The PyTorch side is experiments/torch_reference.py, a statement of the
published step; the tests that take `official_dir` run the published code
itself (../shared/reference/official-ECG-JEPA, or $JEPA_ECG_OFFICIAL_DIR)
beside that statement and require the same numbers. CI requires them to run.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip(
    'torch', reason="torch is not installed (pip install -e '.[torch]'; make test installs it)")

from experiments import official_code  # noqa: E402
from experiments import torch_reference as ref  # noqa: E402
from experiments.configs.pretrain import get_config  # noqa: E402
from jepa_ecg.data import masking  # noqa: E402
from jepa_ecg.inference import torch_import  # noqa: E402
from jepa_ecg.models.config import model_config_from  # noqa: E402
from jepa_ecg.training import jepa_step as jepa  # noqa: E402
from jepa_ecg.training import optim  # noqa: E402

# Full tier (make test-all): see README's test tiers.
pytestmark = pytest.mark.slow

MICRO_BATCH = 4
# Per-leaf relative L2 error allowed between the two implementations.
PARAM_TOL = 2e-6
MOMENT_TOL = 2e-4
LOSS_RTOL = 1e-5


def _config(*, warmup: int, accum: int = 1, per_micro_batch: bool = False,
            first_release: bool = False, kernels: str = 'auto'):
    config = get_config('vit_tiny,smoke,100hz')
    config.unlock()
    config.model.kernels = kernels
    if first_release:  # xavier init, LayerNorms with biases
        config.model.init, config.model.norm_bias = 'xavier', True
    config.total_steps, config.warmup_steps = 20, warmup
    config.global_batch_size = MICRO_BATCH * accum
    config.grad_accum_steps, config.ema_per_micro_batch = accum, per_micro_batch
    return config


def _micro_batches(cfg, steps: int, accum: int, seed: int) -> list:
    """Per step, `accum` micro-batches of (signal (B, T, leads), masked (B, N)),
    all with the same kept count (one count per step, as our batches have)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        k = masking.sample_num_keep(rng, cfg.num_patches, (0.15, 0.25))
        out.append([(rng.standard_normal((MICRO_BATCH, cfg.window_samples, cfg.num_leads))
                     .astype(np.float32),
                     masking.sample_block_masks(rng, MICRO_BATCH, cfg.num_patches, k, 10))
                    for _ in range(accum)])
    return out


def _our_batch(micro: list, bucket: int) -> dict:
    """Interleaves micro-batches so that jepa_step.micro_batches splits them back."""
    signal = np.stack([s for s, _ in micro], axis=1).reshape((-1,) + micro[0][0].shape[1:])
    masked = np.stack([m for _, m in micro], axis=1).reshape(-1, micro[0][1].shape[1])
    keep_idx, keep_valid = masking.keep_indices(masked, bucket)
    return {'signal': signal, 'keep_idx': keep_idx, 'keep_valid': keep_valid,
            'predict_mask': masked}


_to_ours = torch_import.convert_context_state
_target_to_ours = torch_import.convert_target_state


def _state_arrays(model) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _moved(model, momentum: float):
    """A copy of `model` whose target made the EMA update that starts the
    published code's next forward pass: our state holds the target after it."""
    moved = copy.deepcopy(model)
    moved.move_target(momentum)
    return moved


def _adam_moments(model, opt) -> tuple[dict, dict]:
    mu, nu = {}, {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            mu[name] = opt.state[p]['exp_avg'].numpy()
            nu[name] = opt.state[p]['exp_avg_sq'].numpy()
    return mu, nu


def assert_trees_close(ours, theirs, tol, what):
    flat_a = jax.tree_util.tree_flatten_with_path(ours)[0]
    flat_b = dict(jax.tree_util.tree_flatten_with_path(theirs)[0])
    assert len(flat_a) == len(flat_b), what
    for path, a in flat_a:
        a, b = np.asarray(a, np.float64), np.asarray(flat_b[path], np.float64)
        err = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)
        assert err < tol, f'{what} {jax.tree_util.keystr(path)}: relative error {err:.2e}'


def _run_both(config, *, start: int, steps: int, seed: int = 0):
    cfg = model_config_from(config)
    accum = config.grad_accum_steps
    torch.manual_seed(seed)
    model = ref.Jepa(cfg)
    with torch.no_grad():  # a target apart from the online encoder, as mid-training
        for p in model.target_encoder.parameters():
            p.add_(0.02 * torch.randn_like(p))
    start_weights = _state_arrays(model)
    ticks = accum * start if config.ema_per_micro_batch else start
    opt = ref.make_optimizer(model, b1=config.b1, b2=config.b2, eps=config.eps)
    for p in model.parameters():
        if p.requires_grad:
            opt.state[p] = {'step': torch.tensor(float(start)), 'exp_avg': torch.zeros_like(p),
                            'exp_avg_sq': torch.zeros_like(p)}
    sched = ref.Schedules.from_config(config)

    schedules = optim.make_schedules(config)
    tx = optim.make_optimizer(config, schedules)
    params = _to_ours(start_weights, cfg)
    state = jepa.TrainState(
        step=jnp.asarray(start, jnp.int32), params=params,
        target_params=_target_to_ours(_state_arrays(_moved(model, sched.momentum(ticks))), cfg),
        # Both optimisers at step `start` with zero moments: optax takes the
        # schedules' step and Adam's bias correction from its count, torch
        # from each parameter's 'step'.
        opt_state=optax.tree_utils.tree_set(tx.init(params), count=jnp.asarray(start, jnp.int32)))
    step_fn = jax.jit(jepa.make_train_step(cfg, tx, schedules, grad_accum_steps=accum,
                                           rank_every=0,
                                           ema_per_micro_batch=config.ema_per_micro_batch))
    ours_losses, ref_losses = [], []
    for i, micro in enumerate(_micro_batches(cfg, steps, accum, seed)):
        state, metrics = step_fn(state, _our_batch(micro, config.data.keep_bucket))
        ours_losses.append(float(metrics['loss']))
        loss, ticks, _ = ref.train_step(
            model, opt, sched, start + i,
            [ref.micro_batch(s, m) for s, m in micro], ticks)
        ref_losses.append(loss)
    return cfg, state, ours_losses, model, opt, sched, ticks, ref_losses


@pytest.mark.parametrize('case', ['first_step', 'warmup_and_decay', 'accumulation',
                                  'first_release_model', 'first_step_stock_kernels',
                                  'first_release_model_stock_kernels'])
def test_steps_equal_the_published_step(case):
    config, start, steps = {
        'first_step': (_config(warmup=0), 0, 1),
        'warmup_and_decay': (_config(warmup=10), 4, 3),
        'accumulation': (_config(warmup=10, accum=2, per_micro_batch=True), 2, 2),
        'first_release_model': (_config(warmup=0, first_release=True), 0, 2),
        'first_step_stock_kernels': (_config(warmup=0, kernels='stock'), 0, 1),
        'first_release_model_stock_kernels': (
            _config(warmup=0, first_release=True, kernels='stock'), 0, 2),
    }[case]
    cfg, state, ours_losses, model, opt, sched, ticks, ref_losses = _run_both(
        config, start=start, steps=steps)
    if case == 'warmup_and_decay':  # the schedules were where the case says
        assert 0 < sched.lr(start) < config.learning_rate and sched.wd(start) > config.weight_decay
    np.testing.assert_allclose(ours_losses, ref_losses, rtol=LOSS_RTOL)
    weights = _state_arrays(model)
    assert_trees_close(state.params, _to_ours(weights, cfg), PARAM_TOL, 'online')
    assert_trees_close(state.target_params,
                       _target_to_ours(_state_arrays(_moved(model, sched.momentum(ticks))), cfg),
                       PARAM_TOL, 'target')
    mu, nu = _adam_moments(model, opt)
    assert_trees_close(optax.tree_utils.tree_get(state.opt_state, 'mu'), _to_ours(mu, cfg),
                       MOMENT_TOL, 'Adam first moment')
    assert_trees_close(optax.tree_utils.tree_get(state.opt_state, 'nu'), _to_ours(nu, cfg),
                       MOMENT_TOL, 'Adam second moment')


def test_ema_per_micro_batch_advances_the_momentum_once_per_micro_batch():
    """With the online encoder frozen (learning rate 0), 3 steps of 2 micro-
    batches move the target by the product of the 6 momenta (the first,
    like the published code's first update, acts on a copy and is a no-op)."""
    config = _config(warmup=0, accum=2, per_micro_batch=True)
    config.learning_rate = config.final_learning_rate = 0.0
    config.weight_decay = config.final_weight_decay = 0.0
    cfg = model_config_from(config)
    schedules = optim.make_schedules(config)
    tx = optim.make_optimizer(config, schedules)
    state = jepa.init_train_state(jax.random.PRNGKey(0), cfg, tx)
    online = state.params['encoder']
    offset = jax.tree_util.tree_map(lambda p: p + 1.0, online)
    state = state.replace(target_params=offset)  # target - online = 1 everywhere
    step_fn = jax.jit(jepa.make_train_step(cfg, tx, schedules, grad_accum_steps=2, rank_every=0,
                                           ema_per_micro_batch=True))
    for micro in _micro_batches(cfg, 3, 2, seed=1):
        state, _ = step_fn(state, _our_batch(micro, config.data.keep_bucket))
    m = schedules['momentum']
    # Step t: tick 2t + 1 before its second micro-batch, 2t + 2 after its update.
    expected = float(np.prod([m(t) for t in range(1, 7)]))
    gap = jax.tree_util.tree_map(lambda t, o: t - o, state.target_params, online)
    for leaf in jax.tree_util.tree_leaves(gap):
        np.testing.assert_allclose(np.asarray(leaf), expected, rtol=1e-5)


@pytest.mark.parametrize('accum', [1, 2])
def test_reference_statement_equals_the_published_code(accum, official_dir):
    config = _config(warmup=10, accum=accum, per_micro_batch=accum > 1)
    cfg = model_config_from(config)
    torch.manual_seed(0)
    model = ref.Jepa(cfg)
    official = official_code.OfficialCode(str(official_dir), cfg, config,
                                             start_step=3)
    official.model.load_state_dict(model.state_dict())
    opt = ref.make_optimizer(model, b1=config.b1, b2=config.b2, eps=config.eps)
    sched, ticks = ref.Schedules.from_config(config), accum * 3
    for i, micro in enumerate(_micro_batches(cfg, 3, accum, seed=2)):
        batches = [ref.micro_batch(s, m) for s, m in micro]
        loss, ticks, _ = ref.train_step(model, opt, sched, 3 + i, batches, ticks)
        np.testing.assert_allclose(official.step(batches)['loss'], loss, rtol=1e-6)
    ours, theirs = _state_arrays(model), _state_arrays(official.model)
    assert set(ours) == set(theirs)
    for k in ours:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-5, atol=1e-7, err_msg=k)


@pytest.mark.parametrize('side,init', [('reference', 'trunc_normal'), ('reference', 'xavier'),
                                       ('published', 'trunc_normal')])
def test_our_initialiser_draws_what_the_published_one_draws(side, init, request):
    """Our initial weights and the PyTorch side's, each drawn by its own
    initialiser, differ by chance only: every parameter from the same
    distribution (equal constants; equal mean and std within sampling error;
    the same shape of distribution by a two-sample Kolmogorov-Smirnov test).
    From the same weights the two steps are equal (the tests above), so
    runs of the two sides differ in their initial draw and nothing else."""
    from scipy import stats  # pylint: disable=g-import-not-at-top
    official_dir = request.getfixturevalue('official_dir') if side == 'published' else None
    config = get_config('vit_xs,100hz')
    config.unlock()
    if init == 'xavier':  # the first release
        config.model.init, config.model.norm_bias = 'xavier', True
    cfg = model_config_from(config)
    torch.manual_seed(0)
    model = (ref.Jepa(cfg) if side == 'reference' else official_code.OfficialCode(
        str(official_dir), cfg, config).model)
    theirs = dict(jax.tree_util.tree_flatten_with_path(_to_ours(_state_arrays(model), cfg))[0])
    ours = jax.tree_util.tree_flatten_with_path(jepa.init_params(jax.random.PRNGKey(0), cfg))[0]
    assert len(ours) == len(theirs)
    for path, a in ours:
        name = jax.tree_util.keystr(path)
        a, b = np.asarray(a, np.float64).ravel(), np.asarray(theirs[path], np.float64).ravel()
        if b.std() == 0:
            np.testing.assert_array_equal(a, b, err_msg=name)
            continue
        n = a.size
        assert abs(a.std() / b.std() - 1) < 6 / np.sqrt(n), (name, a.std(), b.std())
        assert abs(a.mean() - b.mean()) < 6 * b.std() / np.sqrt(n), (name, a.mean(), b.mean())
        if n >= 1000:
            assert stats.ks_2samp(a, b).pvalue > 1e-6, name
