"""Running the published ECG-JEPA code (a checkout, MIT) beside ours.

`published_imports` imports its top-level packages for a while and leaves
nothing behind; `OfficialCode` steps its pre-training JEPA module as its
pretrain.py does (experiments.compare_official, the comparison tests).
"""

from __future__ import annotations

import contextlib
import os
import sys

PUBLISHED_PACKAGES = ('configs', 'models', 'utils', 'data', 'finetune')
# The published pre-training config of each ViT variant.
VARIANT_FILES = {'XS': 'ViTXS_all.yaml', 'S': 'ViTS_all.yaml', 'B': 'ViTB_all.yaml'}


@contextlib.contextmanager
def published_imports(path: str, argv: list[str] | None = None):
    """Imports from the checkout at `path` (its top-level `configs`, `models`,
    `utils`, `data`, `finetune`) without leaving them on sys.path or in
    sys.modules; `argv` stands in for sys.argv meanwhile (a script of it that
    parses its command line when imported)."""
    before, saved_argv = set(sys.modules), sys.argv
    sys.path.insert(0, path)
    if argv is not None:
        sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved_argv
        sys.path.remove(path)
        for name in set(sys.modules) - before:
            if name.split('.')[0] in PUBLISHED_PACKAGES:
                del sys.modules[name]


def official_config(cfg, config) -> dict:
    """Overrides of the official YAML config for our model config `cfg` and
    pre-training config `config` (sizes, schedules, optimiser)."""
    accum = config.grad_accum_steps
    return dict(
        sampling_frequency=int(round(cfg.fs)), channel_size=cfg.window_samples,
        patch_size=cfg.patch_size, dim=cfg.dim, depth=cfg.depth, num_heads=cfg.num_heads,
        pred_dim=cfg.pred_dim, pred_depth=cfg.pred_depth, pred_num_heads=cfg.pred_num_heads,
        mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, bias=cfg.bias, norm_eps=cfg.norm_eps,
        num_registers=cfg.num_registers, steps=config.total_steps,
        batch_size=config.global_batch_size // accum, gradient_accumulation_steps=accum,
        encoder_momentum=config.ema_momentum, final_encoder_momentum=config.final_ema_momentum,
        learning_rate=config.learning_rate, final_learning_rate=config.final_learning_rate,
        learning_rate_warmup_steps=config.warmup_steps, weight_decay=config.weight_decay,
        final_weight_decay=config.final_weight_decay, opt_betas=[config.b1, config.b2],
        opt_eps=config.eps, gradient_clip=config.grad_clip)


class OfficialCode:
    """The official JEPA module, AdamW and schedules, stepped as its pretrain.py does.

    `start_step` starts the learning-rate and weight-decay schedules there
    and the momentum schedule at start_step * micro-batches (it advances
    once per forward pass).
    """

    def __init__(self, path: str, cfg, config, *, sdpa: bool = False, start_step: int = 0):
        import torch  # pylint: disable=g-import-not-at-top
        self.torch = torch
        with published_imports(path):
            import configs as off_configs  # pylint: disable=g-import-not-at-top
            from models.JEPA import JEPA  # pylint: disable=g-import-not-at-top
            from utils import schedules as sched  # pylint: disable=g-import-not-at-top
            d = off_configs.load_config_file(
                os.path.join(path, 'configs', 'pretrain', VARIANT_FILES['XS']))
            d.update(official_config(cfg, config))
            oc = off_configs.pretrain.Config(**d)
            accum = oc.gradient_accumulation_steps
            momentum = self._tap(sched.linear_schedule(
                oc.steps, oc.encoder_momentum, oc.final_encoder_momentum,
                step=accum * start_step))
            self.lr = sched.cosine_schedule(oc.steps, oc.learning_rate, oc.final_learning_rate,
                                            oc.learning_rate_warmup_steps, 1e-6, step=start_step)
            self.wd = sched.cosine_schedule(oc.steps, oc.weight_decay, oc.final_weight_decay,
                                            step=start_step)
            self.update_lr, self.update_wd = sched.update_learning_rate_, sched.update_weight_decay_
            self.model = JEPA(oc, momentum, use_sdp_kernel=sdpa)
        self.model.train()
        self.opt = self.model.get_optimizer(fused=False)

    def _tap(self, schedule):
        """The momentum schedule, remembering the value last handed out."""
        self.momentum = None
        for value in schedule:
            self.momentum = value
            yield value

    def step(self, micro_batches, autocast=contextlib.nullcontext, *,
             measure: bool = False) -> dict:
        """One optimiser step over [(x (B, leads, T), keep, predict), ...].

        Returns {'loss'} and, with `measure`, the applied 'lr', 'wd',
        'momentum' and the gradient's global 'grad_norm'.
        """
        lr, wd = next(self.lr), next(self.wd)
        self.update_lr(self.opt, lr)
        self.update_wd(self.opt, wd)
        total = 0.0
        for x, keep, predict in micro_batches:
            with autocast():
                loss = self.model(x, keep, predict) / len(micro_batches)
            loss.backward()
            total += loss.item()
        out = {'loss': total}
        if measure:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            out.update(lr=lr, wd=wd, momentum=self.momentum,
                       grad_norm=float(self.torch.sqrt(sum((g * g).sum() for g in grads))))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return out


