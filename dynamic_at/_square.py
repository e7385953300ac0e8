"""The L-inf Square attack, as AutoAttack's standard version runs it.

Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a query-efficient
black-box adversarial attack via random search", ECCV 2020. The loop follows
AutoAttack's implementation (fra31/auto-attack ``autoattack/square.py``,
``SquareAttack.attack_single_run`` with ``norm='Linf'`` and ``loss='margin'``,
and ``perturb``), with the settings of AutoAttack's standard version:
``n_queries=5000``, ``p_init=0.8``, one restart, ``resc_schedule=False``.
Batched: every example carries its own state through one ``lax.while_loop``.

The attack minimises the margin ``m(x) = z_y(x) - max_{j != y} z_j(x)`` by
random search over the vertices of the eps-ball, using only the logits:

1. Clean pass: an example the model already misclassifies at ``x0``
   (``argmax != y``) is not attacked and is returned unchanged.
2. Start: vertical stripes, ``x = clip(x0 + eps * sign(2 u - 1))`` with one
   ``u ~ U[0, 1)`` per (column, channel), the same down each column, clipped
   to the box. One query. An example whose margin there is ``<= 0`` is done.
3. Iteration ``i = 0, 1, ..., num_queries - 1``, for each example whose margin
   is still ``> 0``: a square of side ``s_i`` (:func:`square_side`) at row
   ``floor((H - s_i) u_h)`` and column ``floor((W - s_i) u_w)``; inside it the
   candidate is the current point plus ``2 eps sign(2 u_c - 1)`` per channel
   ``c``, then projected onto the eps-ball around ``x0`` and onto the box
   (so each coordinate of the square lands on ``x0 +- eps``, clipped, or
   within an ulp of it where ``x_best - 2 eps`` rounds above ``x0 - eps``,
   as in the reference). The
   candidate costs one query and replaces the current point if its margin is
   strictly lower. An example stops once its margin is ``<= 0``; the loop
   ends when every example has stopped or after ``num_queries`` iterations.

What follows the reference, quirks included:

* ``p_i`` halves after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000
  and 8000 (:func:`square_p_selection`; ``resc_schedule=False``, so the
  iteration index is not rescaled to ``num_queries``), and
  ``s_i = min(max(round(sqrt(p_i H W)), 1), min(H, W))`` with Python's
  ``round`` (half to even).
* Positions are ``floor((H - s) u)`` with ``u < 1``: a square never touches
  the last row (column) unless it spans the image's height (width).
* ``sign(2 u - 1)`` is 0 for ``u = 0.5``: that stripe or square channel keeps
  its value (probability ``2^-23`` per draw with JAX's float32 uniforms).
* No resampling: AutoAttack's code (unlike the authors' original
  square-attack repository, which redraws a square's signs while they would
  leave the point unchanged) evaluates the candidate even if it equals the
  current point, and counts the query.
* ``queries`` is ``attack_single_run``'s ``n_queries``: 1 for the start plus
  one per iteration the example was still robust at, so at most
  ``num_queries + 1``; 0 for an example misclassified at ``x0`` (never
  attacked). The clean forward pass is not counted, as in AutoAttack.
* The loop stops an example on ``margin <= 0``, as ``attack_single_run``
  does; ``success`` is ``argmax != y`` at the returned point, as ``perturb``
  decides which points to return. The two differ only on an exact tie of
  the true and the best other logit.
* The reference also accepts a candidate with ``margin <= 0``; with the
  margin loss that is implied by "strictly lower", so it is not a separate
  test here.

Differences:

* Random stream. The reference draws, from torch's global generator seeded
  with AutoAttack's seed, the stripes of all attacked examples as one tensor
  and, per iteration, one square position and one sign vector shared by all
  still-robust examples of the batch, so an example's draws depend on the
  batch it is in. Here each example has its own stream,
  ``k_b = fold_in(key, b)`` for batch index ``b``: the stripes are
  ``uniform(fold_in(k_b, 0), [1, W, C])`` and iteration ``i``'s draws are
  ``(u_h, u_w, u_1..u_C) = uniform(fold_in(k_b, i + 1), [2 + C])``, turned
  into positions and signs exactly as the reference turns ``torch.rand``
  values into them. Given the same draws the two compute the same points,
  query counts and margins (tested against a NumPy transcription of the
  reference, with per-example and with batch-shared draws).
* The whole batch is evaluated every iteration and finished examples are
  frozen (the reference queries only the still-robust ones); with an
  inference-mode model, whose logits for an example depend on that example
  alone, the results are the same.
* The returned point of an example that is not fooled is its lowest-margin
  point (what ``attack_single_run`` returns); ``perturb`` returns ``x0`` for
  it. Fooled examples get the same point; robust accuracy is the same.
* The box is ``[clip_min, clip_max]`` (the reference hard-codes ``[0, 1]``)
  and ``eps`` may be per example.

``logits_fn`` must run the model in inference mode (see :mod:`_attacks`).
"""

import math
from typing import Callable, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from dynamic_at import _attacks

LogitsFn = _attacks.LogitsFn
# (u_pos f32[B, 2], u_sign f32[B, C]) of iteration i: uniforms in [0, 1).
DrawFn = Callable[[jax.Array], Tuple[jax.Array, jax.Array]]

# p halves after each of these iterations (``SquareAttack.p_selection``).
P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


class SquareInfo(NamedTuple):
  """What :func:`square_attack` reports, per example unless said otherwise.

  Attributes:
    queries: ``i32[batch]`` model queries the example used, as AutoAttack's
      ``attack_single_run`` counts them: 1 for the stripe start plus 1 per
      iteration it was still robust at (at most ``num_queries + 1``); 0 for
      an example misclassified at ``x0``.
    success: ``bool[batch]`` the model misclassifies the returned point
      (``argmax != y``).
    margin: ``f32[batch]`` margin ``z_y - max_{j != y} z_j`` at the returned
      point (at ``x0`` for an example misclassified there).
    num_iters: ``i32[]`` iterations the loop ran: what the slowest example
      of the batch paid for.
  """
  queries: jax.Array
  success: jax.Array
  margin: jax.Array
  num_iters: jax.Array


def square_p_selection(iteration: int, p_init: float = 0.8) -> float:
  """The fraction ``p`` of the image a square covers at ``iteration``.

  AutoAttack's ``p_selection`` with ``resc_schedule=False``: ``p_init``,
  halved after each iteration in :data:`P_HALVINGS`, i.e. ``p_init`` for
  iterations 0-10, ``p_init / 2`` for 11-50, ..., ``p_init / 512`` from 8001.

  Args:
    iteration: 0-based iteration index.
    p_init: the initial fraction.

  Returns:
    ``p``.
  """
  iteration = int(iteration)
  if iteration < 0:
    raise ValueError(f'square_p_selection: iteration must be >= 0; got '
                     f'{iteration}')
  halvings = sum(iteration > b for b in P_HALVINGS)
  return p_init / 2 ** halvings


def square_side(iteration: int, height: int, width: int, channels: int,
                p_init: float = 0.8) -> int:
  """Side of the square of ``iteration`` on ``[height, width, channels]``
  images: ``min(max(round(sqrt(p * n_features / channels)), 1),
  min(height, width))`` with ``p`` from :func:`square_p_selection` and
  ``n_features = channels * height * width``, evaluated as the reference
  does (Python ``round``: half to even)."""
  n_features = channels * height * width
  p = square_p_selection(iteration, p_init)
  s = max(int(round(math.sqrt(p * n_features / channels))), 1)
  return min(s, min(height, width))


def _margin(logits: jax.Array, y: jax.Array) -> jax.Array:
  """``z_y - max_{j != y} z_j`` per example."""
  onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
  z_y = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
  z_other = jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=-1)
  return z_y - z_other


def _sign(u: jax.Array) -> jax.Array:
  """The reference's ``random_choice``: ``sign(2 u - 1)``."""
  return jnp.sign(2.0 * u - 1.0)


class _Carry(NamedTuple):
  i: jax.Array         # i32[]: iterations so far
  x_best: jax.Array    # [B, H, W, C]: current (lowest-margin) point
  margin: jax.Array    # f32[B]: margin there
  wrong: jax.Array     # bool[B]: argmax != y there
  queries: jax.Array   # i32[B]


def _square_loop(logits_fn: LogitsFn, x0: jax.Array, y: jax.Array,
                 eps_b: jax.Array, *, num_queries: int, p_init: float,
                 clip_min: float, clip_max: float, init_u: jax.Array,
                 draw_fn: DrawFn) -> Tuple[jax.Array, SquareInfo]:
  """The attack, driven by given uniforms (the tests inject the reference's).

  Args:
    logits_fn: batch of images -> logits, in inference mode.
    x0: ``[B, H, W, C]`` clean inputs.
    y: ``i32[B]`` labels.
    eps_b: ``[B]`` radii.
    num_queries: iterations (static).
    p_init: initial square fraction (static).
    clip_min: lower pixel bound.
    clip_max: upper pixel bound.
    init_u: ``[B, 1, W, C]`` uniforms of the stripes.
    draw_fn: iteration ``i`` (traced) -> ``(u_pos [B, 2], u_sign [B, C])``,
      the uniforms of the square's row and column and of its signs.

  Returns:
    ``(x_adv, info)``.
  """
  batch, h, w, _ = x0.shape
  eps_x = eps_b[:, None, None, None]
  sides = jnp.asarray(
      [square_side(b + 1 if b else 0, h, w, x0.shape[-1], p_init)
       for b in (0,) + P_HALVINGS], jnp.int32)
  halvings = jnp.asarray(P_HALVINGS, jnp.int32)

  clean_logits = logits_fn(x0)
  if clean_logits.ndim != 2 or clean_logits.shape[0] != batch:
    raise ValueError(f'square_attack: logits_fn must return [batch, classes] '
                     f'logits; got {clean_logits.shape} for batch {batch}')
  if clean_logits.shape[1] < 2:
    raise ValueError(f'square_attack: needs at least 2 classes; got '
                     f'{clean_logits.shape[1]}')
  clean_wrong = jnp.argmax(clean_logits, axis=-1) != y
  attacked = ~clean_wrong

  x_init = jnp.clip(x0 + eps_x * _sign(init_u), clip_min, clip_max)
  init_logits = logits_fn(x_init)
  init = _Carry(
      i=jnp.zeros((), jnp.int32),
      x_best=jnp.where(attacked[:, None, None, None], x_init, x0),
      margin=jnp.where(attacked, _margin(init_logits, y),
                       _margin(clean_logits, y)),
      wrong=jnp.where(attacked, jnp.argmax(init_logits, axis=-1) != y, True),
      queries=attacked.astype(jnp.int32))

  rows = jnp.arange(h)[None, :, None]
  cols = jnp.arange(w)[None, None, :]

  def robust(c: _Carry) -> jax.Array:
    return attacked & (c.margin > 0.0)

  def cond(c: _Carry) -> jax.Array:
    return (c.i < num_queries) & jnp.any(robust(c))

  def body(c: _Carry) -> _Carry:
    active = robust(c)
    s = sides[jnp.sum(c.i > halvings)]
    u_pos, u_sign = draw_fn(c.i)
    vh = (jnp.float32(h) - s.astype(jnp.float32)) * u_pos[:, 0]
    vw = (jnp.float32(w) - s.astype(jnp.float32)) * u_pos[:, 1]
    vh = vh.astype(jnp.int32)[:, None, None]
    vw = vw.astype(jnp.int32)[:, None, None]
    in_square = ((rows >= vh) & (rows < vh + s) &
                 (cols >= vw) & (cols < vw + s))               # [B, H, W]
    step = (2.0 * eps_x) * _sign(u_sign)[:, None, None, :]     # [B, 1, 1, C]
    delta = jnp.where(in_square[..., None], step, 0.0)
    x_new = jnp.clip(c.x_best + delta, x0 - eps_x, x0 + eps_x)
    x_new = jnp.clip(x_new, clip_min, clip_max)

    logits = logits_fn(x_new)
    margin = _margin(logits, y)
    accept = active & (margin < c.margin)
    return _Carry(
        i=c.i + 1,
        x_best=jnp.where(accept[:, None, None, None], x_new, c.x_best),
        margin=jnp.where(accept, margin, c.margin),
        wrong=jnp.where(accept, jnp.argmax(logits, axis=-1) != y, c.wrong),
        queries=c.queries + active.astype(jnp.int32))

  final = jax.lax.while_loop(cond, body, init)
  info = SquareInfo(queries=final.queries, success=final.wrong,
                    margin=final.margin, num_iters=final.i)
  return (jax.lax.stop_gradient(final.x_best),
          jax.tree.map(jax.lax.stop_gradient, info))


def _check_eps(eps: ArrayLike, batch: int) -> None:
  shape = np.shape(eps)
  if shape not in ((), (batch,)):
    raise ValueError(f'square_attack: eps must be a scalar or [batch] = '
                     f'[{batch}]; got shape {shape}')
  if isinstance(eps, jax.core.Tracer):
    return
  values = np.asarray(eps, np.float64)
  if not np.all(np.isfinite(values)) or np.any(values <= 0):
    raise ValueError(f'square_attack: eps must be finite and > 0; got {eps}')


def square_attack(logits_fn: LogitsFn,
                  x0: ArrayLike,
                  y: ArrayLike,
                  key: jax.Array,
                  *,
                  eps: ArrayLike,
                  num_queries: int = 5000,
                  p_init: float = 0.8,
                  clip_min: float = 0.0,
                  clip_max: float = 1.0) -> Tuple[jax.Array, SquareInfo]:
  """L-inf Square attack (one run), batched, as AutoAttack runs it.

  See the module docstring for the algorithm and the differences from the
  reference. Costs one clean forward pass plus, per example, ``queries``
  forward passes (the batch pays ``1 + num_iters`` batched passes).

  Examples:
    >>> attack = jax.jit(functools.partial(square_attack, logits_fn),
    ...                  static_argnames=('num_queries',))
    >>> x_adv, info = attack(x0, y, key, eps=8 / 255)  # doctest: +SKIP

  Args:
    logits_fn: batch of images ``[batch, H, W, C]`` -> logits
      ``[batch, num_classes]``, in inference mode.
    x0: ``[batch, H, W, C]`` clean inputs in ``[clip_min, clip_max]``.
    y: ``[batch]`` integer labels.
    key: PRNG key; example ``b`` draws from ``fold_in(key, b)``.
    eps: L-inf radius, scalar or ``[batch]``; may be traced.
    num_queries: iterations (AutoAttack's ``n_queries``), static.
    p_init: initial fraction of the image a square covers, static.
    clip_min: lower pixel bound, a Python number (static).
    clip_max: upper pixel bound, a Python number (static).

  Returns:
    ``(x_adv, info)``: ``x_adv`` shaped like ``x0`` (gradient-stopped): the
    first point found that has margin ``<= 0``, else the lowest-margin point
    (``x0`` for an example misclassified at ``x0``); and a
    :class:`SquareInfo`.

  Raises:
    ValueError: on ``num_queries < 1``, ``p_init`` outside ``(0, 1]``,
      ``clip_min >= clip_max``, a concrete ``eps <= 0``, or inputs whose
      shapes do not fit together.
  """
  num_queries = int(num_queries)
  if num_queries < 1:
    raise ValueError(f'square_attack: num_queries must be >= 1; got '
                     f'{num_queries}')
  p_init = float(p_init)
  if not 0.0 < p_init <= 1.0:
    raise ValueError(f'square_attack: p_init must be in (0, 1]; got {p_init}')
  if not float(clip_min) < float(clip_max):
    raise ValueError(f'square_attack: clip_min must be < clip_max; got '
                     f'{clip_min}, {clip_max}')
  if key is None:
    raise ValueError('square_attack: key must be a PRNG key; got None')
  x0 = jnp.asarray(x0)
  if x0.ndim != 4:
    raise ValueError(f'square_attack: x0 must be [batch, H, W, C]; got shape '
                     f'{x0.shape}')
  if not jnp.issubdtype(x0.dtype, jnp.floating):
    raise ValueError(f'square_attack: x0 must be floating point; got '
                     f'{x0.dtype}')
  batch, _, w, c = x0.shape
  if np.shape(y) != (batch,):
    raise ValueError(f'square_attack: y must be [batch] = [{batch}] labels; '
                     f'got shape {np.shape(y)}')
  y = jnp.asarray(y)
  if not jnp.issubdtype(y.dtype, jnp.integer):
    raise ValueError(f'square_attack: y must be integer labels; got '
                     f'{y.dtype}')
  y = y.astype(jnp.int32)
  _check_eps(eps, batch)
  eps_b = jnp.broadcast_to(jnp.asarray(eps, x0.dtype), (batch,))

  keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(batch))
  init_u = jax.vmap(lambda k: jax.random.uniform(
      jax.random.fold_in(k, 0), (1, w, c), x0.dtype))(keys)

  def draw_fn(i):
    u = jax.vmap(lambda k: jax.random.uniform(
        jax.random.fold_in(k, i + 1), (2 + c,), x0.dtype))(keys)
    return u[:, :2], u[:, 2:]

  return _square_loop(logits_fn, x0, y, eps_b, num_queries=num_queries,
                      p_init=p_init, clip_min=clip_min, clip_max=clip_max,
                      init_u=init_u, draw_fn=draw_fn)
