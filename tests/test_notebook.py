"""Executes experiments/notebooks/colab_tpu_quickstart.ipynb on CPU with smoke parameters.

The parameters are injected after the cell tagged `parameters` (the papermill
convention), so the notebook's own install cell is skipped (INSTALL=False) and
a clean clone needs no network. The kernel is the Python running the tests
(a temporary kernelspec), started in the repository root.
"""

import json
import os
import pathlib
import sys

import pytest

# Full tier (make test-all): see README's test tiers.
pytestmark = pytest.mark.slow

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')
pytest.importorskip('ipykernel')

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / 'experiments' / 'notebooks' / 'colab_tpu_quickstart.ipynb'
KERNEL = 'jepa-ecg-test'


def smoke_parameters(workdir: pathlib.Path) -> str:
    return '\n'.join([
        '# injected by tests/test_notebook.py',
        'INSTALL = False',
        'SMOKE = True',
        f'WORKDIR = {str(workdir)!r}',
        'PTBXL_DIR = None',
        "VARIANT = 'vit_tiny'",
        "SYNTHETIC_CONFIG = 'tiny'",
        'PRETRAIN_STEPS = 4',
        'BATCH_PER_DEVICE = 2',
        'LINEAR_STEPS = 4',
        'PROBE_RECORDS = 60',
    ])


def inject(nb, source: str):
    index = next(i for i, c in enumerate(nb.cells)
                 if 'parameters' in c.get('metadata', {}).get('tags', []))
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata['tags'] = ['injected-parameters']
    nb.cells.insert(index + 1, cell)
    return nb


def write_kernelspec(root: pathlib.Path) -> None:
    spec = root / 'kernels' / KERNEL
    spec.mkdir(parents=True)
    (spec / 'kernel.json').write_text(json.dumps({
        'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
        'display_name': 'jepa_ecg test', 'language': 'python',
        # The fake CPU devices of conftest.py reach the kernel: data parallelism for real.
        'env': {'XLA_FLAGS': os.environ.get('XLA_FLAGS', ''), 'CUDA_VISIBLE_DEVICES': '',
                'TF_CPP_MIN_LOG_LEVEL': '2', 'MPLBACKEND': 'Agg',
                'PYTHONPATH': os.pathsep.join(filter(None, [
                    str(REPO), os.environ.get('PYTHONPATH', '')]))},
    }))


def test_notebook_is_valid_and_parameterised():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    tagged = [c for c in nb.cells if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(tagged) == 1
    for name in ('INSTALL', 'SMOKE', 'WORKDIR', 'PTBXL_DIR', 'VARIANT', 'PRETRAIN_STEPS'):
        assert f'{name} =' in tagged[0].source
    assert not any(c.get('outputs') for c in nb.cells if c.cell_type == 'code'), \
        'commit the notebook without outputs'


def test_notebook_runs_on_cpu_with_smoke_parameters(tmp_path, monkeypatch):
    write_kernelspec(tmp_path / 'jupyter')
    monkeypatch.setenv('JUPYTER_PATH', str(tmp_path / 'jupyter'))
    workdir = tmp_path / 'run'
    nb = inject(nbformat.read(NOTEBOOK, as_version=4), smoke_parameters(workdir))
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=600,
                                     resources={'metadata': {'path': str(REPO)}})
    client.execute()
    text = '\n'.join(out.get('text', '') for c in nb.cells if c.cell_type == 'code'
                     for out in c.get('outputs', []))
    assert 'device(s)' in text and 'global batch' in text
    assert 'linear protocol: best val AUC' in text
    assert (workdir / 'loss.png').exists() and (workdir / 'ecg_masks.png').exists()
    assert (workdir / 'pretrain' / 'checkpoints').is_dir()
    results = json.loads((workdir / 'linear' / 'results.json').read_text())
    assert results['protocol'] == 'linear'
    assert (workdir / 'encoder' / 'encoder.json').exists()
    assert (workdir / 'emb.npz').exists()


@pytest.mark.slow
def test_notebook_runs_on_ptbxl(ptbxl_dir, tmp_path, monkeypatch):
    """The PTB-XL branch: build ptb_xl/records100, pre-train on folds 1-8, probe superdiagnostic."""
    write_kernelspec(tmp_path / 'jupyter')
    monkeypatch.setenv('JUPYTER_PATH', str(tmp_path / 'jupyter'))
    workdir = tmp_path / 'run'
    params = smoke_parameters(workdir).replace('PTBXL_DIR = None',
                                               f'PTBXL_DIR = {str(ptbxl_dir)!r}')
    nb = inject(nbformat.read(NOTEBOOK, as_version=4), params)
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=1200,
                                     resources={'metadata': {'path': str(REPO)}})
    client.execute()
    results = json.loads((workdir / 'linear' / 'results.json').read_text())
    assert results['task'] == 'superdiagnostic'
    assert (workdir / 'emb.npz').exists()
