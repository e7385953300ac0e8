"""Tests of the sweep runner (experiments.sweep): grid checks, the table and
an end-to-end tiny grid on the MNIST files."""

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from experiments import sweep
from tests import run_utils

REPO = run_utils.REPO
CONFIGS = REPO / 'experiments' / 'configs'
GRIDS = REPO / 'experiments' / 'grids'


@pytest.fixture(autouse=True)
def _from_repository_root(monkeypatch):
  """The flagfiles include their base file by a path relative to the
  repository root (absl resolves a nested --flagfile relative to the current
  directory)."""
  monkeypatch.chdir(REPO)


def _grid(**changes):
  grid = {
      'description': 'test grid',
      'dataset': 'mnist',
      'seeds': [0, 1],
      'flags': ['--num_epochs=1'],
      'variants': [
          {'name': 'standard',
           'flagfile': str(CONFIGS / 'mnist_standard.flags')},
          {'name': 'dynamic_cmax01',
           'flagfile': str(CONFIGS / 'mnist_dynamic.flags'),
           'flags': ['--c_max=0.1']},
      ]}
  grid.update(changes)
  return grid


def _write(tmp_path, grid, name='grid.json'):
  path = tmp_path / name
  path.write_text(grid if isinstance(grid, str) else json.dumps(grid))
  return str(path)


def test_every_committed_grid_is_tested():
  assert sorted(p.name for p in GRIDS.glob('*.json')) == [
      'cifar10_subset_cpu.json', 'cifar10_subset_gpu.json',
      'mnist_dynamic_study.json', 'mnist_dynamic_study_cpu.json']


@pytest.mark.parametrize('name, factor', [('cpu', 5), ('gpu', 1)])
def test_cifar10_subset_grids_are_the_paper_schedule(monkeypatch, name,
                                                     factor):
  """The four methods with the paper's CIFAR-10 settings, and Standard with
  PGD-5 (Dynamic's equal-cost control); 120 epochs, lr drops at 60 and 100
  and T' 100, all divided by the same factor (5 for the CPU grid, 1 for the
  GPU grid)."""
  monkeypatch.chdir(REPO)
  grid = sweep.load_grid(f'experiments/grids/cifar10_subset_{name}.json')
  assert grid.dataset == 'cifar10' and grid.seeds == (0,)
  configs = {v.name: sweep.check_run(grid, sweep.RunSpec(v, 0))
             for v in grid.variants}
  assert {n: c.method for n, c in configs.items()} == {
      'unsecured': 'unsecured', 'standard': 'standard', 'dynamic': 'dynamic',
      'curriculum': 'curriculum', 'standard_k5': 'standard'}
  for name, c in configs.items():
    assert c.model == 'cifar10_cnn' and c.eps == pytest.approx(8 / 255)
    assert c.step_size == pytest.approx(2 / 255)
    assert c.num_steps == (5 if name == 'standard_k5' else 10)
    assert (c.learning_rate, c.momentum, c.weight_decay, c.batch_size) == (
        0.01, 0.9, 1e-4, 128)
    assert c.augment == 'crop_flip' and c.c_max == 0.5
    assert c.num_epochs * factor == 120
    assert [e * factor for e in c.lr_drop_epochs] == [60, 100]
    assert c.t_prime * factor == 100
    assert c.eval_every_examples == 1000 and c.num_eval_examples == 0


@pytest.mark.parametrize('path', sorted(GRIDS.glob('mnist_*.json')),
                         ids=lambda p: p.stem)
def test_committed_grids_load(path, monkeypatch):
  monkeypatch.chdir(REPO)
  grid = sweep.load_grid(str(path.relative_to(REPO)))
  assert len(grid.variants) >= 5 and len(grid.seeds) >= 2
  names = [v.name for v in grid.variants]
  assert len(set(names)) == len(names)
  configs = {v.name: sweep.check_run(grid, sweep.RunSpec(v, 0))
             for v in grid.variants}
  # Every variant trains with the paper's weight decay.
  assert {c.weight_decay for c in configs.values()} == {1e-4}
  assert configs['standard'].method == 'standard'
  assert configs['dynamic_cmax01'].c_max == 0.1
  # T' 20 reaches c_t = 0 at 40% of training, the paper's T' at 80%.
  for name, fraction in (('dynamic_tprime20', 0.4), ('dynamic_paper', 0.8)):
    c = configs[name]
    assert c.t_prime == pytest.approx(fraction * c.num_epochs)
  authors = configs['dynamic_authors']
  assert authors.unclipped_random_start and authors.fosc_centre_random_start
  assert authors.loss_weighting and authors.keras_decay > 0
  assert not configs['dynamic_paper'].unclipped_random_start
  # The full-schedule grid's equal-budget controls: Standard with K = 5, 6, 8
  # and nothing else changed.
  for k in (5, 6, 8):
    if f'standard_k{k}' in configs:
      assert configs[f'standard_k{k}'] == configs['standard'].replace(
          num_steps=k, workdir=configs[f'standard_k{k}'].workdir)


def test_run_command_line_order_and_names(tmp_path):
  grid = sweep.load_grid(_write(tmp_path, _grid()))
  runs = grid.runs()
  assert [r.name for r in runs] == ['standard_seed0', 'standard_seed1',
                                    'dynamic_cmax01_seed0',
                                    'dynamic_cmax01_seed1']
  argv = runs[3].argv('/runs', '/data')
  # The flagfile first, then the grid's flags, the variant's, the runner's.
  assert argv == [f'--flagfile={CONFIGS / "mnist_dynamic.flags"}',
                  '--num_epochs=1', '--c_max=0.1', '--seed=1',
                  '--workdir=/runs/dynamic_cmax01_seed1', '--data_dir=/data']
  config = sweep.check_run(grid, runs[3])
  assert (config.num_epochs, config.c_max, config.seed) == (1, 0.1, 1)


@pytest.mark.parametrize('change,message', [
    (lambda g: g['variants'][1]['flags'].append('--c_mx=0.2'),
     "variant 'dynamic_cmax01': Unknown command line flag 'c_mx'"),
    (lambda g: g['variants'][0].pop('name'), 'variant 0 has no valid "name"'),
    (lambda g: g['variants'][0].update(name=''), 'variant 0 has no valid'),
    (lambda g: g['variants'][1].update(name='standard'),
     "two variants are named 'standard'"),
    (lambda g: g.update(seeds=[0, '1']), '"seeds" must be a non-empty list'),
    (lambda g: g.update(seeds=[0.5]), '"seeds" must be a non-empty list'),
    (lambda g: g.update(seeds=[True]), '"seeds" must be a non-empty list'),
    (lambda g: g.update(seeds=[]), '"seeds" must be a non-empty list'),
    (lambda g: g.update(seeds=[1, 1]), 'repeats a seed'),
    (lambda g: g['variants'][1]['flags'].append('--eps=3'),
     "variant 'dynamic_cmax01': --eps=3.0 is outside (0, 1]"),
    (lambda g: g['variants'][1]['flags'].append('--method=fast'),
     "variant 'dynamic_cmax01'"),
    (lambda g: g['flags'].append('--seed=3'), 'set by the sweep'),
    (lambda g: g['variants'][0].update(flags=['--workdir=x']),
     'set by the sweep'),
    (lambda g: g['flags'].append('--jobs=3'),
     '--jobs is not a flag of experiments.mnist'),
    (lambda g: g['flags'].append('eps=0.1'), 'must be a list of strings'),
    (lambda g: g.update(dataset='svhn'), '"dataset" must be one of'),
    (lambda g: g.update(variant=[]), "unknown key(s) ['variant']"),
    (lambda g: g['variants'][0].update(flagfile='nope.flags'),
     "flagfile 'nope.flags' is not a file"),
    (lambda g: g['variants'][0].update(seed=1), "unknown key(s) ['seed']"),
])
def test_bad_grids_are_refused_before_anything_runs(tmp_path, change,
                                                    message):
  grid = _grid()
  change(grid)
  path = _write(tmp_path, grid)
  with pytest.raises(sweep.GridError) as e:
    sweep.load_grid(path)
  assert message in str(e.value)
  assert path in str(e.value)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['grid.json']


def test_unreadable_grid_names_the_file(tmp_path):
  with pytest.raises(sweep.GridError, match='not valid JSON'):
    sweep.load_grid(_write(tmp_path, '{"dataset": "mnist",'))
  with pytest.raises(sweep.GridError, match='--grid=.*missing.json'):
    sweep.load_grid(str(tmp_path / 'missing.json'))


def test_attack_gradient_evaluations_by_hand():
  rows = [{'step': 10, 'steps_mean': 10.0}, {'step': 20, 'steps_mean': 4.5},
          {'step': 25, 'steps_mean': 2.0}]
  # 10 batches of 128 at 10 steps, 10 at 4.5, 5 at 2.
  assert sweep.attack_gradient_evaluations(rows, 128) == (
      128 * (10 * 10 + 10 * 4.5 + 5 * 2))


def _result(variant, seed, pgd20, grads):
  return sweep.RunResult(
      name=f'{variant}_seed{seed}', variant=variant, seed=seed,
      white_box={'clean': 99.0, 'pgd20': pgd20}, grad_evals=grads,
      train_time_s=100.0 + seed, num_eval_examples=10000, rows=[],
      workdir='')


def test_summary_mean_and_range_over_seeds(tmp_path):
  grid = sweep.load_grid(_write(tmp_path, _grid()))
  results = [_result('standard', 0, 90.0, 3e6), _result('standard', 1, 91.0,
                                                        3e6),
             _result('dynamic_cmax01', 0, 88.0, 1.5e6)]
  table = sweep.summarise(grid, results)
  assert [r['variant'] for r in table] == ['standard', 'dynamic_cmax01']
  assert table[0]['pgd20'] == (90.5, 90.0, 91.0)
  assert table[0]['train_time_s'] == (100.5, 100.0, 101.0)
  assert table[1]['seeds'] == [0] and table[1]['pgd20'] == (88.0, 88.0, 88.0)
  md = sweep.table_markdown(grid, table, 'standard')
  lines = md.strip().splitlines()
  assert lines[2].startswith('| standard | 0,1 | 99.00 |')
  assert '90.50 (90.00-91.00)' in lines[2]
  # The Dynamic variant's cost relative to Standard's.
  assert lines[3].split('|')[-3].strip() == '0.50'
  rows = list(csv.DictReader(io.StringIO(sweep.table_csv(table))))
  assert rows[0]['pgd20_mean'] == '90.5' and rows[0]['pgd20_max'] == '91.0'
  assert rows[1]['grad_evals_mean'] == '1500000.0'


def test_cost_column_compares_with_the_first_variant_that_attacks(tmp_path):
  unsecured = {'name': 'unsecured',
               'flagfile': str(CONFIGS / 'mnist_unsecured.flags')}
  grid = sweep.load_grid(_write(tmp_path, _grid(
      variants=[unsecured, *_grid()['variants']])))
  table = sweep.summarise(grid, [_result('unsecured', 0, 0.0, 0.0),
                                 _result('standard', 0, 90.0, 3e6),
                                 _result('dynamic_cmax01', 0, 88.0, 1.5e6)])
  assert sweep.default_reference(table) == 'standard'
  assert sweep.default_reference(table[:1]) is None
  costs = [line.split('|')[-3].strip() for line in
           sweep.table_markdown(grid, table, 'standard').splitlines()[2:]]
  assert costs == ['0.00', '1.00', '0.50']
  # Against a reference without attack cost the column stays empty.
  costs = [line.split('|')[-3].strip() for line in
           sweep.table_markdown(grid, table, 'unsecured').splitlines()[2:]]
  assert costs == ['', '', '']


def test_tiny_grid_end_to_end_then_skips_finished_runs(tmp_path,
                                                        subprocess_env):
  run_utils.require(run_utils.MNIST_DIR)
  tiny = ['--num_epochs=2', '--num_train_examples=256', '--batch_size=64',
          '--num_steps=2', '--num_eval_examples=64', '--eval_batch_size=32',
          '--eval_every=0']
  grid = _grid(flags=tiny, variants=[
      {'name': 'standard', 'flagfile': str(CONFIGS / 'mnist_standard.flags')},
      {'name': 'dynamic_c0', 'flagfile': str(CONFIGS / 'mnist_dynamic.flags'),
       'flags': ['--c_max=0', '--lr_drop_epochs=1']}])
  path = _write(tmp_path, grid)
  runs_dir, results_dir = tmp_path / 'runs', tmp_path / 'results'
  args = [f'--grid={path}', f'--runs_dir={runs_dir}',
          f'--data_dir={run_utils.MNIST_DIR}', f'--results_dir={results_dir}',
          '--jobs=2', '--threads_per_job=1', '--export_weights']
  proc = run_utils.run('experiments.sweep', args, subprocess_env)
  assert proc.stdout.count(': started') == 4, proc.stdout
  for name in ('standard_seed0', 'standard_seed1', 'dynamic_c0_seed0',
               'dynamic_c0_seed1'):
    assert sweep.is_finished(str(runs_dir / name)), name
    saved = json.loads((results_dir / name / 'flags.json').read_text())
    assert saved['seed'] == int(name[-1])
    # Paths beside the repository are made relative to it.
    assert saved['data_dir'] == '../shared/data/mnist'
    results = json.loads((results_dir / name / 'results.json').read_text())
    assert results['num_eval_examples'] == 64
  table = list(csv.DictReader(io.StringIO(
      (results_dir / 'table.csv').read_text())))
  assert [r['variant'] for r in table] == ['standard', 'dynamic_c0']
  # Standard: K = 2 steps for every example,
  # 2 epochs x 4 batches x 64 examples x 2 steps.
  for r in table:
    assert 0 < float(r['grad_evals_mean']) <= 2 * 4 * 64 * 2
  assert float(table[0]['grad_evals_mean']) == 2 * 4 * 64 * 2
  pgd20 = [json.loads((results_dir / f'standard_seed{s}' / 'results.json')
                      .read_text())['white_box']['pgd20'] for s in (0, 1)]
  assert float(table[0]['pgd20_mean']) == pytest.approx(np.mean(pgd20))
  assert float(table[0]['pgd20_min']) == min(pgd20)
  for png in ('pgd20_vs_gradient_evaluations.png',
              'c_t_vs_standard_fosc.png', 'steps_and_pgd20_per_epoch.png',
              'fosc_by_variant.png'):
    assert (results_dir / png).read_bytes()[:4] == b'\x89PNG'
  assert '| standard | 0,1 |' in (results_dir / 'table.md').read_text()
  epochs = (results_dir / 'epochs.md').read_text().splitlines()
  assert epochs[0] == '| epoch | standard | dynamic_c0 |'
  # Epoch 0 of Standard: K = 2 steps, no c_t, a median FOSC, no per-epoch
  # test evaluation (--eval_every=0).
  assert len(epochs) == 4
  assert re.fullmatch(r'\| 0 \| 2\.00 / - / \d+\.\d{3} / - \| .*', epochs[2])
  # The exported weights evaluate to the run's own results (the same test
  # examples and attack keys; one example of 64 may flip between the
  # single-threaded run and this process).
  model = results_dir / 'standard_seed0' / 'model.msgpack'
  assert model.stat().st_size < 2 * 1024 * 1024
  out = tmp_path / 'eval_weights'
  run_utils.run('experiments.evaluate', [
      f'--weights={model}', f'--workdir={out}',
      f'--data_dir={run_utils.MNIST_DIR}', '--eval_batch_size=32'],
                subprocess_env)
  got = json.loads((out / 'results.json').read_text())
  want = json.loads((results_dir / 'standard_seed0' / 'results.json')
                    .read_text())
  assert got['num_eval_examples'] == 64 and got['step'] == want['step']
  assert got['white_box']['clean'] == want['white_box']['clean']
  for attack, value in want['white_box'].items():
    assert abs(got['white_box'][attack] - value) <= 100 / 64, attack
  # A second call finds every run finished and trains nothing.
  before = {p: p.stat().st_mtime_ns for p in runs_dir.rglob('checkpoints/*')}
  proc = run_utils.run('experiments.sweep', args, subprocess_env)
  assert proc.stdout.count('finished, skipped') == 4
  assert ': started' not in proc.stdout
  assert before == {p: p.stat().st_mtime_ns
                    for p in runs_dir.rglob('checkpoints/*')}


def test_relative_paths(monkeypatch, tmp_path):
  repo = tmp_path / 'repo'
  repo.mkdir()
  monkeypatch.chdir(repo)
  text = json.dumps({'workdir': f'{repo}/workdirs/a',
                     'data_dir': f'{tmp_path}/shared/data/mnist'})
  out = json.loads(sweep._relative_paths(text))  # pylint: disable=protected-access
  assert out == {'workdir': 'workdirs/a', 'data_dir': '../shared/data/mnist'}
  assert Path(out['workdir']).parts[0] == 'workdirs'


def test_portable_paths_replace_another_machines_runs_folder(monkeypatch,
                                                            tmp_path):
  """A run trained on another machine (GPU, /tmp/runs/<grid>) and unpacked
  here: its recorded workdir and its black-box source in the same runs folder
  become the local, relative ones; other text is unchanged."""
  repo = tmp_path / 'repo'
  repo.mkdir()
  monkeypatch.chdir(repo)
  text = json.dumps({
      'workdir': '/tmp/runs/grid/standard_seed0',
      'source_workdir': '/tmp/runs/grid/unsecured_seed0',
      'data_dir': '.gpu_data/mnist', 'note': 'tmp/runs/grid'})
  local = repo / 'workdirs' / 'grid' / 'standard_seed0'
  out = json.loads(sweep._portable_paths(  # pylint: disable=protected-access
      text, '/tmp/runs/grid/standard_seed0', str(local)))
  assert out == {'workdir': 'workdirs/grid/standard_seed0',
                 'source_workdir': 'workdirs/grid/unsecured_seed0',
                 'data_dir': '.gpu_data/mnist', 'note': 'tmp/runs/grid'}
  # A recorded relative workdir, or the same machine: only made relative.
  for recorded in ('workdirs/grid/standard_seed0', str(local), None):
    got = json.loads(sweep._portable_paths(  # pylint: disable=protected-access
        json.dumps({'workdir': str(local)}), recorded, str(local)))
    assert got == {'workdir': 'workdirs/grid/standard_seed0'}


def test_per_epoch_figure_colours_variants_and_styles_seeds(tmp_path,
                                                            monkeypatch):
  """One colour per variant (in order of appearance), one line style per
  seed, every run's own rows, the steps and PGD-20 panels."""
  from experiments import sweep_figures  # pylint: disable=g-import-not-at-top
  drawn = {}

  def fake(rows, path, **kwargs):
    drawn.update(rows=rows, path=path, **kwargs)
    return path

  monkeypatch.setattr(sweep_figures.plots, 'curves_by_method', fake)
  results = []
  for variant in ('standard', 'dynamic'):
    for seed in (0, 1, 2):
      rows = [{'epoch': 0, 'steps_mean': 10.0 - seed, 'test_pgd20': 50.0}]
      results.append(sweep.RunResult(
          name=f'{variant}_seed{seed}', variant=variant, seed=seed,
          white_box={}, grad_evals=0.0, train_time_s=0.0,
          num_eval_examples=0, rows=rows, workdir=''))
  path = str(tmp_path / 'f.png')
  assert sweep_figures.per_epoch(results, path) == path
  assert drawn['path'] == path
  assert [k for k, _ in drawn['keys']] == ['steps_mean', 'test_pgd20']
  assert drawn['rows'] == {r.name: r.rows for r in results}
  assert drawn['styles'] == {
      f'{v}_seed{s}': {'color': c, 'linestyle': ls}
      for v, c in (('standard', 'C0'), ('dynamic', 'C1'))
      for s, ls in ((0, '-'), (1, '--'), (2, ':'))}


def test_fosc_figure_one_panel_per_variant_from_its_lowest_seed(tmp_path,
                                                                monkeypatch):
  """Each variant's lowest-seed run, at most max_stages of its saved epochs
  (first and last included), the arrays as saved, and the last bin starting
  at the pooled quantile; a variant without FOSC arrays has no panel."""
  from experiments import sweep_figures  # pylint: disable=g-import-not-at-top
  drawn = {}

  def fake(fosc, path, **kwargs):
    drawn.update(fosc=fosc, path=path, **kwargs)
    return path

  monkeypatch.setattr(sweep_figures.plots, 'fosc_histograms_by_method', fake)
  results, saved = [], {}
  for variant in ('standard', 'dynamic', 'unsecured'):
    for seed in (1, 0):
      workdir = tmp_path / f'{variant}_seed{seed}'
      (workdir / 'fosc').mkdir(parents=True)
      if variant != 'unsecured':
        for epoch in range(7):
          values = np.full(10, 100 * seed + epoch + (variant == 'dynamic'),
                           np.float32)
          np.save(workdir / 'fosc' / f'epoch_{epoch:04d}.npy', values)
          saved[variant, seed, epoch] = values
      results.append(sweep.RunResult(
          name=workdir.name, variant=variant, seed=seed, white_box={},
          grad_evals=0.0, train_time_s=0.0, num_eval_examples=0, rows=[],
          workdir=str(workdir)))
  path = str(tmp_path / 'f.png')
  assert sweep_figures.fosc_by_variant(results, path, max_stages=3,
                                       clip_quantile=0.5) == path
  assert drawn['path'] == path and drawn['max_stages'] == 3
  assert set(drawn['fosc']) == {'standard', 'dynamic'}
  for variant in ('standard', 'dynamic'):
    assert sorted(drawn['fosc'][variant]) == [0, 3, 6]
    for epoch, values in drawn['fosc'][variant].items():
      np.testing.assert_array_equal(values, saved[variant, 0, epoch])
  # Pooled seed-0 values 0, 3, 6 (standard) and 1, 4, 7 (dynamic), 10 each:
  # the median is 3.5.
  assert drawn['x_max'] == pytest.approx(3.5)
