"""Finding encoders and classifiers in files and run folders.

`load_encoder` and `load_classifier` take whatever a user points at:

    encoder directory (encoder.json)          -> read_encoder
    classifier directory (classifier.json)    -> read_classifier (its encoder)
    pre-training workdir (checkpoints/)       -> encoder_from_workdir (target encoder,
                                                 statistics of the run's data mix)
    fine-tuning run (results.json + best/)    -> classifier_from_finetune_run
    fine-tuning workdir (<task>/seed<k>/)     -> the seed with the best validation AUC

and `export_encoder` / `Classifier.save` turn a run into a self-contained
directory (`jepa-ecg export`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

from jepa_ecg.data.stats import LeadStats, mix_lead_stats
from jepa_ecg.inference.classifier import (Classifier, is_classifier_dir,
                                           read_classifier)
from jepa_ecg.inference.encoder import Encoder, is_encoder_dir, read_encoder
from jepa_ecg.models.config import ModelConfig
from jepa_ecg.training import checkpoint

Stats = LeadStats | Mapping[str, Any] | None
# The two encoders of a JEPA run: the EMA target (used downstream) and the
# context encoder trained by gradient.
WEIGHTS = ('target', 'context')


def load_encoder(path: str, *, lead_stats: Stats = None) -> Encoder:
    """Loads an encoder from a file or run folder (see the module docstring).

    Args:
      path: an encoder directory (or its `encoder.json`), a pre-training
        workdir (its target encoder, with the statistics of the run's
        sources when computed), a classifier directory or a fine-tuning run
        (their encoder, with the fine-tuning statistics).
      lead_stats: override the stored normalisation statistics.

    Returns:
      an `Encoder`.

    Raises:
      FileNotFoundError: when `path` is none of those.
    """
    path = os.fspath(path)
    if is_encoder_dir(path):
        return read_encoder(path, lead_stats=lead_stats)
    if is_classifier_dir(path):
        return read_classifier(path, lead_stats=lead_stats).encoder
    if is_pretraining_workdir(path):
        return encoder_from_workdir(path, lead_stats=lead_stats)
    run = find_finetune_run(path) if os.path.isdir(path) else None
    if run is not None:
        return classifier_from_finetune_run(run, lead_stats=lead_stats).encoder
    return read_encoder(path)  # raises, saying how to make an encoder directory


def load_classifier(path: str, *, task: str | None = None,
                    lead_stats: Stats = None) -> Classifier:
    """Loads a fine-tuned classifier.

    Args:
      path: a classifier directory (or its classifier.json), a fine-tuning
        run folder of `experiments/finetune.py` (results.json + best/
        Orbax checkpoint), or a fine-tuning workdir (its `<task>/seed<k>/`
        runs; the seed with the best validation AUC is used).
      task: which task of a multi-task fine-tuning workdir.
      lead_stats: normalisation statistics overriding the stored ones.

    Returns:
      a `Classifier`.

    Raises:
      FileNotFoundError: when `path` is none of those.
    """
    path = os.fspath(path)
    if is_classifier_dir(path) or os.path.isfile(path):
        return read_classifier(path, lead_stats=lead_stats)
    run = find_finetune_run(path, task)
    if run is None:
        raise FileNotFoundError(
            f'{path} is not a fine-tuned classifier: no classifier.json, and no '
            f'experiments/finetune.py run ({checkpoint.RESULTS_FILE} + '
            f'{checkpoint.BEST_DIR}/) in it')
    return classifier_from_finetune_run(run, lead_stats=lead_stats)


# ------------------------------------------------------ from a pre-training run
def is_pretraining_workdir(path: str) -> bool:
    """A pre-training workdir, or its checkpoints folder (numbered step folders)."""
    if os.path.isdir(os.path.join(path, checkpoint.CHECKPOINTS_DIR)):
        return True
    return os.path.isdir(path) and any(n.isdigit() for n in os.listdir(path))


def workdir_lead_stats(workdir: str, *, data_dir: str | None = None) -> LeadStats | None:
    """Normalisation statistics of a pre-training run's data mix, if computed.

    One source: its statistics. Several: the mixture of their per-lead
    distributions under the sampling weights (`mix_lead_stats`), the closest
    single z-score to what the encoder saw.

    Args:
      workdir: pre-training workdir with `config.json`.
      data_dir: TFDS data directory holding the statistics; default the
        run's `data.data_dir`, else ~/tensorflow_datasets.

    Returns:
      the statistics, or None when unknown.
    """
    cfg_path = os.path.join(workdir, checkpoint.CONFIG_FILE)
    if not os.path.isfile(cfg_path):
        return None
    with open(cfg_path, encoding='utf-8') as f:
        run = json.load(f)
    data = (run.get('config') or {}).get('data') or {}
    mixture_name = data.get('mixture')
    if not mixture_name:
        return None
    # Lazy: the source registry imports every TFDS builder (TensorFlow
    # Datasets), which embed/predict never need.
    from jepa_ecg.data import sources as sources_lib  # pylint: disable=g-import-not-at-top
    from jepa_ecg.data import source_stats  # pylint: disable=g-import-not-at-top
    if mixture_name not in sources_lib.MIXTURES:
        return None
    mixture = sources_lib.MIXTURES[mixture_name]
    data_dir = data_dir or data.get('data_dir') or os.path.expanduser('~/tensorflow_datasets')
    try:
        stats = {name: source_stats.load_lead_stats(name, data_dir) for name in mixture}
    except (OSError, ValueError, KeyError):
        # Not computed, or the data dir moved: the caller decides what to do.
        return None
    return mix_lead_stats(stats, mixture, source=f'pre-training mix {mixture_name!r}')


def encoder_from_workdir(workdir: str, *, step: int | None = None, lead_stats: Stats = None,
                         weights: str = 'target') -> Encoder:
    """The (target) encoder of a pre-training checkpoint.

    Args:
      workdir: pre-training workdir (or its checkpoints folder).
      step: checkpoint step, default the latest.
      lead_stats: statistics to attach; default `workdir_lead_stats(workdir)`.
      weights: 'target' (the EMA target encoder, the one to use) or
        'context' (the encoder trained by gradient).

    Returns:
      an `Encoder` whose meta records the provenance.
    """
    state, meta = checkpoint.restore_params(workdir, step=step)
    if weights not in WEIGHTS:
        raise ValueError(f'weights must be one of {WEIGHTS}, got {weights!r}')
    params = (state['target_params'] if weights == 'target'
              else state['params']['encoder'])
    config = ModelConfig.from_dict(meta['model'])
    root = workdir.rstrip('/')
    if os.path.basename(root) == checkpoint.CHECKPOINTS_DIR:
        root = os.path.dirname(root)
    if lead_stats is None:
        lead_stats = workdir_lead_stats(root)
    provenance = {'kind': 'jepa_ecg pre-training', 'workdir': os.path.abspath(root),
                  'step': int(meta.get('step', -1)), 'weights': weights}
    return Encoder(config, params, lead_stats=lead_stats, meta={'provenance': provenance})


def export_encoder(workdir: str, out: str, *, step: int | None = None,
                   lead_stats: Stats = None, weights: str = 'target') -> Encoder:
    """Exports a pre-training run's encoder as an encoder directory.

    Args:
      workdir: pre-training workdir.
      out: output directory.
      step: checkpoint step, default the latest.
      lead_stats: statistics to store; default the run's source statistics.
      weights: 'target' or 'context' (see `encoder_from_workdir`).

    Returns:
      the exported `Encoder`.
    """
    enc = encoder_from_workdir(workdir, step=step, lead_stats=lead_stats, weights=weights)
    enc.save(out)
    enc.meta['path'] = os.path.abspath(out)
    return enc


def is_finetune_run(path: str) -> bool:
    """A fine-tuning run folder: results.json + best/."""
    return (os.path.isfile(os.path.join(path, checkpoint.RESULTS_FILE))
            and os.path.isdir(os.path.join(path, checkpoint.BEST_DIR)))


def _best_val_auc(run: str) -> float:
    try:
        with open(os.path.join(run, checkpoint.RESULTS_FILE), encoding='utf-8') as f:
            return float(json.load(f).get('best_val_auc', float('-inf')))
    except (OSError, ValueError, TypeError):
        return float('-inf')


def find_finetune_run(path: str, task: str | None = None,
                      seed_index: int | None = None) -> str | None:
    """The run folder inside a fine-tuning output: the one reader of run folders.

    Args:
      path: a run folder (results.json + best/) or a fine-tuning workdir with
        `<task>/seed<k>/` runs.
      task: the task to pick in a workdir; needed when it holds several.
      seed_index: the seed to pick (`seed<k>`, else seed 0, as a continued
        protocol pairs its seeds with the earlier run's); default the seed
        with the best validation AUC (what predicting uses).

    Returns:
      the run folder, or None when `path` is no fine-tuning output.

    Raises:
      ValueError: when the workdir holds several tasks and none was chosen,
        or not the one asked for.
    """
    if is_finetune_run(path):
        return path
    if not os.path.isdir(path):
        return None
    runs_by_task = {t: _runs_of(os.path.join(path, t)) for t in sorted(os.listdir(path))
                    if os.path.isdir(os.path.join(path, t))}
    tasks = [t for t, runs in runs_by_task.items() if runs]
    if not tasks:
        return None
    if task is None:
        if len(tasks) > 1:
            raise ValueError(f'{path} holds fine-tuning runs of tasks {tasks}: pick one '
                             f'(CLI: --task)')
        task = tasks[0]
    if task not in tasks:
        raise ValueError(f'{path} has no fine-tuning run of task {task!r} (has {tasks})')
    if seed_index is not None:
        for k in (seed_index, 0):
            run = os.path.join(path, task, f'seed{k}')
            if run in runs_by_task[task]:
                return run
    return max(runs_by_task[task], key=_best_val_auc)


def is_finetune_output(path: str) -> bool:
    """A fine-tuning run folder, or a workdir holding `<task>/seed<k>/` runs."""
    return is_finetune_run(path) or (os.path.isdir(path) and any(
        _runs_of(os.path.join(path, t)) for t in os.listdir(path)
        if os.path.isdir(os.path.join(path, t))))


def _runs_of(task_dir: str) -> list[str]:
    return [os.path.join(task_dir, s) for s in sorted(os.listdir(task_dir))
            if is_finetune_run(os.path.join(task_dir, s))]


def classifier_from_finetune_run(run: str, *, lead_stats: Stats = None) -> Classifier:
    """A `Classifier` from an `experiments/finetune.py` run folder.

    Reads results.json (model config, head, task, classes, crop and stride,
    and the fine-tuning normalisation statistics when the run stored them
    under `lead_stats`) and the best-validation params from `best/`.

    Args:
      run: the run folder.
      lead_stats: statistics overriding the run's (or standing in for them
        when it stored none).

    Returns:
      a `Classifier`.
    """
    with open(os.path.join(run, checkpoint.RESULTS_FILE), encoding='utf-8') as f:
        results = json.load(f)
    config = ModelConfig.from_dict(results['model'])
    params = checkpoint.restore_best(run)
    data = results.get('data') or {}
    classes = data.get('classes') or (results.get('test') or {}).get('classes')
    if not classes:
        raise ValueError(f'{run}/{checkpoint.RESULTS_FILE} does not name the classes')
    fs = float(config.fs)
    stats = lead_stats if lead_stats is not None else results.get('lead_stats')
    task = results.get('task')
    cfg = results.get('config') or {}
    meta = {'task': task, 'path': os.path.abspath(run),
            'provenance': {'kind': 'jepa_ecg fine-tuning run', 'run': os.path.abspath(run),
                           'protocol': results.get('protocol'),
                           'best_val_auc': results.get('best_val_auc')}}
    enc = Encoder(config, params['encoder'], lead_stats=stats, meta=meta)
    return Classifier(enc, params['head'], head=results.get('head', cfg.get('head')),
                      class_names=classes, single_label=_single_label(results),
                      crop_seconds=float(results.get('crop_samples', 2.5 * fs)) / fs,
                      stride_seconds=float(results.get('eval_stride_samples', 1.25 * fs)) / fs,
                      head_bias=bool(cfg.get('head_bias', False)), meta=meta)


def _single_label(results: Mapping[str, Any]) -> bool:
    """Whether a run's task is single-label (softmax): stored, else by task name."""
    if 'single_label' in results:
        return bool(results['single_label'])
    # Lazy: the PTB-XL module imports Grain and TensorFlow Datasets, which
    # predict never needs otherwise.
    from jepa_ecg.data import ptbxl  # pylint: disable=g-import-not-at-top
    return ptbxl.is_single_label(results.get('task') or '')


__all__: Sequence[str] = (
    'load_encoder', 'load_classifier', 'is_pretraining_workdir', 'workdir_lead_stats',
    'encoder_from_workdir', 'export_encoder',
    'is_finetune_run', 'is_finetune_output', 'find_finetune_run',
    'classifier_from_finetune_run')
