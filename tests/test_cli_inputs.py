"""What `jepa-ecg` says about its inputs: CSV missing and text cells, folders, usage errors."""

import jax
import numpy as np
import pytest

from jepa_ecg import cli
from jepa_ecg.ecg import files as files_lib
from jepa_ecg.ecg.leads import LEADS
from jepa_ecg.inference import encoder as encoder_lib
from jepa_ecg.models import build_encoder, model_config

FS = 100.0


@pytest.fixture(scope='module')
def encoder_dir(tmp_path_factory):
    cfg = model_config('tiny', fs=FS)
    x = np.zeros((1, cfg.window_samples, 12), np.float32)
    params = build_encoder(cfg).init(jax.random.PRNGKey(0), x)['params']
    path = str(tmp_path_factory.mktemp('enc') / 'tiny')
    encoder_lib.save_encoder(path, cfg, params,
                             lead_stats={'mean': [0.0] * 12, 'std': [0.5] * 12, 'source': 't'})
    return path


def run_cli(args, capsys):
    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def write_csv(path, cells):
    """cells: {lead: list of cell strings}; the other leads get numbers."""
    rows = len(next(iter(cells.values())))
    t = np.arange(rows) / FS
    with open(path, 'w') as f:
        f.write('time,' + ','.join(LEADS) + '\n')
        for k in range(rows):
            values = [cells[lead][k] if lead in cells else f'{np.sin(t[k] * (i + 1)):.5f}'
                      for i, lead in enumerate(LEADS)]
            f.write(f'{t[k]:.3f},' + ','.join(values) + '\n')
    return str(path)


def number_cells(rows, seed=0):
    return [f'{v:.5f}' for v in np.random.default_rng(seed).normal(0, 0.3, rows)]


def test_csv_missing_cells_are_reported_and_a_mostly_missing_lead_is_missing(tmp_path,
                                                                            encoder_dir, capsys):
    rows = 1200  # 12 s at 100 Hz
    lead_ii = ['n/a' if k % 10 else '0.1' for k in range(rows)]  # 1080 of 1200 missing
    lead_v1 = number_cells(rows)
    markers = ['', '', '', '', '', 'NA', 'NA', 'NA', '-', '-', 'nan']
    for k, marker in enumerate(markers):
        lead_v1[100 + k] = marker
    lead_iii = ['' if k % 2 else '0.2' for k in range(rows)]  # exactly half: still a lead
    (tmp_path / 'in').mkdir()
    path = write_csv(tmp_path / 'in' / 'gaps.csv', {'II': lead_ii, 'V1': lead_v1,
                                                   'III': lead_iii})
    with pytest.warns(files_lib.MissingSamplesWarning) as caught:
        rec = files_lib.read_record(path)
    messages = sorted(str(w.message) for w in caught)
    assert messages == sorted([
        f'{path}: lead II has 1080 of 1200 samples missing (more than half): read as a '
        f'missing lead',
        f'{path}: lead III has 600 missing samples (of 1200), interpolated',
        f'{path}: lead V1 has 11 missing samples (of 1200), interpolated'])
    assert 'II' not in rec.leads and len(rec.leads) == 11 and rec.fs == FS
    assert np.isnan(rec.signal[:, rec.leads.index('V1')]).sum() == 11
    # The missing lead is what --fill-missing decides about.
    args = ['embed', tmp_path / 'in', '--checkpoint', encoder_dir, '--quiet', '--out',
            tmp_path / 'e.npz']
    code, _, stderr = run_cli(args, capsys)
    assert code == 1 and "missing leads ['II']" in stderr and '--fill-missing=zero' in stderr
    assert 'lead II has 1080 of 1200 samples missing' in stderr and 'gaps.csv' in stderr
    code, _, stderr = run_cli(args + ['--fill-missing=zero'], capsys)
    assert code == 0, stderr
    assert 'lead V1 has 11 missing samples' in stderr
    assert "missing leads ['II'] filled with zeros" in stderr
    assert np.isfinite(np.load(tmp_path / 'e.npz')['mean']).all()


def test_csv_text_cell_is_an_error_naming_row_and_column(tmp_path, encoder_dir, capsys):
    cells = number_cells(1200)
    cells[41] = 'abc'
    (tmp_path / 'in').mkdir()
    write_csv(tmp_path / 'in' / 'typo.csv', {'V4': cells})
    code, stdout, stderr = run_cli(['embed', tmp_path / 'in', '--checkpoint', encoder_dir,
                                    '--quiet', '--out', tmp_path / 'e.npz'], capsys)
    assert code == 1 and 'Traceback' not in stderr
    assert "typo.csv: row 43, column 'V4': 'abc' is not a number" in stderr
    assert not (tmp_path / 'e.npz').exists()  # nothing went through: no output


def test_folder_without_ecg_files_lists_what_it_skipped(tmp_path, encoder_dir, capsys):
    folder = tmp_path / 'in'
    (folder / 'sub').mkdir(parents=True)
    for name in ('notes.txt', 'readme.txt', 'meta.json', 'rec.dat', '.DS_Store',
                 'sub/A0001.mat', 'sub/B.txt'):
        (folder / name).write_text('x')
    code, stdout, stderr = run_cli(['embed', folder, '--checkpoint', encoder_dir, '--quiet',
                                    '--out', tmp_path / 'e.npz'], capsys)
    assert code == 1 and stdout == '' and 'Traceback' not in stderr
    lines = stderr.strip().splitlines()
    assert lines[0] == f'jepa-ecg: error: no ECG files found in {folder}; skipped 7:'
    assert lines[1].strip() == ('3 .txt files (not an ECG format) (e.g. notes.txt, readme.txt, '
                                'B.txt)')
    assert {'1 .dat signal files without a .hea header (e.g. rec.dat)',
            '1 .mat signal files without a .hea header (e.g. A0001.mat)',
            '1 .json files (not an ECG format) (e.g. meta.json)',
            '1 hidden files (e.g. .DS_Store)'} == {line.strip() for line in lines[2:]}


def test_many_failures_are_counted_per_reason(tmp_path, encoder_dir, capsys):
    (tmp_path / 'in').mkdir()
    for i in range(12):
        (tmp_path / 'in' / f'junk{i:02d}.npy').write_bytes(b'not numpy at all')
    code, _, stderr = run_cli(['embed', tmp_path / 'in', '--checkpoint', encoder_dir, '--quiet',
                               '--out', tmp_path / 'e.npz'], capsys)
    assert code == 1
    summary = stderr.split('12 file(s) failed:')[1].strip().splitlines()
    assert len(summary) == 1 and summary[0].split(' x ')[0].endswith('12'), stderr
    assert 'junk00.npy' in summary[0] and 'corrupt or truncated .npy' in summary[0]


@pytest.mark.parametrize('argv, says', [
    (['embed'], 'the following arguments are required: FILES, --checkpoint, --out'),
    (['embed', 'a.csv', '--checkpoint', 'c', '--out', 'o.npz', '--bogus'],
     'unrecognized arguments: --bogus'),
    (['frobnicate'], "invalid choice: 'frobnicate'"),
    (['embed', 'a.csv', '--checkpoint', 'c', '--out', 'o.npz', '--normalize', 'zscore'],
     "argument --normalize: invalid choice: 'zscore'"),
])
def test_usage_errors_are_one_line_and_a_hint(capsys, argv, says):
    code, stdout, stderr = run_cli(argv, capsys)
    assert code == 2 and stdout == ''
    lines = stderr.strip().splitlines()
    assert len(lines) == 2 and says in lines[0] and lines[0].startswith('jepa-ecg')
    assert lines[1].startswith('hint: run `jepa-ecg') and '--help' in lines[1]
    assert 'usage:' not in stderr
