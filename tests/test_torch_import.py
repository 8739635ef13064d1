"""Official PyTorch checkpoint layout -> our Flax encoder, checked without torch.

The state dicts are built from numpy arrays with the official shapes and key
names; the reference forward pass below is written from the PyTorch module
semantics (Conv1d patch embedding on (B, C, T), nn.Linear y = x W^T + b,
qkv reshaped to (B, N, 3, H, Dh)), independently of our Flax code.
"""

import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.special

from jepa_ecg.inference import encoder as encoder_lib
from jepa_ecg.inference import torch_import

OFFICIAL_LEADS = ['I', 'II', 'III', 'AVR', 'AVL', 'AVF', 'V1', 'V2', 'V3', 'V4', 'V5', 'V6']


def official_config(**overrides):
    cfg = dict(sampling_frequency=100, channels=OFFICIAL_LEADS, channel_size=200, patch_size=5,
               min_block_size=10, min_keep_ratio=0.15, max_keep_ratio=0.25,
               datasets={'ptb-xl': 1.0}, dim=32, depth=2, num_heads=4, pred_dim=16,
               pred_depth=1, pred_num_heads=2, mlp_ratio=4.0, qkv_bias=False, dropout=0.0,
               attn_dropout=0.0, num_registers=1, bias=False, norm_eps=1e-6,
               layer_scale_eps=0.0, steps=10, batch_size=8)
    cfg.update(overrides)
    return cfg


def _blocks_state(s, w, cfg, d, depth, norm_bias):
    """Official block entries of width d: blocks.{i}.norm1/attn/norm2/mlp."""
    h = int(d * cfg['mlp_ratio'])
    for i in range(depth):
        b = f'blocks.{i}.'
        for n in ('norm1', 'norm2'):
            s[b + n + '.weight'] = 1 + w(d, scale=0.1)
            if norm_bias:
                s[b + n + '.bias'] = w(d, scale=0.1)
        s[b + 'attn.qkv.weight'] = w(3 * d, d)
        if cfg['qkv_bias']:
            s[b + 'attn.qkv.bias'] = w(3 * d)
        s[b + 'attn.proj.weight'] = w(d, d)
        s[b + 'mlp.fc1.weight'] = w(h, d)
        s[b + 'mlp.fc2.weight'] = w(d, h)
        if cfg['bias']:
            s[b + 'attn.proj.bias'] = w(d)
            s[b + 'mlp.fc1.bias'] = w(h)
            s[b + 'mlp.fc2.bias'] = w(d)
    s['norm.weight'] = 1 + w(d, scale=0.1)
    if norm_bias:
        s['norm.bias'] = w(d, scale=0.1)
    return s


def _weights(rng):
    def w(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)
    return w


def official_encoder_state(cfg, rng, norm_bias=None):
    """Random weights under the official key names and shapes.

    norm_bias: LayerNorm biases (default: cfg['bias']); True with bias=False
    is the layout of the first official release.
    """
    d, c, p = cfg['dim'], len(cfg['channels']), cfg['patch_size']
    w = _weights(rng)
    s = {'patch_embed.proj.weight': w(d, c, p)}
    if cfg['bias']:
        s['patch_embed.proj.bias'] = w(d)
    if cfg['num_registers']:
        s['registers'] = w(1, cfg['num_registers'], d)
    return _blocks_state(s, w, cfg, d, cfg['depth'],
                         cfg['bias'] if norm_bias is None else norm_bias)


def official_predictor_state(cfg, rng, norm_bias=None):
    """Random predictor weights under the official names (`predictor.` removed)."""
    d, pd = cfg['dim'], cfg['pred_dim']
    w = _weights(rng)
    s = {'embed.weight': w(pd, d), 'mask_token': w(1, 1, pd), 'proj.weight': w(d, pd)}
    if cfg['bias']:
        s['embed.bias'], s['proj.bias'] = w(pd), w(d)
    return _blocks_state(s, w, cfg, pd, cfg['pred_depth'],
                         cfg['bias'] if norm_bias is None else norm_bias)


def reference_forward(state, cfg, x_bct):
    """Official target-encoder forward in float64 numpy: (B, C, T) -> (B, N, dim)."""
    x = x_bct.astype(np.float64)
    st = {k: v.astype(np.float64) for k, v in state.items()}
    d, p, heads = cfg['dim'], cfg['patch_size'], cfg['num_heads']
    bsz, c, t = x.shape
    n = t // p
    # Conv1d(kernel=stride=p): out[b, d, j] = sum_{c,k} W[d, c, k] x[b, c, j*p + k].
    xp = x.reshape(bsz, c, n, p)
    tok = np.einsum('dck,bcjk->bjd', st['patch_embed.proj.weight'], xp)
    if 'patch_embed.proj.bias' in st:
        tok = tok + st['patch_embed.proj.bias']
    tok = tok + _sincos(n, d)
    r = cfg['num_registers']
    if r:
        tok = np.concatenate([np.repeat(st['registers'], bsz, axis=0), tok], axis=1)
    tok = _reference_blocks(tok, st, cfg['depth'], heads, cfg['norm_eps'])
    return tok[:, r:]


def _ln(z, st, prefix, eps):
    """nn.LayerNorm; its bias is used whenever the state dict has one."""
    mu = z.mean(-1, keepdims=True)
    var = ((z - mu) ** 2).mean(-1, keepdims=True)
    out = (z - mu) / np.sqrt(var + eps) * st[prefix + '.weight']
    return out + st[prefix + '.bias'] if prefix + '.bias' in st else out


def _lin(z, st, prefix):
    out = z @ st[prefix + '.weight'].T
    return out + st[prefix + '.bias'] if prefix + '.bias' in st else out


def _reference_blocks(tok, st, depth, heads, eps):
    """Official pre-LN blocks `blocks.{i}` then the final `norm`, float64."""
    for i in range(depth):
        b = f'blocks.{i}'
        hdn = _ln(tok, st, b + '.norm1', eps)
        bb, nn_, cc = hdn.shape
        qkv = _lin(hdn, st, b + '.attn.qkv').reshape(bb, nn_, 3, heads, cc // heads)
        qkv = qkv.transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = q @ k.transpose(0, 1, 3, 2) * (cc // heads) ** -0.5
        att = np.exp(att - att.max(-1, keepdims=True))
        att = att / att.sum(-1, keepdims=True)
        a = (att @ v).transpose(0, 2, 1, 3).reshape(bb, nn_, cc)
        tok = tok + _lin(a, st, b + '.attn.proj')
        hdn = _ln(tok, st, b + '.norm2', eps)
        hdn = _lin(hdn, st, b + '.mlp.fc1')
        hdn = 0.5 * hdn * (1 + scipy.special.erf(hdn / math.sqrt(2)))
        tok = tok + _lin(hdn, st, b + '.mlp.fc2')
    return _ln(tok, st, 'norm', eps)


def _sincos(n, d):
    position = np.arange(n)[:, None]
    div = np.exp(np.arange(0, d, 2) * (-math.log(10000.0) / d))
    pos = np.zeros((n, d))
    pos[:, 0::2] = np.sin(position * div)
    pos[:, 1::2] = np.cos(position * div)
    return pos


def reference_predictor(state, cfg, context, keep, predict):
    """Official predictor forward in float64 numpy for one example.

    context (K, dim) at patches `keep`; returns (P, dim) at patches `predict`:
    embed + positions, then one mask token + position per predicted patch
    appended, blocks, norm, the appended tokens, proj.
    """
    st = {k: v.astype(np.float64) for k, v in state.items()}
    n = cfg['channel_size'] // cfg['patch_size']
    pos = _sincos(n, cfg['pred_dim'])
    x = _lin(context.astype(np.float64), st, 'embed') + pos[keep]
    queries = st['mask_token'][0] + pos[predict]
    tok = np.concatenate([x, queries])[None]
    tok = _reference_blocks(tok, st, cfg['pred_depth'], cfg['pred_num_heads'], cfg['norm_eps'])
    return _lin(tok[0, len(keep):], st, 'proj')


def full_checkpoint(cfg, rng, norm_bias=None):
    target = official_encoder_state(cfg, rng, norm_bias)
    context = official_encoder_state(cfg, rng, norm_bias)
    model = {f'target_encoder.{k}': v for k, v in target.items()}
    model.update({f'encoder.{k}': v for k, v in context.items()})
    model['predictor.mask_token'] = np.zeros((1, 1, cfg['pred_dim']), np.float32)
    model['predictor.embed.weight'] = np.zeros((cfg['pred_dim'], cfg['dim']), np.float32)
    return {'model': model, 'config': cfg, 'step': 10}, target


@pytest.mark.parametrize('overrides', [
    {},
    {'bias': True, 'qkv_bias': True, 'num_registers': 2, 'num_heads': 2},
])
def test_converted_forward_matches_reference(tmp_path, overrides):
    rng = np.random.default_rng(0)
    cfg = official_config(**overrides)
    ckpt, target = full_checkpoint(cfg, rng)
    enc = torch_import.import_torch_checkpoint('official.pt', str(tmp_path / 'enc'),
                                               checkpoint=ckpt)
    x_bct = rng.standard_normal((3, 12, cfg['channel_size'])).astype(np.float32)
    want = reference_forward(target, cfg, x_bct)
    got = np.asarray(enc.tokens(x_bct.transpose(0, 2, 1)))
    assert got.shape == want.shape == (3, cfg['channel_size'] // cfg['patch_size'], cfg['dim'])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    # The saved encoder file gives the same forward pass.
    loaded = encoder_lib.read_encoder(str(tmp_path / 'enc'))
    np.testing.assert_allclose(np.asarray(loaded.tokens(x_bct.transpose(0, 2, 1))), got,
                               atol=1e-6)
    # Both kernel paths run the imported weights to the published output.
    for kernels in ('stock', 'cpu'):
        other = encoder_lib.Encoder(dataclasses.replace(loaded.config, kernels=kernels),
                                    loaded.params, lead_stats=loaded.lead_stats,
                                    leads=loaded.leads)
        np.testing.assert_allclose(np.asarray(other.tokens(x_bct.transpose(0, 2, 1))), want,
                                   atol=1e-5, rtol=1e-5)
    assert loaded.config.fs == 100 and loaded.config.patch_size == 5
    assert loaded.config.window_seconds == 2.0
    assert loaded.leads[3] == 'aVR'  # official 'AVR' spelling mapped to the canonical name
    assert loaded.meta['provenance']['weights'] == 'target'


def test_minified_checkpoint_and_context_encoder(tmp_path):
    rng = np.random.default_rng(1)
    cfg = official_config()
    ckpt, target = full_checkpoint(cfg, rng)
    minified = {'model': {k: v for k, v in ckpt['model'].items()
                          if k.startswith('target_encoder')}, 'config': cfg}
    c1, p1, _ = torch_import.convert_checkpoint(ckpt)
    c2, p2, leads = torch_import.convert_checkpoint(minified)
    assert c1 == c2 and c1.variant == 'custom'
    np.testing.assert_array_equal(p1['blocks_1']['attn']['qkv']['kernel'],
                                  p2['blocks_1']['attn']['qkv']['kernel'])
    # Layout facts: Linear (out, in) -> kernel (in, out); conv rows p * leads + c.
    w = target['blocks.0.attn.qkv.weight']
    np.testing.assert_array_equal(p1['blocks_0']['attn']['qkv']['kernel'], w.T)
    conv = target['patch_embed.proj.weight']
    np.testing.assert_array_equal(p1['patch_embed']['kernel'][3 * 12 + 7], conv[:, 7, 3])
    _, p3, _ = torch_import.convert_checkpoint(ckpt, weights='context')
    assert not np.array_equal(p3['norm']['scale'], p1['norm']['scale'])
    # DDP / torch.compile prefixes are stripped.
    wrapped = {'model': {'module.' + k: v for k, v in minified['model'].items()},
               'config': cfg}
    _, p4, _ = torch_import.convert_checkpoint(wrapped)
    np.testing.assert_array_equal(p4['norm']['scale'], p1['norm']['scale'])


def test_reordered_channels_are_kept_by_name(tmp_path):
    rng = np.random.default_rng(2)
    mimic_order = ['I', 'II', 'III', 'AVR', 'AVF', 'AVL', 'V1', 'V2', 'V3', 'V4', 'V5', 'V6']
    cfg = official_config(channels=mimic_order)
    ckpt, _ = full_checkpoint(cfg, rng)
    enc = torch_import.import_torch_checkpoint('x.pt', str(tmp_path / 'e'), checkpoint=ckpt)
    assert enc.leads[4] == 'aVF' and enc.leads[5] == 'aVL'
    # embed() matches user leads by name onto that order: swapping two
    # columns together with their names changes nothing.
    sig = rng.standard_normal((200, 12)).astype(np.float32)
    names = list(mimic_order)
    a = enc.embed(sig, 100, names, normalize='record').mean
    swapped = sig[:, [0, 1, 2, 3, 5, 4, 6, 7, 8, 9, 10, 11]]
    names_swapped = [names[i] for i in [0, 1, 2, 3, 5, 4, 6, 7, 8, 9, 10, 11]]
    b = enc.embed(swapped, 100, names_swapped, normalize='record').mean
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_bad_checkpoints_are_refused():
    rng = np.random.default_rng(3)
    cfg = official_config()
    ckpt, _ = full_checkpoint(cfg, rng)
    with pytest.raises(ValueError, match='LayerScale'):
        torch_import.convert_checkpoint({**ckpt, 'config': {**cfg, 'layer_scale_eps': 0.1}})
    broken = dict(ckpt['model'])
    broken['target_encoder.blocks.0.attn.qkv.weight'] = np.zeros((5, 5), np.float32)
    with pytest.raises(ValueError, match='qkv'):
        torch_import.convert_checkpoint({'model': broken, 'config': cfg})
    with pytest.raises(ValueError, match='no target encoder'):
        torch_import.convert_checkpoint({'model': {'foo.bar': np.zeros(1)}, 'config': cfg})


def test_first_release_checkpoint_with_norm_biases(tmp_path):
    """LayerNorm biases under bias=False (the first release) import as norm_bias."""
    rng = np.random.default_rng(4)
    cfg = official_config()
    assert cfg['bias'] is False
    ckpt, target = full_checkpoint(cfg, rng, norm_bias=True)
    assert {'blocks.0.norm1.bias', 'blocks.1.norm2.bias', 'norm.bias'} <= set(target)
    enc = torch_import.import_torch_checkpoint('first.pt', str(tmp_path / 'enc'),
                                               checkpoint=ckpt)
    assert enc.config.norm_bias and not enc.config.bias and enc.config.init == 'xavier'
    p = enc.params
    np.testing.assert_array_equal(p['blocks_1']['norm2']['bias'], target['blocks.1.norm2.bias'])
    np.testing.assert_array_equal(p['norm']['bias'], target['norm.bias'])
    assert 'bias' not in p['blocks_0']['attn']['proj'] and 'bias' not in p['patch_embed']
    x_bct = rng.standard_normal((2, 12, cfg['channel_size'])).astype(np.float32)
    want = reference_forward(target, cfg, x_bct)
    got = np.asarray(enc.tokens(x_bct.transpose(0, 2, 1)))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    # The biases matter: without them the reference differs.
    no_ln_bias = {k: v for k, v in target.items() if not k.endswith('norm1.bias')}
    assert np.abs(reference_forward(no_ln_bias, cfg, x_bct) - want).max() > 1e-2
    loaded = encoder_lib.read_encoder(str(tmp_path / 'enc'))
    assert loaded.config == enc.config
    np.testing.assert_allclose(np.asarray(loaded.tokens(x_bct.transpose(0, 2, 1))), got,
                               atol=1e-6)
    # Both kernel paths run the imported weights to the published output.
    for kernels in ('stock', 'cpu'):
        other = encoder_lib.Encoder(dataclasses.replace(loaded.config, kernels=kernels),
                                    loaded.params, lead_stats=loaded.lead_stats,
                                    leads=loaded.leads)
        np.testing.assert_allclose(np.asarray(other.tokens(x_bct.transpose(0, 2, 1))), want,
                                   atol=1e-5, rtol=1e-5)
    # Checkpoints without LayerNorm biases keep the defaults.
    later, _, _ = torch_import.convert_checkpoint(full_checkpoint(cfg, rng)[0])
    assert (later.norm_bias, later.init) == (False, 'trunc_normal')


def _predictor_inputs(mc, rng, k=10):
    n = mc.num_patches
    keep = np.sort(rng.choice(n, size=k, replace=False)).astype(np.int32)
    predict_mask = np.ones(n, bool)
    predict_mask[keep] = False
    context = rng.standard_normal((k, mc.dim)).astype(np.float32)
    return context, keep, predict_mask


@pytest.mark.parametrize('overrides,norm_bias', [
    ({}, None), ({'pred_depth': 2}, True), ({'bias': True, 'qkv_bias': True}, None)])
def test_convert_predictor_state_matches_reference(overrides, norm_bias):
    import jax

    from jepa_ecg.models import build_predictor
    rng = np.random.default_rng(5)
    cfg = official_config(**overrides)
    mc, _ = torch_import.model_config_from_torch(
        cfg, official_encoder_state(cfg, rng, norm_bias))
    assert mc.norm_bias == bool(norm_bias)
    state = official_predictor_state(cfg, rng, norm_bias)
    params = torch_import.convert_predictor_state(state, mc)
    context, keep, predict_mask = _predictor_inputs(mc, rng)
    pred = build_predictor(mc)
    args = (context[None], keep[None], np.ones((1, len(keep)), bool), predict_mask[None])
    for kernels in ('stock', 'cpu'):
        other = build_predictor(dataclasses.replace(mc, kernels=kernels))
        np.testing.assert_allclose(
            np.asarray(other.apply({'params': params}, *args))[0, predict_mask],
            reference_predictor(state, cfg, context, keep, np.nonzero(predict_mask)[0]),
            atol=1e-4, rtol=1e-4)
    want_tree = jax.eval_shape(pred.init, jax.random.PRNGKey(0), *args)['params']
    assert (jax.tree_util.tree_structure(want_tree) ==
            jax.tree_util.tree_structure(params))
    assert all(a.shape == b.shape for a, b in zip(jax.tree_util.tree_leaves(want_tree),
                                                  jax.tree_util.tree_leaves(params)))
    got = np.asarray(pred.apply({'params': params}, *args))[0, predict_mask]
    want = reference_predictor(state, cfg, context, keep, np.nonzero(predict_mask)[0])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    # Any arrays in that layout convert (e.g. AdamW moments): leafwise squares.
    squared = torch_import.convert_predictor_state({k: v ** 2 for k, v in state.items()}, mc)
    for a, b in zip(jax.tree_util.tree_leaves(squared), jax.tree_util.tree_leaves(params)):
        np.testing.assert_allclose(a, b ** 2, rtol=1e-6)


def test_convert_predictor_state_refuses_bad_keys():
    rng = np.random.default_rng(6)
    cfg = official_config()
    mc, _ = torch_import.model_config_from_torch(cfg, official_encoder_state(cfg, rng))
    state = official_predictor_state(cfg, rng)
    torch_import.convert_predictor_state(state, mc)
    missing = {k: v for k, v in state.items() if k != 'proj.weight'}
    with pytest.raises(ValueError, match=r"missing 'proj\.weight' in the predictor"):
        torch_import.convert_predictor_state(missing, mc)
    extra = {**state, 'blocks.7.norm1.weight': np.ones(16, np.float32)}
    with pytest.raises(ValueError, match=r'unexpected .*blocks\.7\.norm1\.weight'):
        torch_import.convert_predictor_state(extra, mc)
    with pytest.raises(ValueError, match=r'unexpected .*norm\.bias'):
        torch_import.convert_predictor_state({**state, 'norm.bias': np.zeros(16)}, mc)
    wrong = {**state, 'mask_token': np.zeros((1, 1, 17), np.float32)}
    with pytest.raises(ValueError, match=r"'mask_token' has shape"):
        torch_import.convert_predictor_state(wrong, mc)


def test_torch_missing_gives_install_hint(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == 'torch':
            raise ImportError('no torch')
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', fake_import)
    with pytest.raises(ImportError, match=r'jepa_ecg\[torch\]'):
        torch_import.load_torch_checkpoint('whatever.pt')


def test_cli_import_torch_without_torch_says_how_to_install(tmp_path):
    # torch is an optional extra: a process where it cannot be found (an
    # import hook that finds no torch) gets the install hint.
    (tmp_path / 'x.pt').write_bytes(b'not used')
    code = ("import sys\n"
            "class NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch':\n"
            "            raise ModuleNotFoundError(\"No module named 'torch'\", name=name)\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "from jepa_ecg import cli\n"
            f"sys.exit(cli.main(['import-torch', {str(tmp_path / 'x.pt')!r}, '--out', "
            f"{str(tmp_path / 'o')!r}]))")
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'jepa_ecg[torch]' in proc.stderr and 'Traceback' not in proc.stderr
