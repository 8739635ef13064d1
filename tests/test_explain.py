"""`Classifier.explain` and `jepa-ecg explain`: relevance where the class evidence is,
the pooler's attention as the model computes it, real PTB-XL files through the CLI."""

import csv
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jepa_ecg import cli
from jepa_ecg.ecg import synthetic
from jepa_ecg.ecg.leads import LEADS
from jepa_ecg.inference import classifier as classifier_lib
from jepa_ecg.inference import explain
from jepa_ecg.inference.encoder import Encoder
from jepa_ecg.models import build_encoder, model_config
from jepa_ecg.models.classifier import build_classifier, init_classifier

FS = 100.0
CROP = 250
BURST_SECONDS = 0.3
STATS = {'mean': [0.0] * 12, 'std': [0.4] * 12, 'source': 'test'}


def _burst(n):
    """The class-defining feature: a 12 Hz burst on the chest leads, 0.3 s long."""
    t = np.arange(n) / FS
    out = np.zeros((n, 12), np.float32)
    out[:, 6:] = 1.5 * np.sin(2 * np.pi * 12 * t)[:, None] * np.hanning(n)[:, None]
    return out


def _training_batch(rng, backgrounds, size):
    x = np.empty((size, CROP, 12), np.float32)
    y = rng.integers(0, 2, size).astype(np.float32)
    n = int(BURST_SECONDS * FS)
    for i in range(size):
        rec = backgrounds[rng.integers(len(backgrounds))]
        s = rng.integers(0, len(rec) - CROP + 1)
        x[i] = rec[s:s + CROP]
        if y[i]:
            b = rng.integers(0, CROP - n + 1)
            x[i, b:b + n] += _burst(n)
    return np.clip(x / 0.4, -5, 5), y[:, None]


@pytest.fixture(scope='module')
def burst_classifier():
    """A tiny classifier trained to tell synthetic ECG crops with a burst from those without."""
    backgrounds = [r['signal'] for r in synthetic.generate_records(3, 0, 24, fs=FS)]
    cfg = model_config('tiny', fs=FS)
    model = build_classifier(cfg, 1, head='attentive')
    params = init_classifier(model, jax.random.PRNGKey(0), CROP)
    # Clipped: unclipped, the loss spikes mid-run and where training lands
    # after the spike hangs on float rounding.
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-3))
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, x, y):
        def loss(p):
            return optax.sigmoid_binary_cross_entropy(model.apply({'params': p}, x), y).mean()
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, value

    rng = np.random.default_rng(0)
    for _ in range(200):
        params, opt, value = step(params, opt, *_training_batch(rng, backgrounds, 32))
    x, y = _training_batch(np.random.default_rng(99), backgrounds, 128)
    accuracy = float(((model.apply({'params': params}, x) > 0) == (y > 0.5)).mean())
    assert accuracy > 0.9, f'the burst classifier did not learn (accuracy {accuracy})'
    enc = Encoder(cfg, params['encoder'], lead_stats=STATS, leads=LEADS)
    return classifier_lib.Classifier(enc, params['head'], head='attentive',
                                     class_names=['burst'])


@pytest.mark.slow
@pytest.mark.parametrize('method', explain.METHODS)
def test_relevance_concentrates_on_the_class_evidence(burst_classifier, method):
    rec = synthetic.generate_record(3, 500, fs=FS)['signal'].copy()  # unseen background
    background = rec.copy()
    n, at = int(BURST_SECONDS * FS), int(6.0 * FS)
    rec[at:at + n] += _burst(n)
    exp = burst_classifier.explain(rec, FS, LEADS, method=method)
    # Logits are averaged over the record's 7 windows and only 2-3 see the burst.
    assert exp.probabilities[0] > burst_classifier.predict(background, FS, LEADS)[0, 0] + 0.01
    assert exp.relevance.shape == (1, 200, 12) and exp.classes.tolist() == [0]
    rel = np.abs(exp.patch_relevance[0])
    p = exp.patch_size
    inside = np.zeros(len(rel), bool)
    inside[at // p:(at + n) // p] = True
    ratio = rel[inside].mean() / rel[~inside].mean()
    assert ratio > 3, f'{method}: relevance inside the burst only {ratio:.1f}x outside'
    near = np.zeros(len(rel), bool)
    near[at // p - 1:(at + n) // p + 1] = True
    if method == 'integrated_gradients':
        # The strongest patch is in the burst, and most relevance is within a patch of it.
        assert inside[np.argmax(rel)] and rel[near].sum() > 0.5 * rel.sum()
    else:
        # Gradient x input is local and noisier: the burst is among the 3 strongest patches.
        assert rel[near].max() >= np.sort(rel)[-3]
    # The chest leads, which carry the burst, hold most of its relevance.
    per_lead = np.abs(exp.relevance[0][inside]).sum(axis=0)
    assert per_lead[6:].sum() > 2 * per_lead[:6].sum()
    assert exp.attention is not None and exp.attention.shape == (200,)


def test_integrated_gradients_add_up_to_the_logit_difference(burst_classifier):
    rec = synthetic.generate_record(3, 501, fs=FS, duration_s=7.3)['signal']
    clf = burst_classifier
    exp = clf.explain(rec, FS, LEADS, method='integrated_gradients', steps=128)
    x = clf.encoder.preprocess(rec, FS, LEADS)
    logit = clf.window_logits(clf.windows(x)).mean()
    base = clf.window_logits(clf.windows(np.zeros_like(x))).mean()
    assert exp.relevance.sum() == pytest.approx(logit - base, rel=0.03, abs=0.02)
    assert exp.relevance.shape[1] == -(-len(x) // 5)  # a partial last patch counts


@pytest.mark.slow
def test_pooler_attention_reproduces_the_head():
    cfg = model_config('tiny', fs=FS)
    model = build_classifier(cfg, 4, head='attentive')
    params = init_classifier(model, jax.random.PRNGKey(1), CROP)
    x = jax.random.normal(jax.random.PRNGKey(2), (3, CROP, 12))
    tokens = build_encoder(cfg).apply({'params': params['encoder']}, x, keep_registers=True)
    head = params['head']
    att = explain.pooler_attention_heads(tokens, head, cfg.num_heads)  # (B, H, N)
    b, n, dim = tokens.shape
    v = (tokens @ head['kv']['kernel']).reshape(b, n, 2, cfg.num_heads, -1)[:, :, 1]
    pooled = jnp.einsum('bhn,bnhd->bhd', att, v).reshape(b, dim)
    np.testing.assert_allclose(pooled @ head['proj']['kernel'],
                               model.apply({'params': params}, x), rtol=1e-4, atol=1e-5)
    patches = explain.pooler_attention(tokens, head, cfg.num_heads, cfg.num_registers)
    assert patches.shape == (3, CROP // 5)
    np.testing.assert_allclose(patches.sum(-1), 1.0, rtol=1e-5)


def test_explain_cli_on_real_ptbxl_files(ptbxl_dir, tmp_path):
    clf_dir = tmp_path / 'clf'
    cfg = model_config('tiny', fs=FS)
    model = build_classifier(cfg, 3, head='attentive')
    params = init_classifier(model, jax.random.PRNGKey(5), CROP)
    classifier_lib.save_classifier(str(clf_dir), cfg, params, head='attentive',
                                   class_names=['NORM', 'MI', 'STTC'], lead_stats=STATS)
    heads = sorted((ptbxl_dir / 'records100').rglob('*_lr.hea'))[:2]
    assert heads, 'no records100 files'
    out = tmp_path / 'why'
    files = [str(h) for h in heads]
    assert cli.main(['explain', *files, '--checkpoint', str(clf_dir), '--out', str(out),
                     '--top-k', '2', '--quiet']) == 0
    preds = tmp_path / 'p.csv'
    assert cli.main(['predict', *files, '--checkpoint', str(clf_dir), '--out', str(preds),
                     '--quiet']) == 0
    with open(preds) as f:
        rows = list(csv.reader(f))[1:]
    for h, row in zip(heads, rows):
        name = h.name[:-4]
        with np.load(out / f'{name}.npz') as z:
            np.testing.assert_allclose(z['probabilities'], [float(v) for v in row[2:]],
                                       atol=2e-6)
            assert z['relevance'].shape == (2, 200, 12)
            assert z['patch_relevance'].shape == (2, 200)
            top = np.argsort(-z['probabilities'])[:2]
            assert z['class_indices'].tolist() == top.tolist()
            assert z['attention'].shape == (200,) and (z['attention'] >= 0).all()
            assert np.isfinite(z['relevance']).all() and np.abs(z['relevance']).sum() > 0
            pngs = [out / f'{name}_{c}.png' for c in z['classes']]
        assert all(p.stat().st_size > 10_000 for p in pngs)


@pytest.mark.slow
def test_explain_cli_errors(tmp_path, capsys):
    cfg = model_config('tiny', fs=FS)
    model = build_classifier(cfg, 2, head='register')
    params = init_classifier(model, jax.random.PRNGKey(0), CROP)
    clf_dir = tmp_path / 'clf'
    classifier_lib.save_classifier(str(clf_dir), cfg, params, head='register',
                                   class_names=['a', 'b'], lead_stats=STATS)
    sig = synthetic.generate_record(1, 0, fs=FS)['signal']
    np.savez(tmp_path / 'two_leads.npz', signal=sig[:, :2], fs=FS, leads=np.asarray(['I', 'II']))
    np.savez(tmp_path / 'ok.npz', signal=sig, fs=FS, leads=np.asarray(LEADS))
    out = tmp_path / 'out'
    code = cli.main(['explain', str(tmp_path / 'two_leads.npz'), str(tmp_path / 'ok.npz'),
                     '--checkpoint', str(clf_dir), '--out', str(out), '--quiet',
                     '--method', 'integrated_gradients', '--steps', '4'])
    err = capsys.readouterr().err
    assert code == 1 and 'two_leads.npz' in err and 'missing leads' in err
    assert os.path.exists(out / 'ok.npz') and os.path.exists(out / 'ok_a.png')
    with np.load(out / 'ok.npz') as z:
        assert 'attention' not in z and z['relevance'].shape == (2, 200, 12)
    code = cli.main(['explain', str(tmp_path / 'two_leads.npz'), '--checkpoint',
                     str(clf_dir), '--out', str(out), '--quiet', '--fill-missing=zero'])
    assert code == 0 and os.path.exists(out / 'two_leads.npz')
    assert cli.main(['explain', str(tmp_path / 'ok.npz'), '--checkpoint',
                     str(tmp_path / 'nope'), '--out', str(out), '--quiet']) == 2
    assert cli.main(['explain', str(tmp_path / 'ok.npz'), '--checkpoint', str(clf_dir),
                     '--out', str(tmp_path / 'ok.npz'), '--quiet']) == 2
