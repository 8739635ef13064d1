"""The cinc2021 TFDS dataset (see README.md)."""
