"""TFDS conformance test of the ptb_xl builder on dummy_data/."""

import tensorflow_datasets as tfds

from tfds_builders.ptb_xl import ptb_xl_dataset_builder

_EMPTY = {f'fold{i}': 0 for i in range(2, 9)}


class PtbXlRecords100Test(tfds.testing.DatasetBuilderTestCase):
    """records100: 5 present records (ecg_id 3 has no files)."""
    DATASET_CLASS = ptb_xl_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ['records100']
    SPLITS = {'fold1': 2, 'fold9': 1, 'fold10': 2, **_EMPTY}
    # wfdb/scipy/h5py read with `os` and `open`, not tf.io.gfile.
    MOCK_OUT_FORBIDDEN_OS_FUNCTIONS = False
    SKIP_CHECKSUMS = True


class PtbXlRecords500Test(tfds.testing.DatasetBuilderTestCase):
    """records500: dummy_data holds 500 Hz files of ecg_id 1, 4 and 5 only."""
    DATASET_CLASS = ptb_xl_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ['records500']
    SPLITS = {'fold1': 1, 'fold9': 1, 'fold10': 1, **_EMPTY}
    MOCK_OUT_FORBIDDEN_OS_FUNCTIONS = False
    SKIP_CHECKSUMS = True


if __name__ == '__main__':
    tfds.testing.test_main()
