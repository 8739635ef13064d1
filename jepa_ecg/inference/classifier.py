"""A fine-tuned classifier (encoder + head) and its file, for `jepa-ecg predict`.

A classifier directory holds `classifier.json`:

    {"format": "jepa_ecg.classifier", "version": 1,
     "model": ModelConfig dict, "leads": [...],
     "head": "attentive" | "register", "head_bias": false,
     "class_names": [...], "single_label": false,
     "crop_seconds": 2.5, "stride_seconds": 1.25,
     "lead_stats": {"mean": [...], "std": [...], "source": ...},
     "task": "...", "provenance": {...}}

and `params.msgpack` with the `{'encoder': ..., 'head': ...}` params of
`jepa_ecg.models.classifier.build_classifier` (msgpack, float32). Records
are cut into `crop_seconds` windows every `stride_seconds`, logits are
averaged over a record's windows, then sigmoid (softmax when
single_label), as in the PTB-XL evaluation.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from jepa_ecg.data.preprocess import canonical_leads
from jepa_ecg.data.stats import LeadStats
from jepa_ecg.ecg.leads import LEADS
from jepa_ecg.inference import explain as explain_lib
from jepa_ecg.inference import stream
from jepa_ecg.inference.encoder import VERSION, Encoder, check_params, lead_stats_json
from jepa_ecg.inference.model_files import (PARAMS_FILE, read_model_doc, read_params,
                                            to_numpy_tree, write_params)
from jepa_ecg.models.classifier import build_classifier, probabilities
from jepa_ecg.models.config import ModelConfig

FORMAT = 'jepa_ecg.classifier'
CONFIG_FILE = 'classifier.json'


class Classifier:
    """A fine-tuned classifier: an `Encoder` (which also preprocesses) plus a head.

    Attributes:
      encoder: an `Encoder` (config, encoder params, lead stats).
      head_params: the head's params.
      class_names, single_label, crop_seconds, stride_seconds, head,
      head_bias, meta: as stored (see the module docstring).
    """

    def __init__(self, encoder: Encoder, head_params: Any, *, head: str,
                 class_names: Sequence[str], single_label: bool = False,
                 crop_seconds: float = 2.5, stride_seconds: float = 1.25,
                 head_bias: bool = False, meta: Mapping[str, Any] | None = None):
        self.encoder = encoder
        self.head_params = to_numpy_tree(head_params)
        self.head = head
        self.head_bias = bool(head_bias)
        self.class_names = [str(c) for c in class_names]
        self.single_label = bool(single_label)
        self.crop_seconds = float(crop_seconds)
        self.stride_seconds = float(stride_seconds)
        self.meta = dict(meta or {})
        self._fn = None
        self._device_params = None

    @property
    def config(self) -> ModelConfig:
        return self.encoder.config

    @property
    def params(self) -> dict:
        return {'encoder': self.encoder.params, 'head': self.head_params}

    def window_logits(self, windows: np.ndarray, valid_patches: Any = None) -> np.ndarray:
        """(B, crop, leads) preprocessed windows -> (B, classes) float32 logits.

        The forward `stream.WindowBatcher` runs (`valid_patches` is unused:
        classifier windows are never padded).
        """
        del valid_patches
        if self._fn is None:
            model = build_classifier(self.config, len(self.class_names), head=self.head,
                                     head_bias=self.head_bias, dtype='float32')
            self._fn = jax.jit(lambda p, x: model.apply({'params': p}, x))
            self._device_params = jax.device_put(self.params)
        return np.asarray(self._fn(self._device_params, np.asarray(windows, np.float32)),
                          np.float32)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Record logits (N, classes) -> float32 probabilities (sigmoid or softmax)."""
        return np.asarray(probabilities(logits, self.single_label), np.float32)

    def windows(self, x: np.ndarray, *, pad: bool = False, name: str | None = None
                ) -> np.ndarray:
        """Evaluation windows (crop_seconds every stride_seconds) of a preprocessed record."""
        wins, _ = self.encoder.windows(x, window_seconds=self.crop_seconds,
                                       stride_seconds=self.stride_seconds, pad=pad, name=name)
        return wins

    def predict(self, signals, fs: float, leads: Sequence[str], *, pad: bool = False,
                batch_size: int = 64, **preprocess_kwargs) -> np.ndarray:
        """Class probabilities of raw records.

        Args:
          signals: one (T, L) array or a list of them (raw mV).
          fs: sampling rate (Hz).
          leads: column lead names.
          pad: zero-pad records shorter than one crop.
          batch_size: windows per forward pass.
          **preprocess_kwargs: normalize, fill_missing, highpass_hz (see
            `Encoder.preprocess`).

        Returns:
          (N, classes) float32 probabilities in `class_names` order.
        """
        single = isinstance(signals, np.ndarray) and signals.ndim == 2
        batcher = stream.WindowBatcher(self.window_logits, batch_size)
        for sig in [signals] if single else signals:
            x = self.encoder.preprocess(sig, fs, leads, **preprocess_kwargs)
            batcher.add(self.windows(x, pad=pad), 0)
        # Logits averaged over a record's windows, then sigmoid/softmax (as in evaluation).
        return self.probabilities(stream.pool(batcher.finish(), (len(self.class_names),)))

    def explain(self, signals, fs: float, leads: Sequence[str], *,
                method: str = 'grad_x_input', top_k: int | None = None, **kwargs):
        """Per-patch relevance of raw records for their classes (`inference.explain`).

        Args:
          signals: one (T, L) array or a list of them (raw mV).
          fs: sampling rate (Hz).
          leads: column lead names.
          method: 'grad_x_input' or 'integrated_gradients'.
          top_k: explain the k most probable classes (default: all).
          **kwargs: classes, steps, pad, batch_size, normalize, fill_missing,
            highpass_hz (see `explain.explain`).

        Returns:
          an `explain.Explanation` for one array, else a list of them.
        """
        return explain_lib.explain(self, signals, fs, leads, method=method, top_k=top_k,
                                   **kwargs)

    def save(self, path: str) -> str:
        """Writes a classifier directory (see the module docstring)."""
        return save_classifier(
            path, self.config, self.params, head=self.head, class_names=self.class_names,
            single_label=self.single_label, crop_seconds=self.crop_seconds,
            stride_seconds=self.stride_seconds, lead_stats=self.encoder.lead_stats,
            leads=self.encoder.leads, head_bias=self.head_bias,
            task=self.meta.get('task'), provenance=self.meta.get('provenance'))


def save_classifier(path: str, config: ModelConfig, params: Mapping[str, Any], *, head: str,
                    class_names: Sequence[str], single_label: bool = False,
                    crop_seconds: float = 2.5, stride_seconds: float = 1.25,
                    lead_stats: LeadStats | Mapping[str, Any] | None = None,
                    leads: Sequence[str] = LEADS, head_bias: bool = False,
                    task: str | None = None,
                    provenance: Mapping[str, Any] | None = None) -> str:
    """Writes a classifier directory that `jepa-ecg predict` reads.

    Args:
      path: output directory.
      config: encoder ModelConfig.
      params: {'encoder': ..., 'head': ...} params of `build_classifier`.
      head: 'attentive' or 'register'.
      class_names: output names, in logit order.
      single_label: softmax (True) or sigmoid (False) outputs.
      crop_seconds: window length the classifier was trained on.
      stride_seconds: hop between evaluation windows.
      lead_stats: per-lead statistics used in fine-tuning (PTB-XL train
        folds), in `leads` order.
      leads: the model's input lead order.
      head_bias: whether the register head's linear layer has a bias.
      task: task name, for the record.
      provenance: free-form JSON-able dict.

    Returns:
      the directory path.
    """
    if len(class_names) == 0:
        raise ValueError('class_names is empty')
    check_params(config, params['encoder'])
    os.makedirs(path, exist_ok=True)
    doc = {'format': FORMAT, 'version': VERSION, 'model': config.to_dict(),
           'leads': canonical_leads(leads), 'head': head,
           'head_bias': bool(head_bias), 'class_names': [str(c) for c in class_names],
           'single_label': bool(single_label), 'crop_seconds': float(crop_seconds),
           'stride_seconds': float(stride_seconds), 'lead_stats': lead_stats_json(lead_stats),
           'task': task, 'provenance': dict(provenance or {})}
    write_params(os.path.join(path, PARAMS_FILE), params)
    with open(os.path.join(path, CONFIG_FILE), 'w', encoding='utf-8') as f:
        json.dump(doc, f, indent=2, default=str)
    return path


def is_classifier_dir(path: str) -> bool:
    """Whether `path` holds a classifier.json."""
    return os.path.isfile(os.path.join(path, CONFIG_FILE))


def read_classifier(path: str, *, lead_stats: LeadStats | Mapping[str, Any] | None = None
                    ) -> Classifier:
    """Reads a classifier directory (see the module docstring).

    `jepa_ecg.inference.runs.load_classifier` also takes fine-tuning runs.

    Args:
      path: the directory or its classifier.json.
      lead_stats: normalisation statistics overriding the stored ones.

    Returns:
      a `Classifier`.

    Raises:
      FileNotFoundError: `path` is not a classifier directory.
      ValueError: a file of another format, or params that do not fit.
    """
    path, doc = read_model_doc(path, config_file=CONFIG_FILE, fmt=FORMAT, version=VERSION,
                               kind='classifier')
    config = ModelConfig.from_dict(doc['model'])
    params = read_params(os.path.join(path, PARAMS_FILE))
    check_params(config, params['encoder'])
    meta = {'task': doc.get('task'), 'provenance': doc.get('provenance', {}),
            'path': os.path.abspath(path)}
    stats = lead_stats if lead_stats is not None else doc.get('lead_stats')
    enc = Encoder(config, params['encoder'], lead_stats=stats,
                  leads=doc.get('leads', LEADS), meta=meta)
    return Classifier(enc, params['head'], head=doc['head'], class_names=doc['class_names'],
                      single_label=doc.get('single_label', False),
                      crop_seconds=doc.get('crop_seconds', 2.5),
                      stride_seconds=doc.get('stride_seconds', 1.25),
                      head_bias=doc.get('head_bias', False), meta=meta)
