"""A few data-parallel training steps of a tiny model, for the parallel tests.

Imported by the tests, and run as a script (one per JAX process) by the
multi-process test:

  python tests/dp_worker.py OUT.npz METHOD STEPS [PROCESS_ID NUM_PROCESSES PORT]
"""

import sys

import flax.linen as nn
import jax
import numpy as np

BATCH = 16
SHAPE = (8, 8, 1)


class TinyCNN(nn.Module):
  """conv + BN + ReLU + dense: small, but with BatchNorm like the paper's."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x)
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(10)(x)


def fixed_batch(seed=0, batch=BATCH):
  rng = np.random.default_rng(seed)
  return {'image': np.float32(rng.uniform(size=(batch,) + SHAPE)),
          'label': np.int32(rng.integers(0, 10, batch))}


def run(mesh, method, steps, attack_params=None, batch=None):
  """``steps`` training steps on one fixed global batch; returns the state."""
  from dynamic_at import parallel, train  # after jax.distributed init
  if batch is None:
    batch = fixed_batch()
  tx = train.make_optimizer(learning_rate=0.05, momentum=0.9,
                            weight_decay=1e-4, steps_per_epoch=100)
  state = train.create_train_state(TinyCNN(), jax.random.key(0), SHAPE, tx)
  state = parallel.replicate(state, mesh)
  step = jax.jit(train.make_train_step(method, mesh))
  if attack_params is None:
    attack_params = train.AttackParams.make(0.1, 0.025, 5, 0.05)
  # Each process feeds only its own contiguous share of the global batch.
  n, i = jax.process_count(), jax.process_index()
  per = batch['label'].shape[0] // n
  local = {k: v[i * per:(i + 1) * per] for k, v in batch.items()}
  gbatch = parallel.global_batch(local, mesh)
  metrics = None
  for _ in range(steps):
    state, metrics = step(state, gbatch, jax.random.key(1), attack_params)
  return state, metrics


def main(argv):
  out, method, steps = argv[1], argv[2], int(argv[3])
  if len(argv) > 4:
    pid, nproc, port = int(argv[4]), int(argv[5]), int(argv[6])
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=f'localhost:{port}',
                               num_processes=nproc, process_id=pid)
  from dynamic_at import parallel
  state, _ = run(parallel.make_mesh(), method, steps)
  # Parameters are replicated: this process's first shard is the whole array.
  leaves = jax.tree_util.tree_leaves_with_path(state.params)
  np.savez(out, **{jax.tree_util.keystr(p): np.asarray(v.addressable_data(0))
                   for p, v in leaves})


if __name__ == '__main__':
  main(sys.argv)
