"""Flags, the run configuration and its validation for the experiment mains.

Every flag of ``experiments/`` is declared here, once, as a field of
:class:`Config` (:func:`setting`: default, help, choices, per-dataset
defaults, its own check); the absl flags, :func:`config_from_flags`, the
dataset defaults and the per-field checks are generated from those
declarations. The training mains (:mod:`experiments.mnist`,
:mod:`experiments.cifar10`) and :mod:`experiments.evaluate` share the flags.
:func:`config_from_flags` reads the
parsed flags into a frozen :class:`Config` before any library call; the
``validate_*`` and ``check_*`` functions raise :class:`ConfigError` naming the
offending flag before anything is written. Also the dataset defaults
(:data:`DATASET_DEFAULTS`), the flags a resumed run may change
(:data:`MAY_DIFFER_ON_RESUME`) and the names of the files of a workdir.
"""

import dataclasses
import functools
import json
import os
import tempfile
import typing
from typing import (Any, Callable, Dict, List, Mapping, Optional, Sequence,
                    Tuple)

from absl import flags
import jax

from dynamic_at import evaluation
from dynamic_at import methods as methods_lib
from dynamic_at import models

DATASETS = ('mnist', 'cifar10')
AUGMENTATIONS = ('none', 'crop_flip', 'keras')
ATTACK_SETS = evaluation.ATTACK_SETS
# Image shape of each dataset (height, width, channels).
IMAGE_SHAPES = {'mnist': (28, 28, 1), 'cifar10': (32, 32, 3)}
# Models each dataset accepts (from the model registry,
# dynamic_at.models.MODELS).
DATASET_MODELS = {d: models.models_for_dataset(d) for d in DATASETS}

FLAGS_FILE = 'flags.json'
METRICS_FILE = 'metrics.jsonl'
RESULTS_FILE = 'results.json'
CHECKPOINT_DIR = 'checkpoints'
FOSC_DIR = 'fosc'
TB_DIR = 'tb'

# --------------------------------------------------------------------------
# Settings: one declaration each
# --------------------------------------------------------------------------
#
# Every setting of a run is one field of :class:`Config`, declared with
# :func:`setting`: its default, its flag's help text, its choices, its
# per-dataset defaults and its own check. The absl flags (:func:`define_flags`),
# :func:`config_from_flags`, :data:`DATASET_DEFAULTS` / :func:`set_dataset_defaults`,
# :data:`MAY_DIFFER_ON_RESUME` and the per-field part of
# :func:`validate_config` are all generated from these declarations, so a new
# setting is one new field. The flag's kind follows the field's type: str
# (with choices: an enum), int, float, bool, Optional[...] of those (default
# None), or Tuple[int, ...] (a comma-separated list). Checks that involve
# several fields are written out in :func:`validate_config`.

FLAG_METADATA_KEY = 'flag'


class ConfigError(ValueError):
  """An invalid flag or workdir; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class Check:
  """A check of one setting's value. ``message`` follows ``{flag}``, which
  becomes ``--<name>=<value>``."""
  ok: Callable[[Any], bool]
  message: str

  def error(self, name: str, value: Any) -> Optional[str]:
    """The error message if ``value`` fails the check, else None."""
    if self.ok(value):
      return None
    return self.message.replace('{flag}', f'--{name}={value}')


def at_least(low: int, note: str = '') -> Check:
  return Check(lambda v: v >= low, f'{{flag}} must be >= {low}{note}.')


POSITIVE = Check(lambda v: v > 0, '{flag} must be positive.')


@dataclasses.dataclass(frozen=True)
class Flag:
  """The flag metadata of one :class:`Config` field (see :func:`setting`)."""
  help: str
  choices: Optional[Tuple[str, ...]] = None
  per_dataset: Optional[Mapping[str, Any]] = None
  check: Optional[Check] = None
  check_choices: bool = True
  path: bool = False
  required: bool = False
  may_differ_on_resume: bool = False


def setting(default: Any = None, help: str = '', *,  # pylint: disable=redefined-builtin
            choices: Optional[Sequence[str]] = None,
            per_dataset: Optional[Mapping[str, Any]] = None,
            check: Optional[Check] = None, check_choices: bool = True,
            path: bool = False, required: bool = False,
            may_differ_on_resume: bool = False) -> Any:
  """Declares a :class:`Config` field and its flag ``--<field name>``.

  Args:
    default: the field's and the flag's default (unless ``required``).
    help: the flag's help text.
    choices: the allowed values (an enum flag; also checked by
      :func:`validate_config` with "expected one of").
    per_dataset: ``{dataset: default}`` applied by
      :func:`set_dataset_defaults` before parsing.
    check: the value's own check in :func:`validate_config`.
    check_choices: whether :func:`validate_config` checks ``choices``
      (False where a check across fields covers it).
    path: the flag is a path, made absolute (``~`` expanded) when set.
    required: the field has no default; the flag (default None) must be set.
    may_differ_on_resume: listed in :data:`MAY_DIFFER_ON_RESUME`.
  """
  meta = {FLAG_METADATA_KEY: Flag(
      help=help, choices=None if choices is None else tuple(choices),
      per_dataset=dict(per_dataset) if per_dataset else None, check=check,
      check_choices=check_choices, path=path, required=required,
      may_differ_on_resume=may_differ_on_resume)}
  if required:
    return dataclasses.field(metadata=meta)
  return dataclasses.field(default=default, metadata=meta)


_EPS_CHECK = Check(
    lambda v: v is not None and 0.0 < v <= 1.0,
    '{flag} is outside (0, 1]: eps is an L-inf radius in pixel units (pixels '
    'in [0, 1]), e.g. 0.3 for MNIST or 8/255 = 0.0313725 for CIFAR-10.')


# --------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a run depends on; built from the flags (see their help).

  ``dataset`` is the main's (no flag); every other field is a flag.
  """
  dataset: str
  workdir: str = setting(
      help='Run folder (checkpoints, metrics, figures, results). Required. '
      'Re-running with the same workdir resumes the run.',
      required=True, path=True, may_differ_on_resume=True)
  data_dir: Optional[str] = setting(
      None, 'Folder with the raw dataset files (MNIST IDX .gz files, or '
      'cifar-10-binary.tar.gz / data_batch_*.bin). Unset: a prepared TFDS '
      'dataset (never downloaded).', path=True, may_differ_on_resume=True)
  method: str = setting(
      'dynamic', 'Training method: ' + '; '.join(
          f'{m.name} ({m.description})'
          for m in methods_lib.METHODS.values()) + '.',
      choices=tuple(methods_lib.METHODS))
  # model: a name of dynamic_at.models.MODELS that fits the dataset (checked
  # in validate_config). experiments.evaluate reads --model as the name of a
  # pretrained model of the zoo instead.
  model: str = setting(
      'mnist_cnn', 'Model: ' + ', '.join(
          f'{n} ({s.description}; {"/".join(s.datasets)})'
          for n, s in models.MODELS.items()) + '. Dataset default: mnist_cnn '
      '/ cifar10_cnn. (experiments.evaluate: the name of a pretrained model, '
      'python -m experiments.zoo list.)',
      per_dataset={'mnist': 'mnist_cnn', 'cifar10': 'cifar10_cnn'})
  model_kwargs: str = setting(
      '', "Arguments of --model over its defaults, as JSON ('{\"depth\": "
      "28}') or k=v,k=v (depth=28,width=10; each value read as JSON, e.g. "
      "numbers and true/false, else as a string). '' = the defaults.")
  # wrn_depth and wrn_width set the wrn model's depth and width (its
  # flag_kwargs); checked with --model=wrn only.
  wrn_depth: int = setting(34, 'WideResNet depth (--model=wrn; the same as '
                           '--model_kwargs=depth=...).')
  wrn_width: int = setting(10, 'WideResNet width k (--model=wrn; the same as '
                           '--model_kwargs=width=...).')
  num_epochs: int = setting(50, 'Training epochs T.', check=at_least(1),
                            per_dataset={'mnist': 50, 'cifar10': 120},
                            may_differ_on_resume=True)
  batch_size: int = setting(
      128, 'Global batch size; must divide over the devices.',
      check=at_least(1))
  seed: int = setting(
      0, 'Seed of the initialisation, data order, augmentation and attack '
      'random starts.')
  eps: float = setting(
      0.3, 'L-inf radius epsilon, in (0, 1] (pixels in [0, 1]; MNIST 0.3, '
      'CIFAR-10 8/255).', check=_EPS_CHECK,
      per_dataset={'mnist': 0.3, 'cifar10': 8 / 255})
  step_size: Optional[float] = setting(  # None: eps / 4 (__post_init__)
      None, 'PGD step size alpha (default eps / 4).', check=POSITIVE)
  num_steps: int = setting(
      10, 'PGD steps K of standard and dynamic training.', check=at_least(0))
  c_max: float = setting(0.5, "Dynamic's initial FOSC threshold c_max.",
                         check=at_least(0))
  t_prime: float = setting(
      40.0, "Dynamic's FOSC control epoch T': c_t = max(c_max - t * c_max / "
      "T', 0) (CIFAR-10: 100 of 120 epochs; MNIST: 40 of 50).",
      check=POSITIVE, per_dataset={'mnist': 40.0, 'cifar10': 100.0})
  curriculum_max_steps: int = setting(
      40, "Curriculum's largest k (MNIST 40, CIFAR 7).",
      per_dataset={'mnist': 40, 'cifar10': 7})
  curriculum_threshold: float = setting(
      0.5, 'Curriculum: k grows by one after an epoch whose mean adversarial '
      'training accuracy (fraction) exceeds this.',
      check=Check(lambda v: 0.0 <= v <= 1.0,
                  '{flag} must be a fraction in [0, 1].'))
  curriculum_start_steps: int = setting(1, "Curriculum's k in epoch 0.",
                                        check=at_least(0))
  beta: float = setting(
      6.0, "TRADES' and MART's weight beta of their KL term (their code: "
      'TRADES 1 on MNIST and 6 on CIFAR-10, MART 6).', check=at_least(0))
  fat_tau_epochs: Tuple[int, ...] = setting(
      (), "FAT: epochs (from 0) at whose start tau grows by one (0, 1, 2, "
      '...). Empty: FAT.py\'s epochs 50 and 90 of 120 scaled to --num_epochs '
      '(MNIST 50 epochs: 21, 38).',
      check=Check(lambda v: all(e >= 0 for e in v), '{flag} must be >= 0.'))
  fat_step_noise: float = setting(
      0.0, 'FAT: standard deviation of Gaussian noise added to every PGD step '
      "before the projection (FAT.py's omega, 0.001); 0 = none.",
      check=at_least(0))
  attack_start: str = setting(
      'method', "Start of the training attack: method = the method's own "
      '(uniform random start in the eps-ball for standard, curriculum, '
      'dynamic and fat; x + 0.001 N(0, 1) for trades and mart, as their '
      'code), uniform (the paper\'s random start: run TRADES or MART with '
      'the paper\'s attack), normal (x + 0.001 N(0, 1)).',
      choices=('method',) + tuple(s_ for s_ in methods_lib.START_POINTS
                                  if s_ != 'clean'))
  learning_rate: float = setting(0.01, 'Initial SGD learning rate.',
                                 check=POSITIVE)
  momentum: float = setting(0.9, 'SGD momentum.',
                            check=Check(lambda v: 0.0 <= v < 1.0,
                                        '{flag} must be in [0, 1).'))
  weight_decay: float = setting(
      0.0, 'L2 weight decay added to the gradient (the paper: 1e-4 for MNIST '
      'and CIFAR-10).', check=at_least(0),
      per_dataset={'mnist': 1e-4, 'cifar10': 1e-4})
  lr_drop_epochs: Tuple[int, ...] = setting(
      (20, 40), 'Epochs at whose start the learning rate is divided by 10.',
      check=Check(lambda v: all(e >= 0 for e in v), '{flag} must be >= 0.'),
      per_dataset={'mnist': (20, 40), 'cifar10': (60, 100)})
  keras_decay: float = setting(
      0.0, "Authors'-code deviation (off by default): Keras SGD(decay=...): "
      'the rate of iteration i is also divided by (1 + keras_decay * i); the '
      'authors used 1e-4.', check=at_least(0))
  loss_weighting: bool = setting(
      False, "Authors'-code deviation (off by default): after epoch 0, weight "
      'each adversarial example by its own cross-entropy.')
  fosc_centre_random_start: bool = setting(
      False, "Authors'-code deviation (off by default): centre the FOSC on "
      'the random start of PGD instead of on the clean example (the paper).')
  unclipped_random_start: bool = setting(
      False, "Authors'-code deviation (off by default): start training PGD "
      'from x0 + U(-eps, eps) without clipping it to [0, 1] (the first '
      'gradient is taken there; every step is clipped). The paper clips the '
      'start.')
  augment: str = setting(
      'none', 'Training augmentation: none (MNIST default), crop_flip (4-pixel '
      'pad + random crop + horizontal flip; CIFAR-10 default), keras '
      "(authors'-code deviation: Keras ImageDataGenerator with rotation 10 "
      'degrees, shifts 0.2, horizontal flips, nearest fill; needs scipy).',
      choices=AUGMENTATIONS,
      per_dataset={'mnist': 'none', 'cifar10': 'crop_flip'})
  eps_warmup_epochs: int = setting(
      0, 'Ramp eps (and the step size with it) linearly over this many '
      'epochs: epoch t < W uses eps * (t + 1) / W. 0 = off. A remedy when PGD '
      'training stays at the chance loss 2.30 (e.g. MNIST).',
      check=at_least(0))
  num_train_examples: int = setting(
      0, 'Train on the first N training examples (0 = all).',
      check=at_least(0, ' (0 = all)'))
  num_eval_examples: int = setting(
      0, 'Evaluate on the first N test examples (0 = all).',
      check=at_least(0, ' (0 = all)'), may_differ_on_resume=True)
  eval_batch_size: int = setting(500, 'Evaluation batch size.',
                                 check=at_least(1), may_differ_on_resume=True)
  eval_every: int = setting(
      0, 'Every this many epochs (and after the last), measure clean and '
      'PGD-20 test accuracy on --eval_every_examples test examples (0 = off).',
      check=at_least(0), may_differ_on_resume=True)
  eval_every_examples: int = setting(
      1000, 'Test examples of the per-epoch evaluation.', check=at_least(1),
      may_differ_on_resume=True)
  attacks: str = setting(
      'paper', 'Attack set of the final evaluation: paper = clean, FGSM, '
      'PGD-10, PGD-20, CW-inf; strong = those plus APGD-CE and APGD-T '
      '(AutoAttack, 100 steps, 9 targets); autoattack = AutoAttack\'s '
      'standard version: APGD-CE, APGD-T, FAB-T (9 targets x 100 steps) and '
      'Square (5,000 queries), always as a cascade on the examples still '
      'robust. Each reports the per-example worst case over its attacks.',
      choices=tuple(ATTACK_SETS),
      may_differ_on_resume=True)
  attack_cascade: bool = setting(
      False, 'With --attacks=strong, run APGD-CE and APGD-T only on the test '
      'examples that every attack before them left correctly classified '
      '(as AutoAttack does): the worst case measures the same, their columns '
      'become cumulative, and they cost in proportion to the examples still '
      'robust. --attacks=autoattack always cascades.',
      may_differ_on_resume=True)
  log_every_steps: int = setting(
      50, 'Fetch metrics from the devices (and check for NaN) every this many '
      'steps.', check=at_least(1), may_differ_on_resume=True)
  checkpoint_every_steps: int = setting(
      0, 'Also checkpoint every this many steps (0 = at epoch ends only).',
      check=at_least(0), may_differ_on_resume=True)
  keep_checkpoints: int = setting(3, 'Checkpoints to keep.',
                                  check=at_least(1),
                                  may_differ_on_resume=True)
  stop_after_steps: int = setting(
      0, 'Stop (checkpointed, as if interrupted) once the global step reaches '
      'this; rerun without it to resume. 0 = off.', check=at_least(0),
      may_differ_on_resume=True)
  source_workdir: Optional[str] = setting(
      None, 'Workdir of a trained source model: also evaluate black-box '
      '(transfer) attacks crafted on it.', path=True,
      may_differ_on_resume=True)
  cpu_devices: int = setting(
      0, 'Split every batch over this many CPU devices, each running XLA on '
      'one thread (0 = one CPU device with XLA\'s own threads). On a CPU-only '
      'machine give the number of cores: XLA gains little from a second '
      'thread inside one convolution, while the data-parallel step keeps '
      'every device busy (2 on 2 cores: the MNIST PGD-10 step 1.4-1.6x '
      'faster, benchmarks/README.md). Results differ from a one-device '
      'run\'s in float rounding. Takes effect only in a fresh process; '
      'where an accelerator is the default device it is not used.',
      check=at_least(0), may_differ_on_resume=True)
  multihost: bool = setting(
      False, 'Call jax.distributed.initialize() first (one process per '
      'host). On TPU pods, SLURM, Open MPI and Kubernetes JAX finds the '
      'coordinator itself; elsewhere give --coordinator_address, '
      '--num_processes and --process_id.', may_differ_on_resume=True)
  coordinator_address: Optional[str] = setting(
      None, 'With --multihost: host:port of process 0.',
      may_differ_on_resume=True)
  num_processes: Optional[int] = setting(
      None, 'With --multihost: the number of processes.',
      may_differ_on_resume=True)
  process_id: Optional[int] = setting(
      None, 'With --multihost: this process, 0..num_processes-1.',
      may_differ_on_resume=True)

  def __post_init__(self):
    for field in _int_list_fields(type(self)):  # lr_drop_epochs
      object.__setattr__(self, field,
                         tuple(int(e) for e in getattr(self, field)))
    if self.step_size is None and self.eps is not None:
      object.__setattr__(self, 'step_size', float(self.eps) / 4)

  def to_dict(self) -> Dict[str, Any]:
    """JSON-ready dictionary (tuples become lists)."""
    d = dataclasses.asdict(self)
    for field in _int_list_fields(type(self)):
      d[field] = list(d[field])
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'Config':
    """Inverse of :meth:`to_dict`; unknown keys are ignored, missing ones
    take the field defaults."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})

  def replace(self, **changes) -> 'Config':
    return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------
# What the declarations generate: flags, dataset defaults, config_from_flags
# --------------------------------------------------------------------------


def flag_fields(config_class: type = Config
                ) -> List[Tuple[dataclasses.Field, Flag]]:
  """``(field, flag metadata)`` of every field of ``config_class`` that is a
  flag, in declaration order."""
  return [(f, f.metadata[FLAG_METADATA_KEY])
          for f in dataclasses.fields(config_class)
          if FLAG_METADATA_KEY in f.metadata]


def flag_kind(field: dataclasses.Field) -> str:
  """``'string'``, ``'enum'``, ``'integer'``, ``'float'``, ``'bool'`` or
  ``'int_list'``, from the field's type (``Optional[X]`` is X's)."""
  t = field.type
  if typing.get_origin(t) is typing.Union:
    (t,) = [a for a in typing.get_args(t) if a is not type(None)]
  if typing.get_origin(t) is tuple and typing.get_args(t) == (int, ...):
    return 'int_list'
  kinds = {bool: 'bool', int: 'integer', float: 'float', str: 'string'}
  if t not in kinds:
    raise TypeError(f'Config field {field.name}: no flag kind for type {t}.')
  if field.metadata[FLAG_METADATA_KEY].choices is not None:
    if t is not str:
      raise TypeError(f'Config field {field.name}: choices need type str.')
    return 'enum'
  return kinds[t]


@functools.lru_cache(maxsize=None)
def _int_list_fields(config_class: type) -> Tuple[str, ...]:
  return tuple(f.name for f, _ in flag_fields(config_class)
          if flag_kind(f) == 'int_list')


def _flag_value(field: dataclasses.Field, value: Any) -> Any:
  """A field value as its flag holds it (lists of integers as strings)."""
  if flag_kind(field) == 'int_list' and value is not None:
    return [str(e) for e in value]
  return value


def define_flags(config_class: type = Config,
                 flag_values: Optional[flags.FlagValues] = None) -> None:
  """Defines the flag ``--<name>`` of every field of ``config_class``."""
  fv = flags.FLAGS if flag_values is None else flag_values
  for field, spec in flag_fields(config_class):
    kind = flag_kind(field)
    default = None if spec.required else _flag_value(field, field.default)
    if kind == 'enum':
      flags.DEFINE_enum(field.name, default, spec.choices, spec.help,
                        flag_values=fv)
    else:
      define = {'string': flags.DEFINE_string,
                'integer': flags.DEFINE_integer,
                'float': flags.DEFINE_float, 'bool': flags.DEFINE_bool,
                'int_list': flags.DEFINE_list}[kind]
      define(field.name, default, spec.help, flag_values=fv)


def dataset_defaults(config_class: type = Config
                     ) -> Dict[str, Dict[str, Any]]:
  """``{dataset: {flag: default}}`` from the fields' ``per_dataset``, as
  the flags hold them."""
  out = {dataset: {} for dataset in DATASETS}
  for field, spec in flag_fields(config_class):
    for dataset, value in (spec.per_dataset or {}).items():
      out[dataset][field.name] = _flag_value(field, value)
  return out


define_flags(Config)

# Flag defaults that depend on the dataset (the paper's settings); each main
# applies its dataset's before parsing. The flagfiles in experiments/configs/
# spell these out anyway.
DATASET_DEFAULTS = dataset_defaults(Config)

# Flags a resumed run may change: where things are, how long to train, how
# often to log, checkpoint and evaluate. Everything else defines the
# trajectory (model, data subset, method, attack, optimiser, seed) and must
# match the workdir's flags.json. num_epochs may change because neither the
# learning-rate schedule (--lr_drop_epochs) nor c_t (--t_prime) depends on it,
# so a longer run extends a shorter one exactly.
def resumable_flags(config_class: type = Config) -> Tuple[str, ...]:
  """The flags declared ``may_differ_on_resume``, in declaration order."""
  return tuple(f.name for f, spec in flag_fields(config_class)
               if spec.may_differ_on_resume)


MAY_DIFFER_ON_RESUME = resumable_flags(Config)


def _parse_int_list(values: Sequence[str], flag: str) -> Tuple[int, ...]:
  try:
    return tuple(int(v) for v in values if str(v).strip())
  except ValueError:
    raise ConfigError(f'--{flag}={",".join(values)}: expected a comma-'
                      'separated list of integers (epochs).') from None


def config_from_flags(dataset: str,
                      flag_values: Optional[flags.FlagValues] = None,
                      config_class: type = Config) -> Config:
  """Reads the parsed flags (``flag_values``, default the global ``FLAGS``)
  into a :class:`Config` (or ``config_class``) for ``dataset``."""
  fv = flags.FLAGS if flag_values is None else flag_values
  if dataset not in DATASETS:
    raise ConfigError(f'unknown dataset {dataset!r}; expected one of '
                      f'{DATASETS}')
  values = {'dataset': dataset}
  for field, spec in flag_fields(config_class):
    value = fv[field.name].value
    if spec.required and not value:
      raise ConfigError(f'--{field.name} is required.')
    if flag_kind(field) == 'int_list':
      value = _parse_int_list(value, field.name)
    if spec.path:
      value = os.path.abspath(os.path.expanduser(value)) if value else None
    values[field.name] = value
  # The same arguments spelled differently are the same run (resume).
  if values.get('model_kwargs'):
    try:
      values['model_kwargs'] = canonical_model_kwargs(values['model_kwargs'])
    except ConfigError:
      pass  # validate_config reports it
  # step_size None becomes eps / 4 in Config.__post_init__.
  return config_class(**values)


def set_dataset_defaults(dataset: str,
                         flag_values: Optional[flags.FlagValues] = None,
                         config_class: type = Config) -> None:
  """Makes ``dataset``'s settings the flag defaults (before parsing)."""
  fv = flags.FLAGS if flag_values is None else flag_values
  for name, value in dataset_defaults(config_class)[dataset].items():
    fv.set_default(name, value)


# --------------------------------------------------------------------------
# The model's arguments
# --------------------------------------------------------------------------


def parse_model_kwargs(text: str, flag: str = 'model_kwargs'
                       ) -> Dict[str, Any]:
  """``--model_kwargs``'s value as a dict: a JSON object, or ``k=v,k=v``
  with each ``v`` read as JSON (``28``, ``true``, ``0.5``) or else kept as a
  string. ``''`` is ``{}``.

  Raises:
    ConfigError: naming ``--<flag>``.
  """
  text = (text or '').strip()
  if not text:
    return {}
  if text.startswith('{'):
    try:
      value = json.loads(text)
    except ValueError as e:
      raise ConfigError(f'--{flag}={text}: not a JSON object ({e}); use '
                        '\'{"depth": 28}\' or depth=28,width=10.') from None
    if not isinstance(value, dict):
      raise ConfigError(f'--{flag}={text}: expected a JSON object.')
    return value
  out = {}
  for item in text.split(','):
    key, sep, raw = item.partition('=')
    key = key.strip()
    if not sep or not key or key in out:
      raise ConfigError(
          f'--{flag}={text}: expected k=v,k=v (e.g. depth=28,width=10) or a '
          f'JSON object; {"repeated" if key in out else "cannot read"} '
          f'{item.strip()!r}.')
    raw = raw.strip()
    try:
      out[key] = json.loads(raw)
    except ValueError:
      out[key] = raw
  return out


def canonical_model_kwargs(text: str) -> str:
  """``--model_kwargs`` as sorted JSON (``''`` for none), so that the same
  arguments spelled differently save (and resume) as the same flag."""
  value = parse_model_kwargs(text)
  return json.dumps(value, sort_keys=True) if value else ''


def model_kwargs_of(config: Config) -> Dict[str, Any]:
  """Every argument of ``config.model``: its defaults, under the per-model
  flags it declares (``--wrn_depth``, ``--wrn_width``), under
  ``--model_kwargs``; checked by the model's own declaration
  (:meth:`dynamic_at.models.ModelSpec.kwargs`).

  Raises:
    ConfigError: an unknown model, an argument the model does not take or
      accept, or a per-model flag that contradicts ``--model_kwargs``; the
      message names the flag.
  """
  try:
    spec = models.model_spec(config.model)
  except ValueError as e:
    raise ConfigError(f'--model={config.model}: {e}') from None
  given = parse_model_kwargs(config.model_kwargs)
  from_flag = {}
  defaults = {f.name: f.default for f in dataclasses.fields(type(config))}
  for kwarg, flag in spec.flag_kwargs.items():
    value = getattr(config, flag)
    if kwarg in given:
      _require(value == defaults.get(flag) or value == given[kwarg],
               f'--{flag}={value} contradicts --model_kwargs='
               f'{config.model_kwargs} ({kwarg}={given[kwarg]!r}); give one '
               'of them.')
    else:
      given[kwarg] = value
      from_flag[kwarg] = flag
  try:
    return spec.kwargs(given)
  except models.ModelKwargsError as e:
    if e.kwarg in from_flag:
      message = str(e)
      plain = f'{e.kwarg}={given[e.kwarg]}'
      if message.startswith(plain):
        message = message[len(plain):].lstrip(': ')
      raise ConfigError(f'--{from_flag[e.kwarg]}={given[e.kwarg]}: '
                        f'{message}') from None
    raise ConfigError(f'--model_kwargs={config.model_kwargs} (--model='
                      f'{config.model}): {e}') from None


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def validate_config(config: Config) -> None:
  """Checks every flag that can be checked without data or devices: each
  field's own check and choices (from its :func:`setting`), then the checks
  across fields.

  Raises:
    ConfigError: naming the offending flag.
  """
  c = config
  _require(c.dataset in DATASETS, f'unknown dataset {c.dataset!r}')
  for field, spec in flag_fields(type(c)):
    value = getattr(c, field.name)
    if spec.choices is not None and spec.check_choices:
      _require(value in spec.choices,
               f'--{field.name}={value}: expected one of {spec.choices}.')
    if spec.check is not None:
      message = spec.check.error(field.name, value)
      _require(message is None, message)
  # Across fields.
  _require(c.model in DATASET_MODELS[c.dataset],
           f'--model={c.model} does not fit {c.dataset}; use one of '
           f'{DATASET_MODELS[c.dataset]}.')
  _require(c.curriculum_max_steps >= c.curriculum_start_steps,
           f'--curriculum_max_steps={c.curriculum_max_steps} must be >= '
           f'--curriculum_start_steps={c.curriculum_start_steps}.')
  model_kwargs_of(c)  # the model's arguments: known, typed, accepted
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
  defaults = type(config)(dataset=config.dataset, workdir='').to_dict()
  may_differ = resumable_flags(type(config))
  out = []
  for name, value in current.items():
    if name in may_differ:
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


# XLA_FLAGS of a single-threaded CPU device (the sweep's --threads_per_job=1
# and --cpu_devices).
SINGLE_THREAD_XLA = ('--xla_cpu_multi_thread_eigen=false '
                     'intra_op_parallelism_threads=1')


def initialize_devices(config: Config) -> None:
  """Sets up JAX's devices before their first use: ``--cpu_devices``, then
  ``--multihost``.

  Raises:
    ConfigError: naming --cpu_devices when JAX has already started in this
      process with another number of CPU devices.
  """
  if config.cpu_devices:
    _use_cpu_devices(config.cpu_devices)
  initialize_multihost(config)


def _use_cpu_devices(n: int) -> None:
  """``n`` single-threaded CPU devices (XLA reads XLA_FLAGS when it starts)."""
  before = os.environ.get('XLA_FLAGS')
  os.environ['XLA_FLAGS'] = f'{before or ""} {SINGLE_THREAD_XLA}'.strip()
  try:
    jax.config.update('jax_num_cpu_devices', n)
  except RuntimeError:  # JAX has started: the setting can no longer change.
    if before is None:
      del os.environ['XLA_FLAGS']
    else:
      os.environ['XLA_FLAGS'] = before
    have = len(jax.devices('cpu'))
    if have != n:
      raise ConfigError(
          f'--cpu_devices={n}: JAX has already started in this process with '
          f'{have} CPU device(s); pass the flag to a fresh process.'
      ) from None


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
