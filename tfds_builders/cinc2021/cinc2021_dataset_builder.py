"""PhysioNet/CinC Challenge 2021 training data, one config per source.

`training/<source>/gN/<record>.{hea,mat}`: WFDB headers with MATLAB v4
`.mat` signal files (`val`, int16, leads x samples). Each source keeps its
native sampling rate and record length (PTB 1000 Hz, INCART 257 Hz and 30
min, the others 500 Hz). Besides the core features each example has the
record's SNOMED-CT diagnoses (`dx_snomed`, from `#Dx:`). Registers a source
for every config but `ptb_xl` (read from its own builder).
"""

from __future__ import annotations

import dataclasses
import pathlib

import tensorflow_datasets as tfds

from tfds_builders import base, errors, features, reading, skips

# Config name -> folder under training/ in the challenge data (v1.0.3).
SOURCE_FOLDERS = {
    'chapman_shaoxing': 'chapman_shaoxing',
    'cpsc2018': 'cpsc_2018',
    'cpsc2018_extra': 'cpsc_2018_extra',
    'georgia': 'georgia',
    'ningbo': 'ningbo',
    'ptb': 'ptb',
    'ptb_xl': 'ptb-xl',
    'st_petersburg': 'st_petersburg_incart',
}

_URL = ('https://physionet.org/static/published-projects/challenge-2021/'
        'will-two-do-it-the-physionetcomputing-in-cardiology-challenge-2021-'
        '1.0.3.zip')
_HOMEPAGE = 'https://physionet.org/content/challenge-2021/1.0.3/'

_DESCRIPTION = """
Training data of the PhysioNet/Computing in Cardiology Challenge 2021
(Reyna et al.): 12-lead ECGs from eight sources, one config per source.
Signals in mV (gain and baseline from the header), leads in the order I, II,
III, aVR, aVL, aVF, V1-V6, native sampling rate and length; NaNs linearly
interpolated. `dx_snomed` holds the SNOMED-CT codes of `#Dx:`. Records with a
missing or unreadable file, a missing lead, an all-NaN or flat lead, less
than `min_seconds` or an unparsable header are skipped and counted
(info.metadata['build_report']).
"""


@dataclasses.dataclass(eq=False)
class Cinc2021Config(tfds.core.BuilderConfig):
    """One challenge source.

    Attributes:
      folder: the source's folder under `training/`.
      min_seconds: shorter records are skipped.
    """
    folder: str = ''
    min_seconds: float = 10.0


def find_source_folder(root: pathlib.Path, folder: str) -> pathlib.Path:
    """Finds `training/<folder>` below the challenge root or training/.

    Args:
      root: manual_dir (the challenge root, its `training/` folder, or an
        archive's extraction folder one level above).
      folder: the source folder name, e.g. `cpsc_2018`.

    Returns:
      The source folder.

    Raises:
      SourceFilesNotFoundError: naming where it was looked for.
    """
    candidates = [root / 'training' / folder, root / folder]
    try:
        candidates.append(base.find_root(root, 'training', 2) / 'training' /
                          folder)
    except errors.SourceFilesNotFoundError:
        pass
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise errors.SourceFilesNotFoundError(
        f'no training/{folder}/ in {root} (looked in '
        f'{", ".join(str(c) for c in dict.fromkeys(candidates))}; get the '
        f'PhysioNet/CinC Challenge 2021 data from {_HOMEPAGE})',
        folder=root, expected=f'training/{folder}/')


def parse_dx(value: str | None) -> list[str]:
    """SNOMED-CT codes of a `#Dx:` value ('164889003,59118001')."""
    if not value:
        return []
    codes = [c.strip() for c in value.replace(';', ',').split(',')]
    return [c for c in codes if c and c.lower() not in ('unknown', 'nan')]


class Builder(base.SourceBuilderMixin, tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for the CinC 2021 sources."""

    name = 'cinc2021'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release.'}
    BUILDER_CONFIGS = [
        Cinc2021Config(name=name, folder=folder,
                       description=f'training/{folder}/ of the challenge data.')
        for name, folder in SOURCE_FOLDERS.items()
    ]
    DEFAULT_CONFIG_NAME = 'cpsc2018'
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Download the PhysioNet/CinC Challenge 2021 data (v1.0.3) from
    {_HOMEPAGE} ({_URL}) and pass
    the challenge root (holding `training/`) or the `training/` folder itself
    with `--manual_dir`; each config reads `training/<source>/g*/*.hea`
    (sources: {', '.join(SOURCE_FOLDERS.values())}). Or pass `--download=yes`
    (builder kwarg `download=True`, needs network) with manual_dir absent or
    empty to download it.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        feature_specs = features.core_features()
        feature_specs['dx_snomed'] = tfds.features.Sequence(
            tfds.features.Text())
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(feature_specs),
            homepage='https://physionet.org/content/challenge-2021/',
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        root = base.source_root(
            dl_manager, marker=None,
            where=f'the challenge data from {_HOMEPAGE}',
            download=self._download,
            download_fn=lambda: dl_manager.download_and_extract(_URL),
            expected=f'training/{self.builder_config.folder}/')
        source = find_source_folder(root, self.builder_config.folder)
        return {'train': self._generate_examples(source, 'train')}

    def _generate_examples(self, source, split):
        headers = sorted(source.rglob('*.hea'))
        tasks = [reading.WfdbTask(
            key=str(path.relative_to(source).with_suffix('')),
            header_path=str(path),
            min_seconds=self.builder_config.min_seconds) for path in headers]
        counter = skips.SkipCounter(split)

        def make_example(result: skips.ReadResult):
            fields = features.parse_header_comments(result.comments)
            record_id = pathlib.PurePosixPath(result.key).name
            example = features.core_example(
                record_id, result.signal, result.fs, fields.get('age'),
                fields.get('sex'))
            example['dx_snomed'] = parse_dx(fields.get('dx'))
            # Record names are unique within a source; the relative path
            # also is and keeps the key free of the user's folder.
            return result.key, example

        results = self._map_records(
            reading.read_wfdb_task, tasks,
            desc=f'cinc2021/{self.builder_config.name} {split}')
        yield from skips.count_and_yield(results, counter, make_example)
        skips.write_build_report(self, split, counter.log_summary())


# The sources the pre-training mixes read, at their native rates (the
# `ptb_xl` config is not one: PTB-XL is registered by its own builder).
