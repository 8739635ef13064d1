"""Reading records in a `spawn` process pool while the builder writes.

Decoding a record costs more than encoding and writing it, so builders read
in worker processes (`parallel_map`) and keep the main process for TFDS.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import Any, Callable, Iterator, Sequence

from absl import logging

# Below this many records a pool costs more (process start-up) than it saves.
SERIAL_BELOW = 64


def default_processes() -> int:
    """Returns the number of cores this process may use (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def start_pool(processes: int | None = None):
    """Starts a `spawn` process pool (see `parallel_map` for why spawn).

    Args:
      processes: number of workers (default: all available cores).

    Returns:
      A `multiprocessing.pool.Pool`; the caller closes it.
    """
    return multiprocessing.get_context('spawn').Pool(
        processes or default_processes())


def parallel_map(fn: Callable[[Any], Any], items: Sequence[Any], *,
                 processes: int | None = None,
                 chunksize: int | None = None,
                 serial_below: int = SERIAL_BELOW,
                 desc: str = 'records',
                 log_every_s: float = 10.0,
                 pool: Any = None) -> Iterator[Any]:
    """Yields `fn(item)` for every item, in order, using a process pool.

    A `spawn` pool is used (not `fork`): the builder process has TensorFlow's
    threads running, and forking a multi-threaded process can deadlock. `fn`
    must therefore be a top-level function of an importable module. Inputs
    smaller than `serial_below`, or `processes=1`, run in this process.

    Args:
      fn: picklable function of one item.
      items: the inputs.
      processes: pool size (default: all available cores).
      chunksize: items per task sent to a worker (default: about 4 chunks
        per worker and at most 256).
      serial_below: run serially below this many items.
      desc: what the items are, for the progress log.
      log_every_s: seconds between progress log lines.
      pool: a running `multiprocessing` pool to use (not closed here);
        starting a spawn pool costs seconds, so builders keep one per build.

    Yields:
      The results, in the order of `items`.
    """
    total = len(items)
    processes = processes or default_processes()
    start = last_log = time.monotonic()

    def progress(done: int) -> None:
        nonlocal last_log
        now = time.monotonic()
        if now - last_log >= log_every_s or done == total:
            last_log = now
            rate = done / max(now - start, 1e-9)
            logging.info('%s: %d / %d (%.0f/s)', desc, done, total, rate)

    if processes <= 1 or total < serial_below:
        for i, item in enumerate(items, 1):
            yield fn(item)
            progress(i)
        return
    if chunksize is None:
        chunksize = max(1, min(256, total // (processes * 4)))
    if pool is not None:
        for i, result in enumerate(pool.imap(fn, items, chunksize=chunksize), 1):
            yield result
            progress(i)
        return
    with start_pool(processes) as own_pool:
        for i, result in enumerate(own_pool.imap(fn, items, chunksize=chunksize),
                                   1):
            yield result
            progress(i)
