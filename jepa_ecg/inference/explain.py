"""Why a classifier predicted what it did: the relevance of every patch of the input.

A record's logit for class c is the mean of its windows' logits (as in the
PTB-XL evaluation and `predict`), so its gradient with respect to the
preprocessed record is the windows' gradients overlap-added at their
positions and divided by the number of windows. From it:

* `grad_x_input`: relevance = x * d logit_c / dx;
* `integrated_gradients`: relevance = x * the mean of d logit_c / dx along
  the straight path from the baseline 0 to x (`steps` midpoints). 0 is
  every lead at its normalisation mean, i.e. every lead missing; the
  relevances then add up to about logit_c(x) - logit_c(0).

Relevance is summed over each patch's samples (the model's tokens: 50 ms of
all leads), per lead: (num_patches, leads) per class. A classifier with an
attentive pooler also gives its query's attention over the patch tokens
(mean over heads, averaged over the windows that see a patch).

    exps = clf.explain(signals, fs=500, leads=[...])       # Classifier.explain
    jepa-ecg explain a.hea --checkpoint RUN --out DIR       # PNG + NPZ per record
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jepa_ecg.data.preprocess import MissingLeadsWarning
from jepa_ecg.ecg import files as files_lib
from jepa_ecg.ecg import transforms
from jepa_ecg.inference import stream
from jepa_ecg.models import build_encoder
from jepa_ecg.models.classifier import build_classifier

METHODS = ('grad_x_input', 'integrated_gradients')


@dataclasses.dataclass
class Explanation:
    """The relevance of one record's patches for some classes.

    Attributes:
      name: the record's name.
      signal: (T, leads) the preprocessed record the model saw.
      fs: its sampling rate (the model's).
      patch_size: samples per patch.
      leads: lead names of `signal`'s columns.
      class_names: every class of the classifier.
      probabilities: (C,) the record's predicted probabilities.
      classes: (K,) indices of the explained classes (highest probability first).
      relevance: (K, P, leads) relevance per class, patch and lead.
      attention: (P,) the attentive pooler's attention per patch, or None.
      method: one of METHODS.
    """
    name: str
    signal: np.ndarray
    fs: float
    patch_size: int
    leads: list
    class_names: list
    probabilities: np.ndarray
    classes: np.ndarray
    relevance: np.ndarray
    attention: np.ndarray | None
    method: str

    @property
    def patch_relevance(self) -> np.ndarray:
        """(K, P) relevance per class and patch, summed over leads."""
        return self.relevance.sum(axis=-1)

    def arrays(self) -> dict:
        """The explanation as named numpy arrays (what the .npz holds)."""
        out = dict(signal=self.signal, fs=np.float32(self.fs), patch_size=self.patch_size,
                   leads=np.asarray(self.leads, dtype=str),
                   class_names=np.asarray(self.class_names, dtype=str),
                   probabilities=self.probabilities, class_indices=self.classes,
                   classes=np.asarray([self.class_names[i] for i in self.classes], dtype=str),
                   relevance=self.relevance, patch_relevance=self.patch_relevance,
                   method=np.asarray(self.method))
        if self.attention is not None:
            out['attention'] = self.attention
        return out


def _overlap_add(per_window: np.ndarray, starts: Sequence[int], num_samples: int
                 ) -> np.ndarray:
    """(W, length, ...) window values -> (num_samples, ...) sum / W at their positions."""
    out = np.zeros((num_samples,) + per_window.shape[2:], np.float64)
    for w, s in zip(per_window, starts):
        n = min(len(w), num_samples - s)
        out[s:s + n] += w[:n]
    return out / len(starts)


def per_patch(values: np.ndarray, patch_size: int) -> np.ndarray:
    """(T, ...) -> (ceil(T / patch), ...) sums over each patch's samples."""
    t = values.shape[0]
    p = -(-t // patch_size)
    padded = np.zeros((p * patch_size,) + values.shape[1:], values.dtype)
    padded[:t] = values
    return padded.reshape((p, patch_size) + values.shape[1:]).sum(axis=1)


class Explainer:
    """Relevance of a classifier's inputs (see the module docstring).

    Args:
      clf: an `inference.classifier.Classifier`.
      method: one of METHODS.
      steps: integrated-gradients path points.
      batch_size: windows per backward pass.
    """

    def __init__(self, clf: Any, method: str = 'grad_x_input', *, steps: int = 32,
                 batch_size: int = 64):
        if method not in METHODS:
            raise ValueError(f'unknown method {method!r}; choose from {METHODS}')
        if steps < 1 or batch_size < 1:
            raise ValueError(f'steps ({steps}) and batch_size ({batch_size}) must be >= 1')
        self.clf, self.method, self.steps, self.batch_size = clf, method, int(steps), batch_size
        cfg = clf.config
        model = build_classifier(cfg, len(clf.class_names), head=clf.head,
                                 head_bias=clf.head_bias, dtype='float32')
        self._params = jax.device_put(clf.params)

        def grad(params, x, cls):
            return jax.grad(lambda x_: model.apply({'params': params}, x_)[:, cls].sum())(x)

        self._grad = jax.jit(grad)
        self._attention = None
        if clf.head == 'attentive':
            encoder = build_encoder(cfg, dtype='float32')
            self._attention = jax.jit(lambda p, x: pooler_attention(
                encoder.apply({'params': p['encoder']}, x, keep_registers=True), p['head'],
                cfg.num_heads, cfg.num_registers))
        self.length, self.stride = clf.encoder.window_and_stride(clf.crop_seconds,
                                                                 clf.stride_seconds)

    def _batched(self, fn, x: np.ndarray, *args) -> np.ndarray:
        out = [np.asarray(fn(self._params, stream.pad_batch(x[i:i + self.batch_size],
                                                            self.batch_size), *args))
               [:len(x[i:i + self.batch_size])] for i in range(0, len(x), self.batch_size)]
        return np.concatenate(out)

    def window_gradients(self, windows: np.ndarray, cls: int) -> np.ndarray:
        """(W, length, L) windows -> d logit_cls / d input (path-averaged for IG)."""
        cls = jnp.asarray(cls, jnp.int32)
        if self.method == 'grad_x_input':
            return self._batched(self._grad, windows, cls)
        alphas = (np.arange(self.steps, dtype=np.float32) + 0.5) / self.steps
        path = (alphas[:, None, None, None] * windows[None]).reshape((-1,) + windows.shape[1:])
        return self._batched(self._grad, path, cls).reshape(
            (self.steps,) + windows.shape).mean(axis=0)

    def explain_record(self, x: np.ndarray, *, name: str = 'record', pad: bool = False,
                       top_k: int | None = None,
                       classes: Sequence[int] | None = None) -> Explanation:
        """The `Explanation` of one preprocessed record (T, leads).

        Args:
          x: the record as `Classifier.encoder.preprocess` returns it.
          name: for the record.
          pad: zero-pad a record shorter than one window.
          top_k: explain the k most probable classes (default: every class).
          classes: explain these class indices instead.
        """
        clf, p = self.clf, self.clf.config.patch_size
        windows = clf.windows(x, pad=pad, name=name)
        starts = transforms.window_starts(len(x), self.length, self.stride)
        logits = clf.window_logits(windows).astype(np.float64).mean(axis=0, keepdims=True)
        prob = clf.probabilities(logits)[0]
        order = np.argsort(-prob, kind='stable')
        chosen = np.asarray(classes if classes is not None else order[:top_k or len(order)],
                            np.int64)
        relevance = []
        for c in chosen:
            g = _overlap_add(self.window_gradients(windows, int(c)), starts, len(x))
            relevance.append(per_patch(x.astype(np.float64) * g, p))
        attention = None
        if self._attention is not None:
            att = self._batched(self._attention, windows)  # (W, patches per window)
            att = np.repeat(att, p, axis=1)[:, :, None] / p
            covered = _overlap_add(np.ones_like(att), starts, len(x))
            attention = per_patch(_overlap_add(att, starts, len(x))
                                  / np.maximum(covered, 1e-12), p)[:, 0].astype(np.float32)
        return Explanation(name, np.asarray(x, np.float32), clf.encoder.fs, p,
                           list(clf.encoder.leads), list(clf.class_names),
                           prob.astype(np.float32), chosen,
                           np.stack(relevance).astype(np.float32) if relevance else
                           np.zeros((0, -(-len(x) // p), x.shape[1]), np.float32),
                           attention, self.method)


def pooler_attention_heads(tokens: jax.Array, head: Any, num_heads: int) -> jax.Array:
    """The attentive pooler's query attention, recomputed from its params.

    As `models.layers.AttentivePooler` computes it: the query token through
    'q', keys from the first `dim` columns of 'kv' (then values), heads of
    dim // num_heads channels, scaled dot product, softmax over all tokens.

    Args:
      tokens: (B, R + N, dim) encoder outputs with the registers first.
      head: the pooler's params.
      num_heads: attention heads.

    Returns:
      (B, num_heads, R + N) attention weights (each row sums to 1).
    """
    b, n, dim = tokens.shape
    hd = dim // num_heads
    q = head['query_token'][0, 0] @ head['q']['kernel']
    kv = tokens @ head['kv']['kernel']
    if 'bias' in head['q']:
        q = q + head['q']['bias']
    if 'bias' in head['kv']:
        kv = kv + head['kv']['bias']
    k = kv.reshape(b, n, 2, num_heads, hd)[:, :, 0]
    scores = jnp.einsum('hd,bnhd->bhn', q.reshape(num_heads, hd) * hd ** -0.5, k)
    return jax.nn.softmax(scores, axis=-1)


def pooler_attention(tokens: jax.Array, head: Any, num_heads: int, num_registers: int
                     ) -> jax.Array:
    """(B, N) pooler attention on the patch tokens: mean over heads, summing to 1."""
    att = pooler_attention_heads(tokens, head, num_heads)[:, :, num_registers:].mean(axis=1)
    return att / jnp.maximum(att.sum(axis=-1, keepdims=True), 1e-12)


def explain(clf: Any, signals, fs: float, leads: Sequence[str], *,
            method: str = 'grad_x_input', top_k: int | None = None,
            classes: Sequence[int] | None = None, steps: int = 32, pad: bool = False,
            batch_size: int = 64, **preprocess_kwargs) -> Any:
    """`Classifier.explain`: explanations of raw records.

    Args:
      clf: the classifier.
      signals: one (T, L) array or a list of them (raw mV).
      fs: sampling rate (Hz).
      leads: column lead names.
      method: 'grad_x_input' or 'integrated_gradients'.
      top_k: explain the k most probable classes of each record (default all).
      classes: explain these class indices instead.
      steps: integrated-gradients path points.
      pad: zero-pad records shorter than one window.
      batch_size: windows per backward pass.
      **preprocess_kwargs: normalize, fill_missing, highpass_hz.

    Returns:
      an `Explanation` for one array, else a list of them.
    """
    single = isinstance(signals, np.ndarray) and signals.ndim == 2
    explainer = Explainer(clf, method, steps=steps, batch_size=batch_size)
    out = []
    for i, sig in enumerate([signals] if single else signals):
        x = clf.encoder.preprocess(sig, fs, leads, **preprocess_kwargs)
        out.append(explainer.explain_record(x, name=f'record{i}', pad=pad, top_k=top_k,
                                            classes=classes))
    return out[0] if single else out


@dataclasses.dataclass
class FilesResult:
    """What `explain_files` did: records explained, files written, failures, time."""
    records: list
    written: list
    failed: list
    seconds: float


def _safe_name(name: str, taken: set) -> str:
    base = re.sub(r'[^\w.+-]+', '_', name).strip('._') or 'record'
    out, k = base, 1
    while out in taken:
        k += 1
        out = f'{base}_{k}'
    taken.add(out)
    return out


def explain_files(clf: Any, paths: Sequence[str], out_dir: str, *, read: stream.ReadOptions,
                  prepare_kwargs: dict, method: str = 'grad_x_input',
                  top_k: int | None = None, steps: int = 32, pad: bool = False,
                  batch_size: int = 64, progress: stream.Progress,
                  plot: bool = True) -> FilesResult:
    """Explains every record of `paths`: `<name>.npz` and `<name>_<class>.png` in `out_dir`.

    Files are read like `predict`'s (`stream.prepare_file`); one that fails
    is reported on `progress` and the others still run.
    """
    # matplotlib only when drawing.
    from jepa_ecg.inference import explain_plot  # pylint: disable=g-import-not-at-top
    start, explainer = time.time(), Explainer(clf, method, steps=steps, batch_size=batch_size)
    records, written, failed, taken = [], [], [], set()

    def prepare(signal, fs, leads, name):
        return clf.encoder.preprocess(signal, fs, leads, name=name, **prepare_kwargs), 0

    with warnings.catch_warnings():
        warnings.simplefilter('ignore', MissingLeadsWarning)
        warnings.simplefilter('ignore', files_lib.AssumedLeadOrderWarning)
        for path in paths:
            for item in stream.prepare_file(path, read, prepare, clf.encoder.leads):
                if item.error is None and item.missing:
                    progress.write(f'warning: {path}: missing leads {list(item.missing)} '
                                   f'filled with zeros')
                try:
                    if item.error is not None:
                        raise ValueError(item.error)
                    exp = explainer.explain_record(item.windows, name=item.name, pad=pad,
                                                   top_k=top_k)
                except ValueError as e:
                    msg = str(e) if path in str(e) else f'{path}: {e}'
                    failed.append((path, msg))
                    progress.write(f'error: {msg}')
                    continue
                stem = os.path.join(out_dir, _safe_name(item.name, taken))
                arrays = {**exp.arrays(), 'path': np.asarray(path)}
                with open(stem + '.npz', 'wb') as f:  # a file: savez would add '.npz'
                    np.savez(f, **arrays)
                written.append(stem + '.npz')
                if plot:
                    written += explain_plot.plot_explanation(exp, stem)
                records.append(item.name)
            progress.advance(len(records), len(failed))
    return FilesResult(records, written, failed, time.time() - start)
