"""Pre-training input pipeline benchmark (`python -m experiments.benchmark --what=pipeline`).

`compare_published` (`--what=pipeline_vs_published`) times our pipeline and
the published code's in-memory loader back to back in one process.

The standard cases read the offline synthetic source at two dataset sizes
(memory must not grow with the dataset) and at a rate that needs
resampling, 10 s windows at 500 Hz with masks, each in a fresh Python
process so its peak RSS is its own:

    python -m experiments.pipeline_bench --data_dir=DIR --case=500hz_small --batch=256
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

import numpy as np
import psutil

from jepa_ecg.data import pretrain
from jepa_ecg.data import sources as sources_lib
from jepa_ecg.data import source_stats as stats
from tfds_builders import build

Source = sources_lib.Source
# The same generator at two dataset sizes and at a rate that needs resampling.
BENCHMARK_SOURCES: dict[str, Source] = {
    'bench_500hz': Source('bench_500hz', 'synthetic_ecg/small', 500.0),
    'bench_500hz_large': Source('bench_500hz_large', 'synthetic_ecg/large', 500.0),
    'bench_400hz': Source('bench_400hz', 'synthetic_ecg/small_400hz', 400.0),
}
BENCHMARK_CASES = {
    # case -> (source, what it shows)
    '500hz_small': ('bench_500hz', 'stored at 500 Hz, 512 records'),
    '500hz_large': ('bench_500hz_large', 'stored at 500 Hz, 4096 records'),
    '400hz_resample': ('bench_400hz', 'stored at 400 Hz, resampled to 500 Hz'),
}


def prepare_benchmark_data(data_dir: str) -> None:
    """Builds the benchmark's synthetic datasets and their lead statistics (~1.3 GB)."""
    for src in BENCHMARK_SOURCES.values():
        build.ensure_built(src.tfds_name, data_dir)
        try:
            stats.load_lead_stats(src, data_dir)
        except stats.MissingLeadStatsError:
            stats.save_lead_stats(
                stats.compute_lead_stats(src, data_dir, max_records=256), src, data_dir)


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def measure(mixture: Mapping[str, float], *, data_dir: str, global_batch_size: int = 256,
            fs: float = 500.0, window_seconds: float = 10.0, patch_size: int = 25,
            num_steps: int = 40, warmup_steps: int = 3, seed: int = 0,
            num_threads: int | None = None, worker_count: int = 0,
            sources: Mapping[str, Source] | None = None) -> dict:
    """Records/s of the pipeline (masks included) and the process's peak RSS.

    Returns:
      dict with `records_per_s`, `steps_per_s`, `seconds`, `cpu_seconds` and
      `records_per_cpu_s` (this process's threads; worker processes are not
      counted), `load_average_1min`, `cpus`, `rss_start_mb` (after opening
      the sources), `rss_peak_mb` (max sampled per step), `rss_end_mb`,
      `num_threads`, `worker_count`.
    """
    pipe = pretrain.PretrainPipeline(
        mixture, data_dir=data_dir, global_batch_size=global_batch_size, fs=fs,
        window_seconds=window_seconds, patch_size=patch_size, seed=seed, sources=sources)
    threads = num_threads or pretrain.default_num_threads()
    with pipe.iterator(0, worker_count=worker_count, num_threads=threads) as it:
        rss_start = _rss_mb()
        for _ in range(warmup_steps):
            next(it)
        peak = _rss_mb()
        t0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(num_steps):
            next(it)
            peak = max(peak, _rss_mb())
        seconds = time.perf_counter() - t0
        cpu_seconds = time.process_time() - cpu0
    records = num_steps * global_batch_size
    return {
        'records_per_s': records / seconds, 'steps_per_s': num_steps / seconds,
        'seconds': seconds, 'cpu_seconds': cpu_seconds,
        'records_per_cpu_s': records / max(cpu_seconds, 1e-9),
        'load_average_1min': os.getloadavg()[0], 'cpus': os.cpu_count(),
        'rss_start_mb': rss_start, 'rss_peak_mb': peak, 'rss_end_mb': _rss_mb(),
        'num_threads': threads, 'worker_count': worker_count,
        'global_batch_size': global_batch_size,
    }


def _load_official(official_dir: str, relpath: str) -> Any:
    """One module of the published code, loaded from its file under a private
    name (its `data/` files import nothing of their own package)."""
    path = os.path.join(official_dir, relpath)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: not found; pass the published code\'s folder '
                                '(--official_dir or $JEPA_ECG_OFFICIAL_DIR)')
    name = '_published_' + relpath.replace('/', '_')[:-3]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _PublishedCrop:
    """The published pretrain.py's per-access transform (`TransformECG`):
    a random crop, channels first, a float32 torch tensor."""

    def __init__(self, transforms: Any, crop_size: int):
        self.transforms, self.crop_size = transforms, crop_size

    def __call__(self, x: np.ndarray):
        import torch  # pylint: disable=g-import-not-at-top
        x = self.transforms.random_crop(x, self.crop_size).transpose()
        return torch.from_numpy(x).float()


def published_loader(official_dir: str, reader: Any, lead_stats: Any, *, batch_size: int,
                     fs: float, crop_size: int, patch_size: int, keep_ratio_range,
                     min_block_size: int):
    """The published code's pre-training loader over the records of `reader`.

    As its pretrain.py does: every record read once into one float16 array
    (its `PreprocessECG`: NaNs interpolated, resampled, normalised with the
    given mean/std, clipped to [-5, 5]), held in memory by its `TensorDataset`,
    drawn by its `DatasetRouter`, cropped per access, batched by a torch
    `DataLoader` whose collate function is its `MaskCollator`. The records
    must be at least `crop_size` samples at `fs` (its `.npy` layout).

    Returns:
      (DataLoader, records held).
    """
    from torch.utils.data import DataLoader  # pylint: disable=g-import-not-at-top
    transforms = _load_official(official_dir, 'data/transforms.py')
    utils = _load_official(official_dir, 'data/utils.py')
    masks = _load_official(official_dir, 'data/masks.py')
    mean = np.asarray(lead_stats.mean, np.float16)[None]
    std = np.asarray(lead_stats.std, np.float16)[None]
    data = None
    for i in range(len(reader)):
        signal, record_fs = reader.read(i)
        x = signal.astype(np.float16)  # its dumps are float16
        transforms.interpolate_NaNs_(x)
        if record_fs != fs:
            x = transforms.resample(x, int(fs / record_fs * x.shape[0]))
        x = transforms.normalize_(x, mean_std=(mean, std))
        x.clip(-5, 5, out=x)
        if data is None:
            data = np.empty((len(reader), crop_size, x.shape[1]), np.float16)
        data[i] = x[:crop_size]  # one length for all, as in its .npy dumps
    dataset = utils.TensorDataset(data=data, transform=_PublishedCrop(transforms, crop_size))
    loader = DataLoader(
        dataset=utils.DatasetRouter([(dataset, 1.0)]), batch_size=batch_size,
        collate_fn=masks.MaskCollator(patch_size=patch_size, min_block_size=min_block_size,
                                      min_keep_ratio=keep_ratio_range[0],
                                      max_keep_ratio=keep_ratio_range[1]),
        num_workers=0)
    return loader, len(data)


def compare_published(official_dir: str, source: str, *, data_dir: str,
                      global_batch_size: int = 256, fs: float, window_seconds: float = 10.0,
                      patch_size: int, keep_ratio_range=(0.15, 0.25),
                      min_block_size: int = 10, reps: int = 7, steps_per_rep: int = 8,
                      seed: int = 0, sources: Mapping[str, Source] | None = None) -> dict:
    """Records/s of our pipeline and of the published loader, back to back.

    Both run in the calling thread on one core (torch limited to one
    thread, no worker processes, nothing prepared ahead), so the figures
    compare the work per batch: the records of `source`'s pre-training
    split, the same batch size, window and block masks. The repetitions
    alternate (the side going first alternates too).

    Returns:
      dict with `ours_records_per_s`, `published_records_per_s` (medians),
      `ratio` (median of the per-repetition ratios), the same per CPU
      second (`*_records_per_cpu_s`, `cpu_ratio`), the per-repetition
      figures and this process's peak RSS.
    """
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(1)
    pipe = pretrain.PretrainPipeline(
        {source: 1.0}, data_dir=data_dir, global_batch_size=global_batch_size, fs=fs,
        window_seconds=window_seconds, patch_size=patch_size,
        keep_ratio_range=keep_ratio_range, min_block_size=min_block_size, seed=seed,
        sources=sources)
    opened = pipe._read.opened[0]  # pylint: disable=protected-access
    loader, held = published_loader(
        official_dir, opened.reader, opened.stats, batch_size=global_batch_size, fs=fs,
        crop_size=pipe.length, patch_size=patch_size, keep_ratio_range=keep_ratio_range,
        min_block_size=min_block_size)
    np.random.seed(seed)
    torch.manual_seed(seed)
    published = iter(loader)
    step = 0

    def ours() -> None:
        nonlocal step
        pipe.batch(step)
        step += 1

    sides = {'ours': ours, 'published': lambda: next(published)}
    for run in sides.values():  # warm-up
        run()
    rates = {name: [] for name in sides}
    cpu_rates = {name: [] for name in sides}
    load_before = os.getloadavg()[0]
    records = steps_per_rep * global_batch_size
    for r in range(reps):
        for name in (sorted(sides) if r % 2 else sorted(sides, reverse=True)):
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps_per_rep):
                sides[name]()
            rates[name].append(records / (time.perf_counter() - t0))
            cpu_rates[name].append(records / max(time.process_time() - c0, 1e-9))
    ratios = [o / p for o, p in zip(rates['ours'], rates['published'])]
    cpu_ratios = [o / p for o, p in zip(cpu_rates['ours'], cpu_rates['published'])]
    return {
        'ours_records_per_s': statistics.median(rates['ours']),
        'published_records_per_s': statistics.median(rates['published']),
        'ratio': statistics.median(ratios), 'ratios': ratios,
        # CPU seconds of this process: less disturbed by other tenants.
        'ours_records_per_cpu_s': statistics.median(cpu_rates['ours']),
        'published_records_per_cpu_s': statistics.median(cpu_rates['published']),
        'cpu_ratio': statistics.median(cpu_ratios),
        'ours_reps': rates['ours'], 'published_reps': rates['published'],
        'reps': reps, 'steps_per_rep': steps_per_rep, 'records_held': held,
        'source': source, 'global_batch_size': global_batch_size, 'fs': fs,
        'window_samples': pipe.length, 'patch_size': patch_size,
        'load_avg_1m': [load_before, os.getloadavg()[0]],
        # Both sides together (the published one holds every record).
        'rss_peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_suite(data_dir: str, *, cases: Sequence[str] = tuple(BENCHMARK_CASES),
              global_batch_size: int = 256, num_steps: int = 40,
              num_threads: int | None = None, worker_counts: Sequence[int] = (0,)) -> list[dict]:
    """Every case x worker count, each in a fresh interpreter.

    Returns:
      one `measure` result per run, with `case` and `description`.
    """
    prepare_benchmark_data(data_dir)
    results = []
    for case in cases:
        for workers in worker_counts:
            cmd = [sys.executable, '-m', 'experiments.pipeline_bench', f'--data_dir={data_dir}',
                   f'--case={case}', f'--batch={global_batch_size}', f'--steps={num_steps}',
                   f'--worker_count={workers}']
            if num_threads:
                cmd.append(f'--num_threads={num_threads}')
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            result.update(case=case, description=BENCHMARK_CASES[case][1])
            results.append(result)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """One case in this process; prints its result as one JSON line."""
    import argparse  # pylint: disable=g-import-not-at-top  (only this entry point parses)
    parser = argparse.ArgumentParser(description='one pipeline benchmark case')
    parser.add_argument('--data_dir', required=True)
    parser.add_argument('--case', choices=sorted(BENCHMARK_CASES), required=True)
    parser.add_argument('--batch', type=int, default=256)
    parser.add_argument('--steps', type=int, default=40)
    parser.add_argument('--num_threads', type=int, default=None)
    parser.add_argument('--worker_count', type=int, default=0)
    args = parser.parse_args(argv)
    source, _ = BENCHMARK_CASES[args.case]
    result = measure({source: 1.0}, data_dir=args.data_dir, global_batch_size=args.batch,
                     num_steps=args.steps, num_threads=args.num_threads,
                     worker_count=args.worker_count, sources=BENCHMARK_SOURCES)
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
