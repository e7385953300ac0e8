"""Two CPU levers for the PGD-10 training step, each A/B'd in one run.

``--part im2col``: the models' convolutions as explicit patches and one
``dot_general`` (im2col) instead of XLA's convolution, for the forward, input
gradient and weight gradient alike (autodiff of the patch extraction and the
matmul). Both sides are traced in one process from the same parameters and
timed alternately (like ``conv_grad``).

``--part flags``: XLA CPU flag sets (XNNPACK, oneDNN, fast math, ...). A flag
is process-wide, so each sample is a fresh subprocess (``--worker``) that
compiles the step and times ``--steps`` calls; the flag sets take turns
(baseline, A, baseline, B, ..., for ``--rounds`` rounds). Each worker also
reports the parameters after one step, so a flag that changes the results
shows up beside its speed.

Usage (repository root):

  python -m benchmarks.cpu_levers --part im2col [--model cifar10_cnn]
  python -m benchmarks.cpu_levers --part flags [--rounds 3]
"""

import argparse
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from dynamic_at import models
from dynamic_at import parallel
from dynamic_at import train

# name -> extra XLA_FLAGS; '' is the baseline (whatever XLA_FLAGS the
# benchmark itself was started with, e.g. single-threaded Eigen).
FLAG_SETS = {
    'baseline': '',
    'xnnpack': '--xla_cpu_use_xnnpack=true',
    'onednn': '--xla_cpu_use_onednn=true',
    'xnn_fusion_conv_dot': ('--xla_cpu_experimental_xnn_fusion_type='
                            'individual_convolution,dot'),
    'onednn_fusion_conv': ('--xla_cpu_experimental_onednn_fusion_type='
                           'individual_convolution'),
    'fast_math': '--xla_cpu_enable_fast_math=true',
}


def im2col_conv(lhs, rhs, window_strides, padding, lhs_dilation=None,
                rhs_dilation=None, dimension_numbers=None,
                feature_group_count=1, batch_group_count=1, precision=None,
                preferred_element_type=None):
  """``lax.conv_general_dilated`` for the models' case (NHWC/HWIO, stride 1,
  no dilation, one group) as patches and one matmul; every other case goes
  to ``models.conv_general_dilated``."""
  simple = (tuple(window_strides) == (1, 1)
            and lhs_dilation in (None, (1, 1))
            and rhs_dilation in (None, (1, 1))
            and feature_group_count == 1 and batch_group_count == 1
            and precision is None and preferred_element_type is None
            and lhs.ndim == 4 and dimension_numbers is not None
            and tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2)
            and tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1))
  if not simple:
    return _MODELS_CONV(lhs, rhs, window_strides, padding, lhs_dilation,
                        rhs_dilation, dimension_numbers, feature_group_count,
                        batch_group_count, precision, preferred_element_type)
  kh, kw, cin, cout = rhs.shape
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), (1, 1),
                                      padding)
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(lhs, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  ho = lhs.shape[1] + pt + pb - kh + 1
  wo = lhs.shape[2] + pl + pr - kw + 1
  cols = jnp.concatenate([xp[:, i:i + ho, j:j + wo, :]
                          for i in range(kh) for j in range(kw)], axis=-1)
  # HWIO flattened row-major is (i, j, c): the order of the columns above.
  return jnp.einsum('bhwk,ko->bhwo', cols, rhs.reshape(kh * kw * cin, cout))


_MODELS_CONV = models.conv_general_dilated


def part_im2col(args):
  state0, batch, ap, key = common.paper_step_inputs(
      args.model, args.batch, args.num_steps)
  mesh = parallel.make_mesh()
  ref = jax.jit(train.make_train_step('standard', mesh))
  cols = jax.jit(train.make_train_step('standard', mesh))
  ref(state0, batch, key, ap)  # traced and compiled here
  models.conv_general_dilated = im2col_conv
  try:
    cols(state0, batch, key, ap)  # traced with im2col here
  finally:
    models.conv_general_dilated = _MODELS_CONV
  common.print_step_ab(
      args, {'models.conv_general_dilated (XLA conv)': ref,
             'im2col: patches + dot_general': cols},
      state0, batch, key, ap, column='convolution')

def worker(args):
  """One flag set's sample: compile, warm up, time ``--steps`` calls."""
  state0, batch, ap, key = common.paper_step_inputs(
      args.model, args.batch, args.num_steps)
  mesh = parallel.make_mesh()
  step = jax.jit(train.make_train_step('standard', mesh))
  s1, _ = step(state0, batch, key, ap)
  common.block(step(state0, batch, key, ap))
  ts = [common.time_call(lambda: step(state0, batch, key, ap)[1]['loss'])
        for _ in range(args.steps)]
  print(json.dumps({
      'ms': 1e3 * float(np.median(ts)),
      'params': [np.asarray(p).ravel()[:64].tolist()
                 for p in jax.tree.leaves(s1.params)],
  }))


def part_flags(args):
  base = os.environ.get('XLA_FLAGS', '')
  names = list(FLAG_SETS) if not args.only else ['baseline', *args.only]
  samples = {n: [] for n in names}
  params = {}
  for _ in range(args.rounds):
    for name in names:
      env = dict(os.environ, XLA_FLAGS=f'{base} {FLAG_SETS[name]}'.strip())
      out = subprocess.run(
          [sys.executable, '-m', 'benchmarks.cpu_levers', '--worker',
           f'--model={args.model}', f'--batch={args.batch}',
           f'--num_steps={args.num_steps}', f'--steps={args.steps}'],
          env=env, capture_output=True, text=True, check=False)
      if out.returncode:
        samples[name].append(float('nan'))
        print(f'{name}: worker failed: {out.stderr.strip()[-500:]}')
        continue
      res = json.loads(out.stdout.strip().splitlines()[-1])
      samples[name].append(res['ms'] / 1e3)
      params[name] = res['params']
  print(common.machine_line())
  print(f'{args.model}, PGD-{args.num_steps} training step, batch '
        f'{args.batch}; {args.rounds} rounds, each a fresh process per flag '
        f'set timing {args.steps} steps (median); base XLA_FLAGS={base!r}')
  rows = []
  for name in names:
    diff = (max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                for a, b in zip(params[name], params['baseline']))
            if name in params and 'baseline' in params else float('nan'))
    rows.append([name, FLAG_SETS[name] or '-', common.ms(samples[name]),
                 args.batch / np.median(samples[name]),
                 common.median_ratio(samples['baseline'], samples[name]),
                 f'{diff:.1e}'])
  print(common.table(['flag set', 'XLA_FLAGS added', 'median ms',
                      'examples/s', 'speed-up vs baseline (median ratio)',
                      'max |param diff| after 1 step (first 64 of each)'],
                     rows))


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--part', choices=('im2col', 'flags'), default='im2col')
  parser.add_argument('--model', default='mnist_cnn',
                      choices=tuple(common.IMAGE_SHAPES))
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--rounds', type=int, default=6)
  parser.add_argument('--num_steps', type=int, default=10)
  parser.add_argument('--steps', type=int, default=5,
                      help='timed steps per worker process (flags part)')
  parser.add_argument('--only', nargs='*', choices=tuple(FLAG_SETS)[1:],
                      help='flag sets to compare with the baseline')
  parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    worker(args)
  elif args.part == 'im2col':
    part_im2col(args)
  else:
    part_flags(args)


if __name__ == '__main__':
  main()
