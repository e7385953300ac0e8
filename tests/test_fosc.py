"""Tests of the closed-form FOSC and the Dynamic AT threshold."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamic_at import fosc
from dynamic_at import fosc_threshold

_fosc_jit = jax.jit(fosc)


def _brute_force(x, x0, g, eps):
  """max over the ball's vertices of <v - x, g>, per example (numpy, f64)."""
  out = []
  for xi, x0i, gi in zip(x, x0, g):
    flat = x0i.reshape(-1)
    best = -np.inf
    for signs in itertools.product((-1.0, 1.0), repeat=flat.size):
      v = flat + eps * np.asarray(signs)
      best = max(best, float(np.dot(v - xi.reshape(-1), gi.reshape(-1))))
    out.append(best)
  return np.asarray(out)


@pytest.mark.parametrize('shape', [(5, 6), (4, 2, 3), (3, 2, 2, 2)])
@pytest.mark.parametrize('eps', [0.3, 8 / 255])
def test_closed_form_equals_vertex_maximum(shape, eps):
  rng = np.random.default_rng(0)
  x0 = rng.uniform(0, 1, shape)
  x = x0 + rng.uniform(-eps, eps, shape)
  g = rng.normal(size=shape)
  expected = _brute_force(x, x0, g, eps)
  got = _fosc_jit(jnp.float32(x), jnp.float32(x0), jnp.float32(g), eps)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_nonnegative_inside_ball_and_zero_at_optimal_vertex():
  rng = np.random.default_rng(1)
  eps = 0.25
  x0 = jnp.float32(rng.uniform(0, 1, (64, 7, 7, 1)))
  g = jnp.float32(rng.normal(size=x0.shape))
  inside = x0 + jnp.float32(rng.uniform(-eps, eps, x0.shape))
  assert bool(jnp.all(_fosc_jit(inside, x0, g, eps) >= 0))
  # Vertices and points on faces are in the ball too.
  on_faces = x0 + eps * jnp.float32(rng.choice([-1.0, 0.0, 1.0], x0.shape))
  assert bool(jnp.all(_fosc_jit(on_faces, x0, g, eps) >= -1e-6))
  # Centred on x0, FOSC is eps * ||g||_1 ...
  np.testing.assert_allclose(_fosc_jit(x0, x0, g, eps),
                             eps * jnp.abs(g).sum(axis=(1, 2, 3)), rtol=1e-6)
  # ... and 0 at x0 + eps * sign(g). With a dyadic x0 the arithmetic is exact.
  x0_dyadic = jnp.round(x0 * 64) / 64 * 0.5 + 0.25
  opt = x0_dyadic + eps * jnp.sign(g)
  np.testing.assert_array_equal(_fosc_jit(opt, x0_dyadic, g, eps),
                                np.zeros(64, np.float32))
  # A zero gradient (a stationary point) gives 0 anywhere in the ball.
  np.testing.assert_array_equal(
      _fosc_jit(inside, x0, jnp.zeros_like(g), eps), np.zeros(64))


def _closed_form(x, x0, g, eps):
  """``eps_i * ||g_i||_1 - <x_i - x0_i, g_i>`` per example, numpy float64."""
  x, x0, g = (np.asarray(a, np.float64).reshape(len(a), -1)
              for a in (x, x0, g))
  eps = np.broadcast_to(np.asarray(eps, np.float64), (len(x),))
  return eps * np.abs(g).sum(1) - ((x - x0) * g).sum(1)


def test_per_example_eps_and_vmap_and_grad():
  rng = np.random.default_rng(2)
  x0 = jnp.float32(rng.uniform(size=(3, 4)))
  x = x0 + jnp.float32(rng.uniform(-0.1, 0.1, (3, 4)))
  g = jnp.float32(rng.normal(size=(3, 4)))
  eps = jnp.array([0.1, 0.2, 0.3])
  expected = _closed_form(x, x0, g, np.asarray(eps))
  np.testing.assert_allclose(_fosc_jit(x, x0, g, eps), expected, rtol=1e-5)
  # Under vmap over an extra leading axis: two different batches.
  x2, g2 = x0 - (x - x0), -2.0 * g
  stacked = jax.vmap(fosc, in_axes=(0, 0, 0, None))(
      jnp.stack([x, x2]), jnp.stack([x0, x0]), jnp.stack([g, g2]), 0.1)
  np.testing.assert_allclose(stacked[0], _closed_form(x, x0, g, 0.1),
                             rtol=1e-5)
  np.testing.assert_allclose(stacked[1], _closed_form(x2, x0, g2, 0.1),
                             rtol=1e-5)
  # Under grad: d FOSC / d x = -g.
  dx = jax.grad(lambda x_: fosc(x_, x0, g, 0.1).sum())(x)
  np.testing.assert_allclose(dx, -g, rtol=1e-6)


def test_shape_mismatch_is_an_error():
  with pytest.raises(ValueError) as info:
    fosc(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros((2, 4)), 0.1)
  assert str(info.value) == ('fosc: x (2, 3), x0 (2, 3) and grad (2, 4) must '
                             'have the same shape')


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_eps_is_cast_to_the_inputs_dtype(dtype):
  # eps = 0.1 is not representable in half precision (bfloat16 rounds it up,
  # float16 down). A PGD in that dtype reaches the vertex x0 + eps * sign(g)
  # with eps in that dtype, where the FOSC must be exactly 0 (not the rounding
  # difference to a float32 eps), in the inputs' dtype.
  x0 = jnp.zeros((2, 3), dtype)
  g = jnp.array([[1.0, -2.0, 3.0], [0.5, 0.25, -1.0]], dtype)
  x = x0 + jnp.asarray(0.1, dtype) * jnp.sign(g)
  for eps in (jnp.float32(0.1), jnp.full((2,), 0.1, jnp.float32)):
    out = _fosc_jit(x, x0, g, eps)
    assert out.dtype == dtype
    np.testing.assert_array_equal(np.float32(out), np.zeros(2, np.float32))


def test_threshold_schedule():
  c = [float(fosc_threshold(t, 0.5, 100)) for t in (0, 50, 99, 100, 120)]
  np.testing.assert_allclose(c, [0.5, 0.25, 0.005, 0.0, 0.0], atol=1e-7)
  # Traced epoch: no retrace needed to change it.
  np.testing.assert_allclose(jax.jit(fosc_threshold)(10, 0.5, 40), 0.375)


def test_threshold_is_float32_even_with_x64_inputs():
  # The documented float32 result; only float64 inputs (with jax_enable_x64)
  # could change it.
  with jax.enable_x64(True):
    c = fosc_threshold(np.float64(10.0), np.float64(0.5), 40)
    assert c.dtype == jnp.float32
    assert float(c) == 0.375
    c = fosc_threshold(np.float64(10.0), 0.5, 40)
    assert c.dtype == jnp.float32
    c = fosc_threshold(10, np.float64(0.5), 40)
    assert c.dtype == jnp.float32
