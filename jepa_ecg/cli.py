"""`jepa-ecg`: use a trained ECG-JEPA model on your own ECG files.

    jepa-ecg export runs/xs_ptbxl --out encoders/xs_ptbxl
    jepa-ecg import-torch ViTS_all.min.pt --out encoders/vits_all --stats stats.json
    jepa-ecg embed my_ecgs/ --checkpoint encoders/xs_ptbxl --out emb.npz
    jepa-ecg predict a.hea b.csv --checkpoint runs/finetune/classifier --out preds.csv

Inputs of `embed`/`predict` (see `jepa_ecg.io`): WFDB records (`.hea` with
`.dat` or `.mat`), CSV (one column per lead, header = lead names), NPY/NPZ
(`--fs`, `--leads`), and folders of those. Any sampling rate (resampled to the
model's), any lead order (matched by name). Records longer than the window
are cut into overlapping windows whose outputs are averaged; shorter ones are
an error unless `--pad`. Missing leads are an error listing them unless
`--fill-missing=zero`. A file that cannot be read is reported by name and
the others are still processed (exit status 1 when any failed).

Outputs:
  embed    NPZ with `mean` (N, dim) patch-token mean, `register` (N, dim)
           register-token output, `names` and `paths` (N,), `num_windows`
           (N,), `failed` (paths that could not be processed), `encoder`
           (JSON of the encoder's config and provenance).
  predict  CSV `record,path,<class 1>,...` with class probabilities.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import sys
import time
import warnings
from typing import Any, Callable, Sequence

import numpy as np

PROG = 'jepa-ecg'


class CliError(Exception):
    """A usage problem reported as one line, exit status 2."""


# ------------------------------------------------------------------ helpers
def _err(msg: str) -> None:
    _write(f'{PROG}: {msg}')


_PBAR = None


def _write(msg: str) -> None:
    # Through tqdm when a bar is active, so messages do not tear it.
    if _PBAR is not None:
        _PBAR.write(msg, file=sys.stderr)
    else:
        print(msg, file=sys.stderr, flush=True)


def _load_stats_file(path: str, source: str | None = None) -> dict:
    """{'mean', 'std'} from a JSON file: flat, or keyed by source (lead_stats.json)."""
    with open(path, encoding='utf-8') as f:
        doc = json.load(f)
    if 'mean' not in doc:
        keys = [k for k, v in doc.items() if isinstance(v, dict) and 'mean' in v]
        if source is None and len(keys) == 1:
            source = keys[0]
        if source not in keys:
            raise CliError(f'{path}: pick the statistics of one source with --stats-source '
                           f'(has {keys})')
        doc = {**doc[source], 'source': doc[source].get('source', source)}
    stats = {'mean': [float(v) for v in doc['mean']], 'std': [float(v) for v in doc['std']],
             'source': doc.get('source', os.path.abspath(path))}
    if 'leads' in doc:
        from jepa_ecg.leads import LEADS, lead_permutation  # pylint: disable=g-import-not-at-top
        perm = lead_permutation(doc['leads'], LEADS)
        stats['mean'] = [stats['mean'][i] for i in perm]
        stats['std'] = [stats['std'][i] for i in perm]
    if len(stats['mean']) != 12 or len(stats['std']) != 12:
        raise CliError(f'{path}: want 12 means and 12 stds')
    return stats


@dataclasses.dataclass
class _Item:
    """One input record after reading, preprocessing and windowing."""
    name: str
    path: str
    windows: np.ndarray | None = None
    valid: int = 0
    missing: tuple[str, ...] = ()
    error: str | None = None
    assumed_leads: bool = False


@dataclasses.dataclass
class _RunResult:
    items: list[_Item]
    outputs: list[np.ndarray]  # per successful item: (windows, ...) model outputs
    failed: list[tuple[str, str]]
    seconds: float


def _add_input_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument('files', nargs='+', metavar='FILES',
                   help='WFDB .hea/.dat/.mat, .csv, .npy, .npz files, or folders of them')
    p.add_argument('--checkpoint', required=True,
                   help='embed: encoder directory (export / import-torch) or pre-training '
                        'workdir; predict: classifier directory (export of a fine-tuning run) '
                        'or experiments/finetune.py output')
    p.add_argument('--out', required=True, help='output file')
    p.add_argument('--fs', type=float, default=None,
                   help='sampling rate (Hz) of files that do not store it (NPY, NPZ, CSV)')
    p.add_argument('--leads', default=None,
                   help='comma-separated lead names of NPY/NPZ columns, e.g. I,II,III,aVR,...')
    p.add_argument('--units', default='mV', help='units of CSV/NPY/NPZ values: mV, uV or V')
    p.add_argument('--normalize', choices=('stored', 'record'), default='stored',
                   help='per-lead z-score with the statistics stored with the model '
                        '(default) or with each record\'s own mean/std')
    p.add_argument('--fill-missing', choices=('none', 'zero'), default='none',
                   help='missing leads: error (none, default) or zeros with a warning')
    p.add_argument('--pad', action='store_true',
                   help='zero-pad records shorter than the window instead of failing them')
    p.add_argument('--highpass', type=float, default=None, metavar='HZ',
                   help='zero-phase Butterworth high-pass before resampling (e.g. 0.5)')
    p.add_argument('--batch-size', type=int, default=64, help='windows per forward pass')
    p.add_argument('--workers', type=int, default=min(4, os.cpu_count() or 1),
                   help='threads reading and preprocessing files')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    p.add_argument('--stats', default=None, metavar='JSON',
                   help='normalisation statistics overriding the stored ones '
                        '({"mean": [12], "std": [12]}, canonical lead order)')
    p.add_argument('--stats-source', default=None,
                   help='which source of a multi-source lead_stats.json')


def _run(args: argparse.Namespace, encoder, window_fn: Callable[[np.ndarray, str], Any],
         forward: Callable[[np.ndarray, np.ndarray], np.ndarray], what: str) -> _RunResult:
    """Reads, preprocesses and windows every record; runs `forward` on full batches.

    Args:
      args: parsed flags (`_add_input_flags`).
      encoder: an `Encoder` (lead order, preprocessing).
      window_fn: (preprocessed signal, path) -> (windows (W, T, leads), valid
        patches per window).
      forward: (windows (B, T, leads), valid patches (B,)) -> (B, ...) outputs.
      what: progress bar label.

    Returns:
      the processed items (in input order), each one's per-window outputs,
      and the failures.

    File reading and preprocessing run in a thread pool ahead of the model
    (numpy/scipy release the GIL); windows of several records share a batch.
    """
    global _PBAR
    from jepa_ecg import encoder as encoder_lib  # pylint: disable=g-import-not-at-top
    from jepa_ecg import io  # pylint: disable=g-import-not-at-top
    from jepa_ecg.leads import missing_leads  # pylint: disable=g-import-not-at-top

    paths = io.find_records(args.files)
    if not paths:
        raise CliError(f'no ECG files found in {args.files}')
    leads_arg = io.parse_leads(args.leads)
    fill = None if args.fill_missing == 'none' else args.fill_missing

    def prepare(path: str) -> list[_Item]:
        try:
            records = io.read_records(path, fs=args.fs, leads=leads_arg, units=args.units)
        except io.RecordReadError as e:
            return [_Item(os.path.basename(path), path, error=str(e))]
        except Exception as e:  # pylint: disable=broad-except
            # One bad file must not end a run over thousands.
            return [_Item(os.path.basename(path), path,
                          error=f'{path}: {type(e).__name__}: {e}')]
        out = []
        for rec in records:
            item = _Item(rec.name, path, assumed_leads=rec.assumed_leads)
            try:
                item.missing = tuple(missing_leads(rec.leads, encoder.leads))
                x = encoder.preprocess(rec.signal, rec.fs, rec.leads, normalize=args.normalize,
                                       fill_missing=fill, highpass_hz=args.highpass,
                                       name=path)
                item.windows, item.valid = window_fn(x, path)
            except ValueError as e:  # missing leads, too short, all-NaN leads, ...
                item.error = str(e) if path in str(e) else f'{path}: {e}'
            except Exception as e:  # pylint: disable=broad-except
                item.error = f'{path}: {type(e).__name__}: {e}'
            out.append(item)
        return out

    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    items: list[_Item] = []
    assumed = 0
    failed: list[tuple[str, str]] = []
    pending: list[tuple[int, np.ndarray, int]] = []  # (item, windows, valid) awaiting a batch
    pending_n = 0
    per_item: dict[int, list[np.ndarray]] = {}
    bs = max(1, int(args.batch_size))

    def flush(final: bool = False) -> None:
        nonlocal pending, pending_n
        while pending_n >= bs or (final and pending_n):
            take, rest, n = [], [], 0
            for idx, w, v in pending:
                if n >= bs:
                    rest.append((idx, w, v))
                    continue
                k = min(len(w), bs - n)
                take.append((idx, w[:k], v))
                if k < len(w):
                    rest.append((idx, w[k:], v))
                n += k
            batch = np.concatenate([w for _, w, _ in take])
            valid = np.concatenate([np.full(len(w), v, np.int32) for _, w, v in take])
            out = np.asarray(forward(batch, valid))
            pos = 0
            for idx, w, _ in take:
                per_item.setdefault(idx, []).append(out[pos:pos + len(w)])
                pos += len(w)
            pending = rest
            pending_n = sum(len(w) for _, w, _ in rest)

    start = time.time()
    workers = max(1, int(args.workers))
    # The CLI reports these itself (once per record / once per run); set once
    # here because warning filters are process-wide, not per thread.
    restore_filters = warnings.catch_warnings()
    restore_filters.__enter__()
    warnings.simplefilter('ignore', encoder_lib.MissingLeadsWarning)
    warnings.simplefilter('ignore', io.AssumedLeadOrderWarning)
    bar = tqdm(total=len(paths), unit='file', desc=what, disable=args.quiet, file=sys.stderr,
               dynamic_ncols=True)
    _PBAR = None if args.quiet else bar
    try:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            ahead = 4 * workers  # bounded read-ahead keeps memory flat on big folders
            futures = [pool.submit(prepare, p) for p in paths[:ahead]]
            next_path = len(futures)
            for i in range(len(paths)):
                result = futures[i].result()
                futures[i] = None  # release the windows once consumed
                if next_path < len(paths):
                    futures.append(pool.submit(prepare, paths[next_path]))
                    next_path += 1
                for item in result:
                    if item.error is not None:
                        failed.append((item.path, item.error))
                        _err(f'error: {item.error}')
                        continue
                    if item.assumed_leads and not assumed:
                        _err(f'warning: {item.path} (and maybe others) does not name its '
                             f'leads: assuming I,II,III,aVR,aVL,aVF,V1-V6 (pass --leads)')
                    assumed += item.assumed_leads
                    if item.missing:
                        _err(f'warning: {item.path}: missing leads {list(item.missing)} '
                             f'filled with zeros')
                    idx = len(items)
                    items.append(item)
                    pending.append((idx, item.windows, item.valid))
                    pending_n += len(item.windows)
                    item.windows = None
                flush()
                bar.update(1)
                elapsed = max(time.time() - start, 1e-9)
                bar.set_postfix_str(f'{len(items) / elapsed:.1f} rec/s, {len(failed)} failed',
                                    refresh=False)
            flush(final=True)
    finally:
        bar.close()
        _PBAR = None
        restore_filters.__exit__(None, None, None)
    outputs = [np.concatenate(per_item[i]) for i in range(len(items))]
    return _RunResult(items, outputs, failed, time.time() - start)


def _report(verb: str, result: _RunResult, out: str | None) -> int:
    n = len(result.items)
    windows = sum(len(o) for o in result.outputs)
    rate = n / max(result.seconds, 1e-9)
    msg = (f'{verb} {n} records ({windows} windows) in {result.seconds:.1f} s: '
           f'{rate:.1f} records/s')
    if result.failed:
        msg += f'; {len(result.failed)} failed'
    if out:
        msg += f' -> {out}'
    print(msg, flush=True)
    if result.failed:
        _err(f'{len(result.failed)} file(s) failed:')
        for path, reason in result.failed:
            _err(f'  {reason}')
        return 1
    return 0


# --------------------------------------------------------------- commands
def cmd_embed(args: argparse.Namespace) -> int:
    """Per-record embeddings (patch-token mean and register token) as NPZ."""
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from jepa_ecg import encoder as encoder_lib  # pylint: disable=g-import-not-at-top
    enc = encoder_lib.load_encoder(args.checkpoint, lead_stats=_stats_override(args))
    if args.normalize == 'stored' and enc.lead_stats is None:
        raise CliError(f'{args.checkpoint} carries no normalisation statistics: pass '
                       f'--normalize=record, or re-export / re-import it with --stats')
    win = enc.seconds_to_samples(args.window_seconds)
    stride = enc.seconds_to_samples(args.stride_seconds)
    r = enc.config.num_registers
    model = enc.module()
    params = jax.device_put(enc.params)

    @jax.jit
    def pooled(p, x, valid):
        # Pool on device: only (B, 2, dim) comes back instead of every token.
        out = model.apply({'params': p}, x, keep_registers=True)
        tokens = out[:, r:]
        mask = (jnp.arange(tokens.shape[1])[None, :] < valid[:, None]).astype(tokens.dtype)
        mean = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        reg = out[:, :r].mean(1) if r else jnp.zeros_like(mean)
        return jnp.stack([mean, reg], axis=1)

    def forward(batch, valid):
        k = batch.shape[0]
        x = encoder_lib.pad_batch(batch, args.batch_size)
        v = np.concatenate([valid, np.ones(x.shape[0] - k, np.int32)])
        return np.asarray(pooled(params, x, v))[:k]

    def window_fn(x, name):
        return enc.windows(x, window_samples=win, stride_samples=stride, pad=args.pad,
                           name=name)

    result = _run(args, enc, window_fn, forward, 'embed')
    dim = enc.config.dim
    if result.items:
        per_record = np.stack([o.mean(0) for o in result.outputs])  # windows averaged
    else:
        per_record = np.zeros((0, 2, dim), np.float32)
    info = {'model': enc.config.to_dict(), 'leads': list(enc.leads),
            'normalize': args.normalize, 'provenance': enc.meta.get('provenance', {}),
            'checkpoint': os.path.abspath(args.checkpoint)}
    if result.items or not result.failed:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        arrays = dict(
            mean=per_record[:, 0].astype(np.float32),
            names=np.asarray([it.name for it in result.items], dtype=str),
            paths=np.asarray([it.path for it in result.items], dtype=str),
            num_windows=np.asarray([len(o) for o in result.outputs], np.int64),
            failed=np.asarray([p for p, _ in result.failed], dtype=str),
            encoder=np.asarray(json.dumps(info)))
        if r:
            arrays['register'] = per_record[:, 1].astype(np.float32)
        np.savez(args.out, **arrays)
    return _report('embedded', result, args.out if result.items else None)


def _stats_override(args: argparse.Namespace) -> dict | None:
    return _load_stats_file(args.stats, args.stats_source) if args.stats else None


def cmd_predict(args: argparse.Namespace) -> int:
    """Class probabilities per record as CSV."""
    import csv  # pylint: disable=g-import-not-at-top
    from jepa_ecg import encoder as encoder_lib  # pylint: disable=g-import-not-at-top
    clf = encoder_lib.load_classifier(args.checkpoint, task=args.task,
                                      lead_stats=_stats_override(args))
    enc = clf.encoder
    if args.normalize == 'stored' and enc.lead_stats is None:
        raise CliError(f'{args.checkpoint} carries no normalisation statistics: pass '
                       f'--stats FILE.json (the fine-tuning train-fold statistics) or '
                       f'--normalize=record')

    def window_fn(x, name):
        return clf.windows(x, pad=args.pad, name=name), 0

    result = _run(args, enc, window_fn,
                  lambda b, v: clf.logits(b, batch_size=args.batch_size), 'predict')
    if result.items:
        # Average logits over a record's windows, then sigmoid/softmax (as in evaluation).
        probs = clf.probabilities(np.stack([o.mean(0) for o in result.outputs]))
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w', newline='', encoding='utf-8') as f:
            w = csv.writer(f)
            w.writerow(['record', 'path'] + clf.class_names)
            for item, row in zip(result.items, probs):
                w.writerow([item.name, item.path] + [f'{p:.6f}' for p in row])
    return _report('predicted', result, args.out if result.items else None)


def cmd_import_torch(args: argparse.Namespace) -> int:
    """Official PyTorch checkpoint -> encoder directory."""
    from jepa_ecg.interop import torch_import  # pylint: disable=g-import-not-at-top
    stats = _load_stats_file(args.stats, args.stats_source) if args.stats else None
    try:
        enc = torch_import.import_torch_checkpoint(args.checkpoint, args.out,
                                                   which=args.weights, lead_stats=stats)
    except ImportError as e:
        raise CliError(str(e)) from None
    _print_encoder(enc, args.out)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Pre-training workdir -> encoder directory; fine-tuning run -> classifier directory."""
    from jepa_ecg import encoder as encoder_lib  # pylint: disable=g-import-not-at-top
    stats = _load_stats_file(args.stats, args.stats_source) if args.stats else None
    run = encoder_lib.find_finetune_run(args.workdir, args.task)
    if run is not None:
        clf = encoder_lib.classifier_from_finetune_run(run, lead_stats=stats)
        clf.save(args.out)
        print(f'wrote {args.out}: classifier of {run} ({len(clf.class_names)} classes, '
              f'task {clf.meta.get("task")}), {clf.encoder!r}')
        if clf.encoder.lead_stats is None:
            _err('warning: no normalisation statistics stored; predict will need --stats or '
                 '--normalize=record')
        return 0
    if stats is None:
        stats = encoder_lib.workdir_lead_stats(args.workdir, data_dir=args.data_dir)
    which = 'params' if args.weights == 'context' else 'target_params'
    enc = encoder_lib.encoder_from_workdir(args.workdir, step=args.step, lead_stats=stats,
                                           which=which)
    enc.save(args.out)
    _print_encoder(enc, args.out)
    return 0


def _print_encoder(enc, out: str) -> None:
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    stats = enc.lead_stats
    print(f'wrote {out} ({size / 1e6:.2f} MB): {enc!r}')
    if stats is None:
        _err('warning: no normalisation statistics stored; embed/predict will need '
             '--normalize=record (or redo this with --stats FILE.json)')
    else:
        print(f'normalisation statistics: {stats.get("source", "given")}')


# ------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The `jepa-ecg` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG, description='Use ECG-JEPA encoders on your own ECG files.',
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n')[1])
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    p = sub.add_parser('embed', help='per-record embeddings -> .npz')
    _add_input_flags(p)
    p.add_argument('--window-seconds', type=float, default=None,
                   help='window length (default: the model\'s pre-training window)')
    p.add_argument('--stride-seconds', type=float, default=None,
                   help='hop between windows (default: half a window)')
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser('predict', help='class probabilities from a fine-tuned model -> .csv')
    _add_input_flags(p)
    p.add_argument('--task', default=None,
                   help='task to use from a fine-tuning workdir holding several')
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser('import-torch',
                       help='official ECG-JEPA PyTorch checkpoint -> encoder directory')
    p.add_argument('checkpoint', help='.pt file (full pre-training or minified)')
    p.add_argument('--out', required=True, help='output encoder directory')
    p.add_argument('--weights', choices=('target_encoder', 'encoder'),
                   default='target_encoder', help='which encoder of a full checkpoint')
    _add_stats_flags(p)
    p.set_defaults(func=cmd_import_torch)

    p = sub.add_parser('export', help='pre-training workdir -> encoder directory '
                                      '(fine-tuning run -> classifier directory)')
    p.add_argument('workdir', help='pre-training workdir (with checkpoints/) -> encoder; or '
                                   'an experiments/finetune.py output -> classifier')
    p.add_argument('--task', default=None, help='task of a multi-task fine-tuning workdir')
    p.add_argument('--out', required=True, help='output encoder directory')
    p.add_argument('--step', type=int, default=None, help='checkpoint step (default latest)')
    p.add_argument('--weights', choices=('target', 'context'), default='target',
                   help='EMA target encoder (default) or context encoder')
    p.add_argument('--data-dir', default=None,
                   help='TFDS data dir with the sources\' lead_stats.json (default: the run\'s)')
    _add_stats_flags(p)
    p.set_defaults(func=cmd_export)
    return parser


def _add_stats_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument('--stats', default=None, metavar='JSON',
                   help='normalisation statistics to store: {"mean": [12], "std": [12]} '
                        '(canonical lead order, or with a "leads" list), or a '
                        'lead_stats.json of jepa_ecg.data.stats')
    p.add_argument('--stats-source', default=None,
                   help='which source of a multi-source lead_stats.json')


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 ok, 1 some files failed, 2 error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    if argv is None:
        # A shell command: Orbax's INFO/WARNING lines (e.g. "directory is read
        # only" when restoring) are noise here. Library callers keep their setup.
        from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
        absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except CliError as e:
        _err(f'error: {e}')
        return 2
    except (FileNotFoundError, ValueError) as e:
        _err(f'error: {e}')
        return 2


if __name__ == '__main__':
    sys.exit(main())
