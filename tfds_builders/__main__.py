"""Builds one of our TFDS datasets: `python -m tfds_builders NAME/CONFIG ...`.

    python -m tfds_builders ptb_xl/records100 \
        --manual_dir=../shared/data/ptb-xl --data_dir=~/tensorflow_datasets

Equivalent to `tfds build tfds_builders/ptb_xl --config=records100 ...`,
which needs apache-beam installed only because the `tfds` command imports
it at start-up (tensorflow-datasets 4.9.x); this entry point does not.

Nothing is downloaded unless `--download=yes` is given (and then only when
manual_dir is absent or empty). Source files that are absent or a table
that lacks a column stop the build with one line saying what is missing
where, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# TensorFlow only reads and writes datasets here: its start-up oneDNN notice is noise.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

from absl import logging  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from tfds_builders import base  # noqa: E402
from tfds_builders import build  # noqa: E402
from tfds_builders import errors  # noqa: E402


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='python -m tfds_builders',
                                     description=__doc__.splitlines()[0])
    parser.add_argument('dataset', help='NAME or NAME/CONFIG, e.g. '
                        'ptb_xl/records100, cinc2021/georgia, code15')
    parser.add_argument('--manual_dir', help='folder with the source files')
    parser.add_argument('--data_dir', help='TFDS data dir (default: TFDS\'s)')
    parser.add_argument('--download', choices=('yes', 'no'), default='no',
                        help='yes: download the source when manual_dir is '
                        'absent or empty (default: no, never download)')
    parser.add_argument('--processes', type=int, default=None,
                        help='reader processes (default: cores - 1)')
    parser.add_argument('--overwrite', action='store_true',
                        help='delete an existing build first')
    return parser.parse_args(argv)


def _build(args: argparse.Namespace):
    """Prepares the dataset `args` name; returns the prepared builder."""
    kwargs = {}
    # Only the real sources' builders take these (synthetic_ecg does not).
    if issubclass(tfds.builder_cls(args.dataset.split('/')[0]),
                  base.SourceBuilderMixin):
        kwargs = {'processes': args.processes,
                  'download': args.download == 'yes'}
    data_dir = os.path.expanduser(args.data_dir) if args.data_dir else None
    builder = tfds.builder(args.dataset, data_dir=data_dir, **kwargs)
    if args.overwrite and builder.is_prepared():
        builder.data_path.rmtree()
        builder = tfds.builder(args.dataset, data_dir=data_dir, **kwargs)
    manual_dir = os.path.expanduser(args.manual_dir) if args.manual_dir else None
    return build.build_dataset(args.dataset, data_dir, manual_dir=manual_dir,
                               builder_kwargs=kwargs)


def main(argv: list[str] | None = None) -> None:
    """Parses the command line and prepares the dataset.

    Exits with status 2 and a one-line message on stderr when the source's
    files are absent or incomplete (`tfds_builders.errors.SourceDataError`).

    Args:
      argv: arguments (default: sys.argv[1:]).
    """
    args = _parse_args(argv)
    logging.set_verbosity(logging.INFO)
    start = time.monotonic()
    try:
        builder = _build(args)
    except errors.SourceDataError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    seconds = time.monotonic() - start
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    total = sum(splits.values())
    print(json.dumps({'dataset': builder.info.full_name,
                      'data_dir': os.fspath(builder.data_dir),
                      'examples': splits, 'seconds': round(seconds, 1),
                      'examples_per_second': round(total / max(seconds, 1e-9),
                                                   1),
                      'build_report': str(pathlib.Path(
                          os.fspath(builder.data_dir)) / 'build_report.json')},
                     indent=2))


if __name__ == '__main__':
    main()
