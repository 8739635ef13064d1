"""Scores a classifier on a PTB-XL task split, given its predict function.

In the manner of big_vision's classification evaluator: the evaluator
receives `predict_fn(params, windows) -> logits` and knows nothing of
training. It builds its input with the task's own pipeline (every
crop-long window of a record at `stride`, in fixed-shape batches), runs the
predict function data-parallel over the mesh, averages the logits over each
record's windows and scores the records (macro ROC AUC, or the full report
with bootstrap intervals).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import numpy as np

from jepa_ecg import sharding
from jepa_ecg.data import ptbxl
from jepa_ecg.ecg import transforms
from jepa_ecg.evaluation import metrics
from jepa_ecg.models.classifier import probabilities

PredictFn = Callable[[Any, jax.Array], jax.Array]


class EvaluationInterrupted(Exception):
    """`interrupted()` answered True between two batches: the pass was abandoned."""


@dataclasses.dataclass
class SplitScores:
    """One split scored: record logits, probabilities and macro ROC AUC."""
    logits: np.ndarray
    probabilities: np.ndarray
    macro_auc: float


class Evaluator:
    """Record-level logits and scores of one task's splits."""

    def __init__(self, predict_fn: PredictFn, task: ptbxl.PtbxlTask, *, mesh, crop: int,
                 stride: int, records_per_batch: int):
        """Prepares the jitted predict function and the batch shape.

        Args:
          predict_fn: `(params, windows (B, crop, leads)) -> logits (B, C)`,
            not jitted.
          task: the task whose splits are scored.
          mesh: the data-parallel mesh (sharding.make_mesh).
          crop: window length in samples.
          stride: window step in samples.
          records_per_batch: records per evaluation batch; rounded up so the
            batch's windows split evenly over the devices.
        """
        self.task, self.mesh, self.crop, self.stride = task, mesh, crop, stride
        if task.num_samples < crop:
            raise ValueError(f'records of {task.num_samples} samples are shorter than the '
                             f'{crop}-sample crop')
        self.windows_per_record = len(transforms.window_starts(task.num_samples, crop, stride))
        # Windows per batch must split evenly over the devices (hence also
        # over the processes, which hold equal numbers of devices).
        n_dev = mesh.devices.size
        unit = n_dev // math.gcd(n_dev, self.windows_per_record)
        self.records_per_batch = max(unit, -(-records_per_batch // unit) * unit)
        self._predict = sharding.jit_data_parallel(predict_fn, mesh, batch_argnums=(1,))

    def logits(self, params: Any, split: str,
               interrupted: Callable[[], bool] | None = None) -> np.ndarray:
        """(N, C) float32 window-averaged logits of every record of `split`.

        Args:
          params: the classifier params (replicated over the mesh).
          split: 'train', 'val' or 'test'.
          interrupted: asked before each batch; True abandons the pass (a
            stop signal on a slow host). Only where every process answers
            alike: a process that leaves alone blocks the others.

        Raises:
          EvaluationInterrupted: `interrupted()` answered True.
        """
        out = []
        pid, n_proc = jax.process_index(), jax.process_count()
        for windows, real in self.task.eval_batches(
                split, records_per_batch=self.records_per_batch, crop=self.crop,
                stride=self.stride):
            if interrupted is not None and interrupted():
                raise EvaluationInterrupted(f'{split} pass abandoned after {len(out)} batches')
            share = windows.shape[0] // n_proc
            local = windows[pid * share:(pid + 1) * share]
            global_windows = sharding.host_to_global({'x': local}, self.mesh)['x']
            logits = np.asarray(self._predict(params, global_windows))
            out.append(ptbxl.average_window_logits(logits, self.records_per_batch)[:real])
        if not out:
            return np.zeros((0, self.task.num_classes), np.float32)
        return np.concatenate(out).astype(np.float32)

    def evaluate(self, params: Any, split: str,
                 interrupted: Callable[[], bool] | None = None) -> SplitScores:
        """Logits, probabilities and macro ROC AUC of `split` (see `logits`)."""
        logits = self.logits(params, split, interrupted)
        prob = probabilities(logits, self.task.single_label)
        auc = metrics.macro_roc_auc(self.task.splits[split].targets, prob)
        return SplitScores(logits, prob, auc)

    def report(self, scores: SplitScores, split: str, *, num_resamples: int,
               confidence: float, seed: int) -> dict:
        """metrics.classification_report of scored records of `split`.

        Args:
          scores: from `evaluate` on the same split.
          split: 'train', 'val' or 'test'.
          num_resamples: bootstrap resamples of the records.
          confidence: interval coverage.
          seed: resampling seed.

        Returns:
          Macro and per-class AUC / AUPRC with bootstrap intervals.
        """
        return metrics.classification_report(
            self.task.splits[split].targets, scores.probabilities, self.task.classes,
            num_resamples=num_resamples, confidence=confidence, seed=seed)
