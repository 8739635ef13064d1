"""Learning-curve configs: `--config=experiments/configs/learning_curve.py:<budget>[,...]`.

One ECG-JEPA pre-training run at 100 Hz on the PTB-XL train folds, its
encoder kept at a geometric series of budgets (records seen = steps x
batch), the linear protocol on each and on random-init encoders.

Tokens (see common.parse_arg):
  cpu           the CPU-scale budget: ViT-XS, batch 64, 800 steps (51,200 records
                seen), budgets at 25, 50, ..., 800 steps; linear protocol
                shortened to 400 steps; 3 random-init seeds (the default)
  smoke         seconds: a few steps on a few records (tests)
  steps=<int>   shortens the pre-training budget (the largest budget; the
                series halves from it), e.g. `cpu,steps=100` in `make demo`
  budgets=<int> how many budgets in the series (default 6)
  random_seeds=<int>  random-init encoders in the band
  probe_seeds=<int>   linear probes of every encoder, each with its own seed
                (default 1); the curve reads their mean
  vit_xs | vit_s | ...  encoder variant (default vit_xs)
  published | small_budget  pre-training recipe (experiments/configs/pretrain.py
                RECIPES; default published)

The two sub-configs are the usual ones (`pretrain`: experiments/configs/
pretrain.py, `linear`: experiments/configs/finetune.py), so any field is
overridable: `--config.linear.total_steps=1000 --config.pretrain.global_batch_size=128`.
"""

import ml_collections

from experiments.configs import common
from experiments.configs import finetune as finetune_configs
from experiments.configs import pretrain as pretrain_configs

BUDGETS = {'cpu': 'cpu', 'smoke': 'smoke'}


def parse(arg: str | None) -> ml_collections.ConfigDict:
    """The typed arguments of `arg` (see the module docstring)."""
    return common.parse_arg(
        arg,
        budget=common.Choice(BUDGETS, 'cpu'),
        variant=common.Choice(pretrain_configs.VARIANT_TOKENS, 'vit_xs'),
        recipe=common.Choice(pretrain_configs.RECIPE_TOKENS, 'published'),
        steps=0,
        budgets=0,
        random_seeds=0,
        probe_seeds=1)


def get_config(arg: str = 'cpu') -> ml_collections.ConfigDict:
    a = parse(arg)
    smoke = a.budget == 'smoke'
    variant_token = {v: k for k, v in pretrain_configs.VARIANT_TOKENS.items()}[a.variant]

    c = ml_collections.ConfigDict()
    c.task = 'superdiagnostic'
    c.seed = 0
    c.num_budgets = a.budgets or (3 if smoke else 6)
    c.random_seeds = a.random_seeds or (2 if smoke else 3)
    # Probes per encoder (budget and random alike), seeds linear.seed + 0, 1, ...
    c.probe_seeds = a.probe_seeds
    # TFDS data_dir of both stages, and the raw PTB-XL folder to build from.
    c.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.manual_dir = ml_collections.FieldReference(None, field_type=str)
    c.plots = True

    p = pretrain_configs.get_config(f'{variant_token},ptbxl,100hz,{a.recipe}'
                                    + (',smoke' if smoke else ''))
    if not smoke:
        p.global_batch_size = 64
        p.total_steps = 800
        p.warmup_steps = 80
        p.log_every = 25
        p.rank_every = 25
    if a.steps:
        p.warmup_steps = max(1, round(p.warmup_steps * a.steps / p.total_steps))
        p.total_steps = a.steps
    # Saves happen at the budgets (forced) and keep every one of them.
    p.checkpoint_every = p.total_steps
    p.keep_checkpoints = c.num_budgets + 1
    p.stop_at_step = ml_collections.FieldReference(None, field_type=int)
    c.pretrain = p

    f = finetune_configs.get_config('linear,100hz' + (',smoke' if smoke else ''))
    if not smoke:
        # The linear protocol shortened to CPU scale (the reference: 5,000 steps).
        f.total_steps = 400
        f.eval_every = 100
        f.patience = 400
        f.batch_size = 64
    f.plots = False
    c.linear = f
    return c


def budget_steps(config: ml_collections.ConfigDict) -> list[int]:
    """The geometric series of pre-training steps: total, total/2, ... (ascending)."""
    total = int(config.pretrain.total_steps)
    steps = {max(1, round(total / 2 ** k)) for k in range(int(config.num_budgets))}
    return sorted(steps)
