"""Dynamic vs Standard adversarial training on real MNIST: PGD steps and wall
time per training step, with and without compaction of the active examples.

Part 1 (one device): trains several runs side by side from the same
initialisation on the same real MNIST batches, one step of each in turn
(A, B, C, ... per round): Standard PGD-K, and Dynamic at each ``--c_t`` with
``compact`` off and on (``make_train_step(..., compact=...)``, on by default
for Dynamic: once at most half of the batch is still active the gradient is
evaluated on a gathered buffer of bucketed size 64, 32, 16). Reports the mean PGD steps per example, the mean
loop trip count (what an uncompacted batch pays for), median ms per step and
the median of the per-round ratios to Standard.

Part 2 (``--devices 4``, a subprocess with 4 fake CPU devices): the per-device
loop under ``shard_map``: each device runs until its own slowest example is
done. Compares the total work sum_d(trips_d x B/D) with the work of one global
loop, D x max_d(trips_d) x B/D, and with the useful work sum_i steps_i.

Usage (real data; falls back to random images without --data_dir):

  python -m benchmarks.dynamic_savings --data_dir ../shared/data/mnist \\
      [--steps 100] [--c_t 0.5 0.25] [--devices 4] [--device_steps 30]
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np


def _setup(args):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dynamic_at import data, models, parallel, train  # pylint: disable=g-import-not-at-top,g-multiple-import
  if args.data_dir:
    ds = data.load_dataset('mnist', 'train', data_dir=args.data_dir)
    images, labels = ds.images, ds.labels
  else:
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(4096, 28, 28, 1)).astype(np.float32)
    labels = rng.integers(0, 10, 4096).astype(np.int32)
  rng = np.random.default_rng(args.seed)
  order = rng.permutation(len(labels))

  def batches(n):
    for i in range(n):
      j = order[(i * args.batch) % (len(order) - args.batch):][:args.batch]
      yield {'image': jnp.asarray(images[j]), 'label': jnp.asarray(labels[j])}

  tx = train.make_optimizer(learning_rate=0.01, momentum=0.9,
                            weight_decay=0.0, steps_per_epoch=1000)
  state0 = train.create_train_state(models.MnistCNN(), jax.random.key(0),
                                    (28, 28, 1), tx)
  return jax, jnp, parallel, train, state0, batches


def single_device(args):
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  jax, _, parallel, train, state0, batches = _setup(args)
  mesh = parallel.make_mesh(jax.devices()[:1])
  eps, k = 0.3, args.num_steps
  runs = {'standard': (None, False)}
  for c in args.c_t:
    runs[f'dynamic c_t={c:g}'] = (c, False)
    runs[f'dynamic c_t={c:g} compact'] = (c, True)
  steps_fn = {False: jax.jit(train.make_train_step('dynamic', mesh,
                                                   compact=False)),
              True: jax.jit(train.make_train_step('dynamic', mesh,
                                                  compact=True))}
  key = jax.random.key(1)
  states = {name: state0 for name in runs}
  rec = {name: {'t': [], 'steps': [], 'iters': []} for name in runs}
  for i, batch in enumerate(batches(args.steps + args.warmup)):
    for name, (c, compact) in runs.items():
      ap = train.AttackParams.make(eps, eps / 4, k, c)
      t = time.perf_counter()
      states[name], m = steps_fn[compact](states[name], batch, key, ap)
      m = jax.block_until_ready(m)
      dt = time.perf_counter() - t
      if i >= args.warmup:
        rec[name]['t'].append(dt)
        rec[name]['steps'].append(float(m['steps_mean']))
        rec[name]['iters'].append(float(m['iters_max']))
  base = rec['standard']['t']
  rows = []
  for name, r in rec.items():
    rows.append([name, float(np.mean(r['steps'])), float(np.mean(r['iters'])),
                 common.ms(r['t']), args.batch / float(np.median(r['t'])),
                 common.median_ratio(r['t'], base)])
  print(common.machine_line())
  print(f'MNIST CNN, real data: {args.data_dir is not None}; batch '
        f'{args.batch}, PGD-{k} eps {eps} step {eps / 4}; {args.steps} '
        f'training steps per run from the same init, runs alternated per '
        f'step (first {args.warmup} untimed); one device')
  print(common.table(['run', 'mean PGD steps / example',
                      'mean loop trips / step', 'median ms / step',
                      'examples/s', 'time ratio to standard (median)'], rows))
  for c in args.c_t:
    a, b = rec[f'dynamic c_t={c:g}']['t'], rec[f'dynamic c_t={c:g} compact']['t']
    print(f'c_t={c:g}: median of per-round ratios compact/no-compact: '
          f'{common.median_ratio(b, a):.3f}')


def device_worker(args):
  """Runs in a subprocess with ``--xla_force_host_platform_device_count``."""
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  jax, _, parallel, train, state0, batches = _setup(args)
  mesh = parallel.make_mesh()
  d = mesh.devices.size
  step = jax.jit(train.make_train_step('dynamic', mesh, compact=False))
  state = parallel.replicate(state0, mesh)
  key = jax.random.key(1)
  c = args.c_t[0]
  ap = train.AttackParams.make(0.3, 0.075, args.num_steps, c)
  per_dev, global_, useful = 0.0, 0.0, 0.0
  shard = args.batch // d
  for i, batch in enumerate(batches(args.device_steps)):
    batch = parallel.global_batch({k: np.asarray(v) for k, v in batch.items()},
                                  mesh)
    state, m = step(state, batch, key, ap)
    iters = np.asarray(m['iters'])
    steps = np.asarray(m['steps'])
    per_dev += float(np.sum(iters) * shard)
    global_ += float(d * np.max(iters) * shard)
    useful += float(np.sum(steps))
    if i == 0:
      first = iters.tolist()
  n = args.device_steps
  print(common.machine_line())
  print(f'{d} fake CPU devices, MNIST CNN, batch {args.batch} ({shard} per '
        f'device), Dynamic c_t={c:g}, PGD-{args.num_steps}, {n} training '
        f'steps from init (trip counts of step 1: {first})')
  print(common.table(
      ['work per training step (example-iterations)', 'mean', 'vs global'],
      [['per-device loops: sum_d trips_d x B/D', per_dev / n, per_dev / global_],
       ['one global loop: D x max trips x B/D', global_ / n, 1.0],
       ['useful: sum_i steps_i', useful / n, useful / global_]]))


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--steps', type=int, default=100)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--num_steps', type=int, default=10)
  parser.add_argument('--c_t', type=float, nargs='+', default=[0.5, 0.25])
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--devices', type=int, default=4,
                      help='fake devices of part 2 (0: skip part 2)')
  parser.add_argument('--device_steps', type=int, default=30)
  parser.add_argument('--skip_single', action='store_true')
  parser.add_argument('--_worker', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._worker:  # pylint: disable=protected-access
    device_worker(args)
    return
  if not args.skip_single:
    single_device(args)
  if args.devices:
    env = dict(os.environ)
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                        f' --xla_force_host_platform_device_count='
                        f'{args.devices}').strip()
    cmd = [sys.executable, '-m', 'benchmarks.dynamic_savings', '--_worker',
           '--batch', str(args.batch), '--num_steps', str(args.num_steps),
           '--c_t', str(args.c_t[0]), '--device_steps',
           str(args.device_steps), '--seed', str(args.seed)]
    if args.data_dir:
      cmd += ['--data_dir', args.data_dir]
    print()
    sys.stdout.flush()
    subprocess.run(cmd, env=env, check=True)


if __name__ == '__main__':
  main()
