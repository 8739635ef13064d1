"""Shared test setup: fake CPU devices and the location of real PTB-XL data."""

import os
import pathlib

# Several fake CPU devices so data-parallel code runs for real on one CPU.
# Must be set before jax is imported anywhere.
if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# TensorFlow only reads datasets here: its start-up oneDNN notice is noise.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]

# The published code (MIT) that the comparison tests check against; CI has it
# beside the repository.
_OFFICIAL = REPO.parent / 'shared' / 'reference' / 'official-ECG-JEPA'
if 'JEPA_ECG_OFFICIAL_DIR' not in os.environ and (_OFFICIAL / 'models' / 'JEPA.py').is_file():
  os.environ['JEPA_ECG_OFFICIAL_DIR'] = str(_OFFICIAL)

# Tests that read the real PTB-XL build it first: they belong to the full tier.
_REAL_DATA_FIXTURES = {'ptbxl_dir', 'ptbxl_tfds_dir'}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
  kept = []
  for item in items:
    # tf.test.TestCase's own `test_session` is a context manager, not a test.
    if item.name == 'test_session':
      config.hook.pytest_deselected(items=[item])
      continue
    if _REAL_DATA_FIXTURES & set(getattr(item, 'fixturenames', ())):
      item.add_marker(pytest.mark.slow)
    kept.append(item)
  items[:] = kept


def require_or_skip(msg: str) -> None:
  """Skips a test whose input is missing; fails instead where CI requires it."""
  if os.environ.get('JEPA_ECG_REQUIRE_DATA') == '1':
    pytest.fail(msg + ' and JEPA_ECG_REQUIRE_DATA=1')
  pytest.skip(msg)


def _ptbxl_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get(
      'PTBXL_DIR', REPO.parent / 'shared' / 'data' / 'ptb-xl'))


@pytest.fixture(scope='session')
def ptbxl_dir() -> pathlib.Path:
  """The real PTB-XL folder; skipped when absent unless data is required."""
  path = _ptbxl_dir()
  if not (path / 'ptbxl_database.csv').exists():
    require_or_skip(f'PTB-XL not found at {path} (set PTBXL_DIR)')
  return path


@pytest.fixture(scope='session')
def ptbxl_tfds_dir(ptbxl_dir, tmp_path_factory) -> pathlib.Path:
  """A TFDS data_dir holding `ptb_xl/records100` built from the real PTB-XL.

  Built once per test session (10-25 s on 2 cores); use it as
  `tfds.builder('ptb_xl/records100', data_dir=str(ptbxl_tfds_dir))`.
  """
  from tfds_builders import build  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path_factory.mktemp('ptbxl_tfds')
  build.build_dataset('ptb_xl/records100', str(data_dir), manual_dir=str(ptbxl_dir))
  return data_dir


@pytest.fixture(scope='session')
def synthetic_tfds_dir(tmp_path_factory) -> str:
  """A TFDS data_dir holding the offline `synthetic_ecg` source and its lead
  statistics (from 64 records), built once per test session."""
  from jepa_ecg.data import source_stats  # pylint: disable=g-import-not-at-top
  from tfds_builders import build  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp('synthetic_tfds'))
  build.build_dataset('synthetic_ecg', data_dir)
  source_stats.save_lead_stats(
      source_stats.compute_lead_stats('synthetic', data_dir, max_records=64), 'synthetic',
      data_dir)
  return data_dir


@pytest.fixture(scope='session')
def official_dir() -> pathlib.Path:
  """The published code's checkout ($JEPA_ECG_OFFICIAL_DIR, by default
  ../shared/reference/official-ECG-JEPA)."""
  path = pathlib.Path(os.environ.get('JEPA_ECG_OFFICIAL_DIR', _OFFICIAL))
  if not (path / 'models' / 'JEPA.py').is_file():
    require_or_skip(f'the published code is not at {path} (set JEPA_ECG_OFFICIAL_DIR)')
  return path


@pytest.fixture(scope='session')
def tiny_jepa():
    """(cfg, params, signal, masks): a 'tiny' ViT at 100 Hz, its initial
    encoder/predictor params, 4 random 10 s records and their block masks."""
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jepa_ecg.data.masking import sample_batch_masks  # pylint: disable=g-import-not-at-top
    from jepa_ecg.models import model_config  # pylint: disable=g-import-not-at-top
    from jepa_ecg.training import jepa_step  # pylint: disable=g-import-not-at-top
    cfg = model_config('tiny', fs=100)
    params = jepa_step.init_params(jax.random.PRNGKey(0), cfg)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, cfg.window_samples, 12)).astype(np.float32)
    return cfg, params, x, sample_batch_masks(rng, 4, cfg.num_patches)
