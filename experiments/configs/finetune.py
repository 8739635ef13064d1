"""PTB-XL evaluation configs: `--config=experiments/configs/finetune.py:<protocol>[,smoke]`.

Protocols (facts section 7; hyper-parameters of the reference eval configs):
  linear                 attentive pooler on the frozen encoder (register kept)
  finetune               register-token linear head, encoder trained (dropout 0.05)
  finetune_after_linear  continue a linear run's classifier with the encoder trained
Extra tokens:
  smoke                  a few steps on a few records: a whole run in seconds
  bf16                   bfloat16 compute

Override anything with `--config.<field>=...`, e.g. the acceptance run
`--config.total_steps=1500 --config.eval_every=250 --config.model.fs=100`.
"""

import ml_collections

PROTOCOLS = ('linear', 'finetune', 'finetune_after_linear')


def get_config(arg: str = 'linear') -> ml_collections.ConfigDict:
    tokens = [t.strip().lower() for t in (arg or '').split(',') if t.strip()]
    unknown = [t for t in tokens if t not in PROTOCOLS and t not in ('smoke', 'bf16')]
    if unknown:
        raise ValueError(f'unknown config tokens {unknown}; see experiments/configs/finetune.py')
    protocols = [t for t in tokens if t in PROTOCOLS]
    if len(protocols) != 1:
        raise ValueError(f'name exactly one protocol of {PROTOCOLS}, got {protocols}')
    protocol = protocols[0]

    c = ml_collections.ConfigDict()
    c.protocol = protocol
    c.seed = 0
    c.dtype = 'float32'

    # Only used for `--encoder=random:<variant>`; a loaded encoder brings its own.
    c.model = ml_collections.ConfigDict()
    c.model.fs = 500.0
    c.model.patch_size = ml_collections.FieldReference(None, field_type=int)
    c.model.window_seconds = 10.0

    c.data = ml_collections.ConfigDict()
    c.data.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS data_dir
    # Default: ptb_xl/records500 for a 500 Hz encoder, records100 for 100 Hz
    # (whichever is built; the other rate is FFT-resampled).
    c.data.builder = ml_collections.FieldReference(None, field_type=str)
    c.data.crop_seconds = 2.5
    c.data.eval_stride_seconds = 1.25
    c.data.clip = 5.0
    c.data.storage_dtype = 'float32'  # 'float16' halves memory (full PTB-XL at 500 Hz)
    # Read only the first records of every fold (smoke runs and tests).
    c.data.max_records_per_fold = ml_collections.FieldReference(None, field_type=int)

    c.batch_size = 128
    c.warmup_start_learning_rate = 1e-6
    c.eps = 1e-8  # torch AdamW default, as the reference uses
    c.head_bias = False
    c.eval_every = 100
    c.eval_records_per_batch = 64
    c.log_every = 50
    c.plots = True
    c.bootstrap = ml_collections.ConfigDict()
    c.bootstrap.num_resamples = 1000
    c.bootstrap.confidence = 0.95

    if protocol == 'linear':
        c.head = 'attentive'
        c.frozen = True
        c.dropout = 0.0
        c.total_steps = 5000
        c.learning_rate = 1e-3
        c.final_learning_rate = 1e-3
        c.warmup_steps = 0
        c.weight_decay = 0.1
        c.b1, c.b2 = 0.9, 0.999
        c.grad_clip = 1.0
        c.patience = 5000
    elif protocol == 'finetune':
        c.head = 'register'
        c.frozen = False
        c.dropout = 0.05
        c.total_steps = 10_000
        c.learning_rate = 1e-3
        c.final_learning_rate = 1e-5
        c.warmup_steps = 200
        c.weight_decay = 0.01
        c.b1, c.b2 = 0.9, 0.99
        c.grad_clip = 0.0
        c.patience = 2000
    else:  # finetune_after_linear
        c.head = 'attentive'
        c.frozen = False
        c.dropout = 0.1
        c.total_steps = 5000
        c.learning_rate = 1e-4
        c.final_learning_rate = 1e-6
        c.warmup_steps = 200
        c.weight_decay = 0.0
        c.b1, c.b2 = 0.9, 0.999
        c.grad_clip = 1.0
        c.patience = 2000

    if 'bf16' in tokens:
        c.dtype = 'bfloat16'
    if 'smoke' in tokens:
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
