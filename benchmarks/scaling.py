"""The data-parallel PGD-10 training step on 1, 2 and 4 fake CPU devices.

Each device count runs in its own subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``, the same global batch
(split over the devices), the same initialisation and batches, and the step
of ``train.make_train_step('standard', mesh)`` with the state replicated and
the batch sharded. The fake devices share this machine's cores, so the times
measure the overhead of the split (shard_map, per-device loops, all-reduce),
not a speed-up: this is a check that the split is correct. The parameters
after ``--steps`` steps are compared with the 1-device run (max abs diff).
Rounds alternate the device counts (1, 2, 4, 1, 2, 4, ...). Usage:

  python -m benchmarks.scaling [--devices 1 2 4] [--batch 128] [--steps 4]
      [--rounds 2] [--method standard|unsecured]

PGD's sign steps amplify last-bit differences of the all-reduced gradients
(an input-gradient component near 0 can flip sign), so the adversarial runs
drift apart more than the clean ones: ``--method unsecured`` shows the
split's own rounding.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np


def worker(args):
  import time  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from dynamic_at import models, parallel, train  # pylint: disable=g-import-not-at-top,g-multiple-import
  mesh = parallel.make_mesh()
  assert mesh.devices.size == args.n, (mesh.devices.size, args.n)
  rng = np.random.default_rng(0)
  tx = train.make_optimizer(learning_rate=0.01, momentum=0.9,
                            weight_decay=0.0, steps_per_epoch=1000)
  state = parallel.replicate(
      train.create_train_state(models.MnistCNN(), jax.random.key(0),
                               (28, 28, 1), tx), mesh)
  step = jax.jit(train.make_train_step(args.method, mesh))
  ap = train.AttackParams.make(0.3, 0.075, 0 if args.method == 'unsecured' else 10)
  key = jax.random.key(1)
  times = []
  for i in range(args.steps + 1):
    batch = parallel.global_batch(
        {'image': rng.uniform(size=(args.batch, 28, 28, 1)).astype(np.float32),
         'label': rng.integers(0, 10, args.batch).astype(np.int32)}, mesh)
    t = time.perf_counter()
    state, m = step(state, batch, key, ap)
    jax.block_until_ready(m)
    if i:  # the first step compiles
      times.append(time.perf_counter() - t)
  flat = {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_leaves_with_path(state.params)}
  np.savez(args.out, times=np.asarray(times), **flat)


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--devices', type=int, nargs='+', default=[1, 2, 4])
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--steps', type=int, default=4)
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--method', default='standard',
                      choices=('standard', 'unsecured'))
  parser.add_argument('--_n', dest='n', type=int, help=argparse.SUPPRESS)
  parser.add_argument('--_out', dest='out', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.n:
    worker(args)
    return
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  times = {n: [] for n in args.devices}
  params = {}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.rounds):
      for n in args.devices:
        out = os.path.join(tmp, f'{n}_{r}.npz')
        env = dict(os.environ)
        env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                            f' --xla_force_host_platform_device_count={n}'
                            ).strip()
        subprocess.run([sys.executable, '-m', 'benchmarks.scaling',
                        '--_n', str(n), '--_out', out, '--batch',
                        str(args.batch), '--steps', str(args.steps),
                        '--method', args.method],
                       env=env, check=True)
        with np.load(out) as f:
          times[n].append(float(np.median(f['times'])))
          params[n] = {k: f[k] for k in f.files if k != 'times'}
  ref = params[args.devices[0]]
  rows = []
  for n in args.devices:
    diff = max(float(np.max(np.abs(params[n][k] - ref[k]))) for k in ref)
    ratio = common.median_ratio(times[n], times[args.devices[0]])
    rows.append([n, args.batch // n, 1e3 * float(np.median(times[n])),
                 args.batch / float(np.median(times[n])), ratio, diff])
  print(common.machine_line())
  print(f'MNIST CNN, {args.method} step (PGD-10 unless unsecured), global '
        f'batch {args.batch}, '
        f'{args.steps} timed steps per run, {args.rounds} rounds alternating '
        f'the device counts. Fake devices share {os.cpu_count()} cores: this '
        f'checks the split, it does not measure a speed-up.')
  print(common.table(
      ['devices', 'per-device batch', 'median ms / step', 'examples/s',
       f'time ratio to {args.devices[0]} device(s)',
       f'max |param diff| vs {args.devices[0]} device(s) after '
       f'{args.steps + 1} steps'], rows))


if __name__ == '__main__':
  main()
