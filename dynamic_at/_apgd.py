"""Auto-PGD (APGD) and APGD-T, the step-size-free L-inf attacks of AutoAttack.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks", ICML 2020. The loop follows the authors'
reference implementation (``autoattack/autopgd_base.py``, ``APGDAttack`` and
``APGDAttack_targeted`` with ``norm='Linf'``), batched: every example carries
its own step size, best point and checkpoint state through one
``lax.fori_loop``.

Per iteration ``k`` (``a = alpha`` for ``k > 0``, ``a = 1`` for the first)::

  z       = P(x_k + eta * sign(grad f(x_k)))
  x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))

with ``P`` the projection onto the eps-ball around ``x0`` and the pixel box.
The step size starts at ``2 eps``. At each checkpoint (:func:`apgd_checkpoints`)
an example halves its step size and restarts from its best point (with the
gradient there) if

1. the loss increased in at most ``rho`` of the steps since the last
   checkpoint, or
2. its step size was not halved at the last checkpoint and its best loss has
   not improved since then.

Where the reference code and the paper differ, we follow the code (its numbers
are the published ones), with one exception:

* Checkpoints: the code's integer schedule (first window ``int(0.22 N)``,
  windows shrinking by ``int(0.03 N)`` down to ``int(0.06 N)``, each at least
  1), not the paper's ``ceil(p_j N)``; the two agree for ``N = 100``.
* Condition 1 is ``increases <= rho * window`` (paper: ``<``).
* (Exception) The first comparison of the first window is with the loss at the
  start point, as in the paper; the reference code compares it with an unset
  entry of its loss history (0) through a negative index.

What is returned per example: the first iterate (the start point included)
that the model misclassifies, once there is one -- the reference code keeps
the *last* misclassified iterate; both are adversarial examples, so robust
accuracy is the same -- otherwise the point of highest loss. An example the
model already misclassifies at ``x0`` is returned unchanged and counts as a
success, as AutoAttack does (it attacks only correctly classified points).

``logits_fn`` must run the model in inference mode (see :mod:`_attacks`).
"""

import functools
from typing import Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from dynamic_at import _attacks
from dynamic_at import _losses

LogitsFn = _attacks.LogitsFn


def _expand(v: jax.Array, x: jax.Array) -> jax.Array:
  """``[batch]`` -> ``[batch, 1, ..., 1]`` to broadcast against ``x``."""
  return v.reshape(v.shape + (1,) * (x.ndim - 1))


LOSSES = ('ce', 'dlr', 'dlr_targeted')


class APGDInfo(NamedTuple):
  """What :func:`apgd` and :func:`apgd_targeted` report, per example.

  Attributes:
    loss: ``f32[batch]`` attack loss at the returned point.
    success: ``bool[batch]`` the model misclassifies the returned point.
    best_loss: ``f32[batch]`` highest attack loss the run reached (for
      :func:`apgd_targeted`, in the run whose point is returned).
  """
  loss: jax.Array
  success: jax.Array
  best_loss: jax.Array


def dlr_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Difference of Logits Ratio loss, per example.

  .. math:: -\\frac{z_y - \\max_{i \\ne y} z_i}{z_{\\pi_1} - z_{\\pi_3}
     + 10^{-12}}

  with ``pi`` sorting the logits in decreasing order. Invariant to shifting
  and (positively) rescaling the logits; positive iff the example is
  misclassified. Needs at least 3 classes.

  Args:
    logits: ``[batch, num_classes]``.
    labels: ``[batch]`` integer labels.

  Returns:
    ``f32[batch]``.
  """
  num_classes = logits.shape[-1]
  onehot = jax.nn.one_hot(labels, num_classes, dtype=bool)
  z_y = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
  z_other = jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=-1)
  top = jax.lax.top_k(logits, 3)[0]
  return -(z_y - z_other) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted_loss(logits: jax.Array, labels: jax.Array,
                      targets: jax.Array) -> jax.Array:
  """Targeted DLR loss, per example.

  .. math:: -\\frac{z_y - z_t}{z_{\\pi_1} - (z_{\\pi_3} + z_{\\pi_4}) / 2
     + 10^{-12}}

  Needs at least 4 classes.

  Args:
    logits: ``[batch, num_classes]``.
    labels: ``[batch]`` integer true labels ``y``.
    targets: ``[batch]`` integer target classes ``t``.

  Returns:
    ``f32[batch]``.
  """
  z_y = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  z_t = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
  top = jax.lax.top_k(logits, 4)[0]
  return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def apgd_checkpoints(num_steps: int) -> Tuple[int, ...]:
  """The checkpoints ``w_0 = 0 < w_1 < ...`` (iteration counts) of APGD.

  The reference code's integer schedule: the first window has
  ``max(int(0.22 N), 1)`` iterations and each next one ``max(int(0.03 N), 1)``
  fewer, but at least ``max(int(0.06 N), 1)``; a checkpoint beyond ``N`` is
  never reached. For ``N = 100`` this is ``0, 22, 41, 57, 70, 80, 87, 93, 99``,
  which is the paper's ``ceil(p_j N)`` with ``p_0 = 0``, ``p_1 = 0.22``,
  ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``.

  Args:
    num_steps: the number of iterations ``N``.

  Returns:
    The checkpoints, ``0`` first.
  """
  window = max(int(0.22 * num_steps), 1)
  min_window = max(int(0.06 * num_steps), 1)
  decrease = max(int(0.03 * num_steps), 1)
  points = [0]
  while points[-1] + window <= num_steps:
    points.append(points[-1] + window)
    window = max(window - decrease, min_window)
  return tuple(points)


def _schedule(num_steps: int) -> Tuple[np.ndarray, np.ndarray]:
  """Per iteration ``i`` (0-based): whether a checkpoint follows it, and the
  length of the window it closes (0 where none)."""
  points = apgd_checkpoints(num_steps)
  is_check = np.zeros(num_steps, bool)
  window = np.zeros(num_steps, np.int32)
  for prev, cur in zip(points[:-1], points[1:]):
    is_check[cur - 1] = True
    window[cur - 1] = cur - prev
  return is_check, window


def _get_loss(loss: str, target_class: Optional[ArrayLike]
              ) -> _losses.LossFn:
  if loss == 'ce':
    if target_class is not None:
      raise ValueError("apgd: target_class is only for loss='dlr_targeted'")
    return _losses.xent
  if loss == 'dlr':
    if target_class is not None:
      raise ValueError("apgd: target_class is only for loss='dlr_targeted'")
    return dlr_loss
  if loss == 'dlr_targeted':
    if target_class is None:
      raise ValueError("apgd: loss='dlr_targeted' needs target_class")
    targets = jnp.asarray(target_class, jnp.int32)
    return lambda logits, labels: dlr_targeted_loss(
        logits, labels, jnp.broadcast_to(targets, labels.shape))
  raise ValueError(f'apgd: loss must be one of {LOSSES}; got {loss!r}')


def _linf_start(key: jax.Array, x0: jax.Array, eps: jax.Array,
                clip_min: float, clip_max: float) -> jax.Array:
  """The reference random start: ``x0 + eps * t / ||t||_inf`` with ``t``
  uniform in ``[-1, 1]^d`` (so one coordinate sits on the sphere), clipped to
  the pixel box; ``eps`` is ``[batch, 1, ..., 1]``."""
  t = jax.random.uniform(key, x0.shape, x0.dtype, -1.0, 1.0)
  t_max = jnp.max(jnp.abs(t.reshape(t.shape[0], -1)), axis=1)
  t = t / _expand(t_max + 1e-12, x0)
  return jnp.clip(x0 + eps * t, clip_min, clip_max)


class _Carry(NamedTuple):
  x: jax.Array                # [B, ...] current iterate x_k
  x_prev: jax.Array           # [B, ...] previous iterate x_{k-1}
  grad: jax.Array             # [B, ...] gradient the next step uses
  loss: jax.Array             # f32[B] loss of the last evaluated point
  step: jax.Array             # f32[B] step size eta
  x_best: jax.Array           # [B, ...] point of highest loss
  grad_best: jax.Array        # [B, ...] gradient there
  loss_best: jax.Array        # f32[B]
  increases: jax.Array        # i32[B] loss increases since last checkpoint
  loss_best_last: jax.Array   # f32[B] loss_best at the last checkpoint
  reduced_last: jax.Array     # bool[B] step halved at the last checkpoint
  found: jax.Array            # bool[B] a misclassified point was found
  x_adv: jax.Array            # [B, ...] the first misclassified point
  loss_adv: jax.Array         # f32[B] its loss


def apgd(logits_fn: LogitsFn,
         x0: ArrayLike,
         y: ArrayLike,
         key: Optional[jax.Array] = None,
         *,
         eps: ArrayLike,
         num_steps: int = 100,
         loss: str = 'ce',
         target_class: Optional[ArrayLike] = None,
         random_start: bool = True,
         rho: float = 0.75,
         alpha: float = 0.75,
         clip_min: float = 0.0,
         clip_max: float = 1.0) -> Tuple[jax.Array, APGDInfo]:
  """L-inf APGD (one run, no restarts), batched.

  See the module docstring for the algorithm. Costs ``num_steps + 1``
  gradient evaluations and one extra forward pass (the clean prediction).

  Args:
    logits_fn: batch of images -> logits, in inference mode.
    x0: ``[batch, ...]`` clean inputs in ``[clip_min, clip_max]``.
    y: ``[batch]`` integer labels.
    key: PRNG key of the random start (unused without one).
    eps: L-inf radius, scalar or ``[batch]``; may be traced.
    num_steps: iterations ``N`` (static: the checkpoints depend on it).
    loss: ``'ce'`` (cross-entropy, APGD-CE), ``'dlr'`` (APGD-DLR) or
      ``'dlr_targeted'`` (needs ``target_class``).
    target_class: ``[batch]`` (or scalar) target classes of the targeted DLR
      loss.
    random_start: start from the reference random point of the eps-ball;
      otherwise from ``x0``.
    rho: condition 1 threshold (fraction of steps that increased the loss).
    alpha: momentum weight of the new step.
    clip_min: lower pixel bound.
    clip_max: upper pixel bound.

  Returns:
    ``(x_adv, info)``: ``x_adv`` shaped like ``x0`` (gradient-stopped) and an
    :class:`APGDInfo`.
  """
  num_steps = int(num_steps)
  if num_steps < 1:
    raise ValueError(f'apgd: num_steps must be >= 1; got {num_steps}')
  loss_fn = _get_loss(loss, target_class)
  x0 = jnp.asarray(x0)
  y = jnp.asarray(y, jnp.int32)
  batch = x0.shape[0]
  eps_b = jnp.broadcast_to(jnp.asarray(eps, x0.dtype), (batch,))
  expand = lambda v: _expand(v, x0)
  eps_x = expand(eps_b)

  def project(x):
    return jnp.clip(jnp.clip(x, x0 - eps_x, x0 + eps_x), clip_min, clip_max)

  def evaluate(x):
    """Per-example loss, gradient, and whether the point is misclassified."""
    def summed(x_):
      logits = logits_fn(x_)
      per_example = loss_fn(logits, y)
      return jnp.sum(per_example), (per_example, logits)
    grad, (loss_, logits) = jax.grad(summed, has_aux=True)(x)
    return loss_, grad, jnp.argmax(logits, axis=-1) != y

  if random_start:
    if key is None:
      raise ValueError('apgd: random_start=True needs a PRNG key')
    x_start = _linf_start(key, x0, eps_x, clip_min, clip_max)
  else:
    x_start = jnp.clip(x0, clip_min, clip_max)

  clean_logits = logits_fn(x0)
  clean_wrong = jnp.argmax(clean_logits, axis=-1) != y
  clean_loss = loss_fn(clean_logits, y)

  loss0, grad0, wrong0 = evaluate(x_start)
  found0 = clean_wrong | wrong0
  init = _Carry(
      x=x_start, x_prev=x_start, grad=grad0, loss=loss0,
      step=2.0 * eps_b, x_best=x_start, grad_best=grad0, loss_best=loss0,
      increases=jnp.zeros((batch,), jnp.int32), loss_best_last=loss0,
      reduced_last=jnp.ones((batch,), bool), found=found0,
      x_adv=jnp.where(expand(clean_wrong), x0, x_start),
      loss_adv=jnp.where(clean_wrong, clean_loss, loss0))

  is_check_np, window_np = _schedule(num_steps)
  is_check_all = jnp.asarray(is_check_np)
  window_all = jnp.asarray(window_np)

  def body(i, c: _Carry) -> _Carry:
    a = jnp.where(i > 0, alpha, 1.0).astype(x0.dtype)
    z = project(c.x + expand(c.step) * jnp.sign(c.grad))
    x_new = project(c.x + a * (z - c.x) + (1.0 - a) * (c.x - c.x_prev))
    loss_new, grad_new, wrong = evaluate(x_new)

    first = wrong & ~c.found
    x_adv = jnp.where(expand(first), x_new, c.x_adv)
    loss_adv = jnp.where(first, loss_new, c.loss_adv)
    found = c.found | wrong

    better = loss_new > c.loss_best
    x_best = jnp.where(expand(better), x_new, c.x_best)
    grad_best = jnp.where(expand(better), grad_new, c.grad_best)
    loss_best = jnp.where(better, loss_new, c.loss_best)
    increases = c.increases + (loss_new > c.loss).astype(jnp.int32)

    # Checkpoint (a no-op unless iteration i closes a window).
    is_check = is_check_all[i]
    window = window_all[i].astype(jnp.float32)
    cond1 = increases.astype(jnp.float32) <= rho * window
    cond2 = ~c.reduced_last & (c.loss_best_last >= loss_best)
    reduce = is_check & (cond1 | cond2)
    return _Carry(
        x=jnp.where(expand(reduce), x_best, x_new),
        x_prev=c.x,
        grad=jnp.where(expand(reduce), grad_best, grad_new),
        loss=loss_new,
        step=jnp.where(reduce, 0.5 * c.step, c.step),
        x_best=x_best, grad_best=grad_best, loss_best=loss_best,
        increases=jnp.where(is_check, 0, increases),
        loss_best_last=jnp.where(is_check, loss_best, c.loss_best_last),
        reduced_last=jnp.where(is_check, reduce, c.reduced_last),
        found=found, x_adv=x_adv, loss_adv=loss_adv)

  final = jax.lax.fori_loop(0, num_steps, body, init)
  x_out = jnp.where(expand(final.found), final.x_adv, final.x_best)
  info = APGDInfo(loss=jnp.where(final.found, final.loss_adv, final.loss_best),
                  success=final.found, best_loss=final.loss_best)
  return (jax.lax.stop_gradient(x_out),
          jax.tree.map(jax.lax.stop_gradient, info))


def apgd_targeted(logits_fn: LogitsFn,
                  x0: ArrayLike,
                  y: ArrayLike,
                  key: jax.Array,
                  *,
                  eps: ArrayLike,
                  num_steps: int = 100,
                  num_targets: int = 9,
                  **kwargs) -> Tuple[jax.Array, APGDInfo]:
  """APGD-T: APGD on the targeted DLR loss, once per target class.

  The targets of an example are the ``num_targets`` classes with the highest
  clean logits other than ``y`` (for a correctly classified example: the 2nd,
  3rd, ... highest, as in the reference code). Each target gets a fresh
  random start (``key`` is split per target). Per example, the first run that
  misclassifies it gives the returned point; if none does, the last run's
  highest-loss point is returned. Unlike the reference code, every run attacks
  the whole batch (fixed shapes); results of already fooled examples are
  discarded.

  Args:
    logits_fn: batch of images -> logits, in inference mode.
    x0: ``[batch, ...]`` clean inputs.
    y: ``[batch]`` integer labels.
    key: PRNG key.
    eps: L-inf radius, scalar or ``[batch]``.
    num_steps: APGD iterations per target (static).
    num_targets: number of target classes, at most ``num_classes - 1``.
    **kwargs: forwarded to :func:`apgd` (``rho``, ``alpha``, ``clip_min``,
      ``clip_max``, ``random_start``).

  Returns:
    ``(x_adv, info)`` as :func:`apgd`.
  """
  x0 = jnp.asarray(x0)
  y = jnp.asarray(y, jnp.int32)
  clean_logits = logits_fn(x0)
  num_classes = clean_logits.shape[-1]
  if not 1 <= num_targets <= num_classes - 1:
    raise ValueError(f'apgd_targeted: num_targets must be in [1, '
                     f'{num_classes - 1}]; got {num_targets}')
  masked = jnp.where(jax.nn.one_hot(y, num_classes, dtype=bool), -jnp.inf,
                     clean_logits)
  targets = jax.lax.top_k(masked, num_targets)[1]  # [batch, num_targets]
  keys = jax.random.split(key, num_targets)
  expand = lambda v: _expand(v, x0)

  def one_target(carry, inputs):
    x_out, info = carry
    target, k = inputs
    x_t, info_t = apgd(logits_fn, x0, y, k, eps=eps, num_steps=num_steps,
                       loss='dlr_targeted', target_class=target, **kwargs)
    keep = info.success
    x_out = jnp.where(expand(keep), x_out, x_t)
    info = jax.tree.map(lambda old, new: jnp.where(keep, old, new), info,
                        info_t)
    return (x_out, info), None

  batch = x0.shape[0]
  init = (x0, APGDInfo(loss=jnp.full((batch,), -jnp.inf, jnp.float32),
                       success=jnp.zeros((batch,), bool),
                       best_loss=jnp.full((batch,), -jnp.inf, jnp.float32)))
  (x_out, info), _ = jax.lax.scan(one_target, init, (targets.T, keys))
  return x_out, info


def worst_case(correct_by_attack: Dict[str, ArrayLike]) -> np.ndarray:
  """Per-example worst case over attacks: robust only if correct under all.

  Args:
    correct_by_attack: attack name -> ``bool[n]`` whether the model classifies
      the example correctly under that attack (all the same length).

  Returns:
    ``bool[n]``: the logical AND over attacks.

  Raises:
    ValueError: on no attacks or differing lengths.
  """
  if not correct_by_attack:
    raise ValueError('worst_case: no attacks given')
  arrays = {name: np.asarray(v, bool) for name, v in correct_by_attack.items()}
  shapes = {v.shape for v in arrays.values()}
  if len(shapes) != 1:
    raise ValueError(f'worst_case: per-example arrays differ in shape: '
                     f'{ {n: v.shape for n, v in arrays.items()} }')
  return functools.reduce(np.logical_and, arrays.values())
