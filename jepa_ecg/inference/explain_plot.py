"""Pictures of `explain.Explanation`s: the leads over time, patch relevance behind them.

One PNG per explained class: a row per lead with the preprocessed trace in
black and each patch's relevance for that lead shaded behind it (red
raises the class's logit, blue lowers it; one colour scale for the whole
picture), a top row with the relevance summed over leads and, for an
attentive head, the pooler's attention; the predicted probabilities in the
title.
"""

from __future__ import annotations

import re

import matplotlib

matplotlib.use('Agg')  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402

CMAP = 'RdBu_r'


def _title(exp, k: int) -> str:
    c = int(exp.classes[k])
    probs = ', '.join(f'{exp.class_names[i]} {exp.probabilities[i]:.2f}'
                      for i in np.argsort(-exp.probabilities)[:8])
    return (f'{exp.name}: relevance for {exp.class_names[c]} (p = {exp.probabilities[c]:.3f}, '
            f'{exp.method})\npredicted: {probs}')


def _summary_row(ax, exp, k: int, seconds: float) -> None:
    """Top row: relevance summed over leads per patch, attention on a twin axis."""
    rel = exp.patch_relevance[k]
    edges = np.arange(len(rel) + 1) * exp.patch_size / exp.fs
    ax.stairs(rel, edges, fill=True, color='C3', alpha=0.7, label='relevance (all leads)')
    ax.axhline(0, color='grey', lw=0.5)
    ax.set_xlim(0, seconds)
    ax.set_ylabel('sum', fontsize=7)
    ax.tick_params(labelsize=6)
    if exp.attention is not None:
        ax2 = ax.twinx()
        ax2.stairs(exp.attention, edges, color='C2', lw=0.9, label='pooler attention')
        ax2.set_ylabel('attention', fontsize=7, color='C2')
        ax2.tick_params(labelsize=6, colors='C2')
        ax2.set_ylim(bottom=0)
    ax.legend(loc='upper left', fontsize=6, frameon=False)


def plot_explanation(exp, stem: str, *, dpi: int = 100) -> list[str]:
    """Writes `<stem>_<class>.png` for every explained class of `exp`.

    Args:
      exp: an `explain.Explanation`.
      stem: path prefix of the files.
      dpi: resolution.

    Returns:
      the paths written.
    """
    n_leads = exp.signal.shape[1]
    seconds = exp.signal.shape[0] / exp.fs
    t = np.arange(exp.signal.shape[0]) / exp.fs
    paths = []
    for k in range(len(exp.classes)):
        rel = exp.relevance[k]  # (P, L)
        vmax = float(np.abs(rel).max()) or 1.0
        fig, axes = plt.subplots(n_leads + 1, 1, sharex=True,
                                 figsize=(max(8.0, 1.1 * seconds + 2), 1.0 * n_leads + 1.6),
                                 gridspec_kw={'height_ratios': [1.3] + [1] * n_leads})
        _summary_row(axes[0], exp, k, seconds)
        for j in range(n_leads):
            ax, y = axes[j + 1], exp.signal[:, j]
            lo, hi = min(-1.0, float(y.min())), max(1.0, float(y.max()))
            ax.imshow(rel[None, :, j], aspect='auto', cmap=CMAP, vmin=-vmax, vmax=vmax,
                      extent=(0, rel.shape[0] * exp.patch_size / exp.fs, lo, hi),
                      interpolation='nearest', alpha=0.85)
            ax.plot(t, y, color='k', lw=0.6)
            ax.set_ylim(lo, hi)
            ax.set_xlim(0, seconds)
            ax.set_ylabel(exp.leads[j], rotation=0, ha='right', va='center', fontsize=8)
            ax.set_yticks([])
        axes[-1].set_xlabel('time (s)')
        axes[0].set_title(_title(exp, k), fontsize=9)
        fig.tight_layout(h_pad=0.1)
        name = re.sub(r'[^\w.+-]+', '_', exp.class_names[int(exp.classes[k])])
        path = f'{stem}_{name}.png'
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        paths.append(path)
    return paths
