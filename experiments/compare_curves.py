r"""Learning curves of several recipes side by side, several pre-training seeds each.

  python -m experiments.compare_curves \
      --curve=published:runs/curve_pub_s0,runs/curve_pub_s1 \
      --curve=small_budget:runs/curve_small_s0,runs/curve_small_s1 --out=runs/recipes

Each `--curve` is `name:workdir[,workdir...]`, the workdirs of
experiments/learning_curve.py runs of one recipe that differ only in the
pre-training seed (`--config.pretrain.seed`). Budgets are matched by step;
a budget missing from some seed (a run still going) is left out. For each
recipe it reports, per budget, the test and validation macro AUC of every
seed and the paired differences against every random-init seed, then the
three questions a user asks of a recipe:

* does validation AUC ever fall from one budget to the next by more than
  its noise? With several probe seeds per encoder (learning_curve's
  `probe_seeds`) the noise is the standard error of the difference of two
  budgets' probe means, from the probes' own spread (pooled over every
  encoder); with one probe, the spread of the random-init encoders'
  validation AUC (which differ only by seed), a lower bound.
* from which budget does every seed beat every random seed (paired CI low
  above zero)?
* by how much, at the largest budget (the smallest paired difference)?

Writes `<out>.json` and `<out>.png`.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

from experiments import curve_plots

FLAGS = flags.FLAGS


def _read(workdir: str) -> dict:
    path = os.path.join(workdir, curve_plots.CURVE_FILE)
    if not os.path.exists(path):
        raise app.UsageError(f'{path}: no learning curve here (run experiments.learning_curve '
                             f'with --workdir={workdir} first)')
    with open(path) as f:
        return json.load(f)


def parse_curve_flag(text: str) -> tuple[str, list[str]]:
    """'name:dir1,dir2' -> ('name', ['dir1', 'dir2'])."""
    name, sep, dirs = text.partition(':')
    dirs = [d for d in dirs.split(',') if d]
    if not sep or not name or not dirs:
        raise app.UsageError(f'--curve={text!r}: expected name:workdir[,workdir...]')
    return name, dirs


def validation_noise(curves: list[dict]) -> tuple[float, str]:
    """The yardstick of a fall between budgets and where it comes from.

    With probe seeds: the pooled standard deviation of one encoder's probes
    (validation AUC, over every budget and random encoder holding several)
    times sqrt(2 / probes), the standard error of a difference of two
    budgets' means. Without: the random encoders' validation spread.
    """
    groups = [[q['best_val_auc'] for q in e['probes']]
              for c in curves for e in c['points'] + c['random']['runs']
              if len(e.get('probes', ())) > 1]
    if not groups:
        band_val = [r['best_val_auc'] for r in curves[0]['random']['runs']]
        return float(np.std(band_val)), 'random encoders\' spread'
    pooled = np.sqrt(sum(np.var(g, ddof=1) * (len(g) - 1) for g in groups)
                     / sum(len(g) - 1 for g in groups))
    probes = min(len(g) for g in groups)
    return float(pooled * np.sqrt(2 / probes)), f'probe spread, {probes} probes per encoder'


def summarize(curves: list[dict]) -> dict:
    """One recipe's seeds (curve.json dicts) -> per-budget rows and the three answers."""
    common = sorted(set.intersection(*({p['step'] for p in c['points']} for c in curves)))
    if not common:
        raise ValueError('the runs share no budget yet')
    noise, noise_source = validation_noise(curves)
    rows = []
    for step in common:
        pts = [next(p for p in c['points'] if p['step'] == step) for c in curves]
        diffs = [d for p in pts for d in p['paired']]
        rows.append({
            'step': step, 'records_seen': pts[0]['records_seen'],
            'test_macro_auc': [p['test_macro_auc'] for p in pts],
            'best_val_auc': [p['best_val_auc'] for p in pts],
            'pretrain_loss': [p.get('pretrain_loss') for p in pts],
            'target_rank': [p.get('target_rank') for p in pts],
            'mean_test': float(np.mean([p['test_macro_auc'] for p in pts])),
            'mean_val': float(np.mean([p['best_val_auc'] for p in pts])),
            'min_diff': float(min(d['diff'] for d in diffs)),
            'max_diff': float(max(d['diff'] for d in diffs)),
            'min_ci_low': float(min(d['ci_low'] for d in diffs)),
            'max_ci_high': float(max(d['ci_high'] for d in diffs)),
        })
    falls = [max(a - b for a, b in zip(prev['best_val_auc'], cur['best_val_auc']))
             for prev, cur in zip(rows, rows[1:])]
    beats = [r['min_ci_low'] > 0 for r in rows]
    first = next((i for i in range(len(rows)) if all(beats[i:])), None)
    return {
        'seeds': len(curves), 'rows': rows,
        'validation_noise': noise, 'noise_source': noise_source,
        'largest_validation_fall': float(max(falls)) if falls else 0.0,
        'validation_never_falls_beyond_noise': all(f <= noise for f in falls),
        'beats_every_random_seed_from_step': rows[first]['step'] if first is not None else None,
        'smallest_difference_at_largest_budget': rows[-1]['min_diff'],
        'random_band': [r['test_macro_auc'] for r in curves[0]['random']['runs']],
        # Written by experiments.learning_curve (absent from older curve files).
        'learning_rates': sorted({c['learning_rate'] for c in curves if 'learning_rate' in c}),
        'lr_schedules': sorted({c['lr_schedule'] for c in curves if 'lr_schedule' in c}),
        'pretrain_seeds': [c.get('pretrain_seed') for c in curves],
    }


def report(name: str, s: dict) -> str:
    lr = (''.join(f'{v}; ' for v in s['lr_schedules'])
          or ''.join(f'peak learning rate {v:g}; ' for v in s['learning_rates']))
    seeds = f'{s["seeds"]} pre-training seed{"s" if s["seeds"] != 1 else ""}'
    lines = [f'{name} ({lr}{seeds}; random init '
             + ' / '.join(f'{a:.4f}' for a in s['random_band']) + ')',
             '  step  records   test macro AUC per seed   validation per seed   '
             'paired vs random: min diff [min CI low]   loss   rank']
    for r in s['rows']:
        lines.append(
            f'  {r["step"]:>4d}  {r["records_seen"]:>7,d}   '
            f'{" / ".join(f"{a:.4f}" for a in r["test_macro_auc"]):<24s}  '
            f'{" / ".join(f"{a:.4f}" for a in r["best_val_auc"]):<20s}  '
            f'{r["min_diff"]:+.4f} [{r["min_ci_low"]:+.4f}]{"":>20s}'
            f'{" / ".join(_fmt(v, 3) for v in r["pretrain_loss"])}   '
            f'{" / ".join(_fmt(v, 1) for v in r["target_rank"])}')
    first = s['beats_every_random_seed_from_step']
    fall, noise = s['largest_validation_fall'], s['validation_noise']
    if len(s['rows']) < 2:
        lines.append('  one budget so far: nothing to say about rising or falling')
    elif fall < 0:
        lines.append(f'  validation AUC rises at every budget, by at least {-fall:.4f}')
    else:
        lines.append(f'  validation AUC falls by up to {fall:.4f} from one budget to the next '
                     f'(noise {noise:.4f}, {s["noise_source"]}: '
                     f'{"within" if s["validation_never_falls_beyond_noise"] else "BEYOND"} it)')
    lines.append(f'  every seed beats every random seed (paired CI low > 0) from step {first} on'
                 if first is not None else
                 '  at the largest budget some seed does not beat every random seed')
    lines.append(f'  smallest paired difference at step {s["rows"][-1]["step"]}: '
                 f'{s["smallest_difference_at_largest_budget"]:+.4f}')
    return '\n'.join(lines)


def _fmt(v, digits: int) -> str:
    return '-' if v is None or not np.isfinite(v) else f'{v:.{digits}f}'


def main(argv):
    if len(argv) > 1:
        raise app.UsageError('Too many command-line arguments.', exitcode=2)
    if not FLAGS.curve:
        raise app.UsageError('give at least one --curve=name:workdir[,workdir...]')
    summaries, seeds = {}, {}
    for text in FLAGS.curve:
        name, dirs = parse_curve_flag(text)
        seeds[name] = [_read(d) for d in dirs]
        try:
            summaries[name] = summarize(seeds[name])
        except ValueError as e:
            raise app.UsageError(f'--curve={text}: {e}') from None
        print(report(name, summaries[name]))
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out + '.json', 'w') as f:
        json.dump(summaries, f, indent=2)
    curve_plots.plot_recipes(seeds, summaries, FLAGS.out + '.png')
    print(f'{FLAGS.out}.json\n{FLAGS.out}.png')


if __name__ == '__main__':
    # Defined only when run: tests import summarize.
    flags.DEFINE_multi_string('curve', None, 'name:workdir[,workdir...] (repeat per recipe).')
    flags.DEFINE_string('out', 'recipes', 'Output path without extension (.json and .png).')
    app.run(main)
