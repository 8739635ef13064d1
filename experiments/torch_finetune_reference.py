"""The published ECG-JEPA evaluation step (finetune.py), stated in PyTorch.

An independent statement of what the published fine-tuning code computes,
written from the method's description (../shared/reference/ECG-JEPA-FACTS.md,
section 7), so that jepa_ecg's fine-tuning step and evaluator can be
checked against it for the three protocols (linear, finetune,
finetune_after_linear):

* the classifier: the encoder of experiments/torch_reference.py with its
  register token(s) kept in front of its output and dropout after the
  attention output projection, after the MLP's GELU and after its fc2;
  then either an attentive pooler (one learnable query cross-attending
  over all tokens with the encoder's number of heads, its output
  projection mapping straight to the classes, no MLP) or a bias-free linear
  layer on the first register token. A frozen encoder runs without
  gradients and stays out of the optimiser;
* the step: learning rate set from its schedule (linear warm-up from 1e-6,
  then cosine to the final value), mean BCE-with-logits (softmax
  cross-entropy for single-label tasks), backward, the global gradient norm
  clipped when the protocol clips, AdamW with a constant decoupled weight
  decay on Linear/Conv weights only;
* evaluation: every crop-long window of a record at the evaluation stride,
  the logits averaged over a record's windows, then sigmoid (softmax).

Parameter names are the published ones (`encoder.blocks.0.attn.qkv.weight`,
`attn_pool.cross_attention_block.q.weight`, `fc.weight`), so a state dict
loads into the published ViTClassifier as is; `to_ours` converts one to
jepa_ecg's classifier params. Dropout draws its own masks, or applies
given ones (`set_dropout_masks`) to reproduce another implementation's draw.

`PublishedEvaluation` runs the published modules themselves (a checkout
of github.com/kweimann/ECG-JEPA) the way its finetune.py loop does, for
tests that tie this statement to them. Torch is the `[torch]` extra.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from experiments import official_code
from experiments.torch_reference import sincos_positions
from jepa_ecg.inference import torch_import
from jepa_ecg.models.config import ModelConfig


class Dropout(nn.Module):
    """Inverted dropout; applies `mask` (already scaled by 1 / (1 - p)) when one is set."""

    def __init__(self, p: float):
        super().__init__()
        self.p, self.mask = p, None

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        if self.mask is not None:
            return x * self.mask
        return F.dropout(x, self.p, training=True)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, cfg: ModelConfig, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=cfg.bias)
        self.proj_dropout = Dropout(dropout)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5, dim=-1)
        return self.proj_dropout(self.proj((weights @ v).transpose(1, 2).reshape(b, n, d)))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.drop1 = Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.drop2 = Dropout(dropout)

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, dropout: float):
        super().__init__()
        norm_bias = cfg.bias or cfg.norm_bias
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps, bias=norm_bias)
        self.attn = SelfAttention(cfg.dim, cfg.num_heads, cfg, dropout)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps, bias=norm_bias)
        self.mlp = FeedForward(cfg.dim, int(cfg.dim * cfg.mlp_ratio), cfg.bias, dropout)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
    """(B, leads, T) -> (B, R + T / patch, dim), the R register tokens first."""

    def __init__(self, cfg: ModelConfig, dropout: float):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv1d(cfg.num_leads, cfg.dim, cfg.patch_size,
                                          stride=cfg.patch_size, bias=cfg.bias)
        self.register_buffer('pos', sincos_positions(cfg.dim, cfg.num_patches), persistent=False)
        self.registers = nn.Parameter(torch.zeros(1, cfg.num_registers, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg, dropout) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps, bias=cfg.bias or cfg.norm_bias)

    def forward(self, x):
        x = self.patch_embed.proj(x).transpose(1, 2)
        x = x + self.pos[:, :x.shape[1]]
        x = torch.cat([self.registers.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class CrossAttention(nn.Module):
    """One query set attends over the tokens; `proj` maps the result to `out_dim`."""

    def __init__(self, dim: int, heads: int, out_dim: int, cfg: ModelConfig):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=cfg.qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(dim, out_dim, bias=cfg.bias)

    def forward(self, q, x):
        b, m, d = q.shape
        n, h = x.shape[1], self.heads
        q = self.q(q).view(b, m, h, d // h).transpose(1, 2)
        k, v = self.kv(x).view(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) * (d // h) ** -0.5, dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, m, d))


class AttentivePooler(nn.Module):
    def __init__(self, cfg: ModelConfig, num_classes: int):
        super().__init__()
        self.query_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.cross_attention_block = CrossAttention(cfg.dim, cfg.num_heads, num_classes, cfg)

    def forward(self, x):
        return self.cross_attention_block(self.query_token.expand(x.shape[0], -1, -1), x)


class Classifier(nn.Module):
    """Encoder + head; (B, leads, T) -> (B, num_classes) logits.

    head: 'attentive' (pooler over all tokens) or 'register' (linear layer
    on the first register token). Weights start N(0, 0.02) (the tests copy
    them in from elsewhere).
    """

    def __init__(self, cfg: ModelConfig, num_classes: int, *, head: str, dropout: float,
                 frozen: bool):
        super().__init__()
        self.head, self.frozen = head, frozen
        self.encoder = Encoder(cfg, dropout)
        if head == 'attentive':
            self.attn_pool = AttentivePooler(cfg, num_classes)
        elif head == 'register':
            self.fc = nn.Linear(cfg.dim, num_classes, bias=False)
        else:
            raise ValueError(f'unknown head {head!r}')
        for name, p in self.named_parameters():
            if name.endswith('bias'):
                nn.init.zeros_(p)
            elif p.dim() == 1:  # LayerNorm scales
                nn.init.ones_(p)
            else:
                nn.init.trunc_normal_(p, std=0.02)
        if frozen:
            self.encoder.requires_grad_(False)

    def forward(self, x):
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            tokens = self.encoder(x)
        if self.head == 'attentive':
            return self.attn_pool(tokens)[:, 0]
        return self.fc(tokens[:, 0])

    def set_dropout_masks(self, masks: Mapping[str, np.ndarray] | None) -> None:
        """Masks by module name ('encoder.blocks.0.mlp.drop1', ...), or None to draw."""
        masks = dict(masks or {})
        for name, m in self.named_modules():
            if isinstance(m, Dropout):
                mask = masks.pop(name, None)
                m.mask = None if mask is None else torch.from_numpy(np.array(mask, np.float32))
        if masks:
            raise ValueError(f'no dropout module named {sorted(masks)}')


def make_optimizer(model: nn.Module, *, b1: float, b2: float, eps: float = 1e-8,
                   weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; decay on Linear/Conv weights only."""
    decayed = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d))}
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        [{'params': [p for p in params if id(p) in decayed], 'weight_decay': weight_decay},
         {'params': [p for p in params if id(p) not in decayed], 'weight_decay': 0.0}],
        lr=0.0, betas=(b1, b2), eps=eps)


def learning_rate(step: int, *, total: int, peak: float, final: float, warmup: int,
                  warmup_start: float = 1e-6) -> float:
    """The rate of (0-based) step `step`: linear warm-up, then cosine to `final`."""
    if step < warmup:
        return warmup_start + (peak - warmup_start) * step / warmup
    if step > total:
        return final
    frac = (step - warmup) / max(1, total - warmup - 1)
    return final + 0.5 * (1.0 + math.cos(math.pi * frac)) * (peak - final)


def train_step(model: Classifier, opt: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, *, lr: float, clip: float, single_label: bool) -> dict:
    """One optimiser step on x (B, leads, T), targets y (B, C); {'loss', 'grad_norm'}."""
    for group in opt.param_groups:
        group['lr'] = lr
    model.train()
    logits = model(x)
    loss = (F.cross_entropy(logits, y) if single_label
            else F.binary_cross_entropy_with_logits(logits, y))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    grad_norm = float(torch.sqrt(sum((g * g).sum() for g in grads)))
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {'loss': float(loss.detach()), 'grad_norm': grad_norm}


def windows(record: np.ndarray, size: int, stride: int) -> np.ndarray:
    """(T, leads) -> (W, leads, size): every full window, starts 0, stride, ..."""
    starts = range(0, record.shape[0] - size + 1, stride)
    return np.stack([record[s:s + size].T for s in starts])


@torch.no_grad()
def record_probabilities(model: Classifier, records: np.ndarray, *, size: int, stride: int,
                         single_label: bool) -> np.ndarray:
    """(R, T, leads) records -> (R, C): window logits averaged, then sigmoid (softmax)."""
    model.eval()
    wins = np.stack([windows(r, size, stride) for r in records])  # (R, W, leads, size)
    r, w = wins.shape[:2]
    logits = model(torch.from_numpy(wins.reshape((r * w,) + wins.shape[2:]).astype(np.float32)))
    logits = logits.reshape(r, w, -1).mean(dim=1)
    out = logits.softmax(dim=1) if single_label else logits.sigmoid()
    return out.numpy()


def head_to_ours(state: Mapping[str, Any], head: str) -> dict:
    """The head's entries of a classifier state dict (or of arrays laid out
    like them, e.g. AdamW moments) -> our head params."""
    a = {k: np.asarray(v.detach().numpy() if hasattr(v, 'detach') else v, np.float32)
         for k, v in state.items()}
    if head == 'register':
        return {'kernel': a['fc.weight'].T.copy()}
    p = 'attn_pool.cross_attention_block.'
    return {'query_token': a['attn_pool.query_token'],
            **{name: {'kernel': a[f'{p}{name}.weight'].T.copy()} for name in ('q', 'kv', 'proj')}}


def to_ours(state: Mapping[str, Any], cfg: ModelConfig, head: str) -> dict:
    """A classifier state dict -> jepa_ecg's {'encoder', 'head'} params."""
    return {'encoder': torch_import.convert_encoder_state(
                torch_import.with_prefix(state, 'encoder.'), cfg),
            'head': head_to_ours(state, head)}


# ----------------------------------------------------------------------------- published code
@contextlib.contextmanager
def published_code(path: str):
    """Imports from a checkout of the published code (its top-level `configs`,
    `models`, `utils`, `data` and `finetune`), leaving nothing behind on
    sys.path or in sys.modules. finetune.py parses its command line when
    imported, so it is given the two arguments it requires."""
    if not os.path.isfile(os.path.join(path, 'finetune.py')):
        raise FileNotFoundError(f'{path}: no finetune.py; point JEPA_ECG_OFFICIAL_DIR at a '
                                f'checkout of github.com/kweimann/ECG-JEPA')
    with official_code.published_imports(
            path, argv=['finetune.py', '--data-dir', path, '--encoder', path]):
        yield


class PublishedEvaluation:
    """The published ViTClassifier, AdamW and learning-rate schedule of one
    protocol, stepped as the loop of its finetune.py does.

    The encoder's size comes from `cfg`; the protocol's hyper-parameters
    from its configs/eval/<protocol>.yaml, with `overrides` on top. The
    encoder config is adjusted as finetune.py does (a register added when
    the protocol uses one, the protocol's dropout). `start_step` starts the
    learning-rate schedule there.
    """

    def __init__(self, path: str, cfg: ModelConfig, protocol: str, num_classes: int, *,
                 single_label: bool, start_step: int = 0, overrides: Mapping | None = None):
        self.single_label = single_label
        with published_code(path):
            import configs  # pylint: disable=g-import-not-at-top
            import finetune  # pylint: disable=g-import-not-at-top
            from models import ViTClassifier  # pylint: disable=g-import-not-at-top
            from models import VisionTransformer  # pylint: disable=g-import-not-at-top
            from utils import schedules  # pylint: disable=g-import-not-at-top
            d = configs.load_config_file(os.path.join(path, 'configs', 'eval', f'{protocol}.yaml'))
            d.update(overrides or {})
            ec = configs.eval.Config(**d, num_classes=num_classes)
            e = configs.load_config_file(os.path.join(path, 'configs', 'pretrain',
                                                      'ViTXS_all.yaml'))
            e.update(sampling_frequency=int(round(cfg.fs)), channel_size=cfg.window_samples,
                     patch_size=cfg.patch_size, dim=cfg.dim, depth=cfg.depth,
                     num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
                     bias=cfg.bias, norm_eps=cfg.norm_eps, num_registers=cfg.num_registers,
                     dropout=ec.dropout)
            enc = configs.pretrain.Config(**e)
            self.lr = schedules.cosine_schedule(
                total_steps=ec.steps, start_value=ec.learning_rate,
                final_value=ec.final_learning_rate, warmup_steps=ec.learning_rate_warmup_steps,
                warmup_start_value=1e-6, step=start_step)
            self.update_lr = schedules.update_learning_rate_
            encoder = VisionTransformer(config=enc, keep_registers=ec.use_register,
                                        use_sdp_kernel=False)
            self.model = ViTClassifier(encoder, ec, use_sdp_kernel=False)
            self.eval_transform = finetune.EvalTransformECG(
                crop_size=int(ec.crop_duration * enc.sampling_frequency),
                crop_stride=int(ec.crop_stride * enc.sampling_frequency))
        self.config, self.encoder_config = ec, enc
        self.opt = self.model.get_optimizer(fused=False)
        self.model.train()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One step of the loop on x (B, leads, T), y (B, C); the loss."""
        self.update_lr(self.opt, next(self.lr))
        logits = self.model(x)
        loss = (F.cross_entropy(logits, y) if self.single_label
                else F.binary_cross_entropy_with_logits(logits, y))
        loss.backward()
        if self.config.gradient_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.gradient_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()

    @torch.inference_mode()
    def probabilities(self, records: np.ndarray) -> np.ndarray:
        """(R, T, leads) records -> (R, C), through finetune.py's evaluation
        transform, crop-logit averaging and sigmoid (softmax)."""
        self.model.eval()
        x = torch.stack([self.eval_transform(np.array(r, np.float32)) for r in records])
        r, w, leads, size = x.shape
        logits = self.model(x.reshape(-1, leads, size)).reshape(r, w, -1).mean(dim=1)
        self.model.train()
        out = logits.softmax(dim=1) if self.single_label else logits.sigmoid()
        return out.numpy()
