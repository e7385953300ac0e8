"""FAB-T: the targeted L-inf Fast Adaptive Boundary attack of AutoAttack.

Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive
boundary attack", ICML 2020, in the form AutoAttack's standard version runs it
(``'fab-t'``: ``norm='Linf'``, ``n_restarts=1``, ``n_iter=100``,
``n_target_classes=9``, ``alpha_max=0.1``, ``eta=1.05``, ``beta=0.9``). The
code follows the authors' reference implementation (fra31/auto-attack,
commit a392200: ``autoattack/fab_base.py`` ``FABAttack.attack_single_run``
with ``is_targeted=True`` -- formerly ``attack_single_run_targeted`` -- and
``perturb``; ``autoattack/fab_pt.py``
``FABAttack_PT.get_diff_logits_grads_batch_targeted``;
``autoattack/fab_projections.py`` ``projection_linf``), batched: every example
carries its own iterate, best point and distance through one
``lax.fori_loop`` per run, and the runs are one ``lax.scan``.

Targets. Per example the targets are the classes with the 2nd, 3rd, ...,
``(num_targets + 1)``-th largest clean logits (the reference's
``output.sort()[1][:, -target_class]``, ``target_class = 2, 3, ...``; for the
correctly classified examples it attacks, these are the largest logits other
than ``y``). The runs are made target by target, in that order, with
``num_restarts`` runs per target.

One run (target ``t``, start ``x_1``; ``x0`` the clean point). Per iteration:

1. Linearise the target margin ``g(x) = f_t(x) - f_y(x)`` at ``x_1``: its
   value and input gradient ``w`` (one gradient evaluation); the decision
   hyperplane is ``{z : w.z = b}`` with ``b = w.x_1 - g(x_1)``.
2. ``d_1``, ``d_2``: the minimal L-inf steps from ``x_1`` and from ``x0`` onto
   that hyperplane intersected with the pixel box (:func:`projection_linf`;
   where the hyperplane misses the box, the step to the box corner on its
   side).
3. ``alpha = clip(|d_1| / (|d_1| + |d_2|), 0, alpha_max)`` with
   ``|.| = max(||.||_inf, 1e-8)``, and
   ``x_1 <- clip((1 - alpha)(x_1 + eta d_1) + alpha (x0 + eta d_2))``.
4. If the model misclassifies ``x_1`` (a forward pass, any class other than
   ``y``): keep it as the run's best point if ``||x_1 - x0||_inf`` is smaller
   than the best so far, and step back towards the clean point,
   ``x_1 <- x0 + beta (x_1 - x0)``.

A run's result is its best adversarial point and distance (``inf`` if it found
none). The first run starts at ``x0`` (the reference sets
``use_rand_start=(counter > 0)``, so with ``num_restarts=1``, AutoAttack's
setting, nothing is random and ``key`` is unused); restart ``r > 0`` of a
target starts at the reference's random point
``clip(x0 + 0.5 eps u / ||u||_inf)``, ``u`` uniform in ``[-1, 1]^d``.

What is returned per example, as the reference's ``perturb``: the best point
of the first run (in target, then restart order) whose distance is at most
``eps``; ``x0`` if no run has one. Examples the model misclassifies at ``x0``
are returned unchanged and count as successes (AutoAttack attacks only the
correctly classified points).

Differences from the reference, none of which changes a returned point (up to
float rounding) when ``num_restarts=1`` and the box is ``[0, 1]``:

* Every run attacks the whole batch (fixed shapes); the reference runs each
  target only on the examples still robust. The attack is per-example, so
  this changes nothing: the results of examples already fooled are discarded.
* The pixel box is ``[clip_min, clip_max]``; the reference hard-codes
  ``[0, 1]`` (in the projection's corners and in the clamps).
* Random restarts (``num_restarts > 1`` only) draw from ``key`` split per
  (target, restart), not from torch's global stream; same distribution.
* The "no adversarial point yet" distance is ``inf``, not ``1e10``.
* ``FABInfo`` is ours: the reference returns only the points.
* The sort of the projection is stable (``jnp.argsort``); torch's is not.
  Tied entries give the same projection up to rounding.
* The projection divides by guarded denominators where the reference's
  selected rows never divide by zero but its unselected rows would (batched
  code computes every branch for every row).
* The targets are ``top_k`` of the clean logits with ``y`` masked out; the
  reference sorts all logits and skips the first. The two agree for the
  correctly classified examples it attacks (up to ties).
"""

import math
from typing import NamedTuple, Tuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from dynamic_at import _attacks

LogitsFn = _attacks.LogitsFn


def _expand(v: jax.Array, x: jax.Array) -> jax.Array:
  """``[batch]`` -> ``[batch, 1, ..., 1]`` to broadcast against ``x``."""
  return v.reshape(v.shape + (1,) * (x.ndim - 1))


class FABInfo(NamedTuple):
  """What :func:`fab_targeted` reports, per example.

  Attributes:
    success: ``bool[batch]`` the model misclassifies the returned point.
    distance: ``f32[batch]`` L-inf distance of the best adversarial point of
      the runs the reference would make for the example: for a success, the
      returned point's distance from ``x0`` (``0`` where ``x0`` is already
      misclassified); otherwise the smallest over all runs (``> eps``), or
      ``inf`` where no run found an adversarial point.
    target: ``i32[batch]`` the target class of the run whose point is
      returned; ``-1`` where none is (no success, or ``x0`` misclassified).
  """
  success: jax.Array
  distance: jax.Array
  target: jax.Array


def projection_linf(points: ArrayLike,
                    w: ArrayLike,
                    b: ArrayLike,
                    clip_min: float = 0.0,
                    clip_max: float = 1.0) -> jax.Array:
  """Minimal L-inf step onto a hyperplane within a box, row by row.

  For each row ``t`` of ``points`` returns ``d`` of smallest ``||d||_inf``
  with ``w.(t + d) = b`` and ``t + d`` in ``[clip_min, clip_max]^n``; where no
  point of the box lies on the hyperplane, the step to the box corner on the
  far side (the one that moves ``w.z`` furthest towards ``b``). The reference
  algorithm (``projection_linf``): with ``w, b`` signed so that
  ``w.t >= b``, the reachable change of ``w.z`` at radius ``lambda`` is
  ``-sum_i |w_i| min(lambda, p_i)``, ``p_i`` the distance of ``t_i`` to that
  corner; a sort of ``p`` and a binary search over its breakpoints find the
  piece where it equals ``b - w.t``, and ``lambda`` in closed form.
  Coordinates with ``w_i = 0`` do not move.

  Args:
    points: ``[n, features]`` points ``t`` in the box.
    w: ``[n, features]`` hyperplane normals.
    b: ``[n]`` hyperplane offsets.
    clip_min: lower end of the box.
    clip_max: upper end of the box.

  Returns:
    ``[n, features]`` the steps ``d``.
  """
  t = jnp.asarray(points)
  w = jnp.asarray(w, t.dtype)
  b = jnp.asarray(b, t.dtype)
  n_features = t.shape[1]
  sign = jnp.where(jnp.sum(w * t, axis=1) - b >= 0, 1.0, -1.0).astype(t.dtype)
  w = w * sign[:, None]
  b = b * sign
  neg = w < 0
  nonzero = w != 0
  # The corner minimising w.z, the step to it and its length per coordinate.
  corner = jnp.where(neg, clip_max, clip_min).astype(t.dtype)
  d = (corner - t) * nonzero
  p = jnp.where(neg, clip_max - t, t - clip_min)
  order = jnp.argsort(p, axis=1)               # ascending p
  b = b - jnp.sum(w * t, axis=1)               # the change w.d must make
  b0 = jnp.sum(w * d, axis=1)                  # the change at the corner
  desc = order[:, ::-1]                        # descending p
  ws = jnp.take_along_axis(w, desc, axis=1)
  s = jnp.cumsum(jnp.abs(ws), axis=1)
  sb = jnp.cumsum(-ws * jnp.take_along_axis(d, desc, axis=1),
                  axis=1) + b0[:, None]
  p_min = jnp.take_along_axis(p, order[:, :1], axis=1)[:, 0]
  # Reached before the smallest breakpoint: every coordinate moves lambda.
  c_l = b - (sb[:, -1] - s[:, -1] * p_min) > 0
  # Reached between two breakpoints: binary search for the piece.
  c_2 = (b - b0 > 0) & ~c_l
  lb = jnp.zeros(t.shape[:1], jnp.int32)
  ub = jnp.full(t.shape[:1], n_features - 1, jnp.int32)
  for _ in range(math.ceil(math.log2(n_features))):
    mid = (lb + ub) // 2
    at = jnp.take_along_axis(order, (n_features - 1 - mid)[:, None], axis=1)
    b2 = (jnp.take_along_axis(sb, mid[:, None], axis=1)
          - jnp.take_along_axis(s, mid[:, None], axis=1)
          * jnp.take_along_axis(p, at, axis=1))[:, 0]
    c = b - b2 > 0
    lb = jnp.where(c, mid, lb)
    ub = jnp.where(c, ub, mid)

  def safe(v):
    return jnp.where(v > 0, v, 1.0)

  lmbd_l = jnp.maximum((b - sb[:, -1]) / -safe(s[:, -1]), 0.0)[:, None]
  d_l = jnp.where(neg, lmbd_l, -lmbd_l)
  s_lb = jnp.take_along_axis(s, lb[:, None], axis=1)
  sb_lb = jnp.take_along_axis(sb, lb[:, None], axis=1)
  lmbd_2 = jnp.maximum((b[:, None] - sb_lb) / -safe(s_lb), 0.0)
  d_2 = jnp.where(neg, jnp.minimum(lmbd_2, d), jnp.maximum(-lmbd_2, d))
  d = jnp.where(c_l[:, None], d_l, jnp.where(c_2[:, None], d_2, d))
  return d * nonzero


class _RunCarry(NamedTuple):
  x: jax.Array      # [B, ...] current iterate x_1
  best: jax.Array   # [B, ...] best adversarial point of the run
  dist: jax.Array   # f32[B] its L-inf distance (inf: none yet)


class _Carry(NamedTuple):
  x_out: jax.Array     # [B, ...] returned point
  done: jax.Array      # bool[B] a run found a point within eps (or x0 wrong)
  distance: jax.Array  # f32[B] see FABInfo.distance
  target: jax.Array    # i32[B] see FABInfo.target


def fab_targeted(logits_fn: LogitsFn,
                 x0: ArrayLike,
                 y: ArrayLike,
                 key: jax.Array,
                 *,
                 eps: ArrayLike,
                 num_targets: int = 9,
                 num_steps: int = 100,
                 num_restarts: int = 1,
                 alpha_max: float = 0.1,
                 eta: float = 1.05,
                 beta: float = 0.9,
                 clip_min: float = 0.0,
                 clip_max: float = 1.0) -> Tuple[jax.Array, FABInfo]:
  """Targeted L-inf FAB (FAB-T), batched.

  See the module docstring for the algorithm. Costs, per example,
  ``num_targets * num_restarts * num_steps`` gradient evaluations (of the
  target margin) and as many forward passes (the misclassification check of
  each new iterate), plus two forward passes (the clean logits and the check
  of the returned point).

  Args:
    logits_fn: batch of images -> logits, in inference mode.
    x0: ``[batch, ...]`` clean inputs in ``[clip_min, clip_max]``.
    y: ``[batch]`` integer labels.
    key: PRNG key of the random restarts (unused with ``num_restarts=1``).
    eps: L-inf radius, scalar or ``[batch]``; may be traced.
    num_targets: target classes per example, at most ``num_classes - 1``
      (static).
    num_steps: FAB iterations per run (static).
    num_restarts: runs per target; all but the first start at a random point
      (static).
    alpha_max: largest weight of the step from ``x0``.
    eta: overshoot of the projection steps.
    beta: backward step towards ``x0`` after an adversarial iterate.
    clip_min: lower pixel bound.
    clip_max: upper pixel bound.

  Returns:
    ``(x_adv, info)``: ``x_adv`` shaped like ``x0`` (gradient-stopped), per
    example a misclassified point within ``eps`` of ``x0`` if a run found
    one, else ``x0``; and a :class:`FABInfo`.

  Raises:
    ValueError: on a bad count, hyperparameter or shape.
  """
  num_steps = int(num_steps)
  num_restarts = int(num_restarts)
  num_targets = int(num_targets)
  if num_steps < 1:
    raise ValueError(f'fab_targeted: num_steps must be >= 1; got {num_steps}')
  if num_restarts < 1:
    raise ValueError(f'fab_targeted: num_restarts must be >= 1; got '
                     f'{num_restarts}')
  if not 0.0 <= alpha_max <= 1.0:
    raise ValueError(f'fab_targeted: alpha_max must be in [0, 1]; got '
                     f'{alpha_max}')
  if not eta > 0.0:
    raise ValueError(f'fab_targeted: eta must be > 0; got {eta}')
  if not 0.0 < beta <= 1.0:
    raise ValueError(f'fab_targeted: beta must be in (0, 1]; got {beta}')
  if not clip_min < clip_max:
    raise ValueError(f'fab_targeted: clip_min ({clip_min}) must be < '
                     f'clip_max ({clip_max})')
  x0 = jnp.asarray(x0)
  y = jnp.asarray(y)
  if x0.ndim < 2:
    raise ValueError(f'fab_targeted: x0 must be [batch, ...]; got shape '
                     f'{x0.shape}')
  if y.shape != x0.shape[:1]:
    raise ValueError(f'fab_targeted: y must have shape {x0.shape[:1]} (one '
                     f'label per example of x0); got {y.shape}')
  y = y.astype(jnp.int32)
  batch = x0.shape[0]
  clean_logits = logits_fn(x0)
  num_classes = clean_logits.shape[-1]
  if clean_logits.shape != (batch, num_classes):
    raise ValueError(f'fab_targeted: logits_fn must map x0 to [batch, '
                     f'classes]; got shape {clean_logits.shape}')
  if not 1 <= num_targets <= num_classes - 1:
    raise ValueError(f'fab_targeted: num_targets must be in [1, '
                     f'{num_classes - 1}]; got {num_targets}')
  eps_b = jnp.broadcast_to(jnp.asarray(eps, x0.dtype), (batch,))
  expand = lambda v: _expand(v, x0)
  x0_flat = x0.reshape(batch, -1)

  masked = jnp.where(jax.nn.one_hot(y, num_classes, dtype=bool), -jnp.inf,
                     clean_logits)
  targets = jax.lax.top_k(masked, num_targets)[1].astype(jnp.int32)
  clean_wrong = jnp.argmax(clean_logits, axis=-1) != y

  def misclassified(x):
    return jnp.argmax(logits_fn(x), axis=-1) != y

  def run(target: jax.Array, x_start: jax.Array) -> _RunCarry:
    """One run of ``num_steps`` FAB iterations towards ``target``."""
    def margin(x):
      logits = logits_fn(x)
      take = lambda c: jnp.take_along_axis(logits, c[:, None], axis=-1)[:, 0]
      per_example = take(target) - take(y)
      return jnp.sum(per_example), per_example

    def body(_, c: _RunCarry) -> _RunCarry:
      w, df = jax.grad(margin, has_aux=True)(c.x)
      w = w.reshape(batch, -1)
      x_flat = c.x.reshape(batch, -1)
      b = jnp.sum(w * x_flat, axis=1) - df
      d3 = projection_linf(jnp.concatenate([x_flat, x0_flat]),
                           jnp.concatenate([w, w]), jnp.concatenate([b, b]),
                           clip_min, clip_max)
      a0 = jnp.maximum(jnp.max(jnp.abs(d3), axis=1), 1e-8)
      a1, a2 = a0[:batch], a0[batch:]
      alpha = jnp.clip(a1 / (a1 + a2), 0.0, alpha_max)
      d1 = d3[:batch].reshape(x0.shape)
      d2 = d3[batch:].reshape(x0.shape)
      x = jnp.clip((c.x + eta * d1) * expand(1.0 - alpha)
                   + (x0 + eta * d2) * expand(alpha), clip_min, clip_max)
      adv = misclassified(x)
      dist = jnp.max(jnp.abs(x - x0).reshape(batch, -1), axis=1)
      better = adv & (dist < c.dist)
      return _RunCarry(
          x=jnp.where(expand(adv), x0 + (x - x0) * beta, x),
          best=jnp.where(expand(better), x, c.best),
          dist=jnp.where(better, dist, c.dist))

    init = _RunCarry(x=x_start, best=x0,
                     dist=jnp.full((batch,), jnp.inf, x0.dtype))
    return jax.lax.fori_loop(0, num_steps, body, init)

  def random_start(k):
    u = jax.random.uniform(k, x0.shape, x0.dtype, -1.0, 1.0)
    u_max = jnp.max(jnp.abs(u.reshape(batch, -1)), axis=1)
    return jnp.clip(x0 + expand(0.5 * eps_b / u_max) * u, clip_min, clip_max)

  def one_run(c: _Carry, inputs) -> Tuple[_Carry, None]:
    target, restart, k = inputs
    x_start = jax.lax.cond(restart > 0, random_start, lambda _: x0, k)
    r = run(target, x_start)
    active = ~c.done            # the examples the reference still attacks
    new = active & (r.dist <= eps_b)
    return _Carry(
        x_out=jnp.where(expand(new), r.best, c.x_out),
        done=c.done | new,
        distance=jnp.where(active, jnp.minimum(c.distance, r.dist),
                           c.distance),
        target=jnp.where(new, target, c.target)), None

  # Runs in the reference's order: target by target, restarts within each.
  run_targets = jnp.repeat(targets.T, num_restarts, axis=0)
  run_restarts = jnp.tile(jnp.arange(num_restarts), num_targets)
  run_keys = jax.random.split(key, num_targets * num_restarts)
  init = _Carry(x_out=x0, done=clean_wrong,
                distance=jnp.where(clean_wrong, 0.0, jnp.inf).astype(x0.dtype),
                target=jnp.full((batch,), -1, jnp.int32))
  final, _ = jax.lax.scan(one_run, init,
                          (run_targets, run_restarts, run_keys))
  info = FABInfo(success=misclassified(final.x_out), distance=final.distance,
                 target=final.target)
  return (jax.lax.stop_gradient(final.x_out),
          jax.tree.map(jax.lax.stop_gradient, info))
