"""The models' convolution (``models.conv_general_dilated``) vs plain
``lax.conv_general_dilated`` in the PGD-10 training step.

XLA's CPU backend runs the input-gradient convolution that JAX's transpose
rule emits (a spatially reversed kernel with swapped feature dimensions,
``dim_labels=..._01oi``) on a slow path when the kernel is a traced value;
``models.conv_general_dilated`` materialises the transposed kernel instead.
Both sides build the same model with the same parameters; the "before" side
is traced with ``models.conv_general_dilated`` patched to the plain lax one.
Alternates A/B and prints the median of the pairwise ratios. Usage:

  python -m benchmarks.conv_grad [--model mnist_cnn] [--batch 128] [--rounds 8]
"""

import argparse
import contextlib

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from dynamic_at import models
from dynamic_at import parallel
from dynamic_at import train


@contextlib.contextmanager
def plain_lax_conv():
  saved = models.conv_general_dilated
  models.conv_general_dilated = jax.lax.conv_general_dilated
  try:
    yield
  finally:
    models.conv_general_dilated = saved


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--model', default='mnist_cnn',
                      choices=tuple(common.IMAGE_SHAPES))
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--rounds', type=int, default=8)
  parser.add_argument('--num_steps', type=int, default=10)
  args = parser.parse_args()

  state0, batch = common.synthetic_state_and_batch(args.model, args.batch,
                                                   steps_per_epoch=100)
  eps = common.PAPER_EPS[args.model]
  ap = train.AttackParams.make(eps, eps / 4, args.num_steps)
  mesh = parallel.make_mesh()
  key = jax.random.key(1)
  new = jax.jit(train.make_train_step('standard', mesh))
  old = jax.jit(train.make_train_step('standard', mesh))
  with plain_lax_conv():
    s_old, _ = old(state0, batch, key, ap)  # traced and compiled here
  s_new, _ = new(state0, batch, key, ap)
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree.leaves(s_old.params), jax.tree.leaves(s_new.params)))
  times = common.alternate(
      {'plain': lambda: old(state0, batch, key, ap)[1]['loss'],
       'models': lambda: new(state0, batch, key, ap)[1]['loss']},
      rounds=args.rounds, warmup=1)
  print(common.machine_line())
  print(f'{args.model}, PGD-{args.num_steps} training step, batch '
        f'{args.batch}, {args.rounds} A/B rounds; max |param diff| after one '
        f'step {diff:.2e}')
  print(common.table(
      ['conv', 'median ms', 'examples/s'],
      [['lax.conv_general_dilated (before)', common.ms(times['plain']),
        args.batch / np.median(times['plain'])],
       ['models.conv_general_dilated (after)', common.ms(times['models']),
        args.batch / np.median(times['models'])]]))
  print(f'median of pairwise ratios before/after: '
        f'{common.median_ratio(times["plain"], times["models"]):.2f}')


if __name__ == '__main__':
  main()
