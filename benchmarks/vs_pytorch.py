"""This project's jitted training step and PGD-20 evaluation vs PyTorch eager.

Needs PyTorch, which is not a dependency of the project: run it from a
separate environment that has torch (CPU build) and this project's jax/flax,
e.g. .venv-torch (see benchmarks/README.md). Both sides run in this one
process, alternated A, B, A, B; the ratio is the median of the pairwise
ratios. Both sides use all cores by default (XLA always does; PyTorch gets
``torch.set_num_threads(--torch_threads)``). Prints:

1. The PGD-10 adversarial training step (random start, 10 steps of eps/4,
   eps 0.3, BatchNorm in eval mode during the attack and in train mode for
   the SGD-momentum update): ``train.make_train_step('standard', mesh)`` vs
   ``torch_reference.train_step``; and the clean (``unsecured``) step.
2. PGD-20 evaluation (attack + accuracy of its output) at several batch
   sizes.
3. FLOPs and the fraction of the machine's practical peak (a float32
   1024^3 matmul in jax): model FLOPs counted by hand from the layer shapes
   and checked against XLA's ``cost_analysis``.

Usage:

  .venv-torch/bin/python -m benchmarks.vs_pytorch [--model mnist_cnn]
      [--batch 128] [--rounds 8] [--eval_batches 128 256 512]
      [--torch_threads 2] [--jax_devices 1] [--skip_eval] [--skip_flops]

``--jax_devices N`` runs the training steps data-parallel over a mesh of N
CPU devices (the project's one code path for 1..N devices), e.g. two
single-threaded devices on a 2-core machine::

  XLA_FLAGS="--xla_force_host_platform_device_count=2 \
    --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
    .venv-torch/bin/python -m benchmarks.vs_pytorch --jax_devices 2
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks import flops as flops_lib
import dynamic_at
from dynamic_at import models
from dynamic_at import parallel
from dynamic_at import train

_SHAPES = common.IMAGE_SHAPES
_EPS = common.PAPER_EPS


def _data(model_name, batch, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(size=(batch,) + _SHAPES[model_name]).astype(np.float32)
  y = rng.integers(0, 10, batch).astype(np.int32)
  return x, y


def _sync(torch, out):
  if out.is_cuda:
    torch.cuda.synchronize()
  return out


def train_rows(args, torch, tr):
  """(rows, ratios) of the adversarial and clean training steps."""
  x, y = _data(args.model, args.batch)
  eps = _EPS[args.model]
  shape = _SHAPES[args.model]
  mesh = parallel.make_mesh(jax.devices()[:args.jax_devices])
  tx = train.make_optimizer(learning_rate=0.01, momentum=0.9,
                            weight_decay=0.0, steps_per_epoch=1000)
  batch = parallel.global_batch({'image': x, 'label': y}, mesh)
  dev = args.torch_device
  xt = tr.to_torch_images(x).to(dev)
  yt = torch.from_numpy(y).long().to(dev)
  key = parallel.replicate(jax.random.key(1), mesh)
  rows = []
  for method, k in (('standard', args.num_steps), ('unsecured', 0)):
    step = jax.jit(train.make_train_step(method, mesh), donate_argnums=0)
    box = {'s': parallel.replicate(train.create_train_state(
        models.get_model(args.model), jax.random.key(0), shape, tx), mesh)}
    ap = train.AttackParams.make(eps, eps / 4, k)

    def jax_side(step=step, box=box, ap=ap):
      box['s'], m = step(box['s'], batch, key, ap)
      return m['loss']

    tm = tr.MODELS[args.model]().to(dev)
    opt = tr.make_optimizer(tm, lr=0.01, momentum=0.9)

    def torch_side(tm=tm, opt=opt, k=k):
      out = tr.train_step(tm, opt, xt, yt, eps=eps, step_size=eps / 4,
                          num_steps=k)
      return _sync(torch, out)

    t = common.alternate({'jax': jax_side, 'torch': torch_side},
                         rounds=args.rounds if k else 3 * args.rounds,
                         warmup=2)
    name = f'PGD-{k} training step' if k else 'clean training step'
    rows.append([name, args.batch, args.batch / np.median(t['jax']),
                 args.batch / np.median(t['torch']),
                 common.median_ratio(t['torch'], t['jax'])])
  return rows


def eval_rows(args, torch, tr):
  eps = _EPS[args.model]
  shape = _SHAPES[args.model]
  model = models.get_model(args.model)
  variables = model.init(jax.random.key(0), jnp.zeros((1,) + shape))

  @jax.jit
  def jax_eval(variables, x, y, key):
    logits_fn = lambda z: model.apply(variables, z, train=False)
    x_adv, _ = dynamic_at.pgd(logits_fn, x, y, key, eps=eps, step_size=eps / 4,
                              num_steps=args.eval_steps)
    return jnp.mean(jnp.argmax(logits_fn(x_adv), -1) == y)

  dev = args.torch_device
  tm = tr.MODELS[args.model]().to(dev)
  tm.eval()
  rows = []
  key = jax.random.key(2)
  for b in args.eval_batches:
    x, y = _data(args.model, b, seed=b)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    xt = tr.to_torch_images(x).to(dev)
    yt = torch.from_numpy(y).long().to(dev)
    sides = {'jax': lambda: jax_eval(variables, xj, yj, key),
             'torch': lambda: _sync(torch, tr.pgd_eval(
                 tm, xt, yt, eps=eps, step_size=eps / 4,
                 num_steps=args.eval_steps))}
    t = common.alternate(sides, rounds=max(3, args.rounds * 128 // b),
                         warmup=1)
    rows.append([f'PGD-{args.eval_steps} eval', b, b / np.median(t['jax']),
                 b / np.median(t['torch']),
                 common.median_ratio(t['torch'], t['jax'])])
  return rows


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', default='mnist_cnn', choices=tuple(_SHAPES))
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--num_steps', type=int, default=10)
  parser.add_argument('--eval_steps', type=int, default=20)
  parser.add_argument('--eval_batches', type=int, nargs='+',
                      default=[128, 256, 512])
  parser.add_argument('--rounds', type=int, default=8)
  parser.add_argument('--torch_threads', type=int, default=0,
                      help='PyTorch intra-op threads (0: all cores, as XLA)')
  parser.add_argument('--torch_device', default='cpu',
                      help="'cpu' or 'cuda' (see run_gpu.sh)")
  parser.add_argument('--jax_devices', type=int, default=1,
                      help='train over a mesh of this many devices (CPU: set '
                      'XLA_FLAGS=--xla_force_host_platform_device_count=N)')
  parser.add_argument('--skip_eval', action='store_true')
  parser.add_argument('--skip_flops', action='store_true')
  args = parser.parse_args()
  if not 1 <= args.jax_devices <= jax.device_count():
    parser.error(f'--jax_devices={args.jax_devices}: this process has '
                 f'{jax.device_count()} device(s); on a CPU set XLA_FLAGS='
                 f'--xla_force_host_platform_device_count={args.jax_devices}')
  if args.batch % args.jax_devices:
    parser.error(f'--batch={args.batch} must be divisible by --jax_devices='
                 f'{args.jax_devices}')

  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_reference as tr  # pylint: disable=g-import-not-at-top
  common.torch_threads(args.torch_threads or None)
  torch.manual_seed(0)

  rows = train_rows(args, torch, tr)
  if not args.skip_eval:
    rows += eval_rows(args, torch, tr)
  print(common.machine_line())
  print(f'jax: training steps on {args.jax_devices} x '
        f'{jax.devices()[0].device_kind}; torch device: '
        f'{torch.cuda.get_device_name() if args.torch_device == "cuda" else "cpu"}')
  print(f'{args.model}, float32, {args.rounds} A/B rounds (eval: scaled to '
        f'the batch); ratio = median over rounds of torch time / jax time '
        f'(> 1: jax faster)')
  print(common.table(['what', 'batch', 'jax examples/s', 'torch examples/s',
                      'jax / torch speed'], rows))
  if not args.skip_flops:
    print()
    flops_lib.report(args.model, args.batch, args.num_steps,
                     adv_examples_per_s=rows[0][2],
                     clean_examples_per_s=rows[1][2])


if __name__ == '__main__':
  main()
