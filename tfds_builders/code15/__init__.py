"""The code15 TFDS dataset (see README.md)."""
