"""Experiment entry points (`python -m experiments.<name>`).

Set before any of them imports TensorFlow, which only reads datasets here:
its C++ INFO logs and start-up oneDNN notice are noise on the console.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
