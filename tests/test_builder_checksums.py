"""WFDB checksums: verified by the builders, a mismatch is a counted skip."""

import dataclasses
import json
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
import wfdb

from jepa_ecg.ecg import files
from jepa_ecg.ecg import wfdb_io
from tfds_builders import reading
from tfds_builders import skips
from tfds_builders.cinc2021 import make_dummy_data as cinc_dummy
from tfds_builders.ptb_xl import make_dummy_data as ptbxl_dummy


def _corrupt_checksum(header: pathlib.Path, signal: int) -> None:
    """Adds 1 to the checksum field of the header's `signal`-th signal line."""
    lines = header.read_text().splitlines()
    body = [i for i, line in enumerate(lines) if line and not line.startswith('#')]
    row = body[1 + signal]
    parts = lines[row].split()
    parts[6] = str(int(parts[6]) + 1)
    lines[row] = ' '.join(parts)
    header.write_text('\n'.join(lines) + '\n')


def _write_format16(tmp_path, name='r', num_samples=200):
    signal = ptbxl_dummy.ecg_like(num_samples, 100, seed=3)
    ptbxl_dummy.write_wfdb(tmp_path / name, signal, 100,
                           ptbxl_dummy.PTBXL_LEAD_NAMES)
    return tmp_path / f'{name}.hea', signal


def test_header_checksums_are_parsed_signed_or_unsigned(tmp_path):
    header_path, signal = _write_format16(tmp_path)
    header = wfdb_io.read_header(header_path)
    digital = np.round(signal * 1000).astype(np.int64)
    assert header.checksums == tuple(int(s) for s in digital.sum(0) % 65536)
    got, _ = wfdb_io.read_signal(header, header_path, checksums=True)
    np.testing.assert_allclose(got, signal, atol=1e-6)
    # CinC headers write checksums as signed 16-bit numbers: same check.
    signed = tuple(c - 65536 if c > 32767 else c for c in header.checksums)
    wfdb_io.verify_checksums(dataclasses.replace(header, checksums=signed),
                             digital, header_path)
    # Without checksums in the header there is nothing to verify.
    text = '\n'.join(' '.join(line.split()[:5]) if i else line
                     for i, line in enumerate(header_path.read_text().splitlines()))
    bare = wfdb_io.parse_header(text)
    assert set(bare.checksums) == {None}
    wfdb_io.verify_checksums(bare, digital + 1, header_path)


def test_mismatch_raises_and_counts_as_checksum_mismatch(tmp_path):
    header_path, signal = _write_format16(tmp_path)
    _corrupt_checksum(header_path, signal=6)  # V1
    header = wfdb_io.read_header(header_path)
    with pytest.raises(wfdb_io.WfdbChecksumError, match='V1'):
        wfdb_io.read_signal(header, header_path, checksums=True)
    # The CLI's reader of users' files keeps reading such records.
    np.testing.assert_allclose(files.read_record(str(header_path)).signal,
                               signal, atol=1e-6)
    with pytest.raises(skips.SkipRecord) as skip:
        reading.read_wfdb(header_path)
    assert skip.value.reason == skips.CHECKSUM_MISMATCH
    result = reading.read_wfdb_task(reading.WfdbTask('r', str(header_path)))
    assert result.reason == skips.CHECKSUM_MISMATCH and result.signal is None


def test_checksums_of_records_read_by_the_wfdb_package(tmp_path):
    # Format 212 is not read by the fast path but by `wfdb.rdrecord`.
    signal = ptbxl_dummy.ecg_like(200, 100, seed=4, num_leads=2)
    wfdb.wrsamp('r212', fs=100, units=['mV'] * 2, sig_name=['I', 'II'],
                p_signal=signal, fmt=['212'] * 2, adc_gain=[1000.0] * 2,
                baseline=[0] * 2, write_dir=str(tmp_path))
    header_path = tmp_path / 'r212.hea'
    header = wfdb_io.read_header(header_path)
    assert header.formats == ('212', '212') and None not in header.checksums
    got, names = wfdb_io.read_signal(header, header_path, checksums=True)
    assert names == ['I', 'II']
    np.testing.assert_allclose(got, signal, atol=1e-6)
    _corrupt_checksum(header_path, signal=1)
    with pytest.raises(wfdb_io.WfdbChecksumError, match='II'):
        wfdb_io.read_signal(wfdb_io.read_header(header_path), header_path,
                            checksums=True)


def test_ptb_xl_build_counts_a_checksum_mismatch(tmp_path):
    root = tmp_path / 'src'
    shutil.copytree(ptbxl_dummy.DUMMY_DIR, root,
                    ignore=shutil.ignore_patterns('records500'))
    _corrupt_checksum(root / 'records100' / '00000' / '00004_lr.hea', signal=0)
    builder = tfds.builder('ptb_xl/records100', data_dir=str(tmp_path / 'tfds'),
                           processes=1)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(root)))
    report = json.loads((pathlib.Path(builder.data_dir) /
                         skips.BUILD_REPORT_FILENAME).read_text())
    assert report['fold9']['skipped'] == {skips.CHECKSUM_MISMATCH: 1}
    assert report['fold9']['skip_samples'][skips.CHECKSUM_MISMATCH][0].startswith(
        '4: 00004_lr.hea')
    assert builder.info.splits['fold9'].num_examples == 0
    assert builder.info.splits['fold10'].num_examples == 2  # the rest is read


def test_cinc2021_build_counts_a_checksum_mismatch_of_a_mat_file(tmp_path):
    root = tmp_path / 'src'
    shutil.copytree(cinc_dummy.DUMMY_DIR, root)
    _corrupt_checksum(root / 'training' / 'cpsc_2018' / 'g1' / 'A0001.hea',
                      signal=11)
    builder = tfds.builder('cinc2021/cpsc2018', data_dir=str(tmp_path / 'tfds'),
                           processes=1)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(root)))
    report = builder.info.metadata['build_report']['train']
    assert report['skipped'] == {skips.CHECKSUM_MISMATCH: 1, skips.TOO_SHORT: 1}
    assert 'A0001' in report['skip_samples'][skips.CHECKSUM_MISMATCH][0]
    assert builder.info.splits['train'].num_examples == 1  # A0003
