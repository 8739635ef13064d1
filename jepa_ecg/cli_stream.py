"""`jepa-ecg embed` and `predict`: a folder of ECG files through a model into one file.

The output path is claimed for the run (`<out>.lock`), finished files are
saved in atomic parts as they complete (`<out>.parts/`), so an interrupted run
keeps them and `--resume` skips them, and the parts are merged into `--out`
at the end (`jepa_ecg.inference.outputs`). Windows are cut a batch at a time
(`inference.stream.LazyWindows`), so memory does not grow with the number of
windows of a record.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from typing import Callable

PROG = 'jepa-ecg'



class CliError(Exception):
    """A usage problem reported as one line, exit status 2."""


class RunError(Exception):
    """A problem met while running (busy output, interrupted, nothing to read): exit status 1."""


def err(msg: str) -> None:
    """Prints `jepa-ecg: msg` on stderr."""
    print(f'{PROG}: {msg}', file=sys.stderr, flush=True)


def check_out(path: str) -> None:
    """Fails before any work when `--out` cannot be written (creating its folder)."""
    if os.path.isdir(path):
        raise CliError(f'--out {path} is a directory; give a file name')
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix='.jepa-ecg-write-test-'):
            pass
        if os.path.exists(path) and not os.access(path, os.W_OK):
            raise PermissionError(f'{path} is read-only')
    except OSError as e:
        raise CliError(f'--out {path} cannot be written ({e.strerror or e}); nothing was '
                       f'processed') from None


def stats_override(args: argparse.Namespace):
    from jepa_ecg.data import stats as stats_lib  # pylint: disable=g-import-not-at-top
    return stats_lib.read_lead_stats_file(args.stats, args.stats_source) if args.stats else None


# ------------------------------------------------------------ streaming
def _find_files(args: argparse.Namespace) -> list[str]:
    """The record files of `args.files`; none is an error listing what was skipped."""
    from jepa_ecg.ecg import files as files_lib  # pylint: disable=g-import-not-at-top
    paths, skipped = files_lib.scan_records(args.files)
    if paths:
        return paths
    by_reason: dict[str, list[str]] = {}
    for path, reason in skipped:
        by_reason.setdefault(reason, []).append(path)
    lines = [f'{len(v)} {k} (e.g. {", ".join(os.path.basename(p) for p in v[:3])})'
             for k, v in sorted(by_reason.items(), key=lambda kv: -len(kv[1]))]
    raise RunError(f'no ECG files found in {" ".join(args.files)}'
                   + (f'; skipped {len(skipped)}:\n  ' + '\n  '.join(lines) if lines else ''))


def _run_options(args: argparse.Namespace, **extra) -> dict:
    """What decides a run's results: a resumed run must use the same."""
    keys = ('command', 'normalize', 'fill_missing', 'pad', 'highpass', 'fs', 'leads', 'units',
            'stats_source')
    opts = {k: getattr(args, k) for k in keys}
    opts.update(checkpoint=os.path.abspath(args.checkpoint),
                stats=os.path.abspath(args.stats) if args.stats else None, **extra)
    return opts


def _stream(args: argparse.Namespace, encoder, prepare_windows: Callable, forward: Callable,
            output_shape: tuple[int, ...], options: dict):
    """Runs `forward` over every record of `args.files`, saving finished files as parts.

    Returns:
      (`inference.stream.StreamResult` of this run, its `outputs.Parts`, the
      input files in order, number of files done by an earlier run).
    """
    from jepa_ecg.ecg import files as files_lib  # pylint: disable=g-import-not-at-top
    from jepa_ecg.inference import outputs, stream  # pylint: disable=g-import-not-at-top

    paths = _find_files(args)
    fill = None if args.fill_missing == 'none' else args.fill_missing

    def prepare(sig, fs, leads, name):
        x = encoder.preprocess(sig, fs, leads, normalize=args.normalize, fill_missing=fill,
                               highpass_hz=args.highpass, name=name)
        return prepare_windows(x, name)

    parts = outputs.Parts(args.out, options, output_shape, save_every=args.save_every)
    done = parts.start(args.resume)
    todo = [p for p in paths if p not in done]
    if done:
        err(f'resuming: {len(paths) - len(todo)} of {len(paths)} files already done '
            f'(saved in {parts.dir})')

    def on_file(path, records, errors):
        parts.add(path, [(item.name, mean, count) for item, mean, count in records], errors)

    read = stream.ReadOptions(fs=args.fs, leads=files_lib.parse_leads(args.leads),
                              units=args.units)
    try:
        with stream.Progress(len(todo), args.command, enabled=not args.quiet,
                             prefix=f'{PROG}: ') as progress:
            result = stream.stream_files(
                todo, read=read, prepare=prepare, model_leads=encoder.leads, forward=forward,
                batch_size=args.batch_size, workers=args.workers, progress=progress,
                on_file=on_file)
    except (KeyboardInterrupt, _Terminated) as e:
        parts.save()  # the files finished since the last part
        kept = len(parts.merge(paths).names)
        raise RunError(f'interrupted ({str(e) or "SIGINT"}): {kept} record(s) of finished files '
                       f'are saved in {parts.dir}; rerun the same command with --resume to '
                       f'finish') from None
    return result, parts, paths, len(paths) - len(todo)


class _Terminated(Exception):
    """SIGTERM (a scheduler or preemptible VM stopping the job), raised in the main thread."""


def _on_sigterm(signum, frame):
    del frame
    raise _Terminated(signal.Signals(signum).name)


def _streaming_command(run: Callable[[argparse.Namespace], int]):
    """Wraps embed/predict: `--out` claimed for the run, SIGTERM stops it cleanly."""
    def command(args: argparse.Namespace) -> int:
        from jepa_ecg.inference import outputs  # pylint: disable=g-import-not-at-top
        check_out(args.out)
        try:
            outputs.output_format(args.out)
        except ValueError as e:
            raise CliError(str(e)) from None
        # Signal handlers can only be set from the main thread (library callers may differ).
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
        try:
            with outputs.claim(args.out):
                return run(args)
        except outputs.OutputError as e:
            raise RunError(str(e)) from None
        except _Terminated as e:  # before the first file or while writing --out
            raise RunError(f'interrupted ({e}); any finished files stay in {args.out}.parts: '
                           f'rerun the same command with --resume') from None
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
    command.__doc__ = run.__doc__
    return command


def _finish(parts, paths, write: Callable) -> bool:
    """Merges the parts, writes `--out` with `write(merged)`, removes the parts.

    Returns:
      whether `--out` was written (not when no record went through).
    """
    merged = parts.merge(paths)
    if len(merged.names):
        write(merged)
    parts.remove()
    return bool(len(merged.names))


def _report(verb: str, result, out: str | None, resumed: int = 0) -> int:
    n = len(result.records)
    msg = (f'{verb} {n} records ({result.num_windows} windows) in {result.seconds:.1f} s: '
           f'{n / max(result.seconds, 1e-9):.1f} records/s')
    if resumed:
        msg += f'; {resumed} files done before kept'
    if result.failed:
        msg += f'; {len(result.failed)} failed'
    if out:
        msg += f' -> {out}'
    print(msg, flush=True)
    if result.failed:
        err(f'{len(result.failed)} file(s) failed:')
        _list_failures(result.failed)
        return 1
    return 0


def _list_failures(failed: list[tuple[str, str]], limit: int = 10) -> None:
    """Each failure, or for many of them counts per reason with a few file names."""
    if len(failed) <= limit:
        for _, reason in failed:
            err(f'  {reason}')
        return
    by_reason: dict[str, list[str]] = {}
    for path, reason in failed:
        by_reason.setdefault(reason.replace(path, '').lstrip(': '), []).append(path)
    groups = sorted(by_reason.items(), key=lambda kv: -len(kv[1]))
    for reason, paths in groups[:limit]:
        err(f'  {len(paths)} x {reason} (e.g. {", ".join(paths[:3])})')
    if len(groups) > limit:
        err(f'  ... and {len(groups) - limit} other reasons '
            f'({sum(len(v) for _, v in groups[limit:])} files)')


def need_stats(enc, args: argparse.Namespace, fix: str) -> None:
    if args.normalize != 'record' and enc.lead_stats is None:
        raise CliError(f'{args.checkpoint} carries no normalisation statistics: pass {fix}')


# --------------------------------------------------------------- commands
def _embed(args: argparse.Namespace) -> int:
    """Per-record embeddings (patch-token mean and register token) as NPZ or CSV."""
    from jepa_ecg.inference import outputs, runs, stream  # pylint: disable=g-import-not-at-top
    enc = runs.load_encoder(args.checkpoint, lead_stats=stats_override(args))
    need_stats(enc, args, '--normalize=record, or re-export / re-import it with --stats')
    try:
        length, stride = enc.window_and_stride(args.window_seconds, args.stride_seconds)
    except ValueError as e:
        raise CliError(f'--window-seconds: {e}') from None
    patch = enc.config.patch_size
    if stride < patch:
        raise CliError(f'--stride-seconds {args.stride_seconds:g} is below one patch '
                       f'({patch / enc.fs:g} s at {enc.fs:g} Hz): use at least that')

    def windows(x, name):
        return stream.lazy_windows(x, length=length, stride=stride, patch_size=patch,
                                   fs=enc.fs, pad=args.pad, name=name)

    info = {'model': enc.config.to_dict(), 'leads': list(enc.leads),
            'normalize': args.normalize, 'provenance': enc.meta.get('provenance', {}),
            'checkpoint': os.path.abspath(args.checkpoint)}
    result, parts, paths, resumed = _stream(
        args, enc, windows, enc.window_embeddings, (2, enc.dim),
        _run_options(args, window=length, stride=stride))
    written = _finish(parts, paths, lambda merged: outputs.write_embeddings(
        args.out, merged, registers=bool(enc.config.num_registers), info=info))
    return _report('embedded', result, args.out if written else None, resumed)


def _predict(args: argparse.Namespace) -> int:
    """Class probabilities per record as CSV or NPZ."""
    from jepa_ecg.inference import outputs, runs, stream  # pylint: disable=g-import-not-at-top
    clf = runs.load_classifier(args.checkpoint, task=args.task,
                               lead_stats=stats_override(args))
    need_stats(clf.encoder, args, '--stats FILE.json (the fine-tuning train-fold '
                                   'statistics) or --normalize=record')
    enc = clf.encoder
    length, stride = enc.window_and_stride(clf.crop_seconds, clf.stride_seconds)

    def windows(x, name):
        wins, _ = stream.lazy_windows(x, length=length, stride=stride,
                                      patch_size=enc.config.patch_size, fs=enc.fs,
                                      pad=args.pad, name=name)
        return wins, 0

    result, parts, paths, resumed = _stream(
        args, enc, windows, clf.window_logits, (len(clf.class_names),),
        _run_options(args, task=args.task, classes=list(clf.class_names)))
    # Logits averaged over a record's windows, then sigmoid/softmax (as in evaluation).
    written = _finish(parts, paths, lambda merged: outputs.write_predictions(
        args.out, merged, clf.probabilities(merged.outputs), clf.class_names))
    return _report('predicted', result, args.out if written else None, resumed)


cmd_embed = _streaming_command(_embed)
cmd_predict = _streaming_command(_predict)
