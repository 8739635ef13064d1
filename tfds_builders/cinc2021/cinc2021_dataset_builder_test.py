"""TFDS conformance test of the cinc2021 builder on dummy_data/."""

import tensorflow_datasets as tfds

from tfds_builders.cinc2021 import cinc2021_dataset_builder


class Cinc2021Cpsc2018Test(tfds.testing.DatasetBuilderTestCase):
    """cpsc_2018: A0001 and A0003 (header quirks); A0002 is too short."""
    DATASET_CLASS = cinc2021_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ['cpsc2018']
    SPLITS = {'train': 2}
    # wfdb/scipy/h5py read with `os` and `open`, not tf.io.gfile.
    MOCK_OUT_FORBIDDEN_OS_FUNCTIONS = False
    SKIP_CHECKSUMS = True


class Cinc2021StPetersburgTest(tfds.testing.DatasetBuilderTestCase):
    """st_petersburg_incart: one 257 Hz record."""
    DATASET_CLASS = cinc2021_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ['st_petersburg']
    SPLITS = {'train': 1}
    MOCK_OUT_FORBIDDEN_OS_FUNCTIONS = False
    SKIP_CHECKSUMS = True


if __name__ == '__main__':
    tfds.testing.test_main()
