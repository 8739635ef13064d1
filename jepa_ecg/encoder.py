"""A trained ECG-JEPA encoder as one small, self-contained file set.

The exported encoder ("encoder file") is a directory holding two files:

    encoder.json     {"format": "jepa_ecg.encoder", "version": 1,
                      "model": ModelConfig dict,
                      "leads": the model's input lead order (canonical names),
                      "fs": the model's sampling rate (Hz),
                      "lead_stats": {"mean": [12 floats], "std": [12 floats],
                                     "source": where they come from} or null,
                      "provenance": {free-form: workdir, step, checkpoint, ...}}
    params.msgpack   the (target) encoder params, `flax.serialization` msgpack
                     of the nested dict `build_encoder(config).init(...)['params']`
                     (float32 numpy leaves)

It is written by `jepa-ecg export WORKDIR` (a pre-training run) and by
`jepa-ecg import-torch ckpt.pt` (an official PyTorch checkpoint), and read by
`load_encoder`, which `jepa-ecg embed/predict` and `finetune.py --encoder`
use:

    enc = jepa_ecg.load_encoder('runs/xs/encoder')
    out = enc.embed(signal, fs=500, leads=['I', 'II', ...])   # raw mV, (T, leads)
    tokens = enc.tokens(x)   # x: normalised (B, T, 12) in enc.leads order

Preprocessing in `embed` follows pre-training: NaNs interpolated, FFT
resampling to the model's rate, leads matched by name and reordered,
per-lead z-score with the stored statistics (or the record's own, on request),
clip to [-5, 5]; records longer than the window are cut into overlapping
windows whose embeddings are averaged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jepa_ecg.leads import LEADS, canonical_lead_name, lead_permutation, missing_leads
from jepa_ecg.models.config import ModelConfig

FORMAT = 'jepa_ecg.encoder'
VERSION = 1
CONFIG_FILE = 'encoder.json'
PARAMS_FILE = 'params.msgpack'
CLIP = 5.0
NORMALIZE_MODES = ('stored', 'record')


class MissingLeadsWarning(UserWarning):
    """Missing leads were filled with zeros."""


class MissingLeadsError(ValueError):
    """A record lacks leads the model needs (and filling was not asked for)."""

    def __init__(self, missing: Sequence[str], have: Sequence[str], name: str | None = None):
        self.missing = list(missing)
        where = f'{name}: ' if name else ''
        super().__init__(
            f'{where}missing leads {self.missing} (record has {list(have)}); '
            f'pass fill_missing="zero" (CLI: --fill-missing=zero) to fill them with zeros')


class RecordTooShortError(ValueError):
    """A record is shorter than one model window (and padding was not asked for)."""


def _to_numpy_tree(tree: Any) -> Any:
    import jax  # pylint: disable=g-import-not-at-top
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), tree)


def _canonical_leads(leads: Sequence[str]) -> list[str]:
    return [canonical_lead_name(n) or n for n in leads]


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
      lead_stats: {'mean': (12,), 'std': (12,)} float arrays in `leads` order,
        or None when the encoder carries no statistics.
      leads: the model's input lead order.
      meta: the rest of encoder.json (provenance, ...).
    """

    def __init__(self, config: ModelConfig, params: Any, *,
                 lead_stats: Mapping[str, Any] | None = None,
                 leads: Sequence[str] = LEADS, meta: Mapping[str, Any] | None = None):
        self.config = config
        self.params = _to_numpy_tree(params)
        self.leads = tuple(_canonical_leads(leads))
        if len(self.leads) != config.num_leads:
            raise ValueError(f'{len(self.leads)} lead names for a model with '
                             f'{config.num_leads} leads')
        self.lead_stats = None
        if lead_stats is not None:
            self.lead_stats = {k: np.asarray(lead_stats[k], np.float32) for k in ('mean', 'std')}
            for k, v in self.lead_stats.items():
                if v.shape != (config.num_leads,):
                    raise ValueError(f'lead_stats[{k!r}] has shape {v.shape}, '
                                     f'want ({config.num_leads},)')
            if 'source' in lead_stats:
                self.lead_stats['source'] = lead_stats['source']
        self.meta = dict(meta or {})
        self._apply_cache: dict[bool, Callable] = {}
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
        from jepa_ecg.models import build_encoder  # pylint: disable=g-import-not-at-top
        kwargs.setdefault('dtype', 'float32')
        return build_encoder(self.config, **kwargs)

    def _forward(self, keep_registers: bool) -> Callable:
        fn = self._apply_cache.get(keep_registers)
        if fn is None:
            import jax  # pylint: disable=g-import-not-at-top
            model = self.module()
            fn = jax.jit(lambda p, x: model.apply({'params': p}, x,
                                                  keep_registers=keep_registers))
            self._apply_cache[keep_registers] = fn
        if self._device_params is None:
            import jax  # pylint: disable=g-import-not-at-top
            self._device_params = jax.device_put(self.params)
        return lambda x: fn(self._device_params, x)

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
        if x.ndim == 2:
            raise ValueError(f'tokens() wants (batch, time, leads), got shape {x.shape}')
        if x.shape[-1] != self.config.num_leads:
            raise ValueError(f'input has {x.shape[-1]} leads, the model takes '
                             f'{self.config.num_leads} (in order {list(self.leads)})')
        return self._forward(keep_registers)(x)

    # --------------------------------------------------------- preprocessing
    def preprocess(self, signal: np.ndarray, fs: float, leads: Sequence[str], *,
                   normalize: str = 'stored', fill_missing: str | None = None,
                   highpass_hz: float | None = None, name: str | None = None) -> np.ndarray:
        """Raw record -> normalised (T', leads) float32 at the model's rate and lead order.

        Args:
          signal: (T, L) raw signal (mV), columns named by `leads`.
          fs: its sampling rate (Hz).
          leads: its lead names (any order, case-insensitive; extra leads ignored).
          normalize: 'stored' (the encoder's per-lead statistics) or 'record'
            (the record's own per-lead mean/std).
          fill_missing: None (missing leads raise MissingLeadsError) or
            'zero' (missing leads become 0 after normalisation, with a warning).
          highpass_hz: optional zero-phase Butterworth high-pass cut-off,
            applied before resampling (use 0.5 for very wandering baselines).
          name: record name for messages.

        Returns:
          (round(T * model_fs / fs), num_leads) float32, clipped to [-5, 5].
        """
        from jepa_ecg.data import transforms  # pylint: disable=g-import-not-at-top
        signal = np.asarray(signal, np.float32)
        if signal.ndim != 2 or signal.shape[1] != len(leads):
            raise ValueError(f'{name or "record"}: signal of shape {signal.shape} does not '
                             f'match {len(leads)} lead names {list(leads)}')
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f'normalize must be one of {NORMALIZE_MODES}, got {normalize!r}')
        if normalize == 'stored' and self.lead_stats is None:
            raise ValueError('this encoder carries no lead statistics: use '
                             'normalize="record" (CLI: --normalize=record)')
        if fill_missing not in (None, 'none', 'zero'):
            raise ValueError(f'fill_missing must be None or "zero", got {fill_missing!r}')
        missing = missing_leads(leads, self.leads)
        if missing and fill_missing != 'zero':
            raise MissingLeadsError(missing, leads, name)
        if missing:
            warnings.warn(f'{name or "record"}: missing leads {missing} are filled with zeros '
                          f'(the embedding of such a record is less reliable)',
                          MissingLeadsWarning, stacklevel=2)
        # Keep only the model's leads (in model order) before the costly steps.
        present = [t for t in self.leads if t not in missing]
        perm = lead_permutation(leads, present)
        sub = signal[:, perm]
        # A lead that is NaN everywhere cannot be interpolated: treat it as missing.
        if sub.size and np.isnan(sub).all(axis=0).any():
            dead = [present[i] for i in np.flatnonzero(np.isnan(sub).all(axis=0))]
            if fill_missing != 'zero':
                raise MissingLeadsError(dead, leads, name)
            sub = np.where(np.isnan(sub).all(axis=0, keepdims=True), 0.0, sub)
            missing = missing + dead
        sub = transforms.interpolate_nans(sub)
        if highpass_hz:
            sub = transforms.highpass(sub, fs, highpass_hz)
        sub = transforms.resample(sub, fs, self.fs)
        idx = [self.leads.index(t) for t in present]
        if normalize == 'stored':
            mean, std = self.lead_stats['mean'][idx], self.lead_stats['std'][idx]
        else:
            mean = sub.mean(axis=0)
            std = sub.std(axis=0)
        std = np.where(std > 1e-8, std, 1.0)
        sub = transforms.clip(transforms.normalize(sub, mean, std), -CLIP, CLIP)
        out = np.zeros((sub.shape[0], self.config.num_leads), np.float32)
        out[:, idx] = sub
        for t in missing:
            out[:, self.leads.index(t)] = 0.0
        return out

    def windows(self, x: np.ndarray, *, window_samples: int | None = None,
                stride_samples: int | None = None, pad: bool = False,
                name: str | None = None) -> tuple[np.ndarray, int]:
        """Cuts a preprocessed record into model windows.

        Args:
          x: (T, leads) preprocessed signal.
          window_samples: window length (default: the model's full window),
            rounded down to a multiple of patch_size.
          stride_samples: hop between windows (default: half a window, as the
            evaluation's 2.5 s windows every 1.25 s).
          pad: zero-pad a record shorter than one window instead of raising.
          name: record name for messages.

        Returns:
          ((num_windows, window, leads) array, valid_patches) where
          valid_patches is the number of patches holding real signal in each
          window (less than the window only for a padded short record).
        """
        p = self.config.patch_size
        length = window_samples or self.window_samples
        length = min(length, self.window_samples) // p * p
        if length <= 0:
            raise ValueError(f'window of {window_samples} samples is shorter than one patch ({p})')
        stride = stride_samples or max(p, length // 2)
        t = x.shape[0]
        if t < length:
            if not pad:
                raise RecordTooShortError(
                    f'{name or "record"}: {t / self.fs:.2f} s at {self.fs:g} Hz is shorter than '
                    f'the {length / self.fs:.2f} s window; pass pad=True (CLI: --pad) to '
                    f'zero-pad it, or use a shorter window')
            valid = max(1, -(-t // p))
            out = np.zeros((1, length, x.shape[1]), np.float32)
            out[0, :t] = x
            return out, min(valid, length // p)
        from jepa_ecg.data import transforms  # pylint: disable=g-import-not-at-top
        wins = transforms.sliding_windows(x, length, stride)
        # Cover the tail too: one more window aligned to the end of the record.
        if (t - length) % stride:
            wins = np.concatenate([wins, x[None, t - length:]], axis=0)
        return np.ascontiguousarray(wins, np.float32), length // p

    # -------------------------------------------------------------- pooling
    def embed_windows(self, windows: np.ndarray, valid_patches: int | np.ndarray | None = None,
                      *, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
        """Pooled embeddings of already preprocessed windows.

        Args:
          windows: (W, time, leads) normalised windows of equal length.
          valid_patches: patches holding real signal per window (scalar or (W,));
            padded patches are left out of the mean. Default: all.
          batch_size: windows per forward pass (fixed, so one compilation).

        Returns:
          (mean_tokens (W, dim), register (W, dim) or None).
        """
        w, length, _ = windows.shape
        n = length // self.config.patch_size
        valid = np.broadcast_to(np.asarray(n if valid_patches is None else valid_patches), (w,))
        mask = (np.arange(n)[None, :] < valid[:, None]).astype(np.float32)
        r = self.config.num_registers
        fwd = self._forward(True)
        means, regs = [], []
        for start in range(0, w, batch_size):
            chunk = windows[start:start + batch_size]
            k = chunk.shape[0]
            chunk = pad_batch(chunk, batch_size)
            out = np.asarray(fwd(chunk))[:k]
            m = mask[start:start + k]
            means.append((out[:, r:] * m[..., None]).sum(1) / m.sum(1, keepdims=True))
            if r:
                regs.append(out[:, :r].mean(1))
        dim = self.config.dim
        mean = np.concatenate(means) if means else np.zeros((0, dim), np.float32)
        reg = (np.concatenate(regs) if regs else np.zeros((0, dim), np.float32)) if r else None
        return mean.astype(np.float32), None if reg is None else reg.astype(np.float32)

    def embed(self, signals, fs: float, leads: Sequence[str], *,
              normalize: str = 'stored', fill_missing: str | None = None,
              pad: bool = False, window_seconds: float | None = None,
              stride_seconds: float | None = None, highpass_hz: float | None = None,
              batch_size: int = 64) -> Embeddings:
        """Embeds raw ECG records (preprocessing, windowing and pooling included).

        Args:
          signals: one (T, L) array or a list of them (lengths may differ),
            raw values in mV with columns named by `leads`.
          fs: their sampling rate (Hz), resampled to the model's.
          leads: lead names of the columns (any order; matched by name).
          normalize: 'stored' or 'record' (see `preprocess`).
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
        records = [signals] if single else list(signals)
        all_windows, valid, owner = [], [], []
        for i, sig in enumerate(records):
            x = self.preprocess(sig, fs, leads, normalize=normalize, fill_missing=fill_missing,
                                highpass_hz=highpass_hz)
            wins, v = self.windows(
                x, window_samples=self.seconds_to_samples(window_seconds),
                stride_samples=self.seconds_to_samples(stride_seconds), pad=pad)
            all_windows.append(wins)
            valid.extend([v] * len(wins))
            owner.extend([i] * len(wins))
        if not records:
            dim = self.config.dim
            return Embeddings(np.zeros((0, dim), np.float32),
                              np.zeros((0, dim), np.float32) if self.config.num_registers else None,
                              np.zeros((0,), np.int64))
        lengths = {w.shape[1] for w in all_windows}
        if len(lengths) > 1:  # cannot happen: windows share one length
            raise AssertionError(lengths)
        mean, reg = self.embed_windows(np.concatenate(all_windows), np.asarray(valid),
                                       batch_size=batch_size)
        return pool_windows(mean, reg, np.asarray(owner), len(records))

    def seconds_to_samples(self, seconds: float | None) -> int | None:
        """Samples in `seconds` at the model's rate (None stays None)."""
        if seconds is None:
            return None
        return max(1, int(round(seconds * self.fs)))

    # ----------------------------------------------------------------- save
    def save(self, path: str, *, provenance: Mapping[str, Any] | None = None) -> str:
        """Writes this encoder as an encoder directory (see the module docstring)."""
        return save_encoder(path, self.config, self.params, lead_stats=self.lead_stats,
                            leads=self.leads,
                            provenance={**self.meta.get('provenance', {}), **(provenance or {})})


def pad_batch(x: np.ndarray, batch_size: int) -> np.ndarray:
    """Zero-pads the batch axis to a power of two (at most `batch_size`).

    The jitted forward then sees at most log2(batch_size) + 1 batch shapes,
    so small calls stay cheap and big ones compile once.
    """
    k = x.shape[0]
    target = batch_size if k >= batch_size else min(batch_size, 1 << max(0, (k - 1).bit_length()))
    if target == k:
        return x
    return np.concatenate([x, np.zeros((target - k,) + x.shape[1:], x.dtype)])


def pool_windows(mean: np.ndarray, register: np.ndarray | None, owner: np.ndarray,
                 num_records: int) -> Embeddings:
    """Averages per-window embeddings into per-record ones.

    Args:
      mean: (W, dim) per-window mean-token embeddings.
      register: (W, dim) per-window register embeddings, or None.
      owner: (W,) record index of each window.
      num_records: N.

    Returns:
      `Embeddings` with (N, dim) arrays.
    """
    counts = np.bincount(owner, minlength=num_records).astype(np.int64)
    denom = np.maximum(counts, 1)[:, None].astype(np.float32)

    def avg(a):
        out = np.zeros((num_records, a.shape[1]), np.float64)
        np.add.at(out, owner, a)
        return (out / denom).astype(np.float32)

    return Embeddings(avg(mean), None if register is None else avg(register), counts)


# --------------------------------------------------------------------- files
def save_encoder(path: str, config: ModelConfig, params: Any, *,
                 lead_stats: Mapping[str, Any] | None = None, leads: Sequence[str] = LEADS,
                 provenance: Mapping[str, Any] | None = None) -> str:
    """Writes an encoder directory (`encoder.json` + `params.msgpack`).

    Args:
      path: output directory (created; existing files are overwritten).
      config: the model config.
      params: encoder params pytree (the `params` collection of `build_encoder`).
      lead_stats: {'mean', 'std'} per lead in `leads` order (+ optional
        'source'), or None.
      leads: the model's input lead order.
      provenance: free-form JSON-able dict saying where the weights come from.

    Returns:
      the directory path.
    """
    from flax import serialization  # pylint: disable=g-import-not-at-top
    _check_params(config, params)
    os.makedirs(path, exist_ok=True)
    stats = _lead_stats_json(lead_stats)
    doc = {'format': FORMAT, 'version': VERSION, 'model': config.to_dict(),
           'leads': _canonical_leads(leads), 'fs': float(config.fs),
           'lead_stats': stats, 'provenance': dict(provenance or {})}
    data = serialization.msgpack_serialize(_to_numpy_tree(_unfreeze(params)))
    tmp = os.path.join(path, PARAMS_FILE + '.tmp')
    with open(tmp, 'wb') as f:
        f.write(data)
    os.replace(tmp, os.path.join(path, PARAMS_FILE))
    with open(os.path.join(path, CONFIG_FILE), 'w', encoding='utf-8') as f:
        json.dump(doc, f, indent=2, default=str)
    return path


def _lead_stats_json(lead_stats: Mapping[str, Any] | None) -> dict | None:
    """`lead_stats` as the JSON-able dict stored in encoder/classifier files.

    Arrays become lists of Python floats (json cannot write numpy scalars);
    the optional 'source' note is kept as it is. None stays None.
    """
    if lead_stats is None:
        return None
    stats = {k: [float(v) for v in np.asarray(lead_stats[k])] for k in ('mean', 'std')}
    if 'source' in lead_stats:
        stats['source'] = lead_stats['source']
    return stats


def _unfreeze(tree):
    if isinstance(tree, Mapping):
        return {k: _unfreeze(v) for k, v in tree.items()}
    return tree


def _check_params(config: ModelConfig, params: Any) -> None:
    """Raises when `params` does not fit the encoder `config` builds."""
    import jax  # pylint: disable=g-import-not-at-top
    from jepa_ecg.models import build_encoder  # pylint: disable=g-import-not-at-top
    model = build_encoder(config)
    x = jax.ShapeDtypeStruct((1, config.patch_size, config.num_leads), np.float32)
    want = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)['params']
    want_flat = {'/'.join(str(getattr(k, 'key', k)) for k in path): v.shape
                 for path, v in jax.tree_util.tree_flatten_with_path(want)[0]}
    have_flat = {'/'.join(str(getattr(k, 'key', k)) for k in path): np.shape(v)
                 for path, v in jax.tree_util.tree_flatten_with_path(_unfreeze(params))[0]}
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


def load_encoder(path: str, *, lead_stats: Mapping[str, Any] | None = None) -> Encoder:
    """Loads an exported or imported encoder.

    Args:
      path: an encoder directory (or its `encoder.json`). Also accepted: a
        pre-training workdir (with `checkpoints/`; its target encoder, with
        the statistics of the run's sources when computed), a classifier
        directory or a fine-tuning run (their encoder, with the fine-tuning
        statistics).
      lead_stats: override the stored normalisation statistics.

    Returns:
      an `Encoder`.

    Raises:
      FileNotFoundError: when `path` is neither.
    """
    path = os.fspath(path)
    if os.path.isfile(path) and os.path.basename(path) == CONFIG_FILE:
        path = os.path.dirname(path) or '.'
    if not is_encoder_dir(path):
        if is_classifier_dir(path):
            return load_classifier(path, lead_stats=lead_stats).encoder
        if os.path.isdir(os.path.join(path, 'checkpoints')) or _looks_like_checkpoints(path):
            return encoder_from_workdir(path, lead_stats=lead_stats)
        run = find_finetune_run(path) if os.path.isdir(path) else None
        if run is not None:
            return classifier_from_finetune_run(run, lead_stats=lead_stats).encoder
        raise FileNotFoundError(
            f'{path} is not an encoder directory (no {CONFIG_FILE}); create one with '
            f'`jepa-ecg export WORKDIR --out DIR` or `jepa-ecg import-torch CKPT --out DIR`')
    from flax import serialization  # pylint: disable=g-import-not-at-top
    with open(os.path.join(path, CONFIG_FILE), encoding='utf-8') as f:
        doc = json.load(f)
    if doc.get('format') != FORMAT:
        raise ValueError(f'{path}/{CONFIG_FILE} is not a {FORMAT} file')
    if int(doc.get('version', 0)) > VERSION:
        raise ValueError(f'{path} has encoder format version {doc["version"]}; this '
                         f'jepa_ecg reads up to {VERSION}: upgrade jepa_ecg')
    config = ModelConfig.from_dict(doc['model'])
    with open(os.path.join(path, PARAMS_FILE), 'rb') as f:
        params = serialization.msgpack_restore(f.read())
    _check_params(config, params)
    stats = lead_stats if lead_stats is not None else doc.get('lead_stats')
    meta = {k: v for k, v in doc.items() if k not in ('model', 'lead_stats', 'params')}
    meta['path'] = os.path.abspath(path)
    return Encoder(config, params, lead_stats=stats, leads=doc.get('leads', LEADS), meta=meta)


def _looks_like_checkpoints(path: str) -> bool:
    return os.path.isdir(path) and any(n.isdigit() for n in os.listdir(path))


# ------------------------------------------------------ from a pre-training run
def workdir_lead_stats(workdir: str, *, data_dir: str | None = None) -> dict | None:
    """Normalisation statistics of a pre-training run's data mix, if computed.

    One source: its statistics. Several: the mixture of their per-lead
    distributions under the sampling weights (mean = weighted mean; variance
    = weighted second moment minus mean squared), the closest single z-score
    to what the encoder saw.

    Args:
      workdir: pre-training workdir with `config.json`.
      data_dir: TFDS data directory holding the statistics; default the
        run's `data.data_dir`, else ~/tensorflow_datasets.

    Returns:
      {'mean', 'std', 'source'} or None when unknown.
    """
    cfg_path = os.path.join(workdir, 'config.json')
    if not os.path.isfile(cfg_path):
        return None
    with open(cfg_path, encoding='utf-8') as f:
        run = json.load(f)
    data = (run.get('config') or {}).get('data') or {}
    mixture_name = data.get('mixture')
    data_dir = data_dir or data.get('data_dir')
    if not mixture_name:
        return None
    try:
        from jepa_ecg.data import sources as sources_lib  # pylint: disable=g-import-not-at-top
        from jepa_ecg.data import stats as stats_lib  # pylint: disable=g-import-not-at-top
        mixture = sources_lib.MIXTURES[mixture_name]
        data_dir = data_dir or os.path.expanduser('~/tensorflow_datasets')
        stats = {name: stats_lib.load_lead_stats(name, data_dir) for name in mixture}
    except Exception:  # pylint: disable=broad-except
        # Missing statistics or data dir moved: the caller decides what to do.
        return None
    return mix_lead_stats(stats, mixture, source=f'pre-training mix {mixture_name!r}')


def mix_lead_stats(stats: Mapping[str, Mapping[str, Sequence[float]]],
                   weights: Mapping[str, float], *, source: str = '') -> dict:
    """Per-lead mean/std of a weighted mixture of sources.

    Args:
      stats: source -> {'mean', 'std'} (12 floats each).
      weights: source -> sampling weight.
      source: description stored with the result.

    Returns:
      {'mean': [12], 'std': [12], 'source': source}.
    """
    total = sum(float(weights[s]) for s in stats)
    mean = sum(float(weights[s]) / total * np.asarray(stats[s]['mean'], np.float64)
               for s in stats)
    second = sum(float(weights[s]) / total * (np.asarray(stats[s]['std'], np.float64) ** 2
                                              + np.asarray(stats[s]['mean'], np.float64) ** 2)
                 for s in stats)
    std = np.sqrt(np.maximum(second - mean ** 2, 1e-12))
    return {'mean': mean.tolist(), 'std': std.tolist(), 'source': source}


def encoder_from_workdir(workdir: str, *, step: int | None = None,
                         lead_stats: Mapping[str, Any] | None = None,
                         which: str = 'target_params') -> Encoder:
    """The (target) encoder of a pre-training checkpoint.

    Args:
      workdir: pre-training workdir (or its checkpoints folder).
      step: checkpoint step, default the latest.
      lead_stats: statistics to attach; default `workdir_lead_stats(workdir)`.
      which: 'target_params' (EMA target encoder, the one to use) or
        'params' (the context encoder).

    Returns:
      an `Encoder` whose meta records the provenance.
    """
    from jepa_ecg.training import checkpoint  # pylint: disable=g-import-not-at-top
    state, meta = checkpoint.restore_params(workdir, step=step)
    params = state[which]
    if which == 'params':
        params = params['encoder']
    config = ModelConfig.from_dict(meta['model'])
    root = workdir[:-len('checkpoints')] if workdir.rstrip('/').endswith('checkpoints') else workdir
    if lead_stats is None:
        lead_stats = workdir_lead_stats(root)
    provenance = {'kind': 'jepa_ecg pre-training', 'workdir': os.path.abspath(root),
                  'step': int(meta.get('step', -1)), 'weights': which}
    return Encoder(config, params, lead_stats=lead_stats,
                   meta={'provenance': provenance})


def export_encoder(workdir: str, out: str, *, step: int | None = None,
                   lead_stats: Mapping[str, Any] | None = None) -> Encoder:
    """Exports a pre-training run's target encoder as an encoder directory.

    Args:
      workdir: pre-training workdir.
      out: output directory.
      step: checkpoint step, default the latest.
      lead_stats: statistics to store; default the run's source statistics.

    Returns:
      the exported `Encoder`.
    """
    enc = encoder_from_workdir(workdir, step=step, lead_stats=lead_stats)
    enc.save(out)
    enc.meta['path'] = os.path.abspath(out)
    return enc


# ------------------------------------------------------------- classifiers
CLASSIFIER_FORMAT = 'jepa_ecg.classifier'
CLASSIFIER_FILE = 'classifier.json'


class Classifier:
    """A fine-tuned classifier (encoder + head) for `jepa-ecg predict`.

    A classifier directory holds `classifier.json`:

        {"format": "jepa_ecg.classifier", "version": 1,
         "model": ModelConfig dict, "leads": [...], "fs": ...,
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

    Attributes:
      encoder: an `Encoder` (config, encoder params, lead stats) that also
        does the preprocessing.
      head_params: the head's params.
      class_names, single_label, crop_seconds, stride_seconds, head,
      head_bias, meta: as stored.
    """

    def __init__(self, encoder: Encoder, head_params: Any, *, head: str,
                 class_names: Sequence[str], single_label: bool = False,
                 crop_seconds: float = 2.5, stride_seconds: float = 1.25,
                 head_bias: bool = False, meta: Mapping[str, Any] | None = None):
        self.encoder = encoder
        self.head_params = _to_numpy_tree(head_params)
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

    def logits(self, windows: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
        """(W, crop, leads) preprocessed windows -> (W, classes) float32 logits."""
        import jax  # pylint: disable=g-import-not-at-top
        if self._fn is None:
            from jepa_ecg.models import classifier as classifier_lib  # pylint: disable=g-import-not-at-top
            model = classifier_lib.build_classifier(self.config, len(self.class_names), head=self.head,
                                     head_bias=self.head_bias, dtype='float32')
            self._fn = jax.jit(lambda p, x: model.apply({'params': p}, x))
            self._device_params = jax.device_put(self.params)
        out = []
        for start in range(0, windows.shape[0], batch_size):
            chunk = windows[start:start + batch_size]
            out.append(np.asarray(self._fn(self._device_params,
                                           pad_batch(chunk, batch_size)))[:len(chunk)])
        if not out:
            return np.zeros((0, len(self.class_names)), np.float32)
        return np.concatenate(out).astype(np.float32)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Averaged logits (N, classes) -> probabilities (sigmoid or softmax)."""
        logits = np.asarray(logits, np.float64)
        if self.single_label:
            z = np.exp(logits - logits.max(-1, keepdims=True))
            return (z / z.sum(-1, keepdims=True)).astype(np.float32)
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

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
        records = [signals] if single else list(signals)
        wins, owner = [], []
        for i, sig in enumerate(records):
            x = self.encoder.preprocess(sig, fs, leads, **preprocess_kwargs)
            w = self.windows(x, pad=pad)
            wins.append(w)
            owner.extend([i] * len(w))
        if not records:
            return np.zeros((0, len(self.class_names)), np.float32)
        logits = self.logits(np.concatenate(wins), batch_size=batch_size)
        pooled = pool_windows(logits, None, np.asarray(owner), len(records)).mean
        return self.probabilities(pooled)

    def windows(self, x: np.ndarray, *, pad: bool = False, name: str | None = None
                ) -> np.ndarray:
        """Evaluation windows (crop_seconds every stride_seconds) of a preprocessed record."""
        enc = self.encoder
        wins, _ = enc.windows(x, window_samples=enc.seconds_to_samples(self.crop_seconds),
                              stride_samples=enc.seconds_to_samples(self.stride_seconds),
                              pad=pad, name=name)
        return wins

    def save(self, path: str) -> str:
        """Writes a classifier directory (see the class docstring)."""
        return save_classifier(
            path, self.config, self.params, head=self.head, class_names=self.class_names,
            single_label=self.single_label, crop_seconds=self.crop_seconds,
            stride_seconds=self.stride_seconds, lead_stats=self.encoder.lead_stats,
            leads=self.encoder.leads, head_bias=self.head_bias,
            task=self.meta.get('task'), provenance=self.meta.get('provenance'))


def save_classifier(path: str, config: ModelConfig, params: Mapping[str, Any], *, head: str,
                    class_names: Sequence[str], single_label: bool = False,
                    crop_seconds: float = 2.5, stride_seconds: float = 1.25,
                    lead_stats: Mapping[str, Any] | None = None, leads: Sequence[str] = LEADS,
                    head_bias: bool = False, task: str | None = None,
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
      lead_stats: per-lead {'mean', 'std'} used in fine-tuning (PTB-XL train
        folds), in `leads` order.
      leads: the model's input lead order.
      head_bias: whether the register head's linear layer has a bias.
      task: task name, for the record.
      provenance: free-form JSON-able dict.

    Returns:
      the directory path.
    """
    from flax import serialization  # pylint: disable=g-import-not-at-top
    if len(class_names) == 0:
        raise ValueError('class_names is empty')
    os.makedirs(path, exist_ok=True)
    stats = _lead_stats_json(lead_stats)
    doc = {'format': CLASSIFIER_FORMAT, 'version': VERSION, 'model': config.to_dict(),
           'leads': _canonical_leads(leads), 'fs': float(config.fs), 'head': head,
           'head_bias': bool(head_bias), 'class_names': [str(c) for c in class_names],
           'single_label': bool(single_label), 'crop_seconds': float(crop_seconds),
           'stride_seconds': float(stride_seconds), 'lead_stats': stats, 'task': task,
           'provenance': dict(provenance or {})}
    with open(os.path.join(path, PARAMS_FILE), 'wb') as f:
        f.write(serialization.msgpack_serialize(_to_numpy_tree(_unfreeze(params))))
    with open(os.path.join(path, CLASSIFIER_FILE), 'w', encoding='utf-8') as f:
        json.dump(doc, f, indent=2, default=str)
    return path


def is_classifier_dir(path: str) -> bool:
    """Whether `path` holds a classifier.json."""
    return os.path.isfile(os.path.join(path, CLASSIFIER_FILE))


def load_classifier(path: str, *, task: str | None = None,
                    lead_stats: Mapping[str, Any] | None = None) -> Classifier:
    """Loads a fine-tuned classifier.

    Args:
      path: a classifier directory written by `save_classifier`, a
        fine-tuning run folder of `experiments/finetune.py` (results.json +
        best/ Orbax checkpoint), or a fine-tuning workdir (its
        `<task>/seed<k>/` runs; the seed with the best validation AUC is used).
      task: which task of a multi-task fine-tuning workdir.
      lead_stats: normalisation statistics overriding the stored ones.

    Returns:
      a `Classifier`.

    Raises:
      FileNotFoundError: when `path` is none of those.
    """
    from flax import serialization  # pylint: disable=g-import-not-at-top
    if os.path.isfile(path) and os.path.basename(path) == CLASSIFIER_FILE:
        path = os.path.dirname(path) or '.'
    if not is_classifier_dir(path):
        run = find_finetune_run(path, task)
        if run is None:
            raise FileNotFoundError(
                f'{path} is not a fine-tuned classifier: no {CLASSIFIER_FILE}, and no '
                f'experiments/finetune.py run (results.json + best/) in it')
        return classifier_from_finetune_run(run, lead_stats=lead_stats)
    with open(os.path.join(path, CLASSIFIER_FILE), encoding='utf-8') as f:
        doc = json.load(f)
    if doc.get('format') != CLASSIFIER_FORMAT:
        raise ValueError(f'{path}/{CLASSIFIER_FILE} is not a {CLASSIFIER_FORMAT} file')
    config = ModelConfig.from_dict(doc['model'])
    with open(os.path.join(path, PARAMS_FILE), 'rb') as f:
        params = serialization.msgpack_restore(f.read())
    _check_params(config, params['encoder'])
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


FINETUNE_RESULTS = 'results.json'
FINETUNE_BEST = 'best'


def _is_finetune_run(path: str) -> bool:
    return (os.path.isfile(os.path.join(path, FINETUNE_RESULTS))
            and os.path.isdir(os.path.join(path, FINETUNE_BEST)))


def find_finetune_run(path: str, task: str | None = None) -> str | None:
    """The run folder to predict with inside a fine-tuning output.

    Args:
      path: a run folder (results.json + best/) or a fine-tuning workdir with
        `<task>/seed<k>/` runs.
      task: the task to pick in a workdir; needed when it holds several.

    Returns:
      the run folder (the seed with the best validation AUC), or None.

    Raises:
      ValueError: when the workdir holds several tasks and none was chosen.
    """
    if _is_finetune_run(path):
        return path
    if not os.path.isdir(path):
        return None
    tasks = sorted(t for t in os.listdir(path)
                   if os.path.isdir(os.path.join(path, t))
                   and any(_is_finetune_run(os.path.join(path, t, s))
                           for s in os.listdir(os.path.join(path, t))))
    if not tasks:
        return None
    if task is None:
        if len(tasks) > 1:
            raise ValueError(f'{path} holds fine-tuning runs of tasks {tasks}: pick one '
                             f'(CLI: --task)')
        task = tasks[0]
    if task not in tasks:
        raise ValueError(f'{path} has no fine-tuning run of task {task!r} (has {tasks})')
    runs = [os.path.join(path, task, s) for s in sorted(os.listdir(os.path.join(path, task)))
            if _is_finetune_run(os.path.join(path, task, s))]

    def val_auc(run):
        try:
            with open(os.path.join(run, FINETUNE_RESULTS), encoding='utf-8') as f:
                return float(json.load(f).get('best_val_auc', float('-inf')))
        except (OSError, ValueError):
            return float('-inf')

    return max(runs, key=val_auc)


def classifier_from_finetune_run(run: str, *, lead_stats: Mapping[str, Any] | None = None
                                 ) -> Classifier:
    """A `Classifier` from an `experiments/finetune.py` run folder.

    Reads results.json (model config, head, task, classes, crop and stride,
    and the fine-tuning normalisation statistics when the run stored them
    under `lead_stats`) and the best-validation params from `best/`.

    Args:
      run: the run folder.
      lead_stats: statistics to use when the run did not store any.

    Returns:
      a `Classifier`.
    """
    from jepa_ecg.evaluation import protocols  # pylint: disable=g-import-not-at-top
    with open(os.path.join(run, FINETUNE_RESULTS), encoding='utf-8') as f:
        results = json.load(f)
    config = ModelConfig.from_dict(results['model'])
    params = protocols.restore_best(run)
    data = results.get('data') or {}
    classes = data.get('classes') or (results.get('test') or {}).get('classes')
    if not classes:
        raise ValueError(f'{run}/{FINETUNE_RESULTS} does not name the classes')
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
                      class_names=classes, single_label=task == 'st_mem',
                      crop_seconds=float(results.get('crop_samples', 2.5 * fs)) / fs,
                      stride_seconds=float(results.get('eval_stride_samples', 1.25 * fs)) / fs,
                      head_bias=bool(cfg.get('head_bias', False)), meta=meta)
