"""TFDS conformance test of the code15 builder on dummy_data/."""

import tensorflow_datasets as tfds

from tfds_builders.code15 import code15_dataset_builder


class Code15Test(tfds.testing.DatasetBuilderTestCase):
    """Exams 1001 and 1005 are complete 10 s recordings."""
    DATASET_CLASS = code15_dataset_builder.Builder
    SPLITS = {'train': 2}
    # wfdb/scipy/h5py read with `os` and `open`, not tf.io.gfile.
    MOCK_OUT_FORBIDDEN_OS_FUNCTIONS = False
    SKIP_CHECKSUMS = True


if __name__ == '__main__':
    tfds.testing.test_main()
