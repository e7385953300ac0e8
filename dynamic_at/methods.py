"""Training methods as values: one :class:`Method` per method, in one registry.

A method is what differs between adversarial training methods:

* the attack settings of each epoch (:attr:`Method.attack_params`: K, Dynamic's
  ``c_t``, FAT's ``tau``; traced, so changing them never recompiles the step);
* the attack's start point (:attr:`Method.start`), its inner loss
  (:attr:`Method.attack_loss`: cross-entropy on the labels, or TRADES' KL to
  the clean prediction) and its per-example stopping rule
  (:attr:`Method.stop`, a :class:`dynamic_at._attacks.StoppingRule`);
* the outer (training) loss (:attr:`Method.train_loss`);
* a host-side state updated between epochs (:attr:`Method.initial_state`,
  :attr:`Method.next_state`: Curriculum's k).

One :func:`dynamic_at.train.make_train_step` serves every method. Methods are
found by name in :data:`METHODS` (:func:`get_method`); the experiments' flags,
flagfile checks, sweeps and plots read that registry. Adding a method is its
definition here (or a :func:`register_method` call in your own code), its
flagfiles and its tests. ``settings`` are plain mappings of the run's
settings (the experiments pass their config as a dict): this module never reads
flags.

Methods (each as its authors' code does it; the differences we keep are
settings, named in each definition):

* ``unsecured``: clean training.
* ``standard``: Madry et al.'s PGD-K with a uniform random start, all K steps.
* ``curriculum``: Cai et al. (2018): PGD-k, k grows by one when the epoch's
  adversarial training accuracy passes a threshold.
* ``dynamic``: Wang et al. (ICML 2019): PGD-K stopped per example once FOSC
  ``<= c_t``.
* ``fat``: Zhang et al. (ICML 2020), ``earlystop.py``: PGD-K where an example
  stops tau steps after it is first misclassified; tau 0 / 1 / 2 over training.
* ``trades``: Zhang et al. (ICML 2019), ``trades.py``: K sign steps from
  ``x + 0.001 N(0, 1)`` maximising ``KL(f(x) || f(x'))``; training loss
  ``CE(f(x), y) + beta KL(f(x) || f(x'))``.
* ``mart``: Wang et al. (ICLR 2020), ``mart.py``: PGD-K on the cross-entropy
  from ``x + 0.001 N(0, 1)``; training loss ``BCE(f(x'), y) + beta
  mean(KL(f(x) || f(x')) (1 - f_y(x)))``.
"""

import dataclasses
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dynamic_at import _attacks
from dynamic_at import _fosc
from dynamic_at import _losses

Settings = Mapping[str, Any]


class AttackParams(NamedTuple):
  """The traced attack settings of a training step (change without retrace).

  Attributes:
    eps: L-inf radius (e.g. during an eps warm-up).
    step_size: PGD step size.
    num_steps: maximum PGD steps K.
    c_stop: FOSC threshold; ``-inf`` never stops an example.
    tau: FAT's tau (unused by the other rules).
  """
  eps: jax.Array
  step_size: jax.Array
  num_steps: jax.Array
  c_stop: jax.Array
  tau: jax.Array = np.int32(0)  # numpy: no JAX backend at import

  @classmethod
  def make(cls, eps: float, step_size: float, num_steps: int,
           c_stop: Optional[float] = None, tau: int = 0) -> 'AttackParams':
    return cls(jnp.float32(eps), jnp.float32(step_size), jnp.int32(num_steps),
               jnp.float32(-jnp.inf if c_stop is None else c_stop),
               jnp.int32(tau))


class TrainLossOut(NamedTuple):
  """What a method's training loss returns besides the mean loss.

  Attributes:
    logits: ``[B, C]`` training-mode logits of the adversarial batch (the
      ``accuracy`` metric).
    batch_stats: the model's updated BatchNorm statistics.
    per_example: ``[B]`` the per-example training loss (the ``loss``
      metric is its mean).
  """
  logits: jax.Array
  batch_stats: Any
  per_example: jax.Array


# apply(params, batch_stats, x) -> (training-mode logits, new batch_stats)
ApplyTrain = Callable[[Any, Any, jax.Array], Tuple[jax.Array, Any]]
# train_loss(apply, params, batch_stats, x0, x_adv, y, weight, beta)
TrainLoss = Callable[..., Tuple[jax.Array, TrainLossOut]]


@dataclasses.dataclass(frozen=True)
class Method:
  """One adversarial training method.

  Attributes:
    name: the method's name (``--method``).
    description: one line for the flag help and the docs.
    attack_params: ``(epoch, eps, step_size, settings, state) ->
      AttackParams`` for epoch ``epoch`` (from 0) at this epoch's ``eps`` and
      step size. ``num_steps`` 0: no attack (the step never calls it).
    train_loss: the outer loss (see :data:`TrainLoss`):
      ``(apply, params, batch_stats, x0, x_adv, y, weight, beta) -> (mean,
      TrainLossOut)``; ``weight`` is the per-example weight (the authors'
      loss weighting of Dynamic, else ones).
    stop: the attack's per-example stopping rule.
    start: the attack's start point: ``'uniform'`` (a uniform point of the
      eps-ball, clipped to the box: Madry et al., the paper), ``'normal'``
      (``x + 0.001 N(0, 1)``, not clipped before the first gradient: TRADES'
      and MART's code), or ``'clean'``.
    attack_loss: ``'xent'`` (cross-entropy on the labels) or ``'kl'``
      (TRADES: ``KL(f(x) || f(x'))`` to the clean inference-mode prediction,
      which costs one clean forward pass).
    train_forward_passes: training-mode forward (and backward) passes per
      example of the outer loss: 1, or 2 for TRADES and MART (clean and
      adversarial batch).
    settings: the run settings the method reads (besides eps, step size and
      K), for the docs and the flag checks.
    initial_state: ``settings -> state`` of epoch 0 (host side, checkpointed).
    next_state: ``(state, epoch_row, settings) -> state`` after each epoch.
  """
  name: str
  description: str
  attack_params: Callable[..., AttackParams]
  train_loss: TrainLoss
  stop: _attacks.StoppingRule = _attacks.NO_STOP
  start: str = 'uniform'
  attack_loss: str = 'xent'
  train_forward_passes: int = 1
  settings: Tuple[str, ...] = ()
  initial_state: Callable[[Settings], Any] = lambda settings: None
  next_state: Callable[[Any, Mapping[str, Any], Settings], Any] = (
      lambda state, row, settings: state)

  @property
  def adversarial(self) -> bool:
    """Whether the method attacks at all (``unsecured`` does not)."""
    return self.name != 'unsecured'


START_POINTS = ('uniform', 'normal', 'clean')
ATTACK_LOSSES = ('xent', 'kl')

METHODS: Dict[str, Method] = {}


def register_method(method: Method) -> Method:
  """Adds ``method`` to :data:`METHODS` (a name may be registered once)."""
  if method.name in METHODS:
    raise ValueError(f'a method named {method.name!r} is already registered')
  if method.start not in START_POINTS:
    raise ValueError(f'{method.name}: start must be one of {START_POINTS}; '
                     f'got {method.start!r}')
  if method.attack_loss not in ATTACK_LOSSES:
    raise ValueError(f'{method.name}: attack_loss must be one of '
                     f'{ATTACK_LOSSES}; got {method.attack_loss!r}')
  METHODS[method.name] = method
  return method


def get_method(method) -> Method:
  """The :class:`Method` of a name (or the method itself)."""
  if isinstance(method, Method):
    return method
  if method not in METHODS:
    raise ValueError(f'method must be one of {tuple(METHODS)}; got '
                     f'{method!r}')
  return METHODS[method]


# --------------------------------------------------------------------------
# Training losses
# --------------------------------------------------------------------------


def xent_train_loss(apply: ApplyTrain, params, batch_stats, x0, x_adv, y,
                    weight, beta):
  """Cross-entropy on the adversarial batch, weighted per example (Standard,
  Curriculum, Dynamic, FAT; Unsecured's "adversarial" batch is clean)."""
  del x0, beta
  logits, new_stats = apply(params, batch_stats, x_adv)
  per_example = _losses.xent(logits, y)
  return jnp.mean(weight * per_example), TrainLossOut(logits, new_stats,
                                                      per_example)


def trades_train_loss(apply: ApplyTrain, params, batch_stats, x0, x_adv, y,
                      weight, beta):
  """TRADES: ``CE(f(x), y) + beta * KL(f(x) || f(x'))`` per example, both
  forward passes in training mode, the gradient through both (``trades.py``).

  Their code runs the clean batch through the model twice (once for the
  cross-entropy, once inside the KL), so BatchNorm's running statistics see
  it twice; here it is run once and its logits used in both terms: the same
  loss and gradient, one fewer running-statistics update per step.
  """
  del weight
  logits_nat, stats = apply(params, batch_stats, x0)
  logits_adv, stats = apply(params, stats, x_adv)
  per_example = (_losses.xent(logits_nat, y) +
                 beta * _losses.kl_from_logits(logits_adv, logits_nat))
  return jnp.mean(per_example), TrainLossOut(logits_adv, stats, per_example)


def mart_train_loss(apply: ApplyTrain, params, batch_stats, x0, x_adv, y,
                    weight, beta):
  """MART (``mart.py``): the boosted cross-entropy of the adversarial batch
  plus ``beta`` times its KL to the clean prediction weighted by ``1 -`` the
  clean probability of the true class, both passes in training mode."""
  del weight
  logits_nat, stats = apply(params, batch_stats, x0)
  logits_adv, stats = apply(params, stats, x_adv)
  per_example = _losses.mart(logits_adv, logits_nat, y, beta)
  return jnp.mean(per_example), TrainLossOut(logits_adv, stats, per_example)


# --------------------------------------------------------------------------
# Per-epoch attack settings
# --------------------------------------------------------------------------


def _no_attack(epoch, eps, step_size, settings, state):
  del epoch, settings, state
  return AttackParams.make(eps, step_size, 0)


def _all_k(epoch, eps, step_size, settings, state):
  del epoch, state
  return AttackParams.make(eps, step_size, settings['num_steps'])


def _curriculum_k(epoch, eps, step_size, settings, state):
  del epoch, settings
  if state is None:
    raise ValueError('curriculum needs curriculum_steps')
  return AttackParams.make(eps, step_size, state)


def _dynamic_c_t(epoch, eps, step_size, settings, state):
  del state
  c_t = float(_fosc.fosc_threshold(epoch, settings['c_max'],
                                   settings['t_prime']))
  return AttackParams.make(eps, step_size, settings['num_steps'], c_t)


def fat_tau(epoch: int, num_epochs: int, tau_epochs: Tuple[int, ...] = (),
            ) -> int:
  """FAT's tau in ``epoch`` (from 0): the number of ``tau_epochs`` boundaries
  reached. Their ``FAT.py`` (120 epochs) uses tau 0 up to its epoch 50, 1 up to
  90, then 2 (its epochs count from 1), i.e. boundaries 50 and 90 in epochs
  from 0. Empty ``tau_epochs``: those boundaries scaled to ``num_epochs``
  (``round(num_epochs * 50 / 120)``, ``round(num_epochs * 90 / 120)``)."""
  if not tau_epochs:
    tau_epochs = fat_tau_epochs(num_epochs)
  return sum(int(epoch >= b) for b in tau_epochs)


def fat_tau_epochs(num_epochs: int) -> Tuple[int, int]:
  """FAT's tau boundaries (50 and 90 of 120 epochs) scaled to ``num_epochs``,
  rounded half up."""
  return tuple(int(num_epochs * f / 120 + 0.5) for f in (50, 90))


def _fat_params(epoch, eps, step_size, settings, state):
  del state
  tau = fat_tau(epoch, settings['num_epochs'],
                tuple(settings.get('fat_tau_epochs') or ()))
  return AttackParams.make(eps, step_size, settings['num_steps'], tau=tau)


def curriculum_num_steps(current: int, adv_accuracy: float, *,
                         threshold: float, max_steps: int) -> int:
  """Cai et al.'s curriculum: one more PGD step once the training accuracy on
  the current adversarial examples passes ``threshold``, up to ``max_steps``."""
  if adv_accuracy > threshold:
    return min(current + 1, max_steps)
  return current


def _curriculum_next(k, row, settings):
  return curriculum_num_steps(k, row['train_accuracy'],
                              threshold=settings['curriculum_threshold'],
                              max_steps=settings['curriculum_max_steps'])


# --------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------

UNSECURED = register_method(Method(
    'unsecured', 'clean training (no attack)', _no_attack, xent_train_loss,
    start='clean'))
STANDARD = register_method(Method(
    'standard', "Madry et al.'s PGD-K, all K steps", _all_k,
    xent_train_loss))
CURRICULUM = register_method(Method(
    'curriculum', 'Cai et al.: PGD-k with k growing with the training '
    'accuracy', _curriculum_k, xent_train_loss,
    settings=('curriculum_start_steps', 'curriculum_threshold',
              'curriculum_max_steps'),
    initial_state=lambda settings: settings['curriculum_start_steps'],
    next_state=_curriculum_next))
DYNAMIC = register_method(Method(
    'dynamic', 'Wang et al.: PGD-K stopped per example once FOSC <= c_t',
    _dynamic_c_t, xent_train_loss, stop=_attacks.FOSC_STOP,
    settings=('c_max', 't_prime')))
FAT = register_method(Method(
    'fat', 'Zhang et al. (FAT): PGD-K stopped tau steps after the first '
    'misclassification', _fat_params, xent_train_loss,
    stop=_attacks.FAT_STOP, settings=('fat_tau_epochs', 'fat_step_noise')))
TRADES = register_method(Method(
    'trades', 'Zhang et al. (TRADES): CE + beta KL(f(x) || f(x\')), attack on '
    'the KL', _all_k, trades_train_loss, start='normal', attack_loss='kl',
    train_forward_passes=2, settings=('beta',)))
MART = register_method(Method(
    'mart', 'Wang et al. (MART): boosted CE + beta KL weighted by 1 - p_y(x)',
    _all_k, mart_train_loss, start='normal', train_forward_passes=2,
    settings=('beta',)))
