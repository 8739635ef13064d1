"""AUC / AUPRC against sklearn, bootstrap intervals and the paired comparison."""

import numpy as np
import pytest
from sklearn import metrics as skm

from jepa_ecg.evaluation import metrics


def _random_task(n, c, seed, signal=1.0, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.random((n, c)) < rng.uniform(0.05, 0.5, size=c)
    y[0], y[1] = True, False  # every class has both kinds of record
    s = rng.standard_normal((n, c)) + signal * y
    if ties:
        s = np.round(s, 1)  # many tied scores
    return y.astype(np.float32), s


@pytest.mark.parametrize('ties', [False, True])
def test_auc_and_auprc_match_sklearn(ties):
    for seed in range(5):
        y, s = _random_task(300, 7, seed, ties=ties)
        np.testing.assert_allclose(metrics.macro_roc_auc(y, s),
                                   skm.roc_auc_score(y, s, average='macro'), rtol=0, atol=1e-12)
        np.testing.assert_allclose(metrics.roc_auc_per_class(y, s),
                                   skm.roc_auc_score(y, s, average=None), atol=1e-12)
        np.testing.assert_allclose(metrics.average_precision_per_class(y, s),
                                   skm.average_precision_score(y, s, average=None), atol=1e-12)
        np.testing.assert_allclose(metrics.macro_average_precision(y, s),
                                   skm.average_precision_score(y, s, average='macro'),
                                   atol=1e-12)


def test_unscorable_class_is_left_out_of_the_macro():
    y, s = _random_task(200, 4, 0)
    y[:, 2] = 0  # no positive: AUC undefined
    per_class = metrics.roc_auc_per_class(y, s)
    assert np.isnan(per_class[2])
    keep = [0, 1, 3]
    assert metrics.macro_roc_auc(y, s) == pytest.approx(
        skm.roc_auc_score(y[:, keep], s[:, keep], average='macro'))


def test_roc_curve_matches_sklearn():
    y, s = _random_task(200, 1, 3, ties=True)
    fpr, tpr = metrics.roc_curve(y[:, 0], s[:, 0])
    fpr_sk, tpr_sk, _ = skm.roc_curve(y[:, 0], s[:, 0], drop_intermediate=False)
    np.testing.assert_allclose(fpr, fpr_sk)
    np.testing.assert_allclose(tpr, tpr_sk)
    assert np.trapezoid(tpr, fpr) == pytest.approx(skm.roc_auc_score(y[:, 0], s[:, 0]))


def test_weighted_auc_equals_auc_of_the_resample():
    # The multiplicity trick must give exactly the AUC of the drawn records.
    y, s = _random_task(150, 3, 1, ties=True)
    rng = np.random.default_rng(0)
    w = metrics.bootstrap_weights(y, 5, rng)
    assert (w.sum(axis=1) == len(y)).all()
    boot = metrics.bootstrap_macro_auc(y, s, w)
    for r in range(5):
        idx = np.repeat(np.arange(len(y)), w[r].astype(int))
        assert boot[r] == pytest.approx(skm.roc_auc_score(y[idx], s[idx], average='macro'),
                                        abs=1e-12)


def test_bootstrap_ci_contains_point_estimate_and_narrows_with_more_records():
    widths = []
    for n in (200, 800, 3200):
        y, s = _random_task(n, 5, 7)
        out = metrics.auc_with_ci(y, s, num_resamples=300, seed=0)
        assert out['ci_low'] <= out['auc'] <= out['ci_high']
        widths.append(out['ci_high'] - out['ci_low'])
    assert widths[0] > widths[1] > widths[2]
    # Width shrinks like 1/sqrt(n): 4x the records, about half the width.
    assert 0.3 < widths[1] / widths[0] < 0.75


def test_resamples_without_a_positive_are_redrawn():
    rng = np.random.default_rng(0)
    y = np.zeros((100, 2), np.float32)
    y[:50, 0] = 1
    y[7, 1] = 1  # one positive only: most resamples lack it
    s = rng.standard_normal((100, 2)) + y
    w = metrics.bootstrap_weights(y, 200, np.random.default_rng(1))
    assert (w[:, 7] > 0).all()
    out = metrics.auc_with_ci(y, s, num_resamples=200)
    assert np.isfinite([out['ci_low'], out['ci_high']]).all()


def test_paired_bootstrap():
    y, s = _random_task(500, 4, 2)
    same = metrics.paired_bootstrap(y, s, s, num_resamples=100)
    assert same['diff'] == 0 and same['ci_low'] == 0 and same['ci_high'] == 0
    assert same['p_value'] == 1.0
    rng = np.random.default_rng(5)
    worse = s + 2.0 * rng.standard_normal(s.shape)
    out = metrics.paired_bootstrap(y, s, worse, num_resamples=300)
    assert out['diff'] == pytest.approx(out['auc_a'] - out['auc_b'])
    assert 0 < out['ci_low'] <= out['diff'] <= out['ci_high']
    assert out['p_value'] < 0.01
    flipped = metrics.paired_bootstrap(y, worse, s, num_resamples=300)
    assert flipped['diff'] == pytest.approx(-out['diff'])



def test_several_probes_of_one_encoder_are_scored_by_their_mean_auc():
    y, s = _random_task(400, 4, 6)
    rng = np.random.default_rng(7)
    other = s + 0.5 * rng.standard_normal(s.shape)
    worse = s + 2.0 * rng.standard_normal(s.shape)
    # One probe in a list is the probe itself, interval and all.
    assert metrics.auc_with_ci(y, [s], num_resamples=200) == metrics.auc_with_ci(
        y, s, num_resamples=200)
    assert metrics.paired_bootstrap(y, [s], [worse], num_resamples=200) == \
        metrics.paired_bootstrap(y, s, worse, num_resamples=200)
    two = metrics.auc_with_ci(y, [s, other], num_resamples=300)
    assert two['auc'] == pytest.approx(np.mean([metrics.macro_roc_auc(y, s),
                                                metrics.macro_roc_auc(y, other)]))
    assert two['ci_low'] < two['auc'] < two['ci_high']
    out = metrics.paired_bootstrap(y, [s, other], [worse, worse], num_resamples=300)
    assert out['auc_a'] == pytest.approx(two['auc'])
    assert out['diff'] == pytest.approx(two['auc'] - metrics.macro_roc_auc(y, worse))
    assert 0 < out['ci_low'] <= out['diff'] <= out['ci_high']
    with pytest.raises(ValueError, match='differ in shape'):
        metrics.paired_bootstrap(y, [s, s[:10]], worse, num_resamples=10)

def test_classification_report_and_seed_summary():
    y, s = _random_task(300, 3, 4)
    rep = metrics.classification_report(y, s, ['A', 'B', 'C'], num_resamples=50)
    assert [r['class'] for r in rep['per_class']] == ['A', 'B', 'C']
    assert rep['macro_auc'] == pytest.approx(np.mean([r['auc'] for r in rep['per_class']]))
    assert rep['macro_auc_ci'][0] <= rep['macro_auc'] <= rep['macro_auc_ci'][1]
    summary = metrics.summarize_seeds([
        {'test': {'macro_auc': 0.8, 'macro_auprc': 0.5}, 'best_val_auc': 0.7},
        {'test': {'macro_auc': 0.9, 'macro_auprc': 0.6}, 'best_val_auc': 0.8}])
    assert summary['test_macro_auc']['mean'] == pytest.approx(0.85)
    assert summary['test_macro_auc']['std'] == pytest.approx(0.05)
