"""Tests of FAB-T and its L-inf projection, against a NumPy transcription of
the reference (:mod:`tests.fab_reference`) and closed forms."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamic_at import _fab
from tests import fab_reference
from tests import tiny_mlp

_SHAPE = tiny_mlp.SHAPE
_NUM_CLASSES = tiny_mlp.NUM_CLASSES


@functools.partial(jax.jit, static_argnames=('num_targets', 'num_steps',
                                              'num_restarts'))
def _fab_mlp(params, x0, y, key, eps, num_targets=4, num_steps=20,
             num_restarts=1):
  return _fab.fab_targeted(functools.partial(tiny_mlp.mlp, params), x0, y,
                           key, eps=eps, num_targets=num_targets,
                           num_steps=num_steps, num_restarts=num_restarts)


def _linear(w, c):
  """Logits ``(x - 0.5) @ w + c`` of flattened images."""
  w, c = jnp.asarray(w), jnp.asarray(c)
  return lambda x: (x.reshape(x.shape[0], -1) - 0.5) @ w + c


# --------------------------------------------------------------- projection


def _projection_cases(rng, n, d, dtype):
  """Rows of every kind: hyperplane reachable inside the box (box binding or
  not, also with the point on the hyperplane), out of reach, points on the
  box's faces, zero normals."""
  t = rng.uniform(0.0, 1.0, (n, d))
  t[rng.uniform(size=(n, d)) < 0.15] = 0.0
  t[rng.uniform(size=(n, d)) < 0.15] = 1.0
  w = rng.normal(size=(n, d))
  w[rng.uniform(size=(n, d)) < 0.1] = 0.0
  lo = np.minimum(w, 0).sum(1)   # min of w.z over the box
  hi = np.maximum(w, 0).sum(1)
  wt = (w * t).sum(1)
  kind = np.arange(n) % 5
  frac = rng.uniform(size=n)
  b = np.select(
      [kind == 0, kind == 1, kind == 2, kind == 3],
      [wt + 0.02 * (frac - 0.5) * np.abs(w).sum(1),  # near: no binding
       lo + frac * (hi - lo),                          # anywhere reachable
       np.where(frac < 0.5, lo - 1.0 - frac, hi + frac),  # out of reach
       wt],                                            # on the hyperplane
      default=np.where(frac < 0.5, lo + 1e-3, hi - 1e-3))  # near a corner
  return t.astype(dtype), w.astype(dtype), b.astype(dtype)


@pytest.mark.parametrize('d', [1, 2, 7, 16, 33])
def test_projection_matches_reference_float64(d):
  rng = np.random.default_rng(d)
  t, w, b = _projection_cases(rng, 200, d, np.float64)
  expected = fab_reference.projection_linf(t, w, b)
  with jax.enable_x64(True):
    got = np.asarray(jax.jit(_fab.projection_linf)(t, w, b))
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
  # Every kind of row is there: reached (on the hyperplane, inside the box),
  # out of reach (on the far corner), and the box binding in some.
  z = t + expected
  assert np.all((z >= -1e-12) & (z <= 1 + 1e-12))
  lo, hi = np.minimum(w, 0).sum(1), np.maximum(w, 0).sum(1)
  reachable = (b >= lo) & (b <= hi)
  np.testing.assert_allclose(((w * z).sum(1) - b)[reachable], 0, atol=1e-9)
  assert (~reachable).sum() >= 20
  # Out of reach: the corner on b's side (coordinates with w_i = 0 stay).
  below = np.where(w < 0, 1.0, np.where(w > 0, 0.0, t))
  above = np.where(w > 0, 1.0, np.where(w < 0, 0.0, t))
  np.testing.assert_allclose(z[b < lo], below[b < lo], atol=1e-12)
  np.testing.assert_allclose(z[b > hi], above[b > hi], atol=1e-12)
  if d > 1:
    # Rows where the box binds: a moved coordinate moved less than the
    # radius (it stopped at a face).
    size = np.abs(expected)
    short = (size > 0) & (size < size.max(1, keepdims=True) - 1e-9)
    assert np.sum(reachable & np.any(short, axis=1)) >= 20


def test_projection_matches_reference_float32():
  rng = np.random.default_rng(1)
  t, w, b = _projection_cases(rng, 300, 48, np.float32)
  expected = fab_reference.projection_linf(t, w, b)
  got = np.asarray(jax.jit(_fab.projection_linf)(t, w, b))
  np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)


def test_projection_closed_forms():
  # No box binding: the minimal L-inf point of w.z = b moves every coordinate
  # with w_i != 0 by |w.t - b| / ||w||_1 against sign(w) (towards b).
  t = np.full((3, 4), 0.5)
  w = np.array([[1.0, -2.0, 0.5, 0.0],
                [1.0, 1.0, 1.0, 1.0],
                [-1.0, 3.0, -1.0, 2.0]])
  b = (w * t).sum(1) + np.array([0.35, -0.8, 1.4])
  lam = (b - (w * t).sum(1)) / np.abs(w).sum(1)
  expected = np.sign(w) * lam[:, None]
  with jax.enable_x64(True):
    proj = jax.jit(_fab.projection_linf)
    np.testing.assert_allclose(proj(t, w, b), expected, atol=1e-12)
    # The box binds coordinate 0 (at 0.9 it can move up by 0.1 only): then
    # 0.1 + lambda = 0.4, lambda = 0.3.
    np.testing.assert_allclose(
        proj(np.array([[0.9, 0.5]]), np.array([[1.0, 1.0]]),
             np.array([1.4 + 0.4])), [[0.1, 0.3]], atol=1e-12)
    # Out of reach (w.z <= 2 in the box): the corner on b's side.
    np.testing.assert_allclose(
        proj(np.array([[0.2, 0.7]]), np.array([[1.0, 1.0]]),
             np.array([3.0])), [[0.8, 0.3]], atol=1e-12)
    np.testing.assert_allclose(
        proj(np.array([[0.2, 0.7]]), np.array([[1.0, -1.0]]),
             np.array([-5.0])), [[-0.2, 0.3]], atol=1e-12)
    # On the hyperplane already: no step.
    np.testing.assert_allclose(
        proj(np.array([[0.2, 0.7]]), np.array([[1.0, -1.0]]),
             np.array([-0.5])), [[0.0, 0.0]], atol=1e-12)
    # Another box: corners at clip_min / clip_max.
    np.testing.assert_allclose(
        _fab.projection_linf(np.array([[0.2, 0.7]]), np.array([[1.0, 1.0]]),
                             np.array([5.0]), -1.0, 2.0), [[1.8, 1.3]],
        atol=1e-12)


# ---------------------------------------------------------- whole attack


def _np_mlp(params):
  """The tiny MLP and its target-margin gradient in NumPy, for the
  reference (``get_diff_logits_grads_batch_targeted``)."""
  w1, w2 = (np.asarray(p, np.float64) for p in params)

  def predict(x):
    return np.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2

  def diff_grad(x, la, la_target):
    h = np.tanh(x.reshape(x.shape[0], -1) @ w1)
    f = h @ w2
    u = np.arange(x.shape[0])
    df = f[u, la_target] - f[u, la]
    g = ((1 - h ** 2) * (w2[:, la_target] - w2[:, la]).T) @ w1.T
    return df[:, None], g.reshape(x.shape)[:, None]

  return predict, diff_grad


def _reference_expectations(predict, x0, y, eps, num_targets, runs):
  """FABInfo's distance and target as the reference's runs define them."""
  order = np.argsort(predict(x0), axis=-1, kind='stable')
  wrong = predict(x0).argmax(1) != y
  distance = np.where(wrong, 0.0, np.inf)
  target = np.full(len(y), -1)
  for j, r in enumerate(runs):
    res = np.where(r['res'] < 1e10, r['res'], np.inf)
    idx = r['attacked']
    distance[idx] = np.minimum(distance[idx], res)
    fooled = idx[res <= eps]
    target[fooled] = order[fooled, -(j + 2)]
  assert len(runs) <= num_targets
  return distance, target


def test_attack_matches_reference():
  params = tiny_mlp.mlp_params(2)
  num_targets, num_steps, eps = 4, 30, 0.08
  with jax.enable_x64(True):
    params64 = tuple(jnp.asarray(p, jnp.float64) for p in params)
    predict, diff_grad = _np_mlp(params64)
    rng = np.random.default_rng(0)
    x0 = rng.uniform(0.0, 1.0, (27,) + _SHAPE)
    y = predict(x0).argmax(1)
    y[-3:] = (y[-3:] + 1) % _NUM_CLASSES     # misclassified at x0
    expected, runs = fab_reference.perturb_targeted(
        predict, diff_grad, x0, y, eps, n_target_classes=num_targets,
        n_iter=num_steps)
    got, info = _fab_mlp(params64, x0, y, jax.random.key(0), eps,
                         num_targets=num_targets, num_steps=num_steps)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=0, atol=1e-10)
  distance, target = _reference_expectations(predict, x0, y, eps,
                                             num_targets, runs)
  np.testing.assert_allclose(info.distance, distance, rtol=1e-10)
  np.testing.assert_array_equal(info.target, target)
  success = predict(expected).argmax(1) != y
  np.testing.assert_array_equal(info.success, success)
  # The case is not trivial: points found by the later targets, examples
  # found adversarial only beyond eps, and some never.
  assert len(runs) == num_targets
  assert np.sum(success) > 3 and np.sum(~success) > 0
  assert len(set(target[target >= 0].tolist())) >= 2
  assert np.any(np.isfinite(distance) & (distance > eps))
  first = predict(x0).argsort(1)[:, -2]
  assert np.any((target >= 0) & (target != first))


def test_attack_matches_reference_float32():
  params = tiny_mlp.mlp_params(1)
  predict, diff_grad = _np_mlp(params)
  predict32 = lambda x: predict(x).astype(np.float32)

  def diff_grad32(x, la, la_target):
    df, dg = diff_grad(x, la, la_target)
    return df.astype(np.float32), dg.astype(np.float32)

  x0, _ = tiny_mlp.data(16, seed=3)
  x0 = np.asarray(x0)
  y = predict32(x0).argmax(1)
  expected, _ = fab_reference.perturb_targeted(
      predict32, diff_grad32, x0, y, 0.08, n_target_classes=4, n_iter=30)
  got, info = _fab_mlp(params, x0, y, jax.random.key(0), 0.08,
                       num_targets=4, num_steps=30)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=0, atol=1e-4)
  assert 0 < np.sum(info.success) < len(y)


def _min_linf(w, g, p):
  """Smallest lambda with sum_i |w_i| min(lambda, p_i) >= g (bisection):
  the minimal L-inf perturbation that moves w.x by g inside the box."""
  lo, hi = 0.0, 1.0
  for _ in range(100):
    mid = 0.5 * (lo + hi)
    if np.sum(np.abs(w) * np.minimum(mid, p)) >= g:
      hi = mid
    else:
      lo = mid
  return hi


def test_linear_binary_minimal_perturbation():
  # Two classes: FAB's linearisation is exact and its best point approaches
  # the minimal L-inf perturbation from above (eta = 1.05 keeps it slightly
  # outside; 100 iterations bring it within 1%).
  rng = np.random.default_rng(0)
  d = int(np.prod(_SHAPE))
  v = rng.normal(size=d)
  w = np.stack([np.zeros(d), v], 1).astype(np.float32)
  x0 = rng.uniform(0.0, 1.0, (6,) + _SHAPE).astype(np.float32)
  x0[:3] = 0.5 + 0.2 * (x0[:3] - 0.5)      # away from the box's faces
  x0[3:, 0, :2] = np.where(v[:2] > 0, 0.97, 0.03)[:, None]  # faces close
  g0 = (x0.reshape(6, -1) - 0.5) @ v
  # Margins f_1 - f_0 <= -0.6 (f_0 = 0, class 0 is the label).
  c = np.array([0.0, -(g0.max() + 0.6)], np.float32)
  margin = g0 + c[1]
  logits_fn = _linear(w, c)
  y = np.zeros(6, np.int32)
  assert np.all(np.asarray(logits_fn(x0)).argmax(1) == 0)
  x, info = jax.jit(lambda x0, e: _fab.fab_targeted(
      logits_fn, x0, y, jax.random.key(0), eps=e, num_targets=1))(x0, 0.5)
  p = np.where(v > 0, 1.0 - x0.reshape(6, -1), x0.reshape(6, -1))
  expected = np.array([_min_linf(v, -m, p_i) for m, p_i in zip(margin, p)])
  # Unbinding rows: the closed form |margin| / ||v||_1.
  np.testing.assert_allclose(expected[:3], -margin[:3] / np.abs(v).sum(),
                             rtol=1e-6)
  assert np.all(expected[3:] > -margin[3:] / np.abs(v).sum() * 1.01)
  assert np.all(expected < 0.5)
  np.testing.assert_array_equal(info.success, True)
  np.testing.assert_array_equal(info.target, 1)
  dist = np.abs(np.asarray(x) - x0).reshape(6, -1).max(1)
  np.testing.assert_allclose(info.distance, dist, rtol=1e-6)
  assert np.all(dist >= expected * (1 - 1e-5))
  assert np.all(dist <= expected * 1.01)


def test_targets_in_order_first_within_eps():
  # y = 0; the runner-up class 1 needs lambda = 0.1 / 0.32 = 0.3125, the
  # third class 2 only 0.5 / 8 = 0.0625 (its +-0.5 weights cancel along the
  # all-ones direction of class 1's attack); class 3 never wins.
  d = int(np.prod(_SHAPE))
  w = np.zeros((d, 4), np.float32)
  w[:, 1] = 0.02
  w[:, 2] = np.tile([0.5, -0.5], d // 2)
  logits_fn = _linear(w, np.array([1.0, 0.9, 0.5, -100.0], np.float32))
  x0 = np.full((1,) + _SHAPE, 0.5, np.float32)
  y = np.zeros(1, np.int32)
  attack = jax.jit(lambda e: _fab.fab_targeted(
      logits_fn, x0, y, jax.random.key(0), eps=e, num_targets=3))
  cases = {0.4: (True, 1, 0.3125), 0.1: (True, 2, 0.0625),
           0.05: (False, -1, 0.0625)}
  for eps, (success, target, lam) in cases.items():
    x, info = attack(eps)
    assert bool(info.success[0]) == success
    assert int(info.target[0]) == target
    assert lam <= float(info.distance[0]) <= 1.01 * lam
    dist = np.abs(np.asarray(x) - x0).max()
    if success:
      assert np.asarray(logits_fn(x)).argmax() == target
      np.testing.assert_allclose(dist, info.distance[0], rtol=1e-6)
    else:
      assert dist == 0.0


# -------------------------------------------------------------- properties


def test_properties():
  params = tiny_mlp.mlp_params(2)
  x0, _ = tiny_mlp.data(32, seed=5)
  y = jnp.argmax(tiny_mlp.mlp(params, x0), -1)
  y = y.at[:4].set((y[:4] + 2) % _NUM_CLASSES)
  key = jax.random.key(3)
  eps = 0.06
  x, info = _fab_mlp(params, x0, y, key, eps)
  x, x0n = np.asarray(x), np.asarray(x0)
  linf = np.abs(x - x0n).reshape(32, -1).max(1)
  assert np.all(linf <= eps + 1e-7)
  assert np.all((x >= 0.0) & (x <= 1.0))
  wrong = np.asarray(jnp.argmax(tiny_mlp.mlp(params, x), -1) != y)
  np.testing.assert_array_equal(info.success, wrong)
  assert 4 < wrong.sum() < 32
  # Misclassified at x0: unchanged, success, distance 0, no target.
  np.testing.assert_array_equal(x[:4], x0n[:4])
  np.testing.assert_array_equal(info.success[:4], True)
  np.testing.assert_array_equal(info.distance[:4], 0.0)
  np.testing.assert_array_equal(info.target[:4], -1)
  # Success iff a point within eps was found; its distance is the returned
  # point's; failures return x0.
  succ = np.asarray(info.success)
  np.testing.assert_array_equal(succ, np.asarray(info.distance) <= eps)
  np.testing.assert_allclose(linf[succ], np.asarray(info.distance)[succ],
                             rtol=1e-6)
  np.testing.assert_array_equal(x[~succ], x0n[~succ])
  np.testing.assert_array_equal(np.asarray(info.target)[4:] >= 0, succ[4:])
  # The succeeding target is never the label.
  assert np.all(np.asarray(info.target) != np.asarray(y))
  # Same key, same result.
  x2, info2 = _fab_mlp(params, x0, y, key, eps)
  np.testing.assert_array_equal(x2, x)
  jax.tree.map(np.testing.assert_array_equal, info2, info)
  # Per-example eps: each example as with its own scalar eps.
  x_big, info_big = _fab_mlp(params, x0, y, key, 2 * eps)
  mixed = np.where(np.arange(32) % 2 == 0, eps, 2 * eps).astype(np.float32)
  x_mix, info_mix = _fab_mlp(params, x0, y, key, mixed)
  even = np.arange(32) % 2 == 0
  np.testing.assert_array_equal(np.asarray(x_mix)[even], x[even])
  np.testing.assert_array_equal(np.asarray(x_mix)[~even],
                                np.asarray(x_big)[~even])
  assert np.sum(info_big.success) > np.sum(info.success)


def test_random_restarts():
  params = tiny_mlp.mlp_params(2)
  x0, _ = tiny_mlp.data(32, seed=5)
  y = jnp.argmax(tiny_mlp.mlp(params, x0), -1)
  eps = 0.06
  _, info1 = _fab_mlp(params, x0, y, jax.random.key(0), eps, num_targets=2)
  x_a, info_a = _fab_mlp(params, x0, y, jax.random.key(0), eps,
                         num_targets=2, num_restarts=2)
  x_b, info_b = _fab_mlp(params, x0, y, jax.random.key(1), eps,
                         num_targets=2, num_restarts=2)
  # Restart 0 of every target is the deterministic run: nothing it fools is
  # lost, the distances can only shrink, and the random restarts depend on
  # the key.
  assert np.all(np.asarray(info_a.success) >= np.asarray(info1.success))
  robust = ~np.asarray(info1.success)
  assert np.all(np.asarray(info_a.distance)[robust]
                <= np.asarray(info1.distance)[robust])
  assert np.any(np.asarray(info_a.distance)[robust]
                < np.asarray(info1.distance)[robust])
  assert not np.array_equal(info_a.distance, info_b.distance)
  linf = np.abs(np.asarray(x_a) - np.asarray(x0)).reshape(32, -1).max(1)
  assert np.all(linf <= eps + 1e-7)
  x_a2, _ = _fab_mlp(params, x0, y, jax.random.key(0), eps, num_targets=2,
                     num_restarts=2)
  np.testing.assert_array_equal(x_a2, x_a)


def test_traced_eps_compiles_once():
  params = tiny_mlp.mlp_params(0)
  x0, y = tiny_mlp.data(4)
  traces = []

  @jax.jit
  def attack(eps):
    traces.append(1)
    return _fab.fab_targeted(functools.partial(tiny_mlp.mlp, params), x0, y,
                             jax.random.key(0), eps=eps, num_targets=2,
                             num_steps=3)

  for eps in (0.01, 0.1, 0.3):
    attack(jnp.float32(eps))
  assert len(traces) == 1


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_targets=_NUM_CLASSES), 'num_targets'),
    (dict(num_targets=0), 'num_targets'),
    (dict(num_steps=0), 'num_steps'),
    (dict(num_restarts=0), 'num_restarts'),
    (dict(alpha_max=1.5), 'alpha_max'),
    (dict(beta=0.0), 'beta'),
    (dict(eta=0.0), 'eta'),
    (dict(clip_min=1.0, clip_max=0.0), 'clip_min'),
])
def test_bad_arguments(kwargs, match):
  params = tiny_mlp.mlp_params(0)
  x0, y = tiny_mlp.data(4)
  with pytest.raises(ValueError, match=match):
    _fab.fab_targeted(functools.partial(tiny_mlp.mlp, params), x0, y,
                      jax.random.key(0), eps=0.1, **kwargs)


def test_bad_shapes():
  params = tiny_mlp.mlp_params(0)
  fn = functools.partial(tiny_mlp.mlp, params)
  x0, y = tiny_mlp.data(4)
  with pytest.raises(ValueError, match='y must'):
    _fab.fab_targeted(fn, x0, y[:3], jax.random.key(0), eps=0.1)
  with pytest.raises(ValueError, match='x0 must'):
    _fab.fab_targeted(fn, x0[0, 0, 0, 0], y[:1], jax.random.key(0), eps=0.1)
