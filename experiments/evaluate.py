"""Evaluates a trained run: white-box (and black-box) robustness.

Restores the newest checkpoint of ``--workdir``, reads the run's model,
dataset and eps from its ``flags.json``, attacks the first
``--num_eval_examples`` test examples with the paper's attacks (clean, FGSM,
PGD-10, PGD-20, CW-inf), and with ``--source_workdir`` also black-box
(transfer) attacks crafted on that run's model. Prints loud sanity warnings
(including the PGD-20 accuracy at eps = 1, a gradient-masking check), writes
``WORKDIR/results.json`` and ``results.md`` and prints the table. Results
already there (e.g. the training run's own) are kept as ``results.1.json``
and ``results.1.md`` (the first free number)::

  python -m experiments.evaluate --workdir=runs/mnist_dynamic \\
      --source_workdir=runs/mnist_standard --num_eval_examples=10000

Only ``--data_dir``, ``--num_eval_examples``, ``--eval_batch_size``,
``--source_workdir``, ``--attacks``, ``--attack_cascade``, ``--cpu_devices``
and ``--multihost`` are read from the command line (each falls back to the
run's saved value); the other flags come from the run's ``flags.json``.

With ``--model=NAME`` it evaluates a model of the zoo (``python -m
experiments.zoo list``; :func:`dynamic_at.zoo.load_pretrained`), its weights
file checked against its manifest's sha256 first, writing ``results.json``
and ``model_info.json`` into ``--workdir``::

  python -m experiments.evaluate --model=mnist/standard_seed0 \\
      --workdir=runs/eval_standard --data_dir=../shared/data/mnist \\
      --attacks=autoattack

With ``--weights=FILE`` it evaluates a weights file instead
(:func:`dynamic_at.weights.save_weights`, e.g. ``results/.../model.msgpack``)
with the flags saved in it, writing ``results.json`` into ``--workdir``::

  python -m experiments.evaluate \\
      --weights=results/mnist_dynamic_study/standard_seed0/model.msgpack \\
      --workdir=runs/eval_standard --data_dir=../shared/data/mnist
"""

import contextlib
import os
from typing import Any, Dict, Iterator, Optional

from absl import app
from absl import flags
import jax

from dynamic_at import data
from dynamic_at import parallel
from experiments import common
from experiments import config as config_lib
from experiments import inputs
from experiments import reporting
from experiments import workdir_lock
from experiments import zoo as zoo_cli

# The flags evaluate takes from the command line when given.
_WEIGHTS = flags.DEFINE_string(
    'weights', None, 'Evaluate this weights file (parameters and BatchNorm '
    'statistics, written by sweep --export_weights) instead of the newest '
    'checkpoint of --workdir; --workdir is then only where results go.')

OVERRIDABLE = ('data_dir', 'num_eval_examples', 'eval_batch_size',
               'source_workdir', 'attacks', 'attack_cascade', 'cpu_devices',
               'multihost', 'coordinator_address', 'num_processes',
               'process_id')
for _name in ('workdir', 'model', 'zoo_dir') + OVERRIDABLE:
  flags.declare_key_flag(_name)


def evaluate_workdir(workdir: str, **overrides: Any) -> Dict[str, Any]:
  """Evaluates the run in ``workdir``; ``overrides`` replace saved flags.

  Args:
    workdir: a run folder (with ``flags.json`` and ``checkpoints/``).
    **overrides: values of :data:`OVERRIDABLE` flags.

  Returns:
    The dictionary written to ``workdir/results.json``.

  Raises:
    config_lib.ConfigError, data.DataError: naming the flag or file.
  """
  unknown = set(overrides) - set(OVERRIDABLE)
  if unknown:
    raise config_lib.ConfigError(f'evaluate does not take {sorted(unknown)}')
  config = reporting.load_saved_config(workdir).replace(workdir=workdir,
                                                        **overrides)
  config_lib.initialize_devices(config)
  config_lib.validate_config(config)
  config_lib.validate_devices(config, training=False)
  config_lib.check_source_workdir(config)
  test_ds = inputs.load_test_data(config)
  with _locked(workdir):
    mesh = parallel.make_mesh()
    _, state, meta = reporting.restore_model(workdir, test_ds.image_shape,
                                             mesh)
    source = reporting.restore_source(config, test_ds.image_shape, mesh)
    return reporting.evaluate_and_report(config, state, test_ds, mesh,
                                         meta=meta, source=source)


@contextlib.contextmanager
def _locked(workdir: str) -> Iterator[None]:
  """Holds ``workdir``'s lock (process 0) while results are written."""
  lock = workdir_lock.WorkdirLock(workdir, primary=jax.process_index() == 0)
  try:
    common.take_lock(lock)
    yield
  finally:
    lock.release()


def evaluate_weights(path: str, workdir: str,
                     **overrides: Any) -> Dict[str, Any]:
  """Evaluates the weights file ``path``; results go to ``workdir``.

  Raises:
    config_lib.ConfigError, data.DataError: naming the flag or file.
  """
  from dynamic_at import weights  # pylint: disable=g-import-not-at-top
  unknown = set(overrides) - set(OVERRIDABLE)
  if unknown:
    raise config_lib.ConfigError(f'evaluate does not take {sorted(unknown)}')
  try:
    model, variables, info = weights.load_weights(path)
  except weights.WeightsError as e:
    raise config_lib.ConfigError(f'--weights={path}: {e}') from None
  saved = dict(info.get('flags', {}), data_dir=None, source_workdir=None)
  config = config_lib.Config.from_dict(saved).replace(workdir=workdir,
                                                      **overrides)
  config_lib.initialize_devices(config)
  config_lib.validate_config(config)
  config_lib.validate_devices(config, training=False)
  config_lib.check_source_workdir(config)
  config_lib.check_workdir_writable(workdir)
  test_ds = inputs.load_test_data(config)
  with _locked(workdir):
    return _evaluate_variables(config, model, variables, info, path, test_ds)


def evaluate_pretrained(name: str, workdir: str, *,
                        zoo_dir: Optional[str] = None,
                        **overrides: Any) -> Dict[str, Any]:
  """Evaluates the zoo model ``name``; results go to ``workdir``.

  Raises:
    config_lib.ConfigError: naming --model (unknown name, damaged weights
      file) or another flag; data.DataError naming the file.
  """
  from dynamic_at import zoo  # pylint: disable=g-import-not-at-top
  try:
    path, _ = zoo.verify_weights(name, zoo_dir)
  except zoo.ZooError as e:
    raise config_lib.ConfigError(f'--model={name}: {e}') from None
  return evaluate_weights(path, workdir, **overrides)


def _evaluate_variables(config, model, variables, info, path, test_ds):
  """The evaluation and report of a loaded weights file."""
  import optax  # pylint: disable=g-import-not-at-top
  from dynamic_at import train  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh()
  state = train.TrainState.create(apply_fn=model.apply,
                                  params=variables['params'],
                                  batch_stats=variables['batch_stats'],
                                  tx=optax.identity())
  state = parallel.replicate(state, mesh)
  source = reporting.restore_source(config, test_ds.image_shape, mesh)
  meta = {'train_time_s': info.get('train_time_s'), 'step': info.get('step'),
          'num_train_examples': info.get('num_train_examples'),
          'train_data_source': f'weights file {os.path.basename(path)}'}
  return reporting.evaluate_and_report(config, state, test_ds, mesh,
                                       meta=meta, source=source)


def _overrides_from_flags() -> Dict[str, Any]:
  out = {}
  for name in OVERRIDABLE:
    if flags.FLAGS[name].present:
      out[name] = flags.FLAGS[name].value
  if out.get('source_workdir'):
    out['source_workdir'] = os.path.abspath(out['source_workdir'])
  return out


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  common.quiet_logging()
  try:
    if flags.FLAGS['model'].present:
      if _WEIGHTS.value:
        raise config_lib.ConfigError('--model (a zoo model) and --weights '
                                     'exclude each other; give one.')
      zoo_dir = zoo_cli.ZOO_DIR.value
      evaluate_pretrained(flags.FLAGS.model,
                          os.path.abspath(flags.FLAGS.workdir),
                          zoo_dir=zoo_dir and os.path.abspath(zoo_dir),
                          **_overrides_from_flags())
    elif _WEIGHTS.value:
      evaluate_weights(_WEIGHTS.value, os.path.abspath(flags.FLAGS.workdir),
                       **_overrides_from_flags())
    else:
      evaluate_workdir(os.path.abspath(flags.FLAGS.workdir),
                       **_overrides_from_flags())
  except common.CLEAR_ERRORS as e:
    common.fail(e)


if __name__ == '__main__':
  flags.mark_flag_as_required('workdir')
  app.run(main)
