"""The training log of a run: metrics.jsonl + TensorBoard events, and a summary of it."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import logging

from jepa_ecg.evaluation import plots
from jepa_ecg.training.checkpoint import METRICS_FILE, TENSORBOARD_DIR

LOSS_CURVE_PNG = 'loss_curve.png'
SPARK = ' ▁▂▃▄▅▆▇█'


class MetricsWriter:
    """Appends scalars to metrics.jsonl and TensorBoard; process 0 writes, others no-op.

    A resumed run replays the steps after its last checkpoint; the rows the
    killed run had logged for those steps are dropped on opening (see
    `truncate_metrics`), so metrics.jsonl holds every step once.
    """

    def __init__(self, workdir: str, *, start_step: int = 0):
        """Opens the log of `workdir`.

        Args:
          workdir: the run folder.
          start_step: the step training resumes from; rows logged after it
            are removed. 0 for a fresh run (which starts a fresh file).
        """
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, METRICS_FILE)
        self._tb = None
        if not self.enabled:
            return
        truncate_metrics(workdir, start_step)
        try:
            from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
            self._tb = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))
        except ImportError:  # pragma: no cover - tensorboardX is a dependency
            logging.warning('tensorboardX missing: no event files')

    def write(self, step: int, scalars: dict[str, float]) -> None:
        """Appends one row `{'step': step, **scalars}`."""
        if not self.enabled:
            return
        with open(self.path, 'a') as f:
            f.write(json.dumps({'step': step, **scalars}) + '\n')
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(f'train/{k}', v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class RankWatch:
    """Warns once when the target's effective rank falls below a quarter of its
    running median: a hint that the representation is collapsing.

    `history` holds the ranks logged before (a resumed run reads them back
    from metrics.jsonl), so the median spans the whole run.
    """

    FRACTION = 0.25
    MIN_HISTORY = 3  # ranks seen before the first comparison

    def __init__(self, history: list[float] = ()):
        self.ranks = [float(r) for r in history]
        self.warned = False

    def add(self, step: int, rank: float) -> bool:
        """Records the rank logged at `step`; True when this one set off the warning."""
        fired = False
        if not self.warned and len(self.ranks) >= self.MIN_HISTORY:
            median = float(np.median(self.ranks))
            if rank < self.FRACTION * median:
                logging.warning(
                    'step %d: the target\'s effective rank %.1f fell below a quarter of its '
                    'running median %.1f; the representation may be collapsing (at small '
                    'budgets a lower peak learning rate helps: the small_budget recipe)',
                    step, rank, median)
                self.warned = fired = True
        self.ranks.append(float(rank))
        return fired


def truncate_metrics(workdir: str, step: int) -> int:
    """Drops the rows of metrics.jsonl logged after `step`.

    Args:
      workdir: the run folder.
      step: the last step to keep (the restored checkpoint's).

    Returns:
      How many rows were dropped.
    """
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    keep = [line for line in lines if json.loads(line)['step'] <= step]
    if len(keep) < len(lines):
        tmp = path + '.tmp'
        with open(tmp, 'w') as f:
            f.writelines(keep)
        os.replace(tmp, path)  # a kill now leaves the old file or the new one
    return len(lines) - len(keep)


def read_metrics(workdir: str) -> list[dict]:
    """Rows of metrics.jsonl in step order; a step logged twice keeps its last row."""
    path = os.path.join(workdir, METRICS_FILE)
    rows: dict[int, dict] = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    rows[row['step']] = row
    return [rows[k] for k in sorted(rows)]


def loss_curve_summary(workdir: str, *, points: int = 10, plot: bool = True) -> str:
    """A printable summary of a pre-training run's loss curve (+ loss_curve.png).

    Args:
      workdir: a pre-training workdir.
      points: rows of the table.
      plot: also write `<workdir>/loss_curve.png`.

    Returns:
      The text: a sparkline, a table of sampled steps and the overall change.
    """
    rows = read_metrics(workdir)
    if not rows:
        return f'no metrics in {workdir}'
    steps = np.array([r['step'] for r in rows])
    loss = np.array([r['loss'] for r in rows])
    lo, hi = loss.min(), loss.max()
    spark = ''.join(SPARK[1 + int((v - lo) / max(hi - lo, 1e-12) * (len(SPARK) - 2))]
                    for v in loss)
    picks = sorted(set(np.linspace(0, len(rows) - 1, min(points, len(rows))).astype(int)))
    lines = [f'loss curve ({len(rows)} logged steps, {steps[0]}..{steps[-1]}): {spark}',
             f'{"step":>8} {"loss":>9} {"lr":>9} {"target_std":>10} {"eff_rank":>8} {"rec/s":>8}']
    for i in picks:
        r = rows[i]
        rank = r.get('target_rank')
        lines.append(f'{r["step"]:>8d} {r["loss"]:>9.4f} {r["lr"]:>9.2e} {r["target_std"]:>10.4f} '
                     f'{(f"{rank:.1f}" if rank is not None else "-"):>8} '
                     f'{r.get("records_per_s", float("nan")):>8.1f}')
    first, last = loss[0], loss[-1]
    lines.append(f'loss {first:.4f} -> {last:.4f} ({100 * (last - first) / first:+.1f}%), '
                 f'min {lo:.4f} at step {steps[loss.argmin()]}')
    if plot:
        path = plots.plot_loss_curve(rows, os.path.join(workdir, LOSS_CURVE_PNG))
        lines.append(f'plot: {path}')
    return '\n'.join(lines)
