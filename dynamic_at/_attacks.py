"""L-inf attacks: the input gradient, FOSC-controlled PGD (Algorithm 1) and the
paper's evaluation attacks as thin functions over :func:`pgd`.

``logits_fn`` maps a batch of images in ``[0, 1]`` to logits. The attacks never
update model state: pass a model in inference mode (BatchNorm with running
statistics), e.g. ``lambda x: model.apply(variables, x, train=False)``. With
inference-mode BatchNorm every example's logits depend on that example alone,
which is what makes the summed-loss gradient below per-example exact.
"""

import dataclasses
from typing import Callable, Dict, NamedTuple, Optional, Tuple, Union

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from dynamic_at import _fosc
from dynamic_at import _losses

LogitsFn = Callable[[jax.Array], jax.Array]
Loss = Union[str, _losses.LossFn]


class PGDInfo(NamedTuple):
  """What :func:`pgd` reports, per example unless said otherwise.

  Attributes:
    steps: ``i32[batch]`` sign-gradient steps the example took.
    fosc: ``[batch]`` FOSC of the returned example (centred on ``x0``), in the
      inputs' dtype (float32 for float32 images).
    loss: ``[batch]`` attack loss of the returned example, in the logits'
      dtype.
    num_iters: ``i32[]`` iterations the loop ran: the steps of the slowest
      example, i.e. what the whole batch paid for.
    evaluated: ``i32[]`` rows the loop's gradient evaluations covered in
      all (the start's and each iteration's buffer, frozen and padding rows
      included): the attack's real cost in per-example gradient evaluations.
      Without compaction ``(num_iters + 1) * batch`` (``final_eval``).
  """
  steps: jax.Array
  fosc: jax.Array
  loss: jax.Array
  num_iters: jax.Array
  evaluated: Optional[jax.Array] = None


class _Carry(NamedTuple):
  k: jax.Array         # i32[]: iterations so far
  x: jax.Array         # [B, ...]: current iterates
  active: jax.Array    # bool[B]: the control vector V of Algorithm 1
  steps: jax.Array     # i32[B]
  grad: jax.Array      # [B, ...]: gradient at x of the active examples (used
                       # by the check and the next step alike)
  loss: jax.Array      # f32[B]
  fosc: jax.Array      # f32[B]
  counter: jax.Array   # i32[B]: the stopping rule's own per-example state
  key: jax.Array       # per-example keys of the step noise (or a dummy)
  evaluated: jax.Array  # i32[]: rows evaluated so far


class StopSettings(NamedTuple):
  """The traced settings of a stopping rule (change without recompiling).

  Attributes:
    c_stop: FOSC threshold ``c_t`` (float32; ``-inf`` never stops).
    tau: FAT's tau: the steps an example still takes once misclassified.
  """
  c_stop: jax.Array
  tau: jax.Array


class PointEval(NamedTuple):
  """What the loop knows of each example's current point."""
  loss: jax.Array      # f32[B]: attack loss
  fosc: jax.Array      # f32[B]: FOSC, centred on the clean example
  wrong: jax.Array     # bool[B]: misclassified (only if the rule asks)


@dataclasses.dataclass(frozen=True)
class StoppingRule:
  """A per-example stopping rule of :func:`pgd`'s loop.

  The loop evaluates every active example's point (loss, gradient, FOSC and,
  if ``needs_prediction``, whether the model misclassifies it), then asks the
  rule which examples take the next step. ``at_start`` is asked at the start
  point (before any step), ``after_step`` after each step; each gets the
  rule's per-example ``counter`` (``i32[B]``, zeros at the start) and returns
  ``(active, counter)``. ``after_step`` also gets the examples that were
  active, and must keep frozen examples frozen. All settings are traced
  (:class:`StopSettings`), so changing them never recompiles.

  Attributes:
    name: the rule's name in :data:`STOPPING_RULES`.
    at_start: ``(PointEval, counter, StopSettings) -> (active, counter)``.
    after_step: ``(PointEval, counter, active, StopSettings) -> (active,
      counter)``.
    needs_prediction: the rule reads ``PointEval.wrong``, so the loop
      computes it (from the logits it already has; no extra evaluation).
    description: one line for the docs.
  """
  name: str
  at_start: Callable[..., Tuple[jax.Array, jax.Array]]
  after_step: Callable[..., Tuple[jax.Array, jax.Array]]
  needs_prediction: bool = False
  description: str = ''


def _all_active(ev: PointEval, counter, settings):
  del settings
  return jnp.ones(ev.loss.shape, bool), counter


def _never_stop(ev, counter, active, settings):
  del ev, settings
  return active, counter


def _fosc_after_step(ev, counter, active, settings):
  return active & (ev.fosc > settings.c_stop), counter


def _fat_check(ev, counter, active, settings):
  """FAT's early stop (Zhang et al., ICML 2020, Algorithm 1, their
  ``earlystop.py``): before each step, an example the model misclassifies
  stops if its counter has reached tau, else its counter grows by one and it
  steps on. (Their code counts a budget down from tau; counting up to the
  traced tau is the same rule.)"""
  stop = active & ev.wrong & (counter >= settings.tau)
  counter = jnp.where(active & ev.wrong & ~stop, counter + 1, counter)
  return active & ~stop, counter


NO_STOP = StoppingRule(
    'none', _all_active, _never_stop,
    description='every example takes all K steps (Madry et al.\'s PGD)')
FOSC_STOP = StoppingRule(
    'fosc', _all_active, _fosc_after_step,
    description='an example stops once its FOSC is <= c_t, checked after '
    'each step (Wang et al., ICML 2019, Algorithm 1)')
FAT_STOP = StoppingRule(
    'fat', lambda ev, counter, s: _fat_check(
        ev, counter, jnp.ones(ev.loss.shape, bool), s),
    _fat_check, needs_prediction=True,
    description='an example stops tau steps after it is first misclassified, '
    'checked before each step (Zhang et al., ICML 2020, FAT)')

STOPPING_RULES: Dict[str, StoppingRule] = {
    r.name: r for r in (NO_STOP, FOSC_STOP, FAT_STOP)}


def get_stopping_rule(rule: Union[str, StoppingRule]) -> StoppingRule:
  """A :class:`StoppingRule` by name (or itself)."""
  if isinstance(rule, StoppingRule):
    return rule
  if rule not in STOPPING_RULES:
    raise ValueError(f'stopping rule must be one of {sorted(STOPPING_RULES)}; '
                     f'got {rule!r}')
  return STOPPING_RULES[rule]


def input_grad(logits_fn: LogitsFn, x: ArrayLike, y: ArrayLike,
               loss: Loss = 'xent', *,
               kappa: float = 50.0) -> Tuple[jax.Array, jax.Array]:
  """Per-example loss and its gradient with respect to the input.

  One reverse pass over the batch: the gradient of the *summed* per-example
  loss. Since example ``i``'s loss depends on ``x_i`` alone (inference-mode
  model), ``d(sum_j loss_j)/dx_i = d loss_i / dx_i`` exactly.

  Why not ``vmap(grad(per-example loss))``: measured on the MNIST CNN (batch
  128, 2 CPU cores, jax 0.10.2, ``python -m benchmarks.input_grad``) the two
  take the same time (median pairwise ratio vmapped/summed 0.97): XLA batches
  the vmapped form into the same convolutions. We keep the summed form because
  it runs the model on the batch exactly as written, while vmap runs it on
  batches of one (which breaks models with explicit batch-axis reshapes or
  asserts) and costs a second trace.

  Args:
    logits_fn: batch of images -> ``[batch, num_classes]`` logits.
    x: ``[batch, ...]`` inputs.
    y: ``[batch]`` integer labels.
    loss: ``'xent'``, ``'cw'`` (C&W margin with ``kappa``) or a callable
      ``(logits, labels) -> [batch]``.
    kappa: confidence of the C&W margin loss.

  Returns:
    ``(loss, grad)``: ``f32[batch]`` and an array shaped like ``x``.
  """
  loss_fn = _losses.get_loss(loss, kappa)

  def summed(x_):
    per_example = loss_fn(logits_fn(x_), y)
    return jnp.sum(per_example), per_example

  grad, per_example = jax.grad(summed, has_aux=True)(jnp.asarray(x))
  return per_example, grad


def _expand(v: jax.Array, x: jax.Array) -> jax.Array:
  """``[batch]`` -> ``[batch, 1, ..., 1]`` to broadcast against ``x``."""
  return v.reshape(v.shape + (1,) * (x.ndim - 1))


def random_start_point(key: jax.Array, x0: ArrayLike, eps: ArrayLike,
                       clip_min: float = 0.0,
                       clip_max: float = 1.0) -> jax.Array:
  """A uniform random point of each eps-ball around ``x0``, clipped to
  ``[clip_min, clip_max]``; ``eps`` broadcasts against ``x0``."""
  x0 = jnp.asarray(x0)
  noise = jax.random.uniform(key, x0.shape, x0.dtype, -1.0, 1.0)
  return jnp.clip(x0 + eps * noise, clip_min, clip_max)


def _project_one(x: jax.Array, x0: jax.Array, eps: jax.Array,
                 clip_min: float, clip_max: float) -> jax.Array:
  """Projects one example onto its eps-ball around ``x0`` and the pixel box."""
  x = jnp.clip(x, x0 - eps, x0 + eps)
  return jnp.clip(x, clip_min, clip_max)


def _step_one(x, x0, grad, eps, step_size, active, clip_min, clip_max):
  """One sign-gradient ascent step of one example; a frozen one stays put."""
  moved = _project_one(x + step_size * jnp.sign(grad), x0, eps, clip_min,
                       clip_max)
  return jnp.where(active, moved, x)


def _bucket_sizes(batch: int, compact: Union[bool, int]) -> Tuple[int, ...]:
  """Buffer sizes of a compacted loop, largest first; ``(batch,)`` when off.

  Eighths of the batch (``batch * 7/8, 6/8, ...``) where they are integers
  and at least ``compact`` (16 for ``True``), then halving further.
  """
  if compact is False or compact is None or compact == 0:
    return (batch,)
  smallest = max(16 if compact is True else int(compact), 1)
  sizes = [batch]
  if batch % 8 == 0:
    sizes += [batch * j // 8 for j in range(7, 0, -1)
              if batch * j // 8 >= smallest]
  while sizes[-1] % 2 == 0 and sizes[-1] // 2 >= smallest:
    sizes.append(sizes[-1] // 2)
  return tuple(sizes)


def pgd(logits_fn: LogitsFn,
        x0: ArrayLike,
        y: ArrayLike,
        key: Optional[jax.Array] = None,
        *,
        eps: ArrayLike,
        step_size: ArrayLike,
        num_steps: ArrayLike,
        c_stop: Optional[ArrayLike] = None,
        random_start: bool = True,
        loss: Loss = 'xent',
        kappa: float = 50.0,
        clip_min: float = 0.0,
        clip_max: float = 1.0,
        x_start: Optional[ArrayLike] = None,
        fosc_center: Optional[ArrayLike] = None,
        clip_start: bool = True,
        compact: Union[bool, int] = False,
        final_eval: bool = True,
        stop: Union[None, str, StoppingRule] = None,
        tau: ArrayLike = 0,
        labels: Optional[ArrayLike] = None,
        step_noise: Optional[ArrayLike] = None,
        noise_key: Optional[jax.Array] = None
        ) -> Tuple[jax.Array, PGDInfo]:
  """L-inf PGD with FOSC control: Algorithm 1 of Wang et al. (ICML 2019).

  Starts from ``x0`` (or a uniform random point of the eps-ball, clipped to
  ``[clip_min, clip_max]``). Each iteration, every *active* example takes a step
  ``x + step_size * sign(grad)``, is projected onto the eps-ball around ``x0``
  and onto ``[clip_min, clip_max]``, and then the FOSC of its new point is
  computed from the gradient there. An example whose FOSC is ``<= c_stop`` is
  frozen and never moves again. The loop ends when no example is active or
  after ``num_steps`` iterations. The gradient of the FOSC check is the one the
  next step uses, so control costs no extra gradient evaluation: ``pgd`` makes
  ``num_iters + 1`` gradient evaluations (the last one gives the reported FOSC
  and loss; ``num_iters`` with ``final_eval=False``) whether or not ``c_stop``
  is set.

  ``eps``, ``step_size``, ``num_steps`` and ``c_stop`` may be traced values:
  a jitted caller that changes them never recompiles. ``c_stop=None`` is
  plain PGD (no example is ever frozen) and compiles to the same loop.

  Args:
    logits_fn: batch of images -> logits, in inference mode.
    x0: ``[batch, ...]`` clean inputs in ``[clip_min, clip_max]``.
    y: ``[batch]`` integer labels.
    key: PRNG key for the random start (unused without one).
    eps: L-inf radius, scalar or ``[batch]``.
    step_size: step ``alpha``, scalar or ``[batch]``.
    num_steps: maximum number of steps ``K`` (an integer, possibly traced).
    c_stop: FOSC threshold ``c_t``, compared in float32; ``None`` never stops
      an example early.
    random_start: start from a uniform random point of the ball.
    loss: ``'xent'``, ``'cw'`` or a callable ``(logits, labels) -> [batch]``.
    kappa: confidence of the C&W margin loss.
    clip_min: lower pixel bound.
    clip_max: upper pixel bound.
    x_start: start from this point (projected onto the ball and the box)
      instead of ``x0`` or a random one; ``random_start`` and ``key`` are then
      unused. Lets a caller draw the random start once for a global batch.
    clip_start: clip the start (random or ``x_start``) to
      ``[clip_min, clip_max]`` before the first gradient, as the paper does.
      With ``False`` the first gradient is taken at the start as it is (the
      authors' code: ``x0 + U(-eps, eps)`` may leave the box); every step is
      still clipped to the box.
    fosc_center: the point the FOSC is centred on; default (``None``) the clean
      ``x0``, as in the paper. The authors' code centres it on the random
      start instead (pass the start here to reproduce that). The eps-ball of
      the projection is always the one around ``x0``.
    compact: evaluate the gradient on the still-active examples only. Under
      FOSC control the loop runs until its slowest example stops, and without
      compaction every iteration pays for the whole batch. With ``compact``
      (``True``, or an int: the smallest buffer, default 16) an iteration
      gathers its active examples into the smallest buffer that holds them
      (sizes: eighths of the batch, ``batch * 7/8, 6/8, ...``, then halving;
      fixed shapes, chosen by ``lax.switch``), evaluates it and scatters the
      results back. Results are the same up to floating-point reassociation
      of the smaller batch (per-example results of an inference-mode model do
      not depend on the rest of the batch). Off by default here;
      :func:`dynamic_at.train.make_train_step` turns it on for Dynamic
      (measurements there).

    final_eval: evaluate the loss, gradient and FOSC at the points the last
      step reached (``True``, the default: ``info`` then holds every
      example's final FOSC and loss; ``num_iters + 1`` gradient evaluations).
      With ``False`` the last iteration skips that evaluation, so PGD costs
      exactly ``num_steps`` gradient evaluations like a plain PGD loop, and
      ``info.fosc`` and ``info.loss`` are NaN for the examples that were still
      moving at the end (frozen examples keep their values). The returned
      points are the same either way.

    stop: the per-example stopping rule (a :class:`StoppingRule` or its
      name in :data:`STOPPING_RULES`): ``'fosc'`` (the default, also for
      ``None``: stop once FOSC ``<= c_stop``; with ``c_stop=None`` no example
      stops), ``'none'`` (all ``num_steps`` steps) or ``'fat'`` (FAT: an
      example stops ``tau`` steps after it is first misclassified, checked
      before each step, the start included).
    tau: FAT's ``tau`` (possibly traced).
    labels: ``[batch]`` integer labels the rule's misclassification check
      uses; default ``y`` (pass them when ``y`` is a target distribution).
    step_noise: standard deviation of Gaussian noise added to each step
      before the projection, as FAT's code does (its ``omega``); ``None``
      (default) adds none.
    noise_key: the noise's key: one key (split over the batch) or ``[batch]``
      per-example keys (a caller that shards the batch passes these, so the
      noise does not depend on the device count).

  Returns:
    ``(x_adv, info)``: ``x_adv`` shaped like ``x0`` (gradient-stopped) and a
    :class:`PGDInfo`.
  """
  rule = get_stopping_rule('fosc' if stop is None else stop)
  x0 = jnp.asarray(x0)
  y = jnp.asarray(y)
  batch = x0.shape[0]
  eps_b = jnp.broadcast_to(jnp.asarray(eps, x0.dtype), (batch,))
  step_b = jnp.broadcast_to(jnp.asarray(step_size, x0.dtype), (batch,))
  num_steps = jnp.asarray(num_steps, jnp.int32)
  c_stop = jnp.asarray(-jnp.inf if c_stop is None else c_stop, jnp.float32)
  settings = StopSettings(c_stop=c_stop, tau=jnp.asarray(tau, jnp.int32))
  labels = y if labels is None else jnp.asarray(labels)
  if step_noise is not None:
    if noise_key is None:
      raise ValueError('pgd: step_noise needs a noise_key')
    if noise_key.shape != (batch,):
      noise_key = jax.random.split(noise_key, batch)
  else:
    noise_key = jnp.zeros((batch,), jnp.uint32)  # unused

  if x_start is not None:
    x = jnp.asarray(x_start, x0.dtype)
  elif random_start:
    if key is None:
      raise ValueError('pgd: random_start=True needs a PRNG key')
    # Drawn in the ball only: the projection below clips it to the box unless
    # clip_start=False (the authors' unclipped start).
    x = random_start_point(key, x0, _expand(eps_b, x0), -jnp.inf, jnp.inf)
  else:
    x = x0

  project = jax.vmap(_project_one, in_axes=(0, 0, 0, None, None))
  step = jax.vmap(_step_one, in_axes=(0, 0, 0, 0, 0, 0, None, None))
  x = project(x, x0, _expand(eps_b, x0), clip_min if clip_start else -jnp.inf,
              clip_max if clip_start else jnp.inf)

  center = x0 if fosc_center is None else jnp.asarray(fosc_center, x0.dtype)

  loss_fn = _losses.get_loss(loss, kappa)

  def evaluate_on(x_, y_, center_, eps_, labels_):
    if rule.needs_prediction:
      def summed(xx):
        logits = logits_fn(xx)
        per_example = loss_fn(logits, y_)
        return jnp.sum(per_example), (per_example,
                                      jnp.argmax(logits, -1) != labels_)
      grad_, (loss_, wrong_) = jax.grad(summed, has_aux=True)(x_)
    else:
      loss_, grad_ = input_grad(logits_fn, x_, y_, loss, kappa=kappa)
      wrong_ = jnp.zeros(loss_.shape, bool)
    return loss_, grad_, _fosc.fosc(x_, center_, grad_, eps_), wrong_

  def evaluate(x_):
    return evaluate_on(x_, y, center, eps_b, labels)

  sizes = _bucket_sizes(batch, compact)

  def evaluate_active(x_, active):
    """``evaluate`` of the active examples; others get unspecified values."""
    if len(sizes) == 1:
      return evaluate(x_)

    def on_bucket(size):
      def run():
        # Indices of the active examples, padded with an out-of-range index:
        # padded rows gather zeros and their results are dropped.
        idx = jnp.nonzero(active, size=size, fill_value=batch)[0]
        take = lambda a: a.at[idx].get(mode='fill', fill_value=0)
        sub = evaluate_on(take(x_), take(y), take(center), take(eps_b),
                          take(labels))
        return tuple(
            jnp.zeros((batch,) + v.shape[1:], v.dtype).at[idx].set(
                v, mode='drop') for v in sub)
      return run

    return jax.lax.switch(bucket_of(active), [lambda: evaluate(x_)] +
                          [on_bucket(s_) for s_ in sizes[1:]])

  def bucket_of(active):
    """Index into ``sizes`` of the smallest buffer holding the active rows."""
    n_active = jnp.sum(active.astype(jnp.int32))
    return sum((n_active <= s_).astype(jnp.int32) for s_ in sizes[1:])

  def rows_of(active):
    if len(sizes) == 1:
      return jnp.int32(batch)
    return jnp.asarray(sizes, jnp.int32)[bucket_of(active)]

  loss0, grad0, fosc0, wrong0 = evaluate(x)
  active0, counter0 = rule.at_start(PointEval(loss0, fosc0, wrong0),
                                    jnp.zeros((batch,), jnp.int32), settings)
  init = _Carry(k=jnp.zeros((), jnp.int32), x=x, active=active0,
                steps=jnp.zeros((batch,), jnp.int32), grad=grad0, loss=loss0,
                fosc=fosc0, counter=counter0, key=noise_key,
                evaluated=jnp.int32(batch))

  def noise_of(keys, k):
    one = lambda key_: jax.random.normal(jax.random.fold_in(key_, k),
                                         x0.shape[1:], x0.dtype)
    return jnp.asarray(step_noise, x0.dtype) * jax.vmap(one)(keys)

  def cond(c: _Carry):
    return jnp.logical_and(c.k < num_steps, jnp.any(c.active))

  def body(c: _Carry) -> _Carry:
    direction = c.grad
    if step_noise is not None:
      # x + alpha * sign(g) + omega * N(0, 1), then the projection (FAT).
      direction = (jnp.sign(c.grad) * _expand(step_b, x0) +
                   noise_of(c.key, c.k))
      x_new = jax.vmap(_project_one, in_axes=(0, 0, 0, None, None))(
          c.x + direction, x0, _expand(eps_b, x0), clip_min, clip_max)
      x_new = jnp.where(_expand(c.active, x0), x_new, c.x)
    else:
      x_new = step(c.x, x0, direction, _expand(eps_b, x0),
                   _expand(step_b, x0), c.active, clip_min, clip_max)
    rows = rows_of(c.active)
    if final_eval:
      loss_new, grad_new, fosc_new, wrong_new = evaluate_active(x_new,
                                                                c.active)
    else:
      rows = jnp.where(c.k + 1 < num_steps, rows, 0)
      loss_new, grad_new, fosc_new, wrong_new = jax.lax.cond(
          c.k + 1 < num_steps, lambda: evaluate_active(x_new, c.active),
          lambda: (jnp.full_like(c.loss, jnp.nan), c.grad,
                   jnp.full_like(c.fosc, jnp.nan),
                   jnp.zeros(c.active.shape, bool)))
    active_new, counter_new = rule.after_step(
        PointEval(loss_new, fosc_new, wrong_new), c.counter, c.active,
        settings)
    # A frozen example keeps the loss and FOSC it had when it was frozen (its
    # point and the model are unchanged, so they are also its current
    # values). Its gradient is never used again (it takes no more steps), so
    # the carry takes the new one as it is, without a select over the batch.
    return _Carry(
        k=c.k + 1,
        x=x_new,
        active=active_new,
        steps=c.steps + c.active.astype(jnp.int32),
        grad=grad_new,
        loss=jnp.where(c.active, loss_new, c.loss),
        fosc=jnp.where(c.active, fosc_new, c.fosc),
        counter=counter_new,
        key=c.key,
        evaluated=c.evaluated + rows)

  final = jax.lax.while_loop(cond, body, init)
  info = PGDInfo(steps=final.steps, fosc=final.fosc, loss=final.loss,
                 num_iters=final.k, evaluated=final.evaluated)
  return jax.lax.stop_gradient(final.x), jax.tree.map(jax.lax.stop_gradient,
                                                      info)


def fgsm(logits_fn: LogitsFn, x0: ArrayLike, y: ArrayLike,
         key: Optional[jax.Array] = None, *, eps: ArrayLike,
         **kwargs) -> Tuple[jax.Array, PGDInfo]:
  """FGSM: one step of size ``eps`` from the clean input (no random start)."""
  del key  # deterministic
  return pgd(logits_fn, x0, y, None, eps=eps, step_size=eps, num_steps=1,
             random_start=False, **kwargs)


def pgd10(logits_fn: LogitsFn, x0: ArrayLike, y: ArrayLike, key: jax.Array,
          *, eps: ArrayLike, **kwargs) -> Tuple[jax.Array, PGDInfo]:
  """The paper's PGD-10: 10 steps of ``eps / 4`` from a random start."""
  return pgd(logits_fn, x0, y, key, eps=eps, step_size=jnp.asarray(eps) / 4,
             num_steps=10, random_start=True, **kwargs)


def pgd20(logits_fn: LogitsFn, x0: ArrayLike, y: ArrayLike, key: jax.Array,
          *, eps: ArrayLike, **kwargs) -> Tuple[jax.Array, PGDInfo]:
  """The paper's PGD-20: 20 steps of ``eps / 4`` from a random start."""
  return pgd(logits_fn, x0, y, key, eps=eps, step_size=jnp.asarray(eps) / 4,
             num_steps=20, random_start=True, **kwargs)


def cw_inf(logits_fn: LogitsFn, x0: ArrayLike, y: ArrayLike, key: jax.Array,
           *, eps: ArrayLike, kappa: float = 50.0,
           num_steps: int = 30, **kwargs) -> Tuple[jax.Array, PGDInfo]:
  """CW-inf: PGD on the C&W margin loss (``kappa`` 50), 30 steps of ``eps/4``,
  from a random start, as in Madry et al.'s evaluation."""
  return pgd(logits_fn, x0, y, key, eps=eps, step_size=jnp.asarray(eps) / 4,
             num_steps=num_steps, random_start=True, loss='cw', kappa=kappa,
             **kwargs)
