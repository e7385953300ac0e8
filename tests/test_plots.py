"""Tests of dynamic_at.plots: every figure is written as a PNG of the
figure's size, and the figure shows the data it was given.

The figures are caught on their way to the file (``plots._save`` wrapped), so
the tests read the drawn data (bar heights, line data, labels) back from the
very figure that was written; the PNG is read back too and must hold exactly
that figure's pixels.
"""

import os
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from dynamic_at import plots

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
_DPI = 100


def _is_png(path):
  with open(path, 'rb') as f:
    head = f.read(8)
  return head == _PNG_MAGIC and len(head) == 8


@pytest.fixture
def figures(monkeypatch):
  """The figures the plot functions save, in order."""
  saved = []
  real = plots._save  # pylint: disable=protected-access

  def capture(fig, path):
    saved.append(fig)
    return real(fig, path)

  monkeypatch.setattr(plots, '_save', capture)
  return saved


def _check_png(path, fig, width, height):
  """The PNG at ``path`` is ``width x height`` inches at 100 dpi and holds
  exactly the pixels ``fig``'s canvas drew when it was saved."""
  assert _is_png(path)
  image = matplotlib.image.imread(os.fspath(path))
  assert image.shape == (round(height * _DPI), round(width * _DPI), 4)
  pixels = np.asarray(fig.canvas.buffer_rgba())
  np.testing.assert_array_equal(np.round(image * 255).astype(np.uint8),
                                pixels)
  assert pixels.reshape(-1, 4).std(axis=0).max() > 0  # not a blank image


def _bars(ax):
  """Per filled histogram on ``ax``: ``(left edges, right edges, heights)``."""
  out = []
  for container in ax.containers:
    left = np.array([p.get_x() for p in container])
    width = np.array([p.get_width() for p in container])
    out.append((left, left + width,
                np.array([p.get_height() for p in container])))
  return out


def _legend(ax):
  return [t.get_text() for t in ax.get_legend().get_texts()]


def _lines(fig):
  """``label -> (line, axes)`` of every labelled line of ``fig``."""
  out = {}
  for ax in fig.axes:
    for line in ax.get_lines():
      if not line.get_label().startswith('_'):
        assert line.get_label() not in out, line.get_label()
        out[line.get_label()] = (line, ax)
  return out


def _texts(ax):
  return [t.get_text() for t in ax.texts]


def _expected_hist(values, bins):
  """Fractions per bin of the finite values, those above the last edge in the
  last bin (numpy, independent of the library)."""
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  counts = np.histogram(np.minimum(v, bins[-1]), bins=bins)[0]
  return counts / v.size


def _check_stage_bars(ax, fosc_by_epoch, epochs, lo, hi, num_bins=50):
  bins = np.linspace(lo, hi, num_bins + 1)
  bars = _bars(ax)
  assert len(bars) == len(epochs)
  for (left, right, heights), epoch in zip(bars, epochs):
    np.testing.assert_allclose(left, bins[:-1], atol=1e-12)
    np.testing.assert_allclose(right, bins[1:], atol=1e-12)
    np.testing.assert_allclose(heights,
                               _expected_hist(fosc_by_epoch[epoch], bins),
                               rtol=1e-12)
    assert heights.sum() == pytest.approx(1.0)


def _fosc(seed=0, epochs=range(0, 30, 3), n=500):
  rng = np.random.default_rng(seed)
  return {e: rng.gamma(2.0, 1.0 / (1 + e), n) for e in epochs}


def test_select_stages():
  assert plots.select_stages([3, 1, 2]) == [1, 2, 3]
  assert plots.select_stages(range(100)) == [0, 25, 50, 74, 99]
  assert plots.select_stages(range(6), max_stages=3) == [0, 2, 5]


def test_fosc_histograms(tmp_path, figures):
  path = tmp_path / 'fosc.png'
  data = _fosc()
  data[27] = np.array([np.nan, 0.1, np.inf, 0.2])  # non-finite values dropped
  out = plots.fosc_histograms(data, path, title='Dynamic')
  assert out == str(path)
  (fig,) = figures
  _check_png(path, fig, 7.0, 4.5)
  (ax,) = fig.axes
  epochs = [0, 6, 12, 21, 27]  # 5 of the 10 epochs, evenly spaced
  hi = max(np.max(data[e][np.isfinite(data[e])]) for e in epochs)
  assert ax.get_xlim() == (0.0, hi)
  _check_stage_bars(ax, data, epochs, 0.0, hi)
  assert _legend(ax)[-1] == 'epoch 27 (mean 0.15, n=2)'
  assert _legend(ax)[0] == (f'epoch 0 (mean {data[0].mean():.3g}, n=500)')
  assert ax.get_title() == 'Dynamic'
  assert ax.get_xlabel() == 'FOSC of training adversarial examples'
  assert ax.get_ylabel() == 'fraction of examples'


def test_import_is_light():
  code = ('import sys, dynamic_at.plots, dynamic_at.evaluation; '
          'print(any(m.startswith("matplotlib") for m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, check=True,
                       env=dict(os.environ, PYTHONPATH=_REPO))
  assert out.stdout.strip() == 'False'


def test_fosc_histograms_edge_cases(tmp_path, figures):
  for name, data in (('empty', {}), ('e', {0: np.array([])}),
                     ('z', {0: np.zeros(10)})):
    path = plots.fosc_histograms(data, tmp_path / f'{name}.png')
    _check_png(path, figures[-1], 7.0, 4.5)
  empty, no_values, zeros = (fig.axes[0] for fig in figures)
  assert _texts(empty) == ['no FOSC data'] and not empty.containers
  assert empty.get_title() == 'FOSC of training adversarial examples by epoch'
  assert not no_values.containers
  assert _legend(no_values) == ['epoch 0 (no data)']
  # All values 0: the range is [0, 1] and every value is in the first bin.
  assert zeros.get_xlim() == (0.0, 1.0)
  ((_, _, heights),) = _bars(zeros)
  np.testing.assert_array_equal(heights, [1.0] + [0.0] * 49)
  assert _legend(zeros) == ['epoch 0 (mean 0, n=10)']


def test_fosc_histograms_by_method(tmp_path, figures):
  path = tmp_path / 'nested' / 'by_method.png'
  data = {'dynamic': _fosc(0), 'standard': _fosc(1), 'curriculum': _fosc(2)}
  out = plots.fosc_histograms_by_method(data, path)
  assert out == str(path)
  (fig,) = figures
  _check_png(path, fig, 15.0, 4.5)
  assert [ax.get_title() for ax in fig.axes] == ['Standard', 'Curriculum',
                                                 'Dynamic']
  assert fig.get_suptitle() == 'FOSC of training adversarial examples'
  epochs = [0, 6, 12, 21, 27]
  hi = max(data[m][e].max() for m in data for e in epochs)  # shared bins
  for ax, method in zip(fig.axes, ('standard', 'curriculum', 'dynamic')):
    assert ax.get_xlim() == (0.0, hi)
    _check_stage_bars(ax, data[method], epochs, 0.0, hi)


def test_training_curves(tmp_path, figures):
  rows = []
  for e in range(12):
    row = {'epoch': e, 'train_loss': 2.0 / (e + 1),
           'train_accuracy': 0.3 + e / 20, 'steps_mean': 10 - e / 2,
           'c_t': max(0.5 - e * 0.05, 0.0)}
    if e % 4 == 0:
      row.update(test_clean=90.0 + e / 3, test_pgd20=40.0 + e)
    rows.append(row)
  path = tmp_path / 'curves.png'
  assert plots.training_curves(rows, path) == str(path)
  (fig,) = figures
  _check_png(path, fig, 15.0, 4.0)
  lines = _lines(fig)
  epochs = np.arange(12.0)
  expected = {
      'train loss': (epochs, [r['train_loss'] for r in rows], 'training'),
      'train accuracy': (epochs, [r['train_accuracy'] for r in rows],
                         'training'),
      'mean PGD steps': (epochs, [r['steps_mean'] for r in rows], 'attack'),
      'FOSC threshold c_t': (epochs, [r['c_t'] for r in rows], 'attack'),
      'test clean accuracy (%)': ([0, 4, 8], [90.0, 90.0 + 4 / 3,
                                              90.0 + 8 / 3],
                                  'test robustness'),
      'test PGD-20 accuracy (%)': ([0, 4, 8], [40.0, 44.0, 48.0],
                                   'test robustness'),
  }
  assert set(lines) == set(expected)
  titles = {}
  for label, (x, y, title) in expected.items():
    line, ax = lines[label]
    np.testing.assert_allclose(line.get_xdata(), x)
    np.testing.assert_allclose(line.get_ydata(), y)
    titles[label] = ax.get_title() or next(  # a twin axis has no title
        a.get_title() for a in fig.axes if a.get_title() and
        a.bbox.bounds == ax.bbox.bounds)
    assert titles[label] == title, label
  # The right-hand quantities are on twin axes with their own labels.
  assert lines['train accuracy'][1] is not lines['train loss'][1]
  assert lines['train accuracy'][1].get_ylabel() == 'train accuracy'
  assert lines['FOSC threshold c_t'][1].get_ylabel() == 'FOSC threshold c_t'
  assert lines['test clean accuracy (%)'][1].get_ylabel() == (
      'test accuracy (%)')
  assert lines['train loss'][1].get_xlabel() == 'epoch'


def test_training_curves_missing_keys(tmp_path, figures):
  rows = [{'epoch': 0, 'train_loss': 1.0, 'c_t': float('-inf')},
          {'train_loss': 0.5, 'steps_mean': None}]
  _check_png(plots.training_curves(rows, tmp_path / 'a.png'), figures[-1],
             5.0, 4.0)
  _check_png(plots.training_curves([], tmp_path / 'b.png'), figures[-1],
             5.0, 4.0)
  some, none = figures
  # Only the loss panel: c_t is never finite, steps_mean never set; the row
  # without an epoch is placed at its index.
  (ax,) = some.axes
  assert ax.get_title() == 'training'
  (line,) = ax.get_lines()
  assert line.get_label() == 'train loss'
  np.testing.assert_array_equal(line.get_xdata(), [0.0, 1.0])
  np.testing.assert_array_equal(line.get_ydata(), [1.0, 0.5])
  (ax,) = none.axes
  assert _texts(ax) == ['no metrics'] and not ax.get_lines()


def test_stage_fractions_counts_the_tail_in_the_last_bin():
  bins = np.linspace(0.0, 1.0, 5)  # [0, .25), [.25, .5), [.5, .75), [.75, 1]
  values = np.array([0.1, 0.3, 0.3, 0.9, 5.0, 7.0, np.nan, -np.inf, np.inf])
  fractions, beyond = plots.stage_fractions(values, bins)
  # 6 finite values: 0.1 | 0.3 0.3 | - | 0.9 5.0 7.0 (the last two clipped).
  np.testing.assert_allclose(fractions, [1 / 6, 2 / 6, 0.0, 3 / 6])
  assert beyond == 2 / 6
  fractions, beyond = plots.stage_fractions(np.array([np.nan]), bins)
  assert fractions.tolist() == [0.0] * 4 and beyond == 0.0


def test_fosc_histograms_x_max(tmp_path, figures):
  data = _fosc()
  data[0] = np.concatenate([data[0], [50.0, 80.0]])  # a long tail
  _check_png(plots.fosc_histograms(data, tmp_path / 'a.png', x_max=2.0),
             figures[-1], 7.0, 4.5)
  _check_png(plots.fosc_histograms_by_method(
      {'standard': data, 'dynamic': _fosc(1)}, tmp_path / 'b.png', x_max=2.0),
             figures[-1], 10.0, 4.5)
  epochs = [0, 6, 12, 21, 27]
  single, by_method = figures
  ax = single.axes[0]
  assert ax.get_xlim() == (0.0, 2.0)
  # The values above 2 are counted in the last bin, and the legend says so.
  _check_stage_bars(ax, data, epochs, 0.0, 2.0)
  last = _bars(ax)[0][2][-1]
  assert last == pytest.approx(np.mean(data[0] >= 2.0 - 2.0 / 50))
  beyond = np.mean(data[0] > 2.0)
  assert beyond > 0 and f'{beyond:.0%} > 2)' in _legend(ax)[0]
  for ax, d in zip(by_method.axes, (data, _fosc(1))):
    assert ax.get_xlim() == (0.0, 2.0)
    _check_stage_bars(ax, d, epochs, 0.0, 2.0)


def test_curves_by_method(tmp_path, figures):
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
  _check_png(path, figures[-1], 15.0, 4.0)
  _check_png(plots.curves_by_method({}, tmp_path / 'empty.png'), figures[-1],
             15.0, 4.0)
  fig, empty = figures
  assert fig.get_suptitle() == 'MNIST'
  steps, pgd20, clean = fig.axes
  assert [ax.get_ylabel() for ax in fig.axes] == [
      'mean PGD steps per example', 'test PGD-20 accuracy (%)',
      'test clean accuracy (%)']
  assert all(ax.get_xlabel() == 'epoch' for ax in fig.axes)
  epochs = np.arange(5.0)
  drawn = {(ax.get_ylabel(), l.get_label()): l for ax in fig.axes
           for l in ax.get_lines()}
  assert set(drawn) == {('mean PGD steps per example', 'standard'),
                        ('mean PGD steps per example', 'dynamic'),
                        ('test PGD-20 accuracy (%)', 'standard')}
  for (ylabel, run), y in (
      (('mean PGD steps per example', 'standard'), [10.0] * 5),
      (('mean PGD steps per example', 'dynamic'), 10.0 - epochs),
      (('test PGD-20 accuracy (%)', 'standard'), 80.0 + epochs)):
    np.testing.assert_array_equal(drawn[ylabel, run].get_xdata(), epochs)
    np.testing.assert_array_equal(drawn[ylabel, run].get_ydata(), y)
  dyn = drawn['mean PGD steps per example', 'dynamic']
  assert (dyn.get_color(), dyn.get_linestyle()) == ('C3', '--')
  assert drawn['mean PGD steps per example', 'standard'].get_color() == 'C0'
  assert _texts(clean) == ['no test_clean'] and not clean.get_lines()
  assert not _texts(steps) and not _texts(pgd20)
  assert [_texts(ax) for ax in empty.axes] == [
      ['no steps_mean'], ['no test_pgd20'], ['no test_clean']]


_LONG = ('FOSC of the training adversarial examples (0 = converged inner '
         'maximization; above the 90th percentile in the last bin) ') * 2


@pytest.mark.parametrize('draw', [
    lambda p: plots.fosc_histograms({0: np.arange(5.0)}, p, title=_LONG),
    lambda p: plots.fosc_histograms_by_method(
        {'standard': {0: np.arange(5.0)}, 'dynamic': {0: np.arange(5.0)}}, p,
        title=_LONG),
    lambda p: plots.training_curves(
        [{'epoch': 0, 'train_loss': 1.0}, {'epoch': 1, 'train_loss': 0.5}], p,
        title=_LONG),
    lambda p: plots.curves_by_method(
        {'standard': [{'epoch': 0, 'steps_mean': 10.0}]}, p, title=_LONG),
    lambda p: plots.cost_robustness({'standard': [(1.0, 50.0)]}, p,
                                    title=_LONG),
    lambda p: plots.thresholds_and_fosc({'dynamic': [(0, 0.5)]},
                                        {'dynamic': [(0, 0.3)]}, p,
                                        title=_LONG),
], ids=['fosc_histograms', 'fosc_histograms_by_method', 'training_curves',
        'curves_by_method', 'cost_robustness', 'thresholds_and_fosc'])
def test_long_titles_wrap_inside_the_figure(tmp_path, figures, draw):
  """A title wider than the figure is wrapped onto more lines instead of
  being cut off at both edges; short titles stay on one line (above)."""
  draw(tmp_path / 'f.png')
  (fig,) = figures
  renderer = fig.canvas.get_renderer()
  suptitle = fig._suptitle  # pylint: disable=protected-access
  titles = [t for t in [suptitle] + [a.title for a in fig.axes]
            if t is not None and _LONG.split()[0] in t.get_text()]
  assert len(titles) == 1
  (title,) = titles
  assert title.get_text().split() == _LONG.split()  # every word, in order
  assert title.get_text().count('\n') >= 1
  box = title.get_window_extent(renderer)
  assert 0 <= box.x0 and box.x1 <= fig.get_figwidth() * fig.dpi
