"""CODE-15%: 345,779 exams of 233,770 Brazilian patients (400 Hz, 12 leads).

`exams.csv` (one row per exam, with six rhythm/conduction labels) and HDF5
files `exams_part{N}.hdf5` holding `tracings` (N, 4096, 12) float32 mV and
`exam_id` (N,). Recordings of 7 s or 10 s are centred in the 4,096 samples
with zero padding, which is trimmed here; with the default 10 s minimum, the
7 s exams are skipped (as `too_short`). Registers the source `code15`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Any

import numpy as np
import pandas as pd
import tensorflow_datasets as tfds

from tfds_builders import base, features, skips, tables
# The pool's worker lives in a module with one importable name: `tfds build`
# loads this file under another name, which spawned workers cannot import.
from tfds_builders.code15.reading import Hdf5Task, read_hdf5_task  # pylint: disable=g-multiple-import

EXAMS_CSV = 'exams.csv'
LABEL_NAMES = ('1dAVb', 'RBBB', 'LBBB', 'SB', 'ST', 'AF')
# Columns of exams.csv the builder reads (`trace_file` is optional).
EXAMS_COLUMNS = ('exam_id', 'age', 'is_male', 'patient_id', 'normal_ecg',
                 *LABEL_NAMES)
# Skip reasons specific to CODE-15's csv/HDF5 split of the data.
NOT_IN_HDF5 = 'not_in_hdf5'
NOT_IN_CSV = 'not_in_csv'
# HDF5 rows per worker task: ~25 MB of tracings.
ROWS_PER_TASK = 128

_HOMEPAGE = 'https://zenodo.org/records/4916206'
_ZENODO = f'{_HOMEPAGE}/files'
_NUM_PARTS = 18

_DESCRIPTION = """
CODE-15% (Ribeiro et al., 2021): a 15% stratified sample of the CODE
dataset of the Telehealth Network of Minas Gerais. 12-lead ECGs at 400 Hz in
mV (canonical lead order), zero padding trimmed. `labels` is multi-hot over
1dAVb, RBBB, LBBB, SB, ST, AF (names in info.metadata['label_names']).
Skipped records (bad signal, too short, exam missing from the csv or the
HDF5 files) are counted in info.metadata['build_report'].
"""


def _part_number(path: pathlib.Path) -> int:
    match = re.search(r'(\d+)$', path.stem)
    return int(match.group(1)) if match else -1


@dataclasses.dataclass(eq=False)
class Code15Config(tfds.core.BuilderConfig):
    """Build options.

    Attributes:
      min_seconds: shorter records (after trimming) are skipped.
    """
    min_seconds: float = 10.0


class Builder(base.SourceBuilderMixin, tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for CODE-15%."""

    name = 'code15'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release.'}
    BUILDER_CONFIGS = [Code15Config(
        name='default', description='All exams, native 400 Hz, trimmed.')]
    DEFAULT_CONFIG_NAME = 'default'
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Download CODE-15% from https://zenodo.org/records/4916206: `exams.csv`
    and `exams_part0.zip` .. `exams_part17.zip`; unzip the parts so that
    `<manual_dir>/exams.csv` and `<manual_dir>/exams_part{{0..17}}.hdf5` exist
    (a subset of the parts is fine: the exams of absent parts are counted as
    missing). Pass the folder with `--manual_dir`, or pass `--download=yes`
    (builder kwarg `download=True`, needs network; see {_ZENODO}) with
    manual_dir absent or empty to download it.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        feature_specs = features.core_features()
        feature_specs.update({
            'exam_id': tfds.features.Scalar(dtype=np.int64),
            'patient_id': tfds.features.Scalar(dtype=np.int64),
            'labels': tfds.features.Tensor(
                shape=(len(LABEL_NAMES),), dtype=np.bool_,
                doc=f'multi-hot over {", ".join(LABEL_NAMES)}'),
            'normal_ecg': tfds.features.Scalar(dtype=np.bool_),
        })
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(feature_specs),
            homepage=_HOMEPAGE,
            metadata=tfds.core.MetadataDict(label_names=list(LABEL_NAMES)),
        )

    def _download_source(self, dl_manager) -> pathlib.Path:
        urls = {'exams.csv': f'{_ZENODO}/exams.csv?download=1'}
        urls.update({f'part{i}': f'{_ZENODO}/exams_part{i}.zip?download=1'
                     for i in range(_NUM_PARTS)})
        paths = dl_manager.download_and_extract(urls)
        # Gather the csv and the extracted HDF5 files in one folder (links).
        root = pathlib.Path(os.fspath(dl_manager.download_dir)) / 'code15_root'
        root.mkdir(parents=True, exist_ok=True)
        for key, path in paths.items():
            path = pathlib.Path(str(path))
            files = [path] if path.is_file() else list(path.rglob('*.hdf5'))
            for f in files:
                name = EXAMS_CSV if key == 'exams.csv' else f.name
                link = root / name
                if not link.exists():
                    link.symlink_to(f)
        return root

    def _split_generators(self, dl_manager):
        root = base.source_root(
            dl_manager, marker=EXAMS_CSV, where=f'CODE-15% from {_HOMEPAGE}',
            download=self._download,
            download_fn=lambda: self._download_source(dl_manager))
        exams = tables.read_table(root / EXAMS_CSV, EXAMS_COLUMNS)
        return {'train': self._generate_examples(root, exams, 'train')}

    def _generate_examples(self, root, exams, split):
        import h5py  # pylint: disable=g-import-not-at-top
        exams = exams.drop_duplicates('exam_id').set_index('exam_id')
        counter = skips.SkipCounter(split)
        parts = sorted(root.glob('exams_part*.hdf5'), key=_part_number)
        tasks, seen = [], set()
        for part in parts:
            try:
                with h5py.File(part, 'r') as f:
                    part_ids = np.asarray(f['exam_id'][:], dtype=np.int64)
            except Exception as e:  # pylint: disable=broad-except
                counter.skip(part.name, skips.UNREADABLE_FILE, str(e))
                continue
            in_csv = np.isin(part_ids, exams.index.to_numpy())
            for exam_id in part_ids[~in_csv]:
                # Includes the all-zero padding row (exam_id 0) that ends
                # each part file.
                counter.skip(int(exam_id), NOT_IN_CSV, part.name)
            fresh = in_csv & ~np.isin(part_ids, list(seen))
            seen.update(int(i) for i in part_ids[in_csv])
            for start in range(0, len(part_ids), ROWS_PER_TASK):
                stop = min(start + ROWS_PER_TASK, len(part_ids))
                if fresh[start:stop].any():
                    tasks.append(Hdf5Task(
                        str(part), start, stop,
                        tuple(bool(k) for k in fresh[start:stop]),
                        self.builder_config.min_seconds))
        present_parts = {p.name for p in parts}
        trace_files = (exams['trace_file'].astype(str)
                       if 'trace_file' in exams else None)
        for exam_id in exams.index.difference(pd.Index(sorted(seen))):
            trace = trace_files[exam_id] if trace_files is not None else ''
            if trace and trace not in present_parts:
                counter.skip(int(exam_id), skips.MISSING_FILE, trace)
            else:
                counter.skip(int(exam_id), NOT_IN_HDF5, trace)

        columns = {name: exams[name].to_numpy() for name in
                   ('age', 'is_male', 'patient_id', 'normal_ecg',
                    *LABEL_NAMES)}
        position = {int(e): i for i, e in enumerate(exams.index)}

        def make_example(result: skips.ReadResult):
            i = position[result.key]
            example = features.core_example(
                result.key, result.signal, result.fs, columns['age'][i],
                _sex_from_is_male(columns['is_male'][i]))
            example.update({
                'exam_id': result.key,
                'patient_id': _int_or(columns['patient_id'][i], -1),
                'labels': np.asarray([_truthy(columns[n][i])
                                      for n in LABEL_NAMES], dtype=bool),
                'normal_ecg': _truthy(columns['normal_ecg'][i]),
            })
            return result.key, example

        def flat():
            for block in self._map_records(read_hdf5_task, tasks,
                                           desc=f'code15 {split} blocks'):
                yield from block

        yield from skips.count_and_yield(flat(), counter, make_example)
        skips.write_build_report(self, split, counter.log_summary())




def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ('true', '1', 'yes')
    try:
        return bool(value) and not np.isnan(float(value))
    except (TypeError, ValueError):
        return False


def _sex_from_is_male(value: Any) -> int:
    if isinstance(value, str):
        text = value.strip().lower()
        return 0 if text in ('true', '1') else 1 if text in ('false', '0') else -1
    try:
        if np.isnan(float(value)):
            return -1
    except (TypeError, ValueError):
        return -1
    return 0 if bool(value) else 1


def _int_or(value: Any, default: int) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default
