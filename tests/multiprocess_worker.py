"""One process of a data-parallel run, for tests/test_multiprocess.py.

Usage: python tests/multiprocess_worker.py OUT.npz STEPS [finetune]
(pre-training steps, or a linear-protocol fine-tuning run on in-memory
records) with JAX_NUM_PROCESSES / JAX_PROCESS_ID / JAX_COORDINATOR_ADDRESS set for a
multi-process run (unset: one process), and XLA_FLAGS giving the number of
local CPU devices.
"""

import os
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(out_path: str, steps: int) -> None:
    from jepa_ecg import sharding as parallel
    parallel.initialize_distributed()

    import jax
    import numpy as np

    from experiments.configs.pretrain import get_config
    from jepa_ecg.training import jepa_step as jepa
    from jepa_ecg.data.masking import sample_batch_masks
    from jepa_ecg.models.config import model_config_from
    from jepa_ecg.training import optim

    config = get_config('vit_tiny,smoke,100hz')
    cfg = model_config_from(config)
    schedules = optim.make_schedules(config)
    tx = optim.make_optimizer(config, schedules)
    mesh = parallel.make_mesh()
    step = parallel.jit_data_parallel(jepa.make_train_step(cfg, tx, schedules), mesh,
                                      donate_argnums=(0,))
    state = parallel.jit_data_parallel(lambda k: jepa.init_train_state(k, cfg, tx), mesh,
                                       batch_argnums=())(jax.random.PRNGKey(0))
    global_batch = 8
    local = parallel.local_batch_size(global_batch, mesh)
    lo = jax.process_index() * local
    losses = []
    for i in range(steps):
        # The same global batch everywhere; each process feeds only its rows.
        rng = np.random.default_rng(i)
        x = rng.standard_normal((global_batch, cfg.window_samples, 12)).astype(np.float32)
        batch = {'signal': x, **sample_batch_masks(rng, global_batch, cfg.num_patches)}
        local_batch = {k: v[lo:lo + local] for k, v in batch.items()}
        state, metrics = step(state, parallel.host_to_global(local_batch, mesh))
        losses.append(float(metrics['loss']))
    params = jax.device_get(state.params)
    if jax.process_index() == 0:
        flat = {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(v)
                for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
        np.savez(out_path, losses=np.array(losses), devices=len(jax.devices()),
                 processes=jax.process_count(), **flat)


def finetune(out_path: str, steps: int) -> None:
    """A linear-protocol run of `steps` steps on in-memory records; process 0
    saves the test logits and the best head."""
    from jepa_ecg import sharding as parallel
    parallel.initialize_distributed()

    import jax
    import numpy as np

    from experiments.configs.finetune import get_config
    from jepa_ecg.data import ptbxl
    from jepa_ecg.models.config import model_config
    from jepa_ecg.training import checkpoint, finetune_loop, finetune_runs

    rng = np.random.default_rng(0)
    n, t = 40, 1000
    signals = rng.standard_normal((n, t, 12)).astype(np.float32)
    labels = rng.random((n, 3)) < 0.5
    labels[:, 0] |= ~labels.any(axis=1)
    folds = np.resize(np.arange(1, 9), n)
    folds[-8:] = [9] * 4 + [10] * 4
    task = ptbxl.make_task(ptbxl.ArrayRecords(signals, fs=100.0), labels, folds,
                           np.arange(n), task='superdiagnostic', classes=['A', 'B', 'C'],
                           fs=100.0, num_samples=t)
    config = get_config('linear,smoke')
    config.unlock()
    config.model.fs, config.plots, config.batch_size = 100.0, False, 8
    config.total_steps = config.eval_every = config.patience = steps
    source = finetune_loop.EncoderSource(model_config('tiny', fs=100.0), spec='random:tiny',
                                         description='random tiny')
    run_dir = os.path.join(os.path.dirname(out_path), f'run{jax.process_count()}')
    results = finetune_runs.train_and_evaluate(config, run_dir, encoder=source,
                                               task='superdiagnostic', task_data=task)
    head = checkpoint.restore_best(run_dir)['head']
    if jax.process_index() == 0:
        logits = np.load(os.path.join(run_dir, checkpoint.PREDICTIONS_FILE))['test_logits']
        flat = {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(v)
                for path, v in jax.tree_util.tree_flatten_with_path(head)[0]}
        np.savez(out_path, test_logits=logits, best_val_auc=results['best_val_auc'],
                 processes=jax.process_count(), **flat)


if __name__ == '__main__':
    (finetune if sys.argv[3:] == ['finetune'] else main)(sys.argv[1], int(sys.argv[2]))
