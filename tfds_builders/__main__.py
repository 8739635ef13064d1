"""Builds one of our TFDS datasets: `python -m tfds_builders NAME/CONFIG ...`.

    python -m tfds_builders ptb_xl/records100 \
        --manual_dir=../shared/data/ptb-xl --data_dir=~/tensorflow_datasets

Equivalent to `tfds build tfds_builders/ptb_xl --config=records100 ...`,
which needs apache-beam installed only because the `tfds` command imports
it at start-up (tensorflow-datasets 4.9.x); this entry point does not.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

from absl import logging


def main(argv: list[str] | None = None) -> None:
    """Parses the command line and prepares the dataset.

    Args:
      argv: arguments (default: sys.argv[1:]).
    """
    parser = argparse.ArgumentParser(prog='python -m tfds_builders',
                                     description=__doc__.splitlines()[0])
    parser.add_argument('dataset', help='NAME or NAME/CONFIG, e.g. '
                        'ptb_xl/records100, cinc2021/georgia, code15')
    parser.add_argument('--manual_dir', help='folder with the source files')
    parser.add_argument('--data_dir', help='TFDS data dir (default: TFDS\'s)')
    parser.add_argument('--download', choices=('yes', 'no'), default=None,
                        help='download when manual_dir is empty (default: '
                        'the config\'s choice)')
    parser.add_argument('--processes', type=int, default=None,
                        help='reader processes (default: cores - 1)')
    parser.add_argument('--overwrite', action='store_true',
                        help='delete an existing build first')
    parser.add_argument('--file_format', choices=('array_record', 'tfrecord'),
                        default='array_record',
                        help='array_record (default): what the pre-training '
                        'pipeline reads by random access; tfrecord: for tf.data')
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.INFO)

    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    import tfds_builders  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

    kwargs = {'processes': args.processes}
    if args.download is not None:
        kwargs['download'] = args.download == 'yes'
    data_dir = os.path.expanduser(args.data_dir) if args.data_dir else None
    builder = tfds.builder(args.dataset, data_dir=data_dir, **kwargs)
    if args.overwrite and builder.is_prepared():
        builder.data_path.rmtree()
        builder = tfds.builder(args.dataset, data_dir=data_dir, **kwargs)
    start = time.monotonic()
    manual_dir = os.path.expanduser(args.manual_dir) if args.manual_dir else None
    if args.file_format == 'array_record':
        from jepa_ecg.data import pipeline  # pylint: disable=g-import-not-at-top
        builder = pipeline.build_dataset(args.dataset, data_dir, manual_dir=manual_dir,
                                         builder_kwargs=kwargs)
    else:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=manual_dir))
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
