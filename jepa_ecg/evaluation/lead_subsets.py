"""Scores a classifier with only a subset of its leads present.

Every subset is scored like the full test: the same records, windows and
bootstrap; each record reaches THE preprocessing function with only the
subset's leads and the others zero-filled after normalisation
(`data.lead_subsets.restrict_task`), exactly as `jepa-ecg predict
--fill-missing=zero` treats a file lacking them. The result is a table of
macro AUC (with its bootstrap interval) per subset, for results.json and
`plot_lead_subsets`.
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from typing import Any, Callable, Mapping, Sequence

import matplotlib

matplotlib.use('Agg')  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position

from jepa_ecg.data.lead_subsets import parse_lead_subsets, restrict_task  # noqa: E402
from jepa_ecg.data.preprocess import MissingLeadsWarning  # noqa: E402

LEAD_SUBSETS_PNG = 'lead_subsets_auc.png'


def evaluate_lead_subsets(evaluator: Any, params: Any, subsets: str | Sequence[str] |
                          Mapping[str, Sequence[str]], *, split: str = 'test',
                          num_resamples: int, confidence: float, seed: int,
                          interrupted: Callable[[], bool] | None = None) -> dict:
    """Macro AUC per lead subset of one split.

    Args:
      evaluator: an `evaluation.evaluator.Evaluator` (its jitted predict
        function is reused for every subset).
      params: the classifier params (replicated over the evaluator's mesh).
      subsets: '12,6-limb,I+II,I'-style spec, a list of names, or {name: leads}.
      split: which split to score.
      num_resamples, confidence, seed: the bootstrap (as for the full test).
      interrupted: asked before each batch of every subset's pass (see
        `Evaluator.logits`); True abandons the table.

    Returns:
      {'split', 'subsets': {name: {'leads', 'macro_auc', 'macro_auc_ci',
      'macro_auprc', 'per_class_auc', 'seconds'}}}, subsets in the given order.

    Raises:
      EvaluationInterrupted: `interrupted()` answered True.
    """
    if not isinstance(subsets, Mapping):
        subsets = parse_lead_subsets(subsets)
    table = {}
    # Zero-filling is the point here: silence its warning once, in this thread.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', MissingLeadsWarning)
        for name, leads in subsets.items():
            t0 = time.time()
            view = copy.copy(evaluator)
            view.task = restrict_task(evaluator.task, leads)
            scores = view.evaluate(params, split, interrupted)
            rep = view.report(scores, split, num_resamples=num_resamples,
                              confidence=confidence, seed=seed)
            table[name] = {
                'leads': list(leads), 'macro_auc': rep['macro_auc'],
                'macro_auc_ci': rep['macro_auc_ci'], 'macro_auprc': rep['macro_auprc'],
                'per_class_auc': {c['class']: c['auc'] for c in rep['per_class']},
                'seconds': time.time() - t0}
    return {'split': split, 'confidence': confidence, 'subsets': table}


def format_table(result: Mapping[str, Any]) -> str:
    """The subset table as aligned text lines (for logs and notes)."""
    lines = [f'{"leads":<12} {"macro AUC":>9}  CI']
    for name, row in result['subsets'].items():
        lo, hi = row['macro_auc_ci']
        lines.append(f'{name:<12} {row["macro_auc"]:9.4f}  {lo:.4f}-{hi:.4f}')
    return '\n'.join(lines)


def plot_lead_subsets(results: Mapping[str, Mapping[str, Any]], path: str,
                      title: str = '') -> str:
    """Bar chart of macro AUC with its interval per subset, one bar group per model.

    Args:
      results: {model label: `evaluate_lead_subsets` output}; one model is
        the common case, several compare e.g. with and without lead dropout.
      path: PNG file to write.
      title: figure title.

    Returns:
      `path`.
    """
    labels = list(results)
    names = list(next(iter(results.values()))['subsets']) if labels else []
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(1.3 * max(3, len(names)) + 1.5, 4))
    for k, label in enumerate(labels):
        rows = [results[label]['subsets'].get(n) for n in names]
        xs = [i + (k - (len(labels) - 1) / 2) * width for i in range(len(names))]
        auc = [r['macro_auc'] if r else float('nan') for r in rows]
        err = [[a - r['macro_auc_ci'][0] if r else 0 for a, r in zip(auc, rows)],
               [r['macro_auc_ci'][1] - a if r else 0 for a, r in zip(auc, rows)]]
        ax.bar(xs, auc, width, yerr=err, capsize=3, label=label, color=f'C{k}')
        for x, a in zip(xs, auc):
            ax.text(x, a + 0.01, f'{a:.3f}', ha='center', va='bottom', fontsize=7)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names)
    ax.set_xlabel('leads present (others zero-filled)')
    ax.set_ylabel('test macro AUC')
    ax.set_ylim(0.4, 1.0)
    ax.axhline(0.5, color='grey', lw=0.8, ls=':')
    if len(labels) > 1:
        ax.legend(loc='lower left', fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
