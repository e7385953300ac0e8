"""Flags, the run configuration and its validation for the experiment mains.

Every flag of ``experiments/`` is defined here, once: the training mains
(:mod:`experiments.mnist`, :mod:`experiments.cifar10`) and
:mod:`experiments.evaluate` share them. :func:`config_from_flags` reads the
parsed flags into a frozen :class:`Config` before any library call; the
``validate_*`` and ``check_*`` functions raise :class:`ConfigError` naming the
offending flag before anything is written. Also the dataset defaults
(:data:`DATASET_DEFAULTS`), the flags a resumed run may change
(:data:`MAY_DIFFER_ON_RESUME`) and the names of the files of a workdir.
"""

import dataclasses
import json
import os
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import flags
import jax

from dynamic_at import evaluation
from dynamic_at import models
from dynamic_at import train

DATASETS = ('mnist', 'cifar10')
AUGMENTATIONS = ('none', 'crop_flip', 'keras')
ATTACK_SETS = {'paper': evaluation.PAPER_ATTACKS,
               'strong': evaluation.STRONG_ATTACKS}
# Image shape of each dataset (height, width, channels).
IMAGE_SHAPES = {'mnist': (28, 28, 1), 'cifar10': (32, 32, 3)}
# Models each dataset accepts.
DATASET_MODELS = {'mnist': ('mnist_cnn',), 'cifar10': ('cifar10_cnn', 'wrn')}

# Flag defaults that depend on the dataset (the paper's settings); each main
# applies its dataset's before parsing. The flagfiles in experiments/configs/
# spell every setting out anyway.
DATASET_DEFAULTS = {
    'mnist': dict(model='mnist_cnn', eps=0.3, num_epochs=50,
                  lr_drop_epochs=['20', '40'], weight_decay=1e-4, t_prime=40.0,
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
    'stop_after_steps', 'source_workdir', 'multihost', 'coordinator_address',
    'num_processes', 'process_id',
)

FLAGS_FILE = 'flags.json'
METRICS_FILE = 'metrics.jsonl'
RESULTS_FILE = 'results.json'
CHECKPOINT_DIR = 'checkpoints'
FOSC_DIR = 'fosc'
TB_DIR = 'tb'

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
    '(the paper: 1e-4 for MNIST and CIFAR-10).')
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
_UNCLIPPED_RANDOM_START = flags.DEFINE_bool(
    'unclipped_random_start', False, "Authors'-code deviation (off by "
    'default): start training PGD from x0 + U(-eps, eps) without clipping it '
    'to [0, 1] (the first gradient is taken there; every step is clipped). '
    'The paper clips the start.')
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
    'process per host). On TPU pods, SLURM, Open MPI and Kubernetes JAX finds '
    'the coordinator itself; elsewhere give --coordinator_address, '
    '--num_processes and --process_id.')
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    'coordinator_address', None, 'With --multihost: host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'With --multihost: the number of processes.')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'With --multihost: this process, 0..num_processes-1.')


class ConfigError(ValueError):
  """An invalid flag or workdir; the message names the flag."""


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
  unclipped_random_start: bool = False
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
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None

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


def config_from_flags(dataset: str,
                      flag_values: Optional[flags.FlagValues] = None
                      ) -> Config:
  """Reads the parsed flags (``flag_values``, default the global ``FLAGS``)
  into a :class:`Config` for ``dataset``."""
  fv = flags.FLAGS if flag_values is None else flag_values
  value = lambda holder: fv[holder.name].value
  if dataset not in DATASETS:
    raise ConfigError(f'unknown dataset {dataset!r}; expected one of '
                      f'{DATASETS}')
  if not value(_WORKDIR):
    raise ConfigError('--workdir is required.')
  return Config(
      dataset=dataset,
      workdir=os.path.abspath(os.path.expanduser(value(_WORKDIR))),
      data_dir=(os.path.abspath(os.path.expanduser(value(_DATA_DIR)))
                if value(_DATA_DIR) else None),
      method=value(_METHOD),
      model=value(_MODEL),
      wrn_depth=value(_WRN_DEPTH),
      wrn_width=value(_WRN_WIDTH),
      num_epochs=value(_NUM_EPOCHS),
      batch_size=value(_BATCH_SIZE),
      seed=value(_SEED),
      eps=value(_EPS),
      step_size=(value(_STEP_SIZE) if value(_STEP_SIZE) is not None
                 else value(_EPS) / 4),
      num_steps=value(_NUM_STEPS),
      c_max=value(_C_MAX),
      t_prime=value(_T_PRIME),
      curriculum_max_steps=value(_CURRICULUM_MAX_STEPS),
      curriculum_threshold=value(_CURRICULUM_THRESHOLD),
      curriculum_start_steps=value(_CURRICULUM_START_STEPS),
      learning_rate=value(_LEARNING_RATE),
      momentum=value(_MOMENTUM),
      weight_decay=value(_WEIGHT_DECAY),
      lr_drop_epochs=_parse_int_list(value(_LR_DROP_EPOCHS), 'lr_drop_epochs'),
      keras_decay=value(_KERAS_DECAY),
      loss_weighting=value(_LOSS_WEIGHTING),
      fosc_centre_random_start=value(_FOSC_CENTRE_RANDOM_START),
      unclipped_random_start=value(_UNCLIPPED_RANDOM_START),
      augment=value(_AUGMENT),
      eps_warmup_epochs=value(_EPS_WARMUP_EPOCHS),
      num_train_examples=value(_NUM_TRAIN_EXAMPLES),
      num_eval_examples=value(_NUM_EVAL_EXAMPLES),
      eval_batch_size=value(_EVAL_BATCH_SIZE),
      eval_every=value(_EVAL_EVERY),
      eval_every_examples=value(_EVAL_EVERY_EXAMPLES),
      attacks=value(_ATTACKS),
      log_every_steps=value(_LOG_EVERY_STEPS),
      checkpoint_every_steps=value(_CHECKPOINT_EVERY_STEPS),
      keep_checkpoints=value(_KEEP_CHECKPOINTS),
      stop_after_steps=value(_STOP_AFTER_STEPS),
      source_workdir=(os.path.abspath(os.path.expanduser(
          value(_SOURCE_WORKDIR))) if value(_SOURCE_WORKDIR) else None),
      multihost=value(_MULTIHOST),
      coordinator_address=value(_COORDINATOR_ADDRESS),
      num_processes=value(_NUM_PROCESSES),
      process_id=value(_PROCESS_ID),
  )


def set_dataset_defaults(dataset: str,
                         flag_values: Optional[flags.FlagValues] = None
                         ) -> None:
  """Makes ``dataset``'s settings the flag defaults (before parsing)."""
  fv = flags.FLAGS if flag_values is None else flag_values
  for name, value in DATASET_DEFAULTS[dataset].items():
    fv.set_default(name, value)


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


def initialize_multihost(config: Config) -> None:
  """``jax.distributed.initialize`` for ``--multihost`` runs (else nothing).

  CPU collectives use gloo, so the same command also runs several processes
  on CPU hosts (or on one machine, as the tests do).
  """
  if not config.multihost:
    return
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=config.coordinator_address,
                             num_processes=config.num_processes,
                             process_id=config.process_id)
