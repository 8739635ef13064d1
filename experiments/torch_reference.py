"""The published ECG-JEPA pre-training step, stated in PyTorch.

An independent implementation of what the published PyTorch code computes
per step, written from the method's description
(../shared/reference/ECG-JEPA-FACTS.md) so that jepa_ecg's JAX train step can
be checked against it where the published code is not at hand (CI):

* the model: Conv1d patch embedding over all leads, fixed sin-cos positions,
  kept tokens gathered by index, register token(s) in front, pre-LN blocks
  (plain softmax attention, exact GELU MLP), final LayerNorm; the predictor
  appends one mask token per predicted position after the embedded context;
* the step: at the start of every forward pass the target encoder moves
  towards the online encoder with the next value of the momentum schedule
  (so it advances once per micro-batch), targets are the target encoder's
  outputs at the predicted positions, the loss is their mean absolute error
  (divided by the number of micro-batches, gradients summed), then one AdamW
  step with decoupled weight decay on Linear/Conv weights only;
* the schedules, indexed by step: learning rate linear from 1e-6 over the
  warm-up, then cosine to its final value; weight decay cosine; momentum
  linear.

Parameter names and layouts are those of the published checkpoints
(`encoder.blocks.0.attn.qkv.weight`, ...), so
`jepa_ecg.inference.torch_import` converts them. Where the published code is
available (JEPA_ECG_OFFICIAL_DIR), tests/test_official_step.py checks this
statement against it as well. Torch is the `[torch]` extra.
"""

from __future__ import annotations

import copy
import math
from typing import Iterable

import numpy as np
import torch
from torch import nn

from jepa_ecg.models.config import ModelConfig


def sincos_positions(dim: int, n: int) -> torch.Tensor:
    """(1, n, dim): sin in even, cos in odd columns, wavelengths 2 pi .. 2 pi 10^4."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(1e4) / dim))
    out = torch.zeros(1, n, dim)
    out[0, :, 0::2] = torch.sin(pos * freq)
    out[0, :, 1::2] = torch.cos(pos * freq)
    return out


def micro_batch(signal: np.ndarray, masked: np.ndarray) -> tuple:
    """Our (B, T, leads) signal and (B, N) masked flags -> the published
    step's (x (B, leads, T), kept indices, predicted indices), both ascending."""
    k = int(masked.shape[1] - masked[0].sum())
    order = np.argsort(masked, axis=1, kind='stable')
    return (torch.from_numpy(np.ascontiguousarray(signal.transpose(0, 2, 1))),
            torch.from_numpy(order[:, :k].astype(np.int64)),
            torch.from_numpy(order[:, k:].astype(np.int64)))


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), idx (B, K) -> (B, K, D)."""
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool, bias: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5, dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, d))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x):
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, cfg: ModelConfig):
        super().__init__()
        norm_bias = cfg.bias or getattr(cfg, 'norm_bias', False)
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps, bias=norm_bias)
        self.attn = SelfAttention(dim, heads, cfg.qkv_bias, cfg.bias)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps, bias=norm_bias)
        self.mlp = FeedForward(dim, int(dim * cfg.mlp_ratio), cfg.bias)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _init_weights(module: nn.Module, init: str, depth: int) -> None:
    """trunc_normal: std 0.02, residual projections 0.02 / sqrt(2 depth);
    xavier: xavier-uniform everywhere, no depth scaling. Biases 0, LN scale 1."""
    for name, m in module.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv1d)):
            if init == 'xavier':
                nn.init.xavier_uniform_(m.weight)
            else:
                residual = name.endswith('attn.proj') or name.endswith('mlp.fc2')
                nn.init.trunc_normal_(m.weight, std=0.02 / math.sqrt(2 * depth) if residual
                                      else 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Encoder(nn.Module):
    """(B, leads, T) [, keep (B, K)] -> (B, K or N, dim), registers dropped."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv1d(cfg.num_leads, cfg.dim, cfg.patch_size,
                                          stride=cfg.patch_size, bias=cfg.bias)
        self.register_buffer('pos', sincos_positions(cfg.dim, cfg.num_patches), persistent=False)
        if cfg.num_registers:
            self.registers = nn.Parameter(torch.zeros(1, cfg.num_registers, cfg.dim))
            nn.init.trunc_normal_(self.registers, std=0.02)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.num_heads, cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps,
                                 bias=cfg.bias or getattr(cfg, 'norm_bias', False))
        _init_weights(self, getattr(cfg, 'init', 'trunc_normal'), cfg.depth)

    def forward(self, x, keep=None):
        x = self.patch_embed.proj(x).transpose(1, 2)
        x = x + self.pos[:, :x.shape[1]]
        if keep is not None:
            x = gather_tokens(x, keep)
        r = self.cfg.num_registers
        if r:
            x = torch.cat([self.registers.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, r:]


class Predictor(nn.Module):
    """Context (B, K, dim) + kept / predicted indices -> (B, P, dim) predictions."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed = nn.Linear(cfg.dim, cfg.pred_dim, bias=cfg.bias)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.pred_dim))
        self.register_buffer('pos', sincos_positions(cfg.pred_dim, cfg.num_patches),
                             persistent=False)
        self.blocks = nn.ModuleList(Block(cfg.pred_dim, cfg.pred_num_heads, cfg)
                                    for _ in range(cfg.pred_depth))
        self.norm = nn.LayerNorm(cfg.pred_dim, eps=cfg.norm_eps,
                                 bias=cfg.bias or getattr(cfg, 'norm_bias', False))
        self.proj = nn.Linear(cfg.pred_dim, cfg.dim, bias=cfg.bias)
        # The residual projections are scaled by the ENCODER's depth.
        _init_weights(self, getattr(cfg, 'init', 'trunc_normal'), cfg.depth)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, z, keep, predict):
        b, p = predict.shape
        pos = self.pos.expand(b, -1, -1)
        x = self.embed(z) + gather_tokens(pos, keep)
        queries = self.mask_token.expand(b, p, -1) + gather_tokens(pos, predict)
        x = torch.cat([x, queries], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.proj(self.norm(x)[:, -p:])


class Jepa(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.encoder = Encoder(cfg)
        self.predictor = Predictor(cfg)
        self.target_encoder = copy.deepcopy(self.encoder)
        self.target_encoder.requires_grad_(False)

    @torch.no_grad()
    def move_target(self, momentum: float) -> None:
        for t, o in zip(self.target_encoder.parameters(), self.encoder.parameters()):
            t.copy_(momentum * t + (1.0 - momentum) * o)

    def loss(self, x, keep, predict):
        """(L1 loss, the target encoder's outputs at all positions (B, N, dim))."""
        with torch.no_grad():
            full = self.target_encoder(x)
        pred = self.predictor(self.encoder(x, keep), keep, predict)
        return (pred - gather_tokens(full, predict)).abs().mean(), full


def make_optimizer(model: Jepa, *, b1: float, b2: float, eps: float) -> torch.optim.AdamW:
    """AdamW; weight decay (set per step by `set_hyper_params`) on Linear/Conv weights only."""
    decayed = {id(m.weight) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv1d))}
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        [{'params': [p for p in params if id(p) in decayed], 'decay': True},
         {'params': [p for p in params if id(p) not in decayed], 'decay': False}],
        lr=0.0, betas=(b1, b2), eps=eps, weight_decay=0.0)


class Schedules:
    """The three hyper-parameter schedules as functions of the step."""

    def __init__(self, total_steps: int, *, lr: float, final_lr: float, warmup_steps: int,
                 wd: float, final_wd: float, momentum: float, final_momentum: float,
                 warmup_start_lr: float = 1e-6):
        self.total, self.warmup = total_steps, warmup_steps
        self.lr0, self.lr1, self.lr_start = lr, final_lr, warmup_start_lr
        self.wd0, self.wd1, self.m0, self.m1 = wd, final_wd, momentum, final_momentum

    def _cosine(self, step, start, final, warmup):
        if step > self.total:
            return final
        frac = (step - warmup) / max(1, self.total - warmup - 1)
        return final + 0.5 * (1.0 + math.cos(math.pi * frac)) * (start - final)

    def lr(self, step: int) -> float:
        if step < self.warmup:
            return self.lr_start + (self.lr0 - self.lr_start) * step / self.warmup
        return self._cosine(step, self.lr0, self.lr1, self.warmup)

    def wd(self, step: int) -> float:
        return self._cosine(step, self.wd0, self.wd1, 0)

    def momentum(self, tick: int) -> float:
        if tick >= self.total:
            return self.m1
        return self.m0 + (self.m1 - self.m0) * tick / self.total

    @classmethod
    def from_config(cls, config) -> 'Schedules':
        """From a jepa_ecg pre-training config (experiments/configs/pretrain.py)."""
        return cls(config.total_steps, lr=config.learning_rate,
                   final_lr=config.final_learning_rate, warmup_steps=config.warmup_steps,
                   wd=config.weight_decay, final_wd=config.final_weight_decay,
                   momentum=config.ema_momentum, final_momentum=config.final_ema_momentum,
                   warmup_start_lr=config.warmup_start_learning_rate)


def train_step(model: Jepa, opt: torch.optim.Optimizer, schedules: Schedules, step: int,
               micro_batches: Iterable[tuple], ticks_done: int) -> tuple[float, int, dict]:
    """One optimiser step over `micro_batches` of (x (B, leads, T), keep, predict).

    `ticks_done`: momentum values used so far (one per forward pass).
    Returns (loss summed over micro-batches of loss / n, ticks done after,
    {'grad_norm', 'target_std', and the 'lr', 'wd', last 'momentum' applied}).
    """
    micro_batches = list(micro_batches)
    n = len(micro_batches)
    lr, wd = schedules.lr(step), schedules.wd(step)
    for group in opt.param_groups:
        group['lr'] = lr
        group['weight_decay'] = wd if group['decay'] else 0.0
    total, stds = 0.0, []
    for x, keep, predict in micro_batches:
        momentum = schedules.momentum(ticks_done)
        model.move_target(momentum)
        ticks_done += 1
        loss, full = model.loss(x, keep, predict)
        (loss / n).backward()
        total += float(loss.detach()) / n
        stds.append(float(full.std(dim=0, correction=0).mean().detach()))
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    grad_norm = float(torch.sqrt(sum((g * g).sum() for g in grads)))
    opt.step()
    opt.zero_grad(set_to_none=True)
    return total, ticks_done, {'grad_norm': grad_norm, 'target_std': sum(stds) / n,
                               'lr': lr, 'wd': wd, 'momentum': momentum}
