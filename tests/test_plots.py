"""Tests of dynamic_at.plots: every figure is written as a PNG."""

import os
import subprocess
import sys

import numpy as np

from dynamic_at import plots

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _is_png(path):
  with open(path, 'rb') as f:
    head = f.read(8)
  return head == _PNG_MAGIC and len(head) == 8


def _fosc(seed=0, epochs=range(0, 30, 3), n=500):
  rng = np.random.default_rng(seed)
  return {e: rng.gamma(2.0, 1.0 / (1 + e), n) for e in epochs}


def test_select_stages():
  assert plots.select_stages([3, 1, 2]) == [1, 2, 3]
  assert plots.select_stages(range(100)) == [0, 25, 50, 74, 99]
  assert plots.select_stages(range(6), max_stages=3) == [0, 2, 5]


def test_fosc_histograms(tmp_path):
  path = tmp_path / 'fosc.png'
  data = _fosc()
  data[27] = np.array([np.nan, 0.1, np.inf, 0.2])  # non-finite values dropped
  out = plots.fosc_histograms(data, path, title='Dynamic')
  assert out == str(path) and _is_png(path) and path.stat().st_size > 1000


def test_import_is_light():
  code = ('import sys, dynamic_at.plots, dynamic_at.evaluation; '
          'print(any(m.startswith("matplotlib") for m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, check=True,
                       env=dict(os.environ, PYTHONPATH=_REPO))
  assert out.stdout.strip() == 'False'


def test_fosc_histograms_edge_cases(tmp_path):
  assert _is_png(plots.fosc_histograms({}, tmp_path / 'empty.png'))
  assert _is_png(plots.fosc_histograms({0: np.array([])}, tmp_path / 'e.png'))
  assert _is_png(plots.fosc_histograms({0: np.zeros(10)}, tmp_path / 'z.png'))


def test_fosc_histograms_by_method(tmp_path):
  path = tmp_path / 'nested' / 'by_method.png'
  out = plots.fosc_histograms_by_method(
      {'dynamic': _fosc(0), 'standard': _fosc(1), 'curriculum': _fosc(2)},
      path)
  assert out == str(path) and _is_png(path)


def test_training_curves(tmp_path):
  rows = []
  for e in range(12):
    row = {'epoch': e, 'train_loss': 2.0 / (e + 1),
           'train_accuracy': 0.3 + e / 20, 'steps_mean': 10 - e / 2,
           'c_t': max(0.5 - e * 0.05, 0.0)}
    if e % 4 == 0:
      row.update(test_clean=90.0 + e / 3, test_pgd20=40.0 + e)
    rows.append(row)
  path = tmp_path / 'curves.png'
  assert plots.training_curves(rows, path) == str(path) and _is_png(path)


def test_training_curves_missing_keys(tmp_path):
  rows = [{'epoch': 0, 'train_loss': 1.0, 'c_t': float('-inf')},
          {'train_loss': 0.5, 'steps_mean': None}]
  assert _is_png(plots.training_curves(rows, tmp_path / 'a.png'))
  assert _is_png(plots.training_curves([], tmp_path / 'b.png'))


def test_stage_fractions_counts_the_tail_in_the_last_bin():
  bins = np.linspace(0.0, 1.0, 5)  # [0, .25), [.25, .5), [.5, .75), [.75, 1]
  values = np.array([0.1, 0.3, 0.3, 0.9, 5.0, 7.0, np.nan, -np.inf, np.inf])
  fractions, beyond = plots.stage_fractions(values, bins)
  # 6 finite values: 0.1 | 0.3 0.3 | - | 0.9 5.0 7.0 (the last two clipped).
  np.testing.assert_allclose(fractions, [1 / 6, 2 / 6, 0.0, 3 / 6])
  assert beyond == 2 / 6
  fractions, beyond = plots.stage_fractions(np.array([np.nan]), bins)
  assert fractions.tolist() == [0.0] * 4 and beyond == 0.0


def test_fosc_histograms_x_max(tmp_path):
  data = _fosc()
  data[0] = np.concatenate([data[0], [50.0, 80.0]])  # a long tail
  assert _is_png(plots.fosc_histograms(data, tmp_path / 'a.png', x_max=2.0))
  assert _is_png(plots.fosc_histograms_by_method(
      {'standard': data, 'dynamic': _fosc(1)}, tmp_path / 'b.png', x_max=2.0))


def test_curves_by_method(tmp_path):
  rows = {
      'standard': [{'epoch': e, 'steps_mean': 10.0, 'test_pgd20': 80.0 + e}
                   for e in range(5)],
      'dynamic': [{'epoch': e, 'steps_mean': 10.0 - e, 'c_t': 0.5}
                  for e in range(5)],
  }
  path = tmp_path / 'curves.png'
  assert plots.curves_by_method(
      rows, path, title='MNIST',
      styles={'dynamic': {'color': 'C3', 'linestyle': '--'}}) == str(path)
  assert _is_png(path)
  assert _is_png(plots.curves_by_method({}, tmp_path / 'empty.png'))
