"""Figures and the final evaluation of a run.

:func:`make_figures` draws ``fosc_histograms.png`` and
``training_curves.png`` from the workdir; :func:`restore_model` restores a
run's newest checkpoint (with its saved :class:`~experiments.config.Config`)
and :func:`evaluate_and_report` attacks it and writes ``results.json`` /
``results.md`` (:func:`write_results`).
"""

import json
import math
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import jax
import numpy as np

from dynamic_at import checkpoint
from dynamic_at import data
from dynamic_at import evaluation
from dynamic_at import files
from dynamic_at import models
from dynamic_at import parallel
from dynamic_at import train
from experiments.config import ATTACK_SETS
from experiments.config import CHECKPOINT_DIR
from experiments.config import Config
from experiments.config import ConfigError
from experiments.config import FLAGS_FILE
from experiments.config import IMAGE_SHAPES
from experiments.config import RESULTS_FILE
from experiments.config import model_kwargs_of
from experiments.outputs import devices_description
from experiments.outputs import fosc_files
from experiments.outputs import is_main_process
from experiments.outputs import print_loud
from experiments.outputs import print_main
from experiments.outputs import read_metrics
from experiments.training import EVAL_KEY
from experiments.training import evaluation_batch_size
from experiments.training import initial_state
from experiments.training import model_variables

# How many test examples the eps = 1 gradient-masking check uses.
EPS_ONE_EXAMPLES = 1000
# Seconds between the final evaluation's progress lines.
PROGRESS_EVERY_S = 60.0

# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------


def make_figures(config: Config) -> List[str]:
  """Writes ``fosc_histograms.png`` and ``training_curves.png``."""
  if not is_main_process():
    return []
  from dynamic_at import plots  # pylint: disable=g-import-not-at-top
  written = []
  rows = read_metrics(config.workdir)
  title = f'{config.dataset} / {config.method}'
  if rows:
    written.append(plots.training_curves(
        rows, os.path.join(config.workdir, 'training_curves.png'),
        title=title))
  saved = fosc_files(config.workdir)
  if saved:
    fosc_by_epoch = {e: np.load(saved[e])
                     for e in plots.select_stages(list(saved))}
    written.append(plots.fosc_histograms(
        fosc_by_epoch, os.path.join(config.workdir, 'fosc_histograms.png'),
        title=f'FOSC of training adversarial examples ({title})'))
  for path in written:
    print_main(f'Wrote {path}')
  return written


# --------------------------------------------------------------------------
# Result files
# --------------------------------------------------------------------------


def _columns(white: Mapping[str, float],
             black: Mapping[str, float]) -> List[str]:
  order = list(evaluation.ATTACKS) + [evaluation.WORST_CASE]
  names = list(white) + [a for a in black if a not in white]
  return sorted(names, key=lambda a: (order.index(a) if a in order
                                      else len(order), a))


def results_markdown(results: Mapping[str, Any], *, title: str) -> str:
  """A markdown table of the accuracies: rows white-box / black-box, columns
  the attacks (2 decimals), then the number of evaluation examples, the
  training time (``wall_time_s``, the run's own, possibly on other devices),
  the evaluation time (``eval_wall_time_s``) and the evaluation's devices.

  Args:
    results: :func:`dynamic_at.evaluation.evaluate`'s result or the dict
      given to :func:`write_results`.
    title: the heading.

  Returns:
    Markdown text ending with a newline.
  """
  white = results.get('white_box') or {}
  black = results.get('black_box')
  cols = _columns(white, black or {})

  def row(label, accs):
    cells = [f'{float(accs[c]):.2f}' if c in accs and accs[c] is not None
             else '-' for c in cols]
    return f'| {label} | ' + ' | '.join(cells) + ' |'

  lines = [f'## {title}', '',
           '| accuracy (%) | ' + ' | '.join(
               evaluation.DISPLAY_NAMES.get(c, c) for c in cols) + ' |',
           '|---|' + '---:|' * len(cols),
           row('white-box', white)]
  if black is not None:
    lines.append(row('black-box', black))
  lines += ['', f'Evaluated on {results.get("num_eval_examples", "?")} '
            'examples.']
  cascaded = results.get('cascaded')
  if cascaded is None and (results.get('flags') or {}).get('attack_cascade'):
    cascaded = [a for a in white if a in evaluation.CASCADE_ATTACKS]
  if cascaded:
    names = ', '.join(evaluation.DISPLAY_NAMES.get(a, a) for a in cascaded)
    lines.append(f'{names} ran as a cascade: each on the examples every '
                 'attack before it left correct, so their columns are '
                 'cumulative.')
  if results.get('wall_time_s') is not None:
    lines.append('Training time (as the run recorded it): '
                 f'{float(results["wall_time_s"]):.1f} s.')
  if results.get('eval_wall_time_s') is not None:
    lines.append(f'Evaluation time: {float(results["eval_wall_time_s"]):.1f} '
                 's.')
  if results.get('devices') is not None:
    lines.append(f'Evaluated on: {results["devices"]}.')
  return '\n'.join(lines) + '\n'


def _jsonable(obj: Any) -> Any:
  """Plain-JSON copy: numpy/jax values to Python, ``per_example`` dropped,
  non-finite floats as strings (``'nan'``, ``'inf'``, ``'-inf'``)."""
  if isinstance(obj, Mapping):
    return {str(k): _jsonable(v) for k, v in obj.items()
            if k != 'per_example'}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, jax.Array):
    obj = np.asarray(obj)
  if isinstance(obj, np.ndarray):
    return _jsonable(obj.tolist())
  if isinstance(obj, np.generic):
    obj = obj.item()
  if isinstance(obj, float) and not math.isfinite(obj):
    return str(obj)
  if obj is None or isinstance(obj, (bool, int, float, str)):
    return obj
  return str(obj)


def write_results(path_json: 'os.PathLike[str] | str',
                  results_dict: Mapping[str, Any]) -> Tuple[str, str]:
  """Writes the results as JSON and as a markdown table beside it.

  Both files are written atomically (a temporary file in the same folder,
  then ``os.replace``), so a reader never sees a half-written file and an
  existing file is replaced whole. Numpy and JAX values are converted to
  Python ones; ``'per_example'`` entries (at any depth) are left out. Call it
  from one process only.

  Args:
    path_json: where the JSON goes; the markdown gets the same stem and
      ``.md``.
    results_dict: e.g. ``{'dataset', 'method', 'white_box', 'black_box',
      'num_eval_examples', 'flags', 'wall_time_s', 'devices'}``.

  Returns:
    ``(json_path, markdown_path)``.
  """
  path_json = os.fspath(path_json)
  clean = _jsonable(results_dict)
  path_md = os.path.splitext(path_json)[0] + '.md'
  title_parts = [str(clean[k]) for k in ('dataset', 'method') if clean.get(k)]
  title = (' / '.join(title_parts) if title_parts else
           os.path.splitext(os.path.basename(path_json))[0])
  files.atomic_write_text(path_json,
                          json.dumps(clean, indent=2, sort_keys=True) + '\n')
  files.atomic_write_text(path_md, results_markdown(clean, title=title))
  return path_json, path_md


def keep_previous_results(path_json: 'os.PathLike[str] | str'
                          ) -> Optional[str]:
  """Moves an existing results file (and its ``.md``) aside before a new
  evaluation replaces it: ``results.json`` -> ``results.1.json``, the first
  number free for both files. A re-evaluation (``experiments.evaluate``,
  e.g. with other attacks or fewer examples) thus never loses the training
  run's own results.

  Returns:
    The path the old JSON now has, or ``None`` when there was none.
  """
  path_json = os.fspath(path_json)
  if not os.path.exists(path_json):
    return None
  stem = os.path.splitext(path_json)[0]
  n = 1
  while (os.path.exists(f'{stem}.{n}.json') or
         os.path.exists(f'{stem}.{n}.md')):
    n += 1
  kept = f'{stem}.{n}.json'
  os.replace(path_json, kept)
  if os.path.exists(stem + '.md'):
    os.replace(stem + '.md', f'{stem}.{n}.md')
  return kept


# --------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------


def load_saved_config(workdir: str, flag: str = 'workdir') -> Config:
  """The :class:`Config` of the run in ``workdir`` (from its flags.json)."""
  path = os.path.join(workdir, FLAGS_FILE)
  try:
    with open(path) as f:
      return Config.from_dict(json.load(f))
  except (OSError, ValueError, TypeError) as e:
    raise ConfigError(f'--{flag}={workdir}: cannot read the run\'s '
                      f'{FLAGS_FILE} ({e}); is it a run folder?') from e


def restore_model(workdir: str, image_shape: Tuple[int, ...], mesh, *,
                  flag: str = 'workdir'
                  ) -> Tuple[Config, train.TrainState, Dict[str, Any]]:
  """Restores the newest checkpoint of the run in ``workdir``.

  Returns:
    ``(saved config, state, checkpoint meta)``.
  """
  config = load_saved_config(workdir, flag)
  ckpt_dir = os.path.join(workdir, CHECKPOINT_DIR)
  if not os.path.isdir(ckpt_dir):
    raise ConfigError(f'--{flag}={workdir} has no {CHECKPOINT_DIR}/ folder.')
  template = parallel.replicate(initial_state(config, image_shape, 1), mesh)
  ckpt = checkpoint.Checkpointer(ckpt_dir, read_only=True)
  try:
    if ckpt.latest_step() is None:
      raise ConfigError(f'--{flag}={workdir} has no checkpoint.')
    state, _, meta = ckpt.restore(template)
  finally:
    ckpt.close()
  total = config.num_epochs * meta.get('steps_per_epoch', 0)
  if meta.get('step', 0) < total:
    print_loud(f'WARNING: {workdir} is not fully trained (step '
               f'{meta.get("step")} of {total}); evaluating its newest '
               'checkpoint.')
  return config, state, meta


MODEL_INFO_FILE = 'model_info.json'


def _commit() -> Optional[str]:
  """The repository's commit (``+dirty`` with uncommitted changes), or
  ``None`` outside a git checkout."""
  import subprocess  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    head = subprocess.run(['git', '-C', repo, 'rev-parse', 'HEAD'],
                          capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()
    dirty = subprocess.run(['git', '-C', repo, 'status', '--porcelain',
                            '--untracked-files=no'], capture_output=True,
                           text=True, check=True, timeout=30).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return head + ('+dirty' if dirty else '')


def _command(argv) -> str:
  """The command line of this process as a user would type it:
  ``python -m experiments.evaluate --workdir=...`` for an entry point."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  prog = argv[0]
  rel = os.path.relpath(os.path.abspath(prog), repo)
  if rel.endswith('.py') and not rel.startswith('..'):
    prog = '-m ' + rel[:-3].replace(os.sep, '.')
  return ' '.join(['python', prog] + list(argv[1:]))


def write_model_info(config: Config, out: Mapping[str, Any]) -> str:
  """Writes the RobustBench-style ``model_info.json`` of an evaluation
  (:func:`dynamic_at.evaluation.model_info`) beside its ``results.json``,
  with the evaluation's commit and command."""
  import sys  # pylint: disable=g-import-not-at-top
  architecture = models.model_spec(config.model).architecture(
      model_kwargs_of(config))
  info = evaluation.model_info(
      out, dataset=config.dataset, eps=config.eps, architecture=architecture,
      name=os.path.basename(os.path.normpath(config.workdir)),
      extra={'method': config.method, 'attack_set': config.attacks,
             'evaluation_commit': _commit(),
             'evaluation_command': _command(sys.argv)})
  path = os.path.join(config.workdir, MODEL_INFO_FILE)
  return files.atomic_write(
      path, lambda f: json.dump(info, f, indent=2, sort_keys=False))


def evaluate_and_report(config: Config, state: train.TrainState,
                        test_ds: data.Dataset, mesh, *,
                        meta: Mapping[str, Any],
                        source: Optional[Tuple[str, train.TrainState]] = None
                        ) -> Dict[str, Any]:
  """Final evaluation: white-box (and black-box) attacks, sanity checks,
  ``results.json`` / ``results.md`` and a printed table.

  Args:
    config: the run's config (eps, dataset, method, eval settings).
    state: the trained state.
    test_ds: the evaluation examples.
    mesh: device mesh.
    meta: the checkpoint's metadata (training wall time, data source).
    source: ``(source workdir, source state)`` for black-box attacks.

  Returns:
    The dictionary written to ``results.json``.
  """
  start = time.time()
  key = jax.random.fold_in(jax.random.key(config.seed), EVAL_KEY)
  batch_size = evaluation_batch_size(config, test_ds.num_examples)
  src = None
  if source is not None:
    src = (source[1].apply_fn, model_variables(source[1]))
  print_main(f'Evaluating on {test_ds.num_examples:,} test examples '
             f'(eps={config.eps:.6g}, attacks={config.attacks}'
             f'{", black-box source " + source[0] if source else ""}) ...')
  attacks = ATTACK_SETS[config.attacks]
  checks = evaluation.model_checks(
      state.apply_fn, model_variables(state), test_ds.images[:batch_size],
      test_ds.labels[:batch_size], attacks)
  for w in checks:
    print_loud(w)
  results = evaluation.evaluate(
      state.apply_fn, model_variables(state), test_ds.images, test_ds.labels,
      eps=config.eps, key=key, batch_size=batch_size, mesh=mesh,
      attacks=attacks, source=src,
      cascade=config.attack_cascade or config.attacks == 'autoattack',
      progress=progress_printer(start, PROGRESS_EVERY_S))
  if results['cascaded']:
    for line in evaluation.cumulative_log(results):
      print_main(f'  {line}')
  n1 = min(EPS_ONE_EXAMPLES, test_ds.num_examples)
  eps_one = evaluation.accuracy_at_eps_one(
      state.apply_fn, model_variables(state), test_ds.images[:n1],
      test_ds.labels[:n1], key, evaluation_batch_size(config, n1), mesh)
  warnings = evaluation.sanity_warnings(results, eps_one_accuracy=eps_one)
  for w in warnings:
    print_loud(w)
  warnings = checks + warnings
  out = {
      'dataset': config.dataset,
      'method': config.method,
      'white_box': results['white_box'],
      'black_box': results['black_box'],
      'black_box_source': source[0] if source else None,
      'num_eval_examples': results['num_eval_examples'],
      'cascaded': results['cascaded'],
      'eps_one_pgd20_accuracy': eps_one,
      'sanity_warnings': warnings,
      'flags': config.to_dict(),
      'wall_time_s': meta.get('train_time_s'),
      'eval_wall_time_s': time.time() - start,
      'devices': devices_description(),
      'data_source': {'train': meta.get('train_data_source'),
                      'test': test_ds.source},
      'num_train_examples': meta.get('num_train_examples'),
      'step': meta.get('step'),
  }
  if is_main_process():
    kept = keep_previous_results(os.path.join(config.workdir, RESULTS_FILE))
    if kept:
      print(f'Kept the previous {RESULTS_FILE} as {kept}', flush=True)
    json_path, _ = write_results(
        os.path.join(config.workdir, RESULTS_FILE), out)
    write_model_info(config, out)
    print(results_markdown(
        out, title=f'{config.dataset} / {config.method}'), flush=True)
    print(f'Wrote {json_path}', flush=True)
  return out


def progress_printer(start: float,
                     every_s: float) -> Callable[[str], None]:
  """A ``progress`` callback for :func:`dynamic_at.evaluation.evaluate`
  that prints its line with the seconds since ``start``, at most once every
  ``every_s`` seconds (an hour-long evaluation is not silent)."""
  last = start

  def show(line: str) -> None:
    nonlocal last
    now = time.time()
    if now - last >= every_s:
      last = now
      print_main(f'  {line} ({now - start:.0f} s)')

  return show


def export_weights(workdir: str, path: str) -> str:
  """Writes the newest checkpoint's parameters and BatchNorm statistics of
  the run in ``workdir`` to the weights file ``path``
  (:func:`dynamic_at.weights.save_weights`), with the run's flags, training
  facts and, if evaluated, its white-box results as ``info``."""
  from dynamic_at import weights  # pylint: disable=g-import-not-at-top
  config = load_saved_config(workdir)
  shape = IMAGE_SHAPES[config.dataset]
  _, state, meta = restore_model(workdir, shape, parallel.make_mesh())
  results = {}
  try:
    with open(os.path.join(workdir, RESULTS_FILE)) as f:
      saved = json.load(f)
    if saved.get('step') == meta.get('step'):
      results = {k: saved.get(k) for k in ('white_box', 'black_box',
                                           'num_eval_examples', 'devices')}
  except (OSError, ValueError):
    pass
  flags_dict = config.to_dict()
  for key in ('workdir', 'data_dir', 'source_workdir'):
    if flags_dict.get(key):
      flags_dict[key] = os.path.basename(flags_dict[key])
  model_kwargs = model_kwargs_of(config)
  info = {'dataset': config.dataset, 'method': config.method,
          'input_shape': list(shape), 'flags': flags_dict,
          'step': meta.get('step'), 'train_time_s': meta.get('train_time_s'),
          'num_train_examples': meta.get('num_train_examples'),
          'results': results}
  return weights.save_weights(path, model_variables(state), model=config.model,
                              model_kwargs=model_kwargs, info=info)


def restore_source(config: Config, image_shape: Tuple[int, ...], mesh
                   ) -> Optional[Tuple[str, train.TrainState]]:
  """The black-box source model of ``--source_workdir``, if given."""
  if not config.source_workdir:
    return None
  _, state, _ = restore_model(config.source_workdir, image_shape, mesh,
                              flag='source_workdir')
  return config.source_workdir, state
