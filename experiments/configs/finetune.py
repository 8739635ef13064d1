"""PTB-XL evaluation configs: `--config=experiments/configs/finetune.py:<protocol>[,smoke]`.

Protocols (facts section 7; hyper-parameters of the reference eval configs,
the PROTOCOLS table below):
  linear                 attentive pooler on the frozen encoder (register kept)
  finetune               register-token linear head, encoder trained (dropout 0.05)
  finetune_after_linear  continue a linear run's classifier with the encoder trained
Extra tokens (see common.parse_arg):
  smoke                  a few steps on a few records: a whole run in seconds
  bf16                   bfloat16 compute
  100hz (= fs=100)       model rate for `--encoder=random:<variant>` (a loaded
                         encoder brings its own)

Override anything with `--config.<field>=...`, e.g. the acceptance run
`--config.total_steps=1500 --config.eval_every=250 --config.model.fs=100`.
"""

import ml_collections

from experiments.configs import common

DTYPE_TOKENS = {'fp32': 'float32', 'bf16': 'bfloat16'}

# What each protocol sets; every other field is shared. One row per
# jepa_ecg.training.config_checks.PROTOCOLS entry (a test checks).
PROTOCOLS = {
    'linear': dict(
        head='attentive', frozen=True, dropout=0.0, total_steps=5000,
        learning_rate=1e-3, final_learning_rate=1e-3, warmup_steps=0, weight_decay=0.1,
        b1=0.9, b2=0.999, grad_clip=1.0, patience=5000),
    'finetune': dict(
        head='register', frozen=False, dropout=0.05, total_steps=10_000,
        learning_rate=1e-3, final_learning_rate=1e-5, warmup_steps=200, weight_decay=0.01,
        b1=0.9, b2=0.99, grad_clip=0.0, patience=2000),
    'finetune_after_linear': dict(
        head='attentive', frozen=False, dropout=0.1, total_steps=5000,
        learning_rate=1e-4, final_learning_rate=1e-6, warmup_steps=200, weight_decay=0.0,
        b1=0.9, b2=0.999, grad_clip=1.0, patience=2000),
}


def parse(arg: str | None) -> ml_collections.ConfigDict:
    """The typed arguments of `arg` (see the module docstring)."""
    return common.parse_arg(
        arg, aliases={'100hz': 'fs=100'},
        protocol=common.Choice({p: p for p in PROTOCOLS}),
        fs=500.0,
        dtype=common.Choice(DTYPE_TOKENS, 'fp32'),
        smoke=False)


def get_config(arg: str = 'linear') -> ml_collections.ConfigDict:
    a = parse(arg)

    c = ml_collections.ConfigDict()
    c.protocol = a.protocol
    c.seed = 0
    c.dtype = a.dtype

    # Only used for `--encoder=random:<variant>`; a loaded encoder brings its own.
    c.model = ml_collections.ConfigDict()
    c.model.fs = a.fs
    c.model.patch_size = ml_collections.FieldReference(None, field_type=int)
    c.model.window_seconds = 10.0
    # Kernel init (jepa_ecg.models.config.INITS) and LayerNorm biases of a
    # `random:<variant>` model. A loaded encoder brings its own (recorded in
    # its directory), and the head follows the encoder's init.
    c.model.init = 'trunc_normal'
    c.model.norm_bias = False
    # How the model computes (jepa_ecg.models.config.KERNELS): 'auto' takes the
    # XLA:CPU kernels on CPU and the stock layers elsewhere; remat recomputes
    # each block in the backward pass (large per-device batches).
    c.model.kernels = 'auto'
    c.model.remat = False

    c.data = ml_collections.ConfigDict()
    c.data.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS data_dir
    # Default: ptb_xl/records500 for a 500 Hz encoder, records100 for 100 Hz
    # (whichever is built; the other rate is FFT-resampled).
    c.data.builder = ml_collections.FieldReference(None, field_type=str)
    c.data.crop_seconds = 2.5
    c.data.eval_stride_seconds = 1.25
    c.data.clip = 5.0
    # The raw PTB-XL folder: ptb_xl is built from it on first use when given.
    c.data.manual_dir = ml_collections.FieldReference(None, field_type=str)
    # Read only the first records of every fold (smoke runs and tests).
    c.data.max_records_per_fold = ml_collections.FieldReference(None, field_type=int)
    # Label efficiency: train on a label-stratified share of the train folds,
    # fixed by the run's seed (jepa_ecg/data/label_fraction.py); 1.0: all.
    c.data.train_fraction = 1.0
    # Probability that a training crop has a random non-empty proper subset of
    # its leads zeroed after normalisation (reduced-lead robustness; 0: off).
    c.data.lead_dropout = 0.0

    c.batch_size = 128
    c.warmup_start_learning_rate = 1e-6
    c.eps = 1e-8  # torch AdamW default, as the reference uses
    c.head_bias = False
    c.eval_every = 100
    c.eval_records_per_batch = 64
    c.log_every = 50
    c.plots = True
    # Test AUC with only these leads present (the others zero-filled as
    # `jepa-ecg predict --fill-missing=zero` does), e.g. '12,6-limb,I+II,I'
    # or any '+'-joined leads; '' skips it (jepa_ecg/data/lead_subsets.py).
    c.eval_lead_subsets = ''
    c.bootstrap = ml_collections.ConfigDict()
    c.bootstrap.num_resamples = 1000
    c.bootstrap.confidence = 0.95

    for key, value in PROTOCOLS[a.protocol].items():
        c[key] = value

    if a.smoke:
        c.total_steps = 12
        c.warmup_steps = min(c.warmup_steps, 3)
        c.batch_size = 8
        c.eval_every = 4
        c.patience = 8
        c.log_every = 4
        c.eval_records_per_batch = 16
        c.data.max_records_per_fold = 48
        c.bootstrap.num_resamples = 50
    return c
