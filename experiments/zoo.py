"""The model zoo's command line: add a trained run, list the models, check.

``add`` turns a finished training workdir into a zoo model
(:mod:`dynamic_at.zoo`): it exports the newest checkpoint's parameters and
BatchNorm statistics (float32) to ``<zoo_dir>/<dataset>/<name>/weights.msgpack``,
measures the check (clean and PGD-20 correct counts on the first 500 test
images, key ``jax.random.key(--check_key_seed)``) on the file it wrote,
collects the run's evaluations (every ``results*.json`` of the workdir at the
checkpoint's step; ``--evaluate`` first runs the paper's evaluation with
``--attacks`` if there is none), and writes ``manifest.json`` and a
RobustBench-style ``model_info.json`` beside the weights::

  python -m experiments.zoo add --workdir=runs/mnist_standard_seed0 \\
      --name=mnist/standard_seed0 --data_dir=../shared/data/mnist \\
      --train_command="python -m experiments.mnist --flagfile=..." \\
      --train_commit=1e58847 --train_hardware="1 core of a 2-vCPU AMD EPYC"

``list`` prints the table of models with their headline numbers; ``check``
re-measures every model's check and compares it with its manifest (what
``tests/test_zoo.py`` does)::

  python -m experiments.zoo list
  python -m experiments.zoo check --data_dir=../shared/data/mnist

Evaluating a zoo model with any attacks is ``python -m experiments.evaluate
--model=NAME --workdir=OUT [--attacks=...]``.
"""

import datetime
import glob
import json
import os
import re
import sys
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Sequence

from absl import app
from absl import flags
import jax
import numpy as np

from dynamic_at import data
from dynamic_at import evaluation
from dynamic_at import files
from dynamic_at import models
from dynamic_at import weights
from dynamic_at import zoo
from experiments import common
from experiments import config as config_lib
from experiments import reporting
from experiments import training

_NAME = flags.DEFINE_string(
    'name', None, 'add: the model\'s zoo name, <dataset>/<name> (default: '
    '<dataset>/<basename of --workdir>).')
ZOO_DIR = flags.DEFINE_string(
    'zoo_dir', None, 'The zoo\'s folder (default: the repository\'s '
    'models/); also read by experiments.evaluate --model.')
_TRAIN_COMMAND = flags.DEFINE_string(
    'train_command', None, 'add: the command that trained the run (default: '
    'one rebuilt from its flags.json, marked as rebuilt).')
_TRAIN_COMMIT = flags.DEFINE_string(
    'train_commit', None, 'add: the commit the run was trained at (the run '
    'does not record it).')
_TRAIN_HARDWARE = flags.DEFINE_string(
    'train_hardware', None, 'add: what the run was trained on (the run does '
    'not record it).')
_CHECK_KEY_SEED = flags.DEFINE_integer(
    'check_key_seed', 0, 'add: the seed of the check\'s key, '
    'jax.random.key(seed), recorded in the manifest.')
_EVALUATE = flags.DEFINE_bool(
    'evaluate', False, 'add: if the workdir holds no evaluation at its '
    'checkpoint\'s step, run experiments.evaluate on it first (with '
    '--attacks and --num_eval_examples).')
_FORCE = flags.DEFINE_bool('force', False,
                           'add: replace a model of the same name.')
_ALLOW_UNFINISHED = flags.DEFINE_bool(
    'allow_unfinished', False, 'add: accept a run that has not reached its '
    'last step (for tests and trials; the manifest says so).')

COMMANDS = ('add', 'list', 'check')


class ZooCommandError(ValueError):
  """A zoo command that cannot run; the message names the flag or file."""


# --------------------------------------------------------------------------
# add
# --------------------------------------------------------------------------


def rebuilt_command(config: config_lib.Config) -> str:
  """A command that trains the run of ``config``: its main with every flag
  that defines the trajectory and differs from the dataset's defaults
  (paths as their base names)."""
  defaults = config_lib.Config(dataset=config.dataset, workdir='', **{
      k: (tuple(int(e) for e in v) if isinstance(v, list) else v)
      for k, v in config_lib.DATASET_DEFAULTS[config.dataset].items()})
  skip = set(config_lib.MAY_DIFFER_ON_RESUME) - {'num_epochs'}
  parts = [f'python -m experiments.{config.dataset}']
  if config.workdir:
    parts.append(f'--workdir={os.path.basename(config.workdir)}')
  if config.data_dir:
    parts.append(f'--data_dir={os.path.basename(config.data_dir)}')
  mine, theirs = config.to_dict(), defaults.to_dict()
  for field, _ in config_lib.flag_fields(type(config)):
    name = field.name
    if name in skip or mine[name] == theirs[name]:
      continue
    value = mine[name]
    if isinstance(value, list):
      value = ','.join(map(str, value))
    elif isinstance(value, bool):
      parts.append(f'--{name}' if value else f'--no{name}')
      continue
    parts.append(f'--{name}={value}')
  return ' '.join(parts)


# The settings that are the model's, not its method's.
_MODEL_FIELDS = ('dataset', 'model', 'model_kwargs', 'wrn_depth', 'wrn_width')


def method_settings(config: config_lib.Config) -> Dict[str, Any]:
  """Every setting of the run that defines its training trajectory except
  the model's: the flags a resumed run may not change."""
  may_differ = set(config_lib.MAY_DIFFER_ON_RESUME)
  return {k: v for k, v in config.to_dict().items()
          if k not in may_differ and k not in _MODEL_FIELDS + ('method',)}


def _relative_flags(config: config_lib.Config) -> Dict[str, Any]:
  out = config.to_dict()
  for key in ('workdir', 'data_dir', 'source_workdir'):
    if out.get(key):
      out[key] = os.path.basename(out[key])
  return out


_ATTACK_SET_ORDER = ('autoattack', 'strong', 'paper')


def _in_registry_order(accs: Mapping[str, Any]) -> Dict[str, Any]:
  order = list(evaluation.ATTACKS) + [evaluation.WORST_CASE]
  return dict(sorted(accs.items(), key=lambda kv: (
      order.index(kv[0]) if kv[0] in order else len(order), kv[0])))


def _base_names(source: Optional[str]) -> Optional[str]:
  """A data source line with its folders as base names (no local paths)."""
  if not source:
    return source
  return re.sub(r'raw files in (\S+)',
                lambda m: 'raw files in ' + os.path.basename(m.group(1)),
                source)


def collect_evaluations(workdir: str, step: Optional[int]
                        ) -> List[Dict[str, Any]]:
  """The workdir's evaluations of the checkpoint at ``step``: every
  ``results*.json`` whose ``step`` is ``step``, the strongest attack set
  first (AutoAttack, strong, paper), then the most examples."""
  out = []
  for path in sorted(glob.glob(os.path.join(workdir, 'results*.json'))):
    try:
      with open(path) as f:
        r = json.load(f)
    except (OSError, ValueError):
      continue
    if not isinstance(r, dict) or r.get('step') != step or not r.get(
        'white_box'):
      continue
    fl = r.get('flags') or {}
    seed = fl.get('seed', 0)
    white = _in_registry_order(r['white_box'])
    attack_set = fl.get('attacks', 'paper')
    out.append({
        'file': os.path.basename(path),
        'attack_set': attack_set,
        'attacks': [a for a in white if a != evaluation.WORST_CASE],
        'cascaded': r.get('cascaded') or [],
        'white_box': white,
        'black_box': (_in_registry_order(r['black_box'])
                      if r.get('black_box') else r.get('black_box')),
        'black_box_source': (os.path.basename(r['black_box_source'])
                             if r.get('black_box_source') else None),
        'num_eval_examples': r.get('num_eval_examples'),
        'eps': fl.get('eps'),
        'key': (f'fold_in(jax.random.key({seed}), {training.EVAL_KEY}) '
                '(experiments.reporting.evaluate_and_report)'),
        'batch_size': fl.get('eval_batch_size'),
        'eps_one_pgd20_accuracy': r.get('eps_one_pgd20_accuracy'),
        'sanity_warnings': r.get('sanity_warnings') or [],
        'devices': r.get('devices'),
        'eval_wall_time_s': r.get('eval_wall_time_s'),
        'test_data': _base_names((r.get('data_source') or {}).get('test')),
    })
  rank = {s: i for i, s in enumerate(_ATTACK_SET_ORDER)}
  out.sort(key=lambda e: (rank.get(e['attack_set'], len(rank)),
                          -(e['num_eval_examples'] or 0), e['file']))
  return out


def data_files(dataset: str, data_dir: str) -> Dict[str, str]:
  """``{file name: sha256}`` of the raw data files of ``dataset`` in
  ``data_dir`` (:func:`dynamic_at.data.raw_files`)."""
  return {p.name: zoo.sha256_file(p)
          for p in data.raw_files(dataset, data_dir)}


def _load_test(dataset: str, data_dir: str) -> data.Dataset:
  try:
    return data.load_dataset(dataset, 'test', data_dir)
  except data.DataError as e:
    raise ZooCommandError(f'--data_dir={data_dir}: {e}') from None


def add(workdir: str, *, name: Optional[str] = None,
        data_dir: Optional[str] = None, zoo_dir: Optional[str] = None,
        train_command: Optional[str] = None,
        train_commit: Optional[str] = None,
        train_hardware: Optional[str] = None, check_key_seed: int = 0,
        run_evaluation: bool = False, attacks: Optional[str] = None,
        num_eval_examples: Optional[int] = None, force: bool = False,
        allow_unfinished: bool = False) -> Dict[str, Any]:
  """Adds the run in ``workdir`` to the zoo (see the module docstring).

  Returns:
    The manifest written.

  Raises:
    ZooCommandError, config_lib.ConfigError, data.DataError: naming the flag
      or file.
  """
  workdir = os.path.abspath(workdir)
  config = reporting.load_saved_config(workdir)
  dataset = config.dataset
  name = name or f'{dataset}/{os.path.basename(os.path.normpath(workdir))}'
  parts = name.split('/')
  if len(parts) != 2 or not all(parts) or parts[0] != dataset:
    raise ZooCommandError(f'--name={name}: expected {dataset}/<name> (the run '
                          f'in {workdir} is a {dataset} run).')
  data_dir = data_dir or config.data_dir
  if not data_dir or not os.path.isdir(data_dir):
    raise ZooCommandError(
        f'--data_dir={data_dir}: the check needs the {dataset} files (the '
        'run\'s own --data_dir is not there); give --data_dir.')
  root = os.path.abspath(zoo_dir) if zoo_dir else zoo.default_root()
  folder = os.path.join(root, *parts)
  if os.path.exists(os.path.join(folder, zoo.MANIFEST_FILE)) and not force:
    raise ZooCommandError(f'--name={name}: {folder} already holds that model; '
                          'use --force to replace it.')
  test_ds = _load_test(dataset, data_dir)

  # The weights, exported to a temporary file first, then put in place.
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix='.weights', suffix='.tmp')
  os.close(fd)
  try:
    reporting.export_weights(workdir, tmp)
    model, variables, info = weights.load_weights(tmp)
    step = info.get('step')
    finished = _finished(workdir, config, step)
    if not finished and not allow_unfinished:
      raise ZooCommandError(
          f'--workdir={workdir} is not fully trained (step {step}); finish '
          'it, or pass --allow_unfinished.')
    if run_evaluation and not collect_evaluations(workdir, step):
      from experiments import evaluate  # pylint: disable=g-import-not-at-top
      overrides = {'data_dir': os.path.abspath(data_dir)}
      if attacks:
        overrides['attacks'] = attacks
      if num_eval_examples is not None:
        overrides['num_eval_examples'] = num_eval_examples
      evaluate.evaluate_workdir(workdir, **overrides)
    path = os.path.join(folder, zoo.WEIGHTS_FILE)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 is not a file to share
    os.replace(tmp, path)
    tmp = None
  finally:
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)
  check = zoo.quick_eval(model, variables, test_ds.images, test_ds.labels,
                         eps=config.eps, key_seed=check_key_seed)
  check.update(devices=_devices(), jax_version=jax.__version__,
               xla_flags=os.environ.get('XLA_FLAGS'),
               test_data=_base_names(test_ds.source))
  evaluations = collect_evaluations(workdir, info.get('step'))
  spec = models.model_spec(config.model)
  kwargs = config_lib.model_kwargs_of(config)
  num_params = models.count_params(variables['params'])
  dtypes = sorted({str(x.dtype) for x in jax.tree.leaves(variables)})
  commit = reporting._commit()  # pylint: disable=protected-access
  manifest = {
      'format': zoo.FORMAT,
      'name': name,
      'dataset': dataset,
      'architecture': {
          'name': config.model, 'kwargs': kwargs,
          'display': spec.architecture(kwargs),
          'input_shape': list(spec.input_shape), 'num_params': num_params,
      },
      'method': {'name': config.method, 'settings': method_settings(config)},
      'training': {
          'command': train_command or rebuilt_command(config),
          'command_source': ('given (--train_command)' if train_command else
                             'rebuilt from the run\'s flags.json'),
          'commit': train_commit,
          'commit_source': ('given (--train_commit)' if train_commit else
                            'not recorded by the run'),
          'hardware': train_hardware,
          'hardware_source': ('given (--train_hardware)' if train_hardware
                              else 'not recorded by the run'),
          'time_s': info.get('train_time_s'),
          'steps': info.get('step'),
          'finished': finished,
          'num_train_examples': info.get('num_train_examples'),
          'flags': _relative_flags(config),
      },
      'data': {
          'dataset': dataset,
          'dir': os.path.basename(os.path.normpath(data_dir)),
          'files_sha256': data_files(dataset, data_dir),
          'test_examples': test_ds.num_examples,
      },
      'weights': {
          'file': zoo.WEIGHTS_FILE,
          'sha256': zoo.sha256_file(path),
          'bytes': os.path.getsize(path),
          'format': weights.FORMAT,
          'contents': 'params and batch_stats',
          'dtypes': dtypes,
      },
      'check': check,
      'evaluations': evaluations,
      'added': {
          'commit': commit,
          'command': reporting._command(sys.argv),  # pylint: disable=protected-access
          'date_utc': datetime.datetime.now(datetime.timezone.utc).strftime(
              '%Y-%m-%dT%H:%M:%SZ'),
      },
  }
  files.atomic_write_text(os.path.join(folder, zoo.MANIFEST_FILE),
                          json.dumps(manifest, indent=2) + '\n')
  files.atomic_write_text(os.path.join(folder, zoo.MODEL_INFO_FILE),
                          json.dumps(model_info(manifest), indent=2) + '\n')
  # What a user will load: the sha256 and the architecture check.
  zoo.load_pretrained(name, root=root)
  return manifest


def _finished(workdir: str, config: config_lib.Config,
              step: Optional[int]) -> bool:
  """Whether ``step`` ends the run's last epoch (its ``metrics.jsonl``)."""
  rows = _metrics(workdir)
  return bool(rows) and rows[-1].get('epoch') == config.num_epochs - 1 and (
      rows[-1].get('step') == step)


def _metrics(workdir: str) -> List[Dict[str, Any]]:
  from experiments.outputs import read_metrics  # pylint: disable=g-import-not-at-top
  return read_metrics(workdir)


def _devices() -> str:
  from experiments.outputs import devices_description  # pylint: disable=g-import-not-at-top
  return devices_description()


def model_info(manifest: Mapping[str, Any]) -> Dict[str, Any]:
  """The RobustBench-style ``model_info.json`` of a manifest: of its first
  (strongest) evaluation, else of its check."""
  evals = manifest.get('evaluations') or []
  if evals:
    e = evals[0]
    results = {'white_box': e['white_box'], 'cascaded': e.get('cascaded'),
               'num_eval_examples': e.get('num_eval_examples')}
    source = {'evaluation': e['file'], 'attack_set': e['attack_set']}
  else:
    c = manifest['check']
    results = {'white_box': dict(c['accuracy']),
               'num_eval_examples': c['num_examples']}
    source = {'evaluation': 'the manifest\'s check (first '
                            f'{c["num_examples"]} test images)',
              'attack_set': ','.join(c['attacks'])}
  return evaluation.model_info(
      results, dataset=manifest['dataset'],
      eps=manifest['method']['settings']['eps'],
      architecture=manifest['architecture']['display'],
      name=manifest['name'],
      extra={'method': manifest['method']['name'], **source,
             'weights_sha256': manifest['weights']['sha256'],
             'training_commit': manifest['training']['commit']})


# --------------------------------------------------------------------------
# list, check
# --------------------------------------------------------------------------


def _pct(v) -> str:
  return '-' if v is None else f'{float(v):.2f}'


def list_table(zoo_dir: Optional[str] = None) -> str:
  """The markdown table of the zoo's models and their headline numbers."""
  root = os.path.abspath(zoo_dir) if zoo_dir else zoo.default_root()
  names = zoo.list_models(root)
  if not names:
    return f'The zoo ({root}) holds no models yet.\n'
  lines = ['| model | architecture | method | check clean | check PGD-20 | '
           'clean | PGD-20 | worst case | eval examples (attacks) | weights |',
           '|---|---|---|---:|---:|---:|---:|---:|---|---:|']
  total = 0
  for name in names:
    m = zoo.load_manifest(name, root)
    h = zoo.headline(m)
    size = m['weights'].get('bytes') or 0
    total += size
    evals = (f'{h["num_eval_examples"]:,} ({m["evaluations"][0]["attack_set"]})'
             if h['num_eval_examples'] else '-')
    lines.append(
        f'| {name} | {h["architecture"]} | {h["method"]} | '
        f'{_pct(h["check_clean"])} | {_pct(h["check_pgd20"])} | '
        f'{_pct(h["clean"])} | {_pct(h["pgd20"])} | '
        f'{_pct(h["worst_case"])} | {evals} | {size / 1e6:.2f} MB |')
  n = zoo.CHECK_EXAMPLES
  lines += ['', f'Accuracies in %. "check": the first {n} test images, '
            'clean and PGD-20 with the manifest\'s key (what tests/test_zoo.py '
            're-measures); the other columns: the strongest evaluation '
            f'recorded. {len(names)} models, {total / 1e6:.2f} MB of weights.']
  return '\n'.join(lines) + '\n'


def check_model(name: str, data_dir: str, zoo_dir: Optional[str] = None
                ) -> Dict[str, Any]:
  """Loads ``name`` (sha256 checked) and re-measures its check.

  Returns:
    ``{'expected': manifest's correct counts, 'got': re-measured}``.
  """
  root = os.path.abspath(zoo_dir) if zoo_dir else None
  model, variables = zoo.load_pretrained(name, root=root)
  m = zoo.load_manifest(name, root)
  c = m['check']
  test_ds = _load_test(m['dataset'], data_dir)
  got = zoo.quick_eval(model, variables, test_ds.images, test_ds.labels,
                       eps=c['eps'], key_seed=c['key_seed'],
                       num_examples=c['num_examples'],
                       batch_size=c['batch_size'])
  if got['data_sha256'] != c['data_sha256']:
    raise ZooCommandError(
        f'--data_dir={data_dir}: its first {c["num_examples"]} {m["dataset"]} '
        f'test images are not those {name!r} was checked on (sha256 '
        f'{got["data_sha256"]}, manifest {c["data_sha256"]}).')
  return {'expected': c['correct'], 'got': got['correct']}


def main(argv: Sequence[str]) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f'usage: python -m experiments.zoo '
                         f'{{{"|".join(COMMANDS)}}} [flags]; got {argv[1:]}')
  common.quiet_logging()
  fl = flags.FLAGS
  try:
    if argv[1] == 'list':
      print(list_table(ZOO_DIR.value), end='', flush=True)
    elif argv[1] == 'add':
      if not fl.workdir:
        raise ZooCommandError('add needs --workdir (a finished training run).')
      m = add(fl.workdir, name=_NAME.value, data_dir=fl.data_dir,
              zoo_dir=ZOO_DIR.value, train_command=_TRAIN_COMMAND.value,
              train_commit=_TRAIN_COMMIT.value,
              train_hardware=_TRAIN_HARDWARE.value,
              check_key_seed=_CHECK_KEY_SEED.value,
              run_evaluation=_EVALUATE.value,
              attacks=fl.attacks if fl['attacks'].present else None,
              num_eval_examples=(fl.num_eval_examples
                                 if fl['num_eval_examples'].present else None),
              force=_FORCE.value, allow_unfinished=_ALLOW_UNFINISHED.value)
      c = m['check']
      print(f'Added {m["name"]}: check on the first {c["num_examples"]} test '
            f'images: clean {c["accuracy"]["clean"]:.2f}%, PGD-20 '
            f'{c["accuracy"]["pgd20"]:.2f}% (key {c["key"]}); '
            f'{len(m["evaluations"])} evaluation(s) collected; weights '
            f'{m["weights"]["bytes"] / 1e6:.2f} MB, sha256 '
            f'{m["weights"]["sha256"]}.', flush=True)
    else:  # check
      if not fl.data_dir:
        raise ZooCommandError('check needs --data_dir (the test data).')
      root = ZOO_DIR.value
      bad = 0
      for name in zoo.list_models(root and os.path.abspath(root)):
        r = check_model(name, fl.data_dir, root)
        ok = r['expected'] == r['got']
        bad += not ok
        print(f'{"ok  " if ok else "DIFF"} {name}: manifest {r["expected"]}, '
              f'now {r["got"]}', flush=True)
      if bad:
        sys.exit(1)
  except (ZooCommandError, zoo.ZooError) + common.CLEAR_ERRORS as e:
    common.fail(e)


if __name__ == '__main__':
  app.run(main)
