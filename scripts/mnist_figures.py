"""The MNIST reproduction's figures and result files, from the run workdirs.

  python scripts/mnist_figures.py --runs_dir ../runs --out results/mnist

Reads ``RUNS_DIR/mnist_<method>`` (and ``mnist_<method>_seed1`` where there)
and writes into ``OUT``:

* ``fosc_by_method.png``: the FOSC of the training adversarial examples at
  several stages of training, Standard, Curriculum and Dynamic side by side
  (seed 0; the slides' last figure);
* ``pgd_steps_per_epoch.png``: the mean number of PGD steps per training
  example in each epoch, every run;
* ``test_robustness_per_epoch.png``: the per-epoch test accuracy (clean and
  PGD-20, on the first ``--eval_every_examples`` test images), every run;
* ``<run>/results.json`` (and ``results_gpu_whitebox.json``), ``metrics.jsonl``
  and ``flags.json``
  copied from each workdir that has them (the evaluation on the full test set,
  the per-epoch metrics behind the figures, the run's flags).
"""

import argparse
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dynamic_at import methods  # pylint: disable=g-import-not-at-top,wrong-import-position
from dynamic_at import plots  # pylint: disable=g-import-not-at-top,wrong-import-position

METHODS = tuple(methods.METHODS)
STAGES = (0, 9, 19, 29, 39, 49)


def _rows(workdir):
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _fosc(workdir, stages):
  out = {}
  for epoch in stages:
    path = os.path.join(workdir, 'fosc', f'epoch_{epoch:04d}.npy')
    if os.path.exists(path):
      out[epoch] = np.load(path)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--runs_dir', required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--fosc_x_max', type=float, default=2.0,
                      help='right end of the FOSC axis; larger values are '
                      'counted in the last bin')
  args = parser.parse_args()
  runs = {}
  for method in METHODS:
    for suffix, label in (('', method), ('_seed1', f'{method} (seed 1)')):
      workdir = os.path.join(args.runs_dir, f'mnist_{method}{suffix}')
      if os.path.isdir(workdir):
        runs[label] = workdir
  if not runs:
    sys.exit(f'--runs_dir: no mnist_<method> workdir in {args.runs_dir}')
  os.makedirs(args.out, exist_ok=True)

  fosc = {m: _fosc(runs[m], STAGES) for m in METHODS
          if m in runs and methods.get_method(m).adversarial}
  written = [plots.fosc_histograms_by_method(
      fosc, os.path.join(args.out, 'fosc_by_method.png'),
      max_stages=len(STAGES), num_bins=80, x_max=args.fosc_x_max,
      title='MNIST, seed 0: FOSC of the training adversarial examples '
      '(0 = converged inner maximization)')]
  rows = {label: _rows(workdir) for label, workdir in runs.items()}
  # One colour per method; the seed-1 runs dashed.
  styles = {label: {'color': f'C{METHODS.index(label.split()[0])}',
                    'linestyle': '--' if 'seed 1' in label else '-'}
            for label in runs}
  written.append(plots.curves_by_method(
      {k: v for k, v in rows.items()
       if methods.get_method(k.split()[0]).adversarial},
      os.path.join(args.out, 'pgd_steps_per_epoch.png'),
      keys=(('steps_mean', 'mean PGD steps per training example'),),
      styles=styles, title='MNIST: PGD steps per epoch'))
  written.append(plots.curves_by_method(
      rows, os.path.join(args.out, 'test_robustness_per_epoch.png'),
      keys=(('test_pgd20', 'test PGD-20 accuracy (%)'),
            ('test_clean', 'test clean accuracy (%)')),
      styles=styles, title='MNIST: test accuracy after each epoch (first 1,000 test '
      'images, eps 0.3)'))
  for label, workdir in runs.items():
    name = os.path.basename(workdir)[len('mnist_'):]
    for f in ('results.json', 'results_gpu_whitebox.json', 'metrics.jsonl',
              'flags.json'):
      src = os.path.join(workdir, f)
      if os.path.exists(src):
        os.makedirs(os.path.join(args.out, name), exist_ok=True)
        written.append(shutil.copy(src, os.path.join(args.out, name, f)))
  print('\n'.join(written))


if __name__ == '__main__':
  main()
