r"""What pre-training buys: test macro AUC of the linear protocol vs records seen.

  python -m experiments.learning_curve \
      --config=experiments/configs/learning_curve.py:cpu \
      --config.manual_dir=/path/to/ptb-xl --config.data_dir=runs/tfds --workdir=runs/curve

One ECG-JEPA pre-training run (100 Hz, the PTB-XL train folds present) is
stopped at a geometric series of budgets (its schedules keep the full
horizon, so stopping and resuming changes nothing); at each budget the
linear protocol is run on its target encoder. Random-init encoders of the
same variant, several seeds, give the band to beat. Every pre-trained run
is compared with every random one on the same test records (paired
bootstrap of the macro-AUC difference). `probe_seeds` > 1 probes every
encoder (each budget's and each random one) that many times with
different probe seeds and compares their mean macro AUC: the probe's own
seed moves one encoder's AUC by a few hundredths at the CPU budget.
Writes `<workdir>/curve.json`, `<workdir>/learning_curve.png`, the
pre-training run in `pretrain/`, the linear runs in `budget<steps>/` and
`random/`. Re-running resumes: budgets and probes already scored are read
back, so a finished curve rerun with more probe seeds only adds probes.
"""

import dataclasses
import json
import os
import time

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import build_data, compare, console, curve_plots
from experiments.configs import pretrain as pretrain_configs
from experiments.configs.learning_curve import budget_steps
from jepa_ecg import sharding
from jepa_ecg.evaluation import metrics
from jepa_ecg.inference import resolve
from jepa_ecg.inference import runs as runs_lib
from jepa_ecg.training import finetune_loop, finetune_runs, guard, jepa_loop
from jepa_ecg.training.metrics_writer import read_metrics

FLAGS = flags.FLAGS

CURVE_PNG = 'learning_curve.png'


def _share_data_dirs(config) -> None:
    for sub in (config.pretrain, config.linear):
        sub.data.data_dir = config.data_dir
        sub.data.manual_dir = config.manual_dir


def _run_summary(run_dir: str) -> dict:
    with open(os.path.join(run_dir, 'results.json')) as f:
        r = json.load(f)
    return {'test_macro_auc': r['test']['macro_auc'], 'ci': r['test']['macro_auc_ci'],
            'best_val_auc': r['best_val_auc'], 'seed': r['seed'], 'run': run_dir}


def _encoder_summary(run_dirs: list[str], config) -> dict:
    """One encoder's probes (one run per probe seed) as one entry.

    One probe: that run's numbers. Several: the mean test and validation AUC
    over the probes, the bootstrap CI of the mean test AUC, every probe's own
    numbers under 'probes' and their run folders under 'probe_runs'; 'seed'
    and 'run' are the first probe's.
    """
    rows = [_run_summary(r) for r in run_dirs]
    out = dict(rows[0], probe_runs=list(run_dirs))
    if len(rows) > 1:
        preds = [compare.load_predictions(r) for r in run_dirs]
        boot = config.linear.bootstrap
        ci = metrics.auc_with_ci(preds[0]['targets'], [p['predictions'] for p in preds],
                                 num_resamples=boot.num_resamples,
                                 confidence=boot.confidence, seed=0)
        out.update(test_macro_auc=float(np.mean([r['test_macro_auc'] for r in rows])),
                   best_val_auc=float(np.mean([r['best_val_auc'] for r in rows])),
                   ci=[ci['ci_low'], ci['ci_high']],
                   probes=[{k: r[k] for k in ('seed', 'test_macro_auc', 'best_val_auc')}
                           for r in rows])
    return out


def random_band(config, workdir: str, stop: guard.StopSignals | None = None) -> dict:
    """Linear protocol on `config.random_seeds` random-init encoders, each probed
    `config.probe_seeds` times.

    Run k + R * j (R random encoders) is probe j of random encoder k: the
    encoder drawn from seed `linear.seed + k`, the probe from seed
    `linear.seed + k + R * j`, so one probe per encoder is the band as it
    was without probe seeds and added probes resume from it.
    """
    out = os.path.join(workdir, 'random')
    num, probes = int(config.random_seeds), int(config.probe_seeds)
    runs = [os.path.join(out, config.task, f'seed{i}') for i in range(num * probes)]
    if not all(os.path.exists(os.path.join(r, 'results.json')) for r in runs):
        spec = f'random:{config.pretrain.model.variant}'
        draw = resolve.make_resolver(spec, config.linear)
        first_seed = int(config.linear.seed)

        def random_encoder(task, i):
            source, seed = draw(task, i), first_seed + i % num
            return dataclasses.replace(source, init_seed=seed,
                                       description=f'{source.description}, drawn from seed {seed}')

        finetune_runs.run_all(config.linear, out, tasks=[config.task], encoder=random_encoder,
                              num_seeds=num * probes, skip_finished=True, stop=stop)
    rows = [_encoder_summary(runs[k::num], config) for k in range(num)]
    aucs = [r['test_macro_auc'] for r in rows]
    return {'runs': rows, 'mean': float(np.mean(aucs)), 'std': float(np.std(aucs)),
            'min': float(np.min(aucs)), 'max': float(np.max(aucs))}


def pretrain_to(config, pre_dir: str, step: int, stop: guard.StopSignals | None = None) -> dict:
    """Pre-trains (resuming) up to `step`; the last logged loss and target rank there.

    Raises:
      guard.StopRequested: a stop signal arrived, also one in the run's last
        step (the run is complete and saved; the curve stops before probing).
    """
    with config.pretrain.unlocked():
        config.pretrain.stop_at_step = step
    jepa_loop.train_and_evaluate(config.pretrain, pre_dir, stop=stop)
    if stop is not None and stop.received is not None:
        raise guard.StopRequested(stop.received, step, pre_dir)
    last = {'pretrain_loss': float('nan'), 'target_rank': float('nan')}
    for row in read_metrics(pre_dir):
        if row['step'] <= step:
            last.update({'pretrain_loss': row['loss']} if 'loss' in row else {})
            last.update({'target_rank': row['target_rank']} if 'target_rank' in row else {})
    return last


def linear_at(config, pre_dir: str, step: int, workdir: str,
              stop: guard.StopSignals | None = None) -> list[str]:
    """The linear protocol on the target encoder of checkpoint `step`, once per
    probe seed (`linear.seed + j`, j < config.probe_seeds); the run folders."""
    out = os.path.join(workdir, f'budget{step}')
    runs = [os.path.join(out, config.task, f'seed{j}') for j in range(int(config.probe_seeds))]
    if not all(os.path.exists(os.path.join(r, 'results.json')) for r in runs):
        enc = runs_lib.encoder_from_workdir(pre_dir, step=step)
        source = finetune_loop.EncoderSource(
            enc.config, enc.params, lead_stats=enc.lead_stats, spec=f'{pre_dir}@{step}',
            description=f'JEPA target encoder at step {step} of {os.path.abspath(pre_dir)}')
        finetune_runs.run_all(config.linear, out, encoder=source, tasks=[config.task],
                              num_seeds=len(runs), skip_finished=True, stop=stop)
    return runs


def paired_vs_random(point: dict, band: dict, config) -> list:
    """Paired bootstrap of the pre-trained encoder against each random-init one
    (with several probe seeds, of the mean macro AUC over the probes)."""
    boot = config.linear.bootstrap
    mine = [compare.load_predictions(r) for r in point['probe_runs']]
    out = []
    for r in band['runs']:
        res = compare.compare(mine, [compare.load_predictions(x) for x in r['probe_runs']],
                              num_resamples=boot.num_resamples, confidence=boot.confidence,
                              seed=0)
        out.append({'random_seed': r['seed'], 'diff': res['diff'], 'ci_low': res['ci_low'],
                    'ci_high': res['ci_high'], 'p_value': res['p_value']})
    return out


def first_win(points: list) -> dict | None:
    """The smallest budget whose paired CI is above zero against every random seed."""
    for p in points:
        if all(d['ci_low'] > 0 for d in p['paired']):
            return {'step': p['step'], 'records_seen': p['records_seen']}
    return None


def best_by_validation(points: list) -> dict:
    """The budget a user would keep: the highest validation AUC (test AUC beside it)."""
    p = max(points, key=lambda q: q['best_val_auc'])
    return {'step': p['step'], 'records_seen': p['records_seen'],
            'best_val_auc': p['best_val_auc'], 'test_macro_auc': p['test_macro_auc'],
            'ci': p['ci']}


def run_curve(config, workdir: str) -> dict:
    """Pre-trains through every budget, scores each and the random band; writes curve.json.

    One set of stop-signal handlers covers the whole curve (pre-training
    segments and probes): SIGTERM/SIGINT anywhere raises guard.StopRequested
    once the step in progress is done, and rerunning resumes.
    """
    with guard.StopSignals() as stop:
        return _run_curve(config, workdir, stop)


def _run_curve(config, workdir: str, stop: guard.StopSignals) -> dict:
    t0 = time.time()
    if int(config.probe_seeds) < 1:
        raise ValueError(f'config.probe_seeds={config.probe_seeds}: every encoder needs at '
                         f'least one probe')
    _share_data_dirs(config)
    build_data.for_pretraining(config.pretrain)
    build_data.for_ptbxl(config.linear.data, config.linear.model.fs)
    os.makedirs(workdir, exist_ok=True)
    pre_dir = os.path.join(workdir, 'pretrain')
    batch = int(config.pretrain.global_batch_size)
    band = random_band(config, workdir, stop)
    logging.info('random band: %.4f-%.4f', band['min'], band['max'])
    curve = {'task': config.task, 'variant': config.pretrain.model.variant,
             'fs': config.pretrain.model.fs, 'batch': batch,
             'recipe': config.pretrain.recipe,
             'learning_rate': float(config.pretrain.learning_rate),
             'lr_schedule': pretrain_configs.describe_schedule(config.pretrain),
             'pretrain_seed': int(config.pretrain.seed),
             'pretrain_total_steps': int(config.pretrain.total_steps),
             'linear_steps': int(config.linear.total_steps),
             'probe_seeds': int(config.probe_seeds), 'random': band, 'points': []}
    for step in budget_steps(config):
        logged = pretrain_to(config, pre_dir, step, stop)
        probe_runs = linear_at(config, pre_dir, step, workdir, stop)
        point = {'step': step, 'records_seen': step * batch, **logged,
                 **_encoder_summary(probe_runs, config)}
        point['paired'] = paired_vs_random(point, band, config)
        curve['points'].append(point)
        p0 = point['paired'][0]
        print(f'{step * batch:>7d} records seen: test macro AUC {point["test_macro_auc"]:.4f} '
              f'[{point["ci"][0]:.4f}, {point["ci"][1]:.4f}]; vs random seed 0 '
              f'{p0["diff"]:+.4f} [{p0["ci_low"]:+.4f}, {p0["ci_high"]:+.4f}]', flush=True)
        curve['first_budget_beating_random'] = first_win(curve['points'])
        curve['best_by_validation'] = best_by_validation(curve['points'])
        curve['minutes'] = (time.time() - t0) / 60
        with open(os.path.join(workdir, curve_plots.CURVE_FILE), 'w') as f:
            json.dump(curve, f, indent=2)
    if config.plots:
        curve_plots.plot_learning_curve(curve, os.path.join(workdir, CURVE_PNG))
    return curve


def print_curve(curve: dict) -> None:
    band = curve['random']
    probes = curve.get('probe_seeds', 1)
    if probes > 1:
        print(f'every encoder probed with {probes} probe seeds: the mean of their AUC')
    print(f'random init ({len(band["runs"])} seeds): test macro AUC {band["mean"]:.4f} '
          f'(min {band["min"]:.4f}, max {band["max"]:.4f})')
    win = curve.get('first_budget_beating_random')
    print('pre-training beats every random seed (paired 95% CI > 0) from '
          + (f'{win["records_seen"]} records seen (step {win["step"]})' if win
             else 'no budget run here'))
    best = curve['best_by_validation']
    print(f'best budget by validation AUC: {best["records_seen"]} records seen (step '
          f'{best["step"]}): validation {best["best_val_auc"]:.4f}, test macro AUC '
          f'{best["test_macro_auc"]:.4f} [{best["ci"][0]:.4f}, {best["ci"][1]:.4f}]')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError('Too many command-line arguments.', exitcode=2)
    console.quiet_library_logs()
    sharding.hide_accelerators_from_tensorflow()
    with console.run_errors(None):
        curve = run_curve(FLAGS.config, FLAGS.workdir)
    print_curve(curve)
    print(f'curve: {os.path.join(FLAGS.workdir, curve_plots.CURVE_FILE)}')


if __name__ == '__main__':
    # Defined only when run: experiments/demo.py imports run_curve.
    config_flags.DEFINE_config_file('config', None, 'Learning-curve config file.',
                                    lock_config=True)
    flags.DEFINE_string('workdir', None, 'Output folder.')
    flags.mark_flags_as_required(['config', 'workdir'])
    app.run(main)
