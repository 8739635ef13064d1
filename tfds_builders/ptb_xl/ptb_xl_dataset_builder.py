"""PTB-XL: 21,837 (v1.0.1) / 21,799 (v1.0.3) 10 s 12-lead ECGs with SCP labels.

One split per `strat_fold` (`fold1` .. `fold10`; train = `fold1+...+fold8`,
validation = `fold9`, test = `fold10`). Besides the core features every
example carries the six benchmark label sets as multi-hot bool vectors; their
class names are in `info.metadata['classes'][task]`. Registers the sources
`ptb_xl` (500 Hz) and `ptb_xl_100hz`.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import pathlib
from typing import Any, Mapping

import numpy as np
import pandas as pd
import tensorflow_datasets as tfds

from tfds_builders import base, features, reading, skips, tables
from tfds_builders.ptb_xl import FOLD_SPLITS, NUM_FOLDS, TRAIN_SPLIT  # noqa: F401

DATABASE_CSV = 'ptbxl_database.csv'
STATEMENTS_CSV = 'scp_statements.csv'
# Columns the builder reads; a table without one of them is refused.
DATABASE_COLUMNS = ('ecg_id', 'patient_id', 'age', 'sex', 'scp_codes',
                    'strat_fold', 'filename_lr', 'filename_hr')
STATEMENTS_COLUMNS = ('diagnostic', 'form', 'rhythm', 'diagnostic_class',
                      'diagnostic_subclass')

# Number of classes per task (facts section 7); the vocabularies derived from
# scp_statements.csv are checked against these so a wrong CSV fails loudly.
NUM_CLASSES: Mapping[str, int] = {
    'all': 71,
    'diagnostic': 44,
    'subdiagnostic': 23,
    'superdiagnostic': 5,
    'form': 19,
    'rhythm': 12,
}
TASKS = tuple(NUM_CLASSES)

_URL = ('https://physionet.org/static/published-projects/ptb-xl/'
        'ptb-xl-a-large-publicly-available-electrocardiography-dataset-1.0.3.zip')
_HOMEPAGE = 'https://physionet.org/content/ptb-xl/'

_DESCRIPTION = """
PTB-XL (Wagner et al., 2020): 10 s 12-lead ECGs from 18,869 patients,
annotated with SCP-ECG statements. Signals are in mV, leads in the order
I, II, III, aVR, aVL, aVF, V1-V6. Splits are the recommended stratified folds.
Labels follow the PTB-XL benchmark (every scp_codes key counts, whatever its
likelihood): all (71), diagnostic (44), subdiagnostic (23),
superdiagnostic (5), form (19), rhythm (12); class names (sorted) are in
info.metadata['classes'][task]. Skipped records are counted per reason in
info.metadata['build_report'] and build_report.json.
"""


def _is_one(value: Any) -> bool:
    """scp_statements marks membership with 1.0 and leaves the rest empty."""
    try:
        return float(value) == 1.0
    except (TypeError, ValueError):
        return False


def _present(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ''


def _code_targets(statements_df: pd.DataFrame, task: str) -> dict[str, str]:
    """Maps each SCP code to the class it counts for in `task` (if any)."""
    if task not in NUM_CLASSES:
        raise ValueError(f'unknown task {task!r}; known: {list(TASKS)}')
    targets = {}
    for code, row in statements_df.iterrows():
        code = str(code).strip()
        if task == 'all':
            targets[code] = code
        elif task in ('diagnostic', 'form', 'rhythm'):
            if _is_one(row.get(task)):
                targets[code] = code
        elif _is_one(row.get('diagnostic')):
            column = ('diagnostic_subclass' if task == 'subdiagnostic'
                      else 'diagnostic_class')
            if _present(row.get(column)):
                targets[code] = row[column].strip()
    return targets


def read_statements(csv_dir: str | os.PathLike) -> pd.DataFrame:
    """Reads scp_statements.csv (index: SCP code).

    Args:
      csv_dir: folder holding scp_statements.csv.

    Returns:
      The statements table indexed by code.

    Raises:
      SourceFilesNotFoundError: no such file.
      SourceTableError: a column the labels are derived from is absent.
    """
    return tables.read_table(pathlib.Path(csv_dir) / STATEMENTS_CSV,
                             STATEMENTS_COLUMNS, index_col=0)


def read_database(csv_dir: str | os.PathLike) -> pd.DataFrame:
    """Reads ptbxl_database.csv (index: ecg_id) with scp_codes as dicts.

    Args:
      csv_dir: folder holding ptbxl_database.csv.

    Returns:
      The database table indexed by ecg_id; `scp_codes` parsed into dicts.

    Raises:
      SourceFilesNotFoundError: no such file.
      SourceTableError: a column of `DATABASE_COLUMNS` is absent.
    """
    df = tables.read_table(pathlib.Path(csv_dir) / DATABASE_CSV,
                           DATABASE_COLUMNS, index_col='ecg_id')
    df['scp_codes'] = df['scp_codes'].apply(_parse_scp_codes)
    return df


def _parse_scp_codes(value: Any) -> dict[str, float]:
    if isinstance(value, Mapping):
        return {str(k): float(v) for k, v in value.items()}
    if not isinstance(value, str) or not value.strip():
        return {}
    return {str(k): float(v) for k, v in ast.literal_eval(value).items()}


def vocabularies_from_statements(
        statements_df: pd.DataFrame) -> dict[str, list[str]]:
    """Sorted class names of every task, derived from the statements table.

    Args:
      statements_df: scp_statements.csv as read by `read_statements`.

    Returns:
      dict task -> sorted list of class names.

    Raises:
      ValueError: when a task's class count differs from `NUM_CLASSES`.
    """
    vocab = {task: sorted(set(_code_targets(statements_df, task).values()))
             for task in TASKS}
    wrong = {t: len(v) for t, v in vocab.items() if len(v) != NUM_CLASSES[t]}
    if wrong:
        raise ValueError(f'{STATEMENTS_CSV} gives class counts {wrong}, '
                         f'expected {dict(NUM_CLASSES)}')
    return vocab


def ptb_xl_label_vocabularies(csv_dir: str | os.PathLike) -> dict[str, list[str]]:
    """Class names of the six PTB-XL tasks, as stored in the dataset info.

    Args:
      csv_dir: the PTB-XL folder (holding scp_statements.csv).

    Returns:
      dict task -> sorted class names (71/44/23/5/19/12 of them).
    """
    return vocabularies_from_statements(read_statements(csv_dir))


def ptb_xl_labels(database_df: pd.DataFrame, statements_df: pd.DataFrame,
                  task: str) -> np.ndarray:
    """Multi-hot labels of `task` for every row of the database table.

    Every key of a record's scp_codes counts, whatever its likelihood
    (facts section 7). Records with no class for the task get an all-False
    row (evaluation drops them).

    Args:
      database_df: ptbxl_database.csv; `scp_codes` as dicts or dict strings.
      statements_df: scp_statements.csv indexed by code.
      task: one of `TASKS`.

    Returns:
      bool array (len(database_df), NUM_CLASSES[task]); columns follow
      `ptb_xl_label_vocabularies(...)[task]`.
    """
    targets = _code_targets(statements_df, task)
    classes = vocabularies_from_statements(statements_df)[task]
    column = {name: i for i, name in enumerate(classes)}
    labels = np.zeros((len(database_df), len(classes)), dtype=bool)
    for row, codes in enumerate(database_df['scp_codes']):
        for code in _parse_scp_codes(codes):
            target = targets.get(code.strip())
            if target is not None:
                labels[row, column[target]] = True
    return labels


@dataclasses.dataclass(eq=False)
class PtbXlConfig(tfds.core.BuilderConfig):
    """Which sampling rate to build, and how.

    Attributes:
      filename_column: `filename_lr` (records100) or `filename_hr` (records500).
      sampling_rate: the records' rate (Hz), for the description.
      min_seconds: shorter records are skipped (all PTB-XL records are 10 s).
      keep_flat_leads: keep records with a flat lead (counted as a warning in
        the build report). PTB-XL is the evaluation benchmark, so by default
        no record is dropped: v1.0.1 has e.g. ecg_id 12722 with V5 all zero.
    """
    filename_column: str = 'filename_lr'
    sampling_rate: int = 100
    min_seconds: float = 10.0
    keep_flat_leads: bool = True


class Builder(base.SourceBuilderMixin, tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for PTB-XL."""

    name = 'ptb_xl'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release.'}
    BUILDER_CONFIGS = [
        PtbXlConfig(name='records100', filename_column='filename_lr',
                    sampling_rate=100,
                    description='100 Hz records (records100/, filename_lr).'),
        PtbXlConfig(name='records500', filename_column='filename_hr',
                    sampling_rate=500,
                    description='500 Hz records (records500/, filename_hr).'),
    ]
    DEFAULT_CONFIG_NAME = 'records100'
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Download PTB-XL (v1.0.1 or v1.0.3) from
    https://physionet.org/content/ptb-xl/ ({_URL}) and extract it so that
    `<manual_dir>/ptbxl_database.csv`, `<manual_dir>/scp_statements.csv` and
    `<manual_dir>/records100/` (and/or `records500/`) exist (one extra folder
    level is fine) and pass the folder with `--manual_dir`; or pass
    `--download=yes` (builder kwarg `download=True`, needs network) with
    manual_dir absent or empty to download it. Records whose files are
    absent are skipped and counted.
    """
    _declared_splits = FOLD_SPLITS

    def _info(self) -> tfds.core.DatasetInfo:
        feature_specs = features.core_features()
        feature_specs.update({
            'ecg_id': tfds.features.Scalar(dtype=np.int32),
            'patient_id': tfds.features.Scalar(dtype=np.int32),
            'strat_fold': tfds.features.Scalar(dtype=np.int32),
            'scp_codes': tfds.features.Sequence({
                'code': tfds.features.Text(),
                'likelihood': tfds.features.Scalar(dtype=np.float32),
            }),
        })
        for task, n in NUM_CLASSES.items():
            feature_specs[f'labels_{task}'] = tfds.features.Tensor(
                shape=(n,), dtype=np.bool_,
                doc=f'multi-hot; class names in metadata["classes"]["{task}"]')
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(feature_specs),
            supervised_keys=None,
            homepage=_HOMEPAGE,
            metadata=tfds.core.MetadataDict(),
        )

    def _source_root(self, dl_manager) -> pathlib.Path:
        return base.source_root(
            dl_manager, marker=DATABASE_CSV, where=f'PTB-XL from {_HOMEPAGE}',
            download=self._download,
            download_fn=lambda: dl_manager.download_and_extract(_URL))

    def _split_generators(self, dl_manager):
        root = self._source_root(dl_manager)
        database = read_database(root)
        statements = read_statements(root)
        vocab = vocabularies_from_statements(statements)
        self.info.metadata['classes'] = vocab
        self.info.metadata['source_rows'] = int(len(database))
        labels = {task: ptb_xl_labels(database, statements, task)
                  for task in TASKS}
        generators = {}
        for fold, split in enumerate(FOLD_SPLITS, 1):
            rows = np.flatnonzero(database['strat_fold'].to_numpy() == fold)
            # A fold whose files are all absent (a subset) is read anyway:
            # the reads fail fast and its records are counted as missing.
            generators[split] = self._generate_examples(
                root, database, labels, rows, split)
        return generators

    def _generate_examples(self, root, database, labels, rows, split):
        config = self.builder_config
        filenames = database[config.filename_column].to_numpy()
        # Plain per-row values: pandas row access would cost more than
        # reading the record.
        meta = {
            'ecg_id': database.index.to_numpy(),
            'age': database['age'].to_numpy(),
            'sex': database['sex'].to_numpy(),
            'patient_id': database['patient_id'].to_numpy(),
            'strat_fold': database['strat_fold'].to_numpy(),
            'scp_codes': database['scp_codes'].to_numpy(),
        }
        position = {int(meta['ecg_id'][r]): int(r) for r in rows}
        tasks = [reading.WfdbTask(
            key=int(meta['ecg_id'][r]),
            header_path=str(root / f'{filenames[r]}.hea'),
            min_seconds=config.min_seconds,
            keep_flat=config.keep_flat_leads) for r in rows]
        counter = skips.SkipCounter(split)

        def make_example(result: skips.ReadResult):
            ecg_id = result.key
            r = position[ecg_id]
            codes = meta['scp_codes'][r]
            example = features.core_example(
                ecg_id, result.signal, result.fs, meta['age'][r],
                _sex_from_ptbxl(meta['sex'][r]))
            example.update({
                'ecg_id': ecg_id,
                'patient_id': _int_or(meta['patient_id'][r], -1),
                'strat_fold': int(meta['strat_fold'][r]),
                'scp_codes': {
                    'code': list(codes),
                    'likelihood': np.asarray(list(codes.values()), np.float32),
                },
            })
            for task in TASKS:
                example[f'labels_{task}'] = labels[task][r]
            return ecg_id, example

        results = self._map_records(reading.read_wfdb_task, tasks,
                                    desc=f'ptb_xl/{config.name} {split}')
        yield from skips.count_and_yield(results, counter, make_example)
        skips.write_build_report(self, split, counter.log_summary())


def _sex_from_ptbxl(value: Any) -> int:
    # PTB-XL codes sex as 0 male, 1 female (numbers, sometimes as floats).
    try:
        sex = int(float(value))
    except (TypeError, ValueError):
        return -1
    return sex if sex in (0, 1) else -1


def _int_or(value: Any, default: int) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


