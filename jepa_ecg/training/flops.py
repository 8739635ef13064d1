"""Model FLOPs of ECG-JEPA, for throughput and model-FLOPs-utilisation reports.

Counts the matrix multiplications of the model as written in the paper
(2 FLOPs per multiply-add): patch embedding, attention projections, the two
attention products, MLP; elementwise work (softmax, norms, GELU) is not
counted, as usual for MFU. A training step runs the target encoder forward
on every patch, and the context encoder and predictor forward and backward
(backward = 2x forward), so

    step = target_fwd + 3 * (context_fwd + predictor_fwd).

Implementation choices that do not change the model (gathers written as
one-hot products, padding of the kept-token count) are not counted except
that the context encoder runs on the padded kept count the step sees.
"""

from __future__ import annotations

from jepa_ecg.models.config import ModelConfig

# Dense peak FLOP/s per chip by compute dtype, for MFU. Sources: vendor
# data sheets (dense, no sparsity). Unknown devices report no MFU.
PEAK_FLOPS = {
    # device_kind substring: {dtype: flop/s}
    'H200': {'bfloat16': 989e12, 'float32': 67e12},
    'H100': {'bfloat16': 989e12, 'float32': 67e12},
    'A100': {'bfloat16': 312e12, 'float32': 19.5e12},
    'L4': {'bfloat16': 121e12, 'float32': 30e12},
    'V100': {'bfloat16': 125e12, 'float32': 15.7e12},
    'TPU v6': {'bfloat16': 918e12, 'float32': 918e12 / 4},
    'TPU v5p': {'bfloat16': 459e12, 'float32': 459e12 / 4},
    'TPU v5 lite': {'bfloat16': 197e12, 'float32': 197e12 / 4},
    'TPU v5e': {'bfloat16': 197e12, 'float32': 197e12 / 4},
    'TPU v4': {'bfloat16': 275e12, 'float32': 275e12 / 4},
}


def _blocks_forward(tokens: int, dim: int, depth: int, mlp_ratio: float) -> float:
    hidden = int(dim * mlp_ratio)
    per_block = (2 * tokens * dim * 3 * dim      # qkv
                 + 2 * tokens * tokens * dim     # q k^T over all heads
                 + 2 * tokens * tokens * dim     # weights @ v
                 + 2 * tokens * dim * dim        # output projection
                 + 2 * tokens * dim * hidden     # fc1
                 + 2 * tokens * hidden * dim)    # fc2
    return float(depth * per_block)


def encoder_forward_flops(cfg: ModelConfig, num_tokens: int | None = None) -> float:
    """FLOPs of one encoder forward pass for one record.

    Args:
      cfg: model config.
      num_tokens: patches encoded (kept patches for the context encoder);
        default all `cfg.num_patches`. Registers are added on top.
    """
    n = cfg.num_patches if num_tokens is None else int(num_tokens)
    embed = 2 * n * cfg.patch_size * cfg.num_leads * cfg.dim
    return embed + _blocks_forward(n + cfg.num_registers, cfg.dim, cfg.depth, cfg.mlp_ratio)


def predictor_forward_flops(cfg: ModelConfig, num_context: int) -> float:
    """FLOPs of one predictor forward pass for one record (all patches predicted)."""
    n = cfg.num_patches
    embed = 2 * num_context * cfg.dim * cfg.pred_dim
    proj = 2 * n * cfg.pred_dim * cfg.dim
    return embed + proj + _blocks_forward(n, cfg.pred_dim, cfg.pred_depth, cfg.mlp_ratio)


def train_step_flops(cfg: ModelConfig, batch_size: int, num_keep: int) -> dict[str, float]:
    """FLOPs of one pre-training step, by part and in total.

    Args:
      cfg: model config.
      batch_size: records in the step (global batch).
      num_keep: context tokens per record as the step computes them (the
        padded kept count).

    Returns:
      dict with 'target_encoder', 'context_encoder', 'predictor' (forward
      and, where trained, backward) and 'total', all per step.
    """
    target = encoder_forward_flops(cfg)
    context = 3 * encoder_forward_flops(cfg, num_keep)
    predictor = 3 * predictor_forward_flops(cfg, num_keep)
    parts = {'target_encoder': target, 'context_encoder': context, 'predictor': predictor}
    parts = {k: v * batch_size for k, v in parts.items()}
    parts['total'] = sum(parts.values())
    return parts


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """Dense peak FLOP/s of one device for `dtype`, or None when unknown (e.g. CPUs)."""
    for key, peaks in PEAK_FLOPS.items():
        if key.lower() in device_kind.lower():
            return peaks.get(dtype, peaks['float32'])
    return None
