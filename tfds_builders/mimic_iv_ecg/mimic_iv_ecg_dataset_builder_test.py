"""TFDS conformance test of the mimic_iv_ecg builder on dummy_data/."""

import tensorflow_datasets as tfds

from tfds_builders.mimic_iv_ecg import mimic_iv_ecg_dataset_builder


class MimicIvEcgTest(tfds.testing.DatasetBuilderTestCase):
    """Two readable records; the third listed record has no files."""
    DATASET_CLASS = mimic_iv_ecg_dataset_builder.Builder
    SPLITS = {'train': 2}
    # wfdb/scipy/h5py read with `os` and `open`, not tf.io.gfile.
    MOCK_OUT_FORBIDDEN_OS_FUNCTIONS = False
    SKIP_CHECKSUMS = True


if __name__ == '__main__':
    tfds.testing.test_main()
