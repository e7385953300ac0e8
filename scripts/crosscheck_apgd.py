"""Cross-checks dynamic_at's APGD / APGD-T against torchattacks on MNIST.

Converts a trained :class:`dynamic_at.models.MnistCNN` into an equivalent
PyTorch module, checks that the clean logits of both agree, then runs
torchattacks' ``APGD`` (CE, and optionally DLR) and ``APGDT`` on the PyTorch
model and our :func:`apgd` / :func:`apgd_targeted` on the Flax model, on the
same test examples, and prints the robust accuracies side by side (and the
worst case over the attacks of each side). Not a test dependency: it needs the
packages of ``scripts/requirements-crosscheck.txt``, e.g.::

  python3 -m venv .venv-xcheck
  .venv-xcheck/bin/pip install -r scripts/requirements-crosscheck.txt
  .venv-xcheck/bin/pip install --no-deps torchattacks==3.5.1
  PYTHONPATH=. .venv-xcheck/bin/python scripts/crosscheck_apgd.py \\
      --params_npz /tmp/mnist_cnn.npz --data_dir ../shared/data/mnist \\
      --num_examples 500 --eps 0.3

(``--no-deps``: torchattacks requires torchvision, which it does not import
for these attacks; installing it would replace the local CPU torch.)

The model comes from ``--params_npz`` (the format below) or ``--workdir`` (a
training run folder, restored with ``experiments.reporting.restore_model``).

Parameter file format (``--params_npz``): one ``numpy.savez`` archive whose
keys are the '/'-joined paths of the Flax variables of the model, e.g.
``params/Conv_0/kernel`` (HWIO), ``params/Dense_0/kernel`` (in, out),
``batch_stats/BatchNorm_0/mean``; see :func:`save_variables_npz` and
:func:`load_variables_npz`.
"""

import argparse
import os
import sys
import time
from typing import Any, Dict

import numpy as np

# Runs as ``python scripts/crosscheck_apgd.py`` from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
from flax import traverse_util  # pylint: disable=g-import-not-at-top

import dynamic_at  # pylint: disable=g-import-not-at-top
from dynamic_at import models  # pylint: disable=g-import-not-at-top

_BN_EPSILON = 1e-5  # models.MnistCNN's BatchNorm epsilon (PyTorch default).


def save_variables_npz(path: str, variables: Dict[str, Any]) -> None:
  """Saves Flax variables (``{'params': ..., 'batch_stats': ...}``) as npz.

  Args:
    path: output file.
    variables: nested dict of arrays.
  """
  flat = traverse_util.flatten_dict(jax.device_get(dict(variables)), sep='/')
  np.savez(path, **{k: np.asarray(v) for k, v in flat.items()})


def load_variables_npz(path: str) -> Dict[str, Any]:
  """Loads what :func:`save_variables_npz` wrote, as nested dicts of arrays."""
  with np.load(path) as f:
    flat = {k: np.asarray(f[k]) for k in f.files}
  return traverse_util.unflatten_dict(flat, sep='/')


def load_variables_workdir(workdir: str) -> Dict[str, Any]:
  """Restores the newest checkpoint of a MNIST training run folder."""
  from dynamic_at import parallel  # pylint: disable=g-import-not-at-top
  from experiments import reporting  # pylint: disable=g-import-not-at-top
  _, state, _ = reporting.restore_model(workdir, (28, 28, 1),
                                        parallel.make_mesh())
  return jax.device_get({'params': state.params,
                         'batch_stats': state.batch_stats})


def to_torch_module(variables: Dict[str, Any]):
  """An eval-mode ``torch.nn.Module`` (NCHW input) equal to the MnistCNN.

  Conv kernels go from HWIO to OIHW ('SAME' 3x3 is padding 1). The first
  dense layer's input rows are reordered from Flax's NHWC flatten order
  ``(h, w, c)`` to PyTorch's NCHW order ``(c, h, w)``, so the PyTorch module
  flattens as usual.
  """
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  p, bs = variables['params'], variables['batch_stats']
  t = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32))
  layers = []
  for i, (c_in, c_out) in enumerate(((1, 32), (32, 64))):
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    conv.weight.data = t(np.transpose(p[f'Conv_{i}']['kernel'], (3, 2, 0, 1)))
    conv.bias.data = t(p[f'Conv_{i}']['bias'])
    bn = nn.BatchNorm2d(c_out, eps=_BN_EPSILON)
    bn.weight.data = t(p[f'BatchNorm_{i}']['scale'])
    bn.bias.data = t(p[f'BatchNorm_{i}']['bias'])
    bn.running_mean.data = t(bs[f'BatchNorm_{i}']['mean'])
    bn.running_var.data = t(bs[f'BatchNorm_{i}']['var'])
    layers += [conv, bn, nn.ReLU(), nn.MaxPool2d(2)]
  k0 = np.asarray(p['Dense_0']['kernel'])           # [7*7*64, 128], (h, w, c)
  k0 = k0.reshape(7, 7, 64, -1).transpose(2, 0, 1, 3).reshape(7 * 7 * 64, -1)
  dense0 = nn.Linear(k0.shape[0], k0.shape[1])
  dense0.weight.data = t(k0.T)
  dense0.bias.data = t(p['Dense_0']['bias'])
  k1 = np.asarray(p['Dense_1']['kernel'])
  dense1 = nn.Linear(k1.shape[0], k1.shape[1])
  dense1.weight.data = t(k1.T)
  dense1.bias.data = t(p['Dense_1']['bias'])
  layers += [nn.Flatten(), dense0, nn.ReLU(), dense1]
  return nn.Sequential(*layers).eval()


def _batches(n, batch_size):
  for start in range(0, n, batch_size):
    yield slice(start, min(start + batch_size, n))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument('--params_npz', help='Flax variables, npz (see module doc)')
  src.add_argument('--workdir', help='a dynamic_at MNIST training run folder')
  parser.add_argument('--data_dir', default='../shared/data/mnist',
                      help='folder with the raw MNIST idx files')
  parser.add_argument('--num_examples', type=int, default=500)
  parser.add_argument('--eps', type=float, default=0.3)
  parser.add_argument('--num_steps', type=int, default=100)
  parser.add_argument('--num_targets', type=int, default=9)
  parser.add_argument('--batch_size', type=int, default=250)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--dlr', action='store_true',
                      help='also run APGD-DLR (untargeted) on both sides')
  parser.add_argument('--logit_atol', type=float, default=1e-3,
                      help='max |flax - torch| clean logit difference allowed')
  args = parser.parse_args(argv)

  import torch  # pylint: disable=g-import-not-at-top
  import torchattacks  # pylint: disable=g-import-not-at-top
  from dynamic_at import data  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(max(1, os.cpu_count() or 1))
  variables = (load_variables_npz(args.params_npz) if args.params_npz else
               load_variables_workdir(args.workdir))
  ds = data.load_dataset('mnist', 'test', data_dir=args.data_dir,
                         num_examples=args.num_examples)
  x_all, y_all = ds.images, ds.labels
  n = len(y_all)

  model = models.MnistCNN()
  logits_fn = lambda x: model.apply(variables, x, train=False)
  torch_model = to_torch_module(variables)
  nchw = lambda a: torch.from_numpy(np.ascontiguousarray(
      np.transpose(a, (0, 3, 1, 2))))

  # 1. Clean logits agree.
  jit_logits = jax.jit(logits_fn)
  flax_logits = np.concatenate(
      [np.asarray(jit_logits(x_all[s])) for s in _batches(n, args.batch_size)])
  with torch.no_grad():
    torch_logits = np.concatenate([
        torch_model(nchw(x_all[s])).numpy()
        for s in _batches(n, args.batch_size)])
  diff = float(np.max(np.abs(flax_logits - torch_logits)))
  scale = float(np.max(np.abs(flax_logits)))
  print(f'clean logits: max |flax - torch| = {diff:.3g} (max |logit| '
        f'{scale:.3g}); argmax agree on '
        f'{np.mean(flax_logits.argmax(1) == torch_logits.argmax(1)):.2%}')
  if not diff <= args.logit_atol:
    raise SystemExit(f'FAIL: clean logits differ by {diff} > '
                     f'{args.logit_atol}; the conversion is wrong')
  clean_flax = flax_logits.argmax(1) == y_all
  clean_torch = torch_logits.argmax(1) == y_all

  # 2. Attacks. Robust = correctly classified at the returned point (by the
  # model the attack ran on), which also checks the eps-ball.
  def torch_run(attack):
    correct = np.zeros(n, bool)
    for s in _batches(n, args.batch_size):
      x0 = nchw(x_all[s])
      adv = attack(x0, torch.from_numpy(y_all[s]).long()).detach()
      dist = float((adv - x0).abs().max())
      assert dist <= args.eps + 1e-5 and 0 <= adv.min() and adv.max() <= 1
      with torch.no_grad():
        correct[s] = torch_model(adv).argmax(1).numpy() == y_all[s]
    return correct

  ours_fns = {
      'APGD-CE': jax.jit(lambda x, y, k: dynamic_at.apgd(
          logits_fn, x, y, k, eps=args.eps, num_steps=args.num_steps,
          loss='ce')),
      'APGD-DLR': jax.jit(lambda x, y, k: dynamic_at.apgd(
          logits_fn, x, y, k, eps=args.eps, num_steps=args.num_steps,
          loss='dlr')),
      'APGD-T': jax.jit(lambda x, y, k: dynamic_at.apgd_targeted(
          logits_fn, x, y, k, eps=args.eps, num_steps=args.num_steps,
          num_targets=args.num_targets)),
  }

  def ours_run(name):
    fn = ours_fns[name]
    correct = np.zeros(n, bool)
    key = jax.random.key(args.seed)
    for i, s in enumerate(_batches(n, args.batch_size)):
      x0 = jnp.asarray(x_all[s])
      adv, info = fn(x0, jnp.asarray(y_all[s]), jax.random.fold_in(key, i))
      dist = float(jnp.max(jnp.abs(adv - x0)))
      assert dist <= args.eps + 1e-5 and 0 <= adv.min() and adv.max() <= 1
      correct[s] = np.asarray(jnp.argmax(jit_logits(adv), -1)) == y_all[s]
      assert np.array_equal(~correct[s], np.asarray(info.success))
    return correct

  torch_attacks = {
      'APGD-CE': torchattacks.APGD(torch_model, norm='Linf', eps=args.eps,
                                   steps=args.num_steps, n_restarts=1,
                                   loss='ce', seed=args.seed),
      'APGD-DLR': torchattacks.APGD(torch_model, norm='Linf', eps=args.eps,
                                    steps=args.num_steps, n_restarts=1,
                                    loss='dlr', seed=args.seed),
      'APGD-T': torchattacks.APGDT(torch_model, norm='Linf', eps=args.eps,
                                   steps=args.num_steps, n_restarts=1,
                                   n_classes=args.num_targets + 1,
                                   seed=args.seed),
  }
  names = ['APGD-CE'] + (['APGD-DLR'] if args.dlr else []) + ['APGD-T']
  results = {'torchattacks': {}, 'dynamic_at': {}}
  print(f'\n{n} MNIST test examples, eps={args.eps}, {args.num_steps} steps, '
        f'{args.num_targets} targets (APGD-T), 1 restart each\n')
  print(f'{"attack":<12}{"torchattacks":>14}{"dynamic_at":>12}'
        f'{"agree":>9}{"t_torch":>10}{"t_ours":>9}')
  print(f'{"clean":<12}{clean_torch.mean():>14.2%}{clean_flax.mean():>12.2%}'
        f'{np.mean(clean_torch == clean_flax):>9.2%}')
  for name in names:
    t0 = time.time()
    results['torchattacks'][name] = torch_run(torch_attacks[name])
    t1 = time.time()
    results['dynamic_at'][name] = ours_run(name)
    t2 = time.time()
    a, b = results['torchattacks'][name], results['dynamic_at'][name]
    print(f'{name:<12}{a.mean():>14.2%}{b.mean():>12.2%}'
          f'{np.mean(a == b):>9.2%}{t1 - t0:>9.1f}s{t2 - t1:>8.1f}s',
          flush=True)
  worst = {side: dynamic_at.worst_case(r) for side, r in results.items()}
  print(f'{"worst case":<12}{worst["torchattacks"].mean():>14.2%}'
        f'{worst["dynamic_at"].mean():>12.2%}'
        f'{np.mean(worst["torchattacks"] == worst["dynamic_at"]):>9.2%}')
  print('\n"agree": fraction of examples that both sides call robust or both '
        'non-robust.\nThe random starts differ (torch vs JAX RNG), so small '
        'differences are expected.')


if __name__ == '__main__':
  main()
