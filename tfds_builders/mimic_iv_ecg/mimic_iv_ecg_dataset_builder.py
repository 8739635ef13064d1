"""MIMIC-IV-ECG: ~800,000 10 s 12-lead ECGs (500 Hz) from MIMIC-IV patients.

Records are WFDB (`files/pNNNN/pNNNNNNNN/sNNNNNNNN/NNNNNNNN.{hea,dat}`)
listed in `record_list.csv`; their leads are stored as
I, II, III, aVR, aVF, aVL, V1-V6 and reordered here to the canonical order.
Age and sex are not part of the ECG module (they live in the credentialed
MIMIC-IV tables), so both are stored as unknown (-1). Registers the source
`mimic_iv_ecg`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import base, features, reading, skips, tables

RECORD_LIST_CSV = 'record_list.csv'
# Columns of record_list.csv the builder reads.
RECORD_LIST_COLUMNS = ('subject_id', 'study_id', 'path')
_HOMEPAGE = 'https://physionet.org/content/mimic-iv-ecg/1.0/'

_DESCRIPTION = """
MIMIC-IV-ECG (Gow et al., 2023): diagnostic 12-lead ECGs of MIMIC-IV
patients, 10 s at 500 Hz. Signals in mV, leads reordered to I, II, III, aVR,
aVL, aVF, V1-V6; NaNs linearly interpolated per lead. Records with a missing
file, a missing lead, an all-NaN or flat lead, less than `min_seconds` or an
unparsable header are skipped and counted (info.metadata['build_report']).
"""


@dataclasses.dataclass(eq=False)
class MimicIvEcgConfig(tfds.core.BuilderConfig):
    """Build options.

    Attributes:
      min_seconds: shorter records are skipped.
      max_records: read only the first N records of record_list.csv (None:
        all); for quick trial builds.
    """
    min_seconds: float = 10.0
    max_records: int | None = None


class Builder(base.SourceBuilderMixin, tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for MIMIC-IV-ECG (manual download)."""

    name = 'mimic_iv_ecg'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release.'}
    BUILDER_CONFIGS = [MimicIvEcgConfig(
        name='default', description='All records, native 500 Hz.')]
    DEFAULT_CONFIG_NAME = 'default'
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download MIMIC-IV-ECG v1.0 from
    https://physionet.org/content/mimic-iv-ecg/1.0/ (about 90 GB unpacked,
    e.g. `wget -r -N -c -np https://physionet.org/files/mimic-iv-ecg/1.0/`)
    and pass the folder holding `record_list.csv` and `files/` with
    `--manual_dir` (one extra folder level is fine).
    """

    def _info(self) -> tfds.core.DatasetInfo:
        feature_specs = features.core_features()
        feature_specs.update({
            'subject_id': tfds.features.Scalar(dtype=np.int64),
            'study_id': tfds.features.Scalar(dtype=np.int64),
        })
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(feature_specs),
            homepage='https://physionet.org/content/mimic-iv-ecg/',
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        # Credentialed access: never downloaded here.
        root = base.source_root(
            dl_manager, marker=RECORD_LIST_CSV,
            where=f'MIMIC-IV-ECG from {_HOMEPAGE}', download=False,
            download_fn=None)
        records = tables.read_table(root / RECORD_LIST_CSV,
                                    RECORD_LIST_COLUMNS)
        if self.builder_config.max_records:
            records = records.iloc[:self.builder_config.max_records]
        return {'train': self._generate_examples(root, records, 'train')}

    def _generate_examples(self, root, records, split):
        subject = records['subject_id'].to_numpy()
        study = records['study_id'].to_numpy()
        tasks = [reading.WfdbTask(
            key=int(i), header_path=str(root / f'{path}.hea'),
            min_seconds=self.builder_config.min_seconds)
            for i, path in enumerate(records['path'].astype(str))]
        counter = skips.SkipCounter(split)

        def make_example(result: skips.ReadResult):
            i = result.key
            example = features.core_example(study[i], result.signal, result.fs)
            example['subject_id'] = int(subject[i])
            example['study_id'] = int(study[i])
            return int(study[i]), example

        results = self._map_records(reading.read_wfdb_task, tasks,
                                    desc=f'mimic_iv_ecg {split}')
        yield from skips.count_and_yield(
            _by_study(results, study), counter, make_example)
        skips.write_build_report(self, split, counter.log_summary())




def _by_study(results, study):
    """Names skipped records by study id in the report (not row number)."""
    for result in results:
        if result.reason is not None:
            result = dataclasses.replace(result, key=int(study[result.key]))
        yield result
