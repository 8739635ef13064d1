"""Orbax checkpointing of the whole training state plus the input position.

A checkpoint holds the train state pytree (params, target params, optimiser
state, step, PRNG key) and a small JSON record (step, data position, config).
Orbax writes each checkpoint into a temporary directory and renames it only
when complete, so a process killed mid-save leaves nothing that restores;
the leftovers are removed on the next start.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

STATE = 'state'
META = 'meta'


def make_manager(workdir: str, *, save_every: int, keep: int = 3,
                 async_save: bool = True) -> ocp.CheckpointManager:
    """A CheckpointManager over `<workdir>/checkpoints`.

    Args:
      workdir: experiment directory.
      save_every: save interval in steps (`should_save` follows it).
      keep: number of most recent checkpoints kept.
      async_save: write in a background thread while training goes on.
    """
    directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(1, save_every), max_to_keep=keep, create=True,
        cleanup_tmp_directories=True, enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(directory, options=options, item_names=(STATE, META))


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict,
         *, force: bool = False) -> bool:
    """Saves if `step` is due (or `force`); returns whether a save started."""
    return manager.save(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(state),
        META: ocp.args.JsonSave(meta),
    }), force=force)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any
                   ) -> tuple[Any, dict] | None:
    """Restores the newest complete checkpoint onto `abstract_state`'s shardings.

    Args:
      manager: from make_manager.
      abstract_state: a pytree like the state (arrays or ShapeDtypeStructs
        carrying the target sharding).

    Returns:
      (state, meta) or None when there is no checkpoint.
    """
    step = manager.latest_step()
    if step is None:
        return None
    target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
    restored = manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardRestore(target),
        META: ocp.args.JsonRestore(),
    }))
    logging.info('restored checkpoint of step %d from %s', step, manager.directory)
    return restored[STATE], dict(restored[META])


def restore_params(workdir: str, *, step: int | None = None) -> tuple[dict, dict]:
    """Loads the state tree and meta of a pre-training run without a template.

    Used by fine-tuning and export, which only need the (target) encoder
    params. Returns host numpy arrays.

    Args:
      workdir: pre-training workdir (or its `checkpoints/` folder).
      step: which checkpoint; default the latest.

    Returns:
      (state dict with 'params', 'target_params', ..., meta dict).
    """
    directory = workdir
    if os.path.isdir(os.path.join(workdir, 'checkpoints')):
        directory = os.path.join(workdir, 'checkpoints')
    with ocp.CheckpointManager(os.path.abspath(directory),
                               options=ocp.CheckpointManagerOptions(read_only=True),
                               item_names=(STATE, META)) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f'no complete checkpoint in {directory}')
        restored = manager.restore(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardRestore(),
            META: ocp.args.JsonRestore(),
        }))
    return restored[STATE], dict(restored[META])
