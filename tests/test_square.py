"""Tests of the L-inf Square attack against a transcription of AutoAttack's."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamic_at import _square
from tests import square_reference as ref
from tests import tiny_mlp

_NUM_CLASSES = 5
_EPS = 1.0 / 16


# A 2-layer ReLU model with small integer weights on images whose values are
# multiples of 1/64 (eps too): every logit is computed exactly in float32, in
# any summation order, so NumPy and XLA agree bit for bit and margins tie
# exactly (which exercises the strict comparisons and the margin-0 stop).
def _int_mlp_params(shape, seed):
  rng = np.random.default_rng(seed)
  d = int(np.prod(shape))
  return (rng.integers(-2, 3, (d, 8)).astype(np.float32),
          rng.integers(-4, 5, (8,)).astype(np.float32),
          rng.integers(-2, 3, (8, _NUM_CLASSES)).astype(np.float32))


def _int_mlp_np(params, x):
  w1, b1, w2 = params
  x = np.asarray(x, np.float32)
  return np.maximum(x.reshape(x.shape[0], w1.shape[0]) @ w1 + b1, 0.0) @ w2


def _int_mlp(params, x):
  w1, b1, w2 = params
  return jnp.maximum(x.reshape(x.shape[0], -1) @ w1 + b1, 0.0) @ w2


def _int_data(shape, seed, batch=10):
  """Dyadic images (with pixels at 0 and 1) labelled by the model, except
  example 0, which gets a wrong label (misclassified at x0)."""
  params = _int_mlp_params(shape, seed)
  rng = np.random.default_rng(seed)
  x0 = (rng.integers(0, 65, (batch,) + shape) / 64).astype(np.float32)
  y = np.argmax(_int_mlp_np(params, x0), axis=1).astype(np.int32)
  y[0] = (y[0] + 1) % _NUM_CLASSES
  return params, x0, y


def _uniforms(rng, shape):
  """float32 uniforms in [0, 1) on torch.rand's 2^-24 grid, with exact 0.5
  (sign 0) and the largest value below 1 mixed in."""
  u = (rng.integers(0, 2**24, shape) / 2**24).astype(np.float32)
  flat = u.reshape(-1)
  flat[::13] = 0.5
  flat[5::17] = np.float32(1 - 2**-24)
  return u


class _Source:
  """``torch.rand`` for the reference: hands out the given chunks in order,
  checking that the reference asks for them in the expected shapes."""

  def __init__(self, chunks):
    self._chunks = iter(chunks)
    self.calls = 0

  def __call__(self, shape):
    chunk = next(self._chunks)
    assert chunk.shape == tuple(shape), (chunk.shape, shape)
    self.calls += 1
    return chunk


def _chunks(init_u, pos, sign):
  """The reference's draw order: stripes, then per iteration vh, vw, signs."""
  yield init_u
  for i in range(pos.shape[0]):
    yield pos[i, 0:1]
    yield pos[i, 1:2]
    yield sign[i]


@functools.partial(jax.jit, static_argnames=('num_queries', 'p_init'))
def _loop(params, x0, y, eps, init_u, pos, sign, num_queries, p_init):
  return _square._square_loop(
      functools.partial(_int_mlp, params), x0, y,
      jnp.broadcast_to(jnp.float32(eps), y.shape), num_queries=num_queries,
      p_init=p_init, clip_min=0.0, clip_max=1.0, init_u=init_u,
      draw_fn=lambda i: (pos[i], sign[i]))


# (image shape, p_init, model seed, draws seed): the default schedule on 6x6
# (s = 5, 4, 3, 2); a non-square image whose first squares are clamped to its
# height (s = 4 of round 4.73); a small p_init that reaches the floor s = 1
# at iteration 51 (round(0.42) = 0).
_CASES = [((6, 6, 2), 0.8, 1, 111), ((4, 7, 2), 0.8, 3, 103),
          ((6, 6, 2), 0.02, 3, 103)]
_NQ = 300


@pytest.mark.parametrize('shape,p_init,seed,draws_seed', _CASES)
def test_matches_reference_with_per_example_draws(shape, p_init, seed,
                                                  draws_seed):
  """Each example run alone through the reference (so only it is queried)
  with its own draws gives our batched run's point, queries and margin."""
  params, x0, y = _int_data(shape, seed)
  batch, (h, w, c) = len(y), shape
  rng = np.random.default_rng(draws_seed)
  init_u = _uniforms(rng, (batch, 1, w, c))
  pos = _uniforms(rng, (_NQ, batch, 2))
  sign = _uniforms(rng, (_NQ, batch, c))
  x_adv, info = _loop(params, x0, y, _EPS, init_u, pos, sign,
                      num_queries=_NQ, p_init=p_init)
  x_adv = np.asarray(x_adv)
  predict = functools.partial(_int_mlp_np, params)
  for b in range(batch):
    source = _Source(_chunks(init_u[b:b + 1], pos[:, b], sign[:, b]))
    r = ref.perturb(predict, x0[b:b + 1], y[b:b + 1], _EPS, source,
                    n_queries=_NQ, p_init=p_init)
    if not r['attacked'][0]:
      np.testing.assert_array_equal(x_adv[b], x0[b])
      assert info.queries[b] == 0 and info.success[b]
      assert info.margin[b] == ref.margin_and_loss(predict, x0[b:b + 1],
                                                   y[b:b + 1])[0][0]
      continue
    np.testing.assert_array_equal(x_adv[b], r['x_best'][0], err_msg=str(b))
    assert info.queries[b] == r['queries'][0], b
    assert info.margin[b] == r['margin'][0], b
    wrong = np.argmax(predict(r['x_best']), axis=1)[0] != y[b]
    assert bool(info.success[b]) == wrong, b
    if wrong:   # What perturb returns, for the fooled examples.
      np.testing.assert_array_equal(x_adv[b], r['adv'][0])
    # The reference drew exactly the stripes and one set per query after
    # them, except in its corner case: an example stopped at the stripes by
    # a margin of exactly 0 (not < 0) enters the loop, draws one set for no
    # example and breaks.
    corner = r['queries'][0] == 1 and r['margin'][0] == 0
    assert source.calls == 1 + 3 * (r['queries'][0] - 1 + corner), b
  queries = np.asarray(info.queries)
  assert int(info.num_iters) == min(queries.max() - 1, _NQ)
  # The case covers what it should: a clean misclassified example, examples
  # fooled in the loop at different iterations, examples never fooled.
  loop_fooled = np.asarray(info.success) & (queries > 1)
  assert len(set(queries[loop_fooled])) >= 2
  assert np.any(queries == _NQ + 1)
  if (shape, p_init) == ((6, 6, 2), 0.8):
    # ... and, here, one stopped at the stripes by a margin of exactly 0, a
    # tie that argmax resolves to the true class: the loop stops on margin
    # <= 0, as the reference's, but it is not a success.
    assert np.any((np.asarray(info.margin) == 0) & (queries == 1) &
                  ~np.asarray(info.success))


def test_matches_reference_with_batch_shared_draws():
  """Driven by the reference's own draw layout (one stripe tensor for the
  attacked examples, one square shared by the batch per iteration), our
  batched loop, which evaluates the whole batch and freezes the finished
  examples, equals the reference run on the whole batch, which queries only
  the still-robust ones."""
  shape, p_init, seed, _ = _CASES[0]
  params, x0, y = _int_data(shape, seed)
  batch, (h, w, c) = len(y), shape
  rng = np.random.default_rng(7)
  init_u = _uniforms(rng, (batch, 1, w, c))
  pos1 = _uniforms(rng, (_NQ, 1, 2))
  sign1 = _uniforms(rng, (_NQ, 1, c))
  pos = np.broadcast_to(pos1, (_NQ, batch, 2))
  sign = np.broadcast_to(sign1, (_NQ, batch, c))
  x_adv, info = _loop(params, x0, y, _EPS, init_u, pos, sign,
                      num_queries=_NQ, p_init=p_init)
  predict = functools.partial(_int_mlp_np, params)
  attacked = np.argmax(predict(x0), axis=1) == y
  source = _Source(_chunks(init_u[attacked], pos1[:, 0], sign1[:, 0]))
  r = ref.perturb(predict, x0, y, _EPS, source, n_queries=_NQ, p_init=p_init)
  np.testing.assert_array_equal(r['attacked'], attacked)
  np.testing.assert_array_equal(np.asarray(x_adv), r['x_best'])
  np.testing.assert_array_equal(np.asarray(info.queries), r['queries'])
  np.testing.assert_array_equal(np.asarray(info.margin)[attacked],
                                r['margin'][attacked])
  wrong = np.argmax(predict(np.asarray(x_adv)), axis=1) != y
  np.testing.assert_array_equal(np.asarray(info.success), wrong)
  np.testing.assert_array_equal(np.asarray(x_adv)[wrong], r['adv'][wrong])
  # Both loops ran the same number of iterations.
  assert source.calls == 1 + 3 * int(info.num_iters)


def test_p_schedule_and_square_sides():
  for p_init in (0.8, 0.05, 1.0):
    for it in range(10001):
      assert _square.square_p_selection(it, p_init) == ref.p_selection(
          it, p_init), (p_init, it)
  for shape in ((32, 32, 3), (28, 28, 1), (6, 6, 2), (4, 7, 2), (1, 1, 1)):
    h, w, c = shape
    for p_init in (0.8, 0.05, 0.02):
      for it in range(10001):
        assert _square.square_side(it, h, w, c, p_init) == ref.square_side(
            it, h, w, c, p_init), (shape, p_init, it)
  # By hand: p halves after iterations 10, 50, 200, ..., 8000.
  p = _square.square_p_selection
  assert [p(i) for i in (0, 10, 11, 50, 51, 200, 201, 500, 501)] == [
      0.8, 0.8, 0.4, 0.4, 0.2, 0.2, 0.1, 0.1, 0.05]
  assert [p(i) for i in (1000, 1001, 2001, 4001, 6000, 6001, 8000, 8001,
                         10**6)] == [
      0.05, 0.025, 0.0125, 0.00625, 0.00625, 0.003125, 0.003125, 0.0015625,
      0.0015625]
  # CIFAR-10, 32x32x3: round(sqrt(p * 1024)) per phase.
  side = lambda it: _square.square_side(it, 32, 32, 3)
  assert [side(i) for i in (0, 10, 11, 51, 201, 501, 1001, 2001, 4001, 6001,
                            8001)] == [29, 29, 20, 14, 10, 7, 5, 4, 3, 2, 1]
  # The floor: 6x6 with p_init 0.02 from iteration 51 (sqrt(0.18) = 0.42).
  assert _square.square_side(50, 6, 6, 2, 0.02) == 1
  assert _square.square_side(51, 6, 6, 2, 0.02) == 1
  assert _square.square_side(8001, 32, 32, 3, 0.05) == 1
  # The clamp to the image: round(sqrt(0.8 * 28)) = 5 > 4 rows.
  assert _square.square_side(0, 4, 7, 2) == 4
  assert _square.square_side(11, 4, 7, 2) == 3
  with pytest.raises(ValueError, match='iteration'):
    _square.square_p_selection(-1)


def _linear_model(shape, seed):
  """Two classes, logits ``x W + b``; the weights are 0 on the last row and
  column, which the reference's squares never reach (their position is
  ``floor((H - s) u)`` with ``u < 1``) once they are smaller than the image,
  so the worst vertex there is reachable."""
  rng = np.random.default_rng(seed)
  wt = rng.normal(size=shape + (2,)).astype(np.float32)
  wt[-1, :, :, :] = 0.0
  wt[:, -1, :, :] = 0.0
  return wt.reshape(-1, 2), np.float32([0.3, -0.3])


def _linear(params, x):
  wt, b = params
  return jnp.dot(x.reshape(x.shape[0], -1), wt,
                 precision=jax.lax.Precision.HIGHEST) + b


def test_linear_model_reaches_worst_vertex():
  """The margin of a linear model is affine, so its minimum over the eps-ball
  is at ``x0 - eps * sign(a)`` (``a`` its gradient), ``eps * ||a||_1`` below
  the clean margin; with per-example eps, half the examples are fooled there
  and half are not."""
  shape = (6, 6, 2)
  params = _linear_model(shape, 0)
  batch = 8
  rng = np.random.default_rng(1)
  x0 = rng.uniform(0.4, 0.6, (batch,) + shape).astype(np.float32)
  wt, b = params
  logits = x0.reshape(batch, -1).astype(np.float64) @ wt + b
  y = np.argmax(logits, axis=1).astype(np.int32)
  a = wt[:, y].T - wt[:, 1 - y].T                        # [batch, d]
  rows = np.arange(batch)
  margin0 = logits[rows, y] - logits[rows, 1 - y]
  l1 = np.abs(a).sum(axis=1)
  # Vertex margin margin0 - eps * l1 = margin0 * (1 - factor).
  factor = np.where(rows % 2 == 0, 0.7, 1.3)
  eps = (factor * margin0 / l1).astype(np.float32)
  assert np.all(eps < 0.35)  # the vertex is inside the box
  best = margin0 - eps.astype(np.float64) * l1
  x_adv, info = jax.jit(
      functools.partial(_square.square_attack, functools.partial(
          _linear, params)), static_argnames=('num_queries',))(
              x0, y, jax.random.key(0), eps=eps, num_queries=2000)
  robust = best > 0
  tol = 1e-5 * np.abs(margin0).max()
  margin = np.asarray(info.margin, np.float64)
  # At the worst vertex (within float rounding) where it is not adversarial,
  np.testing.assert_allclose(margin[robust], best[robust], rtol=0, atol=tol)
  assert not np.any(np.asarray(info.success)[robust])
  assert np.all(np.asarray(info.queries)[robust] == 2001)
  a_img = a.reshape((batch,) + shape)
  vertex = x0 - eps[:, None, None, None] * np.sign(a_img)
  used = (a_img != 0) & robust[:, None, None, None]
  np.testing.assert_allclose(np.asarray(x_adv)[used], vertex[used], rtol=0,
                             atol=1e-6)
  # ... and fooled where it is.
  assert np.all(np.asarray(info.success)[~robust])
  assert np.all(margin[~robust] <= 0)
  assert np.all(margin >= best - tol)


def _mlp_data(batch, seed=0, low=0.0, high=1.0):
  """tiny_mlp images labelled by the model, except every 4th example, whose
  label is wrong (misclassified at x0)."""
  x0, _ = tiny_mlp.data(batch, seed=seed, low=low, high=high)
  y = jnp.argmax(tiny_mlp.mlp(tiny_mlp.mlp_params(), x0), axis=-1)
  wrong = jnp.arange(batch) % 4 == 0
  return x0, jnp.where(wrong, (y + 1) % tiny_mlp.NUM_CLASSES, y)


def _mlp_attack(x0, y, key, eps, num_queries=200, clip_min=0.0,
                clip_max=1.0):
  return _square.square_attack(
      functools.partial(tiny_mlp.mlp, tiny_mlp.mlp_params()), x0, y, key,
      eps=eps, num_queries=num_queries, clip_min=clip_min, clip_max=clip_max)


_mlp_jit = jax.jit(_mlp_attack, static_argnames=('num_queries', 'clip_min',
                                                 'clip_max'))


@pytest.mark.parametrize('clip', [(0.0, 1.0), (0.2, 0.7)])
def test_output_in_ball_and_box_on_vertices(clip):
  lo, hi = clip
  x0, y = _mlp_data(16, low=lo, high=hi)
  eps = 0.2
  x_adv, info = _mlp_jit(x0, y, jax.random.key(0), eps, clip_min=lo,
                         clip_max=hi)
  x_adv, x0 = np.asarray(x_adv), np.asarray(x0)
  assert np.all(np.abs(x_adv - x0) <= eps + 1e-6)
  assert np.all(x_adv >= lo) and np.all(x_adv <= hi)
  # Every coordinate of an attacked example sits on a vertex of the ball,
  # clipped to the box (or at x0 where a sign draw was 0), up to the rounding
  # of the reference's x_best +- 2 eps (1 ulp inside the ball).
  attacked = np.asarray(info.queries) > 0
  assert attacked.sum() >= 8
  down, up = np.clip(x0 - eps, lo, hi), np.clip(x0 + eps, lo, hi)
  near = lambda v: np.abs(x_adv - v) <= 1e-6
  on_vertex = near(down) | near(up) | (x_adv == x0)
  assert np.all(on_vertex[attacked])
  # Unattacked (clean misclassified) examples are returned unchanged.
  np.testing.assert_array_equal(x_adv[~attacked], x0[~attacked])
  assert np.all(np.asarray(info.success)[~attacked])
  # The reported margin and success are those of the returned point.
  logits = np.asarray(tiny_mlp.mlp(tiny_mlp.mlp_params(), jnp.asarray(x_adv)))
  margin = np.asarray(_square._margin(jnp.asarray(logits), jnp.asarray(y)))
  np.testing.assert_allclose(np.asarray(info.margin), margin, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(info.success),
                                logits.argmax(axis=1) != np.asarray(y))


def test_fooled_examples_stop_and_queries_count_the_start():
  """Each example's draws depend on the iteration only, so a shorter run is
  a prefix of a longer one: an example fooled with ``q`` queries was not
  fooled after ``q - 2`` iterations (``q - 1`` queries, the start included)
  and is fooled, at the same point, after ``q - 1``; afterwards it is frozen."""
  shape, _, seed, _ = _CASES[0]
  params, x0, y = _int_data(shape, seed)
  attack = jax.jit(functools.partial(
      _square.square_attack, functools.partial(_int_mlp, params)),
                   static_argnames=('num_queries',))
  key = jax.random.key(3)
  x_full, full = attack(x0, y, key, eps=_EPS, num_queries=_NQ)
  queries = np.asarray(full.queries)
  loop_fooled = np.asarray(full.success) & (queries > 2)
  assert np.any(loop_fooled) and np.any(queries == _NQ + 1)
  q = int(queries[loop_fooled].min())
  for n in (q - 2, q - 1):
    x_n, short = attack(x0, y, key, eps=_EPS, num_queries=n)
    done = (queries <= n + 1) & (queries > 0)   # stopped within n iterations
    np.testing.assert_array_equal(np.asarray(x_n)[done],
                                  np.asarray(x_full)[done])
    np.testing.assert_array_equal(np.asarray(short.queries)[done],
                                  queries[done])
    np.testing.assert_array_equal(np.asarray(short.margin)[done],
                                  np.asarray(full.margin)[done])
    running = queries > n + 1
    assert np.all(np.asarray(short.queries)[running] == n + 1)
    assert np.all(np.asarray(short.margin)[running] > 0)
    assert not np.any(np.asarray(short.success)[running])
    target = queries == q   # fooled at iteration q - 1 (1-based)
    assert np.all((running if n == q - 2 else done)[target])
  assert np.all(queries[y != np.argmax(_int_mlp_np(params, x0), 1)] == 0)
  # With a larger eps every example is fooled early and the loop ends then.
  _, big = attack(x0, y, key, eps=12 / 64, num_queries=_NQ)
  assert np.all(np.asarray(big.success))
  assert int(big.num_iters) == int(np.max(big.queries)) - 1 < _NQ


def test_same_key_same_result_examples_independent_and_traced_eps():
  x0, y = _mlp_data(8)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def attack(x0, y, key, eps):
    return _mlp_attack(x0, y, key, eps, num_queries=100)

  a = attack(x0, y, jax.random.key(5), 0.1)
  b = attack(x0, y, jax.random.key(5), 0.1)
  chex.assert_trees_all_equal(a, b)
  c = attack(x0, y, jax.random.key(6), 0.1)
  assert not np.array_equal(a[0], c[0])
  # An example's result does not depend on the other examples of the batch.
  x_other, y_other = _mlp_data(8, seed=1)
  x_mix = x_other.at[3].set(x0[3])
  y_mix = y_other.at[3].set(y[3])
  d = attack(x_mix, y_mix, jax.random.key(5), 0.1)
  np.testing.assert_array_equal(d[0][3], a[0][3])
  assert d[1].queries[3] == a[1].queries[3]
  # ... and examples draw independently: two copies of an example do not
  # follow the same path.
  x_dup, y_dup = x0.at[2].set(x0[1]), y.at[2].set(y[1])
  e = attack(x_dup, y_dup, jax.random.key(5), 0.1)
  assert e[1].queries[1] > 0
  assert not np.array_equal(e[0][1], e[0][2])
  # Another eps: the same trace.
  x, _ = attack(x0, y, jax.random.key(5), 0.2)
  assert float(jnp.max(jnp.abs(x - x0))) <= 0.2 + 1e-6
  assert float(jnp.max(jnp.abs(x - x0))) > 0.1 + 1e-3
  # Per-example eps (a new input shape, so a new trace): each its own ball.
  eps_b = jnp.linspace(0.05, 0.3, 8)
  x, _ = jax.jit(_mlp_attack)(x0, y, jax.random.key(5), eps_b)
  dist = jnp.max(jnp.abs(x - x0).reshape(8, -1), axis=1)
  assert bool(jnp.all(dist <= eps_b + 1e-6))


def test_bad_input():
  x0, y = _mlp_data(4)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match='eps'):
    _mlp_attack(x0, y, key, 0.0)
  with pytest.raises(ValueError, match='eps'):
    _mlp_attack(x0, y, key, -0.1)
  with pytest.raises(ValueError, match='eps'):
    _mlp_attack(x0, y, key, jnp.array([0.1, 0.0, 0.1, 0.1]))
  with pytest.raises(ValueError, match='eps'):
    _mlp_attack(x0, y, key, jnp.full((3,), 0.1))
  with pytest.raises(ValueError, match='num_queries'):
    _mlp_attack(x0, y, key, 0.1, num_queries=0)
  with pytest.raises(ValueError, match='x0'):
    _mlp_attack(x0[0], y, key, 0.1)
  with pytest.raises(ValueError, match='y'):
    _mlp_attack(x0, y[:3], key, 0.1)
  with pytest.raises(ValueError, match='y'):
    _mlp_attack(x0, jnp.float32(y), key, 0.1)
  with pytest.raises(ValueError, match='clip_min'):
    _mlp_attack(x0, y, key, 0.1, clip_min=1.0, clip_max=0.0)
  with pytest.raises(ValueError, match='key'):
    _mlp_attack(x0, y, None, 0.1)
  with pytest.raises(ValueError, match='p_init'):
    _square.square_attack(lambda x: x[:, 0, 0, :], x0, y, key, eps=0.1,
                          p_init=0.0)
  with pytest.raises(ValueError, match='logits_fn'):
    _square.square_attack(lambda x: x[:, 0, 0, 0], x0, y, key, eps=0.1,
                          num_queries=2)
