"""The study figures of a sweep (:mod:`experiments.sweep`).

* :func:`cost_robustness`: test PGD-20 against the attack gradient
  evaluations of training, one point per run, one colour per variant.
* :func:`threshold_vs_fosc`: per epoch, each Dynamic variant's ``c_t``
  beside the median FOSC of the Standard runs' training adversarial examples
  (and of each Dynamic variant's own, seed by seed).
* :func:`per_epoch`: per epoch, every run's mean PGD steps per training
  example and test PGD-20, one colour per variant, one line style per seed.
* :func:`fosc_by_variant`: the FOSC distribution of the training
  adversarial examples at up to five epochs, one panel per variant (its
  lowest seed), on a common axis.
"""

from typing import Dict, List, Sequence, Tuple

import numpy as np

from dynamic_at import plots
from experiments.outputs import fosc_files


def cost_robustness(results: Sequence, path: str) -> str:
  points: Dict[str, List[Tuple[float, float]]] = {}
  for r in results:
    points.setdefault(r.variant, []).append(
        (r.grad_evals / 1e6, r.white_box['pgd20']))
  return plots.cost_robustness(
      points, path,
      xlabel='attack gradient evaluations in training (millions)',
      title='Each run: test PGD-20 against training cost')


def median_fosc_per_epoch(workdir: str) -> List[Tuple[int, float]]:
  """``(epoch, median FOSC)`` of a run's training adversarial examples."""
  out = []
  for epoch, f in fosc_files(workdir).items():
    values = np.load(f)
    values = values[np.isfinite(values)]
    if values.size:
      out.append((epoch, float(np.median(values))))
  return out


def threshold_vs_fosc(results: Sequence, path: str,
                      reference_method: str = 'standard') -> str:
  """c_t of each Dynamic variant (its first seed's rows) and median FOSC."""
  schedules = {}  # schedule -> the variants that use it
  for r in results:
    if r.rows and r.rows[0].get('c_t') is not None:
      points = tuple((row['epoch'], row['c_t']) for row in r.rows)
      # One more point so that the last epoch's c_t shows as a step too.
      points += ((points[-1][0] + 1, points[-1][1]),)
      names = schedules.setdefault(points, [])
      if r.variant not in names:
        names.append(r.variant)
  thresholds = {'c_t ' + ', '.join(names): list(points)
                for points, names in schedules.items()}
  fosc = {}
  for r in results:
    if r.variant == reference_method:
      fosc[f'median FOSC {r.name}'] = median_fosc_per_epoch(r.workdir)
  return plots.thresholds_and_fosc(
      thresholds, fosc, path,
      title="Dynamic's c_t and Standard's median training FOSC")


_SEED_STYLES = ('-', '--', ':', '-.')


def per_epoch(results: Sequence, path: str) -> str:
  """Each run's per-epoch PGD steps and test PGD-20 (``metrics.jsonl``)."""
  variants = list(dict.fromkeys(r.variant for r in results))
  seeds = sorted({r.seed for r in results})
  rows, styles = {}, {}
  for r in results:
    rows[r.name] = r.rows
    styles[r.name] = {
        'color': f'C{variants.index(r.variant) % 10}',
        'linestyle': _SEED_STYLES[seeds.index(r.seed) % len(_SEED_STYLES)]}
  return plots.curves_by_method(
      rows, path, keys=(('steps_mean', 'mean PGD steps per training example'),
                        ('test_pgd20', 'test PGD-20 accuracy (%)')),
      styles=styles,
      title='Each run, per epoch (colour: variant; line style: seed)')


def fosc_by_variant(results: Sequence, path: str,
                    max_stages: int = plots.MAX_STAGES,
                    clip_quantile: float = 0.9) -> str:
  """FOSC histograms at up to ``max_stages`` epochs, one panel per variant
  (the run with its lowest seed; variants without FOSC arrays left out).
  Values above the pooled ``clip_quantile`` are counted in the last bin."""
  fosc: Dict[str, Dict[int, np.ndarray]] = {}
  for r in sorted(results, key=lambda r: r.seed):
    if r.variant in fosc:
      continue
    files = fosc_files(r.workdir)
    if files:
      fosc[r.variant] = {e: np.load(files[e]) for e in plots.select_stages(
          list(files), max_stages)}
  pooled = [v[np.isfinite(v)] for by_epoch in fosc.values()
            for v in by_epoch.values()]
  pooled = np.concatenate(pooled) if pooled else np.zeros((0,))
  x_max = float(np.quantile(pooled, clip_quantile)) if pooled.size else None
  if x_max is not None and x_max <= 0:
    x_max = None
  return plots.fosc_histograms_by_method(
      fosc, path, max_stages=max_stages, x_max=x_max,
      title='FOSC of the training adversarial examples (0 = converged inner '
      f'maximization; above the {100 * clip_quantile:g}th percentile in the '
      'last bin)')
