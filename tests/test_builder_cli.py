"""`python -m tfds_builders`: absent source files and bad tables are one line
and exit status 2; nothing is downloaded unless `--download=yes` asks."""

import importlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

from absl import logging
import pandas as pd
import pytest
import tensorflow_datasets as tfds

from tfds_builders import errors
from tfds_builders.cinc2021 import make_dummy_data as cinc_dummy
from tfds_builders.code15 import make_dummy_data as code15_dummy
from tfds_builders.mimic_iv_ecg import make_dummy_data as mimic_dummy
from tfds_builders.ptb_xl import make_dummy_data as ptbxl_dummy
from tfds_builders.ptb_xl import ptb_xl_dataset_builder as ptb_xl

cli = importlib.import_module('tfds_builders.__main__')
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Records download requests instead of making them; restores logging."""
    requested = []

    def fake_download_and_extract(self, url_or_urls):
        requested.append(url_or_urls)
        return ptbxl_dummy.DUMMY_DIR

    monkeypatch.setattr(tfds.download.DownloadManager, 'download_and_extract',
                        fake_download_and_extract)
    verbosity = logging.get_verbosity()
    yield requested
    logging.set_verbosity(verbosity)


def _run_main(capsys, *argv):
    """Runs the CLI in this process; returns (exit status, stderr lines)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(argv))
    err = capsys.readouterr().err
    return exit_info.value.code, [line for line in err.splitlines() if line]


def _error_line(lines):
    errors_ = [line for line in lines if line.startswith('error: ')]
    assert len(errors_) == 1, lines
    assert not any('Traceback' in line for line in lines), lines
    return errors_[0]


def test_absent_manual_dir_is_one_line_and_exit_2(tmp_path):
    absent = tmp_path / 'absent'
    proc = subprocess.run(
        [sys.executable, '-m', 'tfds_builders', 'ptb_xl/records100',
         f'--manual_dir={absent}', f'--data_dir={tmp_path / "tfds"}'],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, 'PYTHONPATH': str(REPO)})
    assert proc.returncode == 2, proc.stderr
    line = _error_line(proc.stderr.splitlines())
    assert str(absent) in line and 'does not exist' in line
    assert 'ptbxl_database.csv' in line and 'physionet.org' in line


@pytest.mark.parametrize('download', ['no', 'yes'])
def test_manual_dir_without_the_files_never_downloads(tmp_path, capsys,
                                                      no_downloads, download):
    wrong = tmp_path / 'wrong'
    (wrong / 'records100').mkdir(parents=True)
    (wrong / 'notes.txt').write_text('not PTB-XL')
    code, lines = _run_main(capsys, 'ptb_xl/records100', f'--manual_dir={wrong}',
                            f'--data_dir={tmp_path / "tfds"}',
                            f'--download={download}')
    assert code == 2
    line = _error_line(lines)
    assert f'no ptbxl_database.csv in {wrong}' in line
    assert no_downloads == []


@pytest.mark.parametrize('name,make_folder,expected', [
    ('ptb_xl/records500', 'empty', 'ptbxl_database.csv'),
    ('code15', 'absent', 'exams.csv'),
    ('mimic_iv_ecg', 'absent', 'record_list.csv'),
    ('cinc2021/ningbo', 'other_source', 'training/ningbo/'),
])
def test_every_builder_names_folder_and_expected_file(
        tmp_path, capsys, no_downloads, name, make_folder, expected):
    folder = tmp_path / make_folder
    if make_folder == 'empty':
        folder.mkdir()
    elif make_folder == 'other_source':
        (folder / 'training' / 'georgia').mkdir(parents=True)
    code, lines = _run_main(capsys, name, f'--manual_dir={folder}',
                            f'--data_dir={tmp_path / "tfds"}')
    assert code == 2
    line = _error_line(lines)
    assert str(folder) in line and expected in line, line
    assert no_downloads == []


def test_without_manual_dir_names_tfds_default_folder(tmp_path, capsys,
                                                      no_downloads):
    code, lines = _run_main(capsys, 'ptb_xl/records100',
                            f'--data_dir={tmp_path / "tfds"}')
    assert code == 2
    line = _error_line(lines)
    assert str(tmp_path / 'tfds' / 'downloads' / 'manual') in line
    assert '--download=yes' in line and 'ptbxl_database.csv' in line
    assert no_downloads == []


def test_mimic_is_never_downloaded(tmp_path, capsys, no_downloads):
    code, lines = _run_main(capsys, 'mimic_iv_ecg', '--download=yes',
                            f'--data_dir={tmp_path / "tfds"}')
    assert code == 2
    assert 'record_list.csv' in _error_line(lines)
    assert no_downloads == []


def test_download_yes_downloads_into_an_empty_manual_dir(tmp_path, capsys,
                                                         no_downloads):
    (tmp_path / 'empty').mkdir()
    cli.main(['ptb_xl/records100', f'--manual_dir={tmp_path / "empty"}',
              '--download=yes', f'--data_dir={tmp_path / "tfds"}',
              '--processes=1'])
    assert no_downloads == [ptb_xl._URL]  # pylint: disable=protected-access
    out = capsys.readouterr().out
    summary = json.loads(out[out.index('{\n'):])
    assert summary['examples']['fold1'] == 2


# ---------------------------------------------------------------------------
# Tables lacking a column


def _ptbxl_copy(tmp_path):
    root = tmp_path / 'src'
    shutil.copytree(ptbxl_dummy.DUMMY_DIR, root,
                    ignore=shutil.ignore_patterns('records500'))
    return root


def test_database_without_a_column_names_file_and_column(tmp_path, capsys):
    root = _ptbxl_copy(tmp_path)
    csv = root / ptb_xl.DATABASE_CSV
    pd.read_csv(csv).drop(columns=['strat_fold']).to_csv(csv, index=False)
    with pytest.raises(errors.SourceTableError) as error:
        ptb_xl.read_database(root)
    assert error.value.missing == ('strat_fold',)
    assert str(csv) in str(error.value) and 'strat_fold' in str(error.value)
    code, lines = _run_main(capsys, 'ptb_xl/records100', f'--manual_dir={root}',
                            f'--data_dir={tmp_path / "tfds"}')
    assert code == 2
    line = _error_line(lines)
    assert f'{csv} lacks the column strat_fold' in line


def test_statements_without_columns_name_them(tmp_path):
    root = _ptbxl_copy(tmp_path)
    csv = root / ptb_xl.STATEMENTS_CSV
    table = pd.read_csv(csv, index_col=0)
    table.drop(columns=['diagnostic_class', 'rhythm']).to_csv(csv)
    with pytest.raises(errors.SourceTableError,
                       match='lacks the columns rhythm, diagnostic_class'):
        ptb_xl.read_statements(root)
    (root / ptb_xl.STATEMENTS_CSV).unlink()
    with pytest.raises(errors.SourceFilesNotFoundError, match='scp_statements.csv'):
        ptb_xl.read_statements(root)


@pytest.mark.parametrize('name,dummy_dir,table,column', [
    ('code15', code15_dummy.DUMMY_DIR, 'exams.csv', 'is_male'),
    ('mimic_iv_ecg', mimic_dummy.DUMMY_DIR, 'record_list.csv', 'path'),
])
def test_other_tables_without_a_column(tmp_path, name, dummy_dir, table,
                                       column):
    root = tmp_path / 'src'
    shutil.copytree(dummy_dir, root)
    pd.read_csv(root / table).drop(columns=[column]).to_csv(root / table,
                                                           index=False)
    builder = tfds.builder(name, data_dir=str(tmp_path / 'tfds'))
    with pytest.raises(errors.SourceTableError,
                       match=f'{root / table} lacks the column {column}'):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(root)))


def test_cinc_dummy_still_builds_from_the_cli(tmp_path, capsys):
    # The happy path through the same entry point, for contrast.
    cli.main(['cinc2021/st_petersburg', f'--manual_dir={cinc_dummy.DUMMY_DIR}',
              f'--data_dir={tmp_path / "tfds"}', '--processes=1'])
    out = capsys.readouterr().out
    summary = json.loads(out[out.index('{\n'):])
    assert summary['examples'] == {'train': 1}
