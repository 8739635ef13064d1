"""Prints parameter counts: `python -m jepa_ecg.models --variant XS`."""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from jepa_ecg.models import build_encoder, build_predictor, model_config


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def param_counts(cfg) -> tuple[int, int]:
    """(encoder, predictor) learnable parameter counts, from shapes only."""
    encoder, predictor = build_encoder(cfg), build_predictor(cfg)
    key = jax.random.PRNGKey(0)
    x = jnp.zeros((1, cfg.window_samples, cfg.num_leads), jnp.float32)
    enc_shapes = jax.eval_shape(encoder.init, key, x)
    n = cfg.num_patches
    k = max(1, n // 4)
    pred_shapes = jax.eval_shape(
        predictor.init, key, jnp.zeros((1, k, cfg.dim)), jnp.zeros((1, k), jnp.int32),
        jnp.ones((1, k), bool), jnp.zeros((1, n), bool))
    return count_params(enc_shapes), count_params(pred_shapes)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--variant', default='XS')
    parser.add_argument('--fs', type=float, default=500.0)
    parser.add_argument('--patch_size', type=int, default=None)
    parser.add_argument('--leads', type=int, default=12)
    parser.add_argument('--registers', type=int, default=1)
    args = parser.parse_args(argv)
    cfg = model_config(args.variant, fs=args.fs, patch_size=args.patch_size,
                       num_leads=args.leads, num_registers=args.registers)
    enc, pred = param_counts(cfg)
    print(f'encoder_params={enc} predictor_params={pred}')


if __name__ == '__main__':
    main()
