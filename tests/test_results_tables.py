"""The committed generated tables are what the committed per-run files give.

Every ``results/*/report.json`` folder's ``tables.md``
(:mod:`experiments.study_tables`), and for the sweep folders also
``table.md``, ``table.csv`` and ``epochs.md`` (:mod:`experiments.sweep`),
are recomputed here from the committed ``<run>/results.json``,
``metrics.jsonl`` and ``flags.json`` and must match byte for byte. No
training, no JAX computation.
"""

import json
import re
import shutil

import pytest

from experiments import study_tables
from experiments import sweep
from tests import run_utils

REPO = run_utils.REPO
RESULTS = REPO / 'results'
REPORT_DIRS = sorted(p.parent for p in RESULTS.glob(f'*/{study_tables.REPORT_FILE}'))
GRID_DIRS = [d for d in REPORT_DIRS
             if 'grid' in json.loads((d / study_tables.REPORT_FILE).read_text())]


@pytest.fixture(autouse=True)
def _from_repository_root(monkeypatch):
  monkeypatch.chdir(REPO)


def test_every_results_folder_has_a_report():
  assert [d.name for d in REPORT_DIRS] == [
      'cifar10_subset', 'mnist', 'mnist_dynamic_study',
      'mnist_dynamic_study_50ep']
  assert len(GRID_DIRS) == 3


@pytest.mark.parametrize('folder', REPORT_DIRS, ids=lambda p: p.name)
def test_committed_tables_md_is_recomputed_exactly(folder):
  want = (folder / study_tables.TABLES_FILE).read_text()
  got = study_tables.tables_markdown(str(folder.relative_to(REPO)))
  assert got == want, (
      f'{folder}/tables.md differs from what its per-run files give; rerun '
      f'python -m experiments.study_tables --study_dir='
      f'{folder.relative_to(REPO)}')


def _sweep_results(folder):
  spec = json.loads((folder / study_tables.REPORT_FILE).read_text())
  grid = sweep.load_grid(spec['grid'])
  return grid, sweep.collect(grid, str(folder.relative_to(REPO)))


@pytest.mark.parametrize('folder', GRID_DIRS, ids=lambda p: p.name)
def test_committed_sweep_table_is_recomputed_exactly(folder):
  grid, results = _sweep_results(folder)
  assert len(results) == len(list(folder.glob('*/results.json')))
  table = sweep.summarise(grid, results)
  assert sweep.table_markdown(grid, table, sweep.default_reference(
      table)) == (folder / 'table.md').read_text()
  assert sweep.table_csv(table) == (folder / 'table.csv').read_text()


@pytest.mark.parametrize('folder', GRID_DIRS, ids=lambda p: p.name)
def test_committed_epochs_table_is_recomputed_except_fosc(folder):
  """Steps, c_t and per-epoch PGD-20 of every cell are recomputed; the
  median FOSC (third field) came from the runs' FOSC arrays, which are not
  committed, so here it is only checked to be a number or '-'."""
  grid, results = _sweep_results(folder)
  got = sweep.epochs_markdown(grid, results).splitlines()
  want = (folder / 'epochs.md').read_text().splitlines()
  assert len(got) == len(want) and got[:2] == want[:2]
  for g, w in zip(got[2:], want[2:]):
    g_cells, w_cells = g.split(' | '), w.split(' | ')
    assert g_cells[0] == w_cells[0] and len(g_cells) == len(w_cells)
    for gc, wc in zip(g_cells[1:], w_cells[1:]):
      gf, wf = gc.strip(' |').split(' / '), wc.strip(' |').split(' / ')
      assert (gf[0], gf[1], gf[3]) == (wf[0], wf[1], wf[3]), (w, g)
      assert re.fullmatch(r'-|\d+\.\d{3}', wf[2]), wc


_ABSOLUTE = re.compile(r'"/(?:tmp|root|home|workspace|work|mnt|scratch|opt|'
                       r'var|data|Users)/')


def test_no_committed_results_file_names_a_machines_absolute_path():
  found = [str(p.relative_to(REPO)) for p in RESULTS.rglob('*')
           if p.suffix in ('.json', '.jsonl', '.md', '.csv') and
           _ABSOLUTE.search(p.read_text())]
  assert not found


def test_a_changed_per_run_file_changes_the_tables(tmp_path):
  """The recomputation sees a 0.01-point change of one accuracy and one
  changed epoch of the attack's steps."""
  src = RESULTS / 'mnist_dynamic_study_50ep'
  copy = tmp_path / 'study'
  shutil.copytree(src, copy, ignore=shutil.ignore_patterns('*.png'))
  def body(text):  # without the line naming the folder
    return [line for line in text.splitlines()
            if not line.startswith('Written by')]

  want = body((src / study_tables.TABLES_FILE).read_text())
  assert body(study_tables.tables_markdown(str(copy))) == want
  path = copy / 'dynamic_cmax01_seed1' / 'results.json'
  results = json.loads(path.read_text())
  results['white_box']['pgd20'] += 0.01
  path.write_text(json.dumps(results))
  changed = study_tables.tables_markdown(str(copy))
  assert body(changed) != want
  assert '| dynamic_cmax01 - standard | 0,1 | per seed | -0.06 / +0.04' in changed
  assert '-1.00 / +0.29' in changed and '-1.00 / +0.28' not in changed


def test_cost_counts_steps_gradients_and_training_passes():
  saved = {'batch_size': 4, 'method': 'dynamic'}
  rows = [{'epoch': 0, 'step': 2, 'steps_mean': 3.0, 'iters_max': 10,
           'num_steps': 10},
          {'epoch': 1, 'step': 5, 'steps_mean': 1.5, 'iters_max': 7,
           'num_steps': 10}]
  got = study_tables.cost(rows, saved)
  # 8 examples x 3 steps + 12 examples x 1.5 steps.
  assert got == {'examples': 20.0, 'sign_steps': 42.0,
                 'attack_grads': 62.0, 'passes': 82.0,
                 'full_trip_epochs': 1, 'epochs': 2}
  got = study_tables.cost(rows, {'batch_size': 4, 'method': 'unsecured'})
  assert (got['sign_steps'], got['attack_grads'], got['passes'],
          got['full_trip_epochs']) == (42.0, 0.0, 20.0, 0)


def _run(variant, seed, pgd20, n=1000):
  return {'variant': variant, 'seed': seed, 'folder': f'{variant}_{seed}',
          'results': {'white_box': {'pgd20': pgd20},
                      'num_eval_examples': n},
          'evaluations': {}, 'rows': [],
          'cost': {'sign_steps': 1.0}}


def test_difference_table_pairs_seeds_and_scales_by_standard_error():
  runs = [_run('a', 0, 50.0), _run('a', 1, 52.0), _run('b', 0, 48.0),
          _run('b', 1, 49.0), _run('b', 2, 10.0)]
  lines = study_tables.difference_table(runs, [('a', 'b')])
  assert lines[2] == '| a - b | 0,1 | per seed | +2.00 / +3.00 |'
  assert lines[3] == '| a - b | 0,1 | mean | +2.50 |'
  # Mean accuracies 51.0 and 48.5 on 1,000 images: SE of the difference
  # sqrt(.51 * .49 / 1000 + .485 * .515 / 1000) = 2.2347 points.
  assert lines[4] == '| a - b | 0,1 | mean / SE | +1.1 |'


def test_spread_is_mean_then_min_and_max():
  assert study_tables._spread([1.0, 2.0, 4.5]) == '2.50 (1.00 to 4.50)'  # pylint: disable=protected-access
  assert study_tables._spread([3.0]) == '3.00'  # pylint: disable=protected-access
  assert study_tables._f(-0.001, 2, True) == '+0.00'  # pylint: disable=protected-access
  assert study_tables._f(-0.001) == '0.00'  # pylint: disable=protected-access


def test_a_report_without_runs_or_grid_is_refused(tmp_path):
  (tmp_path / study_tables.REPORT_FILE).write_text('{"reference": "x"}')
  with pytest.raises(study_tables.ReportError, match='either "grid" or'):
    study_tables.tables_markdown(str(tmp_path))
  (tmp_path / study_tables.REPORT_FILE).write_text('{"grid": "g", "x": 1}')
  with pytest.raises(study_tables.ReportError, match=r"unknown key\(s\) \['x'\]"):
    study_tables.tables_markdown(str(tmp_path))
