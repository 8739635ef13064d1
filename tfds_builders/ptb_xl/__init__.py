"""The ptb_xl TFDS dataset (see README.md)."""
