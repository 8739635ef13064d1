"""The ptb_xl TFDS dataset (see README.md).

Importing this package registers its sources (no TensorFlow); the builder
class lives in `ptb_xl_dataset_builder`.
"""

from tfds_builders.registry import Source, register_source

NUM_FOLDS = 10
FOLD_SPLITS = tuple(f'fold{i}' for i in range(1, NUM_FOLDS + 1))
# The benchmark's training folds (fold9 is validation, fold10 test).
TRAIN_SPLIT = '+'.join(FOLD_SPLITS[:8])

register_source(Source('ptb_xl', 'ptb_xl/records500', 500.0, train_split=TRAIN_SPLIT))
register_source(Source('ptb_xl_100hz', 'ptb_xl/records100', 100.0, train_split=TRAIN_SPLIT))
