"""Train state, optimiser and one pure training step for every method.

The methods are values (:class:`dynamic_at.methods.Method`, found by name in
:data:`dynamic_at.methods.METHODS`): the per-epoch attack settings, the
attack's start, loss and stopping rule, the training loss and any
between-epoch update. One :func:`make_train_step` serves them all.

Each schedule is one function, used both by training and by whoever reports
it: Dynamic's ``c_t`` (:func:`dynamic_at.fosc_threshold`), Curriculum's k
(:func:`curriculum_num_steps`), FAT's tau (:func:`dynamic_at.methods.fat_tau`),
all via :func:`attack_params_for_epoch`; the eps warm-up (:func:`warmup_eps`)
and the learning rate (:func:`learning_rate_schedule`, the schedule
:func:`make_optimizer` uses).

Methods that share a stopping rule share one compiled step shape: they differ
only in the traced :class:`AttackParams` (``num_steps``, ``c_stop``, ``tau``),
so changing K, ``c_t`` or tau between epochs never recompiles.

The attack runs the model in inference mode (BatchNorm running statistics, no
state update); BatchNorm statistics are updated only by the training forward
passes.
"""

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import Mesh, PartitionSpec as P

from dynamic_at import _attacks
from dynamic_at import _losses
from dynamic_at import methods as methods_lib
from dynamic_at import parallel
from dynamic_at.methods import AttackParams
from dynamic_at.methods import curriculum_num_steps
from dynamic_at.methods import get_method
from dynamic_at.methods import Method

# The registered methods' names when this module was imported (the registry,
# dynamic_at.methods.METHODS, is the authority).
METHODS = tuple(methods_lib.METHODS)

# Kinds of the step's metrics: how the training loop reduces each over an
# epoch's batches. 'mean': the mean over batches; 'max': the maximum;
# 'per_example': saved per example (the epoch's array). The step's other
# metrics ('iters', 'steps') are not reduced.
METRIC_KINDS: Dict[str, str] = {
    'loss': 'mean',
    'accuracy': 'mean',
    'steps_mean': 'mean',
    'steps_max': 'max',
    'iters_max': 'max',
    'grad_evals': 'mean',
    'attack_rows': 'mean',
    'train_passes': 'mean',
    'clean_forwards': 'mean',
    'fosc': 'per_example',
}


class TrainState(train_state.TrainState):
  """Flax's train state with the model's BatchNorm statistics."""
  batch_stats: Any = None


def attack_params_for_epoch(method, epoch: int, *, eps: float,
                            step_size: float,
                            curriculum_steps: Optional[int] = None,
                            state: Any = None,
                            **settings: Any) -> AttackParams:
  """The attack settings a method uses in ``epoch`` (host-side, per epoch).

  Args:
    method: a :class:`~dynamic_at.methods.Method` or its name.
    epoch: the epoch ``t``, from 0.
    eps: L-inf radius of this epoch.
    step_size: PGD step size.
    curriculum_steps: Curriculum's current k (its host state; ``state`` is
      the general name).
    state: the method's host state (:attr:`Method.initial_state`).
    **settings: the run's settings the method reads: ``num_steps`` (K),
      ``c_max`` and ``t_prime`` (Dynamic), ``num_epochs`` and
      ``fat_tau_epochs`` (FAT), ...

  Returns:
    :class:`AttackParams`.
  """
  method = get_method(method)
  if curriculum_steps is not None:
    state = curriculum_steps
  return method.attack_params(epoch, eps, step_size, settings, state)


def warmup_eps(epoch: int, eps: float, warmup_epochs: int = 0) -> float:
  """The eps of ``epoch`` (from 0) under a linear warm-up: ``eps * (epoch +
  1) / warmup_epochs`` for the first ``warmup_epochs`` epochs, then ``eps``
  (``warmup_epochs`` 0: ``eps`` throughout)."""
  if warmup_epochs and epoch < warmup_epochs:
    return eps * (epoch + 1) / warmup_epochs
  return eps


def learning_rate_schedule(learning_rate: float, *, steps_per_epoch: int,
                           lr_drop_epochs: Tuple[int, ...] = (),
                           lr_drop_factor: float = 0.1,
                           keras_decay: float = 0.0) -> optax.Schedule:
  """The learning rate of each optimiser step (the schedule
  :func:`make_optimizer` trains with).

  Args:
    learning_rate: initial learning rate.
    steps_per_epoch: optimiser steps per epoch.
    lr_drop_epochs: epochs at whose start the rate is multiplied by
      ``lr_drop_factor`` (paper: MNIST 20, 40; CIFAR-10 60, 100).
    lr_drop_factor: the factor (0.1).
    keras_decay: the authors' Keras ``SGD(decay=...)``: the rate of iteration
      ``i`` is additionally divided by ``1 + keras_decay * i``. Off (0) by
      default; the paper's text uses weight decay instead.

  Returns:
    An optax schedule ``f(step) -> rate``; the optimiser calls it with its
    int32 step count (from 0), so ``f(jnp.int32(i))`` is the rate of the
    update that makes step ``i + 1``, exactly as training computes it
    (float32).
  """
  schedule = optax.piecewise_constant_schedule(
      learning_rate,
      {int(e) * steps_per_epoch: lr_drop_factor for e in lr_drop_epochs})
  if keras_decay:
    piecewise = schedule
    schedule = lambda i: piecewise(i) / (1.0 + keras_decay * i)
  return schedule


def make_optimizer(*, learning_rate: float, momentum: float,
                   weight_decay: float, steps_per_epoch: int,
                   lr_drop_epochs: Tuple[int, ...] = (),
                   lr_drop_factor: float = 0.1,
                   keras_decay: float = 0.0) -> optax.GradientTransformation:
  """SGD with momentum, L2 weight decay and :func:`learning_rate_schedule`.

  Args:
    learning_rate, steps_per_epoch, lr_drop_epochs, lr_drop_factor,
    keras_decay: the schedule's (see :func:`learning_rate_schedule`).
    momentum: SGD momentum.
    weight_decay: coefficient of the decoupled-into-gradient L2 term
      (``grad + wd * param``, as PyTorch's and Keras' SGD ``weight_decay``).

  Returns:
    An optax transformation.
  """
  schedule = learning_rate_schedule(
      learning_rate, steps_per_epoch=steps_per_epoch,
      lr_drop_epochs=lr_drop_epochs, lr_drop_factor=lr_drop_factor,
      keras_decay=keras_decay)
  return optax.chain(
      optax.add_decayed_weights(weight_decay) if weight_decay else
      optax.identity(),
      optax.sgd(schedule, momentum=momentum))


def create_train_state(model: nn.Module, key: jax.Array,
                       input_shape: Tuple[int, ...],
                       tx: optax.GradientTransformation) -> TrainState:
  """Initialises parameters and BatchNorm statistics for ``[1, *input_shape]``."""
  variables = model.init(key, jnp.zeros((1,) + tuple(input_shape)),
                         train=False)
  return TrainState.create(apply_fn=model.apply, params=variables['params'],
                           batch_stats=variables.get('batch_stats', {}),
                           tx=tx)


def _inference_logits_fn(state: TrainState) -> Callable[[jax.Array],
                                                        jax.Array]:
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  return lambda x: state.apply_fn(variables, x, train=False)


def sharded_pgd(mesh: Optional[Mesh],
                fosc_centre_random_start: bool = False,
                compact: Any = False,
                unclipped_random_start: bool = False, *,
                stop: Any = None,
                loss: str = 'xent',
                step_noise: Optional[float] = None) -> Callable[..., Any]:
  """``pgd`` run per device under ``shard_map`` (or directly without a mesh).

  Each device runs its own ``while_loop`` on its slice of the batch, so under
  a stopping rule a device stops as soon as its own examples are done instead
  of waiting for the slowest example of the global batch; the loop holds no
  collective, so trip counts may differ between devices. The random start
  (and the step noise's per-example keys) are drawn outside, on the global
  batch, so results do not depend on the number of devices.

  Args:
    mesh: the device mesh, or ``None`` to call ``pgd`` directly.
    fosc_centre_random_start: centre the FOSC on the random start, as the
      authors' code does, instead of on the clean example (the paper).
    compact: ``pgd``'s ``compact`` (evaluate only the still-active examples,
      in bucketed buffer sizes), per device.
    unclipped_random_start: keep the start where it is, also outside the
      pixel box (``pgd``'s ``clip_start=False``).
    stop: ``pgd``'s stopping rule (default: FOSC ``<= c_stop``).
    loss: ``pgd``'s loss (``'kl'``: ``y`` is a target distribution).
    step_noise: ``pgd``'s ``step_noise`` (FAT's omega), or ``None``.

  Returns:
    ``f(state, x0, x_start, y, attack_params, labels, noise_keys) -> (x_adv,
    PGDInfo)``; ``labels`` are the integer labels (the stopping rule's),
    ``noise_keys`` ``uint32[B, 2]`` key data of the per-example noise keys
    (ignored without ``step_noise``). Without a mesh both may be left out
    (``labels`` then default to ``y``).
  """

  def attack(state, x0, x_start, y, ap: AttackParams, labels=None,
             noise_keys=None):
    noise = dict(step_noise=step_noise,
                 noise_key=jax.random.wrap_key_data(noise_keys)
                 ) if step_noise is not None else {}
    return _attacks.pgd(_inference_logits_fn(state), x0, y, None,
                        eps=ap.eps, step_size=ap.step_size,
                        num_steps=ap.num_steps, c_stop=ap.c_stop,
                        random_start=False, x_start=x_start,
                        fosc_center=x_start if fosc_centre_random_start else None,
                        clip_start=not unclipped_random_start,
                        compact=compact, stop=stop, tau=ap.tau, labels=labels,
                        loss=loss, **noise)

  def per_device(state, x0, x_start, y, ap, labels=None, noise_keys=None):
    x, info = attack(state, x0, x_start, y, ap, labels, noise_keys)
    # num_iters and evaluated are this device's: give each a length-1 axis
    # so the global array lists one per device.
    return x, info._replace(num_iters=info.num_iters[None],
                            evaluated=info.evaluated[None])

  if mesh is None:
    return per_device
  data = P(parallel.DATA_AXIS)
  info_specs = _attacks.PGDInfo(steps=data, fosc=data, loss=data,
                                num_iters=data, evaluated=data)
  return jax.shard_map(per_device, mesh=mesh,
                       in_specs=(P(), data, data, data, P(), data, data),
                       out_specs=(data, info_specs), check_vma=False)


def start_point(start: str, key: jax.Array, x0: jax.Array, eps: jax.Array,
                unclipped: bool = False) -> jax.Array:
  """The attack's start for a method's ``start`` (see
  :attr:`dynamic_at.methods.Method.start`): ``'uniform'`` (clipped to the
  box unless ``unclipped``), ``'normal'`` (``x0 + 0.001 N(0, 1)``, TRADES'
  and MART's) or ``'clean'``."""
  if start == 'uniform':
    if unclipped:
      return _attacks.random_start_point(key, x0, eps, -jnp.inf, jnp.inf)
    return _attacks.random_start_point(key, x0, eps)
  if start == 'normal':
    return x0 + 0.001 * jax.random.normal(key, x0.shape, x0.dtype)
  if start == 'clean':
    return x0
  raise ValueError(f'start must be one of {methods_lib.START_POINTS}; got '
                   f'{start!r}')


def make_train_step(method, mesh: Optional[Mesh] = None, *,
                    fosc_centre_random_start: bool = False,
                    unclipped_random_start: bool = False,
                    compact: Any = None,
                    beta: float = 6.0,
                    start: Optional[str] = None,
                    step_noise: Optional[float] = None,
                    ) -> Callable[..., Tuple[TrainState, Dict[str, Any]]]:
  """Builds the (uncompiled) training step of ``method``.

  Args:
    method: a :class:`~dynamic_at.methods.Method` or its name in
      :data:`dynamic_at.methods.METHODS`.
    mesh: device mesh of the data-parallel step (``None``: no ``shard_map``,
      for single-device use without a mesh).
    fosc_centre_random_start: the authors' code centres the FOSC on the
      random start rather than on the clean example; off by default (paper).
    unclipped_random_start: the first gradient is taken at the start as it
      is, without clipping it to the pixel box ``[0, 1]`` (every step is
      clipped): Dynamic's authors' code with a uniform start; off by default.
      A ``'normal'`` start (TRADES, MART) is always unclipped, as in their
      code.
    compact: ``pgd``'s ``compact``: the attack evaluates only its still-active
      examples (bucketed buffer sizes), so early stopping saves wall time
      even when a few examples run all K steps (the loop itself runs until
      the slowest one stops). ``None`` (default): on for a method whose
      stopping rule stops examples early (Dynamic, FAT) when JAX's default
      backend is the CPU, off otherwise. Measured on MNIST (batch 128, 2
      idle CPU cores) with the real Dynamic run's checkpoint after epoch 1
      (c_t 0.5, 5.8 PGD steps per example, the loop running all 10 trips):
      306 ms per step against Standard's 402 ms (0.76x; without compaction
      399 ms). Compilation: 5 s instead of 2 s. On one H200 (MNIST runs
      sharing the GPU), Dynamic with compaction took 13.3 s per epoch at 2.7
      PGD steps per example against Standard's 7.5 s at 10 steps in the same
      minutes. Our reading: on a GPU this small model's attack is bound by
      per-trip latency, not arithmetic, so the compaction's per-trip gather,
      branch and scatter cost more than they save. Dynamic without
      compaction was not timed there; ``benchmarks/dynamic_step.py`` times
      both.
    beta: TRADES' and MART's weight of the KL term.
    start: override the method's start point (``'uniform'``, ``'normal'``,
      ``'clean'``), e.g. to run TRADES with the paper's uniform start.
    step_noise: FAT's per-step Gaussian noise (its ``omega``); ``None``:
      none.

  The authors' Keras code also weights each adversarial example's loss by its
  own inference-mode cross-entropy after the first epoch; the step does that
  when called with ``weighted=True`` (off by default, as in the paper; only
  the cross-entropy training loss reads it).

  Returns:
    ``train_step(state, batch, key, attack_params, weighted=False) ->
    (state, metrics)``; ``batch`` is ``{'image', 'label'}``, ``key`` the run's
    base key (the step folds in ``state.step``, so a resumed run draws the
    same numbers). ``metrics`` (see :data:`METRIC_KINDS`) holds scalars
    ``loss``, ``accuracy``, ``steps_mean``, ``steps_max``, ``iters_max``;
    the cost per example: ``grad_evals`` (the attack's input-gradient
    evaluations an example got: its steps plus the start's), ``attack_rows``
    (rows the attack's evaluations covered per example, frozen and padding
    rows included: what was computed), ``train_passes`` (training-mode
    forward and backward passes) and ``clean_forwards`` (extra inference
    forward passes: TRADES' clean prediction); ``iters``, the PGD loop's
    trip count on each device (``[num_devices]``); and per-example ``fosc``
    and ``steps`` of the adversarial batch (zeros for ``unsecured``).
  """
  method = get_method(method)
  if compact is None:
    compact = (method.stop is not _attacks.NO_STOP and
               jax.default_backend() == 'cpu')
  start = method.start if start is None else start
  attack = sharded_pgd(mesh, fosc_centre_random_start, compact,
                       unclipped_random_start, stop=method.stop,
                       loss=method.attack_loss, step_noise=step_noise)

  def train_step(state: TrainState, batch, key: jax.Array,
                 ap: AttackParams, weighted=False):
    x0, y = batch['image'], batch['label']
    key = jax.random.fold_in(key, state.step)
    clean_forwards = 0
    if method.adversarial:
      x_start = start_point(start, key, x0, ap.eps, unclipped_random_start)
      target = y
      if method.attack_loss == 'kl':
        target = jax.nn.softmax(_inference_logits_fn(state)(x0), -1)
        clean_forwards = 1
      noise_keys = jax.random.key_data(jax.random.split(
          jax.random.fold_in(key, 1), y.shape[0]))
      x, info = attack(state, x0, x_start, target, ap, y, noise_keys)
      example_weight = jnp.where(weighted, info.loss, 1.0)
      grad_evals = jnp.mean((info.steps + 1).astype(jnp.float32))
      attack_rows = jnp.sum(info.evaluated) / y.shape[0]
    else:
      x = x0
      zeros = jnp.zeros(y.shape, jnp.int32)
      info = _attacks.PGDInfo(steps=zeros, fosc=jnp.zeros(y.shape),
                              loss=jnp.zeros(y.shape),
                              num_iters=jnp.zeros((1,), jnp.int32),
                              evaluated=jnp.zeros((1,), jnp.int32))
      example_weight = jnp.ones(y.shape)
      grad_evals = attack_rows = jnp.float32(0.0)

    def apply(params, batch_stats, x_):
      logits, new_state = state.apply_fn(
          {'params': params, 'batch_stats': batch_stats}, x_, train=True,
          mutable=['batch_stats'])
      return logits, new_state['batch_stats']

    def loss_fn(params):
      return method.train_loss(apply, params, state.batch_stats, x0, x, y,
                               example_weight, beta)

    grads, out = jax.grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=out.batch_stats)
    metrics = {
        'loss': jnp.mean(out.per_example),
        'accuracy': jnp.mean(jnp.argmax(out.logits, -1) == y),
        'steps_mean': jnp.mean(info.steps.astype(jnp.float32)),
        'steps_max': jnp.max(info.steps),
        'iters_max': jnp.max(info.num_iters),
        'grad_evals': jnp.float32(grad_evals),
        'attack_rows': jnp.float32(attack_rows),
        'train_passes': jnp.float32(method.train_forward_passes),
        'clean_forwards': jnp.float32(clean_forwards),
        'iters': info.num_iters,
        'fosc': info.fosc,
        'steps': info.steps,
    }
    return state, metrics

  return train_step
