"""Reading user ECG files (jepa_ecg.ecg.files) from format-exact miniature files."""

import os

import numpy as np
import pytest
import scipy.io
import wfdb

from jepa_ecg.ecg import files as io
from jepa_ecg.ecg.leads import LEADS

OFFICIAL = ['I', 'II', 'III', 'AVR', 'AVL', 'AVF', 'V1', 'V2', 'V3', 'V4', 'V5', 'V6']


def ecg_like(n=1000, fs=100.0, leads=12, seed=0):
    """Smooth (T, leads) signal in mV, different per lead, exactly representable at 1 uV."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fs
    sig = np.stack([np.sin(2 * np.pi * (1 + 0.1 * i) * t + rng.uniform(0, 6))
                    * (0.5 + 0.1 * i) for i in range(leads)], axis=1)
    return np.round(sig, 3).astype(np.float32)


def write_wfdb_dat(directory, name, sig, fs, names):
    wfdb.wrsamp(name, fs=fs, units=['mV'] * sig.shape[1], sig_name=list(names),
                p_signal=sig.astype(np.float64), fmt=['16'] * sig.shape[1],
                adc_gain=[1000.0] * sig.shape[1], baseline=[0] * sig.shape[1],
                write_dir=str(directory))
    return os.path.join(str(directory), name + '.hea')


def write_cinc_mat(directory, name, sig, fs, names, *, record_line_name=None):
    """PhysioNet/CinC 2021 style: MATLAB v4 `val` (leads x samples, int16) + header."""
    val = np.round(sig * 1000).astype(np.int16).T
    scipy.io.savemat(os.path.join(str(directory), name + '.mat'), {'val': val}, format='4')
    lines = [f'{record_line_name or name} {len(names)} {fs:g} {sig.shape[0]}']
    for i, lead in enumerate(names):
        lines.append(f'{name}.mat 16+24 1000/mV 16 0 {val[i, 0]} 0 0 {lead}')
    lines += ['#Age: 54', '#Sex: Male', '#Dx: 164889003']
    path = os.path.join(str(directory), name + '.hea')
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return path


def test_wfdb_dat_roundtrip(tmp_path):
    sig = ecg_like(750, 250.0)
    path = write_wfdb_dat(tmp_path, 'rec1', sig, 250, OFFICIAL)
    rec = io.read_record(path)
    assert rec.fs == 250.0 and rec.leads == OFFICIAL and rec.name == 'rec1'
    np.testing.assert_allclose(rec.signal, sig, atol=1e-6)
    # The same record named by its .dat or by its WFDB record name.
    assert io.find_records([str(tmp_path / 'rec1.dat')]) == [path]
    assert io.find_records([str(tmp_path / 'rec1')]) == [path]


def test_wfdb_mat_cinc_style_and_quirky_record_name(tmp_path):
    sig = ecg_like(500, 500.0, seed=1)
    names = ['I', 'II', 'III', 'aVR', 'aVF', 'aVL', 'V1', 'V2', 'V3', 'V4', 'V5', 'V6']
    path = write_cinc_mat(tmp_path, 'A0001', sig, 500, names, record_line_name='A0001.mat')
    rec = io.read_record(path)
    assert rec.fs == 500.0 and rec.leads == names
    np.testing.assert_allclose(rec.signal, sig, atol=1e-6)
    assert io.find_records([str(tmp_path / 'A0001.mat')]) == [path]


def test_real_ptbxl_record_matches_wfdb(ptbxl_dir):
    header = sorted((ptbxl_dir / 'records100').glob('*/*.hea'))[0]
    rec = io.read_record(str(header))
    ref = wfdb.rdrecord(str(header.with_suffix('')))
    assert rec.fs == 100.0 and rec.signal.shape == (1000, 12)
    assert [n.upper() for n in rec.leads] == [n.upper() for n in LEADS]
    np.testing.assert_allclose(rec.signal, ref.p_signal, atol=1e-6)


def test_csv_any_order_case_and_time_column(tmp_path):
    sig = ecg_like(400, 200.0, seed=2)
    order = [5, 0, 11, 3, 1, 2, 4, 6, 7, 8, 9, 10]
    names = [LEADS[i].lower() for i in order]
    t = np.arange(400) / 200.0
    path = tmp_path / 'ecg.csv'
    with open(path, 'w') as f:
        f.write('time,' + ','.join(names) + '\n')
        for k in range(400):
            f.write(f'{t[k]:.4f},' + ','.join(f'{v:.3f}' for v in sig[k, order]) + '\n')
    rec = io.read_record(str(path))
    assert rec.fs == 200.0  # from the time column
    assert rec.leads == names
    np.testing.assert_allclose(rec.signal, sig[:, order], atol=1e-6)
    # Semicolons, no time column: fs must be passed.
    path2 = tmp_path / 'semi.csv'
    with open(path2, 'w') as f:
        f.write(';'.join(LEADS) + '\n')
        for k in range(10):
            f.write(';'.join(f'{v:.3f}' for v in sig[k]) + '\n')
    with pytest.raises(io.RecordReadError, match='sampling rate'):
        io.read_record(str(path2))
    assert io.read_record(str(path2), fs=500).signal.shape == (10, 12)


def test_npy_orientations_and_batches(tmp_path):
    sig = ecg_like(300, 100.0, seed=3)
    np.save(tmp_path / 'tl.npy', sig)
    np.save(tmp_path / 'lt.npy', sig.T)
    np.save(tmp_path / 'ntl.npy', np.stack([sig, 2 * sig]))
    leads = list(LEADS)
    a = io.read_record(str(tmp_path / 'tl.npy'), fs=100, leads=leads)
    b = io.read_record(str(tmp_path / 'lt.npy'), fs=100, leads=leads)
    np.testing.assert_array_equal(a.signal, sig)
    np.testing.assert_array_equal(b.signal, sig)
    many = io.read_records(str(tmp_path / 'ntl.npy'), fs=100, leads=leads)
    assert [r.name for r in many] == ['ntl[0]', 'ntl[1]']
    np.testing.assert_array_equal(many[1].signal, 2 * sig)
    with pytest.raises(io.RecordReadError, match='sampling rate'):
        io.read_record(str(tmp_path / 'tl.npy'), leads=leads)
    # uV values scaled to mV.
    np.save(tmp_path / 'uv.npy', sig * 1000)
    c = io.read_record(str(tmp_path / 'uv.npy'), fs=100, leads=leads, units='uV')
    np.testing.assert_allclose(c.signal, sig, atol=1e-5)


def test_npz_with_metadata_inside(tmp_path):
    sig = ecg_like(360, 360.0, seed=4)[:, :8]
    names = ['I', 'II', 'V1', 'V2', 'V3', 'V4', 'V5', 'V6']
    np.savez(tmp_path / 'r.npz', signal=sig, fs=np.float64(360), leads=np.asarray(names))
    rec = io.read_record(str(tmp_path / 'r.npz'), fs=100, leads=list(LEADS))
    assert rec.fs == 360.0 and rec.leads == names  # the file's own metadata wins
    np.testing.assert_array_equal(rec.signal, sig)
    np.savez(tmp_path / 'anon.npz', whatever=sig)
    rec = io.read_record(str(tmp_path / 'anon.npz'), fs=100, leads=names)
    assert rec.signal.shape == (360, 8)


def test_folders_are_searched_recursively(tmp_path):
    sig = ecg_like(200, 100.0)
    (tmp_path / 'a' / 'b').mkdir(parents=True)
    write_wfdb_dat(tmp_path / 'a' / 'b', 'r1', sig, 100, LEADS)
    np.save(tmp_path / 'a' / 'x.npy', sig)
    (tmp_path / 'a' / 'notes.txt').write_text('not an ECG')
    found = io.find_records([str(tmp_path)])
    assert [os.path.relpath(p, tmp_path) for p in found] == ['a/x.npy', 'a/b/r1.hea']


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    sig = ecg_like(500, 100.0)
    hea = write_wfdb_dat(tmp_path, 'trunc', sig, 100, LEADS)
    dat = tmp_path / 'trunc.dat'
    dat.write_bytes(dat.read_bytes()[:5000])  # cut mid-record
    with pytest.raises(io.RecordReadError, match='trunc') as e:
        io.read_record(hea)
    assert 'truncated' in str(e.value)

    odd = write_wfdb_dat(tmp_path, 'odd', sig, 100, LEADS)
    d = tmp_path / 'odd.dat'
    d.write_bytes(d.read_bytes()[:-1])  # not a whole number of samples
    with pytest.raises(io.RecordReadError, match='odd'):
        io.read_record(odd)

    missing = write_wfdb_dat(tmp_path, 'nodat', sig, 100, LEADS)
    os.remove(tmp_path / 'nodat.dat')
    with pytest.raises(io.RecordReadError, match='nodat.dat not found'):
        io.read_record(missing)

    (tmp_path / 'bad.hea').write_text('garbage header\n')
    with pytest.raises(io.RecordReadError, match='bad.hea'):
        io.read_record(str(tmp_path / 'bad.hea'))

    (tmp_path / 'bad.npy').write_bytes(b'\x93NUMPY\x01\x00garbage')
    with pytest.raises(io.RecordReadError, match='bad.npy'):
        io.read_record(str(tmp_path / 'bad.npy'), fs=100, leads=list(LEADS))

    np.save(tmp_path / 'cut.npy', sig)
    raw = (tmp_path / 'cut.npy').read_bytes()
    (tmp_path / 'cut.npy').write_bytes(raw[:len(raw) // 2])
    with pytest.raises(io.RecordReadError, match='cut.npy'):
        io.read_record(str(tmp_path / 'cut.npy'), fs=100, leads=list(LEADS))

    (tmp_path / 'bad.npz').write_bytes(b'PK\x03\x04 not really a zip')
    with pytest.raises(io.RecordReadError, match='bad.npz'):
        io.read_record(str(tmp_path / 'bad.npz'), fs=100, leads=list(LEADS))

    (tmp_path / 'bad.csv').write_text('I,II,III\n1,2,3\n4,5\n')
    with pytest.raises(io.RecordReadError, match='bad.csv'):
        io.read_record(str(tmp_path / 'bad.csv'), fs=100)

    (tmp_path / 'nohead.csv').write_text('1,2,3\n4,5,6\n')
    with pytest.raises(io.RecordReadError, match='name the leads'):
        io.read_record(str(tmp_path / 'nohead.csv'), fs=100)

    scipy.io.savemat(tmp_path / 'lonely.mat', {'val': np.zeros((12, 10), np.int16)}, format='4')
    with pytest.raises(io.RecordReadError, match='header'):
        io.read_record(str(tmp_path / 'lonely.mat'))

    with pytest.raises(io.RecordReadError, match='unsupported'):
        io.read_record(str(tmp_path / 'notes.txt') if (tmp_path / 'notes.txt').write_text('x')
                       else '')

    mat_hea = write_cinc_mat(tmp_path, 'B1', sig, 100, LEADS)
    m = tmp_path / 'B1.mat'
    m.write_bytes(m.read_bytes()[:200])
    with pytest.raises(io.RecordReadError, match='B1'):
        io.read_record(mat_hea)


def test_shared_wfdb_parser_quirks_and_both_translations(tmp_path):
    """One parser (jepa_ecg.ecg.wfdb_io) serves the CLI reader and the TFDS builders."""
    from jepa_ecg.ecg import wfdb_io  # pylint: disable=g-import-not-at-top
    from tfds_builders import reading  # pylint: disable=g-import-not-at-top
    from tfds_builders import skips  # pylint: disable=g-import-not-at-top

    text = ('# leading comment\n'
            'A0001.mat\t3  500/1000 4\n'
            'A0001.mat 16+24 1000(5)/uV 16 7 0 0 0 i\n'
            'A0001.mat 16+24 0 16 7 0 0 0 Lead aVR\n'
            'A0001.mat 16x2:1+8\n'
            '#Age: 54\n')
    h = wfdb_io.parse_header(text)
    assert h.record_name == 'A0001' and h.fs == 500.0 and h.num_samples == 4
    assert h.formats == ('16', '16', '16') and h.byte_offsets == (24, 24, 8)
    assert h.samples_per_frame == (1, 1, 2) and h.skews == (0, 0, 1)
    # 0 gain means 200; no baseline -> ADC zero; no fields -> 200, 0, mV.
    assert h.gains == (1000.0, 200.0, 200.0) and h.baselines == (5.0, 7.0, 0.0)
    assert h.units == ('uV', 'mV', 'mV') and h.lead_names == ('i', 'Lead aVR', '')
    assert h.comments == ('# leading comment', '#Age: 54')
    assert reading.parse_wfdb_header(text) == h
    assert wfdb_io.parse_header('r 1 500(0)\nr.dat 16 200/mV\n').fs == 500.0

    bad = 'seg/1 2 500 100\nx.dat 16\nx.dat 16\n'
    with pytest.raises(wfdb_io.WfdbHeaderError, match='multi-segment'):
        wfdb_io.parse_header(bad)
    with pytest.raises(skips.SkipRecord) as skip:
        reading.parse_wfdb_header(bad)
    assert skip.value.reason == skips.BAD_HEADER and 'multi-segment' in skip.value.detail
    (tmp_path / 'seg.hea').write_text(bad)
    with pytest.raises(io.RecordReadError, match='multi-segment') as err:
        io.read_record(str(tmp_path / 'seg.hea'))
    assert err.value.path == str(tmp_path / 'seg.hea')

    # A byte offset in the format field is honoured by the fast reader.
    sig = ecg_like(50, 100.0, leads=2)
    digital = np.round(sig * 1000).astype('<i2')
    (tmp_path / 'off.dat').write_bytes(b'\x00' * 6 + digital.tobytes())
    (tmp_path / 'off.hea').write_text('off 2 100 50\n'
                                      'off.dat 16+6 1000/mV 16 0 0 0 0 ii\n'
                                      'off.dat 16+6 1000/mV 16 0 0 0 0 V1\n')
    rec = io.read_record(str(tmp_path / 'off.hea'))
    assert rec.leads == ['ii', 'V1']
    np.testing.assert_allclose(rec.signal, sig, atol=1e-6)
