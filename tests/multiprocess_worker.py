"""One process of a data-parallel run, for tests/test_multiprocess.py.

Usage: python tests/multiprocess_worker.py OUT.npz STEPS
with JAX_NUM_PROCESSES / JAX_PROCESS_ID / JAX_COORDINATOR_ADDRESS set for a
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


if __name__ == '__main__':
    main(sys.argv[1], int(sys.argv[2]))
