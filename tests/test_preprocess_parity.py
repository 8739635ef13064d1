"""One raw record, three paths (pre-training, fine-tuning, inference): identical model input.

Real PTB-XL records (100 Hz WFDB files and their TFDS build) go through the
pre-training pipeline, the fine-tuning task and `jepa_ecg.load_encoder(...)`
with the same per-lead statistics; what the model sees must be bit-equal.
"""

import jax
import numpy as np
import pytest

import jepa_ecg
from jepa_ecg.data import datasets, preprocess, pretrain, ptbxl, sources
from jepa_ecg.data import source_stats as stats
from jepa_ecg.ecg import files
from jepa_ecg.ecg.leads import LEADS
from jepa_ecg.inference.encoder import save_encoder
from jepa_ecg.models import build_encoder, model_config

SPLIT = 'fold1[:16]'


def _record_path(ptbxl_dir, ecg_id: int) -> str:
    return str(ptbxl_dir / 'records100' / f'{ecg_id // 1000 * 1000:05d}' / f'{ecg_id:05d}_lr.hea')


@pytest.fixture(scope='module')
def setup(ptbxl_tfds_dir, ptbxl_dir, tmp_path_factory):
    data_dir = str(ptbxl_tfds_dir)
    task = {fs: ptbxl.load_task('superdiagnostic', fs=fs, data_dir=data_dir,
                                max_records_per_fold=16) for fs in (100, 500)}
    # Every path gets the statistics of the fine-tuning task's train folds
    # (computed at the model's rate).
    source = {fs: sources.Source(f'parity_{fs}', 'ptb_xl/records100', 100.0, train_split=SPLIT)
              for fs in (100, 500)}
    encoders = {}
    for fs in (100, 500):
        lead_stats = task[fs].stats
        stats.save_lead_stats(lead_stats.to_json(), source[fs], data_dir)
        cfg = model_config('XS', fs=fs)
        params = build_encoder(cfg).init(
            jax.random.PRNGKey(0), np.zeros((1, cfg.window_samples, 12), np.float32))['params']
        path = str(tmp_path_factory.mktemp(f'encoder{fs}'))
        save_encoder(path, cfg, params, lead_stats=lead_stats)
        encoders[fs] = jepa_ecg.load_encoder(path)
    ids = datasets.SplitReader('ptb_xl/records100', data_dir, SPLIT, keys=('ecg_id',))
    return dict(data_dir=data_dir, task=task, source=source, ids=ids, encoders=encoders,
                ptbxl_dir=ptbxl_dir)


@pytest.mark.parametrize('fs', [100, 500])
def test_same_record_same_model_input(setup, fs):
    pipe = pretrain.PretrainPipeline(
        {f'parity_{fs}': 1.0}, data_dir=setup['data_dir'], global_batch_size=4, fs=fs,
        window_seconds=10.0, patch_size=fs // 20, seed=0,
        sources={f'parity_{fs}': setup['source'][fs]})
    batch, plan = pipe.batch(0), pipe.plan(0)
    task = setup['task'][fs]
    train = task.splits['train']
    encoder = setup['encoders'][fs]
    checked = 0
    for i, record in enumerate(plan['record']):
        ecg_id = int(setup['ids'][int(record)]['ecg_id'])
        if ecg_id not in train.ecg_ids:  # a record without a superdiagnostic label
            continue
        # 10 s records: the pre-training window is the whole record.
        pretrain_input = batch['signal'][i]
        finetune_input = task.records_dataset('train')[int(np.flatnonzero(train.ecg_ids
                                                                          == ecg_id)[0])]
        user_file = files.read_record(_record_path(setup['ptbxl_dir'], ecg_id))
        inference_input = encoder.preprocess(user_file.signal, user_file.fs, user_file.leads)
        assert pretrain_input.shape == (10 * fs, 12)
        np.testing.assert_array_equal(pretrain_input, finetune_input)
        np.testing.assert_array_equal(pretrain_input, inference_input)
        # The same crop through the fine-tuning path equals that slice.
        window = preprocess.Window(fs * 5 // 2, 0.37)
        crop = preprocess.preprocess(user_file.signal, user_file.fs, user_file.leads,
                                     target_fs=fs, stats=task.stats, window=window)
        start = int(0.37 * (10 * fs - window.length + 1))
        if fs == 100:  # no resampling: cropping commutes with everything else
            np.testing.assert_array_equal(crop, pretrain_input[start:start + window.length])
        # embed() pools the encoder's tokens of exactly that input.
        embedded = encoder.embed(user_file.signal, fs=user_file.fs, leads=user_file.leads,
                                 window_seconds=10.0)
        tokens = np.asarray(encoder.tokens(pretrain_input[None]))
        np.testing.assert_allclose(embedded.mean[0], tokens[0].mean(0), rtol=1e-5, atol=1e-6)
        checked += 1
    assert checked >= 2


def test_stored_record_equals_the_users_file(setup):
    """The builder stores what the user-file reader reads (the same WFDB parser)."""
    reader = datasets.open_source(setup['source'][100], setup['data_dir'])
    for index in (0, 5):
        ecg_id = int(setup['ids'][index]['ecg_id'])
        user_file = files.read_record(_record_path(setup['ptbxl_dir'], ecg_id))
        stored, fs = reader.read(index)
        assert fs == user_file.fs == 100.0
        assert preprocess.canonical_leads(user_file.leads) == list(LEADS)  # file says AVR
        np.testing.assert_array_equal(stored, user_file.signal)
