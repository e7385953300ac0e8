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

  state0, batch, ap, key = common.paper_step_inputs(args.model, args.batch,
                                                    args.num_steps)
  mesh = parallel.make_mesh()
  new = jax.jit(train.make_train_step('standard', mesh))
  old = jax.jit(train.make_train_step('standard', mesh))
  with plain_lax_conv():
    old(state0, batch, key, ap)  # traced and compiled here
  common.print_step_ab(
      args, {'lax.conv_general_dilated (before)': old,
             'models.conv_general_dilated (after)': new},
      state0, batch, key, ap, column='conv')


if __name__ == '__main__':
  main()
