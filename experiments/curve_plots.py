"""Figures of what pre-training buys: the learning curve and label efficiency."""

from __future__ import annotations

from typing import Mapping

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

# What experiments.learning_curve writes into its workdir, and what the plots and
# experiments.compare_curves read.
CURVE_FILE = 'curve.json'


def _log_ticks_at(ax, values, labels) -> None:
    """A log x-axis labelled at `values` only (the budgets), no minor ticks."""
    ax.set_xscale('log')
    ax.set_xticks(values)
    ax.set_xticklabels(labels, fontsize=8)
    ax.minorticks_off()


def plot_learning_curve(curve: Mapping, path: str) -> str:
    """Test macro AUC (95 % CI) vs records seen, the random band, the paired differences.

    Args:
      curve: curve.json of experiments/learning_curve.py.
      path: PNG to write.

    Returns:
      path.
    """
    pts, band = curve['points'], curve['random']
    x = [p['records_seen'] for p in pts]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.5, 6.5), sharex=True,
                                      gridspec_kw={'height_ratios': [3, 2]})
    top.axhspan(band['min'], band['max'], color='tab:gray', alpha=0.3,
                label=f'random init, {len(band["runs"])} seeds (min-max)')
    top.axhline(band['mean'], color='tab:gray', lw=1)
    auc = [p['test_macro_auc'] for p in pts]
    err = [[a - p['ci'][0] for a, p in zip(auc, pts)], [p['ci'][1] - a for a, p in zip(auc, pts)]]
    probes = curve.get('probe_seeds', 1)
    top.errorbar(x, auc, yerr=err, marker='o', capsize=3, color='tab:blue',
                 label='JEPA pre-trained (95% CI)' if probes == 1 else
                 f'JEPA pre-trained, mean of {probes} probes (95% CI)')
    if probes > 1:
        top.plot([v for v, p in zip(x, pts) for _ in p['probes']],
                 [q['test_macro_auc'] for p in pts for q in p['probes']], 'o', ms=3,
                 mfc='none', color='tab:blue', alpha=0.6, label='each probe seed')
    top.set_ylabel('test macro AUC (linear)')
    top.set_title(f'{curve["task"]}: ViT-{curve["variant"]} at {curve["fs"]:g} Hz, '
                  f'batch {curve["batch"]}')
    top.legend(fontsize=8, loc='lower right')
    for k in range(len(band['runs'])):
        d = [p['paired'][k]['diff'] for p in pts]
        e = [[v - p['paired'][k]['ci_low'] for v, p in zip(d, pts)],
             [p['paired'][k]['ci_high'] - v for v, p in zip(d, pts)]]
        bottom.errorbar([v * (1 + 0.04 * k) for v in x], d, yerr=e, marker='.', capsize=2,
                        label=f'vs random seed {band["runs"][k]["seed"]}')
    return _save_with_paired_axis(fig, bottom, x, 'paired AUC difference', path)


def _save_with_paired_axis(fig, bottom, x, ylabel: str, path: str) -> str:
    """Labels the paired-difference axis (zero line, budgets on a log axis); saves."""
    bottom.axhline(0.0, color='black', lw=0.8)
    bottom.set_ylabel(ylabel)
    bottom.set_xlabel('records seen in pre-training')
    _log_ticks_at(bottom, x, [f'{v:,}' for v in x])
    bottom.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_label_efficiency(table: Mapping, path: str) -> str:
    """Test macro AUC (mean over seeds, min-max bars) vs train fraction, per encoder.

    Args:
      table: label_efficiency.json of experiments/label_efficiency.py.
      path: PNG to write.

    Returns:
      path.
    """
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, rows in table['encoders'].items():
        x = [r['fraction'] * 100 for r in rows]
        m = [r['mean'] for r in rows]
        err = [[a - r['min'] for a, r in zip(m, rows)], [r['max'] - a for a, r in zip(m, rows)]]
        ax.errorbar(x, m, yerr=err, marker='o', capsize=3, label=name)
    fractions = sorted({r['fraction'] * 100 for rows in table['encoders'].values() for r in rows})
    _log_ticks_at(ax, fractions, [f'{f:g} %' for f in fractions])
    ax.set_xlabel('% of train-fold labels')
    ax.set_ylabel('test macro AUC')
    ax.set_title(f'{table["task"]}: label efficiency ({table["protocol"]})')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_recipes(curves: Mapping, summaries: Mapping, path: str) -> str:
    """Learning curves of several recipes, every pre-training seed, on one figure.

    Args:
      curves: recipe name -> its seeds' curve.json dicts.
      summaries: recipe name -> experiments.compare_curves.summarize of those.
      path: PNG to write.

    Returns:
      path.
    """
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True,
                                      gridspec_kw={'height_ratios': [3, 2]})
    band = next(iter(summaries.values()))['random_band']
    top.axhspan(min(band), max(band), color='tab:gray', alpha=0.3,
                label=f'random init, {len(band)} seeds (min-max)')
    xs = set()
    for k, (name, seeds) in enumerate(curves.items()):
        color = f'C{k}'
        rows = summaries[name]['rows']
        x = [r['records_seen'] for r in rows]
        xs.update(x)
        for j, c in enumerate(seeds):
            pts = [next(p for p in c['points'] if p['step'] == r['step']) for r in rows]
            auc = [p['test_macro_auc'] for p in pts]
            err = [[a - p['ci'][0] for a, p in zip(auc, pts)],
                   [p['ci'][1] - a for a, p in zip(auc, pts)]]
            top.errorbar([v * (1 + 0.03 * (j - 0.5)) for v in x], auc, yerr=err, marker='o',
                         ms=4, capsize=2, lw=0.8, alpha=0.6, color=color)
        probes = max(c.get('probe_seeds', 1) for c in seeds)
        top.plot(x, [r['mean_test'] for r in rows], color=color, lw=2.2,
                 label=f'{name} ({len(seeds)} pre-training seed{"s" * (len(seeds) != 1)}, '
                       'mean; 95% CIs per seed'
                       + (f'; {probes} probe seeds per encoder)' if probes > 1 else ')'))
        mid = [(r['min_diff'] + r['max_diff']) / 2 for r in rows]
        bottom.errorbar([v * (1 + 0.04 * k) for v in x], mid,
                        yerr=[[m - r['min_ci_low'] for m, r in zip(mid, rows)],
                              [r['max_ci_high'] - m for m, r in zip(mid, rows)]],
                        fmt='none', capsize=3, color=color, lw=1.5)
        bottom.plot([v * (1 + 0.04 * k) for v in x], [r['min_diff'] for r in rows],
                    'v', color=color, label=f'{name}: smallest difference')
    top.set_ylabel('test macro AUC (linear)')
    top.legend(fontsize=7, loc='best')
    top.set_title('pre-training recipes: test macro AUC vs records seen')
    bottom.axhline(0.05, color='black', lw=0.6, ls='--')
    return _save_with_paired_axis(fig, bottom, sorted(xs),
                                  'paired difference vs random\n(all seed pairs, CI extent)', path)
