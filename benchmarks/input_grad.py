"""Input gradient of a batch: one grad of the summed loss vs vmapped grads.

Measures both forms of the per-example input gradient on the MNIST CNN in
inference mode (batch 128 by default), alternating A, B, A, B, and prints the
median of the pairwise time ratios. Usage:

  python -m benchmarks.input_grad [--batch 128] [--pairs 15]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import dynamic_at as dat
from dynamic_at import models


def _time(fn, *args):
  t = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - t


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--pairs', type=int, default=15)
  args = parser.parse_args()

  model = models.MnistCNN()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  logits_fn = lambda x: model.apply(variables, x, train=False)
  rng = np.random.default_rng(0)
  x = jnp.float32(rng.uniform(size=(args.batch, 28, 28, 1)))
  y = jnp.int32(rng.integers(0, 10, args.batch))

  summed = jax.jit(lambda x_, y_: dat.input_grad(logits_fn, x_, y_))

  def one(xi, yi):
    return dat.xent(logits_fn(xi[None]), yi[None])[0]

  vmapped = jax.jit(lambda x_, y_: (jax.vmap(one)(x_, y_),
                                    jax.vmap(jax.grad(one))(x_, y_)))
  a, b = summed(x, y), vmapped(x, y)
  np.testing.assert_allclose(a[1], b[1], rtol=1e-4, atol=1e-6)
  for _ in range(3):
    _time(summed, x, y), _time(vmapped, x, y)
  ta, tb = [], []
  for _ in range(args.pairs):
    ta.append(_time(summed, x, y))
    tb.append(_time(vmapped, x, y))
  ratio = np.median(np.asarray(tb) / np.asarray(ta))
  print(f'jax {jax.__version__}, {jax.devices()[0].device_kind}, '
        f'batch {args.batch}, {args.pairs} A/B pairs')
  print(f'| form | median ms |\n|---|---|\n'
        f'| grad of summed loss (A) | {1e3 * np.median(ta):.1f} |\n'
        f'| vmap of per-example grad (B) | {1e3 * np.median(tb):.1f} |')
  print(f'median of pairwise ratios B/A: {ratio:.2f} '
        f'(> 1: the summed form is faster)')


if __name__ == '__main__':
  main()
