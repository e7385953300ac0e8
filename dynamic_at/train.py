"""Train state, optimiser and one pure training step for every method.

Methods (Wang et al., ICML 2019, Section 5):

* ``unsecured``: clean training; the attack is never called.
* ``standard``: Madry et al.'s PGD-K with random start, all K steps.
* ``curriculum``: Cai et al. (2018): PGD-k where k grows by one whenever the
  training accuracy on adversarial examples passes a threshold
  (:func:`curriculum_num_steps`, decided per epoch outside the compiled step).
* ``dynamic``: PGD-K with FOSC control at ``c_t = fosc_threshold(t, c_max, T')``.

Each schedule is one function here, used both by training and by whoever
reports it: Dynamic's ``c_t`` (:func:`dynamic_at.fosc_threshold`, via
:func:`attack_params_for_epoch`), Curriculum's k (:func:`curriculum_num_steps`),
the eps warm-up (:func:`warmup_eps`) and the learning rate
(:func:`learning_rate_schedule`, the schedule :func:`make_optimizer` uses).

Standard, curriculum and dynamic share one compiled step: they differ only in
the traced :class:`AttackParams` (``num_steps``, ``c_stop``), so changing K or
``c_t`` between epochs never recompiles.

The attack runs the model in inference mode (BatchNorm running statistics, no
state update); BatchNorm statistics are updated only by the training forward
pass on the adversarial batch.
"""

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import Mesh, PartitionSpec as P

from dynamic_at import _attacks
from dynamic_at import _fosc
from dynamic_at import _losses
from dynamic_at import parallel

METHODS = ('unsecured', 'standard', 'curriculum', 'dynamic')


class TrainState(train_state.TrainState):
  """Flax's train state with the model's BatchNorm statistics."""
  batch_stats: Any = None


class AttackParams(NamedTuple):
  """The traced attack settings of a training step (change without retrace).

  Attributes:
    eps: L-inf radius (e.g. during an eps warm-up).
    step_size: PGD step size.
    num_steps: maximum PGD steps K.
    c_stop: FOSC threshold; ``-inf`` never stops an example (Standard).
  """
  eps: jax.Array
  step_size: jax.Array
  num_steps: jax.Array
  c_stop: jax.Array

  @classmethod
  def make(cls, eps: float, step_size: float, num_steps: int,
           c_stop: Optional[float] = None) -> 'AttackParams':
    return cls(jnp.float32(eps), jnp.float32(step_size), jnp.int32(num_steps),
               jnp.float32(-jnp.inf if c_stop is None else c_stop))


def attack_params_for_epoch(method: str, epoch: int, *, eps: float,
                            step_size: float, num_steps: int, c_max: float,
                            t_prime: float,
                            curriculum_steps: Optional[int] = None
                            ) -> AttackParams:
  """The attack settings a method uses in ``epoch`` (host-side, per epoch).

  Args:
    method: one of :data:`METHODS`.
    epoch: the epoch ``t``, from 0.
    eps: L-inf radius of this epoch.
    step_size: PGD step size.
    num_steps: K (Standard, Dynamic).
    c_max: Dynamic's ``c_max``.
    t_prime: Dynamic's ``T'``.
    curriculum_steps: Curriculum's current k.

  Returns:
    :class:`AttackParams`.
  """
  if method == 'unsecured':
    return AttackParams.make(eps, step_size, 0)
  if method == 'standard':
    return AttackParams.make(eps, step_size, num_steps)
  if method == 'curriculum':
    if curriculum_steps is None:
      raise ValueError('curriculum needs curriculum_steps')
    return AttackParams.make(eps, step_size, curriculum_steps)
  if method == 'dynamic':
    c_t = float(_fosc.fosc_threshold(epoch, c_max, t_prime))
    return AttackParams.make(eps, step_size, num_steps, c_t)
  raise ValueError(f'method must be one of {METHODS}; got {method!r}')


def warmup_eps(epoch: int, eps: float, warmup_epochs: int = 0) -> float:
  """The eps of ``epoch`` (from 0) under a linear warm-up: ``eps * (epoch +
  1) / warmup_epochs`` for the first ``warmup_epochs`` epochs, then ``eps``
  (``warmup_epochs`` 0: ``eps`` throughout)."""
  if warmup_epochs and epoch < warmup_epochs:
    return eps * (epoch + 1) / warmup_epochs
  return eps


def curriculum_num_steps(current: int, adv_accuracy: float, *,
                         threshold: float, max_steps: int) -> int:
  """Cai et al.'s curriculum: one more PGD step once the training accuracy on
  the current adversarial examples passes ``threshold``, up to ``max_steps``."""
  if adv_accuracy > threshold:
    return min(current + 1, max_steps)
  return current


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
                unclipped_random_start: bool = False) -> Callable[..., Any]:
  """``pgd`` run per device under ``shard_map`` (or directly without a mesh).

  Each device runs its own ``while_loop`` on its slice of the batch, so under
  FOSC control a device stops as soon as its own examples are done instead of
  waiting for the slowest example of the global batch; the loop holds no
  collective, so trip counts may differ between devices. The random start is
  drawn outside, on the global batch, so results do not depend on the number
  of devices.

  Args:
    mesh: the device mesh, or ``None`` to call ``pgd`` directly.
    fosc_centre_random_start: centre the FOSC on the random start, as the
      authors' code does, instead of on the clean example (the paper).
    compact: ``pgd``'s ``compact`` (evaluate only the still-active examples,
      in bucketed buffer sizes), per device.
    unclipped_random_start: keep the start where it is, also outside the
      pixel box (``pgd``'s ``clip_start=False``), as the authors' code does.

  Returns:
    ``f(state, x0, x_start, y, attack_params) -> (x_adv, PGDInfo)``.
  """

  def attack(state, x0, x_start, y, ap: AttackParams):
    return _attacks.pgd(_inference_logits_fn(state), x0, y, None,
                        eps=ap.eps, step_size=ap.step_size,
                        num_steps=ap.num_steps, c_stop=ap.c_stop,
                        random_start=False, x_start=x_start,
                        fosc_center=x_start if fosc_centre_random_start else None,
                        clip_start=not unclipped_random_start,
                        compact=compact)

  def per_device(state, x0, x_start, y, ap):
    x, info = attack(state, x0, x_start, y, ap)
    # num_iters is this device's trip count: give it a length-1 axis so the
    # global array lists one count per device.
    return x, info._replace(num_iters=info.num_iters[None])

  if mesh is None:
    return per_device
  data = P(parallel.DATA_AXIS)
  info_specs = _attacks.PGDInfo(steps=data, fosc=data, loss=data,
                                num_iters=data)
  return jax.shard_map(per_device, mesh=mesh,
                       in_specs=(P(), data, data, data, P()),
                       out_specs=(data, info_specs), check_vma=False)


def make_train_step(method: str, mesh: Optional[Mesh] = None, *,
                    fosc_centre_random_start: bool = False,
                    unclipped_random_start: bool = False,
                    compact: Any = None
                    ) -> Callable[..., Tuple[TrainState, Dict[str, Any]]]:
  """Builds the (uncompiled) training step of ``method``.

  Args:
    method: one of :data:`METHODS`.
    mesh: device mesh of the data-parallel step (``None``: no ``shard_map``,
      for single-device use without a mesh).
    fosc_centre_random_start: the authors' code centres the FOSC on the
      random start rather than on the clean example; off by default (paper).
    unclipped_random_start: the authors' code starts PGD from ``x0 + U(-eps,
      eps)`` without clipping it to the pixel box ``[0, 1]`` (the first
      gradient is taken there; every step is clipped); off by default: the
      start is clipped.
    compact: ``pgd``'s ``compact``: the attack evaluates only its still-active
      examples (bucketed buffer sizes), so FOSC early stopping saves wall
      time even when a few examples run all K steps (the loop itself runs
      until the slowest one stops). ``None`` (default): on for ``dynamic``
      when JAX's default backend is the CPU, off otherwise and for the other
      methods, which never stop an example early. Measured on MNIST (batch
      128, 2 idle CPU cores) with the real Dynamic run's checkpoint after
      epoch 1 (c_t 0.5, 5.8 PGD steps per example, the loop running all 10
      trips): 306 ms per step against Standard's 402 ms (0.76x; without
      compaction 399 ms). Compilation: 5 s instead of 2 s. On one H200
      (MNIST runs sharing the GPU), Dynamic with compaction took 13.3 s per
      epoch at 2.7 PGD steps per example against Standard's 7.5 s at 10
      steps in the same minutes. Our reading: on a GPU this small model's
      attack is bound by per-trip latency, not arithmetic, so the
      compaction's per-trip gather, branch and scatter cost more than they
      save. Dynamic without compaction was not timed there;
      ``benchmarks/dynamic_step.py`` times both.

  The authors' Keras code also weights each adversarial example's loss by its
  own inference-mode cross-entropy after the first epoch; the step does that
  when called with ``weighted=True`` (off by default, as in the paper).

  Returns:
    ``train_step(state, batch, key, attack_params, weighted=False) ->
    (state, metrics)``; ``batch`` is ``{'image', 'label'}``, ``key`` the run's
    base key (the step folds in ``state.step``, so a resumed run draws the
    same numbers). ``metrics`` holds scalars ``loss``, ``accuracy``,
    ``steps_mean``, ``steps_max``, ``iters_max``; ``iters``, the PGD loop's
    trip count on each device (``[num_devices]``); and per-example ``fosc``
    and ``steps`` of the adversarial batch (zeros for ``unsecured``).
  """
  if method not in METHODS:
    raise ValueError(f'method must be one of {METHODS}; got {method!r}')
  adversarial = method != 'unsecured'
  if compact is None:
    compact = method == 'dynamic' and jax.default_backend() == 'cpu'
  attack = sharded_pgd(mesh, fosc_centre_random_start, compact,
                       unclipped_random_start)

  def train_step(state: TrainState, batch, key: jax.Array,
                 ap: AttackParams, weighted=False):
    x0, y = batch['image'], batch['label']
    key = jax.random.fold_in(key, state.step)
    if adversarial:
      if unclipped_random_start:
        x_start = _attacks.random_start_point(key, x0, ap.eps, -jnp.inf,
                                              jnp.inf)
      else:
        x_start = _attacks.random_start_point(key, x0, ap.eps)
      x, info = attack(state, x0, x_start, y, ap)
      example_weight = jnp.where(weighted, info.loss, 1.0)
    else:
      x = x0
      zeros = jnp.zeros(y.shape, jnp.int32)
      info = _attacks.PGDInfo(steps=zeros, fosc=jnp.zeros(y.shape),
                              loss=jnp.zeros(y.shape),
                              num_iters=jnp.zeros((1,), jnp.int32))
      example_weight = jnp.ones(y.shape)

    def loss_fn(params):
      logits, new_state = state.apply_fn(
          {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
          mutable=['batch_stats'])
      per_example = _losses.xent(logits, y)
      return jnp.mean(example_weight * per_example), (logits, new_state,
                                                      per_example)

    grads, (logits, new_model_state, per_example) = jax.grad(
        loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads,
                                  batch_stats=new_model_state['batch_stats'])
    metrics = {
        'loss': jnp.mean(per_example),
        'accuracy': jnp.mean(jnp.argmax(logits, -1) == y),
        'steps_mean': jnp.mean(info.steps.astype(jnp.float32)),
        'steps_max': jnp.max(info.steps),
        'iters_max': jnp.max(info.num_iters),
        'iters': info.num_iters,
        'fosc': info.fosc,
        'steps': info.steps,
    }
    return state, metrics

  return train_step
