"""Per-lead normalisation statistics, computed from and stored with each source.

    python -m jepa_ecg.data.source_stats --source=ptb_xl --data_dir=~/tensorflow_datasets

streams the source's train split (after its high-pass, at native rate),
computes every lead's mean and standard deviation over all samples of all
records, and writes them as JSON into the built dataset's versioned folder
(`<data_dir>/<builder>/<config>/<version>/lead_stats.json`, keyed by source
name, since several sources may share one dataset). The pre-training
pipeline reads them with `load_lead_stats`; nothing is hard-coded.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import pathlib
import sys
import time
from typing import Mapping

import numpy as np
import tensorflow_datasets as tfds

from jepa_ecg.data import datasets
from jepa_ecg.data import sources as sources_lib
from jepa_ecg.data.stats import RunningLeadStats
from jepa_ecg.ecg import transforms
from jepa_ecg.ecg.leads import LEADS

log = logging.getLogger(__name__)

STATS_FILENAME = 'lead_stats.json'


class MissingLeadStatsError(FileNotFoundError):
    """The lead statistics of a source have not been computed yet."""


def _as_source(source: str | sources_lib.Source) -> sources_lib.Source:
    return source if isinstance(source, sources_lib.Source) else sources_lib.get_source(source)


def stats_path(source: str | sources_lib.Source, data_dir: str) -> pathlib.Path:
    """Where the statistics of `source` live: its built dataset's folder.

    Args:
      source: source name or `Source`.
      data_dir: TFDS data directory.

    Returns:
      path of the JSON file (which may not exist yet).
    """
    src = _as_source(source)
    builder = tfds.builder(src.tfds_name, data_dir=data_dir)
    return pathlib.Path(os.fspath(builder.data_dir)) / STATS_FILENAME


def compute_lead_stats(source: str | sources_lib.Source, data_dir: str, *,
                       max_records: int | None = None, log_every: int = 1000) -> dict:
    """Per-lead mean/std of a source's train split, after its high-pass.

    Args:
      source: source name or `Source`.
      data_dir: TFDS data directory with the built dataset (ArrayRecord).
      max_records: use only the first N records (quick estimates, tests).
      log_every: progress line every this many records.

    Returns:
      dict with `mean` and `std` (lists of 12 floats, canonical lead order)
      and how they were computed.
    """
    src = _as_source(source)
    reader = datasets.open_source(src, data_dir)
    total = len(reader) if max_records is None else min(len(reader), int(max_records))
    running = RunningLeadStats()
    rates = set()
    start = time.time()
    for i in range(total):
        signal, fs = reader.read(i)
        rates.add(fs)
        if src.highpass_hz is not None:
            signal = transforms.highpass(signal, fs, src.highpass_hz)
        running.update(signal)
        if log_every and ((i + 1) % log_every == 0 or i + 1 == total):
            elapsed = time.time() - start
            log.info('%s: %d/%d records (%.0f records/s)', src.name, i + 1, total,
                     (i + 1) / max(elapsed, 1e-9))
    std = running.std
    if running.count == 0:
        raise ValueError(f'source {src.name!r}: no samples in split {reader.split!r}')
    if (std <= 0).any():
        raise ValueError(f'source {src.name!r}: leads '
                         f'{[LEADS[i] for i in np.flatnonzero(std <= 0)]} are constant')
    return {
        'source': src.name,
        'tfds_name': src.tfds_name,
        'split': reader.split,
        'highpass_hz': src.highpass_hz,
        'fs': sorted(rates),
        'num_records': total,
        'num_samples': int(running.count),
        'leads': list(LEADS),
        'mean': running.mean.tolist(),
        'std': std.tolist(),
        'created': datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }


def save_lead_stats(stats: Mapping, source: str | sources_lib.Source,
                    data_dir: str) -> pathlib.Path:
    """Stores `stats` for `source` next to its dataset (merging other sources').

    Args:
      stats: as returned by `compute_lead_stats`.
      source: source name or `Source`.
      data_dir: TFDS data directory.

    Returns:
      the JSON file written.
    """
    src = _as_source(source)
    path = stats_path(src, data_dir)
    existing = json.loads(path.read_text()) if path.exists() else {}
    existing[src.name] = dict(stats)
    tmp = path.with_suffix('.json.tmp')
    tmp.write_text(json.dumps(existing, indent=2))
    os.replace(tmp, path)  # atomic: a reader never sees half a file
    return path


def load_lead_stats(source: str | sources_lib.Source, data_dir: str) -> dict:
    """The stored per-lead statistics of `source`.

    Args:
      source: source name or `Source`.
      data_dir: TFDS data directory.

    Returns:
      dict with at least `mean` and `std` (12 floats each, canonical order).

    Raises:
      MissingLeadStatsError: when they were not computed; the message gives
        the command that computes them.
    """
    src = _as_source(source)
    path = stats_path(src, data_dir)
    stats = json.loads(path.read_text()).get(src.name) if path.exists() else None
    if stats is None:
        raise MissingLeadStatsError(
            f'no lead statistics for source {src.name!r} in {path}. Compute them '
            f'with:\n  python -m jepa_ecg.data.source_stats --source={src.name} '
            f'--data_dir={data_dir}')
    return stats


def ensure_lead_stats(source: str | sources_lib.Source, data_dir: str, *,
                      max_records: int | None = None) -> dict:
    """The stored statistics of `source`, computing and storing them if missing.

    Used where a source is built on first use (the offline synthetic source,
    or a real one whose raw folder was given); the statistics CLI computes
    them explicitly after a build.

    Args:
      source: source name or `Source`.
      data_dir: TFDS data directory with the built dataset.
      max_records: when computing, use only the first N records.

    Returns:
      as `load_lead_stats`.
    """
    try:
        return load_lead_stats(source, data_dir)
    except MissingLeadStatsError:
        computed = compute_lead_stats(source, data_dir, max_records=max_records)
        save_lead_stats(computed, source, data_dir)
        return load_lead_stats(source, data_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--source', required=True,
                        help=f'source name, one of {sorted(sources_lib.SOURCES)}')
    parser.add_argument('--data_dir', required=True, help='TFDS data directory')
    parser.add_argument('--max_records', type=int, default=None,
                        help='use only the first N records')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
    data_dir = os.path.expanduser(args.data_dir)
    stats = compute_lead_stats(args.source, data_dir, max_records=args.max_records)
    path = save_lead_stats(stats, args.source, data_dir)
    print(f'wrote {path}')
    for lead, m, s in zip(LEADS, stats['mean'], stats['std']):
        print(f'{lead:>4}: mean {m:+.4f} std {s:.4f}')
    return 0

if __name__ == '__main__':
    sys.exit(main())
