"""Figures of Wang et al. (ICML 2019): FOSC histograms and training curves.

* :func:`fosc_histograms`: the paper's "FOSC view" -- the distribution of the
  FOSC of the training adversarial examples at several stages of training.
* :func:`fosc_histograms_by_method`: the same, one panel per training method
  (Standard, Curriculum, Dynamic) on a shared x axis.
* :func:`training_curves`: per-epoch loss/accuracy, PGD steps and ``c_t``,
  and test robustness.
* :func:`curves_by_method`: per-epoch metrics (mean PGD steps, test
  robustness) of several runs, one line per run.
* :func:`cost_robustness`: one point per run, robustness against training
  cost, one colour per group.
* :func:`thresholds_and_fosc`: per epoch, FOSC thresholds beside FOSC
  statistics (e.g. Dynamic's ``c_t`` beside Standard's median FOSC).

Every function writes a PNG (matplotlib's Agg renderer, no pyplot and no
display needed) and returns its path. matplotlib is imported inside the
functions, so importing :mod:`dynamic_at` stays light.
"""

import math
import textwrap
from typing import Any, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from dynamic_at import files
from dynamic_at import methods

__all__ = ('cost_robustness', 'curves_by_method', 'fosc_histograms',
           'fosc_histograms_by_method', 'select_stages', 'thresholds_and_fosc',
           'training_curves')

PathLike = 'os.PathLike[str] | str'

MAX_STAGES = 5


def _xy(points: Any) -> np.ndarray:
  """``(x, y)`` points as a float64 ``[N, 2]`` array."""
  return np.asarray(points, np.float64).reshape(-1, 2)


def _new_figure(width: float, height: float) -> Any:
  """A figure with an Agg canvas, outside pyplot's global state."""
  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height), dpi=100, layout='constrained')
  FigureCanvasAgg(fig)
  return fig


def _new_axes(width: float, height: float) -> Tuple[Any, Any]:
  """A :func:`_new_figure` with one pair of axes."""
  fig = _new_figure(width, height)
  return fig, fig.subplots()


def _coloured(groups: Mapping[str, Any],
              first: int = 0) -> Iterator[Tuple[str, str, np.ndarray,
                                                np.ndarray]]:
  """``(colour, label, x, y)`` of each ``label -> (x, y) points`` entry, in
  order, with matplotlib's colour cycle from ``C<first>``."""
  for i, (label, points) in enumerate(groups.items(), first):
    xy = _xy(points)
    yield f'C{i % 10}', label, xy[:, 0], xy[:, 1]


def _fitted(fig: Any, title: Any) -> Any:
  """Wraps the title (a Text of ``fig``, the figure's last addition before
  it is saved) onto more lines where it would reach past the figure's edges
  and be cut off. A title is centred: over the figure, or over its axes."""
  text = title.get_text()
  if not text:
    return title
  fig.canvas.draw()  # lays the figure out: where its axes end up
  box = title.get_window_extent(fig.canvas.get_renderer())
  centre = (box.x0 + box.x1) / 2
  room = 0.96 * 2 * min(centre, fig.get_figwidth() * fig.dpi - centre)
  if box.width > room:
    title.set_text(textwrap.fill(text, max(10, int(len(text) * room /
                                                   box.width))))
  return title


def _save(fig: Any, path: PathLike) -> str:
  """Writes ``fig`` as a PNG atomically and returns the path."""
  return files.atomic_write(path, lambda f: fig.savefig(f, format='png'),
                            binary=True)


def select_stages(epochs: Sequence[int],
                  max_stages: int = MAX_STAGES) -> List[int]:
  """Up to ``max_stages`` evenly spaced epochs (first and last included)."""
  epochs = sorted(int(e) for e in epochs)
  if len(epochs) <= max_stages:
    return epochs
  idx = np.unique(np.round(np.linspace(0, len(epochs) - 1, max_stages)))
  return [epochs[int(i)] for i in idx]


def _finite(values: Any) -> np.ndarray:
  v = np.asarray(values, np.float64).ravel()
  return v[np.isfinite(v)]


def _common_range(arrays: Sequence[np.ndarray],
                  x_max: Optional[float] = None) -> Tuple[float, float]:
  """``[min(0, min), max]`` over all values (``max`` = ``x_max`` if given); a
  non-empty interval."""
  nonempty = [a for a in arrays if a.size]
  if not nonempty:
    return 0.0, 1.0 if x_max is None else float(x_max)
  lo = min(0.0, min(float(a.min()) for a in nonempty))
  hi = (max(float(a.max()) for a in nonempty) if x_max is None
        else float(x_max))
  if hi <= lo:
    hi = lo + 1.0
  return lo, hi


def stage_fractions(values: Any, bins: np.ndarray) -> Tuple[np.ndarray, float]:
  """Fractions of the finite ``values`` per bin, those above the last edge
  counted in the last bin.

  Returns:
    ``(fractions, beyond)``: one fraction per bin (summing to 1 when any value
    is finite) and the fraction of values above ``bins[-1]``.
  """
  v = _finite(values)
  if not v.size:
    return np.zeros(len(bins) - 1), 0.0
  beyond = float(np.mean(v > bins[-1]))
  counts, _ = np.histogram(np.clip(v, bins[0], bins[-1]), bins=bins)
  return counts / v.size, beyond


def _draw_stages(ax: Any, fosc_by_epoch: Mapping[int, Any],
                 stages: Sequence[int], bins: np.ndarray) -> None:
  """Overlaid normalised histograms of the selected stages on ``ax``; values
  beyond the last bin edge are counted in the last bin (the legend says how
  many)."""
  # pylint: disable=g-import-not-at-top
  from matplotlib import colormaps
  cmap = colormaps['viridis']
  for i, epoch in enumerate(stages):
    v = _finite(fosc_by_epoch[epoch])
    color = cmap(i / max(len(stages) - 1, 1) * 0.9)
    if not v.size:
      ax.plot([], [], color=color, label=f'epoch {epoch} (no data)')
      continue
    fractions, beyond = stage_fractions(v, bins)
    label = f'epoch {epoch} (mean {v.mean():.3g}, n={v.size}'
    label += f'; {beyond:.0%} > {bins[-1]:.3g})' if beyond else ')'
    centres = (bins[:-1] + bins[1:]) / 2
    ax.hist(centres, bins=bins, weights=fractions, color=color, alpha=0.25)
    ax.hist(centres, bins=bins, weights=fractions, color=color,
            histtype='step', linewidth=1.5, label=label)
  ax.set_xlabel('FOSC of training adversarial examples')
  ax.set_ylabel('fraction of examples')
  ax.grid(alpha=0.3)
  ax.legend(fontsize='small')


def fosc_histograms(fosc_by_epoch: Mapping[int, Any], path: PathLike, *,
                    title: str = '', max_stages: int = MAX_STAGES,
                    num_bins: int = 50, x_max: Optional[float] = None) -> str:
  """The FOSC view: histograms of the training adversarial examples' FOSC at
  several stages of training, overlaid on a common x range.

  Each histogram is normalised to fractions of its stage's examples, so stages
  of different sizes compare. With more than ``max_stages`` epochs, that many
  evenly spaced ones (first and last included) are drawn.

  Args:
    fosc_by_epoch: epoch -> FOSC values of that epoch's adversarial examples.
    path: the PNG to write.
    title: the figure's title.
    max_stages: most stages drawn.
    num_bins: histogram bins over the common range.
    x_max: the right end of the x axis (FOSC has a long tail); larger values
      are counted in the last bin. Default: the largest value.

  Returns:
    ``path``.
  """
  stages = select_stages(fosc_by_epoch, max_stages)
  lo, hi = _common_range([_finite(fosc_by_epoch[e]) for e in stages], x_max)
  fig, ax = _new_axes(7.0, 4.5)
  if stages:
    _draw_stages(ax, fosc_by_epoch, stages, np.linspace(lo, hi, num_bins + 1))
  else:
    ax.text(0.5, 0.5, 'no FOSC data', ha='center', va='center',
            transform=ax.transAxes)
  ax.set_xlim(lo, hi)
  _fitted(fig, ax.set_title(
      title or 'FOSC of training adversarial examples by epoch'))
  return _save(fig, path)


def _method_key(name: str) -> Tuple[int, str]:
  """Orders methods as the registry lists them (others after, by name)."""
  order = tuple(methods.METHODS)
  low = name.lower()
  return (order.index(low) if low in order else len(order), name)


def fosc_histograms_by_method(fosc_by_method: Mapping[str, Mapping[int, Any]],
                              path: PathLike, *, title: str = '',
                              max_stages: int = MAX_STAGES,
                              num_bins: int = 50,
                              x_max: Optional[float] = None) -> str:
  """Side-by-side FOSC views, one panel per method, on a shared x axis.

  Panels are ordered Standard, Curriculum, Dynamic (then any other method);
  each panel is :func:`fosc_histograms`' plot of that method, and all use the
  same bins, so the methods' convergence compares at a glance.

  Args:
    fosc_by_method: method name -> (epoch -> FOSC values).
    path: the PNG to write.
    title: the figure's title.
    max_stages: most stages drawn per panel.
    num_bins: histogram bins over the common range.
    x_max: as in :func:`fosc_histograms`.

  Returns:
    ``path``.
  """
  methods = sorted(fosc_by_method, key=_method_key)
  stages = {m: select_stages(fosc_by_method[m], max_stages) for m in methods}
  lo, hi = _common_range([_finite(fosc_by_method[m][e])
                          for m in methods for e in stages[m]], x_max)
  bins = np.linspace(lo, hi, num_bins + 1)
  n = max(len(methods), 1)
  fig = _new_figure(5.0 * n, 4.5)
  axes = fig.subplots(1, n, sharex=True, squeeze=False)[0]
  for ax, method in zip(axes, methods):
    if stages[method]:
      _draw_stages(ax, fosc_by_method[method], stages[method], bins)
    ax.set_title(method.capitalize())
  if not methods:
    axes[0].text(0.5, 0.5, 'no FOSC data', ha='center', va='center',
                 transform=axes[0].transAxes)
  axes[0].set_xlim(lo, hi)
  _fitted(fig, fig.suptitle(
      title or 'FOSC of training adversarial examples'))
  return _save(fig, path)


def _series(rows: Sequence[Mapping[str, Any]],
            key: str) -> Tuple[np.ndarray, np.ndarray]:
  """``(epochs, values)`` of the rows that hold a finite ``key``."""
  xs, ys = [], []
  for i, row in enumerate(rows):
    value = row.get(key)
    if value is None:
      continue
    try:
      value = float(value)
    except (TypeError, ValueError):
      continue
    if not math.isfinite(value):
      continue
    epoch = row.get('epoch')
    xs.append(i if epoch is None else float(epoch))
    ys.append(value)
  return np.asarray(xs), np.asarray(ys)


def training_curves(rows: Sequence[Mapping[str, Any]], path: PathLike, *,
                    title: str = '') -> str:
  """Per-epoch training curves.

  Panels (each drawn only if some row holds its data):

  1. ``train_loss`` and, on a twin axis, ``train_accuracy``;
  2. ``steps_mean`` (mean PGD steps per example) and, on a twin axis, ``c_t``
     (the FOSC threshold; non-finite values, e.g. Standard's ``-inf``, are
     skipped);
  3. ``test_clean`` and ``test_pgd20`` accuracies.

  Rows may miss any key; ``epoch`` defaults to the row's index.

  Args:
    rows: one dict of metrics per epoch.
    path: the PNG to write.
    title: the figure's title.

  Returns:
    ``path``.
  """
  panels = []
  for panel_title, left, right in (
      ('training', ('train_loss',), ('train_accuracy',)),
      ('attack', ('steps_mean',), ('c_t',)),
      ('test robustness', ('test_clean', 'test_pgd20'), ())):
    left = [(k, _series(rows, k)) for k in left]
    right = [(k, _series(rows, k)) for k in right]
    left = [(k, s) for k, s in left if s[0].size]
    right = [(k, s) for k, s in right if s[0].size]
    if left or right:
      panels.append((panel_title, left, right))

  labels = {
      'train_loss': 'train loss', 'train_accuracy': 'train accuracy',
      'steps_mean': 'mean PGD steps', 'c_t': 'FOSC threshold c_t',
      'test_clean': 'test clean accuracy (%)',
      'test_pgd20': 'test PGD-20 accuracy (%)',
  }
  n = max(len(panels), 1)
  fig = _new_figure(5.0 * n, 4.0)
  axes = fig.subplots(1, n, squeeze=False)[0]
  if not panels:
    axes[0].text(0.5, 0.5, 'no metrics', ha='center', va='center',
                 transform=axes[0].transAxes)
  colors = iter(['C0', 'C1', 'C2', 'C3', 'C4', 'C5', 'C6', 'C7'])
  for ax, (panel_title, left, right) in zip(axes, panels):
    handles = []
    for k, (x, y) in left:
      handles += ax.plot(x, y, marker='.', color=next(colors), label=labels[k])
    if len(left) > 1 and all(k.startswith('test_') for k, _ in left):
      ax.set_ylabel('test accuracy (%)')
    elif left:
      ax.set_ylabel(' / '.join(labels[k] for k, _ in left))
    if right:
      twin = ax.twinx() if left else ax
      for k, (x, y) in right:
        handles += twin.plot(x, y, marker='.', linestyle='--',
                             color=next(colors), label=labels[k])
      twin.set_ylabel(' / '.join(labels[k] for k, _ in right))
    ax.set_title(panel_title)
    ax.set_xlabel('epoch')
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize='small', loc='best')
  if title:
    _fitted(fig, fig.suptitle(title))
  return _save(fig, path)


def curves_by_method(rows_by_run: Mapping[str, Sequence[Mapping[str, Any]]],
                     path: PathLike, *,
                     keys: Sequence[Tuple[str, str]] = (
                         ('steps_mean', 'mean PGD steps per example'),
                         ('test_pgd20', 'test PGD-20 accuracy (%)'),
                         ('test_clean', 'test clean accuracy (%)')),
                     styles: Optional[Mapping[str, Mapping[str, Any]]] = None,
                     title: str = '') -> str:
  """Per-epoch metrics of several runs: one panel per key, one line per run.

  Args:
    rows_by_run: run label -> its per-epoch rows (``metrics.jsonl``); a run
      without a key is left out of that panel.
    path: the PNG to write.
    keys: ``(metric key, axis label)`` per panel.
    styles: run label -> matplotlib line keywords (e.g. ``color``,
      ``linestyle``) replacing the defaults for that run.
    title: the figure's title.

  Returns:
    ``path``.
  """
  fig = _new_figure(5.0 * max(len(keys), 1), 4.0)
  axes = fig.subplots(1, max(len(keys), 1), squeeze=False)[0]
  runs = list(rows_by_run)
  for ax, (key, label) in zip(axes, keys):
    drawn = 0
    for i, run in enumerate(runs):
      x, y = _series(rows_by_run[run], key)
      if x.size:
        style = dict(marker='.', markersize=3, color=f'C{i % 10}')
        style.update((styles or {}).get(run, {}))
        ax.plot(x, y, label=run, **style)
        drawn += 1
    if not drawn:
      ax.text(0.5, 0.5, f'no {key}', ha='center', va='center',
              transform=ax.transAxes)
    else:
      ax.legend(fontsize='small', loc='best')
    ax.set_xlabel('epoch')
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  if title:
    _fitted(fig, fig.suptitle(title))
  return _save(fig, path)


def cost_robustness(points: Mapping[str, Sequence[Tuple[float, float]]],
                    path: PathLike, *,
                    xlabel: str = 'attack gradient evaluations in training',
                    ylabel: str = 'test PGD-20 accuracy (%)',
                    title: str = '') -> str:
  """One point per run, one colour per group: a cost-robustness scatter.

  Args:
    points: group (e.g. a variant) -> ``(cost, accuracy)`` of each of its
      runs, in the order drawn; colours follow the mapping's order.
    path: the PNG to write.
    xlabel, ylabel, title: the axis labels and the title.

  Returns:
    ``path``.
  """
  fig, ax = _new_axes(6.5, 4.5)
  for colour, group, x, y in _coloured(points):
    ax.scatter(x, y, color=colour, label=group, s=36, alpha=0.85)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  if points:
    ax.legend(fontsize='small', loc='best')
  if title:
    _fitted(fig, ax.set_title(title))
  return _save(fig, path)


def thresholds_and_fosc(thresholds: Mapping[str, Sequence[Tuple[int, float]]],
                        fosc: Mapping[str, Sequence[Tuple[int, float]]],
                        path: PathLike, *,
                        ylabel: str = 'FOSC', title: str = '') -> str:
  """Per epoch, FOSC thresholds (dashed) beside FOSC statistics (solid).

  Args:
    thresholds: label -> ``(epoch, c_t)`` points (e.g. each Dynamic
      variant's schedule), drawn as dashed step lines.
    fosc: label -> ``(epoch, value)`` points (e.g. the median FOSC of a
      Standard run's training examples), drawn as solid lines with markers.
    path: the PNG to write.
    ylabel, title: the y label and the title.

  Returns:
    ``path``.
  """
  fig, ax = _new_axes(9.0, 4.5)
  for colour, label, x, y in _coloured(thresholds):
    ax.plot(x, y, linestyle='--', drawstyle='steps-post', color=colour,
            label=label)
  for colour, label, x, y in _coloured(fosc, first=len(thresholds)):
    ax.plot(x, y, marker='o', markersize=4, color=colour, label=label)
  ax.set_xlabel('epoch')
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.xaxis.get_major_locator().set_params(integer=True)
  if thresholds or fosc:
    ax.legend(fontsize='small', loc='upper left', bbox_to_anchor=(1.02, 1.0))
  if title:
    _fitted(fig, ax.set_title(title))
  return _save(fig, path)
