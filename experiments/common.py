"""Flags, the run configuration and the training loop of the experiment mains.

``experiments/mnist.py`` and ``experiments/cifar10.py`` fix the dataset, set
its default flags (:data:`DATASET_DEFAULTS`) and call :func:`app_main`; flags
are read once, into a frozen :class:`Config`, before any library call.

A run lives in ``--workdir``:

* ``flags.json``: the run's configuration. Restarting on the same workdir
  resumes; a restart whose flags differ (other than those in
  :data:`MAY_DIFFER_ON_RESUME`) is refused before anything is written.
* ``checkpoints/``: orbax checkpoints (every epoch and every
  ``--checkpoint_every_steps`` steps; the last ``--keep_checkpoints`` kept).
  A checkpoint holds the global step; on resume the epoch is ``step //
  steps_per_epoch`` and the first ``step % steps_per_epoch`` batches of that
  epoch are skipped (the data order and augmentation are pure functions of the
  seed, the epoch and the batch index, and the step's PRNG key folds in the
  step), so an interrupted and resumed run is bit-identical to an
  uninterrupted one.
* ``metrics.jsonl``: one JSON line per epoch (see :func:`epoch_row`);
  ``tb/``: the same as TensorBoard scalars; ``fosc/epoch_XXXX.npy``: the FOSC
  of every training adversarial example of each epoch (float32).
* ``fosc_histograms.png``, ``training_curves.png``, ``results.json`` and
  ``results.md`` at the end.

Metrics are fetched from the devices once per ``--log_every_steps`` (and
before every checkpoint); a NaN or infinite loss, or non-finite parameters
before a save, stop the run with :class:`TrainingDivergedError`, leaving the
last good checkpoint as the newest. Ctrl-C waits for pending saves; rerunning
the same command resumes.

Epochs are counted from 0, as ``t`` in the paper's Algorithm 1. Training
accuracies are fractions in ``[0, 1]``; test accuracies are percentages.
"""

import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from dynamic_at import checkpoint
from dynamic_at import data
from dynamic_at import evaluation
from dynamic_at import models
from dynamic_at import parallel
from dynamic_at import train

DATASETS = ('mnist', 'cifar10')
AUGMENTATIONS = ('none', 'crop_flip', 'keras')
ATTACK_SETS = {'paper': evaluation.PAPER_ATTACKS,
               'strong': evaluation.STRONG_ATTACKS}
# Models each dataset accepts.
DATASET_MODELS = {'mnist': ('mnist_cnn',), 'cifar10': ('cifar10_cnn', 'wrn')}

# Flag defaults that depend on the dataset (the paper's settings); each main
# applies its dataset's before parsing. The flagfiles in experiments/configs/
# spell every setting out anyway.
DATASET_DEFAULTS = {
    'mnist': dict(model='mnist_cnn', eps=0.3, num_epochs=50,
                  lr_drop_epochs=['20', '40'], weight_decay=0.0, t_prime=40.0,
                  curriculum_max_steps=40, augment='none'),
    'cifar10': dict(model='cifar10_cnn', eps=8 / 255, num_epochs=120,
                    lr_drop_epochs=['60', '100'], weight_decay=1e-4,
                    t_prime=100.0, curriculum_max_steps=7, augment='crop_flip'),
}

# Flags a resumed run may change: where things are, how long to train, how
# often to log, checkpoint and evaluate. Everything else defines the
# trajectory (model, data subset, method, attack, optimiser, seed) and must
# match the workdir's flags.json. num_epochs may change because neither the
# learning-rate schedule (--lr_drop_epochs) nor c_t (--t_prime) depends on it,
# so a longer run extends a shorter one exactly.
MAY_DIFFER_ON_RESUME = (
    'workdir', 'data_dir', 'num_epochs', 'num_eval_examples',
    'eval_batch_size', 'eval_every', 'eval_every_examples', 'attacks',
    'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
    'stop_after_steps', 'source_workdir', 'multihost',
)

FLAGS_FILE = 'flags.json'
METRICS_FILE = 'metrics.jsonl'
RESULTS_FILE = 'results.json'
CHECKPOINT_DIR = 'checkpoints'
FOSC_DIR = 'fosc'
TB_DIR = 'tb'
CHANCE_LOSS = math.log(10.0)  # cross-entropy of a uniform 10-class guess
_CHANCE_TOLERANCE = 0.05
# How many test examples the eps = 1 gradient-masking check uses.
EPS_ONE_EXAMPLES = 1000
# fold_in constants of the evaluation keys (from jax.random.key(seed); the
# training keys come from its split, see run_keys).
_EVAL_KEY = 1_000_003
_EPOCH_EVAL_KEY = 1_000_033

# --------------------------------------------------------------------------
# Flags (defined once; both training mains and evaluate share them).
# --------------------------------------------------------------------------

_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Run folder (checkpoints, metrics, figures, results). '
    'Required. Re-running with the same workdir resumes the run.')
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, 'Folder with the raw dataset files (MNIST IDX .gz files, '
    'or cifar-10-binary.tar.gz / data_batch_*.bin). Unset: a prepared TFDS '
    'dataset (never downloaded).')
_METHOD = flags.DEFINE_enum(
    'method', 'dynamic', train.METHODS,
    'Training method: unsecured (clean), standard (Madry PGD-K), curriculum '
    '(Cai et al., PGD-k with growing k), dynamic (FOSC-controlled PGD-K).')
_MODEL = flags.DEFINE_enum('model', 'mnist_cnn', models.MODEL_NAMES,
                           'Model (dataset default: mnist_cnn / cifar10_cnn).')
_WRN_DEPTH = flags.DEFINE_integer('wrn_depth', 34, 'WideResNet depth.')
_WRN_WIDTH = flags.DEFINE_integer('wrn_width', 10, 'WideResNet width k.')
_NUM_EPOCHS = flags.DEFINE_integer('num_epochs', 50, 'Training epochs T.')
_BATCH_SIZE = flags.DEFINE_integer(
    'batch_size', 128, 'Global batch size; must divide over the devices.')
_SEED = flags.DEFINE_integer(
    'seed', 0, 'Seed of the initialisation, data order, augmentation and '
    'attack random starts.')
_EPS = flags.DEFINE_float('eps', 0.3, 'L-inf radius epsilon, in (0, 1] '
                          '(pixels in [0, 1]; MNIST 0.3, CIFAR-10 8/255).')
_STEP_SIZE = flags.DEFINE_float('step_size', None,
                                'PGD step size alpha (default eps / 4).')
_NUM_STEPS = flags.DEFINE_integer(
    'num_steps', 10, 'PGD steps K of standard and dynamic training.')
_C_MAX = flags.DEFINE_float('c_max', 0.5, "Dynamic's initial FOSC threshold "
                            'c_max.')
_T_PRIME = flags.DEFINE_float(
    't_prime', 40.0, "Dynamic's FOSC control epoch T': c_t = max(c_max - t * "
    "c_max / T', 0) (CIFAR-10: 100 of 120 epochs; MNIST: 40 of 50).")
_CURRICULUM_MAX_STEPS = flags.DEFINE_integer(
    'curriculum_max_steps', 40, "Curriculum's largest k (MNIST 40, CIFAR 7).")
_CURRICULUM_THRESHOLD = flags.DEFINE_float(
    'curriculum_threshold', 0.5, 'Curriculum: k grows by one after an epoch '
    'whose mean adversarial training accuracy (fraction) exceeds this.')
_CURRICULUM_START_STEPS = flags.DEFINE_integer(
    'curriculum_start_steps', 1, "Curriculum's k in epoch 0.")
_LEARNING_RATE = flags.DEFINE_float('learning_rate', 0.01,
                                    'Initial SGD learning rate.')
_MOMENTUM = flags.DEFINE_float('momentum', 0.9, 'SGD momentum.')
_WEIGHT_DECAY = flags.DEFINE_float(
    'weight_decay', 0.0, 'L2 weight decay added to the gradient '
    '(CIFAR-10 1e-4; MNIST 0).')
_LR_DROP_EPOCHS = flags.DEFINE_list(
    'lr_drop_epochs', ['20', '40'],
    'Epochs at whose start the learning rate is divided by 10.')
_KERAS_DECAY = flags.DEFINE_float(
    'keras_decay', 0.0, "Authors'-code deviation (off by default): Keras "
    'SGD(decay=...): the rate of iteration i is also divided by '
    '(1 + keras_decay * i); the authors used 1e-4.')
_LOSS_WEIGHTING = flags.DEFINE_bool(
    'loss_weighting', False, "Authors'-code deviation (off by default): after "
    'epoch 0, weight each adversarial example by its own cross-entropy.')
_FOSC_CENTRE_RANDOM_START = flags.DEFINE_bool(
    'fosc_centre_random_start', False, "Authors'-code deviation (off by "
    'default): centre the FOSC on the random start of PGD instead of on the '
    'clean example (the paper).')
_AUGMENT = flags.DEFINE_enum(
    'augment', 'none', AUGMENTATIONS,
    "Training augmentation: none (MNIST default), crop_flip (4-pixel pad + "
    "random crop + horizontal flip; CIFAR-10 default), keras (authors'-code "
    'deviation: Keras ImageDataGenerator with rotation 10 degrees, shifts 0.2, '
    'horizontal flips, nearest fill; needs scipy).')
_EPS_WARMUP_EPOCHS = flags.DEFINE_integer(
    'eps_warmup_epochs', 0, 'Ramp eps (and the step size with it) linearly '
    'over this many epochs: epoch t < W uses eps * (t + 1) / W. 0 = off. A '
    'remedy when PGD training stays at the chance loss 2.30 (e.g. MNIST).')
_NUM_TRAIN_EXAMPLES = flags.DEFINE_integer(
    'num_train_examples', 0, 'Train on the first N training examples '
    '(0 = all).')
_NUM_EVAL_EXAMPLES = flags.DEFINE_integer(
    'num_eval_examples', 0, 'Evaluate on the first N test examples (0 = all).')
_EVAL_BATCH_SIZE = flags.DEFINE_integer('eval_batch_size', 500,
                                        'Evaluation batch size.')
_EVAL_EVERY = flags.DEFINE_integer(
    'eval_every', 0, 'Every this many epochs (and after the last), measure '
    'clean and PGD-20 test accuracy on --eval_every_examples test examples '
    '(0 = off).')
_EVAL_EVERY_EXAMPLES = flags.DEFINE_integer(
    'eval_every_examples', 1000, 'Test examples of the per-epoch evaluation.')
_ATTACKS = flags.DEFINE_enum('attacks', 'paper', tuple(ATTACK_SETS),
                             'Attack set of the final evaluation: paper = '
                             'clean, FGSM, PGD-10, PGD-20, CW-inf; strong = '
                             'those plus APGD-CE and APGD-T (AutoAttack, 100 '
                             'steps, 9 targets) and the per-example worst '
                             'case over all of them.')
_LOG_EVERY_STEPS = flags.DEFINE_integer(
    'log_every_steps', 50, 'Fetch metrics from the devices (and check for '
    'NaN) every this many steps.')
_CHECKPOINT_EVERY_STEPS = flags.DEFINE_integer(
    'checkpoint_every_steps', 0, 'Also checkpoint every this many steps '
    '(0 = at epoch ends only).')
_KEEP_CHECKPOINTS = flags.DEFINE_integer('keep_checkpoints', 3,
                                         'Checkpoints to keep.')
_STOP_AFTER_STEPS = flags.DEFINE_integer(
    'stop_after_steps', 0, 'Stop (checkpointed, as if interrupted) once the '
    'global step reaches this; rerun without it to resume. 0 = off.')
_SOURCE_WORKDIR = flags.DEFINE_string(
    'source_workdir', None, 'Workdir of a trained source model: also '
    'evaluate black-box (transfer) attacks crafted on it.')
_MULTIHOST = flags.DEFINE_bool(
    'multihost', False, 'Call jax.distributed.initialize() first (one '
    'process per host).')


class ConfigError(ValueError):
  """An invalid flag or workdir; the message names the flag."""


class TrainingDivergedError(RuntimeError):
  """The training loss became NaN or infinite."""


# --------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a run depends on; built from the flags (see their help)."""
  dataset: str
  workdir: str
  data_dir: Optional[str] = None
  method: str = 'dynamic'
  model: str = 'mnist_cnn'
  wrn_depth: int = 34
  wrn_width: int = 10
  num_epochs: int = 50
  batch_size: int = 128
  seed: int = 0
  eps: float = 0.3
  step_size: Optional[float] = None  # resolved to eps / 4 by from_flags
  num_steps: int = 10
  c_max: float = 0.5
  t_prime: float = 40.0
  curriculum_max_steps: int = 40
  curriculum_threshold: float = 0.5
  curriculum_start_steps: int = 1
  learning_rate: float = 0.01
  momentum: float = 0.9
  weight_decay: float = 0.0
  lr_drop_epochs: Tuple[int, ...] = (20, 40)
  keras_decay: float = 0.0
  loss_weighting: bool = False
  fosc_centre_random_start: bool = False
  augment: str = 'none'
  eps_warmup_epochs: int = 0
  num_train_examples: int = 0
  num_eval_examples: int = 0
  eval_batch_size: int = 500
  eval_every: int = 0
  eval_every_examples: int = 1000
  attacks: str = 'paper'
  log_every_steps: int = 50
  checkpoint_every_steps: int = 0
  keep_checkpoints: int = 3
  stop_after_steps: int = 0
  source_workdir: Optional[str] = None
  multihost: bool = False

  def __post_init__(self):
    object.__setattr__(self, 'lr_drop_epochs',
                       tuple(int(e) for e in self.lr_drop_epochs))
    if self.step_size is None and self.eps is not None:
      object.__setattr__(self, 'step_size', float(self.eps) / 4)

  def to_dict(self) -> Dict[str, Any]:
    """JSON-ready dictionary (tuples become lists)."""
    d = dataclasses.asdict(self)
    d['lr_drop_epochs'] = list(self.lr_drop_epochs)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'Config':
    """Inverse of :meth:`to_dict`; unknown keys are ignored, missing ones
    take the field defaults."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})

  def replace(self, **changes) -> 'Config':
    return dataclasses.replace(self, **changes)


def _parse_int_list(values: Sequence[str], flag: str) -> Tuple[int, ...]:
  try:
    return tuple(int(v) for v in values if str(v).strip())
  except ValueError:
    raise ConfigError(f'--{flag}={",".join(values)}: expected a comma-'
                      'separated list of integers (epochs).') from None


def config_from_flags(dataset: str) -> Config:
  """Reads the parsed flags into a :class:`Config` for ``dataset``."""
  if dataset not in DATASETS:
    raise ConfigError(f'unknown dataset {dataset!r}; expected one of '
                      f'{DATASETS}')
  if not _WORKDIR.value:
    raise ConfigError('--workdir is required.')
  return Config(
      dataset=dataset,
      workdir=os.path.abspath(os.path.expanduser(_WORKDIR.value)),
      data_dir=(os.path.abspath(os.path.expanduser(_DATA_DIR.value))
                if _DATA_DIR.value else None),
      method=_METHOD.value,
      model=_MODEL.value,
      wrn_depth=_WRN_DEPTH.value,
      wrn_width=_WRN_WIDTH.value,
      num_epochs=_NUM_EPOCHS.value,
      batch_size=_BATCH_SIZE.value,
      seed=_SEED.value,
      eps=_EPS.value,
      step_size=(_STEP_SIZE.value if _STEP_SIZE.value is not None
                 else _EPS.value / 4),
      num_steps=_NUM_STEPS.value,
      c_max=_C_MAX.value,
      t_prime=_T_PRIME.value,
      curriculum_max_steps=_CURRICULUM_MAX_STEPS.value,
      curriculum_threshold=_CURRICULUM_THRESHOLD.value,
      curriculum_start_steps=_CURRICULUM_START_STEPS.value,
      learning_rate=_LEARNING_RATE.value,
      momentum=_MOMENTUM.value,
      weight_decay=_WEIGHT_DECAY.value,
      lr_drop_epochs=_parse_int_list(_LR_DROP_EPOCHS.value, 'lr_drop_epochs'),
      keras_decay=_KERAS_DECAY.value,
      loss_weighting=_LOSS_WEIGHTING.value,
      fosc_centre_random_start=_FOSC_CENTRE_RANDOM_START.value,
      augment=_AUGMENT.value,
      eps_warmup_epochs=_EPS_WARMUP_EPOCHS.value,
      num_train_examples=_NUM_TRAIN_EXAMPLES.value,
      num_eval_examples=_NUM_EVAL_EXAMPLES.value,
      eval_batch_size=_EVAL_BATCH_SIZE.value,
      eval_every=_EVAL_EVERY.value,
      eval_every_examples=_EVAL_EVERY_EXAMPLES.value,
      attacks=_ATTACKS.value,
      log_every_steps=_LOG_EVERY_STEPS.value,
      checkpoint_every_steps=_CHECKPOINT_EVERY_STEPS.value,
      keep_checkpoints=_KEEP_CHECKPOINTS.value,
      stop_after_steps=_STOP_AFTER_STEPS.value,
      source_workdir=(os.path.abspath(os.path.expanduser(
          _SOURCE_WORKDIR.value)) if _SOURCE_WORKDIR.value else None),
      multihost=_MULTIHOST.value,
  )


def set_dataset_defaults(dataset: str) -> None:
  """Makes ``dataset``'s settings the flag defaults (before parsing)."""
  for name, value in DATASET_DEFAULTS[dataset].items():
    flags.FLAGS.set_default(name, value)


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def validate_config(config: Config) -> None:
  """Checks every flag that can be checked without data or devices.

  Raises:
    ConfigError: naming the offending flag.
  """
  c = config
  _require(c.dataset in DATASETS, f'unknown dataset {c.dataset!r}')
  _require(c.method in train.METHODS,
           f'--method={c.method}: expected one of {train.METHODS}.')
  _require(c.model in DATASET_MODELS[c.dataset],
           f'--model={c.model} does not fit {c.dataset}; use one of '
           f'{DATASET_MODELS[c.dataset]}.')
  _require(c.eps is not None and 0.0 < c.eps <= 1.0,
           f'--eps={c.eps} is outside (0, 1]: eps is an L-inf radius in '
           'pixel units (pixels in [0, 1]), e.g. 0.3 for MNIST or 8/255 = '
           '0.0313725 for CIFAR-10.')
  _require(c.step_size > 0, f'--step_size={c.step_size} must be positive.')
  _require(c.num_epochs >= 1, f'--num_epochs={c.num_epochs} must be >= 1.')
  _require(c.batch_size >= 1, f'--batch_size={c.batch_size} must be >= 1.')
  _require(c.num_steps >= 0, f'--num_steps={c.num_steps} must be >= 0.')
  _require(c.c_max >= 0, f'--c_max={c.c_max} must be >= 0.')
  _require(c.t_prime > 0, f'--t_prime={c.t_prime} must be positive.')
  _require(c.curriculum_start_steps >= 0,
           f'--curriculum_start_steps={c.curriculum_start_steps} must be '
           '>= 0.')
  _require(c.curriculum_max_steps >= c.curriculum_start_steps,
           f'--curriculum_max_steps={c.curriculum_max_steps} must be >= '
           f'--curriculum_start_steps={c.curriculum_start_steps}.')
  _require(0.0 <= c.curriculum_threshold <= 1.0,
           f'--curriculum_threshold={c.curriculum_threshold} must be a '
           'fraction in [0, 1].')
  _require(c.learning_rate > 0,
           f'--learning_rate={c.learning_rate} must be positive.')
  _require(0.0 <= c.momentum < 1.0,
           f'--momentum={c.momentum} must be in [0, 1).')
  _require(c.weight_decay >= 0,
           f'--weight_decay={c.weight_decay} must be >= 0.')
  _require(all(e >= 0 for e in c.lr_drop_epochs),
           f'--lr_drop_epochs={c.lr_drop_epochs} must be >= 0.')
  _require(c.keras_decay >= 0, f'--keras_decay={c.keras_decay} must be >= 0.')
  _require(c.augment in AUGMENTATIONS,
           f'--augment={c.augment}: expected one of {AUGMENTATIONS}.')
  _require(c.eps_warmup_epochs >= 0,
           f'--eps_warmup_epochs={c.eps_warmup_epochs} must be >= 0.')
  _require(c.num_train_examples >= 0,
           f'--num_train_examples={c.num_train_examples} must be >= 0 '
           '(0 = all).')
  _require(c.num_eval_examples >= 0,
           f'--num_eval_examples={c.num_eval_examples} must be >= 0 '
           '(0 = all).')
  _require(c.eval_batch_size >= 1,
           f'--eval_batch_size={c.eval_batch_size} must be >= 1.')
  _require(c.eval_every >= 0, f'--eval_every={c.eval_every} must be >= 0.')
  _require(c.eval_every_examples >= 1,
           f'--eval_every_examples={c.eval_every_examples} must be >= 1.')
  _require(c.attacks in ATTACK_SETS,
           f'--attacks={c.attacks}: expected one of {tuple(ATTACK_SETS)}.')
  _require(c.log_every_steps >= 1,
           f'--log_every_steps={c.log_every_steps} must be >= 1.')
  _require(c.checkpoint_every_steps >= 0,
           f'--checkpoint_every_steps={c.checkpoint_every_steps} must be '
           '>= 0.')
  _require(c.keep_checkpoints >= 1,
           f'--keep_checkpoints={c.keep_checkpoints} must be >= 1.')
  _require(c.stop_after_steps >= 0,
           f'--stop_after_steps={c.stop_after_steps} must be >= 0.')
  if c.model == 'wrn':
    _require(c.wrn_depth >= 10 and (c.wrn_depth - 4) % 6 == 0,
             f'--wrn_depth={c.wrn_depth}: (depth - 4) must be divisible by 6 '
             '(e.g. 16, 28, 34).')
    _require(c.wrn_width >= 1, f'--wrn_width={c.wrn_width} must be >= 1.')
  if c.augment == 'keras':
    try:
      import scipy.ndimage  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      raise ConfigError('--augment=keras needs scipy (pip install scipy); use '
                        '--augment=crop_flip or none instead.') from None


def validate_devices(config: Config, *, training: bool = True) -> None:
  """Checks the batch sizes against the devices and processes.

  Args:
    config: the run's config.
    training: also check ``--batch_size`` (not only ``--eval_batch_size``).

  Raises:
    ConfigError: naming --batch_size or --eval_batch_size.
  """
  n, p = jax.device_count(), jax.process_count()
  checks = [('eval_batch_size', config.eval_batch_size)]
  if training:
    checks.insert(0, ('batch_size', config.batch_size))
  for flag, value in checks:
    _require(value % n == 0 and value % p == 0,
             f'--{flag}={value} is not divisible by the number of devices '
             f'({n}) and processes ({p}); use a multiple of {n}.')


def flag_differences(saved: Mapping[str, Any],
                     config: Config) -> List[Tuple[str, Any, Any]]:
  """``(flag, saved value, new value)`` of every flag that may not change.

  Flags missing from ``saved`` (written by an older version) count as their
  :class:`Config` default.
  """
  current = config.to_dict()
  defaults = Config(dataset=config.dataset, workdir='').to_dict()
  out = []
  for name, value in current.items():
    if name in MAY_DIFFER_ON_RESUME:
      continue
    old = saved.get(name, defaults.get(name))
    if json.loads(json.dumps(old)) != json.loads(json.dumps(value)):
      out.append((name, old, value))
  return out


def check_workdir_compatible(config: Config) -> Optional[Dict[str, Any]]:
  """Refuses to resume a workdir trained with different flags.

  Returns:
    The saved flags (``None`` for a fresh workdir).

  Raises:
    ConfigError: naming every differing flag with both values.
  """
  path = os.path.join(config.workdir, FLAGS_FILE)
  ckpt_dir = os.path.join(config.workdir, CHECKPOINT_DIR)
  if not os.path.exists(path):
    if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
      raise ConfigError(
          f'--workdir={config.workdir} holds checkpoints but no {FLAGS_FILE}; '
          'refusing to resume a run whose flags are unknown. Use a new '
          '--workdir.')
    return None
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f'--workdir={config.workdir}: cannot read {path}: {e}'
                      ) from e
  diffs = flag_differences(saved, config)
  if diffs:
    lines = '\n'.join(f'  --{name}: saved {old!r}, now {new!r}'
                      for name, old, new in diffs)
    raise ConfigError(
        f'--workdir={config.workdir} holds a run with different flags '
        f'({path}); refusing to resume it with:\n{lines}\nUse the saved '
        'values or a new --workdir. (Flags that may differ on resume: '
        f'{", ".join(MAY_DIFFER_ON_RESUME)}.)')
  return saved


def check_workdir_writable(workdir: str) -> None:
  """Creates ``workdir`` if needed and checks a file can be written in it.

  Raises:
    ConfigError: naming --workdir.
  """
  try:
    os.makedirs(workdir, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=workdir, prefix='.write_probe')
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f'--workdir={workdir} is not a writable folder: {e}'
                      ) from e


def check_source_workdir(config: Config) -> None:
  """Checks that ``--source_workdir`` holds a finished run on the same data.

  Raises:
    ConfigError: naming --source_workdir.
  """
  if not config.source_workdir:
    return
  path = os.path.join(config.source_workdir, FLAGS_FILE)
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f'--source_workdir={config.source_workdir}: cannot '
                      f'read its {FLAGS_FILE} ({e}); is it a run folder?'
                      ) from e
  if saved.get('dataset') != config.dataset:
    raise ConfigError(f'--source_workdir={config.source_workdir} was trained '
                      f'on {saved.get("dataset")!r}, not {config.dataset!r}.')
  ckpt_dir = os.path.join(config.source_workdir, CHECKPOINT_DIR)
  if not os.path.isdir(ckpt_dir) or not os.listdir(ckpt_dir):
    raise ConfigError(f'--source_workdir={config.source_workdir} has no '
                      f'checkpoints in {ckpt_dir}.')


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def _first(ds: data.Dataset, n: int, flag: str) -> data.Dataset:
  """The first ``n`` examples (0 = all), checked against the split's size."""
  if not n or n == ds.num_examples:
    return ds
  if n > ds.num_examples:
    raise ConfigError(f'--{flag}={n} but the {ds.name} {ds.split} split has '
                      f'only {ds.num_examples} examples ({ds.source}).')
  return dataclasses.replace(
      ds, images=ds.images[:n].copy(), labels=ds.labels[:n].copy(),
      source=f'{ds.source}, first {n} of {ds.num_examples}')


def load_data(config: Config) -> Tuple[data.Dataset, data.Dataset]:
  """Loads the train and test splits and prints loudly what was loaded.

  Raises:
    data.DataError: missing or corrupt files (the message names the file).
    ConfigError: a subset larger than the split.
  """
  train_ds = _first(data.load_dataset(config.dataset, 'train',
                                      config.data_dir),
                    config.num_train_examples, 'num_train_examples')
  test_ds = load_test_data(config, announce=False)
  if config.batch_size > train_ds.num_examples:
    raise ConfigError(f'--batch_size={config.batch_size} is larger than the '
                      f'{train_ds.num_examples} training examples '
                      '(--num_train_examples).')
  _print(f'Training data: {train_ds.num_examples:,} examples from '
         f'{train_ds.source}')
  _print(f'Test data: {test_ds.num_examples:,} examples from '
         f'{test_ds.source}')
  warning = data.dataset_warning(train_ds)
  if warning:
    _loud(warning)
  return train_ds, test_ds


def load_test_data(config: Config, *, announce: bool = True
                   ) -> data.Dataset:
  """The first ``--num_eval_examples`` test examples (0 = all)."""
  test_ds = _first(data.load_dataset(config.dataset, 'test', config.data_dir),
                   config.num_eval_examples, 'num_eval_examples')
  if announce:
    _print(f'Test data: {test_ds.num_examples:,} examples from '
           f'{test_ds.source}')
  return test_ds


def _augment_keras(images: np.ndarray, rng: np.random.Generator, *,
                   rotation: float = 10.0, shift: float = 0.2) -> np.ndarray:
  """The authors' Keras ImageDataGenerator(rotation_range=10,
  width_shift_range=0.2, height_shift_range=0.2, horizontal_flip=True):
  a random rotation, shift and horizontal flip per image, bilinear, with the
  nearest edge pixel filling the border (Keras' default fill_mode)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  b, h, w, _ = images.shape
  angles = np.deg2rad(rng.uniform(-rotation, rotation, b))
  shifts = rng.uniform(-shift, shift, (b, 2)) * np.array([h, w])
  flips = rng.random(b) < 0.5
  centre = np.array([(h - 1) / 2, (w - 1) / 2])
  out = np.empty_like(images)
  for i in range(b):
    cos, sin = np.cos(angles[i]), np.sin(angles[i])
    rot = np.array([[cos, -sin], [sin, cos]])
    matrix = np.eye(3)
    matrix[:2, :2] = rot
    offset = np.zeros(3)
    # input = rot @ (output - centre) + centre - shift
    offset[:2] = centre - rot @ centre - shifts[i]
    img = ndimage.affine_transform(images[i], matrix, offset, order=1,
                                   mode='nearest')
    out[i] = img[:, ::-1] if flips[i] else img
  return out


def augment(config: Config, images: np.ndarray, epoch: int,
            batch_index: int) -> np.ndarray:
  """Augments this process's share of one batch.

  The random numbers are a pure function of (seed, epoch, batch index,
  process), so a resumed epoch augments its remaining batches exactly as an
  uninterrupted one.
  """
  if config.augment == 'none':
    return images
  rng = np.random.default_rng(
      [config.seed, epoch, batch_index, jax.process_index(), 7])
  if config.augment == 'crop_flip':
    return data.augment_cifar(images, rng)
  return _augment_keras(images, rng)


# --------------------------------------------------------------------------
# Model, optimiser, schedules
# --------------------------------------------------------------------------


def build_model(config: Config):
  """The Flax module of ``config.model``."""
  if config.model == 'wrn':
    return models.get_model('wrn', depth=config.wrn_depth,
                            width=config.wrn_width)
  return models.get_model(config.model)


def run_keys(seed: int) -> Tuple[jax.Array, jax.Array]:
  """``(init_key, train_key)``: the parameter initialisation's key and the
  training step's base key (each step folds in its global step)."""
  init_key, train_key = jax.random.split(jax.random.key(seed))
  return init_key, train_key


def initial_state(config: Config, input_shape: Tuple[int, ...],
                  steps_per_epoch: int) -> train.TrainState:
  """A fresh (unplaced) train state with the run's optimiser."""
  tx = train.make_optimizer(
      learning_rate=config.learning_rate, momentum=config.momentum,
      weight_decay=config.weight_decay, steps_per_epoch=steps_per_epoch,
      lr_drop_epochs=config.lr_drop_epochs, keras_decay=config.keras_decay)
  init_key, _ = run_keys(config.seed)
  state = train.create_train_state(build_model(config), init_key, input_shape,
                                   tx)
  return state.replace(step=jnp.zeros((), jnp.int32))


def learning_rate(config: Config, epoch: int, step: int) -> float:
  """The rate :func:`train.make_optimizer`'s schedule gives at ``step``."""
  lr = config.learning_rate * 0.1 ** sum(epoch >= e
                                         for e in config.lr_drop_epochs)
  return lr / (1.0 + config.keras_decay * step)


def epoch_eps(config: Config, epoch: int) -> float:
  """Eps of ``epoch``: ramped over ``--eps_warmup_epochs``, then ``--eps``."""
  if config.eps_warmup_epochs and epoch < config.eps_warmup_epochs:
    return config.eps * (epoch + 1) / config.eps_warmup_epochs
  return config.eps


def epoch_attack_params(config: Config, epoch: int,
                        curriculum_k: int) -> train.AttackParams:
  """The traced attack settings of ``epoch`` (step size scaled with eps)."""
  eps = epoch_eps(config, epoch)
  return train.attack_params_for_epoch(
      config.method, epoch, eps=eps,
      step_size=config.step_size * eps / config.eps,
      num_steps=config.num_steps, c_max=config.c_max, t_prime=config.t_prime,
      curriculum_steps=curriculum_k)


# The step metrics the loop fetches (the others are not computed).
_STEP_METRICS = ('loss', 'accuracy', 'steps_mean', 'steps_max', 'iters_max',
                 'fosc')


def make_step(config: Config, mesh) -> Tuple[Any, List[int]]:
  """The jitted training step (state donated) and a trace counter.

  ``weighted`` (the authors' loss weighting, ``--loss_weighting`` after epoch
  0) and the attack parameters are traced, so neither recompiles the step.
  """
  step = train.make_train_step(
      config.method, mesh,
      fosc_centre_random_start=config.fosc_centre_random_start)
  traces = [0]

  def counted(state, batch, key, attack_params, weighted):
    traces[0] += 1
    state, metrics = step(state, batch, key, attack_params, weighted)
    return state, {k: metrics[k] for k in _STEP_METRICS}

  return jax.jit(counted, donate_argnums=0), traces


# --------------------------------------------------------------------------
# Host-side progress (checkpointed)
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Progress:
  """What the host tracks besides the train state; checkpointed with it.

  Attributes:
    step: global step (optimiser updates so far).
    curriculum_k: curriculum's current k.
    loss_sum, accuracy_sum, steps_mean_sum: sums over the epoch's batches.
    steps_max, iters_max: maxima over the epoch's batches.
    num_batches: batches of the epoch folded in so far.
    epoch_time_s: wall time spent on the epoch so far.
    train_time_s: wall time of all training so far.
    fosc: ``f32[steps_per_epoch * batch_size]`` FOSC of the epoch's
      adversarial examples (batch ``i`` at ``[i * B, (i + 1) * B)``).
  """
  step: int
  curriculum_k: int
  fosc: np.ndarray
  loss_sum: float = 0.0
  accuracy_sum: float = 0.0
  steps_mean_sum: float = 0.0
  steps_max: int = 0
  iters_max: int = 0
  num_batches: int = 0
  epoch_time_s: float = 0.0
  train_time_s: float = 0.0

  _META = ('step', 'curriculum_k', 'loss_sum', 'accuracy_sum',
           'steps_mean_sum', 'steps_max', 'iters_max', 'num_batches',
           'epoch_time_s', 'train_time_s')

  def meta(self) -> Dict[str, Any]:
    return {k: getattr(self, k) for k in self._META}

  @classmethod
  def from_meta(cls, meta: Mapping[str, Any], fosc: np.ndarray) -> 'Progress':
    return cls(fosc=np.asarray(fosc, np.float32),
               **{k: meta[k] for k in cls._META})

  def reset_epoch(self) -> None:
    self.loss_sum = self.accuracy_sum = self.steps_mean_sum = 0.0
    self.steps_max = self.iters_max = self.num_batches = 0
    self.epoch_time_s = 0.0
    self.fosc = np.zeros_like(self.fosc)


@dataclasses.dataclass
class Run:
  """The fixed parts of a training run (no mutable training state)."""
  config: Config
  mesh: Any
  train_ds: data.Dataset
  test_ds: data.Dataset
  steps_per_epoch: int
  key: jax.Array
  step_fn: Any
  traces: List[int]
  ckpt: checkpoint.Checkpointer
  writer: Any  # tensorboardX.SummaryWriter on process 0, else None

  @property
  def total_steps(self) -> int:
    return self.config.num_epochs * self.steps_per_epoch


# --------------------------------------------------------------------------
# Output helpers
# --------------------------------------------------------------------------


def _is_main_process() -> bool:
  return jax.process_index() == 0


def _print(message: str) -> None:
  if _is_main_process():
    print(message, flush=True)


def _loud(message: str) -> None:
  if _is_main_process():
    bar = '!' * 78
    print(f'\n{bar}\n{message}\n{bar}\n', file=sys.stderr, flush=True)


def _atomic_write_text(path: str, text: str) -> None:
  folder = os.path.dirname(path)
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path))
  try:
    with os.fdopen(fd, 'w') as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _atomic_save_npy(path: str, array: np.ndarray) -> None:
  folder = os.path.dirname(path)
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path))
  try:
    with os.fdopen(fd, 'wb') as f:
      np.save(f, array)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def read_metrics(workdir: str) -> List[Dict[str, Any]]:
  """The rows of ``workdir/metrics.jsonl`` (empty if there is none)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _truncate_metrics(workdir: str, first_epoch: int) -> None:
  """Drops rows of epochs >= ``first_epoch`` (re-done after a resume)."""
  rows = read_metrics(workdir)
  kept = [r for r in rows if r.get('epoch', -1) < first_epoch]
  if len(kept) != len(rows):
    _atomic_write_text(os.path.join(workdir, METRICS_FILE),
                       ''.join(json.dumps(r) + '\n' for r in kept))


def _append_metrics(workdir: str, row: Mapping[str, Any]) -> None:
  with open(os.path.join(workdir, METRICS_FILE), 'a') as f:
    f.write(json.dumps(row) + '\n')


def _devices_description() -> str:
  d = jax.devices()[0]
  return (f'{jax.device_count()} x {d.platform} ({d.device_kind}), '
          f'{jax.process_count()} process(es)')


def _to_host(tree: Any) -> Any:
  """One transfer of a pytree of (possibly multi-host) arrays to numpy."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


def _variables(state: train.TrainState) -> Dict[str, Any]:
  return {'params': state.params, 'batch_stats': state.batch_stats}


def _fresh_progress(config: Config, steps_per_epoch: int) -> Progress:
  return Progress(step=0, curriculum_k=config.curriculum_start_steps,
                  fosc=np.zeros(steps_per_epoch * config.batch_size,
                                np.float32))


def restore_or_init(run: Run, template: train.TrainState
                    ) -> Tuple[train.TrainState, Progress]:
  """The newest checkpoint of the run, or the fresh state."""
  progress = _fresh_progress(run.config, run.steps_per_epoch)
  if run.ckpt.latest_step() is None:
    return template, progress
  state, arrays, meta = run.ckpt.restore(
      template, arrays_target={'fosc': progress.fosc})
  for name, expected in (('steps_per_epoch', run.steps_per_epoch),
                         ('batch_size', run.config.batch_size)):
    if meta.get(name) != expected:
      raise ConfigError(
          f'--workdir={run.config.workdir}: its checkpoint was written with '
          f'{name}={meta.get(name)} but this run has {expected} (did the '
          'training data change? --data_dir points at '
          f'{run.config.data_dir!r}).')
  progress = Progress.from_meta(meta, arrays['fosc'])
  _print(f'Resuming from step {progress.step} (epoch '
         f'{progress.step // run.steps_per_epoch}, batch '
         f'{progress.step % run.steps_per_epoch}) in {run.ckpt.directory}')
  return state, progress


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                            for x in jax.tree.leaves(tree)]))


def _save(run: Run, state: train.TrainState, progress: Progress) -> None:
  """Checkpoints ``state`` unless its parameters are no longer finite."""
  if not bool(_to_host(_all_finite((state.params, state.batch_stats)))):
    run.ckpt.wait_until_finished()
    raise TrainingDivergedError(
        f'the parameters are NaN or infinite after step {progress.step}; '
        f'stopping without saving them. The last good checkpoint is step '
        f'{run.ckpt.latest_step()} in {run.ckpt.directory}. Try a lower '
        '--learning_rate or --eps_warmup_epochs.')
  meta = dict(progress.meta(), steps_per_epoch=run.steps_per_epoch,
              batch_size=run.config.batch_size,
              num_train_examples=run.train_ds.num_examples,
              train_data_source=run.train_ds.source)
  run.ckpt.save(progress.step, state, arrays={'fosc': progress.fosc},
                meta=meta)


def _flush(run: Run, pending: List[Tuple[int, Dict[str, Any]]],
           progress: Progress, since: float) -> float:
  """Fetches the pending steps' metrics (one transfer), checks them for NaN
  and folds them into ``progress``. Returns the time of the flush."""
  if not pending:
    return since
  fetched = _to_host([m for _, m in pending])
  batch = run.config.batch_size
  for (index, _), m in zip(pending, fetched):
    loss = float(m['loss'])
    if not math.isfinite(loss):
      run.ckpt.wait_until_finished()
      last = run.ckpt.latest_step()
      epoch = (progress.step - 1) // run.steps_per_epoch
      raise TrainingDivergedError(
          f'the training loss is {loss} at step '
          f'{epoch * run.steps_per_epoch + index + 1} (epoch {epoch}, batch '
          f'{index}); stopping. The '
          f'last good checkpoint is step {last} in {run.ckpt.directory} (the '
          'diverged state was not saved). Try a lower --learning_rate or '
          '--eps_warmup_epochs.')
    progress.loss_sum += loss
    progress.accuracy_sum += float(m['accuracy'])
    progress.steps_mean_sum += float(m['steps_mean'])
    progress.steps_max = max(progress.steps_max, int(m['steps_max']))
    progress.iters_max = max(progress.iters_max, int(m['iters_max']))
    progress.num_batches += 1
    progress.fosc[index * batch:(index + 1) * batch] = np.asarray(
        m['fosc'], np.float32)
  pending.clear()
  now = time.time()
  progress.epoch_time_s += now - since
  progress.train_time_s += now - since
  return now


def epoch_row(run: Run, epoch: int, progress: Progress,
              attack_params: train.AttackParams) -> Dict[str, Any]:
  """The epoch's metrics.jsonl row.

  Keys: ``epoch`` (from 0), ``step`` (global step at its end),
  ``train_loss`` / ``train_accuracy`` (mean over batches of the adversarial
  batch's cross-entropy / accuracy as a fraction), ``steps_mean`` (mean PGD
  steps per example), ``steps_max`` (most steps of an example),
  ``iters_max`` (most loop iterations a device ran), ``c_t`` (Dynamic's FOSC
  threshold, else ``None``), ``num_steps`` (K, or Curriculum's k), ``eps``,
  ``step_size``, ``lr`` (at the epoch's start), ``epoch_time_s``,
  ``train_time_s`` (cumulative); :func:`evaluate_epoch` adds ``test_clean``
  and ``test_pgd20`` (percent) when due.
  """
  n = max(progress.num_batches, 1)
  config = run.config
  eps = epoch_eps(config, epoch)
  c_t = None
  if config.method == 'dynamic':
    c_t = max(config.c_max - epoch * config.c_max / config.t_prime, 0.0)
  return {
      'epoch': epoch,
      'step': progress.step,
      'train_loss': progress.loss_sum / n,
      'train_accuracy': progress.accuracy_sum / n,
      'steps_mean': progress.steps_mean_sum / n,
      'steps_max': progress.steps_max,
      'iters_max': progress.iters_max,
      'c_t': c_t,
      'num_steps': int(attack_params.num_steps),
      'eps': eps,
      'step_size': config.step_size * eps / config.eps,
      'lr': learning_rate(config, epoch, epoch * run.steps_per_epoch),
      'epoch_time_s': progress.epoch_time_s,
      'train_time_s': progress.train_time_s,
  }


def evaluate_epoch(run: Run, state: train.TrainState) -> Dict[str, float]:
  """Clean and PGD-20 test accuracy (%) on ``--eval_every_examples``."""
  config = run.config
  n = min(config.eval_every_examples, run.test_ds.num_examples)
  res = evaluation.evaluate(
      state.apply_fn, _variables(state), run.test_ds.images[:n],
      run.test_ds.labels[:n], eps=config.eps,
      key=jax.random.fold_in(jax.random.key(config.seed), _EPOCH_EVAL_KEY),
      batch_size=_eval_batch_size(config, n), mesh=run.mesh,
      attacks=('clean', 'pgd20'))
  return {'test_clean': res['white_box']['clean'],
          'test_pgd20': res['white_box']['pgd20']}


def _eval_batch_size(config: Config, n: int) -> int:
  """``--eval_batch_size``, or less for fewer examples (still a multiple of
  the device count)."""
  devices = jax.device_count()
  return min(config.eval_batch_size, -(-n // devices) * devices)


def _chance_warning(config: Config, row: Mapping[str, Any],
                    when: str) -> None:
  if config.method == 'unsecured':
    return
  if abs(row['train_loss'] - CHANCE_LOSS) < _CHANCE_TOLERANCE:
    _loud(f'WARNING: {when} the adversarial training loss is '
          f'{row["train_loss"]:.4f}, about ln(10) = {CHANCE_LOSS:.4f}: the '
          'model is at chance level and may be stuck there (a known failure '
          'of PGD training on MNIST at eps 0.3). Try --eps_warmup_epochs=5 '
          '(ramp eps up over 5 epochs) or a lower --learning_rate.')


def _log_epoch(run: Run, row: Mapping[str, Any], fosc: np.ndarray) -> None:
  """Writes the epoch's row, TensorBoard scalars and FOSC values."""
  if not _is_main_process():
    return
  epoch = row['epoch']
  _append_metrics(run.config.workdir, row)
  if run.config.method != 'unsecured':
    _atomic_save_npy(os.path.join(run.config.workdir, FOSC_DIR,
                                  f'epoch_{epoch:04d}.npy'), fosc)
  if run.writer is not None:
    for k, v in row.items():
      if k != 'epoch' and isinstance(v, (int, float)) and v is not None:
        run.writer.add_scalar(k, v, epoch)
    if run.config.method != 'unsecured':
      run.writer.add_histogram('fosc', fosc, epoch)
    run.writer.flush()
  parts = [f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
           for k, v in row.items() if v is not None]
  _print('epoch summary: ' + ' '.join(parts))


def _end_epoch(run: Run, state: train.TrainState, progress: Progress,
               epoch: int, attack_params: train.AttackParams) -> None:
  """Logs the finished epoch, evaluates it if due and updates k."""
  config = run.config
  row = epoch_row(run, epoch, progress, attack_params)
  last = epoch == config.num_epochs - 1
  if config.eval_every and ((epoch + 1) % config.eval_every == 0 or last):
    row.update(evaluate_epoch(run, state))
  _log_epoch(run, row, progress.fosc)
  if epoch == 0:
    _chance_warning(config, row, 'after the first epoch')
  if config.method == 'curriculum':
    progress.curriculum_k = train.curriculum_num_steps(
        progress.curriculum_k, row['train_accuracy'],
        threshold=config.curriculum_threshold,
        max_steps=config.curriculum_max_steps)
  progress.reset_epoch()


def _epoch_batches(run: Run, epoch: int, skip: int) -> Iterator[
    Tuple[int, Dict[str, np.ndarray]]]:
  """``(index, local batch)`` of ``epoch`` from batch ``skip`` on."""
  batches = data.epoch_batches(
      run.train_ds, run.config.batch_size, seed=run.config.seed, epoch=epoch,
      process_index=jax.process_index(), process_count=jax.process_count())
  for i, local in enumerate(batches):
    if i >= skip:
      yield i, local


def train_epoch(run: Run, state: train.TrainState, progress: Progress,
                stop_at: int) -> Tuple[train.TrainState, bool]:
  """Trains from ``progress.step`` to the end of its epoch (or ``stop_at``).

  Returns:
    ``(state, finished_epoch)``.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  config = run.config
  epoch, skip = divmod(progress.step, run.steps_per_epoch)
  attack_params = epoch_attack_params(config, epoch, progress.curriculum_k)
  ap = parallel.replicate(attack_params, run.mesh)
  weighted = parallel.replicate(
      jnp.asarray(config.loss_weighting and epoch > 0), run.mesh)
  pending = []
  since = time.time()
  bar = tqdm(total=run.steps_per_epoch, initial=skip,
             desc=f'epoch {epoch + 1}/{config.num_epochs}', dynamic_ncols=True,
             disable=not _is_main_process(), file=sys.stdout)
  c_t = float(attack_params.c_stop)
  try:
    for index, local in _epoch_batches(run, epoch, skip):
      local = dict(local, image=augment(config, local['image'], epoch, index))
      batch = parallel.global_batch(local, run.mesh)
      state, metrics = run.step_fn(state, batch, run.key, ap, weighted)
      pending.append((index, metrics))
      progress.step += 1
      bar.update(1)
      end = index == run.steps_per_epoch - 1
      save = end or progress.step == stop_at or (
          config.checkpoint_every_steps and
          progress.step % config.checkpoint_every_steps == 0)
      if save or progress.step % config.log_every_steps == 0:
        since = _flush(run, pending, progress, since)
        n = max(progress.num_batches, 1)
        bar.set_postfix(loss=f'{progress.loss_sum / n:.4f}',
                        adv_acc=f'{progress.accuracy_sum / n:.4f}',
                        pgd_steps=f'{progress.steps_mean_sum / n:.2f}',
                        c_t=f'{c_t:.3f}' if math.isfinite(c_t) else '-')
      if end:
        _end_epoch(run, state, progress, epoch, attack_params)
      if save:
        _save(run, state, progress)
      if progress.step == stop_at and not end:
        return state, False
  finally:
    bar.close()
  return state, True


@dataclasses.dataclass
class TrainResult:
  """What :func:`train_loop` returns."""
  state: train.TrainState
  finished: bool
  step: int
  num_traces: int
  train_time_s: float
  run: Run


def setup(config: Config, *, train_ds: data.Dataset,
          test_ds: data.Dataset) -> Tuple[Run, train.TrainState]:
  """Builds the mesh, the replicated fresh state, the step and the
  checkpointer of a validated config."""
  mesh = parallel.make_mesh()
  steps_per_epoch = data.num_batches(train_ds.num_examples, config.batch_size,
                                     drop_remainder=True)
  state = parallel.replicate(
      initial_state(config, train_ds.image_shape, steps_per_epoch), mesh)
  step_fn, traces = make_step(config, mesh)
  writer = None
  if _is_main_process():
    import tensorboardX  # pylint: disable=g-import-not-at-top
    writer = tensorboardX.SummaryWriter(os.path.join(config.workdir, TB_DIR))
  run = Run(config=config, mesh=mesh, train_ds=train_ds, test_ds=test_ds,
            steps_per_epoch=steps_per_epoch,
            key=parallel.replicate(run_keys(config.seed)[1], mesh),
            step_fn=step_fn, traces=traces,
            ckpt=checkpoint.Checkpointer(
                os.path.join(config.workdir, CHECKPOINT_DIR),
                max_to_keep=config.keep_checkpoints),
            writer=writer)
  return run, state


def train_loop(config: Config, *, train_ds: data.Dataset,
               test_ds: data.Dataset) -> TrainResult:
  """Trains (resuming from the workdir's newest checkpoint) until
  ``num_epochs`` or ``stop_after_steps``.

  ``config`` must be validated and the workdir prepared (:func:`prepare`).
  """
  run, state = setup(config, train_ds=train_ds, test_ds=test_ds)
  try:
    state, progress = restore_or_init(run, state)
    if _is_main_process():
      _truncate_metrics(config.workdir, progress.step // run.steps_per_epoch)
    stop_at = min(config.stop_after_steps or run.total_steps,
                  run.total_steps)
    while progress.step < stop_at:
      state, _ = train_epoch(run, state, progress, stop_at)
    finished = progress.step >= run.total_steps
    if not finished:
      _print(f'Stopped at step {progress.step} of {run.total_steps} '
             '(--stop_after_steps); rerun without it to resume.')
  except KeyboardInterrupt:
    run.ckpt.wait_until_finished()
    _print(f'\nInterrupted. The newest checkpoint is step '
           f'{run.ckpt.latest_step()} in {run.ckpt.directory}; rerun the same '
           'command to resume from it.')
    raise
  finally:
    run.ckpt.close()
    if run.writer is not None:
      run.writer.close()
  return TrainResult(state=state, finished=finished, step=progress.step,
                     num_traces=run.traces[0],
                     train_time_s=progress.train_time_s, run=run)


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------


def make_figures(config: Config) -> List[str]:
  """Writes ``fosc_histograms.png`` and ``training_curves.png``."""
  if not _is_main_process():
    return []
  from dynamic_at import plots  # pylint: disable=g-import-not-at-top
  written = []
  rows = read_metrics(config.workdir)
  title = f'{config.dataset} / {config.method}'
  if rows:
    written.append(plots.training_curves(
        rows, os.path.join(config.workdir, 'training_curves.png'),
        title=title))
  fosc_dir = os.path.join(config.workdir, FOSC_DIR)
  if os.path.isdir(fosc_dir):
    files = {int(name[len('epoch_'):-len('.npy')]): name
             for name in os.listdir(fosc_dir)
             if name.startswith('epoch_') and name.endswith('.npy')}
    if files:
      stages = plots.select_stages(sorted(files))
      fosc_by_epoch = {e: np.load(os.path.join(fosc_dir, files[e]))
                       for e in stages}
      written.append(plots.fosc_histograms(
          fosc_by_epoch, os.path.join(config.workdir, 'fosc_histograms.png'),
          title=f'FOSC of training adversarial examples ({title})'))
  for path in written:
    _print(f'Wrote {path}')
  return written


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
    _loud(f'WARNING: {workdir} is not fully trained (step '
          f'{meta.get("step")} of {total}); evaluating its newest checkpoint.')
  return config, state, meta


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
  key = jax.random.fold_in(jax.random.key(config.seed), _EVAL_KEY)
  batch_size = _eval_batch_size(config, test_ds.num_examples)
  src = None
  if source is not None:
    src = (source[1].apply_fn, _variables(source[1]))
  _print(f'Evaluating on {test_ds.num_examples:,} test examples '
         f'(eps={config.eps:.6g}, attacks={config.attacks}'
         f'{", black-box source " + source[0] if source else ""}) ...')
  results = evaluation.evaluate(
      state.apply_fn, _variables(state), test_ds.images, test_ds.labels,
      eps=config.eps, key=key, batch_size=batch_size, mesh=mesh,
      attacks=ATTACK_SETS[config.attacks], source=src)
  n1 = min(EPS_ONE_EXAMPLES, test_ds.num_examples)
  eps_one = evaluation.accuracy_at_eps_one(
      state.apply_fn, _variables(state), test_ds.images[:n1],
      test_ds.labels[:n1], key, _eval_batch_size(config, n1), mesh)
  warnings = evaluation.sanity_warnings(results, eps_one_accuracy=eps_one)
  for w in warnings:
    _loud(w)
  out = {
      'dataset': config.dataset,
      'method': config.method,
      'white_box': results['white_box'],
      'black_box': results['black_box'],
      'black_box_source': source[0] if source else None,
      'num_eval_examples': results['num_eval_examples'],
      'eps_one_pgd20_accuracy': eps_one,
      'sanity_warnings': warnings,
      'flags': config.to_dict(),
      'wall_time_s': meta.get('train_time_s'),
      'eval_wall_time_s': time.time() - start,
      'devices': _devices_description(),
      'data_source': {'train': meta.get('train_data_source'),
                      'test': test_ds.source},
      'num_train_examples': meta.get('num_train_examples'),
      'step': meta.get('step'),
  }
  if _is_main_process():
    json_path, _ = evaluation.write_results(
        os.path.join(config.workdir, RESULTS_FILE), out)
    print(evaluation.results_markdown(
        out, title=f'{config.dataset} / {config.method}'), flush=True)
    print(f'Wrote {json_path}', flush=True)
  return out


def restore_source(config: Config, image_shape: Tuple[int, ...], mesh
                   ) -> Optional[Tuple[str, train.TrainState]]:
  """The black-box source model of ``--source_workdir``, if given."""
  if not config.source_workdir:
    return None
  _, state, _ = restore_model(config.source_workdir, image_shape, mesh,
                              flag='source_workdir')
  return config.source_workdir, state


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


def prepare(config: Config) -> Tuple[data.Dataset, data.Dataset]:
  """Every check before training, then ``flags.json``.

  Order: flags, devices, the black-box source, the workdir's saved flags,
  the data, the workdir's writability; nothing is written before all pass.

  Raises:
    ConfigError, data.DataError: naming the flag or file.
  """
  validate_config(config)
  validate_devices(config)
  check_source_workdir(config)
  check_workdir_compatible(config)
  train_ds, test_ds = load_data(config)
  check_workdir_writable(config.workdir)
  if _is_main_process():
    _atomic_write_text(os.path.join(config.workdir, FLAGS_FILE),
                       json.dumps(config.to_dict(), indent=2, sort_keys=True)
                       + '\n')
  return train_ds, test_ds


def run(config: Config) -> Optional[Dict[str, Any]]:
  """Trains, checkpoints, resumes, evaluates and reports one run.

  Returns:
    The results dictionary, or ``None`` if training stopped early
    (``--stop_after_steps``).
  """
  if config.multihost:
    jax.distributed.initialize()
  train_ds, test_ds = prepare(config)
  _print(f'Devices: {_devices_description()}; workdir {config.workdir}')
  result = train_loop(config, train_ds=train_ds, test_ds=test_ds)
  if not result.finished:
    return None
  rows = read_metrics(config.workdir)
  if rows:
    _chance_warning(config, rows[-1], 'at the end of training')
  make_figures(config)
  meta = {'train_time_s': result.train_time_s,
          'train_data_source': train_ds.source,
          'num_train_examples': train_ds.num_examples, 'step': result.step}
  source = restore_source(config, train_ds.image_shape, result.run.mesh)
  return evaluate_and_report(config, result.state, test_ds, result.run.mesh,
                             meta=meta, source=source)


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
    except (ConfigError, data.DataError, TrainingDivergedError) as e:
      fail(e)
    except KeyboardInterrupt:
      sys.exit(130)

  app.run(main)
