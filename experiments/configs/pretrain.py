"""Pre-training configs: `--config=experiments/configs/pretrain.py:vit_xs,ptbxl[,100hz][,smoke]`.

Tokens (comma-separated, any order):
  vit_xs | vit_s | vit_b | vit_tiny   model variant (default vit_xs)
  all | mimic | ptbxl | synthetic     data mix (default synthetic, offline)
  100hz                               model input at 100 Hz (patch 5)
  bf16                                bfloat16 compute
  smoke                               seconds-long run for laptops and tests
"""

import ml_collections

VARIANT_TOKENS = {'vit_xs': 'XS', 'vit_s': 'S', 'vit_b': 'B', 'vit_tiny': 'tiny'}
MIX_TOKENS = ('all', 'mimic', 'ptbxl', 'synthetic')


def get_config(arg: str = 'vit_xs,synthetic') -> ml_collections.ConfigDict:
    tokens = [t.strip().lower() for t in (arg or '').split(',') if t.strip()]
    unknown = [t for t in tokens if t not in VARIANT_TOKENS and t not in MIX_TOKENS
               and t not in ('100hz', 'bf16', 'smoke')]
    if unknown:
        raise ValueError(f'unknown config tokens {unknown}; see experiments/configs/pretrain.py')
    variant = next((VARIANT_TOKENS[t] for t in tokens if t in VARIANT_TOKENS), 'XS')
    mix = next((t for t in tokens if t in MIX_TOKENS), 'synthetic')

    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.variant = variant
    c.model.fs = 500.0
    c.model.window_seconds = 10.0
    c.model.patch_size = ml_collections.FieldReference(None, field_type=int)
    c.model.num_registers = 1
    c.dtype = 'float32'

    c.data = ml_collections.ConfigDict()
    c.data.mixture = mix
    c.data.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS data_dir
    c.data.keep_ratio_range = (0.15, 0.25)
    c.data.min_block_size = 10
    c.data.keep_bucket = 10
    c.data.num_workers = ml_collections.FieldReference(None, field_type=int)
    c.data.prefetch = 2

    c.global_batch_size = 2048
    c.total_steps = 100_000
    c.warmup_steps = 10_000
    c.learning_rate = 1e-3
    c.final_learning_rate = 1e-6
    c.warmup_start_learning_rate = 1e-6
    c.weight_decay = 0.01
    c.final_weight_decay = 0.1
    c.b1 = 0.9
    c.b2 = 0.99
    c.eps = 1e-6
    c.grad_clip = 0.0
    c.grad_accum_steps = 1
    c.ema_momentum = 0.998
    c.final_ema_momentum = 0.9995

    c.log_every = 100
    c.rank_every = 100
    c.checkpoint_every = 10_000
    c.keep_checkpoints = 3
    c.async_checkpoint = True

    if variant == 'B':
        # Published ViT-B setting: 2 accumulated micro-batches of 512.
        c.global_batch_size = 1024
        c.grad_accum_steps = 2

    if '100hz' in tokens:
        c.model.fs = 100.0
        if mix == 'ptbxl':
            c.data.mixture = 'ptbxl_100hz'
    if 'bf16' in tokens:
        c.dtype = 'bfloat16'
    if 'smoke' in tokens:
        c.global_batch_size = 8
        c.total_steps = 20
        c.warmup_steps = 5
        c.log_every = 5
        c.rank_every = 5
        c.checkpoint_every = 10
        c.grad_accum_steps = 1
    return c
