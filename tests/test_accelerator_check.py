"""experiments/accelerator_check.py: its smoke run prints every table on CPU, and
importing it defines no absl flags (it sits beside other experiment mains)."""

import subprocess
import sys

import pytest
from absl import flags

from experiments import accelerator_check


def test_importing_defines_no_flags():
    assert 'smoke' not in flags.FLAGS and 'peak_tflops' not in flags.FLAGS
    table = accelerator_check.format_table([{'a': 1.23456, 'b': None}, {'a': 'x'}], ('a', 'b'))
    assert table.splitlines() == ['   a  b', '1.23  -', '   x  -']


@pytest.mark.slow
def test_smoke_prints_devices_steps_pipeline_and_equivalence():
    proc = subprocess.run([sys.executable, '-m', 'experiments.accelerator_check', '--smoke'],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for heading in ('devices', 'pre-training step', 'input pipeline', 'one step against'):
        assert heading in out, out
    step = out[out.index('pre-training step'):].splitlines()[2].split()
    assert step[:3] == ['tiny', 'float32', '4'] and float(step[6]) > 0  # records/s
    try:
        import torch  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
        assert 'torch is not installed' in out
    else:
        assert out.rstrip().splitlines()[-1].split()[5] == 'True', out  # ok column
