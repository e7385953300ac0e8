"""The top level of the experiment mains: prepare, train and evaluate a run.

``experiments/mnist.py`` and ``experiments/cifar10.py`` fix the dataset, set
its default flags (:data:`experiments.config.DATASET_DEFAULTS`) and call
:func:`app_main`; flags are read once, into a frozen
:class:`experiments.config.Config`, before any library call.

The parts live in their own modules: :mod:`experiments.config` (flags,
``Config``, validation), :mod:`experiments.inputs` (data loading and
augmentation), :mod:`experiments.training` (the step, the loop and its
checkpoints), :mod:`experiments.reporting` (figures, restoring a run, the
final evaluation) and :mod:`experiments.outputs` (printing, atomic writes,
``metrics.jsonl``); this module holds :func:`prepare`, :func:`run` and the
mains.

A run lives in ``--workdir``:

* ``flags.json``: the run's configuration. Restarting on the same workdir
  resumes; a restart whose flags differ (other than those in
  :data:`experiments.config.MAY_DIFFER_ON_RESUME`) is refused before
  anything is written.
* ``checkpoints/``: orbax checkpoints (every epoch and every
  ``--checkpoint_every_steps`` steps; the last ``--keep_checkpoints`` kept).
  A checkpoint holds the global step; on resume the epoch is ``step //
  steps_per_epoch`` and the first ``step % steps_per_epoch`` batches of that
  epoch are skipped (the data order and augmentation are pure functions of the
  seed, the epoch and the batch index, and the step's PRNG key folds in the
  step), so an interrupted and resumed run is bit-identical to an
  uninterrupted one.
* ``metrics.jsonl``: one JSON line per epoch (see
  :func:`experiments.training.epoch_row`); ``tb/``: the same as TensorBoard
  scalars; ``fosc/epoch_XXXX.npy``: the FOSC of every training adversarial
  example of each epoch (float32).
* ``fosc_histograms.png``, ``training_curves.png``, ``results.json`` and
  ``results.md`` at the end.
* ``.lock``: who holds the workdir (empty when nobody does).

Metrics are fetched from the devices once per ``--log_every_steps`` (and
before every checkpoint); a NaN or infinite loss, or non-finite parameters
before a save, stop the run with
:class:`experiments.training.TrainingDivergedError`, leaving the last good
checkpoint as the newest. SIGTERM and Ctrl-C checkpoint the current step and
stop (:mod:`experiments.preemption`); ``WORKDIR/.lock`` keeps a second process
out (:mod:`experiments.workdir_lock`); rerunning the same command resumes.

Epochs are counted from 0, as ``t`` in the paper's Algorithm 1. Training
accuracies are fractions in ``[0, 1]``; test accuracies are percentages.
"""

import json
import os
import sys
from typing import Any, Dict, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging

from dynamic_at import checkpoint
from dynamic_at import data
from dynamic_at import files
from experiments import preemption
from experiments import workdir_lock
from experiments.config import Config
from experiments.config import ConfigError
from experiments.config import FLAGS_FILE
from experiments.config import check_source_workdir
from experiments.config import check_workdir_compatible
from experiments.config import check_workdir_writable
from experiments.config import config_from_flags
from experiments.config import initialize_devices
from experiments.config import set_dataset_defaults
from experiments.config import validate_config
from experiments.config import validate_devices
from experiments.inputs import load_data
from experiments.outputs import devices_description
from experiments.outputs import is_main_process
from experiments.outputs import print_loud
from experiments.outputs import print_main
from experiments.outputs import read_metrics
from experiments.reporting import evaluate_and_report
from experiments.reporting import make_figures
from experiments.reporting import restore_source
from experiments.training import TrainingDivergedError
from experiments.training import chance_warning
from experiments.training import train_loop

# The errors the mains report as one line (they name the flag or file).
CLEAR_ERRORS = (ConfigError, data.DataError, TrainingDivergedError,
                workdir_lock.WorkdirLockedError, checkpoint.CheckpointError,
                files.WriteError)

# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


def prepare(config: Config, lock: Optional[workdir_lock.WorkdirLock] = None
            ) -> Tuple[data.Dataset, data.Dataset]:
  """Every check before training, then ``flags.json``.

  Order: flags, devices, the black-box source, the workdir's saved flags,
  the data, the workdir's writability, then ``lock`` (if given) is taken;
  nothing is written before all pass.

  Raises:
    ConfigError, data.DataError: naming the flag or file.
    workdir_lock.WorkdirLockedError: naming the process holding the workdir.
  """
  validate_config(config)
  validate_devices(config)
  check_source_workdir(config)
  check_workdir_compatible(config)
  train_ds, test_ds = load_data(config)
  check_workdir_writable(config.workdir)
  if lock is not None:
    take_lock(lock)
  if is_main_process():
    files.atomic_write_text(
        os.path.join(config.workdir, FLAGS_FILE),
        json.dumps(config.to_dict(), indent=2, sort_keys=True) + '\n')
  return train_ds, test_ds


def run(config: Config) -> Optional[Dict[str, Any]]:
  """Trains, checkpoints, resumes, evaluates and reports one run.

  Returns:
    The results dictionary, or ``None`` if training stopped early
    (``--stop_after_steps``).
  """
  initialize_devices(config)
  lock = workdir_lock.WorkdirLock(config.workdir, primary=is_main_process())
  try:
    train_ds, test_ds = prepare(config, lock)
    print_main(f'Devices: {devices_description()}; workdir {config.workdir}')
    result = train_loop(config, train_ds=train_ds, test_ds=test_ds)
    if not result.finished:
      return None
    rows = read_metrics(config.workdir)
    if rows:
      chance_warning(config, rows[-1], 'at the end of training')
    make_figures(config)
    meta = {'train_time_s': result.train_time_s,
            'train_data_source': train_ds.source,
            'num_train_examples': train_ds.num_examples, 'step': result.step}
    source = restore_source(config, train_ds.image_shape, result.run.mesh)
    return evaluate_and_report(config, result.state, test_ds,
                               result.run.mesh, meta=meta, source=source)
  finally:
    lock.release()


def take_lock(lock: workdir_lock.WorkdirLock) -> None:
  """Acquires ``lock``, warning loudly if it took over a stale one."""
  lock.acquire()
  if lock.stale is not None:
    print_loud(f'WARNING: {lock.path} was left by {lock.stale.describe()}, '
               'which is no longer running (killed?); taking it over. That '
               'run\'s newest checkpoint is where this one resumes.')


def main_with_args(argv: Sequence[str], dataset: str) -> Any:
  """Parses ``argv`` (``argv[0]`` is the program name) and runs, in-process.

  Raises the errors :func:`app_main` would report (for tests).
  """
  flags.FLAGS.unparse_flags()
  set_dataset_defaults(dataset)
  rest = flags.FLAGS(list(argv))
  if len(rest) > 1:
    raise app.UsageError(f'unexpected arguments {rest[1:]} (flagfile comments '
                         'must start at the beginning of a line)')
  return run(config_from_flags(dataset))


def quiet_logging() -> None:
  """Shows absl (orbax, JAX) log messages from WARNING up, unless
  ``--verbosity`` was given."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


def fail(error: BaseException) -> None:
  """Prints one clear error line and exits with status 1."""
  print(f'ERROR: {error}', file=sys.stderr, flush=True)
  sys.exit(1)


def app_main(dataset: str) -> None:
  """The absl main of a training entry point for ``dataset``."""
  set_dataset_defaults(dataset)
  flags.mark_flag_as_required('workdir')

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments {argv[1:]} (flagfile '
                           'comments must start at the beginning of a line)')
    quiet_logging()
    try:
      run(config_from_flags(dataset))
    except CLEAR_ERRORS as e:
      fail(e)
    except preemption.TrainingInterrupted as e:
      print(str(e), file=sys.stderr, flush=True)
      sys.exit(e.exit_code)
    except KeyboardInterrupt:
      sys.exit(130)

  app.run(main)
