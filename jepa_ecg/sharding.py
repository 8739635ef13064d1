"""Data parallelism over a 1D device mesh: batch sharded, state replicated.

The same code runs on one CPU, the 8 cores of a TPU host or a multi-host
pod: every process passes its local share of the batch and gets a global
`jax.Array` laid out over all devices.
"""

from __future__ import annotations

import collections
import inspect
import os
from typing import Callable, Iterable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with one 'data' axis over `devices` (default: all, every process)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def jit_data_parallel(fn: Callable, mesh: Mesh, *, batch_argnums: Sequence[int] = (1,),
                      donate_argnums: Sequence[int] = ()) -> Callable:
    """`jax.jit(fn)` laid out for data parallelism over `mesh`.

    The arguments at `batch_argnums` are split along their first axis over
    the 'data' axis; every other argument (state, params, keys) and every
    output are replicated. Donating the state lets XLA update it in place.

    Args:
      fn: a pure function of positional arguments.
      mesh: from make_mesh.
      batch_argnums: positions of the batch arguments.
      donate_argnums: positions of arguments whose buffers the call may reuse.

    Returns:
      The jitted function.
    """
    num_args = len(inspect.signature(fn).parameters)
    repl, batch = replicated(mesh), batch_sharded(mesh)
    in_shardings = tuple(batch if i in batch_argnums else repl for i in range(num_args))
    return jax.jit(fn, in_shardings=in_shardings, out_shardings=repl,
                   donate_argnums=tuple(donate_argnums))


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """This process's share of the global batch; checks divisibility."""
    n_dev = mesh.devices.size
    if global_batch_size % n_dev:
        raise ValueError(f'global batch {global_batch_size} is not divisible by the '
                         f'{n_dev} devices of the mesh')
    n_proc = jax.process_count()
    return global_batch_size // n_proc


def host_to_global(batch: dict, mesh: Mesh) -> dict:
    """Assembles each process's local numpy batch into global sharded arrays."""
    sharding = batch_sharded(mesh)
    n_proc = jax.process_count()

    def put(x):
        x = np.asarray(x)
        global_shape = (x.shape[0] * n_proc,) + x.shape[1:]
        return jax.make_array_from_process_local_data(sharding, x, global_shape)
    return jax.tree_util.tree_map(put, batch)


def prefetch_to_device(batches: Iterable[dict], mesh: Mesh, size: int = 2) -> Iterator[dict]:
    """Yields global device batches, keeping `size` batches in flight.

    `host_to_global` starts an asynchronous host-to-device copy, so while
    the step on batch i runs, batches i+1..i+size are already being moved:
    the step never waits for a transfer and nothing blocks the host (no
    host sync). Items are local numpy batches as the input pipeline yields.
    """
    queue: collections.deque = collections.deque()
    it = iter(batches)

    def enqueue(n):
        for _ in range(n):
            try:
                queue.append(host_to_global(next(it), mesh))
            except StopIteration:
                return

    enqueue(max(1, size))
    while queue:
        batch = queue.popleft()
        enqueue(1)
        yield batch


def initialize_distributed() -> None:
    """Calls jax.distributed.initialize() when launched as one of several processes.

    On TPU pods and SLURM/Kubernetes GPU clusters JAX finds the coordinator
    by itself; elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID. Does nothing for a plain single-process run.
    """
    n = os.environ.get('JAX_NUM_PROCESSES')
    if n is not None and int(n) > 1:
        # Only affects CPU devices; must be set before the backends start.
        jax.config.update('jax_cpu_collectives_implementation', 'gloo')
        jax.distributed.initialize(
            coordinator_address=os.environ['JAX_COORDINATOR_ADDRESS'],
            num_processes=int(n), process_id=int(os.environ['JAX_PROCESS_ID']))
    elif any(k in os.environ for k in ('TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS')):
        jax.distributed.initialize()


def hide_accelerators_from_tensorflow() -> None:
    """Keeps TensorFlow (used by TFDS) off the GPUs/TPUs that JAX uses."""
    try:
        import tensorflow as tf
    except ImportError:
        return
    for kind in ('GPU', 'TPU'):
        try:
            tf.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError):  # no such devices, or already initialised
            pass
