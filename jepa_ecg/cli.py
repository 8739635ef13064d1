"""`jepa-ecg`: use a trained ECG-JEPA model on your own ECG files.

    jepa-ecg export runs/xs_ptbxl --out encoders/xs_ptbxl
    jepa-ecg import-torch ViTS_all.min.pt --out encoders/vits_all --stats stats.json
    jepa-ecg embed my_ecgs/ --checkpoint encoders/xs_ptbxl --out emb.npz
    jepa-ecg predict a.hea b.csv --checkpoint runs/finetune/classifier --out preds.csv
    jepa-ecg explain a.hea --checkpoint runs/finetune/classifier --out why/ --top-k 2

Inputs of `embed`/`predict` (see `jepa_ecg.ecg.files`): WFDB records (`.hea` with
`.dat` or `.mat`), CSV (one column per lead, header = lead names), NPY/NPZ
(`--fs`, `--leads`), and folders of those. Any sampling rate (resampled to the
model's), any lead order (matched by name). Records longer than the window
are cut into overlapping windows whose outputs are averaged; shorter ones are
an error unless `--pad`. Missing leads are an error listing them unless
`--fill-missing=zero` (a CSV lead more than half empty/NA counts as missing).
A file that cannot be read is reported by name and the others are still
processed (exit status 1 when any failed).

Outputs (the format follows the `--out` extension):
  embed    .npz with `mean` (N, dim) patch-token mean, `register` (N, dim)
           register-token output, `names` and `paths` (N,), `num_windows`
           (N,), `failed` (paths that could not be processed), `encoder`
           (JSON of the encoder's config and provenance); .csv
           `record,path,mean_0,...,register_0,...`.
  predict  .csv `record,path,<class 1>,...` with class probabilities; .npz
           with `probabilities`, `classes`, `names`, `paths`, `num_windows`.
           embed/predict claim `--out` (`<out>.lock`: a second run on it stops)
           and save finished files in `<out>.parts/` as they go; an interrupted
           run keeps them and `--resume` finishes it (see `cli_stream`).
  explain  per record `<name>.npz` (per-patch relevance per class and lead,
           probabilities, pooler attention) and `<name>_<class>.png`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

# The commands import jepa_ecg.inference (JAX, Flax, Orbax) in their bodies,
# so that `jepa-ecg --help` and usage errors answer without loading them.
from jepa_ecg.cli_stream import (PROG, CliError, RunError, check_out, err, need_stats,
                                 stats_override, cmd_embed, cmd_predict)
# Sampling rates `--fs` accepts: below 50 Hz a QRS complex is not resolved;
# above 20 kHz is no ECG recorder's rate (a typo, or a time column in ms).
FS_RANGE = (50.0, 20000.0)


class _Parser(argparse.ArgumentParser):
    """argparse with short usage errors: the problem and where to look, not the usage."""

    def error(self, message: str):
        self.exit(2, f'{self.prog}: error: {message}\n'
                     f'hint: run `{self.prog} --help` for the options\n')


# ------------------------------------------------------- option validation
def _number(kind: type, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, unit: str = '') -> Callable[[str], float]:
    """An argparse `type` parsing `kind` within [low, high] ((low, high] if low_open)."""
    if low is not None and high is not None:
        allowed = f'between {low:g} and {high:g}{unit}'
    else:
        allowed = f'{"> " if low_open else ">= "}{low:g}{unit}'

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not a number ({allowed})') from None
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high) or value != value:
            raise argparse.ArgumentTypeError(f'must be {allowed}, got {text}')
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


_SECONDS = _number(float, low=0.0, low_open=True, unit=' s')
_COUNT = _number(int, low=1)


def cmd_explain(args: argparse.Namespace) -> int:
    """Per-record pictures and arrays of each patch's relevance for the classes."""
    from jepa_ecg.ecg import files as files_lib  # pylint: disable=g-import-not-at-top
    from jepa_ecg.inference import explain, runs, stream  # pylint: disable=g-import-not-at-top
    if os.path.isfile(args.out):
        raise CliError(f'--out {args.out} is a file; give a folder for the pictures')
    check_out(os.path.join(args.out, 'explain.npz'))
    clf = runs.load_classifier(args.checkpoint, task=args.task,
                               lead_stats=stats_override(args))
    need_stats(clf.encoder, args, '--stats FILE.json or --normalize=record')
    paths = files_lib.find_records(args.files)
    if not paths:
        raise CliError(f'no ECG files found in {args.files}')
    read = stream.ReadOptions(fs=args.fs, leads=files_lib.parse_leads(args.leads),
                              units=args.units)
    kwargs = dict(normalize=args.normalize, highpass_hz=args.highpass,
                  fill_missing=None if args.fill_missing == 'none' else args.fill_missing)
    with stream.Progress(len(paths), 'explain', enabled=not args.quiet,
                         prefix=f'{PROG}: ') as progress:
        result = explain.explain_files(
            clf, paths, args.out, read=read, prepare_kwargs=kwargs, method=args.method,
            top_k=args.top_k, steps=args.steps, pad=args.pad, batch_size=args.batch_size,
            progress=progress)
    n = len(result.records)
    print(f'explained {n} records ({args.method}) in {result.seconds:.1f} s: '
          f'{len(result.written)} files -> {args.out}'
          + (f'; {len(result.failed)} failed' if result.failed else ''), flush=True)
    for _, reason in result.failed:
        err(f'  {reason}')
    return 1 if result.failed else 0


def cmd_import_torch(args: argparse.Namespace) -> int:
    """Official PyTorch checkpoint -> encoder directory."""
    from jepa_ecg.inference import torch_import  # pylint: disable=g-import-not-at-top
    try:
        enc = torch_import.import_torch_checkpoint(args.checkpoint, args.out,
                                                   weights=args.weights,
                                                   lead_stats=stats_override(args))
    except ImportError as e:
        raise CliError(str(e)) from None
    _print_encoder(enc, args.out)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Pre-training workdir -> encoder directory; fine-tuning run -> classifier directory."""
    from jepa_ecg.inference import runs  # pylint: disable=g-import-not-at-top
    stats = stats_override(args)
    run = runs.find_finetune_run(args.workdir, args.task)
    if run is not None:
        clf = runs.classifier_from_finetune_run(run, lead_stats=stats)
        clf.save(args.out)
        print(f'wrote {args.out}: classifier of {run} ({len(clf.class_names)} classes, '
              f'task {clf.meta.get("task")}), {clf.encoder!r}')
        if clf.encoder.lead_stats is None:
            err('warning: no normalisation statistics stored; predict will need --stats or '
                '--normalize=record')
        return 0
    if stats is None:
        stats = runs.workdir_lead_stats(args.workdir, data_dir=args.data_dir)
    enc = runs.export_encoder(args.workdir, args.out, step=args.step, lead_stats=stats,
                              weights=args.weights)
    _print_encoder(enc, args.out)
    return 0


def _print_encoder(enc, out: str) -> None:
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f'wrote {out} ({size / 1e6:.2f} MB): {enc!r}')
    if enc.lead_stats is None:
        err('warning: no normalisation statistics stored; embed/predict will need '
            '--normalize=record (or redo this with --stats FILE.json)')
    else:
        print(f'normalisation statistics: {enc.lead_stats.source or "from --stats"}')


# ------------------------------------------------------------------- parser
def _add_input_flags(p: argparse.ArgumentParser,
                     out_help: str = 'output file (checked before any work)') -> None:
    p.add_argument('files', nargs='+', metavar='FILES',
                   help='WFDB .hea/.dat/.mat, .csv, .npy, .npz files, or folders of them')
    p.add_argument('--checkpoint', required=True,
                   help='embed: encoder directory (export / import-torch) or pre-training '
                        'workdir; predict: classifier directory (export of a fine-tuning run) '
                        'or experiments/finetune.py output')
    p.add_argument('--out', required=True, help=out_help)
    p.add_argument('--fs', type=_number(float, low=FS_RANGE[0], high=FS_RANGE[1], unit=' Hz'),
                   default=None, help='sampling rate (Hz) of files that do not store it '
                                      f'(NPY, NPZ, CSV); {FS_RANGE[0]:g}-{FS_RANGE[1]:g}')
    p.add_argument('--leads', default=None,
                   help='comma-separated lead names of NPY/NPZ columns, e.g. I,II,III,aVR,...')
    p.add_argument('--units', default='mV', help='units of CSV/NPY/NPZ values: mV, uV or V')
    p.add_argument('--normalize', choices=('stats', 'record'), default='stats',
                   help='per-lead z-score with the statistics stored with the model or '
                        'given by --stats (stats, default) or with each record\'s own '
                        'mean/std (record)')
    p.add_argument('--fill-missing', choices=('none', 'zero'), default='none',
                   help='missing leads: error (none, default) or zeros with a warning')
    p.add_argument('--pad', action='store_true',
                   help='zero-pad records shorter than the window instead of failing them')
    p.add_argument('--highpass', type=_number(float, low=0.0, low_open=True, unit=' Hz'),
                   default=None, metavar='HZ',
                   help='zero-phase Butterworth high-pass before resampling (e.g. 0.5)')
    p.add_argument('--batch-size', type=_COUNT, default=64,
                   help='windows per forward pass (>= 1)')
    p.add_argument('--workers', type=_COUNT, default=min(4, os.cpu_count() or 1),
                   help='threads reading and preprocessing files (>= 1)')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    _add_stats_flags(p, 'normalisation statistics overriding the stored ones')


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument('--resume', action='store_true',
                   help='finish an interrupted run on the same --out: files saved in '
                        '<out>.parts are skipped')
    p.add_argument('--save-every', type=_COUNT, default=500, metavar='N',
                   help='save finished files to <out>.parts every N files (and at least '
                        'every minute), so an interrupted run keeps them')


def _add_stats_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument('--stats', default=None, metavar='JSON',
                   help=f'{what}: {{"mean": [12], "std": [12]}} (canonical lead order, or '
                        f'with a "leads" list), or a lead_stats.json of jepa_ecg.data.source_stats')
    p.add_argument('--stats-source', default=None,
                   help='which source of a multi-source lead_stats.json')


def build_parser() -> argparse.ArgumentParser:
    """The `jepa-ecg` argument parser."""
    parser = _Parser(
        prog=PROG, description='Use ECG-JEPA encoders on your own ECG files.',
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n')[1])
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    p = sub.add_parser('embed', help='per-record embeddings -> .npz or .csv')
    _add_input_flags(p)
    _add_output_flags(p)
    p.add_argument('--window-seconds', type=_SECONDS, default=None,
                   help='window length, > 0 (default: the model\'s pre-training window)')
    p.add_argument('--stride-seconds', type=_SECONDS, default=None,
                   help='hop between windows, > 0 (default: half a window)')
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser('predict', help='class probabilities from a fine-tuned model -> '
                                       '.csv or .npz')
    _add_input_flags(p)
    _add_output_flags(p)
    p.add_argument('--task', default=None,
                   help='task to use from a fine-tuning workdir holding several')
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser('explain', help='per-patch relevance of a fine-tuned model\'s '
                                       'predictions -> PNG + .npz per record')
    _add_input_flags(p, out_help='output folder: <record>_<class>.png and <record>.npz')
    p.add_argument('--task', default=None,
                   help='task to use from a fine-tuning workdir holding several')
    p.add_argument('--method', choices=('grad_x_input', 'integrated_gradients'),
                   default='grad_x_input', help='relevance: gradient x input (default) or '
                                                'integrated gradients from the zero baseline')
    p.add_argument('--top-k', type=_COUNT, default=None, metavar='K',
                   help='explain the K most probable classes of a record (default: all)')
    p.add_argument('--steps', type=_COUNT, default=32,
                   help='integrated-gradients path points (>= 1)')
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser('import-torch',
                       help='official ECG-JEPA PyTorch checkpoint -> encoder directory')
    p.add_argument('checkpoint', help='.pt file (full pre-training or minified)')
    p.add_argument('--out', required=True, help='output encoder directory')
    p.add_argument('--weights', choices=('target', 'context'), default='target',
                   help='EMA target encoder (default) or context encoder of a full checkpoint')
    _add_stats_flags(p, 'normalisation statistics to store')
    p.set_defaults(func=cmd_import_torch)

    p = sub.add_parser('export', help='pre-training workdir -> encoder directory '
                                      '(fine-tuning run -> classifier directory)')
    p.add_argument('workdir', help='pre-training workdir (with checkpoints/) -> encoder; or '
                                   'an experiments/finetune.py output -> classifier')
    p.add_argument('--task', default=None, help='task of a multi-task fine-tuning workdir')
    p.add_argument('--out', required=True, help='output encoder directory')
    p.add_argument('--step', type=_number(int, low=0), default=None,
                   help='checkpoint step (default latest)')
    p.add_argument('--weights', choices=('target', 'context'), default='target',
                   help='EMA target encoder (default) or context encoder')
    p.add_argument('--data-dir', default=None,
                   help='TFDS data dir with the sources\' lead_stats.json (default: the run\'s)')
    _add_stats_flags(p, 'normalisation statistics to store')
    p.set_defaults(func=cmd_export)
    return parser


def _errors_or_our_warnings(record) -> bool:
    here = os.path.dirname(os.path.abspath(__file__)) + os.sep
    return record.levelno >= 40 or os.path.abspath(record.pathname).startswith(here)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 ok, 1 some files failed, 2 error).

    The commands import the inference modules (JAX, Flax, Orbax) when they
    run, so `jepa-ecg --help` and usage errors answer at once.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        return int(e.code or 0)
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    # TensorFlow only reads datasets here: its start-up oneDNN notice is noise.
    os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
    if argv is None:
        # A shell command: Orbax's INFO/WARNING lines (e.g. "directory is read
        # only" when restoring) are noise here. Library callers keep their setup.
        # Our own warnings (e.g. a damaged checkpoint skipped) still show.
        from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
        absl_logging.set_verbosity(absl_logging.WARNING)
        absl_logging.get_absl_logger().addFilter(_errors_or_our_warnings)
    try:
        return int(args.func(args) or 0)
    except (CliError, FileNotFoundError, ValueError) as e:
        err(f'error: {e}')
        return 2
    except RunError as e:
        err(f'error: {e}')
        return 1
    except KeyboardInterrupt:
        err('interrupted')
        return 1
    except OSError as e:  # e.g. the disk filled up while writing --out
        err(f'error: {e.filename + ": " if e.filename else ""}{e.strerror or e}')
        return 1


if __name__ == '__main__':
    sys.exit(main())
