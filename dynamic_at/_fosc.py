"""The First-Order Stationary Condition (FOSC) and Dynamic AT's threshold.

Wang et al. (ICML 2019) measure how well an iterate ``x^k`` of the inner
maximisation has converged by

.. math::
   c(x^k) = \\max_{\\|x - x^0\\|_\\infty \\le \\epsilon}
            \\langle x - x^k, g \\rangle
          = \\epsilon \\|g\\|_1 - \\langle x^k - x^0, g \\rangle,
   \\quad g = \\nabla_x \\ell(h_\\theta(x^k), y).

It is centred on the clean example ``x^0`` (also when PGD started from a random
point), is ``>= 0`` inside the ball and ``0`` at a stationary point or at
``x^0 + eps * sign(g)``. The ``[0, 1]`` pixel box is not part of the feasible
set here, exactly as in the paper.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def _fosc_one(x: jax.Array, x0: jax.Array, grad: jax.Array,
              eps: jax.Array) -> jax.Array:
  # Summed term by term: each term |g| * eps - (x - x0) * g is >= 0 in floating
  # point whenever |x - x0| <= eps, so the FOSC of a point inside the ball is
  # never negative from rounding, and the terms of a coordinate on the
  # boundary in the direction of its gradient are exactly 0.
  return jnp.sum(jnp.abs(grad) * eps - (x - x0) * grad)


def fosc(x: ArrayLike, x0: ArrayLike, grad: ArrayLike,
         eps: ArrayLike) -> jax.Array:
  """Closed-form FOSC of each example, summed over all non-batch axes.

  Args:
    x: iterates ``x^k``, ``[batch, ...]``.
    x0: clean examples, the centres of the eps-balls, same shape as ``x``.
    grad: ``grad_x loss(h(x^k), y)`` at ``x``, same shape as ``x``.
    eps: L-inf radius, a scalar or one per example ``[batch]``.

  Returns:
    ``[batch]`` FOSC values ``eps * ||g||_1 - <x - x0, g>``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from dynamic_at import fosc
    >>> x0 = jnp.zeros((1, 2)); g = jnp.array([[1.0, -2.0]])
    >>> fosc(x0, x0, g, 0.5)  # at the centre: eps * ||g||_1
    Array([1.5], dtype=float32)
    >>> fosc(x0 + 0.5 * jnp.sign(g), x0, g, 0.5)  # optimal vertex
    Array([0.], dtype=float32)
  """
  x, x0, grad = jnp.asarray(x), jnp.asarray(x0), jnp.asarray(grad)
  if not x.shape == x0.shape == grad.shape:
    raise ValueError(f'fosc: x {x.shape}, x0 {x0.shape} and grad {grad.shape}'
                     ' must have the same shape')
  eps = jnp.broadcast_to(jnp.asarray(eps, dtype=x.dtype), x.shape[:1])
  return jax.vmap(_fosc_one)(x, x0, grad, eps)


def fosc_threshold(epoch: ArrayLike, c_max: ArrayLike,
                   t_prime: ArrayLike) -> jax.Array:
  """Dynamic AT's FOSC threshold ``c_t = max(c_max - t * c_max / T', 0)``.

  Args:
    epoch: the epoch ``t`` (counted from 0).
    c_max: the threshold of epoch 0 (the paper: 0.5).
    t_prime: the FOSC control epoch ``T'`` after which ``c_t = 0``.

  Returns:
    A float32 scalar (or an array, if ``epoch`` is one).
  """
  epoch = jnp.asarray(epoch, jnp.float32)
  c_max = jnp.asarray(c_max, jnp.float32)
  return jnp.maximum(c_max - epoch * c_max / t_prime, 0.0)
