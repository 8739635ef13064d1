"""Orbax checkpoints and the layout of a run folder.

A pre-training workdir holds `checkpoints/<step>/` (the train state pytree:
params, target params, optimiser state, step, PRNG key; plus a small JSON
record: step, data position, config), `metrics.jsonl`, `config.json` and
TensorBoard events. A fine-tuning run folder holds `best/<step>/` (the
best-validation params only), `results.json` and `predictions.npz`.

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

# The run-folder layout (pre-training workdir and fine-tuning run).
CHECKPOINTS_DIR = 'checkpoints'   # pre-training states, newest `keep`
CONFIG_FILE = 'config.json'       # pre-training config + model config
METRICS_FILE = 'metrics.jsonl'    # one JSON row per logged step
TENSORBOARD_DIR = 'tensorboard'
BEST_DIR = 'best'                 # fine-tuning: params of the best validation step
RESULTS_FILE = 'results.json'     # fine-tuning: results of a run (or a summary of runs)
PREDICTIONS_FILE = 'predictions.npz'


def make_manager(workdir: str, *, save_every: int, keep: int = 3,
                 async_save: bool = True) -> ocp.CheckpointManager:
    """A CheckpointManager over `<workdir>/checkpoints`.

    Args:
      workdir: experiment directory.
      save_every: save interval in steps (`should_save` follows it).
      keep: number of most recent checkpoints kept.
      async_save: write in a background thread while training goes on.
    """
    directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR)
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
    if os.path.isdir(os.path.join(workdir, CHECKPOINTS_DIR)):
        directory = os.path.join(workdir, CHECKPOINTS_DIR)
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


# ----------------------------------------------------------- best-validation params
def best_manager(run_dir: str, *, read_only: bool = False) -> ocp.CheckpointManager:
    """A CheckpointManager over `<run_dir>/best` keeping the highest `val_auc` only.

    Args:
      run_dir: a fine-tuning run folder.
      read_only: open an existing checkpoint without creating or cleaning.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, best_fn=lambda m: m['val_auc'], best_mode='max',
        create=not read_only, read_only=read_only, enable_async_checkpointing=False,
        cleanup_tmp_directories=not read_only)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(run_dir), BEST_DIR),
                                 options=options)


def save_best(manager: ocp.CheckpointManager, step: int, params: Any, val_auc: float) -> None:
    """Saves `params` as the run's best so far (the manager keeps only the best)."""
    manager.save(step, args=ocp.args.StandardSave(params), metrics={'val_auc': val_auc},
                 force=True)


def clear(manager: ocp.CheckpointManager) -> None:
    """Deletes every checkpoint of `manager` (a re-run starts from scratch)."""
    for step in manager.all_steps():
        manager.delete(step)


def restore_best(run_dir: str, target: Any = None) -> dict:
    """Params of a fine-tuning run's best-validation checkpoint.

    Args:
      run_dir: the run folder (holding `best/`).
      target: a pytree like the params whose shardings the restored arrays
        take; default host numpy arrays.

    Returns:
      {'encoder': ..., 'head': ...}.
    """
    with best_manager(run_dir, read_only=True) as manager:
        step = manager.best_step()
        if step is None:
            raise FileNotFoundError(f'no best checkpoint in {run_dir}/{BEST_DIR}')
        if target is None:
            return manager.restore(step, args=ocp.args.StandardRestore())
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        return manager.restore(step, args=ocp.args.StandardRestore(abstract))
