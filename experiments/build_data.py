"""What the entry points build before they run: the one place outside
`tfds_builders` where datasets and their statistics are made.

The library (`jepa_ecg/data`, training) only opens built datasets and stops
with the build command when one is missing; the experiment mains, the demo
and the notebook call these first, so the offline synthetic source (and a
real one whose raw folder is given) is built on first use.
"""

from __future__ import annotations

from typing import Mapping

import ml_collections

from jepa_ecg.data import ptbxl, source_stats
from jepa_ecg.data.sources import MIXTURES, SOURCES, Source
from tfds_builders import build


class BuildConfigError(ValueError):
    """The config asks for a build it cannot do (e.g. one raw folder, several sources)."""


def _manual_dirs(mixture: Mapping[str, float], manual_dir: str | None,
                 registry: Mapping[str, Source]) -> dict[str, str]:
    """`data.manual_dir` is the raw folder of the mixture's one real source."""
    if not manual_dir:
        return {}
    real = [name for name, w in mixture.items()
            if w > 0 and not build.is_offline(registry[name].tfds_name)]
    if len(real) != 1:
        raise BuildConfigError(
            f'data.manual_dir names the raw folder of one source, but the mixture has '
            f'{len(real)} real sources {real}: build each with python -m tfds_builders')
    return {real[0]: manual_dir}


def sources_of(mixture: Mapping[str, float], data_dir: str | None, *,
               manual_dir: str | None = None,
               sources: Mapping[str, Source] | None = None) -> None:
    """Builds the mixture's sources that can be built, and their lead statistics.

    Offline sources, and the one real source whose raw folder is
    `manual_dir`, are built on first use; a real source that is not built
    and has no raw folder is left for the pipeline to report (with its
    build command).

    Args:
      mixture: source name -> sampling weight.
      data_dir: TFDS data directory.
      manual_dir: raw folder of the mixture's one real source, or None.
      sources: extra or overriding registry entries.
    """
    registry = {**SOURCES, **(sources or {})}
    manual_dirs = _manual_dirs(mixture, manual_dir, registry)
    for name, weight in mixture.items():
        src = registry[name]
        if weight <= 0 or not (name in manual_dirs or build.is_offline(src.tfds_name)
                               or build.is_built(src.tfds_name, data_dir)):
            continue
        build.ensure_built(src.tfds_name, data_dir, manual_dir=manual_dirs.get(name))
        source_stats.ensure_lead_stats(src, data_dir)


def for_pretraining(config: ml_collections.ConfigDict) -> None:
    """What a pre-training config reads (`config.data`)."""
    sources_of(MIXTURES[config.data.mixture], config.data.data_dir,
               manual_dir=config.data.get('manual_dir'))


def for_ptbxl(data_config: ml_collections.ConfigDict, fs: float) -> None:
    """PTB-XL at the rate of a model at `fs`, when its raw folder is given
    (`data.manual_dir`) and no rate of it is built yet."""
    manual_dir = data_config.get('manual_dir')
    if not manual_dir:
        return
    data_dir = data_config.get('data_dir')
    name = data_config.get('builder') or ptbxl.choose_builder(fs, data_dir, manual_dir)
    build.ensure_built(name, data_dir, manual_dir=manual_dir)
