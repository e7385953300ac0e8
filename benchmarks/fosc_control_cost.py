"""What FOSC control costs: ``pgd`` with a threshold that never stops anyone
vs plain PGD.

In this library ``c_stop=None`` becomes ``-inf`` and compiles to the same
``while_loop`` as any threshold, so ``pgd(c_stop=None)`` vs
``pgd(c_stop=-1e30)`` only checks that. The true plain-PGD cost is a minimal
hand-written ``lax.fori_loop`` with no mask, FOSC or bookkeeping: K gradient
evaluations. ``pgd`` makes K + 1 (the last one gives the reported FOSC and
loss), so a fourth side adds that final evaluation to the minimal loop and
isolates the cost of the control bookkeeping itself (mask, per-example
selects, FOSC reductions, dynamic trip count). A fifth side is ``pgd`` with
``final_eval=False``: FOSC control with exactly K gradient evaluations, the
like-for-like comparison with plain PGD (side C).

All sides: MNIST CNN in inference mode with its variables passed as jit
arguments (as in the training step), random start, step eps/4, eps 0.3.
Alternated A to E; ratios are medians of per-round ratios. Usage:

  python -m benchmarks.fosc_control_cost [--batch 128] [--num_steps 10 20]
      [--rounds 10]
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
import dynamic_at
from dynamic_at import models


def minimal_pgd(logits_fn, x0, y, key, eps, step_size, num_steps,
                final_eval=False):
  """Plain L-inf PGD: random start, ``num_steps`` sign steps, nothing else."""
  x = dynamic_at.random_start_point(key, x0, eps)

  def body(_, x):
    _, g = dynamic_at.input_grad(logits_fn, x, y)
    x = jnp.clip(x + step_size * jnp.sign(g), x0 - eps, x0 + eps)
    return jnp.clip(x, 0.0, 1.0)

  x = jax.lax.fori_loop(0, num_steps, body, x)
  if not final_eval:
    return x, None
  loss, g = dynamic_at.input_grad(logits_fn, x, y)
  return x, (loss, dynamic_at.fosc(x, x0, g, eps))


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--num_steps', type=int, nargs='+', default=[10, 20])
  parser.add_argument('--rounds', type=int, default=10)
  args = parser.parse_args()

  model = models.MnistCNN()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  rng = np.random.default_rng(0)
  x0 = jnp.float32(rng.uniform(size=(args.batch, 28, 28, 1)))
  y = jnp.int32(rng.integers(0, 10, args.batch))
  key = jax.random.key(1)
  eps = 0.3

  def lib(c_stop, final_eval=True):
    @jax.jit
    def f(v, x0, y, key, k):
      return dynamic_at.pgd(lambda z: model.apply(v, z, train=False), x0, y,
                            key, eps=eps, step_size=eps / 4, num_steps=k,
                            c_stop=c_stop, final_eval=final_eval)[0]
    return f

  def minimal(final_eval):
    @jax.jit
    def f(v, x0, y, key, k):
      return minimal_pgd(lambda z: model.apply(v, z, train=False), x0, y,
                         key, eps, eps / 4, k, final_eval)
    return f

  fns = {'A pgd c_stop=None': lib(None),
         'B pgd c_stop=-1e30 (FOSC path)': lib(-1e30),
         'C minimal fori_loop, K grads': minimal(False),
         'D minimal fori_loop + final eval, K+1 grads': minimal(True),
         'E pgd c_stop=-1e30, final_eval=False (K grads)': lib(-1e30, False)}
  rows = []
  for k in args.num_steps:
    kk = jnp.int32(k)
    outs = {n: f(variables, x0, y, key, kk) for n, f in fns.items()}
    same = bool(jnp.all(outs['A pgd c_stop=None'] ==
                        outs['C minimal fori_loop, K grads'][0]))
    t = common.alternate(
        {n: (lambda f=f: f(variables, x0, y, key, kk)) for n, f in fns.items()},
        rounds=args.rounds, warmup=2)
    base_c = t['C minimal fori_loop, K grads']
    base_d = t['D minimal fori_loop + final eval, K+1 grads']
    for n, ts in t.items():
      rows.append([f'K={k}', n, common.ms(ts),
                   f'{100 * (common.median_ratio(ts, base_c) - 1):+.1f}%',
                   f'{100 * (common.median_ratio(ts, base_d) - 1):+.1f}%'])
    rows.append([f'K={k}', f'(x_adv of A == C bitwise: {same})', '', '', ''])
  print(common.machine_line())
  print(f'MNIST CNN, batch {args.batch}, {args.rounds} rounds, alternated')
  print(common.table(['K', 'side', 'median ms', 'vs C (K grads)',
                      'vs D (K+1 grads)'], rows))


if __name__ == '__main__':
  main()
