"""Pre-training input pipeline benchmark (`python -m experiments.benchmark --what=pipeline`).

The standard cases read the offline synthetic source at two dataset sizes
(memory must not grow with the dataset) and at a rate that needs
resampling, 10 s windows at 500 Hz with masks, each in a fresh Python
process so its peak RSS is its own:

    python -m experiments.pipeline_bench --data_dir=DIR --case=500hz_small --batch=256
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Mapping, Sequence

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
