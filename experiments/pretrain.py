r"""ECG-JEPA pre-training.

  python -m experiments.pretrain \
      --config=experiments/configs/pretrain.py:vit_xs,ptbxl,100hz \
      --config.data.data_dir=$HOME/tensorflow_datasets --workdir=runs/xs_ptbxl

Re-running with the same --workdir resumes from the last checkpoint.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Pre-training config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, metrics and TensorBoard events.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError('Too many command-line arguments.')
    from jepa_ecg.training import parallel
    parallel.initialize_distributed()
    # TensorFlow (tf.data/TFDS) must not grab accelerators that JAX uses.
    parallel.hide_accelerators_from_tensorflow()
    from jepa_ecg.training import loop
    summary = loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    logging.info('done: %s', summary)
    print(loop.loss_curve_summary(FLAGS.workdir))


if __name__ == '__main__':
    app.run(main)
