"""The pre-training recipes: the published default untouched, small_budget's fields."""

import numpy as np
import pytest

from experiments.configs import learning_curve as curve_configs
from experiments.configs import pretrain as pretrain_configs

# The published ECG-JEPA pre-training numbers (ECG-JEPA-FACTS.md).
PUBLISHED = {
    'learning_rate': 1e-3, 'final_learning_rate': 1e-6, 'warmup_start_learning_rate': 1e-6,
    'warmup_steps': 10_000, 'total_steps': 100_000, 'global_batch_size': 2048,
    'ema_momentum': 0.998, 'final_ema_momentum': 0.9995,
    'weight_decay': 0.01, 'final_weight_decay': 0.1,
    'b1': 0.9, 'b2': 0.99, 'eps': 1e-6, 'grad_clip': 0.0, 'target_layer_norm': False,
}


def _leaves(config, prefix=''):
    out = {}
    for k, v in config.items():
        if hasattr(v, 'items'):
            out.update(_leaves(v, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = v
    return out


@pytest.mark.parametrize('arg', ['vit_xs,ptbxl', 'vit_xs,ptbxl,published', 'published,ptbxl'])
def test_the_default_recipe_is_the_published_one(arg):
    c = pretrain_configs.get_config(arg)
    assert c.recipe == 'published'
    assert {k: c[k] for k in PUBLISHED} == PUBLISHED
    assert tuple(c.data.keep_ratio_range) == (0.15, 0.25)


SMALL = pretrain_configs.RECIPES['small_budget']


def test_small_budget_changes_its_recipe_fields_and_nothing_else():
    pub = _leaves(pretrain_configs.get_config('vit_xs,ptbxl,100hz'))
    small = _leaves(pretrain_configs.get_config('vit_xs,ptbxl,100hz,small_budget'))
    assert small.pop('recipe') == 'small_budget' and pub.pop('recipe') == 'published'
    changed = {k for k in pub if pub[k] != small[k]}
    assert changed == set(SMALL) and set(pub) == set(small)
    assert {k: small[k] for k in SMALL} == SMALL
    assert small['learning_rate'] < pub['learning_rate']


def test_small_budget_scales_the_published_rate_to_batch_64_by_the_square_root():
    published_batch = PUBLISHED['global_batch_size']
    scaled = PUBLISHED['learning_rate'] * (64 / published_batch) ** 0.5
    assert SMALL['learning_rate'] == pytest.approx(scaled, rel=2e-3)
    # The learning curve's `cpu` budget is the batch the rate was scaled to.
    assert curve_configs.get_config('cpu,small_budget').pretrain.global_batch_size == 64


@pytest.mark.parametrize('variant', ['vit_tiny', 'vit_b'])
def test_the_recipe_applies_over_every_variant_and_smoke(variant):
    for extra in ('', ',smoke'):
        c = pretrain_configs.get_config(f'{variant},ptbxl,small_budget{extra}')
        assert {k: c[k] for k in SMALL} == SMALL
        assert c.ema_momentum == PUBLISHED['ema_momentum']


def test_the_learning_curve_passes_the_recipe_to_pre_training():
    default = curve_configs.get_config('cpu')
    small = curve_configs.get_config('cpu,small_budget')
    assert default.pretrain.recipe == 'published'
    assert default.pretrain.learning_rate == PUBLISHED['learning_rate']
    assert small.pretrain.recipe == 'small_budget'
    assert {k: small.pretrain[k] for k in SMALL} == SMALL
    # The budget (batch, steps, warm-up) and the probe do not depend on the recipe.
    for field in ('global_batch_size', 'total_steps', 'warmup_steps', 'ema_momentum'):
        assert small.pretrain[field] == default.pretrain[field]
    assert _leaves(small.linear) == _leaves(default.linear)


def test_an_unknown_recipe_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match='small_budget'):
        pretrain_configs.get_config('vit_xs,recipe=tiny_budget')


def _curve(val, test, ci_low, band_val=(0.75, 0.76, 0.77)):
    """A curve.json-shaped dict: one point per budget (100, 200, ...)."""
    points = []
    for k, (v, t, lo) in enumerate(zip(val, test, ci_low)):
        paired = [{'random_seed': s, 'diff': t - 0.75, 'ci_low': lo, 'ci_high': t - 0.7,
                   'p_value': 0.01} for s in range(len(band_val))]
        points.append({'step': 100 * (k + 1), 'records_seen': 6400 * (k + 1),
                       'test_macro_auc': t, 'ci': [t - 0.01, t + 0.01], 'best_val_auc': v,
                       'pretrain_loss': 0.3, 'target_rank': 20.0, 'paired': paired})
    band = [{'test_macro_auc': 0.75, 'best_val_auc': b, 'seed': s, 'ci': [0.74, 0.76]}
            for s, b in enumerate(band_val)]
    return {'points': points, 'random': {'runs': band}}


def test_recipe_summary_answers_the_three_questions(tmp_path):
    from experiments import compare_curves, curve_plots
    rising = [_curve([0.78, 0.80, 0.84], [0.77, 0.79, 0.83], [0.01, 0.02, 0.06]),
              _curve([0.77, 0.805, 0.845], [0.775, 0.80, 0.835], [-0.01, 0.03, 0.05])]
    s = compare_curves.summarize(rising)
    assert s['beats_every_random_seed_from_step'] == 200  # seed 2 is not above at 100
    assert s['validation_never_falls_beyond_noise'] and s['largest_validation_fall'] < 0
    assert s['smallest_difference_at_largest_budget'] == pytest.approx(0.83 - 0.75)
    assert s['rows'][2]['min_ci_low'] == 0.05
    # A fall of 0.03 is beyond the random encoders' spread (std 0.0082).
    fell = [_curve([0.84, 0.81, 0.80], [0.83, 0.80, 0.79], [0.05, 0.02, -0.01])]
    falling = compare_curves.summarize(fell)
    assert not falling['validation_never_falls_beyond_noise']
    assert falling['largest_validation_fall'] == pytest.approx(0.03)
    assert falling['beats_every_random_seed_from_step'] is None
    # A seed still running: only the budgets both have.
    partial = _curve([0.78], [0.77], [0.01])
    assert [r['step'] for r in compare_curves.summarize([rising[0], partial])['rows']] == [100]
    text = compare_curves.report('small_budget', s)
    assert 'from step 200 on' in text and 'rises at every budget' in text
    assert 'does not beat' in compare_curves.report('x', falling)
    assert 'one budget so far' in compare_curves.report('x', compare_curves.summarize([partial]))
    png = curve_plots.plot_recipes({'a': rising, 'b': fell}, {'a': s, 'b': falling},
                                   str(tmp_path / 'r.png'))
    assert (tmp_path / 'r.png').stat().st_size > 10_000 and png.endswith('r.png')



def test_with_probe_seeds_the_fall_is_measured_against_the_probes_own_spread():
    from experiments import compare_curves
    curve = _curve([0.84, 0.81, 0.80], [0.83, 0.80, 0.79], [0.05, 0.02, -0.01])
    assert compare_curves.validation_noise([curve]) == (
        pytest.approx(np.std([0.75, 0.76, 0.77])), "random encoders' spread")
    # Three probes per encoder with a spread (sd 0.02) larger than the random band's.
    for p in curve['points']:
        v = p['best_val_auc']
        p['probes'] = [{'seed': j, 'best_val_auc': v + d, 'test_macro_auc': 0.8}
                       for j, d in enumerate((-0.02, 0.0, 0.02))]
    noise, source = compare_curves.validation_noise([curve])
    assert source == 'probe spread, 3 probes per encoder'
    assert noise == pytest.approx(0.02 * np.sqrt(2 / 3))
    s = compare_curves.summarize([curve])
    assert s['largest_validation_fall'] == pytest.approx(0.03)
    assert not s['validation_never_falls_beyond_noise']  # 0.03 > 0.0163
    assert 'probe spread, 3 probes per encoder' in compare_curves.report('x', s)


def test_a_curve_without_probes_is_refused_before_any_work(tmp_path):
    from experiments import learning_curve
    c = curve_configs.get_config('smoke')
    with c.unlocked():
        c.probe_seeds = 0
    with pytest.raises(ValueError, match='probe_seeds=0'):
        learning_curve.run_curve(c, str(tmp_path / 'curve'))
    assert not (tmp_path / 'curve').exists()
    assert curve_configs.get_config('cpu,probe_seeds=3').probe_seeds == 3
    assert curve_configs.get_config('cpu').probe_seeds == 1

def test_the_decay_fraction_ends_the_cosine_early_and_holds_its_floor():
    from jepa_ecg.training import optim
    c = curve_configs.get_config('cpu').pretrain
    assert c.lr_decay_fraction == 1.0  # the published cosine spans the run
    steps = np.arange(c.total_steps)
    spanning = optim.warmup_cosine(c.total_steps, c.learning_rate, c.final_learning_rate,
                                   c.warmup_steps, c.warmup_start_learning_rate)
    np.testing.assert_array_equal(optim.make_schedules(c)['lr'](steps), spanning(steps))
    with c.unlocked():
        c.final_learning_rate, c.lr_decay_fraction = 1e-4, 0.35
    lr = np.asarray(optim.make_schedules(c)['lr'](steps))
    end = round(0.35 * c.total_steps) - 1
    assert lr[c.warmup_steps] == pytest.approx(c.learning_rate)
    assert np.all(np.diff(lr[c.warmup_steps:end + 1]) < 0)
    np.testing.assert_allclose(lr[end:], 1e-4, rtol=1e-6)
    assert pretrain_configs.describe_schedule(c) == (
        'learning rate 0.001 (warm-up 80), cosine to 0.0001 by 35% of the steps, then held')
    assert pretrain_configs.describe_schedule(curve_configs.get_config('cpu').pretrain) == (
        'learning rate 0.001 (warm-up 80), cosine to 1e-06 over the run')


def test_the_measured_curves_kept_in_the_repo_read_back_and_summarise():
    # experiments/measured_curves holds the curve.json of ablation runs that
    # README's recipe table quotes; compare_curves must still read them.
    import json
    from conftest import REPO
    from experiments import compare_curves
    files = sorted((REPO / 'experiments' / 'measured_curves').glob('*/curve.json'))
    assert files
    for path in files:
        curve = json.loads(path.read_text())
        s = compare_curves.summarize([curve])
        assert [r['step'] for r in s['rows']] == [p['step'] for p in curve['points']]
        assert len(s['random_band']) == 3 and curve['lr_schedule'] in compare_curves.report(
            path.parent.name, s)
        assert not any('/work/' in json.dumps(p) for p in curve['points']), path
