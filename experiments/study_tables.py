"""The generated tables of a results folder, computed from its per-run files.

A results folder (``results/<study>/``) holds one folder per run with the
files the run wrote (``flags.json``, ``metrics.jsonl``, ``results.json`` and
evaluations such as ``results_strong_1000.json``) and a ``report.json`` that
says how to tabulate them::

  {"grid": "experiments/grids/mnist_dynamic_study.json",
   "reference": "standard",
   "pairs": [["dynamic_cmax01", "standard_k6"]],
   "evaluations": {"results_strong_1000.json": "first 1,000 test images"},
   "epoch_windows": [[0, 19], [20, 49]]}

``grid`` names the runs ``<variant>_seed<k>`` of a sweep grid (in the grid's
order); a folder without a grid lists them instead, ``"runs": [{"variant":
"standard", "seed": 0, "folder": "standard"}, ...]``. ``reference`` is the
variant every other one is compared with (default: the first that attacks),
``pairs`` more comparisons (e.g. a variant and its equal-cost control),
``evaluations`` further result files of the runs and what they cover,
``epoch_windows`` the epochs over which the runs' per-epoch test PGD-20 is
averaged, ``title`` the heading. ``paper`` (optional) holds a paper's
published numbers, ``{"source": ..., "seed": 0, "white_box": {variant:
{attack: accuracy}}, "black_box": ...}``: they are printed as the paper's,
beside the run of that seed, with ours minus theirs; never as ours.

:func:`tables_markdown` turns that into ``tables.md``: every number a results
README cites, with the spread and the differences computed here, so that
prose only interprets it. ``python -m experiments.study_tables
--study_dir=results/<study>`` rewrites it (``--check_tables``: only
compares);
``tests/test_results_tables.py`` recomputes every committed one. Nothing here
imports JAX or trains.

Cost is counted per training example and step, as the train step computes
it (:func:`dynamic_at.train.make_train_step`, :func:`dynamic_at.pgd`): the
attack's sign steps (``steps_mean``), its gradient evaluations (one at the
start and one after each step of the example: ``steps + 1``; none for
``unsecured``) and one forward and backward pass of the training loss.
"""

import json
import math
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import app
from absl import flags

REPORT_FILE = 'report.json'
TABLES_FILE = 'tables.md'
COLUMNS = ('clean', 'fgsm', 'pgd10', 'pgd20', 'cw_inf', 'apgd_ce', 'apgd_t',
           'worst_case')
NAMES = {'clean': 'clean', 'fgsm': 'FGSM', 'pgd10': 'PGD-10',
         'pgd20': 'PGD-20', 'cw_inf': 'CW-inf', 'apgd_ce': 'APGD-CE',
         'apgd_t': 'APGD-T', 'worst_case': 'worst case'}
_SPEC_KEYS = ('grid', 'runs', 'reference', 'pairs', 'evaluations',
              'epoch_windows', 'title', 'paper')


class ReportError(ValueError):
  """A results folder that cannot be tabulated; the message names the file."""


def _read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except OSError as e:
    raise ReportError(f'{path}: cannot read it: {e}') from None
  except ValueError as e:
    raise ReportError(f'{path}: not valid JSON: {e}') from None


def _read_rows(path: str) -> List[Dict[str, Any]]:
  try:
    with open(path) as f:
      return [json.loads(line) for line in f if line.strip()]
  except OSError as e:
    raise ReportError(f'{path}: cannot read it: {e}') from None
  except ValueError as e:
    raise ReportError(f'{path}: a line is not valid JSON: {e}') from None


def read_spec(results_dir: str) -> Dict[str, Any]:
  path = os.path.join(results_dir, REPORT_FILE)
  spec = _read_json(path)
  if not isinstance(spec, dict):
    raise ReportError(f'{path}: expected a JSON object.')
  unknown = sorted(set(spec) - set(_SPEC_KEYS))
  if unknown:
    raise ReportError(f'{path}: unknown key(s) {unknown}; a report has '
                      f'{_SPEC_KEYS}.')
  if ('grid' in spec) == ('runs' in spec):
    raise ReportError(f'{path}: give either "grid" or "runs".')
  return spec


def _grid_runs(path: str) -> List[Tuple[str, int, str]]:
  """``(variant, seed, folder)`` of a grid file, in its order (read as JSON
  only: the grid's flags are checked by :mod:`experiments.sweep`)."""
  grid = _read_json(path)
  try:
    return [(v['name'], int(s), f'{v["name"]}_seed{s}')
            for v in grid['variants'] for s in grid['seeds']]
  except (KeyError, TypeError, ValueError) as e:
    raise ReportError(f'{path}: not a sweep grid ({e}).') from None


def load_runs(results_dir: str, spec: Mapping[str, Any]
              ) -> List[Dict[str, Any]]:
  """The runs of ``spec`` whose folder holds a finished run (its
  ``results.json`` is of the step of its last ``metrics.jsonl`` row)."""
  if 'grid' in spec:
    listed = _grid_runs(spec['grid'])
  else:
    listed = [(r['variant'], int(r['seed']), r['folder'])
              for r in spec['runs']]
  runs = []
  for variant, seed, folder in listed:
    d = os.path.join(results_dir, folder)
    if not os.path.isfile(os.path.join(d, 'results.json')):
      if 'runs' in spec:
        raise ReportError(f'{os.path.join(results_dir, REPORT_FILE)}: run '
                          f'folder {d} has no results.json.')
      continue
    results = _read_json(os.path.join(d, 'results.json'))
    rows = _read_rows(os.path.join(d, 'metrics.jsonl'))
    saved = _read_json(os.path.join(d, 'flags.json'))
    if not rows or results.get('step') != rows[-1].get('step'):
      raise ReportError(f'{d}: results.json (step {results.get("step")}) '
                        'is not of the last metrics.jsonl row.')
    evaluations = {}
    for name in spec.get('evaluations', {}):
      path = os.path.join(d, name)
      if os.path.isfile(path):
        evaluations[name] = _read_json(path)
    runs.append({'variant': variant, 'seed': seed, 'folder': folder,
                 'results': results, 'rows': rows, 'flags': saved,
                 'evaluations': evaluations, 'cost': cost(rows, saved)})
  return runs


def cost(rows: Sequence[Mapping[str, Any]],
         saved: Mapping[str, Any]) -> Dict[str, float]:
  """What a run's training computed, summed over its steps.

  Returns:
    ``examples`` (training examples seen), ``sign_steps`` (the attack's
    steps, the mean per example of each epoch times its examples),
    ``attack_grads`` (``sign_steps`` plus one gradient evaluation per
    example at the start; 0 for ``unsecured``), ``passes`` (attack gradient
    evaluations plus one forward and backward pass of the training loss per
    example), ``full_trip_epochs`` (epochs in which some batch ran all
    ``num_steps`` loop trips, ``iters_max``) and ``epochs``.
  """
  batch = int(saved['batch_size'])
  adversarial = saved.get('method') != 'unsecured'
  out = dict(examples=0.0, sign_steps=0.0, attack_grads=0.0, passes=0.0,
             full_trip_epochs=0, epochs=len(rows))
  last = 0
  for row in rows:
    n = (row['step'] - last) * batch
    last = row['step']
    steps = float(row['steps_mean']) * n
    out['examples'] += n
    out['sign_steps'] += steps
    grads = steps + n if adversarial else 0.0
    out['attack_grads'] += grads
    out['passes'] += grads + n
    k = row.get('num_steps')
    if adversarial and k and row.get('iters_max') == k:
      out['full_trip_epochs'] += 1
  return out


# --------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------


def _f(x: float, digits: int = 2, sign: bool = False) -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return ''
  s = f'{x:+.{digits}f}' if sign else f'{x:.{digits}f}'
  if s.lstrip('+-') == f'{0:.{digits}f}':
    s = f'{0:.{digits}f}' if not sign else '+' + f'{0:.{digits}f}'
  return s


def _spread(values: Sequence[float], digits: int = 2,
            sign: bool = False) -> str:
  """``mean (min to max)`` over seeds; the mean alone for one value."""
  if not values:
    return ''
  mean = sum(values) / len(values)
  if len(values) == 1 or min(values) == max(values):
    return _f(mean, digits, sign)
  return (f'{_f(mean, digits, sign)} ({_f(min(values), digits, sign)} to '
          f'{_f(max(values), digits, sign)})')


def _table(head: Sequence[str], rows: Sequence[Sequence[str]],
           left: int = 1, right_text: int = 0) -> List[str]:
  """Markdown: the first ``left`` and last ``right_text`` columns are text
  (left-aligned), the others numbers."""
  lines = ['| ' + ' | '.join(head) + ' |',
           '|' + '---|' * left + '---:|' * (len(head) - left - right_text) +
           '---|' * right_text]
  lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
  return lines


def binomial_se(accuracy: float, n: int) -> float:
  """Standard error (points) of an accuracy (%) measured on ``n`` images."""
  p = accuracy / 100
  return 100 * math.sqrt(max(p * (1 - p), 0.0) / n)


# --------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------


def _variants(runs) -> List[str]:
  return list(dict.fromkeys(r['variant'] for r in runs))


def _by(runs, variant) -> List[Dict[str, Any]]:
  return sorted((r for r in runs if r['variant'] == variant),
                key=lambda r: r['seed'])


def _acc(run, key, evaluation=None, box='white_box'):
  res = run['evaluations'].get(evaluation) if evaluation else run['results']
  if not res or not res.get(box):
    return None
  value = res[box].get(key)
  return None if value is None else float(value)


def _columns(runs, evaluation=None, box='white_box') -> List[str]:
  return [c for c in COLUMNS
          if any(_acc(r, c, evaluation, box) is not None for r in runs)]


def reference_of(runs, spec) -> Optional[str]:
  if spec.get('reference'):
    return spec['reference']
  return next((r['variant'] for r in runs if r['cost']['sign_steps'] > 0),
              None)


def accuracy_table(runs, evaluation=None, box='white_box') -> List[str]:
  """Per variant: mean (min to max over seeds) of each attack."""
  cols = _columns(runs, evaluation, box)
  rows = []
  for v in _variants(runs):
    rs = [r for r in _by(runs, v)
          if any(_acc(r, c, evaluation, box) is not None for c in cols)]
    if not rs:
      continue
    cells = [v, ','.join(str(r['seed']) for r in rs)]
    for c in cols:
      vals = [_acc(r, c, evaluation, box) for r in rs]
      cells.append(_spread([x for x in vals if x is not None]))
    rows.append(cells)
  return _table(['variant', 'seeds'] + [NAMES[c] for c in cols], rows, 2)


def seed_spread_table(runs, evaluation=None) -> List[str]:
  """Per variant with two or more seeds: largest minus smallest seed's
  accuracy for each attack (points)."""
  cols = _columns(runs, evaluation)
  rows = []
  for v in _variants(runs):
    rs = _by(runs, v)
    cells = [v, ','.join(str(r['seed']) for r in rs)]
    for c in cols:
      vals = [x for x in (_acc(r, c, evaluation) for r in rs)
              if x is not None]
      cells.append(_f(max(vals) - min(vals)) if len(vals) > 1 else '')
    if len(rs) > 1:
      rows.append(cells)
  return _table(['variant', 'seeds'] + [NAMES[c] for c in cols], rows, 2)


def per_run_table(runs, evaluation, digits: int = 1) -> List[str]:
  """One row per run: each attack, and PGD-20 minus the worst case."""
  cols = _columns(runs, evaluation)
  rows = []
  for v in _variants(runs):
    for r in _by(runs, v):
      vals = [_acc(r, c, evaluation) for c in cols]
      if all(x is None for x in vals):
        continue
      pgd, worst = _acc(r, 'pgd20', evaluation), _acc(r, 'worst_case',
                                                      evaluation)
      res = r['evaluations'][evaluation] if evaluation else r['results']
      secs = res.get('eval_wall_time_s')
      rows.append([v, str(r['seed'])] + [_f(x, digits) for x in vals] +
                  [_f(pgd - worst, digits) if None not in (pgd, worst)
                   else '', _f(float(secs), 0) if secs is not None else ''])
  return _table(['variant', 'seed'] + [NAMES[c] for c in cols] +
                ['PGD-20 minus worst case', 'evaluation time (s)'], rows, 2)


def difference_table(runs, pairs: Sequence[Tuple[str, str]],
                     evaluation=None, box='white_box') -> List[str]:
  """Per pair ``(a, b)``: ``a - b`` for each attack, per seed both have
  (``seed 0 / seed 1``), their mean, and the mean difference in binomial
  standard errors of a difference of two independent accuracies on the
  evaluation's images (test-set sampling only; seeds add their own)."""
  cols = _columns(runs, evaluation, box)
  rows = []
  for a, b in pairs:
    ra = {r['seed']: r for r in _by(runs, a)}
    rb = {r['seed']: r for r in _by(runs, b)}
    seeds = sorted(set(ra) & set(rb))
    if not seeds:
      continue
    per_seed, mean_cells, z_cells = [], [], []
    for c in cols:
      d, z = [], []
      for s in seeds:
        x, y = (_acc(ra[s], c, evaluation, box),
                _acc(rb[s], c, evaluation, box))
        if x is None or y is None:
          continue
        d.append(x - y)
        res = ra[s]['evaluations'].get(evaluation) if evaluation else ra[s][
            'results']
        n = int(res['num_eval_examples'])
        z.append((x, y, n))
      per_seed.append(' / '.join(_f(x, 2, True) for x in d))
      mean_cells.append(_f(sum(d) / len(d), 2, True) if d else '')
      if z:
        mx = sum(t[0] for t in z) / len(z)
        my = sum(t[1] for t in z) / len(z)
        n = z[0][2]
        se = math.sqrt(binomial_se(mx, n) ** 2 + binomial_se(my, n) ** 2)
        z_cells.append(_f((mx - my) / se, 1, True) if se > 0 else '')
      else:
        z_cells.append('')
    label = f'{a} - {b}'
    seed_label = ','.join(map(str, seeds))
    rows.append([label, seed_label, 'per seed'] + per_seed)
    rows.append([label, seed_label, 'mean'] + mean_cells)
    rows.append([label, seed_label, 'mean / SE'] + z_cells)
  return _table(['difference', 'seeds', ''] + [NAMES[c] for c in cols], rows,
                3)


def cost_table(runs, reference: Optional[str]) -> List[str]:
  """Per variant: counted cost (millions, mean over seeds), fractions of the
  reference's, the epochs with a batch that ran all K loop trips, the
  recorded training time and the final evaluation's devices."""
  ref = _by(runs, reference) if reference else []
  ref_cost = ({k: sum(r['cost'][k] for r in ref) / len(ref)
               for k in ('sign_steps', 'passes')} if ref else None)
  rows = []
  for v in _variants(runs):
    rs = _by(runs, v)
    mean = {k: sum(r['cost'][k] for r in rs) / len(rs)
            for k in ('examples', 'sign_steps', 'attack_grads', 'passes')}
    frac = {k: (_f(mean[k] / ref_cost[k]) if ref_cost and ref_cost[k] > 0
                else '') for k in ('sign_steps', 'passes')}
    trips = ', '.join(sorted({f'{r["cost"]["full_trip_epochs"]}/'
                              f'{r["cost"]["epochs"]}' for r in rs}))
    devices = '; '.join(sorted({str(r['results'].get('devices', '?'))
                                for r in rs}))
    e = [float(row['epoch_time_s']) for r in rs for row in r['rows']
         if 'epoch_time_s' in row]
    rows.append([
        v, ','.join(str(r['seed']) for r in rs),
        _f(mean['sign_steps'] / 1e6), frac['sign_steps'],
        _f(mean['attack_grads'] / 1e6), _f(mean['passes'] / 1e6),
        frac['passes'], trips,
        _spread([float(r['rows'][-1]['train_time_s']) for r in rs], 0),
        f'{_f(min(e), 0)} to {_f(max(e), 0)}' if e else '', devices])
  return _table(['variant', 'seeds', 'sign steps (M)',
                 f'vs {reference or "-"}', 'attack gradient evaluations (M)',
                 'all passes (M)', f'vs {reference or "-"}',
                 'epochs with all K trips', 'train time (s)',
                 'one epoch (s), fastest to slowest', 'final evaluation on'],
                rows, 2, 1)


def epoch_window_table(runs, windows) -> List[str]:
  """Per run: the mean of its per-epoch test PGD-20 over each window
  (inclusive epochs), then min and max of the window's epochs."""
  rows = []
  for v in _variants(runs):
    for r in _by(runs, v):
      cells = [v, str(r['seed'])]
      for lo, hi in windows:
        vals = [float(row['test_pgd20']) for row in r['rows']
                if lo <= row['epoch'] <= hi and 'test_pgd20' in row]
        cells.append(f'{_f(sum(vals) / len(vals))} ({_f(min(vals), 1)} to '
                     f'{_f(max(vals), 1)}, {len(vals)} epochs)' if vals
                     else '')
      rows.append(cells)
  return _table(['variant', 'seed'] + [f'epochs {lo}-{hi}'
                                       for lo, hi in windows], rows, 2)


def steps_range_table(runs, windows) -> List[str]:
  """Per variant: the range over each window's epochs of the mean PGD sign
  steps per training example (mean over seeds per epoch)."""
  rows = []
  for v in _variants(runs):
    rs = _by(runs, v)
    cells = [v]
    for lo, hi in windows:
      per_epoch = []
      for e in range(lo, hi + 1):
        vals = [float(row['steps_mean']) for r in rs for row in r['rows']
                if row['epoch'] == e]
        if vals:
          per_epoch.append(sum(vals) / len(vals))
      cells.append(f'{_f(min(per_epoch))} to {_f(max(per_epoch))}'
                   if per_epoch else '')
    rows.append(cells)
  return _table(['variant'] + [f'epochs {lo}-{hi}' for lo, hi in windows],
                rows, 1)


def epoch_difference_table(runs, reference: str, windows) -> List[str]:
  """Per attacking variant: its per-epoch test PGD-20 minus the
  reference's (each the mean over the variant's seeds), lowest to highest
  over each window's epochs."""

  def per_epoch(variant):
    out = {}
    for r in _by(runs, variant):
      for row in r['rows']:
        if 'test_pgd20' in row:
          out.setdefault(row['epoch'], []).append(float(row['test_pgd20']))
    return {e: sum(v) / len(v) for e, v in out.items()}

  ref = per_epoch(reference)
  rows = []
  for v in _variants(runs):
    if v == reference or not any(r['cost']['sign_steps'] > 0
                                 for r in _by(runs, v)):
      continue
    mine = per_epoch(v)
    cells = [v]
    for lo, hi in windows:
      d = [mine[e] - ref[e] for e in range(lo, hi + 1)
           if e in mine and e in ref]
      cells.append(f'{_f(min(d), 1, True)} to {_f(max(d), 1, True)}'
                   if d else '')
    rows.append(cells)
  return _table(['variant'] + [f'epochs {lo}-{hi}' for lo, hi in windows],
                rows, 1)


def paper_table(runs, paper: Mapping[str, Any], box: str) -> List[str]:
  """Our run of ``paper['seed']`` beside the paper's numbers (given in
  ``report.json``, never computed here) and ours minus the paper's."""
  given = paper.get(box) or {}
  cols = [c for c in COLUMNS if any(c in v for v in given.values())]
  seed = int(paper.get('seed', 0))
  rows = []
  for v, theirs in given.items():
    mine = next((r for r in _by(runs, v) if r['seed'] == seed), None)
    ours = [(_acc(mine, c, box=box) if mine else None) for c in cols]
    paper_vals = [theirs.get(c) for c in cols]
    rows.append([v, f'ours, seed {seed}'] + [_f(x) if x is not None else ''
                                              for x in ours])
    rows.append([v, 'paper'] + [f'{x:g}' if x is not None else ''
                                for x in paper_vals])
    rows.append([v, 'ours - paper'] + [
        _f(x - y, 2, True) if None not in (x, y) else ''
        for x, y in zip(ours, paper_vals)])
  return _table(['variant', ''] + [NAMES[c] for c in cols], rows, 2)


def tables_markdown(results_dir: str,
                    spec: Optional[Mapping[str, Any]] = None) -> str:
  """The text of ``tables.md`` for ``results_dir``."""
  spec = read_spec(results_dir) if spec is None else spec
  runs = load_runs(results_dir, spec)
  if not runs:
    raise ReportError(f'{results_dir}: no finished run to tabulate.')
  ref = reference_of(runs, spec)
  variants = _variants(runs)
  pairs = [(v, ref) for v in variants if ref and v != ref and
           any(r['cost']['sign_steps'] > 0 for r in _by(runs, v))]
  pairs += [tuple(p) for p in spec.get('pairs', [])]
  pairs = list(dict.fromkeys(pairs))  # a pair named twice is shown once
  n = sorted({int(r['results']['num_eval_examples']) for r in runs})
  source = (f'the runs of `{spec["grid"]}`' if 'grid' in spec
            else 'the runs listed in `report.json`')
  out = [f'# {spec.get("title", "Generated tables")}', '',
         'Written by `python -m experiments.study_tables --study_dir='
         f'{os.path.normpath(results_dir)}` from {source} in this folder '
         '(`<run>/results.json`, `metrics.jsonl`, `flags.json`); '
         '`tests/test_results_tables.py` recomputes it. Do not edit by hand.',
         '', 'Spread: "mean (min to max)" is the mean over the seeds listed '
         'and the smallest and largest seed; no standard deviations (two '
         'seeds do not give one).', '',
         f'## Final model, white-box, {"/".join(map(str, n))} test images '
         '(%)', '']
  out += accuracy_table(runs)
  if any(r['results'].get('black_box') for r in runs):
    out += ['', '## Final model, black-box from the source model (%)', '']
    out += accuracy_table(runs, box='black_box')
  out += ['', 'Per run:', '']
  out += per_run_table(runs, None, 2)
  if any(len(_by(runs, v)) > 1 for v in variants):
    out += ['', 'Seed spread: largest minus smallest seed (points).', '']
    out += seed_spread_table(runs)
  out += ['', '## Differences (points)', '',
          '`a - b` per seed both ran, the mean of those, and that mean in '
          'binomial standard errors of the difference of two independent '
          'accuracies on these test images (sampling of the test set only; '
          'seed-to-seed variation comes on top).', '']
  out += difference_table(runs, pairs)
  if any(r['results'].get('black_box') for r in runs):
    out += ['', 'Black-box differences (points, as above):', '']
    out += difference_table(runs, pairs, box='black_box')
  paper = spec.get('paper')
  if paper:
    for box, what in (('white_box', 'white-box'), ('black_box', 'black-box')):
      if paper.get(box):
        out += ['', f'## Against the paper, {what} (%)', '',
                f'The paper\'s numbers are {paper.get("source", "the paper")}'
                ', as `report.json` gives them (not ours); ours minus the '
                'paper\'s, in points.', '']
        out += paper_table(runs, paper, box)
  out += ['', '## Cost of training', '',
          'Counted per training example as the step computes it: the '
          "attack's sign steps; its gradient evaluations (one at the start "
          'and one after each step: sign steps + 1 per example; none for '
          'unsecured); all passes adds one forward and backward pass of the '
          'training loss per example. Fractions are of the '
          f'`{ref}` mean. "Epochs with all K trips": epochs in which some '
          "batch's loop ran all num_steps trips (`iters_max`): without "
          'compaction such a batch costs K + 1 gradient evaluations for '
          'every example. Train time: the run\'s recorded training time '
          '(`metrics.jsonl`, including any pauses), and its fastest and '
          'slowest epoch, on the machine its README names; "final '
          'evaluation on" is `results.json`\'s devices.', '']
  out += cost_table(runs, ref)
  for name, what in spec.get('evaluations', {}).items():
    have = [r for r in runs if name in r['evaluations']]
    if not have:
      continue
    out += ['', f'## `{name}`: {what} (%)', '']
    out += per_run_table(have, name)
    if any(r['evaluations'][name].get('black_box') for r in have):
      out += ['', f'Black-box (`{name}`):', '']
      out += accuracy_table(have, name, 'black_box')
    out += ['', f'Differences (`{name}`; points, as above):', '']
    out += difference_table(have, pairs, name)
    if any(r['evaluations'][name].get('black_box') for r in have):
      out += ['', f'Black-box differences (`{name}`; points):', '']
      out += difference_table(have, pairs, name, 'black_box')
  windows = [tuple(w) for w in spec.get('epoch_windows', [])]
  if windows:
    out += ['', '## Per-epoch check (test PGD-20 after each epoch, the '
            "runs' `--eval_every` evaluation, %)", '',
            'Per run: mean over the epochs of each window (inclusive), with '
            "the window's lowest and highest epoch.", '']
    out += epoch_window_table(runs, windows)
    if ref:
      out += ['', f'Per-epoch test PGD-20 minus `{ref}`\'s (each the mean '
              "over the variant's seeds): lowest to highest over the "
              "window's epochs (points).", '']
      out += epoch_difference_table(runs, ref, windows)
    out += ['', 'Mean PGD sign steps per training example: lowest to '
            'highest epoch of each window (each epoch the mean over seeds).',
            '']
    out += steps_range_table(runs, windows)
  return '\n'.join(out) + '\n'


def write(results_dir: str) -> str:
  from dynamic_at import files  # pylint: disable=g-import-not-at-top
  return files.atomic_write_text(os.path.join(results_dir, TABLES_FILE),
                                 tables_markdown(results_dir))


_STUDY_DIR = flags.DEFINE_string(
    'study_dir', None, 'Results folder with a report.json, e.g. '
    'results/mnist_dynamic_study_50ep.')
_CHECK = flags.DEFINE_bool('check_tables', False, 'Compare with the committed '
                           'tables.md instead of writing it; exit 1 if they '
                           'differ.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _STUDY_DIR.value:
    raise app.UsageError('--study_dir is required.')
  try:
    text = tables_markdown(_STUDY_DIR.value)
  except ReportError as e:
    sys.exit(f'Error: --study_dir={_STUDY_DIR.value}: {e}')
  path = os.path.join(_STUDY_DIR.value, TABLES_FILE)
  if _CHECK.value:
    try:
      with open(path) as f:
        same = f.read() == text
    except OSError:
      same = False
    print(f'{path}: {"up to date" if same else "differs"}')
    sys.exit(0 if same else 1)
  write(_STUDY_DIR.value)
  print(f'Wrote {path}')


if __name__ == '__main__':
  app.run(main)
