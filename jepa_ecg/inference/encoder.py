"""A trained ECG-JEPA encoder and its file: one small, self-contained directory.

The encoder directory ("encoder file") holds two files:

    encoder.json     {"format": "jepa_ecg.encoder", "version": 1,
                      "model": ModelConfig dict,
                      "leads": the model's input lead order (canonical names),
                      "lead_stats": {"mean": [12 floats], "std": [12 floats],
                                     "source": where they come from} or null,
                      "provenance": {free-form: workdir, step, checkpoint, ...}}
    params.msgpack   the (target) encoder params, `flax.serialization` msgpack
                     of the nested dict `build_encoder(config).init(...)['params']`
                     (float32 numpy leaves)

It is written by `jepa-ecg export` and `jepa-ecg import-torch`, and read by
`read_encoder` (`jepa_ecg.load_encoder`, in inference/runs.py, also takes
run folders):

    enc = jepa_ecg.load_encoder('runs/xs/encoder')
    out = enc.embed(signal, fs=500, leads=['I', 'II', ...])   # raw mV, (T, leads)
    tokens = enc.tokens(x)   # x: normalised (B, T, 12) in enc.leads order

Preprocessing is `jepa_ecg.data.preprocess.preprocess`, as in pre-training
and fine-tuning; records longer than the window are cut into overlapping
windows whose embeddings are averaged (`inference/stream.py`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import unfreeze

from jepa_ecg.data.preprocess import canonical_leads, preprocess
from jepa_ecg.data.stats import LeadStats, as_lead_stats
# What `Encoder.preprocess` and `Encoder.windows` raise or warn, importable from here too.
from jepa_ecg.data.preprocess import (MissingLeadsError, MissingLeadsWarning,  # noqa: F401
                                      RecordTooShortError)
from jepa_ecg.ecg.leads import LEADS
from jepa_ecg.inference import stream
from jepa_ecg.inference.model_files import (PARAMS_FILE, read_model_doc, read_params,
                                            to_numpy_tree, write_params)
from jepa_ecg.models import build_encoder
from jepa_ecg.models.config import ModelConfig

FORMAT = 'jepa_ecg.encoder'
VERSION = 1
CONFIG_FILE = 'encoder.json'
NORMALIZE_MODES = ('stats', 'record')


def normalize_mode(normalize: str) -> str:
    """Checks an encoder-level `normalize` ('stats' or 'record')."""
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f'normalize must be one of {NORMALIZE_MODES}, got {normalize!r}')
    return normalize


@dataclasses.dataclass
class Embeddings:
    """Per-record pooled embeddings.

    Attributes:
      mean: (N, dim) mean of the patch tokens (over windows and patches).
      register: (N, dim) register-token output averaged over windows, or
        None when the model has no registers.
      num_windows: (N,) windows averaged per record.
    """
    mean: np.ndarray
    register: np.ndarray | None
    num_windows: np.ndarray


class Encoder:
    """A loaded encoder: config, params, normalisation statistics and a jitted forward.

    Attributes:
      config: the `ModelConfig`.
      params: encoder params pytree (float32), as `build_encoder(config)` expects.
      lead_stats: `LeadStats` in `leads` order, or None when the encoder
        carries no statistics.
      leads: the model's input lead order.
      meta: the rest of encoder.json (provenance, ...).
    """

    def __init__(self, config: ModelConfig, params: Any, *,
                 lead_stats: LeadStats | Mapping[str, Any] | None = None,
                 leads: Sequence[str] = LEADS, meta: Mapping[str, Any] | None = None):
        self.config = config
        self.params = to_numpy_tree(params)
        self.leads = tuple(canonical_leads(leads))
        if len(self.leads) != config.num_leads:
            raise ValueError(f'{len(self.leads)} lead names for a model with '
                             f'{config.num_leads} leads')
        self.lead_stats = as_lead_stats(lead_stats)
        if self.lead_stats is not None and self.lead_stats.mean.shape != (config.num_leads,):
            raise ValueError(f'lead statistics for {self.lead_stats.mean.shape[0]} leads, '
                             f'the model has {config.num_leads}')
        self.meta = dict(meta or {})
        self._jitted: dict[str, Callable] = {}
        self._device_params = None

    # ----------------------------------------------------------------- basics
    @property
    def fs(self) -> float:
        """The model's input sampling rate (Hz)."""
        return float(self.config.fs)

    @property
    def window_samples(self) -> int:
        """Samples of the longest input the model takes (its pre-training window)."""
        return self.config.num_patches * self.config.patch_size

    @property
    def dim(self) -> int:
        return self.config.dim

    def __repr__(self) -> str:
        c = self.config
        return (f'Encoder(variant={c.variant!r}, dim={c.dim}, depth={c.depth}, fs={c.fs:g}, '
                f'window={c.window_seconds:g}s, patch={c.patch_size}, '
                f'stats={"yes" if self.lead_stats is not None else "no"})')

    def module(self, **kwargs):
        """The Flax module (`build_encoder(config, **kwargs)`).

        Inference computes in float32 unless `dtype=` says otherwise: a run
        trained with bfloat16 compute still has float32 weights, and
        embeddings should not depend on the training precision.
        """
        kwargs.setdefault('dtype', 'float32')
        return build_encoder(self.config, **kwargs)

    def _jit(self, name: str, fn: Callable) -> Callable:
        """`fn(params, ...)` jitted on first use under `name`, bound to the device params."""
        if name not in self._jitted:
            self._jitted[name] = jax.jit(fn)
        if self._device_params is None:
            self._device_params = jax.device_put(self.params)
        fn = self._jitted[name]
        return lambda *args: fn(self._device_params, *args)

    # ---------------------------------------------------------- forward pass
    def tokens(self, x, *, keep_registers: bool = False):
        """The raw forward pass of the (target) encoder.

        Args:
          x: (batch, time, leads) already normalised input in `self.leads`
            order; time a multiple of patch_size and at most the window.
          keep_registers: prepend the register token outputs.

        Returns:
          (batch, patches, dim) float32 jax array of patch-token outputs after
          the final LayerNorm (registers dropped unless keep_registers), i.e.
          what the official target encoder returns.
        """
        x = np.asarray(x, np.float32)
        if x.ndim != 3:
            raise ValueError(f'tokens() wants (batch, time, leads), got shape {x.shape}')
        if x.shape[-1] != self.config.num_leads:
            raise ValueError(f'input has {x.shape[-1]} leads, the model takes '
                             f'{self.config.num_leads} (in order {list(self.leads)})')
        model = self.module()
        fn = self._jit(f'tokens{keep_registers}', lambda p, x: model.apply(
            {'params': p}, x, keep_registers=keep_registers))
        return fn(x)

    def window_embeddings(self, windows: np.ndarray, valid_patches: np.ndarray) -> np.ndarray:
        """Per-window [patch-token mean, register mean] of normalised windows.

        Pooling runs on the device, so only (B, 2, dim) comes back instead of
        every token; this is the forward `stream.WindowBatcher` runs.

        Args:
          windows: (B, time, leads) normalised windows.
          valid_patches: (B,) patches holding real signal per window; the
            others (zero padding) are left out of the mean.

        Returns:
          (B, 2, dim) float32; [:, 1] is zeros when the model has no registers.
        """
        r = self.config.num_registers
        model = self.module()

        def pooled(p, x, valid):
            out = model.apply({'params': p}, x, keep_registers=True)
            tokens = out[:, r:]
            mask = (jnp.arange(tokens.shape[1])[None, :] < valid[:, None]).astype(tokens.dtype)
            mean = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            reg = out[:, :r].mean(1) if r else jnp.zeros_like(mean)
            return jnp.stack([mean, reg], axis=1)

        fn = self._jit('window_embeddings', pooled)
        return np.asarray(fn(np.asarray(windows, np.float32),
                             np.asarray(valid_patches, np.int32)))

    # --------------------------------------------------------- preprocessing
    def preprocess(self, signal: np.ndarray, fs: float, leads: Sequence[str], *,
                   normalize: str = 'stats', fill_missing: str | None = None,
                   highpass_hz: float | None = None, name: str | None = None) -> np.ndarray:
        """Raw record -> normalised (T', leads) float32 at the model's rate and lead order.

        This is `jepa_ecg.data.preprocess.preprocess` with the encoder's rate,
        leads and statistics.

        Args:
          signal: (T, L) raw signal (mV), columns named by `leads`.
          fs: its sampling rate (Hz).
          leads: its lead names (any order, case-insensitive; extra leads ignored).
          normalize: 'stats' (the encoder's per-lead
            statistics) or 'record' (the record's own per-lead mean/std).
          fill_missing: None (missing leads raise MissingLeadsError) or
            'zero' (missing leads become 0 after normalisation, with a warning).
          highpass_hz: optional zero-phase Butterworth high-pass cut-off,
            applied before resampling (use 0.5 for very wandering baselines).
          name: record name for messages.

        Returns:
          (round(T * model_fs / fs), num_leads) float32, clipped to [-5, 5].
        """
        mode = normalize_mode(normalize)
        if mode == 'stats' and self.lead_stats is None:
            raise ValueError('this encoder carries no lead statistics: use '
                             'normalize="record" (CLI: --normalize=record)')
        return preprocess(signal, fs, leads, target_fs=self.fs, stats=self.lead_stats,
                          model_leads=self.leads, normalize=mode, highpass_hz=highpass_hz,
                          fill_missing=fill_missing, name=name)

    def window_and_stride(self, window_seconds: float | None = None,
                          stride_seconds: float | None = None) -> tuple[int, int]:
        """(window, stride) in samples at the model's rate.

        Args:
          window_seconds: window length; default the model's full window.
            Rounded down to whole patches, at most the model's window.
          stride_seconds: hop between windows; default half a window (as the
            evaluation's 2.5 s windows every 1.25 s).

        Raises:
          ValueError: a window shorter than one patch.
        """
        p = self.config.patch_size
        length = stream.seconds_to_samples(self.fs, window_seconds) or self.window_samples
        length = min(length, self.window_samples) // p * p
        if length <= 0:
            raise ValueError(f'a window of {window_seconds} s is shorter than one patch '
                             f'({p / self.fs:g} s)')
        return length, stream.seconds_to_samples(self.fs, stride_seconds) or max(p, length // 2)

    def windows(self, x: np.ndarray, *, window_seconds: float | None = None,
                stride_seconds: float | None = None, pad: bool = False,
                name: str | None = None) -> tuple[np.ndarray, int]:
        """Cuts a preprocessed record into model windows (`stream.cut_windows`).

        Returns:
          ((num_windows, window, leads) array, valid patches per window).
        """
        length, stride = self.window_and_stride(window_seconds, stride_seconds)
        return stream.cut_windows(x, length=length, stride=stride,
                                  patch_size=self.config.patch_size, fs=self.fs, pad=pad,
                                  name=name)

    # -------------------------------------------------------------- pooling
    def embeddings(self, outputs: Sequence[np.ndarray]) -> Embeddings:
        """`Embeddings` from per-record `window_embeddings` outputs (W_i, 2, dim)."""
        pooled = stream.pool(outputs, (2, self.dim))
        return Embeddings(pooled[:, 0], pooled[:, 1] if self.config.num_registers else None,
                          np.asarray([len(o) for o in outputs], np.int64))

    def embed(self, signals, fs: float, leads: Sequence[str], *,
              normalize: str = 'stats', fill_missing: str | None = None,
              pad: bool = False, window_seconds: float | None = None,
              stride_seconds: float | None = None, highpass_hz: float | None = None,
              batch_size: int = 64) -> Embeddings:
        """Embeds raw ECG records (preprocessing, windowing and pooling included).

        Args:
          signals: one (T, L) array or a list of them (lengths may differ),
            raw values in mV with columns named by `leads`.
          fs: their sampling rate (Hz), resampled to the model's.
          leads: lead names of the columns (any order; matched by name).
          normalize: 'stats' or 'record' (see `preprocess`).
          fill_missing: None or 'zero' (see `preprocess`).
          pad: zero-pad records shorter than the window.
          window_seconds: window length; default the model's pre-training window.
          stride_seconds: hop between windows; default half a window.
          highpass_hz: optional high-pass cut-off before resampling.
          batch_size: windows per forward pass.

        Returns:
          `Embeddings` with (N, dim) `mean` (patch tokens averaged over
          patches and windows) and `register` (register token averaged over
          windows), N = number of records.
        """
        single = isinstance(signals, np.ndarray) and signals.ndim == 2
        batcher = stream.WindowBatcher(self.window_embeddings, batch_size)
        for sig in [signals] if single else signals:
            x = self.preprocess(sig, fs, leads, normalize=normalize, fill_missing=fill_missing,
                                highpass_hz=highpass_hz)
            batcher.add(*self.windows(x, window_seconds=window_seconds,
                                      stride_seconds=stride_seconds, pad=pad))
        return self.embeddings(batcher.finish())

    # ----------------------------------------------------------------- save
    def save(self, path: str, *, provenance: Mapping[str, Any] | None = None) -> str:
        """Writes this encoder as an encoder directory (see the module docstring)."""
        return save_encoder(path, self.config, self.params, lead_stats=self.lead_stats,
                            leads=self.leads,
                            provenance={**self.meta.get('provenance', {}), **(provenance or {})})


# --------------------------------------------------------------------- files
def lead_stats_json(stats: LeadStats | Mapping[str, Any] | None) -> dict | None:
    """Lead statistics as stored in encoder/classifier files ({'mean', 'std', 'source'})."""
    stats = as_lead_stats(stats)
    return None if stats is None else stats.to_json()


def save_encoder(path: str, config: ModelConfig, params: Any, *,
                 lead_stats: LeadStats | Mapping[str, Any] | None = None,
                 leads: Sequence[str] = LEADS,
                 provenance: Mapping[str, Any] | None = None) -> str:
    """Writes an encoder directory (`encoder.json` + `params.msgpack`).

    Args:
      path: output directory (created; existing files are overwritten).
      config: the model config.
      params: encoder params pytree (the `params` collection of `build_encoder`).
      lead_stats: per-lead statistics in `leads` order, or None.
      leads: the model's input lead order.
      provenance: free-form JSON-able dict saying where the weights come from.

    Returns:
      the directory path.
    """
    check_params(config, params)
    os.makedirs(path, exist_ok=True)
    doc = {'format': FORMAT, 'version': VERSION, 'model': config.to_dict(),
           'leads': canonical_leads(leads),
           'lead_stats': lead_stats_json(lead_stats), 'provenance': dict(provenance or {})}
    write_params(os.path.join(path, PARAMS_FILE), params)
    with open(os.path.join(path, CONFIG_FILE), 'w', encoding='utf-8') as f:
        json.dump(doc, f, indent=2, default=str)
    return path


def check_params(config: ModelConfig, params: Any) -> None:
    """Raises ValueError when `params` does not fit the encoder `config` builds."""
    model = build_encoder(config)
    x = jax.ShapeDtypeStruct((1, config.patch_size, config.num_leads), np.float32)
    want = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)['params']

    def shapes(tree):
        return {'/'.join(str(getattr(k, 'key', k)) for k in path): np.shape(v)
                for path, v in jax.tree_util.tree_flatten_with_path(unfreeze(tree))[0]}

    want_flat, have_flat = shapes(want), shapes(params)
    if want_flat != have_flat:
        missing = sorted(set(want_flat) - set(have_flat))
        extra = sorted(set(have_flat) - set(want_flat))
        wrong = sorted(k for k in set(want_flat) & set(have_flat) if want_flat[k] != have_flat[k])
        raise ValueError(f'params do not match the config: missing {missing[:5]}, '
                         f'unexpected {extra[:5]}, wrong shapes '
                         f'{[(k, have_flat[k], want_flat[k]) for k in wrong[:5]]}')


def is_encoder_dir(path: str) -> bool:
    """Whether `path` is an encoder directory (or its encoder.json)."""
    if os.path.isfile(path) and os.path.basename(path) == CONFIG_FILE:
        return True
    return os.path.isfile(os.path.join(path, CONFIG_FILE))


def read_encoder(path: str, *, lead_stats: LeadStats | Mapping[str, Any] | None = None
                 ) -> Encoder:
    """Reads an encoder directory (see the module docstring).

    `jepa_ecg.load_encoder` (inference/runs.py) also takes run folders.

    Args:
      path: an encoder directory or its `encoder.json`.
      lead_stats: override the stored normalisation statistics.

    Returns:
      an `Encoder`.

    Raises:
      FileNotFoundError: `path` is not an encoder directory.
      ValueError: a file of another format or a newer version, or params
        that do not fit the config.
    """
    path, doc = read_model_doc(
        path, config_file=CONFIG_FILE, fmt=FORMAT, version=VERSION, kind='encoder',
        hint='create one with `jepa-ecg export WORKDIR --out DIR` or '
             '`jepa-ecg import-torch CKPT --out DIR`')
    config = ModelConfig.from_dict(doc['model'])
    params = read_params(os.path.join(path, PARAMS_FILE))
    check_params(config, params)
    stats = lead_stats if lead_stats is not None else doc.get('lead_stats')
    meta = {k: v for k, v in doc.items() if k not in ('model', 'lead_stats', 'params')}
    meta['path'] = os.path.abspath(path)
    return Encoder(config, params, lead_stats=stats, leads=doc.get('leads', LEADS), meta=meta)
