"""Runs a grid of flag variants x seeds as ordinary workdirs, then one table.

A grid is a small JSON file (``experiments/grids/*.json``)::

  {"description": "...", "dataset": "mnist", "seeds": [0, 1],
   "flags": ["--num_epochs=5"],
   "variants": [{"name": "standard",
                 "flagfile": "experiments/configs/mnist_standard.flags"},
                {"name": "dynamic_cmax01",
                 "flagfile": "experiments/configs/mnist_dynamic.flags",
                 "flags": ["--c_max=0.1"]}]}

Run ``<variant>_seed<k>`` trains with the command line ``--flagfile=<flagfile>
<grid flags> <variant flags> --seed=<k> --workdir=<runs_dir>/<run>
--data_dir=<data_dir>`` (later flags override earlier ones), i.e. with
``python -m experiments.<dataset>``, which evaluates the final model on the
test set. Every run is an ordinary workdir: a finished one (``results.json``
at its last step) is skipped, an unfinished one resumes from its newest
checkpoint, so the same command continues a grid across sessions and
machines. The grid is checked before anything runs: unknown keys or flags, a
variant without a name, seeds that are not integers and invalid flag values
are refused with the grid file and the variant named.

  python -m experiments.sweep --grid=experiments/grids/mnist_dynamic_study_cpu.json \\
      --data_dir=../shared/data/mnist --jobs=2 --threads_per_job=1 \\
      --results_dir=results/mnist_dynamic_study

Then (and with ``--report_only`` at any time) it writes ``table.md`` and
``table.csv``: per variant, the mean and range over seeds of every white-box
attack, the attack gradient evaluations of training (the sum over training
steps of the mean PGD steps per example times the examples, from the run's
``metrics.jsonl``) and the training time; with ``--results_dir`` also each
run's ``results.json``, ``metrics.jsonl`` and ``flags.json`` (paths made
relative), the study figures and, where the results folder has a
``report.json``, its generated ``tables.md`` (:mod:`experiments.study_tables`).
"""

import copy
import csv
import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

from absl import app
from absl import flags
import numpy as np

from experiments import config as config_lib
from experiments.config import ConfigError
from experiments.outputs import read_metrics

_GRID = flags.DEFINE_string('grid', None, 'Grid file (JSON), e.g. '
                            'experiments/grids/mnist_dynamic_study_cpu.json.')
_RUNS_DIR = flags.DEFINE_string(
    'runs_dir', None, 'Folder of the runs\' workdirs (default: '
    'workdirs/<grid file name>).')
_RESULTS_DIR = flags.DEFINE_string(
    'results_dir', None, 'Also copy each finished run\'s results.json, '
    'metrics.jsonl and flags.json here (one folder per run) and write the '
    'table and figures here (default: the table goes to --runs_dir).')
_EXPORT_WEIGHTS = flags.DEFINE_bool(
    'export_weights', False, 'With --results_dir: also write each finished '
    'run\'s parameters and BatchNorm statistics to '
    '<results_dir>/<run>/model.msgpack (python -m experiments.evaluate '
    '--weights=... evaluates it).')
_JOBS = flags.DEFINE_integer('jobs', 1, 'Runs trained at the same time.')
_THREADS_PER_JOB = flags.DEFINE_integer(
    'threads_per_job', 0, 'Pin each run to this many CPU cores (1 also makes '
    'XLA single-threaded); 0 = no pinning (GPU machines).')
_MAX_SECONDS = flags.DEFINE_integer(
    'max_seconds', 0, 'Stop (SIGINT: runs checkpoint and exit) after this '
    'many seconds; 0 = no limit. Rerun the same command to resume.')
_ONLY = flags.DEFINE_list('only', [], 'Run only these runs or variants.')
_REPORT_ONLY = flags.DEFINE_bool('report_only', False,
                                 'Write the table of the finished runs only.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False,
                             'Check the grid and print the commands.')

_GRID_KEYS = ('description', 'dataset', 'seeds', 'flags', 'variants')
_VARIANT_KEYS = ('name', 'description', 'flagfile', 'flags')
# Set by the runner for every run, never by a grid.
_RUNNER_FLAGS = ('workdir', 'seed', 'data_dir')
_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$')
ATTACK_COLUMNS = ('clean', 'fgsm', 'pgd10', 'pgd20', 'cw_inf', 'worst_case')
_STOP_GRACE_S = 90  # after SIGINT, SIGKILL a run that has not exited


class GridError(ValueError):
  """An invalid grid file; the message names the file and the entry."""


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  argv: tuple  # flagfile, grid flags, variant flags
  description: str = ''


@dataclasses.dataclass(frozen=True)
class Grid:
  path: str
  dataset: str
  seeds: tuple
  variants: tuple
  description: str = ''

  def runs(self) -> List['RunSpec']:
    return [RunSpec(v, s) for v in self.variants for s in self.seeds]


@dataclasses.dataclass(frozen=True)
class RunSpec:
  variant: Variant
  seed: int

  @property
  def name(self) -> str:
    return f'{self.variant.name}_seed{self.seed}'

  def argv(self, runs_dir: str, data_dir: Optional[str]) -> List[str]:
    out = list(self.variant.argv) + [
        f'--seed={self.seed}', f'--workdir={os.path.join(runs_dir, self.name)}']
    if data_dir:
      out.append(f'--data_dir={data_dir}')
    return out


def _flag_list(value: Any, where: str, path: str) -> List[str]:
  if value is None:
    return []
  if not isinstance(value, list) or not all(
      isinstance(v, str) and v.startswith('--') for v in value):
    raise GridError(f'{path}: {where} must be a list of strings such as '
                    f'"--eps=0.3"; got {value!r}.')
  for v in value:
    name = v[2:].split('=', 1)[0]
    if name in _RUNNER_FLAGS or (name.startswith('no') and
                                 name[2:] in _RUNNER_FLAGS):
      raise GridError(f'{path}: {where} sets {v!r}; --workdir, --seed and '
                      '--data_dir are set by the sweep (seeds go in "seeds").')
  return list(value)


def _config_flag_names() -> set:
  names = set()
  for holder in flags.FLAGS.get_flags_for_module(config_lib):
    names.add(holder.name)
  return names


def check_run(grid: Grid, spec: RunSpec) -> config_lib.Config:
  """Parses one run's command line as its main would; raises GridError."""
  fv = copy.deepcopy(flags.FLAGS)
  fv.unparse_flags()
  config_lib.set_dataset_defaults(grid.dataset, fv)
  argv = spec.argv('/nonexistent-sweep-check', None)
  where = f'{grid.path}: variant {spec.variant.name!r}'
  try:
    fv(['sweep'] + argv)
  except flags.Error as e:
    raise GridError(f'{where}: {e}') from None
  allowed = _config_flag_names()
  for name in fv:
    if fv[name].present and name not in allowed and name != 'flagfile':
      raise GridError(f'{where}: --{name} is not a flag of '
                      f'experiments.{grid.dataset}.')
  try:
    config = config_lib.config_from_flags(grid.dataset, fv)
    config_lib.validate_config(config)
  except ConfigError as e:
    raise GridError(f'{where}: {e}') from None
  return config


def load_grid(path: str) -> Grid:
  """Reads and checks a grid file (every run's flags included)."""
  try:
    with open(path) as f:
      raw = json.load(f)
  except OSError as e:
    raise GridError(f'--grid={path}: cannot read it: {e}') from None
  except ValueError as e:
    raise GridError(f'--grid={path}: not valid JSON: {e}') from None
  if not isinstance(raw, dict):
    raise GridError(f'{path}: expected a JSON object with keys {_GRID_KEYS}.')
  unknown = sorted(set(raw) - set(_GRID_KEYS))
  if unknown:
    raise GridError(f'{path}: unknown key(s) {unknown}; a grid has '
                    f'{_GRID_KEYS}.')
  dataset = raw.get('dataset')
  if dataset not in config_lib.DATASETS:
    raise GridError(f'{path}: "dataset" must be one of '
                    f'{config_lib.DATASETS}; got {dataset!r}.')
  seeds = raw.get('seeds')
  if (not isinstance(seeds, list) or not seeds or
      not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
              for s in seeds)):
    raise GridError(f'{path}: "seeds" must be a non-empty list of integers '
                    f'>= 0, e.g. [0, 1]; got {seeds!r}.')
  if len(set(seeds)) != len(seeds):
    raise GridError(f'{path}: "seeds" repeats a seed: {seeds!r}.')
  common = _flag_list(raw.get('flags'), '"flags"', path)
  variants_raw = raw.get('variants')
  if not isinstance(variants_raw, list) or not variants_raw:
    raise GridError(f'{path}: "variants" must be a non-empty list of '
                    'objects with a "name".')
  variants, names = [], set()
  for i, v in enumerate(variants_raw):
    if not isinstance(v, dict):
      raise GridError(f'{path}: variant {i} is not an object.')
    name = v.get('name')
    if not isinstance(name, str) or not _NAME.match(name):
      raise GridError(f'{path}: variant {i} has no valid "name" (letters, '
                      f'digits, "_", "-", "."); got {name!r}.')
    if name in names:
      raise GridError(f'{path}: two variants are named {name!r}.')
    names.add(name)
    unknown = sorted(set(v) - set(_VARIANT_KEYS))
    if unknown:
      raise GridError(f'{path}: variant {name!r} has unknown key(s) '
                      f'{unknown}; a variant has {_VARIANT_KEYS}.')
    argv = []
    flagfile = v.get('flagfile')
    if flagfile is not None:
      if not isinstance(flagfile, str) or not os.path.isfile(flagfile):
        raise GridError(f'{path}: variant {name!r}: flagfile {flagfile!r} '
                        f'is not a file (paths are relative to {os.getcwd()}).')
      argv.append(f'--flagfile={flagfile}')
    argv += common + _flag_list(v.get('flags'), f'variant {name!r} "flags"',
                                path)
    variants.append(Variant(name=name, argv=tuple(argv),
                            description=str(v.get('description', ''))))
  grid = Grid(path=path, dataset=dataset, seeds=tuple(seeds),
              variants=tuple(variants),
              description=str(raw.get('description', '')))
  for variant in grid.variants:
    check_run(grid, RunSpec(variant, grid.seeds[0]))
  return grid


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------


def read_json(path: str) -> Optional[Dict[str, Any]]:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def is_finished(workdir: str) -> bool:
  """A run is finished when its results.json is that of its last epoch."""
  results = read_json(os.path.join(workdir, config_lib.RESULTS_FILE))
  rows = read_metrics(workdir)
  saved = read_json(os.path.join(workdir, config_lib.FLAGS_FILE)) or {}
  if not results or not rows:
    return False
  return (rows[-1].get('epoch') == saved.get('num_epochs', 0) - 1 and
          results.get('step') == rows[-1].get('step'))


def _slot_cores(slot: int, per_job: int) -> Optional[List[int]]:
  if per_job <= 0 or not hasattr(os, 'sched_getaffinity'):
    return None
  cores = sorted(os.sched_getaffinity(0))
  chosen = cores[slot * per_job:(slot + 1) * per_job]
  return chosen or None


def launch(grid: Grid, spec: RunSpec, runs_dir: str, data_dir: Optional[str],
           slot: int, per_job: int) -> subprocess.Popen:
  """Starts one run's training main, logging to ``<runs_dir>/<run>.log``."""
  env = dict(os.environ, PYTHONUNBUFFERED='1',
             TQDM_MININTERVAL=os.environ.get('TQDM_MININTERVAL', '60'))
  if per_job == 1:
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' ' +
                        config_lib.SINGLE_THREAD_XLA).strip()
  cores = _slot_cores(slot, per_job)
  os.makedirs(runs_dir, exist_ok=True)
  log = open(os.path.join(runs_dir, f'{spec.name}.log'), 'a')
  cmd = [sys.executable, '-m', f'experiments.{grid.dataset}'] + spec.argv(
      runs_dir, data_dir)
  log.write(f'\n[sweep {time.strftime("%Y-%m-%d %H:%M:%S")}] '
            f'{" ".join(cmd)}\n')
  log.flush()
  preexec = (lambda: os.sched_setaffinity(0, cores)) if cores else None
  proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                          preexec_fn=preexec)
  log.close()
  return proc


def run_grid(grid: Grid, runs_dir: str, data_dir: Optional[str], *,
             jobs: int, per_job: int, max_seconds: int = 0,
             only: Sequence[str] = ()) -> Dict[str, Optional[int]]:
  """Trains every unfinished run, ``jobs`` at a time. Returns exit codes
  (``None`` for runs skipped as finished or stopped by ``max_seconds``)."""
  start = time.time()
  todo, codes = [], {}
  for spec in grid.runs():
    if only and spec.name not in only and spec.variant.name not in only:
      continue
    if is_finished(os.path.join(runs_dir, spec.name)):
      print(f'[sweep] {spec.name}: finished, skipped', flush=True)
      codes[spec.name] = None
    else:
      todo.append(spec)
  running: Dict[int, tuple] = {}  # slot -> (spec, process)
  stopping = 0.0  # when the runs were asked to stop
  while todo or running:
    for slot, (spec, proc) in list(running.items()):
      if proc.poll() is not None:
        if stopping:
          codes[spec.name] = None
          print(f'[sweep] {spec.name}: stopped (exit {proc.returncode}); '
                'it resumes from its newest checkpoint', flush=True)
        else:
          codes[spec.name] = proc.returncode
          print(f'[sweep] {spec.name}: exit {proc.returncode} after '
                f'{time.time() - start:.0f} s', flush=True)
        del running[slot]
    over = max_seconds and time.time() - start > max_seconds
    if stopping and time.time() - stopping > _STOP_GRACE_S:
      for _, proc in running.values():
        proc.kill()
    if over and not stopping:
      stopping = time.time()
      print(f'[sweep] {max_seconds} s reached: stopping the running runs '
            '(they checkpoint); rerun the same command to resume.',
            flush=True)
      for _, proc in running.values():
        proc.send_signal(signal.SIGINT)
      todo = []
    free = [s for s in range(max(jobs, 1)) if s not in running]
    while todo and free and not stopping:
      spec = todo.pop(0)
      slot = free.pop(0)
      running[slot] = (spec, launch(grid, spec, runs_dir, data_dir, slot,
                                    per_job))
      print(f'[sweep] {spec.name}: started (slot {slot})', flush=True)
    time.sleep(2)
  return codes


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def attack_gradient_evaluations(rows: Sequence[Mapping[str, Any]],
                                batch_size: int) -> float:
  """Sum over epochs of mean PGD steps per example x training examples."""
  total, last_step = 0.0, 0
  for row in rows:
    steps = row['step'] - last_step
    total += float(row['steps_mean']) * steps * batch_size
    last_step = row['step']
  return total


@dataclasses.dataclass
class RunResult:
  name: str
  variant: str
  seed: int
  white_box: Dict[str, float]
  grad_evals: float
  train_time_s: float
  num_eval_examples: int
  rows: List[Dict[str, Any]]
  workdir: str


def collect(grid: Grid, runs_dir: str) -> List[RunResult]:
  out = []
  for spec in grid.runs():
    workdir = os.path.join(runs_dir, spec.name)
    if not is_finished(workdir):
      continue
    results = read_json(os.path.join(workdir, config_lib.RESULTS_FILE))
    saved = read_json(os.path.join(workdir, config_lib.FLAGS_FILE))
    rows = read_metrics(workdir)
    out.append(RunResult(
        name=spec.name, variant=spec.variant.name, seed=spec.seed,
        white_box=dict(results['white_box']),
        grad_evals=attack_gradient_evaluations(rows, saved['batch_size']),
        train_time_s=float(rows[-1]['train_time_s']),
        num_eval_examples=int(results['num_eval_examples']), rows=rows,
        workdir=workdir))
  return out


def summarise(grid: Grid, results: Sequence[RunResult]
              ) -> List[Dict[str, Any]]:
  """One row per variant with finished runs: mean, min and max over seeds."""
  table = []
  for variant in grid.variants:
    runs = [r for r in results if r.variant == variant.name]
    if not runs:
      continue
    row = {'variant': variant.name, 'seeds': [r.seed for r in runs],
           'num_eval_examples': sorted({r.num_eval_examples for r in runs})}
    for key in ATTACK_COLUMNS:
      vals = [r.white_box[key] for r in runs if key in r.white_box]
      if vals:
        row[key] = (float(np.mean(vals)), min(vals), max(vals))
    for key in ('grad_evals', 'train_time_s'):
      vals = [getattr(r, key) for r in runs]
      row[key] = (float(np.mean(vals)), min(vals), max(vals))
    table.append(row)
  return table


def _fmt(cell, digits=2):
  mean, lo, hi = cell
  if lo == hi:
    return f'{mean:.{digits}f}'
  return f'{mean:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})'


def default_reference(table: Sequence[Mapping[str, Any]]) -> Optional[str]:
  """The variant the cost column compares with: the table's first one that
  attacks (an Unsecured run has no attack gradient evaluations)."""
  return next((row['variant'] for row in table if row['grad_evals'][0] > 0),
              None)


def table_markdown(grid: Grid, table: Sequence[Mapping[str, Any]],
                   reference: Optional[str] = None) -> str:
  """The markdown table: mean (min-max over seeds) per variant."""
  ref = next((r for r in table if r['variant'] == reference), None)
  head = ('| variant | seeds | ' +
          ' | '.join(c.replace('_', '-') for c in ATTACK_COLUMNS) +
          ' | attack grads (M) | vs ' + (reference or '-') +
          ' | train time (s) |')
  lines = [head, '|' + '---|' * 2 + '---:|' * (len(ATTACK_COLUMNS) + 3)]
  for row in table:
    cells = [row['variant'], ','.join(map(str, row['seeds']))]
    cells += [_fmt(row[c]) if c in row else '' for c in ATTACK_COLUMNS]
    g = row['grad_evals']
    cells.append(_fmt(tuple(v / 1e6 for v in g)))
    cells.append(f'{g[0] / ref["grad_evals"][0]:.2f}'
                 if ref and ref['grad_evals'][0] > 0 else '')
    cells.append(_fmt(row['train_time_s'], 0))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def table_csv(table: Sequence[Mapping[str, Any]]) -> str:
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator='\n')
  cols = list(ATTACK_COLUMNS) + ['grad_evals', 'train_time_s']
  w.writerow(['variant', 'seeds', 'num_eval_examples'] +
             [f'{c}_{s}' for c in cols for s in ('mean', 'min', 'max')])
  for row in table:
    out = [row['variant'], ' '.join(map(str, row['seeds'])),
           ' '.join(map(str, row['num_eval_examples']))]
    for c in cols:
      out += list(row[c]) if c in row else ['', '', '']
    w.writerow(out)
  return buf.getvalue()


def epochs_markdown(grid: Grid, results: Sequence[RunResult]) -> str:
  """Per epoch and variant (means over seeds): PGD steps per example, c_t,
  the median FOSC of the epoch's training adversarial examples and the
  runs' per-epoch test PGD-20 (``--eval_every``), as
  ``steps / c_t / median FOSC / PGD-20``."""
  from experiments import sweep_figures  # pylint: disable=g-import-not-at-top
  medians = {r.name: dict(sweep_figures.median_fosc_per_epoch(r.workdir))
             for r in results}
  variants = [v.name for v in grid.variants
              if any(r.variant == v.name for r in results)]
  epochs = sorted({row['epoch'] for r in results for row in r.rows})
  lines = ['| epoch | ' + ' | '.join(variants) + ' |',
           '|---:|' + '---|' * len(variants)]
  for epoch in epochs:
    cells = []
    for name in variants:
      rows = [row for r in results if r.variant == name for row in r.rows
              if row['epoch'] == epoch]
      steps = np.mean([row['steps_mean'] for row in rows])
      c_t = rows[0].get('c_t') if rows else None
      pgd = [row['test_pgd20'] for row in rows if 'test_pgd20' in row]
      fosc = [medians[r.name][epoch] for r in results
              if r.variant == name and epoch in medians[r.name]]
      cells.append(f'{steps:.2f} / ' + ('-' if c_t is None else f'{c_t:.3g}')
                   + ' / ' + (f'{np.mean(fosc):.3f}' if fosc else '-')
                   + ' / ' + (f'{np.mean(pgd):.1f}' if pgd else '-'))
    lines.append(f'| {epoch} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def _relative_paths(text: str) -> str:
  """Absolute paths under the working directory's parent made relative."""
  here = os.path.abspath(os.getcwd())
  parent = os.path.dirname(here)
  return text.replace(here + '/', '').replace(parent + '/', '../')


def _portable_paths(text: str, recorded_workdir: Optional[str],
                    local_workdir: str) -> str:
  """``text`` with the machine's own paths taken out.

  A run trained elsewhere (e.g. on a GPU machine in ``/tmp/runs/<grid>``)
  recorded that machine's absolute workdir. Its runs folder (the recorded
  workdir's parent, which also holds e.g. a black-box source run) is
  replaced by the local one, ``local_workdir``'s parent, and then every path
  under the working directory or its parent is made relative to it
  (:func:`_relative_paths`).
  """
  if recorded_workdir and os.path.isabs(recorded_workdir):
    recorded = os.path.normpath(recorded_workdir)
    local = os.path.abspath(local_workdir)
    if recorded != local:
      text = text.replace(os.path.dirname(recorded) + '/',
                          os.path.dirname(local) + '/')
  return _relative_paths(text)


def copy_run_files(result: RunResult, results_dir: str) -> None:
  from dynamic_at import files  # pylint: disable=g-import-not-at-top
  dest = os.path.join(results_dir, result.name)
  saved = read_json(os.path.join(result.workdir, config_lib.FLAGS_FILE)) or {}
  for name in (config_lib.RESULTS_FILE, config_lib.METRICS_FILE,
               config_lib.FLAGS_FILE):
    with open(os.path.join(result.workdir, name)) as f:
      files.atomic_write_text(
          os.path.join(dest, name),
          _portable_paths(f.read(), saved.get('workdir'), result.workdir))


def report(grid: Grid, runs_dir: str, results_dir: Optional[str],
           reference: Optional[str] = None, export: bool = False) -> str:
  """Writes table.md / table.csv (and copies, figures); returns the table."""
  from dynamic_at import files  # pylint: disable=g-import-not-at-top
  from experiments import sweep_figures  # pylint: disable=g-import-not-at-top
  results = collect(grid, runs_dir)
  table = summarise(grid, results)
  if reference is None:
    reference = default_reference(table)
  md = table_markdown(grid, table, reference)
  out = results_dir or runs_dir
  files.atomic_write_text(os.path.join(out, 'table.md'), md)
  files.atomic_write_text(os.path.join(out, 'table.csv'), table_csv(table))
  files.atomic_write_text(os.path.join(out, 'epochs.md'),
                          epochs_markdown(grid, results))
  if results_dir:
    for r in results:
      copy_run_files(r, results_dir)
      if export:
        from experiments import reporting  # pylint: disable=g-import-not-at-top
        reporting.export_weights(r.workdir, os.path.join(
            results_dir, r.name, 'model.msgpack'))
    if results:
      sweep_figures.cost_robustness(results, os.path.join(
          results_dir, 'pgd20_vs_gradient_evaluations.png'))
      sweep_figures.threshold_vs_fosc(results, os.path.join(
          results_dir, 'c_t_vs_standard_fosc.png'))
      sweep_figures.per_epoch(results, os.path.join(
          results_dir, 'steps_and_pgd20_per_epoch.png'))
      sweep_figures.fosc_by_variant(results, os.path.join(
          results_dir, 'fosc_by_variant.png'))
    # The tables a results README cites, from the per-run copies just made.
    from experiments import study_tables  # pylint: disable=g-import-not-at-top
    if results and os.path.isfile(os.path.join(results_dir,
                                               study_tables.REPORT_FILE)):
      print(f'[sweep] wrote {study_tables.write(results_dir)}', flush=True)
  missing = [s.name for s in grid.runs()
             if s.name not in {r.name for r in results}]
  if missing:
    print(f'[sweep] not finished yet (not in the table): '
          f'{", ".join(missing)}', flush=True)
  return md


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _GRID.value:
    raise app.UsageError('--grid is required.')
  try:
    grid = load_grid(_GRID.value)
  except GridError as e:
    sys.exit(f'Error: {e}')
  name = os.path.splitext(os.path.basename(grid.path))[0]
  runs_dir = os.path.abspath(_RUNS_DIR.value or os.path.join('workdirs',
                                                             name))
  # --data_dir is the training mains' flag (experiments.config), passed on.
  data_dir = (os.path.abspath(flags.FLAGS.data_dir) if flags.FLAGS.data_dir
              else None)
  print(f'[sweep] grid {grid.path}: {len(grid.variants)} variants x '
        f'{len(grid.seeds)} seeds into {runs_dir}', flush=True)
  if _DRY_RUN.value:
    for spec in grid.runs():
      print(' '.join([sys.executable, '-m', f'experiments.{grid.dataset}'] +
                     spec.argv(runs_dir, data_dir)))
    return
  if not _REPORT_ONLY.value:
    codes = run_grid(grid, runs_dir, data_dir, jobs=_JOBS.value,
                     per_job=_THREADS_PER_JOB.value,
                     max_seconds=_MAX_SECONDS.value, only=_ONLY.value)
    failed = {k: v for k, v in codes.items() if v}
    if failed:
      print(f'[sweep] runs that failed (see <runs_dir>/<run>.log): {failed}',
            flush=True)
  print(report(grid, runs_dir, _RESULTS_DIR.value,
               export=_EXPORT_WEIGHTS.value), flush=True)


if __name__ == '__main__':
  app.run(main)
