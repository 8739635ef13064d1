"""The evaluator: given a predict function, logits per record and scores of a split."""

import jax.numpy as jnp
import numpy as np
import pytest

from jepa_ecg import sharding
from jepa_ecg.data import ptbxl as data
from jepa_ecg.evaluation import metrics
from jepa_ecg.evaluation.evaluator import EvaluationInterrupted, Evaluator

FS = 100.0


def _task(signals, labels, classes):
    """Folds 1, 2 train, 9 val, 10 test, a quarter each."""
    folds = np.repeat([1, 2, 9, 10], len(signals) // 4)
    return data.make_task(data.ArrayRecords(signals, FS), labels, folds,
                          np.arange(len(signals)), task='superdiagnostic', classes=classes,
                          fs=FS, num_samples=signals.shape[1])


def test_evaluator_averages_logits_per_record_over_devices():
    # A stand-in "model": the logit of a window is its mean over time and leads,
    # so a record's averaged logit is the mean of its windows' means.
    rng = np.random.default_rng(0)
    n, t = 44, 1000
    task = _task(rng.standard_normal((n, t, 12)).astype(np.float32), np.ones((n, 1), bool),
                 ['x'])
    mesh = sharding.make_mesh()
    assert mesh.devices.size == 4

    def predict_fn(params, windows):
        return windows.mean(axis=(1, 2))[:, None] * params

    ev = Evaluator(predict_fn, task, mesh=mesh, crop=250, stride=125, records_per_batch=3)
    assert ev.windows_per_record == 7
    assert ev.records_per_batch % 4 == 0  # 7 windows per record: records must split 4 ways
    got = ev.logits(np.float32(1.0), 'test')
    w = np.stack([data.eval_windows(x, 250, 125) for x in task.records('test')])
    np.testing.assert_allclose(got[:, 0], w.mean(axis=(2, 3)).mean(axis=1), rtol=1e-5,
                               atol=1e-6)
    assert got.shape == (11, 1)


def test_evaluator_scores_a_split_from_its_logits():
    rng = np.random.default_rng(1)
    n, t = 64, 500
    y = rng.integers(0, 2, n)
    signals = rng.standard_normal((n, t, 12)).astype(np.float32)
    signals[:, :, 1] += 2.0 * y[:, None] - 1  # lead II gives the class away
    task = _task(signals, np.eye(2, dtype=bool)[y], ['neg', 'pos'])

    def predict_fn(params, windows):
        lead_ii = windows[:, :, 1].mean(axis=1) * params
        return jnp.stack([-lead_ii, lead_ii], axis=1)

    ev = Evaluator(predict_fn, task, mesh=sharding.make_mesh(), crop=250, stride=125,
                   records_per_batch=5)
    scores = ev.evaluate(np.float32(1.0), 'val')
    logits = ev.logits(np.float32(1.0), 'val')
    np.testing.assert_array_equal(scores.logits, logits)
    np.testing.assert_allclose(scores.probabilities, 1 / (1 + np.exp(-logits.astype(np.float64))))
    val = task.splits['val']
    assert scores.macro_auc == metrics.macro_roc_auc(val.targets, scores.probabilities)
    assert scores.macro_auc > 0.9
    report = ev.report(scores, 'val', num_resamples=20, confidence=0.9, seed=0)
    assert report['macro_auc'] == pytest.approx(scores.macro_auc)
    assert [r['class'] for r in report['per_class']] == ['neg', 'pos']


def test_a_pass_asked_to_stop_is_abandoned_between_batches():
    rng = np.random.default_rng(2)
    task = _task(rng.standard_normal((40, 500, 12)).astype(np.float32),
                 np.ones((40, 1), bool), ['x'])
    ev = Evaluator(lambda params, w: w.mean(axis=(1, 2))[:, None] * params, task,
                   mesh=sharding.make_mesh(), crop=250, stride=125, records_per_batch=4)
    asked = []

    def interrupted():  # a stop arrives while the second of three batches runs
        asked.append(len(asked))
        return len(asked) > 2

    with pytest.raises(EvaluationInterrupted, match='val pass abandoned after 2 batches'):
        ev.evaluate(np.float32(1.0), 'val', interrupted)
    assert len(asked) == 3  # no batch ran after the answer
    full = ev.logits(np.float32(1.0), 'val', lambda: False)
    np.testing.assert_array_equal(full, ev.logits(np.float32(1.0), 'val'))
    assert full.shape == (10, 1)
