"""Dynamic's training step against Standard's on a real run's checkpoint.

Restores the newest checkpoint of an MNIST run folder and times, on real
training batches of the next epoch, the Standard step (PGD-10), the Dynamic
step (PGD-10 with FOSC control at ``--c_t``) with compaction of the active
examples (its default) and without. Alternated per round; median ms per
step. Usage:

  python -m benchmarks.dynamic_step --workdir RUN [--data_dir DIR]
      [--c_t 0.5] [--batches 6] [--rounds 3]
"""

import argparse
import time

import jax
import numpy as np

from benchmarks import common
from dynamic_at import data
from dynamic_at import parallel
from dynamic_at import train
from experiments import reporting


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--data_dir', default='../shared/data/mnist')
  parser.add_argument('--c_t', type=float, default=0.5)
  parser.add_argument('--batches', type=int, default=6)
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args()

  mesh = parallel.make_mesh()
  config, state, meta = reporting.restore_model(args.workdir, (28, 28, 1),
                                                mesh)
  ds = data.load_dataset('mnist', 'train', data_dir=args.data_dir)
  epoch = int(state.step) // meta['steps_per_epoch']
  batches = [parallel.global_batch(b, mesh) for _, b in zip(
      range(args.batches), data.epoch_batches(
          ds, config.batch_size, seed=config.seed, epoch=epoch))]
  eps, step = config.eps, config.step_size
  sides = {
      'standard': (train.make_train_step('standard', mesh),
                   train.AttackParams.make(eps, step, config.num_steps)),
      'dynamic, compact (default)': (
          train.make_train_step('dynamic', mesh, compact=True),
          train.AttackParams.make(eps, step, config.num_steps, args.c_t)),
      'dynamic, no compaction': (
          train.make_train_step('dynamic', mesh, compact=False),
          train.AttackParams.make(eps, step, config.num_steps, args.c_t)),
  }
  sides = {n: (jax.jit(f), ap) for n, (f, ap) in sides.items()}
  info = {}
  for n, (f, ap) in sides.items():
    _, m = f(state, batches[0], jax.random.key(1), ap)
    info[n] = (float(m['steps_mean']), int(m['iters_max']))
  times = {n: [] for n in sides}
  for _ in range(args.rounds):
    for n, (f, ap) in sides.items():
      for b in batches:
        t = time.perf_counter()
        jax.block_until_ready(f(state, b, jax.random.key(1), ap))
        times[n].append(time.perf_counter() - t)
  base = np.median(times['standard'])
  print(common.machine_line())
  print(f'{args.workdir} at step {int(state.step)} (epoch {epoch}), batch '
        f'{config.batch_size}, c_t {args.c_t}, {args.batches} batches x '
        f'{args.rounds} rounds')
  rows = [[n, f'{info[n][0]:.2f}', info[n][1],
           f'{1e3 * np.median(ts):.1f}', f'{np.median(ts) / base:.2f}']
          for n, ts in times.items()]
  print(common.table(['step', 'PGD steps/example (1st batch)', 'loop trips',
                      'median ms', 'vs standard'], rows))


if __name__ == '__main__':
  main()
