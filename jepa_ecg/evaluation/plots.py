"""Pictures of runs: a fine-tuning run's validation AUC, ROC curves and per-class AUC;
a pre-training run's loss curve and collapse signals."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from jepa_ecg.evaluation import metrics

VAL_AUC_PNG = 'val_auc.png'
ROC_PNG = 'roc_best_worst.png'
PER_CLASS_PNG = 'per_class_auc.png'


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')  # files only, no display needed
    import matplotlib.pyplot as plt
    return plt


def plot_val_auc(history, best_step: int, path: str, title: str = '') -> str:
    """Validation macro AUC (and training loss) against the step; marks the best step."""
    plt = _pyplot()
    val = [(h['step'], h['val_auc']) for h in history if 'val_auc' in h]
    loss = [(h['step'], h['loss']) for h in history if 'loss' in h]
    fig, ax = plt.subplots(figsize=(6, 4))
    if val:
        s, a = zip(*val)
        ax.plot(s, a, 'o-', color='C0', label='validation macro AUC')
    ax.axvline(best_step, color='C0', ls=':', label=f'best step {best_step}')
    ax.set_xlabel('step')
    ax.set_ylabel('macro AUC')
    if loss:
        ax2 = ax.twinx()
        s, l_ = zip(*loss)
        ax2.plot(s, l_, color='C1', alpha=0.6, label='train loss')
        ax2.set_ylabel('train loss')
        ax2.legend(loc='lower right')
    ax.legend(loc='lower left')
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_roc_best_worst(y_true: np.ndarray, y_prob: np.ndarray, classes, path: str,
                        title: str = '') -> str:
    """Test ROC curves of the classes with the highest and lowest AUC."""
    plt = _pyplot()
    aucs = metrics.roc_auc_per_class(y_true, y_prob)
    scored = np.flatnonzero(~np.isnan(aucs))
    fig, ax = plt.subplots(figsize=(5, 5))
    if len(scored):
        best, worst = scored[np.argmax(aucs[scored])], scored[np.argmin(aucs[scored])]
        for c, color in ((best, 'C2'), (worst, 'C3')):
            fpr, tpr = metrics.roc_curve(y_true[:, c], y_prob[:, c])
            ax.plot(fpr, tpr, color=color,
                    label=f'{classes[c]} (AUC {aucs[c]:.3f}, n+={int(y_true[:, c].sum())})')
    ax.plot([0, 1], [0, 1], 'k--', lw=0.8)
    ax.set_xlabel('false positive rate')
    ax.set_ylabel('true positive rate')
    ax.set_title(title or 'test ROC: best and worst class')
    ax.legend(loc='lower right', fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_per_class_auc(per_class, macro_auc: float, path: str, title: str = '',
                       ci: tuple[float, float] | None = None) -> str:
    """Bar chart of test AUC per class (sorted), with the macro AUC (and its CI) as a line."""
    plt = _pyplot()
    rows = sorted([r for r in per_class if r['auc'] is not None], key=lambda r: r['auc'])
    fig, ax = plt.subplots(figsize=(max(5, 0.25 * len(rows) + 2), 4))
    ax.bar(range(len(rows)), [r['auc'] for r in rows], color='C0')
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r['class'] for r in rows], rotation=90, fontsize=7)
    label = f'macro AUC {macro_auc:.3f}'
    if ci is not None:
        label += f' (CI {ci[0]:.3f}-{ci[1]:.3f})'
        ax.axhspan(ci[0], ci[1], color='C3', alpha=0.15, zorder=0)
    ax.axhline(macro_auc, color='C3', ls='--', label=label)
    lo = min([r['auc'] for r in rows] + [macro_auc])
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.set_ylabel('test AUC')
    ax.legend(loc='lower right')
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_run(run_dir: str, results: Mapping, y_true: np.ndarray, y_prob: np.ndarray) -> list[str]:
    """All three pictures of one run into `run_dir`; returns their paths."""
    title = f'{results["protocol"]} / {results["task"]} / seed {results["seed"]}'
    classes = [r['class'] for r in results['test']['per_class']]
    return [
        plot_val_auc(results['history'], results['best_step'],
                     os.path.join(run_dir, VAL_AUC_PNG), title),
        plot_roc_best_worst(y_true, y_prob, classes, os.path.join(run_dir, ROC_PNG), title),
        plot_per_class_auc(results['test']['per_class'], results['test']['macro_auc'],
                           os.path.join(run_dir, PER_CLASS_PNG), title,
                           ci=tuple(results['test']['macro_auc_ci'])),
    ]


def plot_loss_curve(rows: Sequence[Mapping], path: str) -> str:
    """Pre-training loss, target embedding std and effective rank against the step.

    Args:
      rows: metrics.jsonl rows (with 'step', 'loss', 'target_std' and, on
        some steps, 'target_rank').
      path: the PNG to write.

    Returns:
      `path`.
    """
    plt = _pyplot()
    steps = [r['step'] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot(steps, [r['loss'] for r in rows])
    axes[0].set(title='L1 loss (masked patches)', xlabel='step')
    axes[1].plot(steps, [r['target_std'] for r in rows])
    axes[1].set(title='target embedding std', xlabel='step')
    ranked = [(r['step'], r['target_rank']) for r in rows if 'target_rank' in r]
    if ranked:
        axes[2].plot(*zip(*ranked), marker='.')
    axes[2].set(title='effective rank of target embeddings', xlabel='step')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
