"""The mimic_iv_ecg TFDS dataset (see README.md)."""
