"""`jepa-ecg embed` and `Encoder.embed`: formats, resampling, leads, windows, errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import scipy.io
import wfdb

import jepa_ecg
from jepa_ecg import cli
from jepa_ecg.inference import encoder as encoder_lib
from jepa_ecg.ecg.leads import LEADS
from jepa_ecg.models import build_encoder, model_config

FS = 100.0  # the tiny test model's rate
STATS = {'mean': [0.01 * i for i in range(12)], 'std': [0.5 + 0.05 * i for i in range(12)],
         'source': 'test'}


@pytest.fixture(scope='module')
def encoder_dir(tmp_path_factory):
    cfg = model_config('tiny', fs=FS)
    x = np.zeros((1, cfg.window_samples, 12), np.float32)
    params = build_encoder(cfg).init(jax.random.PRNGKey(0), x)['params']
    path = str(tmp_path_factory.mktemp('enc') / 'tiny')
    encoder_lib.save_encoder(path, cfg, params, lead_stats=STATS,
                             provenance={'kind': 'test'})
    return path


@pytest.fixture(scope='module')
def enc(encoder_dir):
    return jepa_ecg.load_encoder(encoder_dir)


def band_limited(seconds, fs, seed=0, leads=12):
    """An ECG-like sum of sines below 20 Hz (periodic over the record), mV."""
    t = np.arange(int(round(seconds * fs))) / fs
    rng = np.random.default_rng(seed)
    out = np.zeros((t.size, leads))
    for lead in range(leads):
        for k in range(1, 8):  # whole cycles over the record: exact FFT resampling
            f = k * 2 / seconds * (1 + lead % 3)
            out[:, lead] += rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6))
    return out.astype(np.float32)


def run_cli(args, capsys):
    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_load_encoder_api(enc, encoder_dir):
    assert isinstance(enc, encoder_lib.Encoder)
    assert enc.config == model_config('tiny', fs=FS)
    assert enc.leads == LEADS and enc.fs == FS
    np.testing.assert_allclose(enc.lead_stats.std, STATS['std'], rtol=1e-6)
    leaves = jax.tree_util.tree_leaves(enc.params)
    assert all(leaf.dtype == np.float32 for leaf in leaves)
    tokens = enc.tokens(np.zeros((2, 250, 12), np.float32))
    assert tokens.shape == (2, 50, 32)
    with_regs = enc.tokens(np.zeros((2, 250, 12), np.float32), keep_registers=True)
    np.testing.assert_allclose(np.asarray(with_regs)[:, 1:], np.asarray(tokens), atol=1e-6)
    with open(os.path.join(encoder_dir, 'encoder.json')) as f:
        doc = json.load(f)
    assert doc['format'] == 'jepa_ecg.encoder' and doc['model']['fs'] == FS
    # `import jepa_ecg` stays cheap: no JAX until load_encoder is used.
    code = ('import sys, jepa_ecg; assert "jax" not in sys.modules; '
            'assert callable(jepa_ecg.load_encoder)')
    subprocess.run([sys.executable, '-c', code], check=True)


def test_embed_matches_manual_pipeline(enc):
    sig = band_limited(10, FS)
    emb = enc.embed(sig, FS, list(LEADS))
    x = np.clip((sig - np.asarray(STATS['mean'])) / np.asarray(STATS['std']), -5, 5)
    out = np.asarray(enc.tokens(x[None].astype(np.float32), keep_registers=True))
    np.testing.assert_allclose(emb.mean[0], out[0, 1:].mean(0), atol=1e-5)
    np.testing.assert_allclose(emb.register[0], out[0, 0], atol=1e-5)
    assert emb.num_windows.tolist() == [1]


@pytest.mark.parametrize('fs_in', [100, 250, 257, 360, 400, 1000])
def test_any_sampling_rate_is_resampled_to_the_model(enc, fs_in):
    ref = band_limited(10, FS)
    sig = band_limited(10, fs_in)
    x = enc.preprocess(sig, fs_in, list(LEADS))
    assert x.shape == (1000, 12)
    x_ref = enc.preprocess(ref, FS, list(LEADS))
    np.testing.assert_allclose(x, x_ref, atol=2e-3)
    a = enc.embed(sig, fs_in, list(LEADS)).mean
    b = enc.embed(ref, FS, list(LEADS)).mean
    np.testing.assert_allclose(a, b, atol=2e-3)


def test_leads_matched_by_name_and_missing_leads(enc):
    sig = band_limited(10, FS, seed=1)
    perm = np.random.default_rng(0).permutation(12)
    names = [LEADS[i] for i in perm]
    names = [n.upper() if n.startswith('aV') else n for n in names]  # AVR spelling
    a = enc.embed(sig, FS, list(LEADS)).mean
    b = enc.embed(sig[:, perm], FS, names).mean
    np.testing.assert_allclose(a, b, atol=1e-6)
    # Extra leads are ignored.
    extra = np.concatenate([sig, sig[:, :1]], axis=1)
    c = enc.embed(extra, FS, list(LEADS) + ['X']).mean
    np.testing.assert_allclose(a, c, atol=1e-6)
    keep = [i for i in range(12) if LEADS[i] not in ('aVL', 'V4')]
    with pytest.raises(encoder_lib.MissingLeadsError, match=r"\['aVL', 'V4'\]"):
        enc.embed(sig[:, keep], FS, [LEADS[i] for i in keep])
    with pytest.warns(encoder_lib.MissingLeadsWarning, match='aVL'):
        d = enc.embed(sig[:, keep], FS, [LEADS[i] for i in keep], fill_missing='zero')
    assert np.isfinite(d.mean).all()


def test_long_records_average_windows_short_ones_need_pad(enc):
    sig = band_limited(25, FS, seed=2)
    emb = enc.embed(sig, FS, list(LEADS))
    assert emb.num_windows.tolist() == [4]  # starts 0, 5, 10 s and one aligned to the end
    x = enc.preprocess(sig, FS, list(LEADS))
    starts = [0, 500, 1000, 1500]
    wins = np.stack([x[s:s + 1000] for s in starts])
    out = np.asarray(enc.tokens(wins))
    np.testing.assert_allclose(emb.mean[0], out.mean((0, 1)), atol=1e-5)
    short = band_limited(6, FS, seed=3)
    with pytest.raises(encoder_lib.RecordTooShortError, match='shorter than'):
        enc.embed(short, FS, list(LEADS))
    padded = enc.embed(short, FS, list(LEADS), pad=True)
    xs = enc.preprocess(short, FS, list(LEADS))
    full = np.zeros((1, 1000, 12), np.float32)
    full[0, :600] = xs
    out = np.asarray(enc.tokens(full))
    np.testing.assert_allclose(padded.mean[0], out[0, :120].mean(0), atol=1e-5)
    # A shorter window embeds short records without padding.
    two = enc.embed(short, FS, list(LEADS), window_seconds=2.5, stride_seconds=1.25)
    assert two.num_windows.tolist() == [(600 - 250) // 125 + 1 + 1]  # + the end-aligned one


def test_record_normalisation_and_no_stats(enc):
    sig = band_limited(10, FS, seed=4) * 3 + 1
    x = enc.preprocess(sig, FS, list(LEADS), normalize='record')
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-4)
    bare = encoder_lib.Encoder(enc.config, enc.params, lead_stats=None)
    with pytest.raises(ValueError, match='normalize="record"'):
        bare.embed(sig, FS, list(LEADS))


def write_inputs(directory, fs_list=(100, 250, 257, 360, 400, 1000)):
    """The same 10 s ECG in every format and rate; returns {name: path}."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for fs in fs_list:
        sig = band_limited(10, fs)
        wfdb.wrsamp(f'w{fs}', fs=fs, units=['mV'] * 12, sig_name=list(LEADS),
                    p_signal=sig.astype(np.float64), fmt=['16'] * 12,
                    adc_gain=[10000.0] * 12, baseline=[0] * 12, write_dir=str(directory))
        paths[f'w{fs}'] = str(directory / f'w{fs}.hea')
    sig = band_limited(10, 500)
    perm = [3, 0, 1, 2, 5, 4, 11, 10, 9, 8, 7, 6]
    with open(directory / 'c.csv', 'w') as f:
        f.write(','.join(LEADS[i].upper() for i in perm) + '\n')
        for row in sig[:, perm]:
            f.write(','.join(f'{v:.6f}' for v in row) + '\n')
    paths['c'] = str(directory / 'c.csv')
    np.save(directory / 'n.npy', sig)
    paths['n'] = str(directory / 'n.npy')
    # PhysioNet/CinC 2021 style: MATLAB v4 `val` (int16, leads x samples, 1000/mV) + header.
    val = np.round(sig * 1000).astype(np.int16).T
    scipy.io.savemat(directory / 'm.mat', {'val': val}, format='4')
    lines = [f'm.mat 12 500 {sig.shape[0]}'] + [
        f'm.mat 16+24 1000/mV 16 0 {val[i, 0]} 0 0 {LEADS[i].upper()}' for i in range(12)]
    (directory / 'm.hea').write_text('\n'.join(lines) + '\n')
    paths['m'] = str(directory / 'm.hea')
    np.savez(directory / 'z.npz', signal=sig.T, fs=500.0, leads=np.asarray(LEADS))
    paths['z'] = str(directory / 'z.npz')
    return paths


def test_cli_embed_all_formats(tmp_path, encoder_dir, enc, capsys):
    paths = write_inputs(tmp_path / 'in')
    out = tmp_path / 'emb.npz'
    code, stdout, stderr = run_cli(['embed', tmp_path / 'in', '--checkpoint', encoder_dir,
                                    '--out', out, '--fs', 500, '--leads', ','.join(LEADS),
                                    '--quiet'], capsys)
    assert code == 0, stderr
    assert 'records/s' in stdout and 'embedded 10 records' in stdout
    z = np.load(out)
    names = list(z['names'])
    assert sorted(names) == sorted(paths)
    assert z['mean'].shape == (10, 32) and z['register'].shape == (10, 32)
    assert z['num_windows'].tolist() == [1] * 10 and len(z['failed']) == 0
    info = json.loads(str(z['encoder']))
    assert info['model']['variant'] == 'tiny'
    # Every format and rate gives (nearly) the same embedding of the same ECG.
    ref = enc.embed(band_limited(10, FS), FS, list(LEADS)).mean[0]
    for i, name in enumerate(names):
        np.testing.assert_allclose(z['mean'][i], ref, atol=3e-3, err_msg=name)


def test_cli_embed_reports_bad_files_and_keeps_going(tmp_path, encoder_dir, capsys):
    paths = write_inputs(tmp_path / 'in', fs_list=(100, 250))
    dat = tmp_path / 'in' / 'w250.dat'
    dat.write_bytes(dat.read_bytes()[:3000])  # truncated
    (tmp_path / 'in' / 'junk.npy').write_bytes(b'not numpy at all')
    keep = [i for i in range(12) if LEADS[i] != 'V3']
    np.savez(tmp_path / 'in' / 'noV3.npz', signal=band_limited(10, 100)[:, keep], fs=100.0,
             leads=np.asarray([LEADS[i] for i in keep]))
    np.savez(tmp_path / 'in' / 'short.npz', signal=band_limited(4, 100), fs=100.0,
             leads=np.asarray(LEADS))
    out = tmp_path / 'emb.npz'
    code, stdout, stderr = run_cli(['embed', tmp_path / 'in', '--checkpoint', encoder_dir,
                                    '--out', out, '--fs', 500, '--quiet'], capsys)
    assert code == 1
    assert 'w250.dat' in stderr and 'truncated' in stderr
    assert 'junk.npy' in stderr
    assert "missing leads ['V3']" in stderr and '--fill-missing=zero' in stderr
    assert 'short.npz' in stderr and '--pad' in stderr
    z = np.load(out)
    assert sorted(z['names']) == sorted(set(paths) - {'w250'})
    assert len(z['failed']) == 4
    # With --fill-missing=zero and --pad those two go through (with a warning).
    os.remove(dat)
    os.remove(tmp_path / 'in' / 'w250.hea')
    os.remove(tmp_path / 'in' / 'junk.npy')
    code, stdout, stderr = run_cli(['embed', tmp_path / 'in', '--checkpoint', encoder_dir,
                                    '--out', out, '--fs', 500, '--fill-missing=zero', '--pad',
                                    '--quiet'], capsys)
    assert code == 0, stderr
    assert "warning" in stderr and 'V3' in stderr
    assert len(np.load(out)['names']) == len(paths) - 1 + 2


def test_cli_usage_errors(tmp_path, encoder_dir, capsys):
    code, _, stderr = run_cli(['embed', tmp_path / 'nothing-here', '--checkpoint', encoder_dir,
                               '--out', tmp_path / 'e.npz', '--quiet'], capsys)
    assert code == 1 and 'nothing-here' in stderr
    code, _, stderr = run_cli(['embed', tmp_path, '--checkpoint', tmp_path / 'nope',
                               '--out', tmp_path / 'e.npz'], capsys)
    assert code == 2 and 'not an encoder directory' in stderr


def test_console_script_help():
    exe = os.path.join(os.path.dirname(sys.executable), 'jepa-ecg')
    cmd = [exe] if os.path.exists(exe) else [sys.executable, '-m', 'jepa_ecg.cli']
    out = subprocess.run(cmd + ['--help'], check=True, capture_output=True, text=True).stdout
    for sub in ('embed', 'predict', 'import-torch', 'export'):
        assert sub in out


def test_cli_embed_ptbxl_test_fold(ptbxl_dir, tmp_path, encoder_dir, capsys):
    import csv
    with open(ptbxl_dir / 'ptbxl_database.csv') as f:
        rows = [r for r in csv.DictReader(f) if r['strat_fold'] == '10']
    files = [str(ptbxl_dir / (r['filename_lr'] + '.hea')) for r in rows]
    files = [p for p in files if os.path.exists(p)][:24]
    assert files, 'no fold-10 records in the PTB-XL subset'
    out = tmp_path / 'ptbxl.npz'
    code, stdout, stderr = run_cli(['embed', *files, '--checkpoint', encoder_dir, '--out', out],
                                   capsys)
    assert code == 0, stderr
    assert f'embedded {len(files)} records' in stdout and 'records/s' in stdout
    z = np.load(out)
    assert z['mean'].shape == (len(files), 32) and np.isfinite(z['mean']).all()
    assert z['mean'].std(0).mean() > 0  # different records, different embeddings


@pytest.mark.parametrize('command, option, value, allowed', [
    ('embed', '--stride-seconds', '0', '> 0 s'),
    ('embed', '--window-seconds', '0', '> 0 s'),
    ('embed', '--window-seconds', '-2.5', '> 0 s'),
    ('embed', '--window-seconds', '0.01', 'shorter than one patch'),  # checked on the model
    ('embed', '--batch-size', '0', '>= 1'),
    ('predict', '--batch-size', '0', '>= 1'),
    ('embed', '--workers', '0', '>= 1'),
    ('embed', '--fs', '10', 'between 50 and 20000 Hz'),
    ('predict', '--fs', '50000', 'between 50 and 20000 Hz'),
    ('embed', '--fs', 'fast', 'between 50 and 20000 Hz'),
])
def test_cli_numbers_out_of_range_are_usage_errors(tmp_path, encoder_dir, capsys, command,
                                                  option, value, allowed):
    write_inputs(tmp_path / 'in', fs_list=(100,))
    out = tmp_path / 'out.csv'
    code, stdout, stderr = run_cli([command, tmp_path / 'in', '--checkpoint', encoder_dir,
                                    '--out', out, f'{option}={value}', '--quiet'], capsys)
    assert code == 2
    assert option in stderr and allowed in stderr, stderr
    assert 'Traceback' not in stderr and stdout == '' and not out.exists()


def test_cli_checks_out_before_any_work(tmp_path, encoder_dir, capsys):
    record = write_inputs(tmp_path / 'in', fs_list=(100,))['w100']
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')
    args = ['embed', record, '--checkpoint', encoder_dir, '--quiet', '--out']
    code, stdout, stderr = run_cli(args + [blocker / 'emb.npz'], capsys)
    assert code == 2 and '--out' in stderr and 'nothing was processed' in stderr
    assert 'embedded' not in stdout and 'Traceback' not in stderr
    code, stdout, stderr = run_cli(args + [tmp_path], capsys)
    assert code == 2 and 'is a directory' in stderr and 'embedded' not in stdout
    # A new folder is created; the file is written under exactly the name given.
    code, stdout, stderr = run_cli(args + [tmp_path / 'new' / 'emb.npz'], capsys)
    assert code == 0, stderr
    assert os.listdir(tmp_path / 'new') == ['emb.npz']
    assert len(np.load(tmp_path / 'new' / 'emb.npz')['names']) == 1


def test_cli_misread_arrays_and_text_csvs_fail_once_per_file(tmp_path, encoder_dir, capsys):
    paths = write_inputs(tmp_path / 'in', fs_list=(100,))
    sig = band_limited(10, 500)
    np.save(tmp_path / 'in' / 'cube.npy', sig[:, :, None])  # (5000, 12, 1)
    with open(tmp_path / 'in' / 'words.csv', 'w') as f:
        f.write(','.join(LEADS) + '\n')
        for k in range(50):
            f.write(','.join(f'beat{k}' for _ in LEADS) + '\n')
    with open(tmp_path / 'in' / 'commas.csv', 'w') as f:  # decimal commas, ';'-separated
        f.write(';'.join(LEADS) + '\n')
        for row in sig[:100]:
            f.write(';'.join(f'{v:.4f}'.replace('.', ',') for v in row) + '\n')
    out = tmp_path / 'emb.npz'
    code, _, stderr = run_cli(['embed', tmp_path / 'in', '--checkpoint', encoder_dir,
                               '--out', out, '--fs', 500, '--leads', ','.join(LEADS),
                               '--quiet'], capsys)
    assert code == 1
    assert 'cube.npy' in stderr and '(5000, 12, 1)' in stderr
    assert 'words.csv' in stderr and 'not a number' in stderr and "'beat0'" in stderr
    assert 'commas.csv' in stderr and 'decimal commas' in stderr
    z = np.load(out)
    assert len(z['failed']) == 3  # one error per file, not one per misread record
    assert sorted(z['names']) == sorted(paths)
    # Even one text cell is an error naming its row and column.
    with open(tmp_path / 'few.csv', 'w') as f:
        f.write(','.join(LEADS) + '\n')
        for k, row in enumerate(sig):
            f.write(','.join('oops' if k == 7 and i == 2 else f'{v:.5f}'
                             for i, v in enumerate(row)) + '\n')
    from jepa_ecg.ecg import files as files_lib
    with pytest.raises(files_lib.RecordReadError, match=r"few.csv: row 9, column 'III': 'oops'"):
        files_lib.read_record(str(tmp_path / 'few.csv'), fs=500)
