"""Tests of the result files (experiments.reporting.write_results and
results_markdown), written from dynamic_at.evaluation's plain dicts."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from dynamic_at import evaluation
from experiments import reporting

_CONSISTENT = {
    'white_box': {'clean': 90.0, 'fgsm': 60.0, 'pgd10': 50.0, 'pgd20': 48.0,
                  'cw_inf': 49.0, 'worst_case': 45.0},
    'black_box': {'fgsm': 70.0, 'pgd10': 65.0, 'pgd20': 64.0, 'cw_inf': 66.0},
    'num_eval_examples': 1000,
}


def test_results_markdown():
  md = reporting.results_markdown(_CONSISTENT, title='MNIST / dynamic')
  assert md.startswith('## MNIST / dynamic')
  assert '| white-box | 90.00 | 60.00 | 50.00 | 48.00 | 49.00 | 45.00 |' in md
  assert '| black-box | - | 70.00 | 65.00 | 64.00 | 66.00 | - |' in md
  assert '1000' in md
  md = reporting.results_markdown({'white_box': {'clean': 12.345},
                                   'black_box': None,
                                   'num_eval_examples': 7}, title='t')
  assert '12.35' in md and 'black-box' not in md


def test_results_markdown_orders_the_strong_attacks():
  white = {a: 1.0 for a in reversed(evaluation.STRONG_ATTACKS)}
  white['worst_case'] = 0.5
  md = reporting.results_markdown({'white_box': white, 'black_box': None},
                                  title='t')
  assert ('| accuracy (%) | Clean | FGSM | PGD-10 | PGD-20 | CW-inf | '
          'APGD-CE | APGD-T | Worst case |') in md


def test_results_markdown_says_when_apgd_ran_as_a_cascade():
  strong = {a: 1.0 for a in evaluation.STRONG_ATTACKS}
  note = 'ran as a cascade'
  for white, flags, expected in (
      (strong, {'attack_cascade': True}, True),
      (strong, {'attack_cascade': False}, False),
      (strong, {}, False),
      # --attack_cascade with the paper's attacks: no APGD, nothing to say.
      (_CONSISTENT['white_box'], {'attack_cascade': True}, False)):
    md = reporting.results_markdown(
        {'white_box': white, 'black_box': None, 'flags': flags}, title='t')
    assert (note in md) == expected, (flags, sorted(white))


def test_write_results(tmp_path):
  path = tmp_path / 'sub' / 'results.json'
  white = {k: np.float64(v) for k, v in _CONSISTENT['white_box'].items()}
  final = {
      'dataset': 'mnist', 'method': 'dynamic',
      'white_box': white, 'black_box': None,
      'num_eval_examples': np.int64(37),
      'flags': {'eps': np.float32(0.3), 'steps': np.int32(10),
                'lr_drop_epochs': (20, 40), 'c_stop': float('-inf'),
                'c_t': jnp.float32(0.5)},
      'wall_time_s': 1.5, 'devices': 'cpu x1',
      'per_example': {'white_box': {'clean': np.array([True, False])},
                      'black_box': None},
  }
  json_path, md_path = reporting.write_results(path, final)
  assert json_path == str(path) and md_path == str(tmp_path / 'sub' /
                                                   'results.md')
  loaded = json.loads(path.read_text())
  assert 'per_example' not in loaded
  assert loaded['white_box'] == _CONSISTENT['white_box']
  assert loaded['num_eval_examples'] == 37
  assert loaded['flags']['eps'] == pytest.approx(0.3)
  assert loaded['flags']['lr_drop_epochs'] == [20, 40]
  assert loaded['flags']['c_stop'] == '-inf'
  assert loaded['flags']['c_t'] == 0.5
  assert loaded['black_box'] is None
  md = (tmp_path / 'sub' / 'results.md').read_text()
  assert 'mnist / dynamic' in md and 'white-box' in md
  assert 'Training time (as the run recorded it): 1.5 s.' in md
  assert 'Evaluated on: cpu x1.' in md and 'Evaluation time' not in md
  # Replaced whole, no temporary files left behind.
  final['method'] = 'standard'
  reporting.write_results(path, final)
  assert json.loads(path.read_text())['method'] == 'standard'
  assert sorted(os.listdir(tmp_path / 'sub')) == ['results.json',
                                                  'results.md']


def test_keep_previous_results_moves_them_to_the_first_free_number(
    tmp_path):
  path = tmp_path / 'results.json'
  assert reporting.keep_previous_results(path) is None
  assert not list(tmp_path.iterdir())
  reporting.write_results(path, dict(_CONSISTENT, dataset='mnist'))
  first_json, first_md = path.read_text(), (tmp_path / 'results.md').read_text()
  # results.1.md taken (a stray file): both files go to number 2.
  (tmp_path / 'results.1.md').write_text('other')
  kept = reporting.keep_previous_results(path)
  assert kept == str(tmp_path / 'results.2.json')
  assert (tmp_path / 'results.2.json').read_text() == first_json
  assert (tmp_path / 'results.2.md').read_text() == first_md
  assert (tmp_path / 'results.1.md').read_text() == 'other'
  assert not path.exists() and not (tmp_path / 'results.md').exists()
  # Only a JSON (no markdown beside it): moved alone, to the next number.
  path.write_text('{}')
  assert reporting.keep_previous_results(path) == str(
      tmp_path / 'results.3.json')
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      'results.1.md', 'results.2.json', 'results.2.md', 'results.3.json']


def test_progress_printer_prints_at_most_once_per_interval(monkeypatch,
                                                            capsys):
  """A line is printed, with the seconds since the start, only when
  ``every_s`` have passed since the last printed one (or the start)."""
  clock = iter([10.0, 69.0, 70.0, 100.0, 130.2, 131.0])
  monkeypatch.setattr(reporting.time, 'time', lambda: next(clock))
  show = reporting.progress_printer(10.0, 60.0)
  for i in range(6):
    show(f'batch {i + 1}/6')
  assert capsys.readouterr().out.splitlines() == [
      '  batch 3/6 (60 s)', '  batch 5/6 (120 s)']
