"""FLOPs of the models and the training step, and the fraction of the
machine's peak FLOP/s the jitted step reaches.

FLOPs are counted by hand from the layer shapes (2 x multiply-adds of the
convolutions and dense layers; BatchNorm, ReLU, pooling and the attack's
elementwise work are left out) and checked against XLA's
``compiled.cost_analysis()['flops']`` of a jitted forward, input gradient and
parameter gradient. An input-gradient evaluation is a forward pass plus the
backward pass to the input (about 2 forwards); the PGD-K step makes K + 1 of
them (the last gives the reported FOSC and loss) plus one training forward
and backward (3 forwards less the first convolution's input gradient).

The practical peak is a float32 1024^3 matmul in jax; the theoretical one is
cores x clock x FLOP/cycle (two FMA units of the widest vector width in
/proc/cpuinfo; a guess, see ``common.peak_flops_per_cycle_f32``).

Usage (measures the jax step alone; ``vs_pytorch`` prints the same table):

  python -m benchmarks.flops [--model mnist_cnn] [--batch 128] [--rounds 5]
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
import dynamic_at
from dynamic_at import models
from dynamic_at import parallel
from dynamic_at import train

_SHAPES = common.IMAGE_SHAPES


def layer_flops(model_name):
  """[(name, forward FLOPs per example)] of the conv and dense layers."""
  if model_name == 'mnist_cnn':
    convs = [(28, 1, 32), (14, 32, 64)]
    dense = [(7 * 7 * 64, 128), (128, 10)]
  elif model_name == 'cifar10_cnn':
    convs = [(32, 3, 64), (32, 64, 64), (16, 64, 128), (16, 128, 128),
             (8, 128, 196), (8, 196, 196)]
    dense = [(4 * 4 * 196, 256), (256, 10)]
  else:
    raise ValueError(model_name)
  out = [(f'conv{i} {h}x{h} {ci}->{co}', 2 * h * h * 9 * ci * co)
         for i, (h, ci, co) in enumerate(convs, 1)]
  out += [(f'dense {i}->{o}', 2 * i * o) for i, o in dense]
  return out


def hand_count(model_name, num_steps):
  """Per-example FLOPs: forward, input gradient, train step, PGD-K step."""
  layers = layer_flops(model_name)
  fwd = sum(f for _, f in layers)
  first = layers[0][1]
  igrad = 2 * fwd
  train_grad = 3 * fwd - first
  return {'forward': fwd, 'input gradient': igrad,
          'clean training step': train_grad,
          f'PGD-{num_steps} training step': (num_steps + 1) * igrad +
                                            train_grad}


def xla_count(model_name, batch):
  """Per-example FLOPs by XLA's cost analysis of the jitted pieces."""
  shape = _SHAPES[model_name]
  model = models.get_model(model_name)
  variables = model.init(jax.random.key(0), jnp.zeros((1,) + shape))
  x = jnp.zeros((batch,) + shape)
  y = jnp.zeros((batch,), jnp.int32)

  def fwd(v, x):
    return model.apply(v, x, train=False)

  def igrad(v, x):
    return dynamic_at.input_grad(lambda z: model.apply(v, z, train=False), x, y)

  def pgrad(v, x):
    def loss(p):
      logits, _ = model.apply({'params': p, 'batch_stats': v['batch_stats']},
                              x, train=True, mutable=['batch_stats'])
      return jnp.mean(dynamic_at.xent(logits, y))
    return jax.grad(loss)(v['params'])

  out = {}
  for name, f in (('forward', fwd), ('input gradient', igrad),
                  ('clean training step', pgrad)):
    cost = jax.jit(f).lower(variables, x).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    out[name] = float(cost.get('flops', float('nan'))) / batch
  return out


def matmul_peak(n=1024, rounds=10):
  """Median float32 GFLOP/s of an n^3 jax matmul."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)),
                  jnp.float32)
  mm = jax.jit(lambda a: a @ a)
  t = common.alternate({'mm': lambda: mm(a)}, rounds=rounds, warmup=2)['mm']
  return 2 * n ** 3 / float(np.median(t)) / 1e9


def report(model_name, batch, num_steps, adv_examples_per_s,
           clean_examples_per_s):
  hand = hand_count(model_name, num_steps)
  xla = xla_count(model_name, batch)
  print(f'{model_name}: per-example forward FLOPs by layer: ' + ', '.join(
      f'{n} {f / 1e6:.2f}M' for n, f in layer_flops(model_name)))
  print(common.table(
      ['per example', 'hand count MFLOP', 'XLA cost_analysis MFLOP'],
      [[k, v / 1e6, xla[k] / 1e6 if k in xla else '-']
       for k, v in hand.items()]))
  peak = matmul_peak()
  d = common.cpu_description()
  theo = (d['cores'] * (d['mhz'] or 0) * 1e6 *
          common.peak_flops_per_cycle_f32(d['flags']) / 1e9)
  adv = hand[f'PGD-{num_steps} training step'] * adv_examples_per_s / 1e9
  clean = hand['clean training step'] * clean_examples_per_s / 1e9
  print(f'practical peak (float32 1024^3 jax matmul): {peak:.1f} GFLOP/s; '
        f'theoretical {theo:.0f} GFLOP/s ({d["cores"]} cores x '
        f'{d["mhz"]:.0f} MHz x '
        f'{common.peak_flops_per_cycle_f32(d["flags"])} FLOP/cycle)')
  print(common.table(
      ['step', 'examples/s', 'GFLOP/s (hand count)', 'of matmul peak',
       'of theoretical'],
      [[f'PGD-{num_steps} training', adv_examples_per_s, adv,
        f'{100 * adv / peak:.0f}%', f'{100 * adv / theo:.0f}%'],
       ['clean training', clean_examples_per_s, clean,
        f'{100 * clean / peak:.0f}%', f'{100 * clean / theo:.0f}%']]))


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', default='mnist_cnn', choices=tuple(_SHAPES))
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--num_steps', type=int, default=10)
  parser.add_argument('--rounds', type=int, default=5)
  args = parser.parse_args()
  state, batch = common.synthetic_state_and_batch(args.model, args.batch,
                                                  steps_per_epoch=1000)
  mesh = parallel.make_mesh(jax.devices()[:1])
  key = jax.random.key(1)
  eps = common.PAPER_EPS[args.model]
  sides = {}
  for method, k in (('standard', args.num_steps), ('unsecured', 0)):
    step = jax.jit(train.make_train_step(method, mesh))
    ap = train.AttackParams.make(eps, eps / 4, k)
    sides[method] = lambda step=step, ap=ap: step(state, batch, key, ap)[1]
  t = common.alternate(sides, rounds=args.rounds, warmup=2)
  print(common.machine_line())
  report(args.model, args.batch, args.num_steps,
         args.batch / float(np.median(t['standard'])),
         args.batch / float(np.median(t['unsecured'])))


if __name__ == '__main__':
  main()
