"""Official ECG-JEPA PyTorch checkpoints -> our Flax encoder.

    jepa-ecg import-torch ViTS_all.pt --out encoders/vits_all
    # or: pip install 'jepa_ecg[torch]' first; torch is needed only to unpickle.

Accepted checkpoints (github.com/kweimann/ECG-JEPA):
  * a full pre-training checkpoint, `{'model': JEPA state dict, 'config':
    dict, ...}`, whose state dict holds `encoder.*`, `target_encoder.*` and
    `predictor.*`: the target encoder is converted;
  * a minified one (`scripts/minify_pretrained_checkpoint.py`), `{'model':
    {target_encoder.* only}, 'config': dict}`;
  * a bare encoder state dict (no prefix) together with a config.

Layout differences handled here (PyTorch -> Flax):
  * `patch_embed.proj.weight` is a Conv1d kernel (dim, leads, patch); our
    patch embedding is a Dense on time-major flattened patches (row p*leads+c),
    so kernel[p * leads + c, d] = weight[d, c, p].
  * `nn.Linear` weights are (out, in): transposed to Dense kernels (in, out).
    The qkv output is ordered [q; k; v], each split into heads contiguously,
    which is exactly our reshape of the qkv Dense output to (3, heads, head_dim).
  * LayerNorm `weight`/`bias` -> `scale`/`bias`; `registers` (1, R, dim) as is.
    Checkpoints of the first release have LayerNorm biases although their
    config says `bias: False`; they are recognised by those keys and
    converted with `norm_bias=True`.
  * The predictor (`predictor.*`) converts the same way
    (`convert_predictor_state`); `mask_token` (1, 1, pred_dim) as is.
  * The official config names leads with `AVR` spelling and fixes their order
    (`channels`); the encoder keeps that order (matched by name at inference).
The sin-cos positional embedding is a non-persistent buffer in PyTorch and a
constant here, so it is recomputed, not converted.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping

import numpy as np

from jepa_ecg.data.stats import LeadStats, as_lead_stats
from jepa_ecg.ecg.leads import LEADS, canonical_lead_name, lead_permutation
from jepa_ecg.inference.encoder import Encoder
from jepa_ecg.models.config import VARIANTS, ModelConfig

# Our name of each encoder -> its key prefix in the published state dicts.
STATE_PREFIXES = {'target': 'target_encoder.', 'context': 'encoder.'}
# Wrappers that prefix every key: DistributedDataParallel, torch.compile.
_WRAPPER_PREFIXES = ('module.', '_orig_mod.')
# LayerNorm biases of an encoder state dict.
_NORM_BIAS = re.compile(r'(blocks\.\d+\.norm[12]|norm)\.bias')


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, 'detach'):  # a torch tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == 'torch.bfloat16':
            value = value.float()
        value = value.numpy()
    return np.asarray(value, np.float32)


def _strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _WRAPPER_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def select_encoder_state(state_dict: Mapping[str, Any], *, weights: str = 'target'
                         ) -> dict[str, np.ndarray]:
    """The encoder's entries of a (JEPA or encoder) state dict, prefix removed.

    Args:
      state_dict: PyTorch state dict (tensors or numpy arrays).
      weights: 'target' (default, the EMA encoder to use downstream) or
        'context' (the encoder trained by gradient).

    Returns:
      {key without prefix: float32 numpy array}.

    Raises:
      ValueError: when no encoder weights are found.
    """
    clean = {_strip_wrappers(k): v for k, v in state_dict.items()}
    if weights not in STATE_PREFIXES:
        raise ValueError(f'weights must be one of {tuple(STATE_PREFIXES)}, got {weights!r}')
    prefix = STATE_PREFIXES[weights]
    picked = {k: _to_numpy(v) for k, v in with_prefix(clean, prefix).items()}
    if not picked and weights == 'target':
        # A checkpoint of the encoder alone (e.g. saved from a fine-tuning run).
        picked = {k: _to_numpy(v) for k, v in with_prefix(clean, 'encoder.').items()}
    if not picked and any(k.startswith('blocks.') for k in clean):
        picked = {k: _to_numpy(v) for k, v in clean.items()}
    if not picked:
        sample = sorted(clean)[:5]
        raise ValueError(f'no {weights} encoder weights in the state dict (keys start '
                         f'{sample})')
    return picked


def model_config_from_torch(config: Mapping[str, Any], state: Mapping[str, np.ndarray] | None
                            = None) -> tuple[ModelConfig, list[str]]:
    """Our ModelConfig and lead order from an official config dict.

    Args:
      config: the checkpoint's `config` (keys dim, depth, num_heads,
        patch_size, channel_size, sampling_frequency, channels, ...).
      state: the encoder state dict, used to fill what the config lacks
        (dim, depth, patch size, registers) and to recognise first-release
        checkpoints: LayerNorm biases with bias=False give norm_bias=True
        and init='xavier' (how that release initialised its models; it is
        what heads fine-tuned on the encoder get).

    Returns:
      (ModelConfig, lead names in the model's input order).
    """
    config = dict(config or {})
    state = state or {}
    if float(config.get('layer_scale_eps') or 0.0):
        raise ValueError('checkpoints with LayerScale (layer_scale_eps > 0) are not supported')
    w = state.get('patch_embed.proj.weight')
    dim = int(config.get('dim') or (w.shape[0] if w is not None else 0))
    depth = config.get('depth')
    if depth is None:
        depth = 1 + max((int(m.group(1)) for k in state
                         if (m := re.match(r'blocks\.(\d+)\.', k))), default=-1)
    patch = int(config.get('patch_size') or (w.shape[2] if w is not None else 25))
    channels = list(config.get('channels') or [])
    num_leads = len(channels) or (w.shape[1] if w is not None else 12)
    if not channels:
        channels = list(LEADS)[:num_leads]
    leads = [canonical_lead_name(str(c)) or str(c) for c in channels]
    fs = float(config.get('sampling_frequency', 500))
    channel_size = int(config.get('channel_size', round(10 * fs)))
    if 'num_heads' not in config:
        raise ValueError('the checkpoint config lacks num_heads (cannot be read off the weights)')
    bias = bool(config.get('bias', False))
    # The first official release gave LayerNorms a bias even with bias=False
    # (and initialised every kernel xavier-uniform): its checkpoints carry
    # norm biases the config does not announce.
    first_release = not bias and any(_NORM_BIAS.fullmatch(k) for k in state)
    norm_bias = bool(config.get('norm_bias', False)) or first_release
    init = str(config.get('init') or ('xavier' if first_release else 'trunc_normal'))
    regs = state.get('registers')
    num_registers = int(config.get('num_registers',
                                   regs.shape[1] if regs is not None else 0))
    shape = dict(dim=dim, depth=int(depth), num_heads=int(config['num_heads']))
    variant = next((name for name, v in VARIANTS.items()
                    if all(v[k] == shape[k] for k in shape)), 'custom')
    cfg = ModelConfig(
        variant=variant, **shape,
        pred_dim=int(config.get('pred_dim', max(2, dim // 2))),
        pred_depth=int(config.get('pred_depth', depth)),
        pred_num_heads=int(config.get('pred_num_heads', config['num_heads'])),
        mlp_ratio=float(config.get('mlp_ratio', 4.0)), num_leads=num_leads, fs=fs,
        window_seconds=channel_size / fs, patch_size=patch, num_registers=num_registers,
        bias=bias, qkv_bias=bool(config.get('qkv_bias', False)),
        norm_eps=float(config.get('norm_eps', 1e-6)), init=init, norm_bias=norm_bias)
    if channel_size % patch:
        raise ValueError(f'channel_size {channel_size} is not a multiple of patch_size {patch}')
    return cfg, leads


class _StateReader:
    """Takes the entries of one module's state dict, checking shapes and use.

    Values may be tensors or arrays of any meaning (weights, or AdamW
    moments laid out like them); they come back as float32 numpy arrays.
    """

    def __init__(self, state: Mapping[str, Any], what: str):
        self.state = {k: _to_numpy(v) for k, v in state.items()
                      if k != 'pos_embed'}  # a buffer, recomputed
        self.what = what
        self.used: set[str] = set()

    def take(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in self.state:
            raise ValueError(f'missing {key!r} in the {self.what} state dict')
        value = self.state[key]
        if value.shape != shape:
            raise ValueError(f'{key!r} has shape {value.shape}, expected {shape}')
        self.used.add(key)
        return value

    def linear(self, prefix: str, d_in: int, d_out: int, bias: bool) -> dict:
        """nn.Linear weight (out, in) [+ bias] -> Dense {'kernel': (in, out)[, 'bias']}."""
        out = {'kernel': np.ascontiguousarray(self.take(prefix + '.weight', (d_out, d_in)).T)}
        if bias:
            out['bias'] = self.take(prefix + '.bias', (d_out,))
        return out

    def norm(self, prefix: str, dim: int, bias: bool) -> dict:
        out = {'scale': self.take(prefix + '.weight', (dim,))}
        if bias:
            out['bias'] = self.take(prefix + '.bias', (dim,))
        return out

    def block(self, prefix: str, dim: int, cfg: ModelConfig) -> dict:
        """One pre-LN transformer block of width `dim` (layers.Block's params)."""
        hidden = int(dim * cfg.mlp_ratio)
        ln_bias = cfg.bias or cfg.norm_bias
        return {
            'norm1': self.norm(f'{prefix}.norm1', dim, ln_bias),
            'attn': {'qkv': self.linear(f'{prefix}.attn.qkv', dim, 3 * dim, cfg.qkv_bias),
                     'proj': self.linear(f'{prefix}.attn.proj', dim, dim, cfg.bias)},
            'norm2': self.norm(f'{prefix}.norm2', dim, ln_bias),
            'mlp': {'fc1': self.linear(f'{prefix}.mlp.fc1', dim, hidden, cfg.bias),
                    'fc2': self.linear(f'{prefix}.mlp.fc2', hidden, dim, cfg.bias)},
        }

    def check_all_used(self) -> None:
        unused = sorted(set(self.state) - self.used)
        if unused:
            raise ValueError(f'unexpected entries in the {self.what} state dict: {unused[:8]}'
                             f'{" ..." if len(unused) > 8 else ""}')


def convert_encoder_state(state: Mapping[str, Any], cfg: ModelConfig) -> dict:
    """Converts an official encoder state dict (prefix removed) to Flax params.

    Args:
      state: {'patch_embed.proj.weight': (dim, leads, patch), 'registers':
        (1, R, dim), 'blocks.{i}.norm1.weight', 'blocks.{i}.attn.qkv.weight'
        (3*dim, dim), ..., 'norm.weight'} as numpy arrays (or tensors). Any
        arrays in that layout convert, e.g. AdamW moments of the weights.
        LayerNorm biases are expected when cfg.bias or cfg.norm_bias.
      cfg: the model config (see `model_config_from_torch`).

    Returns:
      the params pytree of `build_encoder(cfg)`.

    Raises:
      ValueError: on missing, unexpected or mis-shaped entries.
    """
    r = _StateReader(state, 'encoder')
    d, c, p = cfg.dim, cfg.num_leads, cfg.patch_size
    conv = r.take('patch_embed.proj.weight', (d, c, p))
    # (dim, leads, patch) -> (patch, leads, dim) -> rows p * leads + c.
    params: dict[str, Any] = {
        'patch_embed': {'kernel': np.ascontiguousarray(conv.transpose(2, 1, 0).reshape(p * c, d))}}
    if cfg.bias:
        params['patch_embed']['bias'] = r.take('patch_embed.proj.bias', (d,))
    if cfg.num_registers:
        params['registers'] = r.take('registers', (1, cfg.num_registers, d))
    for i in range(cfg.depth):
        params[f'blocks_{i}'] = r.block(f'blocks.{i}', d, cfg)
    params['norm'] = r.norm('norm', d, cfg.bias or cfg.norm_bias)
    r.check_all_used()
    return params


def with_prefix(state: Mapping[str, Any], prefix: str) -> dict:
    """The entries of a full JEPA state dict under `prefix` ('encoder.',
    'predictor.', 'target_encoder.'), with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def convert_context_state(state: Mapping[str, Any], cfg: ModelConfig) -> dict:
    """A full JEPA state dict (or any dict of arrays under its 'encoder.' and
    'predictor.' names, e.g. AdamW moments) -> our {'encoder', 'predictor'} params."""
    return {'encoder': convert_encoder_state(with_prefix(state, 'encoder.'), cfg),
            'predictor': convert_predictor_state(with_prefix(state, 'predictor.'), cfg)}


def convert_target_state(state: Mapping[str, Any], cfg: ModelConfig) -> dict:
    """A full JEPA state dict -> our params of its EMA target encoder."""
    return convert_encoder_state(with_prefix(state, 'target_encoder.'), cfg)


def convert_predictor_state(state: Mapping[str, Any], cfg: ModelConfig) -> dict:
    """Converts an official predictor state dict (`predictor.` removed) to Flax params.

    Args:
      state: {'embed.weight': (pred_dim, dim) [+ 'embed.bias'], 'mask_token':
        (1, 1, pred_dim), 'blocks.{i}.norm1/attn.qkv/attn.proj/norm2/mlp.fc1/
        mlp.fc2.*', 'norm.weight' (pred_dim) [+ 'norm.bias'], 'proj.weight'
        (dim, pred_dim) [+ 'proj.bias']} as numpy arrays (or tensors). Any
        arrays in that layout convert, e.g. AdamW moments of the weights.
      cfg: the model config (pred_dim, pred_depth, bias switches, norm_bias).

    Returns:
      the params pytree of `build_predictor(cfg)`.

    Raises:
      ValueError: on missing, unexpected or mis-shaped entries.
    """
    r = _StateReader(state, 'predictor')
    d, pd = cfg.dim, cfg.pred_dim
    params: dict[str, Any] = {'embed': r.linear('embed', d, pd, cfg.bias),
                              'mask_token': r.take('mask_token', (1, 1, pd))}
    for i in range(cfg.pred_depth):
        params[f'blocks_{i}'] = r.block(f'blocks.{i}', pd, cfg)
    params['norm'] = r.norm('norm', pd, cfg.bias or cfg.norm_bias)
    params['proj'] = r.linear('proj', pd, d, cfg.bias)
    r.check_all_used()
    return params


def convert_checkpoint(checkpoint: Mapping[str, Any], *, weights: str = 'target',
                       config: Mapping[str, Any] | None = None
                       ) -> tuple[ModelConfig, dict, list[str]]:
    """An official checkpoint dict -> (ModelConfig, Flax params, lead order).

    Args:
      checkpoint: `{'model': state dict, 'config': dict}` (full or minified), or
        a bare state dict when `config` is given.
      weights: 'target' or 'context'.
      config: overrides/supplies the config dict.

    Returns:
      (config, params, leads).
    """
    if 'model' in checkpoint and isinstance(checkpoint['model'], Mapping):
        state_dict = checkpoint['model']
    elif 'state_dict' in checkpoint and isinstance(checkpoint['state_dict'], Mapping):
        state_dict = checkpoint['state_dict']
    else:
        state_dict = {k: v for k, v in checkpoint.items() if k != 'config'}
    cfg_dict = dict(checkpoint.get('config') or {})
    if hasattr(checkpoint.get('config'), '__dataclass_fields__'):
        cfg_dict = dataclasses.asdict(checkpoint['config'])
    cfg_dict.update(config or {})
    state = select_encoder_state(state_dict, weights=weights)
    cfg, leads = model_config_from_torch(cfg_dict, state)
    return cfg, convert_encoder_state(state, cfg), leads


def load_torch_checkpoint(path: str) -> Mapping[str, Any]:
    """Unpickles a PyTorch checkpoint on CPU (needs the `[torch]` extra).

    Raises:
      ImportError: with the install hint when torch is missing.
    """
    try:
        import torch  # pylint: disable=g-import-not-at-top  (an optional extra)
    except ImportError:
        raise ImportError('reading a PyTorch checkpoint needs torch: '
                          "pip install 'jepa_ecg[torch]' (or pip install torch)") from None
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception:  # pylint: disable=broad-except
        # The official full checkpoints pickle optimizer state and plain
        # Python objects that the safe loader refuses; they are the user's own
        # downloads, so fall back to the full unpickler.
        return torch.load(path, map_location='cpu', weights_only=False)


def import_torch_checkpoint(path: str, out: str, *, weights: str = 'target',
                            lead_stats: LeadStats | Mapping[str, Any] | None = None,
                            checkpoint: Mapping[str, Any] | None = None) -> Encoder:
    """Converts an official checkpoint file into an encoder directory.

    Args:
      path: the `.pt` file (read with torch unless `checkpoint` is given).
      out: output encoder directory.
      weights: 'target' or 'context'.
      lead_stats: normalisation statistics to store, in the canonical lead
        order (`LEADS`, as `stats.read_lead_stats_file` gives them): they are
        reordered to the checkpoint's lead order. The official checkpoints
        carry none.
      checkpoint: the already loaded checkpoint dict (tests, or torch-free
        callers that unpickled it some other way).

    Returns:
      the saved `Encoder`.
    """
    ckpt = checkpoint if checkpoint is not None else load_torch_checkpoint(path)
    cfg, params, leads = convert_checkpoint(ckpt, weights=weights)
    provenance = {'kind': 'official ECG-JEPA PyTorch checkpoint',
                  'checkpoint': os.path.abspath(path) if path else None, 'weights': weights}
    for key in ('step', 'epoch'):
        if isinstance(ckpt.get(key), (int, float)):
            provenance[key] = ckpt[key]
    stats = as_lead_stats(lead_stats)
    if stats is not None and list(leads) != list(LEADS):
        stats = stats.select(lead_permutation(LEADS, leads))
    enc = Encoder(cfg, params, lead_stats=stats, leads=leads, meta={'provenance': provenance})
    enc.save(out)
    enc.meta['path'] = os.path.abspath(out)
    return enc
