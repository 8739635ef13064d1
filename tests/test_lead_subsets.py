"""Reduced leads: subset parsing, subset scoring identical to `predict --fill-missing=zero`,
lead dropout (rate, determinism by seed, exact zeros) in fine-tuning and pre-training."""

import csv
import warnings

import jax
import numpy as np
import pytest

from experiments.configs.finetune import get_config
from jepa_ecg import cli, sharding
from jepa_ecg.data import lead_subsets, preprocess
from jepa_ecg.data import ptbxl as data
from jepa_ecg.data import pretrain as pipeline
from jepa_ecg.data import sources as sources_lib
from jepa_ecg.data import source_stats as stats_lib
from jepa_ecg.ecg.leads import LEADS
from jepa_ecg.evaluation import lead_subsets as subset_eval
from jepa_ecg.evaluation.evaluator import EvaluationInterrupted, Evaluator
from jepa_ecg.inference import classifier as classifier_lib
from jepa_ecg.models import model_config
from jepa_ecg.models.classifier import build_classifier, init_classifier
from jepa_ecg.training import config_checks
from tfds_builders import build

FS = 100.0
CLASSES = ['NORM', 'MI', 'STTC']


def test_parse_named_and_listed_subsets():
    got = lead_subsets.parse_lead_subsets('12,6-limb,I+II,I, v2+AVR+v1 ')
    assert list(got) == ['12', '6-limb', 'I+II', 'I', 'v2+AVR+v1']
    assert got['12'] == LEADS
    assert got['6-limb'] == ('I', 'II', 'III', 'aVR', 'aVL', 'aVF')
    assert got['I+II'] == ('I', 'II') and got['I'] == ('I',)
    assert got['v2+AVR+v1'] == ('aVR', 'V1', 'V2')  # model order, canonical names
    with pytest.raises(ValueError, match='V7'):
        lead_subsets.parse_lead_subsets('I+V7')
    assert lead_subsets.parse_lead_subsets('') == {}


def _task(seed=0):
    rng = np.random.default_rng(seed)
    n, t = 48, 1000
    signals = (rng.standard_normal((n, t, 12)) * rng.uniform(0.1, 1, 12)
               + rng.uniform(-0.3, 0.3, 12)).astype(np.float32)
    labels = rng.random((n, len(CLASSES))) < 0.4
    labels[np.arange(n), rng.integers(0, len(CLASSES), n)] = True
    folds = np.repeat([1, 2, 9, 10], n // 4)
    task = data.make_task(data.ArrayRecords(signals, FS), labels, folds, np.arange(n),
                          task='superdiagnostic', classes=CLASSES, fs=FS, num_samples=t)
    return task, signals


def test_subset_records_are_preprocess_with_the_other_leads_absent():
    task, signals = _task()
    view = lead_subsets.restrict_task(task, ('I', 'II'))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', preprocess.MissingLeadsWarning)
        got = np.stack(list(view.records('test')))
        for row, x in zip(task.splits['test'].rows, got):
            want = preprocess.preprocess(signals[row][:, :2], FS, ['I', 'II'], target_fs=FS,
                                         stats=task.stats, fill_missing='zero')
            np.testing.assert_array_equal(x, want)
    assert np.all(got[:, :, 2:] == 0) and not np.signbit(got[:, :, 2:]).any()
    full = np.stack(list(task.records('test')))
    np.testing.assert_array_equal(got[:, :, :2], full[:, :, :2])
    # The 12-lead "subset" is the task itself.
    twelve = lead_subsets.restrict_task(task, LEADS)
    np.testing.assert_array_equal(np.stack(list(twelve.records('test'))), full)


def test_subset_scores_equal_cli_predict_fill_missing_zero(tmp_path):
    task, signals = _task(1)
    cfg = model_config('tiny', fs=FS)
    model = build_classifier(cfg, len(CLASSES), head='attentive')
    params = jax.tree_util.tree_map(np.asarray, init_classifier(model, jax.random.PRNGKey(0), 250))
    params['head'] = jax.tree_util.tree_map(lambda a: a * 30, params['head'])
    mesh = sharding.make_mesh()
    evaluator = Evaluator(lambda p, x: model.apply({'params': p}, x), task, mesh=mesh,
                          crop=250, stride=125, records_per_batch=8)
    replicated = jax.device_put(params, sharding.replicated(mesh))
    table = subset_eval.evaluate_lead_subsets(evaluator, replicated, '12,I+II,I',
                                              num_resamples=20, confidence=0.9, seed=0)
    assert list(table['subsets']) == ['12', 'I+II', 'I']
    full = evaluator.evaluate(replicated, 'test')
    assert table['subsets']['12']['macro_auc'] == pytest.approx(full.macro_auc, abs=1e-12)
    row = table['subsets']['I+II']
    assert row['leads'] == ['I', 'II'] and row['macro_auc_ci'][0] <= row['macro_auc']
    # The same records as files holding only leads I and II, through the CLI.
    clf_dir = tmp_path / 'clf'
    classifier_lib.save_classifier(str(clf_dir), cfg, params, head='attentive',
                                   class_names=CLASSES, lead_stats=task.stats)
    files = []
    for row_ in task.splits['test'].rows:
        path = tmp_path / 'in' / f'r{row_:03d}.npz'
        path.parent.mkdir(exist_ok=True)
        np.savez(path, signal=signals[row_][:, :2], fs=FS, leads=np.asarray(['I', 'II']))
        files.append(str(path))
    out = tmp_path / 'p.csv'
    assert cli.main(['predict', *files, '--checkpoint', str(clf_dir), '--out', str(out),
                     '--fill-missing=zero', '--quiet']) == 0
    with open(out) as f:
        cli_probs = np.asarray([[float(v) for v in r[2:]] for r in list(csv.reader(f))[1:]])
    view = lead_subsets.restrict_task(task, ('I', 'II'))
    ev = Evaluator(lambda p, x: model.apply({'params': p}, x), view, mesh=mesh, crop=250,
                   stride=125, records_per_batch=8)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', preprocess.MissingLeadsWarning)
        scores = ev.evaluate(replicated, 'test')
    np.testing.assert_allclose(cli_probs, scores.probabilities, atol=2e-6)
    assert row['macro_auc'] == pytest.approx(scores.macro_auc, abs=1e-12)
    png = subset_eval.plot_lead_subsets({'a': table, 'b': table}, str(tmp_path / 'x.png'))
    assert (tmp_path / 'x.png').stat().st_size > 1000 and png.endswith('x.png')


def test_a_subset_table_asked_to_stop_is_abandoned_between_batches():
    task, _ = _task(1)
    cfg = model_config('tiny', fs=FS)
    model = build_classifier(cfg, len(CLASSES), head='attentive')
    params = init_classifier(model, jax.random.PRNGKey(0), 250)
    mesh = sharding.make_mesh()
    evaluator = Evaluator(lambda p, x: model.apply({'params': p}, x), task, mesh=mesh,
                          crop=250, stride=125, records_per_batch=8)
    params = jax.device_put(params, sharding.replicated(mesh))
    asked = []

    def never():
        asked.append(1)
        return False

    kw = dict(num_resamples=5, confidence=0.9, seed=0)
    whole = subset_eval.evaluate_lead_subsets(evaluator, params, '12', interrupted=never, **kw)
    per_pass = len(asked)  # one question before each batch
    assert per_pass > 1
    untouched = subset_eval.evaluate_lead_subsets(evaluator, params, '12', **kw)
    assert untouched['subsets']['12']['macro_auc'] == whole['subsets']['12']['macro_auc']
    asked.clear()

    def during_the_second_subset():  # the stop arrives while its first batch runs
        asked.append(1)
        return len(asked) > per_pass + 1

    with pytest.raises(EvaluationInterrupted):
        subset_eval.evaluate_lead_subsets(evaluator, params, '12,I',
                                          interrupted=during_the_second_subset, **kw)
    assert len(asked) == per_pass + 2  # nothing asked after the stop


def test_lead_dropout_rate_determinism_and_exact_zeros():
    rng = np.random.default_rng(0)
    batch = {'signal': rng.standard_normal((64, 50, 12)).astype(np.float32),
             'target': np.ones((64, 3), np.float32)}
    drop = lead_subsets.LeadDropout(0.3, seed=7)
    dropped, kept_counts = 0, []
    for step in range(200):
        out = drop(step, batch)
        x = out['signal']
        zero = np.all(x == 0, axis=1)  # (B, L) leads zeroed
        # Zeroed leads are exactly +0.0; the others pass bit-equal.
        assert not np.signbit(x[np.broadcast_to(zero[:, None, :], x.shape)]).any()
        np.testing.assert_array_equal(x[~np.broadcast_to(zero[:, None, :], x.shape)],
                                      batch['signal'][~np.broadcast_to(zero[:, None, :],
                                                                       x.shape)])
        hit = zero.any(axis=1)
        dropped += hit.sum()
        kept_counts += (12 - zero[hit].sum(axis=1)).tolist()
        np.testing.assert_array_equal(out['target'], batch['target'])
    rate = dropped / (200 * 64)
    assert abs(rate - 0.3) < 0.02, rate  # 5 standard errors
    # A non-empty proper subset is kept: 1..11 leads, all counts seen.
    assert min(kept_counts) >= 1 and max(kept_counts) <= 11
    assert set(kept_counts) == set(range(1, 12))
    again = lead_subsets.LeadDropout(0.3, seed=7)
    np.testing.assert_array_equal(drop.keep_mask(5, 64, 12), again.keep_mask(5, 64, 12))
    assert not np.array_equal(drop.keep_mask(5, 64, 12),
                              lead_subsets.LeadDropout(0.3, seed=8).keep_mask(5, 64, 12))
    assert not np.array_equal(drop.keep_mask(5, 64, 12), drop.keep_mask(6, 64, 12))
    assert lead_subsets.LeadDropout(0.0, seed=7)(3, batch) is batch
    with pytest.raises(ValueError, match='rate'):
        lead_subsets.LeadDropout(1.5, seed=0)


def test_finetune_batches_with_lead_dropout():
    task, _ = _task()
    kw = dict(batch_size=8, crop=250, seed=3)
    plain = task.train_dataset(**kw)
    off = task.train_dataset(**kw, lead_dropout=0.0)
    on = task.train_dataset(**kw, lead_dropout=0.5)
    resumed = task.train_batches(**kw, lead_dropout=0.5, start_step=4)
    masks = lead_subsets.LeadDropout(0.5, 3)
    for step in range(6):
        a, b, c = plain[step], off[step], on[step]
        np.testing.assert_array_equal(a['signal'], b['signal'])
        keep = masks.keep_mask(step, 8, 12)
        np.testing.assert_array_equal(c['signal'], np.where(keep[:, None], a['signal'], 0))
        np.testing.assert_array_equal(c['target'], a['target'])
    np.testing.assert_array_equal(next(resumed)['signal'], on[4]['signal'])
    getattr(resumed, "close", lambda: None)()


@pytest.fixture(scope='module')
def synthetic_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('tfds'))
    build.build_dataset('synthetic_ecg/tiny', path)
    src = sources_lib.Source('ld_tiny', 'synthetic_ecg/tiny', 500.0)
    stats_lib.save_lead_stats(stats_lib.compute_lead_stats(src, path, max_records=16), src, path)
    return path, src


def test_pretrain_batches_with_lead_dropout(synthetic_dir):
    path, src = synthetic_dir
    kw = dict(data_dir=path, global_batch_size=8, fs=100.0, window_seconds=10.0,
              patch_size=5, seed=0, sources={'ld_tiny': src})
    plain = pipeline.PretrainPipeline({'ld_tiny': 1.0}, **kw)
    on = pipeline.PretrainPipeline({'ld_tiny': 1.0}, **kw, lead_dropout=0.5)
    masks = lead_subsets.LeadDropout(0.5, 0, 0)
    for step in (0, 3):
        a, b = plain.batch(step), on.batch(step)
        keep = masks.keep_mask(step, 8, 12)
        assert not keep.all()
        np.testing.assert_array_equal(b['signal'], np.where(keep[:, None], a['signal'], 0))
        for key in ('keep_idx', 'keep_valid', 'predict_mask', 'source_id'):
            np.testing.assert_array_equal(a[key], b[key])
    with on.iterator(start_step=3, num_threads=1) as it:
        np.testing.assert_array_equal(next(it)['signal'], on.batch(3)['signal'])


def test_config_checks_reject_bad_lead_options():
    config = get_config('finetune,smoke')
    assert config.data.lead_dropout == 0.0 and config.eval_lead_subsets == ''
    config_checks.check_finetune_config(config)
    config.data.lead_dropout = 1.5
    with pytest.raises(config_checks.ConfigError, match='lead_dropout'):
        config_checks.check_finetune_config(config)
    config.data.lead_dropout = 0.2
    config.eval_lead_subsets = '12,I+V9'
    with pytest.raises(config_checks.ConfigError, match='eval_lead_subsets'):
        config_checks.check_finetune_config(config)
