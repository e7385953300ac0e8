"""Per-layer convolution speed, XLA against PyTorch (oneDNN), one thread each.

For every 3x3 convolution of the MNIST CNN and the CIFAR-10 8-layer CNN at
batch 128: the forward pass, the input gradient (what the attack runs) and
the weight gradient (the training update), JAX (``models.conv_general_dilated``,
jitted, NHWC/HWIO) against ``torch.nn.functional.conv2d`` in eager mode (NCHW,
``torch.autograd.grad``), timed alternately; GFLOP/s per pass
(``2 * B * H * W * 3 * 3 * Cin * Cout``) and the ratio jax / torch. This is
the measured limit behind the PGD-10 step's ratio to PyTorch.

Run in the PyTorch environment, one thread each:

  XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
    PYTHONPATH=. .venv-torch/bin/python -m benchmarks.conv_layers --torch_threads 1
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import common
from dynamic_at import models

# (model, H = W, Cin, Cout) of every 3x3 'SAME' convolution.
LAYERS = (
    ('mnist_cnn', 28, 1, 32),
    ('mnist_cnn', 14, 32, 64),
    ('cifar10_cnn', 32, 3, 64),
    ('cifar10_cnn', 32, 64, 64),
    ('cifar10_cnn', 16, 64, 128),
    ('cifar10_cnn', 16, 128, 128),
    ('cifar10_cnn', 8, 128, 196),
    ('cifar10_cnn', 8, 196, 196),
)

_DN = ('NHWC', 'HWIO', 'NHWC')


def _jax_conv(x, w):
  dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, _DN)
  return models.conv_general_dilated(x, w, (1, 1), 'SAME',
                                     dimension_numbers=dn)


def _jax_passes(b, hw, cin, cout):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((b, hw, hw, cin), np.float32))
  w = jnp.asarray(rng.standard_normal((3, 3, cin, cout), np.float32) * 0.1)
  g = jnp.asarray(rng.standard_normal((b, hw, hw, cout), np.float32))
  fwd = jax.jit(_jax_conv)
  dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: _jax_conv(x, w), x)[1](g)[0])
  dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: _jax_conv(x, w), w)[1](g)[0])
  return {'forward': lambda: fwd(x, w), 'input grad': lambda: dx(x, w, g),
          'weight grad': lambda: dw(x, w, g)}


def _torch_passes(b, hw, cin, cout):
  gen = torch.Generator().manual_seed(0)
  x = torch.randn(b, cin, hw, hw, generator=gen)
  w = torch.randn(cout, cin, 3, 3, generator=gen) * 0.1
  g = torch.randn(b, cout, hw, hw, generator=gen)
  xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)

  def fwd():
    with torch.no_grad():
      return F.conv2d(x, w, padding=1)

  def dx():
    return torch.autograd.grad(F.conv2d(xr, w, padding=1), xr, g)[0]

  def dw():
    return torch.autograd.grad(F.conv2d(x, wr, padding=1), wr, g)[0]

  return {'forward': fwd, 'input grad': dx, 'weight grad': dw}


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--rounds', type=int, default=7)
  parser.add_argument('--torch_threads', type=int, default=1)
  args = parser.parse_args()
  torch.set_num_threads(args.torch_threads)
  rows = []
  totals = {}
  for model, hw, cin, cout in LAYERS:
    flop = 2 * args.batch * hw * hw * 9 * cin * cout
    jp = _jax_passes(args.batch, hw, cin, cout)
    tp = _torch_passes(args.batch, hw, cin, cout)
    for name in jp:
      t = common.alternate({'jax': jp[name], 'torch': tp[name]},
                           rounds=args.rounds, warmup=2)
      for side in ('jax', 'torch'):
        totals.setdefault((model, name, side), 0.0)
        totals[(model, name, side)] += float(np.median(t[side]))
      rows.append([model, f'{hw}x{hw}x{cin}->{cout}', name,
                   flop / np.median(t['jax']) / 1e9,
                   flop / np.median(t['torch']) / 1e9,
                   common.median_ratio(t['torch'], t['jax'])])
  print(common.machine_line())
  print(f'batch {args.batch}, {args.rounds} A/B rounds per pass, torch '
        f'{args.torch_threads} thread(s); speed ratio = torch time / jax time '
        '(>1: JAX faster)')
  print(common.table(['model', 'layer', 'pass', 'jax GFLOP/s',
                      'torch GFLOP/s', 'speed jax/torch'], rows))
  sums = []
  for model in ('mnist_cnn', 'cifar10_cnn'):
    for name in ('forward', 'input grad', 'weight grad'):
      sums.append([model, name, 1e3 * totals[(model, name, 'jax')],
                   1e3 * totals[(model, name, 'torch')],
                   totals[(model, name, 'torch')] /
                   totals[(model, name, 'jax')]])
  print('\nAll of a model\'s convolutions, sum of the per-layer medians:')
  print(common.table(['model', 'pass', 'jax ms', 'torch ms',
                      'speed jax/torch'], sums))


if __name__ == '__main__':
  main()
