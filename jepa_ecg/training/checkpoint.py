"""Orbax checkpoints and the layout of a run folder.

A pre-training workdir holds `checkpoints/<step>/` (the train state pytree:
params, target params, optimiser state, step, PRNG key; plus a small JSON
record: step, data position, config), `metrics.jsonl`, `config.json` and
TensorBoard events. A fine-tuning run folder holds `best/<step>/` (the
best-validation params only), `results.json` and `predictions.npz`.

Orbax writes each checkpoint into a temporary directory and renames it only
when complete, so a process killed mid-save leaves nothing that restores;
the leftovers are removed on the next start. Once a save is complete its
files' SHA-256 digests go into `SHA256_FILE` inside it (Orbax reads damaged
array bytes back without a word), and every restore checks them first. A
newest checkpoint that fails to restore is skipped with one warning and the
previous good one is used; when none restores, `CheckpointError` names the
folder. A save that fails (no space, no permission) raises `CheckpointSaveError`
naming the folder, the cause and the checkpoints that are intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
import weakref
from typing import Any, Callable

import jax
import numpy as np
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
SHA256_FILE = 'jepa_ecg_sha256.json'   # in each complete checkpoint: file -> digest
DAMAGED_DIR = 'damaged_checkpoints'    # pre-training: checkpoints that failed to restore


class CheckpointError(ValueError):
    """No checkpoint of a run folder restores (missing, damaged or incompatible)."""


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (no space, no permission, ...)."""


# The step of each manager's save in flight: an async save fails later, at
# the next save or at close, and the message names the step that failed.
_pending_step: 'weakref.WeakKeyDictionary[Any, int]' = weakref.WeakKeyDictionary()


def _save_error(manager: ocp.CheckpointManager, step: int, e: BaseException
                ) -> CheckpointSaveError:
    directory = os.fspath(manager.directory)
    # The failed save leaves write coroutines of the checkpoint library that
    # never ran; collected at exit they would add a RuntimeWarning after the
    # one line the run ends with. The error below already says what failed.
    warnings.filterwarnings('ignore', message=r"coroutine '.*' was never awaited",
                            category=RuntimeWarning)
    cause = e
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    code = re.search(r"os_error_code='(\d+)'", str(e))  # TensorStore's errors carry it
    if isinstance(cause, OSError) and cause.strerror:
        reason = cause.strerror
    elif code:
        reason = os.strerror(int(code.group(1)))
    else:
        reason = _first_line(e)
    try:
        kept = sorted(s for s in manager.all_steps() if s != step and
                      os.path.isdir(_step_dir(manager, s)))
    except Exception:  # pylint: disable=broad-except
        kept = []
    intact = (f'the checkpoints saved before ({", ".join(map(str, kept))}) are intact'
              if kept else 'no checkpoint was saved before')
    return CheckpointSaveError(
        f'saving the checkpoint of step {step} to {directory} failed: {reason}. The run '
        f'stopped; {intact}: free space or fix the permissions, then run the same command '
        f'to go on')


# ------------------------------------------------------------------ integrity
def _file_digests(step_dir: str) -> dict[str, str]:
    digests = {}
    for root, _, files in os.walk(step_dir):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, step_dir)
            if rel.startswith(SHA256_FILE):
                continue
            h = hashlib.sha256()
            with open(path, 'rb') as f:
                for chunk in iter(lambda: f.read(1 << 20), b''):
                    h.update(chunk)
            digests[rel] = h.hexdigest()
    return digests


def _step_dir(manager: ocp.CheckpointManager, step: int) -> str:
    return os.path.join(os.fspath(manager.directory), str(step))


def seal(manager: ocp.CheckpointManager) -> None:
    """Writes the digests of every complete checkpoint that has none yet.

    Waits for a save in flight first; the manager's own saves wait for it too.
    """
    manager.wait_until_finished()
    if jax.process_index() != 0:
        return
    for step in manager.all_steps():
        step_dir = _step_dir(manager, step)
        target = os.path.join(step_dir, SHA256_FILE)
        if os.path.isdir(step_dir) and not os.path.exists(target):
            digests = _file_digests(step_dir)
            with open(target + '.tmp', 'w', encoding='utf-8') as f:
                json.dump(digests, f)
            os.replace(target + '.tmp', target)


def verify(step_dir: str) -> None:
    """Raises CheckpointError when a file of a checkpoint differs from its digest.

    A checkpoint without digests (written before this check existed, or by a
    process killed right after the save) is taken as it is.
    """
    path = os.path.join(step_dir, SHA256_FILE)
    if not os.path.exists(path):
        return
    with open(path, encoding='utf-8') as f:
        expected = json.load(f)
    actual = _file_digests(step_dir)
    bad = sorted(rel for rel, digest in expected.items() if actual.get(rel) != digest)
    if bad:
        what = 'missing' if bad[0] not in actual else 'damaged'
        raise CheckpointError(f'{len(bad)} file(s) differ from their digests '
                              f'({what}: {bad[0]})')


def _restore_newest_good(manager: ocp.CheckpointManager, steps: list[int],
                         restore_fn: Callable[[int], Any], where: str
                         ) -> tuple[int, Any, list[int]]:
    """Restores the newest of `steps` that verifies and restores.

    Returns:
      (step, restored, the newer steps that failed). Warns once when some
      failed; raises CheckpointError naming `where` when all did.
    """
    failed: list[tuple[int, str]] = []
    for step in sorted(steps, reverse=True):
        try:
            verify(_step_dir(manager, step))
            restored = restore_fn(step)
        except Exception as e:  # pylint: disable=broad-except
            # Damaged bytes surface as ValueError/OSError from TensorStore,
            # broken JSON as ValueError, a changed model as a shape error:
            # all mean "not this checkpoint"; the message says which.
            failed.append((step, f'{type(e).__name__}: {_first_line(e)}'))
            continue
        if failed:
            logging.warning('checkpoint(s) of step %s in %s do not restore (%s); using the '
                            'previous good one, step %d',
                            ', '.join(str(s) for s, _ in failed), where, failed[0][1], step)
        return step, restored, [s for s, _ in failed]
    if not failed:
        raise CheckpointError(f'no complete checkpoint in {where}')
    raise CheckpointError(
        f'no checkpoint in {where} restores: ' +
        '; '.join(f'step {s}: {reason}' for s, reason in failed))


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else repr(e))[:300]


def _host_target(metadata: Any) -> Any:
    """Host numpy arrays shaped like a checkpoint's arrays (any device count)."""
    return jax.tree_util.tree_map(
        lambda m: np.empty(m.shape, m.dtype) if hasattr(m, 'shape') else m, metadata)


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
    """Saves if `step` is due (or `force`); returns whether a save started.

    Also writes the digests of the saves completed before (see `seal`).
    """
    try:
        seal(manager)
    except Exception as e:  # pylint: disable=broad-except
        raise _save_error(manager, _pending_step.get(manager, step), e) from e
    try:
        started = manager.save(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardSave(state),
            META: ocp.args.JsonSave(meta),
        }), force=force)
    except Exception as e:  # pylint: disable=broad-except
        raise _save_error(manager, step, e) from e
    if started:
        _pending_step[manager] = step
    return started


def close(manager: ocp.CheckpointManager, *, quiet: bool = False) -> None:
    """Waits for the save in flight, writes its digests and closes the manager.

    Args:
      manager: from make_manager.
      quiet: another error is on its way out: a failure here is dropped
        (logged) rather than raised over it.

    Raises:
      CheckpointSaveError: the save in flight failed (unless `quiet`).
    """
    error = None
    try:
        seal(manager)
    except Exception as e:  # pylint: disable=broad-except
        error = _save_error(manager, _pending_step.get(manager, -1), e)
    try:
        manager.close()
    except Exception as e:  # pylint: disable=broad-except
        error = error or _save_error(manager, _pending_step.get(manager, -1), e)
    _pending_step.pop(manager, None)
    if error is not None:
        if quiet:
            logging.warning('%s', error)
        else:
            raise error


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any
                   ) -> tuple[Any, dict] | None:
    """Restores the newest good checkpoint onto `abstract_state`'s shardings.

    Newer checkpoints that fail to restore (damaged files) are reported with
    one warning and moved to `<workdir>/damaged_checkpoints/`, so training
    continues from the previous good one and can save those steps again.

    Args:
      manager: from make_manager.
      abstract_state: a pytree like the state (arrays or ShapeDtypeStructs
        carrying the target sharding).

    Returns:
      (state, meta) or None when there is no checkpoint.

    Raises:
      CheckpointError: there are checkpoints but none restores.
    """
    steps = list(manager.all_steps())
    if not steps:
        return None
    target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)

    def restore(step):
        return manager.restore(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardRestore(target),
            META: ocp.args.JsonRestore(),
        }))

    step, restored, failed = _restore_newest_good(manager, steps, restore,
                                                  os.fspath(manager.directory))
    if failed:
        _move_aside(manager, failed)
    logging.info('restored checkpoint of step %d from %s', step, manager.directory)
    return restored[STATE], dict(restored[META])


def _move_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
    """Moves damaged checkpoints out of the manager's folder (kept for a post-mortem)."""
    if jax.process_index() == 0:
        checkpoints = os.fspath(manager.directory)
        damaged = os.path.join(os.path.dirname(checkpoints), DAMAGED_DIR)
        os.makedirs(damaged, exist_ok=True)
        for step in steps:
            dest = os.path.join(damaged, str(step))
            if os.path.exists(dest):
                shutil.rmtree(dest)
            shutil.move(_step_dir(manager, step), dest)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        multihost_utils.sync_global_devices('jepa_ecg: damaged checkpoints moved')
    manager.reload()


def restore_params(workdir: str, *, step: int | None = None) -> tuple[dict, dict]:
    """Loads the state tree and meta of a pre-training run without a template.

    Used by fine-tuning and export, which only need the (target) encoder
    params. Returns host numpy arrays, whatever devices the run used. With
    the default step, a newest checkpoint that fails to restore is reported
    with one warning and the previous good one is used.

    Args:
      workdir: pre-training workdir (or its `checkpoints/` folder).
      step: which checkpoint; default the newest one that restores.

    Returns:
      (state dict with 'params', 'target_params', ..., meta dict).

    Raises:
      CheckpointError: no checkpoint (or not the one asked for) restores.
    """
    directory = workdir
    if os.path.isdir(os.path.join(workdir, CHECKPOINTS_DIR)):
        directory = os.path.join(workdir, CHECKPOINTS_DIR)
    handlers = {STATE: ocp.StandardCheckpointHandler(), META: ocp.JsonCheckpointHandler()}
    with ocp.CheckpointManager(os.path.abspath(directory),
                               options=ocp.CheckpointManagerOptions(read_only=True),
                               item_handlers=handlers) as manager:

        def restore(s):
            metadata = manager.item_metadata(s)[STATE]
            return manager.restore(s, args=ocp.args.Composite(**{
                STATE: ocp.args.StandardRestore(_host_target(metadata)),
                META: ocp.args.JsonRestore(),
            }))

        steps = list(manager.all_steps())
        if step is not None:
            if step not in steps:
                raise CheckpointError(f'no checkpoint of step {step} in {directory} '
                                      f'(has {sorted(steps)})')
            steps = [step]
        _, restored, _ = _restore_newest_good(manager, steps, restore, directory)
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
    seal(manager)


def clear(manager: ocp.CheckpointManager) -> None:
    """Deletes every checkpoint of `manager` (a re-run starts from scratch)."""
    for step in manager.all_steps():
        manager.delete(step)


def restore_best(run_dir: str, target: Any = None) -> dict:
    """Params of a fine-tuning run's best-validation checkpoint.

    Args:
      run_dir: the run folder (holding `best/`).
      target: a pytree like the params whose shardings the restored arrays
        take; default host numpy arrays (whatever devices the run used).

    Returns:
      {'encoder': ..., 'head': ...}.

    Raises:
      CheckpointError: no best checkpoint, or it fails to restore (a run
        keeps only its best, so there is no older one to fall back on).
    """
    options = ocp.CheckpointManagerOptions(read_only=True)
    with ocp.CheckpointManager(os.path.join(os.path.abspath(run_dir), BEST_DIR),
                               options=options,
                               item_handlers=ocp.StandardCheckpointHandler()) as manager:

        def restore(step):
            if target is None:
                abstract = _host_target(manager.item_metadata(step))
            else:
                abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
            return manager.restore(step, args=ocp.args.StandardRestore(abstract))

        # best_fn is unknown to a read-only reader: the folder holds one step.
        steps = list(manager.all_steps())
        where = os.path.join(run_dir, BEST_DIR)
        if not steps:
            raise CheckpointError(f'no best checkpoint in {where}')
        _, params, _ = _restore_newest_good(manager, steps, restore, where)
    return params
