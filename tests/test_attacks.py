"""Tests of input_grad, the FOSC-controlled PGD loop and the attacks."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dynamic_at as dat
from tests import tiny_mlp

_SHAPE = tiny_mlp.SHAPE
_NUM_CLASSES = tiny_mlp.NUM_CLASSES
_mlp_params = tiny_mlp.mlp_params
_mlp = tiny_mlp.mlp
_data = tiny_mlp.data


@functools.partial(jax.jit, static_argnames=('random_start', 'loss',
                                             'compact'))
def _pgd_mlp(params, x0, y, key, eps, step_size, num_steps, c_stop,
             random_start=True, loss='xent', compact=False):
  return dat.pgd(functools.partial(_mlp, params), x0, y, key, eps=eps,
                 step_size=step_size, num_steps=num_steps, c_stop=c_stop,
                 random_start=random_start, loss=loss, compact=compact)


def test_losses_by_hand():
  logits = jnp.array([[2.0, 1.0, -1.0], [0.0, 3.0, 1.0]])
  y = jnp.array([0, 2])
  np.testing.assert_allclose(
      dat.xent(logits, y),
      [-2.0 + np.log(np.exp(2) + np.exp(1) + np.exp(-1)),
       -1.0 + np.log(1 + np.exp(3) + np.exp(1))], rtol=1e-6)
  # -relu(z_y - max_{j != y} z_j + kappa)
  np.testing.assert_allclose(dat.cw_margin(logits, y, kappa=0.0),
                             [-1.0, 0.0])
  np.testing.assert_allclose(dat.cw_margin(logits, y, kappa=50.0),
                             [-51.0, -48.0])
  with pytest.raises(ValueError, match='loss must be'):
    dat.get_loss('hinge')


@pytest.mark.parametrize('loss', ['xent', 'cw'])
def test_input_grad_matches_per_example_grad(loss):
  params = _mlp_params()
  x, y = _data(8)
  logits_fn = functools.partial(_mlp, params)
  losses, grads = jax.jit(
      lambda x_, y_: dat.input_grad(logits_fn, x_, y_, loss, kappa=5.0))(x, y)
  loss_fn = dat.get_loss(loss, 5.0)
  one = lambda xi, yi: loss_fn(logits_fn(xi[None]), yi[None])[0]
  np.testing.assert_allclose(losses, jax.vmap(one)(x, y), rtol=1e-5)
  np.testing.assert_allclose(grads, jax.vmap(jax.grad(one))(x, y),
                             rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('c_stop', [None, 0.5, 1e9])
@pytest.mark.parametrize('eps,step', [(0.3, 0.075), (8 / 255, 2 / 255)])
def test_output_in_ball_and_box(c_stop, eps, step):
  params = _mlp_params()
  x0, y = _data(32)  # uniform in [0, 1]: many coordinates near the borders
  x, info = _pgd_mlp(params, x0, y, jax.random.key(3), eps, step, 10, c_stop)
  assert float(jnp.max(jnp.abs(x - x0))) <= eps + 1e-6
  assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
  assert info.steps.shape == info.fosc.shape == info.loss.shape == (32,)
  assert int(info.steps.max()) <= 10


def test_zero_steps_returns_start():
  params = _mlp_params()
  x0, y = _data(8)
  key = jax.random.key(7)
  x, info = _pgd_mlp(params, x0, y, key, 0.3, 0.075, 0, None,
                     random_start=False)
  np.testing.assert_array_equal(x, x0)
  np.testing.assert_array_equal(info.steps, np.zeros(8))
  assert int(info.num_iters) == 0
  x, info = _pgd_mlp(params, x0, y, key, 0.3, 0.075, 0, None)
  start = jnp.clip(x0 + 0.3 * jax.random.uniform(key, x0.shape, x0.dtype,
                                                 -1.0, 1.0), 0.0, 1.0)
  np.testing.assert_allclose(x, start, rtol=0, atol=1e-7)
  # The reported FOSC and loss are those of the start, centred on x0.
  losses, grads = dat.input_grad(functools.partial(_mlp, params), x, y)
  np.testing.assert_allclose(info.fosc, dat.fosc(x, x0, grads, 0.3),
                             rtol=1e-5)
  np.testing.assert_allclose(info.loss, losses, rtol=1e-5)


def _reference_pgd(params, x0, y, start, eps, step, num_steps, c_stop):
  """Algorithm 1 as a plain Python loop over steps and examples (numpy)."""
  grad_fn = jax.jit(
      lambda x_: dat.input_grad(functools.partial(_mlp, params), x_, y))
  x0 = np.asarray(x0)
  x = np.array(start)
  batch = x.shape[0]
  active = np.ones(batch, bool)
  steps = np.zeros(batch, np.int32)
  frozen_at = np.full(batch, -1)
  _, g = grad_fn(jnp.asarray(x))
  g = np.array(g)
  fosc_hist = []
  for k in range(num_steps):
    if not active.any():
      break
    for i in range(batch):
      if active[i]:
        xi = x[i] + np.float32(step) * np.sign(g[i])
        xi = np.clip(xi, x0[i] - np.float32(eps), x0[i] + np.float32(eps))
        x[i] = np.clip(xi, 0.0, 1.0)
        steps[i] += 1
    _, g_new = grad_fn(jnp.asarray(x))
    g_new = np.asarray(g_new)
    f = np.asarray(dat.fosc(x, x0, g_new, eps))
    fosc_hist.append(f)
    for i in range(batch):
      if active[i]:
        g[i] = g_new[i]
        if f[i] <= c_stop:
          active[i] = False
          frozen_at[i] = k + 1
  return x, steps, frozen_at, np.stack(fosc_hist)


# compact=2: the still-active examples are gathered into buffers of 32, 16,
# 8, 4 or 2 rows, whichever fits; the results must not change.
@pytest.mark.parametrize('compact', [False, 2])
def test_matches_python_reference_and_frozen_examples_never_move(compact):
  params = _mlp_params()
  x0, y = _data(32, low=0.2, high=0.8)
  eps, step, num_steps = 0.1, 0.025, 10
  x_start, _ = _pgd_mlp(params, x0, y, jax.random.key(1), eps, step, 0, None)
  # Choose a threshold between two FOSC values that the unstopped run visits,
  # away from both, so that examples freeze at different steps.
  _, _, _, hist = _reference_pgd(params, x0, y, x_start, eps, step, num_steps,
                                 -np.inf)
  values = np.sort(hist[2:6].ravel())
  gaps = np.diff(values)
  mid = len(values) // 2
  i = mid + int(np.argmax(gaps[mid:mid + 20]))
  c_stop = float((values[i] + values[i + 1]) / 2)
  assert gaps[i] > 1e-4 * abs(c_stop)

  x_ref, steps_ref, frozen_at, _ = _reference_pgd(
      params, x0, y, x_start, eps, step, num_steps, c_stop)
  assert len(set(steps_ref.tolist())) > 2, 'threshold exercises too little'
  x_jit, info = _pgd_mlp(params, x0, y, jax.random.key(1), eps, step,
                         num_steps, c_stop, compact=compact)
  np.testing.assert_array_equal(info.steps, steps_ref)
  np.testing.assert_allclose(x_jit, x_ref, rtol=0, atol=1e-6)
  assert int(info.num_iters) == int(steps_ref.max())
  # Frozen exactly when the FOSC first reached the threshold.
  stopped = frozen_at > 0
  assert bool(jnp.all(info.fosc[stopped] <= c_stop))
  assert bool(jnp.all(info.fosc[~stopped] > c_stop))

  # The jitted loop's own trajectory: runs with 0..K steps from the same key
  # are its prefixes; once an example is frozen its point never changes.
  traj = [
      _pgd_mlp(params, x0, y, jax.random.key(1), eps, step, n, c_stop,
               compact=compact)
      for n in range(num_steps + 1)
  ]
  for n in range(1, num_steps + 1):
    was_frozen = np.asarray(traj[n - 1][1].steps) < n - 1
    np.testing.assert_array_equal(
        np.asarray(traj[n][0])[was_frozen], np.asarray(traj[n - 1][0])[was_frozen])
    moved = np.any(np.asarray(traj[n][0]) != np.asarray(traj[n - 1][0]),
                   axis=(1, 2, 3))
    assert not np.any(moved & was_frozen)
  np.testing.assert_array_equal(traj[-1][0], x_jit)


def _linear_problem(batch=4):
  """loss_i = (y_i + 1) * <w, x_i>: the optimum over the ball is x0 + eps*sign(w).

  Everything is dyadic, so the arithmetic is exact.
  """
  rng = np.random.default_rng(0)
  d = int(np.prod(_SHAPE))
  w = rng.integers(1, 8, d) * rng.choice([-1, 1], d) / 8.0
  w = jnp.float32(w)
  logits_fn = lambda x: jnp.stack(
      [x.reshape(x.shape[0], -1) @ w, jnp.zeros(x.shape[0])], axis=1)
  loss = lambda logits, y: logits[:, 0] * (y + 1).astype(jnp.float32)
  x0 = jnp.float32(rng.integers(24, 41, (batch,) + _SHAPE) / 64.0)
  y = jnp.arange(batch, dtype=jnp.int32)
  return logits_fn, loss, w, x0, y


def test_linear_model_reaches_known_optimum_with_zero_fosc():
  logits_fn, loss, w, x0, y = _linear_problem()
  eps, step = 0.25, 0.0625
  optimum = x0 + eps * jnp.sign(w).reshape(_SHAPE)
  run = jax.jit(lambda key, c: dat.pgd(
      logits_fn, x0, y, key, eps=eps, step_size=step, num_steps=10, c_stop=c,
      loss=loss))
  x, info = run(jax.random.key(0), None)
  np.testing.assert_array_equal(x, optimum)
  np.testing.assert_array_equal(info.fosc, np.zeros(4))
  np.testing.assert_array_equal(info.steps, np.full(4, 10))
  # With c_stop = 0 every example stops as soon as it is there (<= 8 steps
  # from anywhere in the ball: 2 * eps / step).
  x, info = run(jax.random.key(0), 0.0)
  np.testing.assert_array_equal(x, optimum)
  assert int(info.steps.max()) <= 8 and int(info.num_iters) <= 8


def test_positive_threshold_stops_early_at_the_predicted_step():
  logits_fn, loss, w, x0, y = _linear_problem()
  eps, step = 0.25, 0.0625
  # From x0 the FOSC after k steps is (y + 1) * eps * ||w||_1 * (1 - k / 4).
  c = 0.5 * eps * float(jnp.abs(w).sum())
  x, info = dat.pgd(logits_fn, x0, y, None, eps=eps, step_size=step,
                    num_steps=10, c_stop=c, random_start=False, loss=loss)
  # y=0: FOSC == c at k=2 (<= freezes); y=1: k=3; y=2, y=3: k=4 (FOSC 0).
  np.testing.assert_array_equal(info.steps, [2, 3, 4, 4])
  expected_k = np.array([2, 3, 4, 4], np.float32).reshape(4, 1, 1, 1)
  np.testing.assert_array_equal(
      x, x0 + expected_k * step * jnp.sign(w).reshape(_SHAPE))
  assert np.all(np.asarray(info.fosc) <= c)


def test_same_key_same_result_and_no_retrace():
  params = _mlp_params()
  x0, y = _data(8)
  logits_fn = functools.partial(_mlp, params)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def attack(x0_, y_, key, eps, step_size, num_steps, c_stop):
    return dat.pgd(logits_fn, x0_, y_, key, eps=eps, step_size=step_size,
                   num_steps=num_steps, c_stop=c_stop)

  a = attack(x0, y, jax.random.key(5), 0.3, 0.075, 10, 0.5)
  b = attack(x0, y, jax.random.key(5), 0.3, 0.075, 10, 0.5)
  np.testing.assert_array_equal(a[0], b[0])
  c = attack(x0, y, jax.random.key(6), 0.3, 0.075, 10, 0.5)
  assert not np.array_equal(a[0], c[0])
  # Other K, c_t, eps and step: same trace.
  attack(x0, y, jax.random.key(5), 0.2, 0.05, 3, 0.0)
  attack(x0, y, jax.random.key(5), 0.1, 0.01, 40, 100.0)


def test_evaluation_attacks():
  params = _mlp_params()
  x0, y = _data(16, low=0.2, high=0.8)
  logits_fn = functools.partial(_mlp, params)
  key = jax.random.key(0)
  x, info = dat.fgsm(logits_fn, x0, y, key, eps=0.1)
  _, g = dat.input_grad(logits_fn, x0, y)
  np.testing.assert_allclose(x, jnp.clip(x0 + 0.1 * jnp.sign(g), 0, 1),
                             atol=1e-7)
  assert int(info.steps.max()) == 1
  for attack, k in ((dat.pgd10, 10), (dat.pgd20, 20), (dat.cw_inf, 30)):
    x, info = attack(logits_fn, x0, y, key, eps=0.1)
    np.testing.assert_array_equal(info.steps, np.full(16, k))
    assert float(jnp.max(jnp.abs(x - x0))) <= 0.1 + 1e-6
  # CW-inf maximises the margin loss.
  _, info = dat.cw_inf(logits_fn, x0, y, key, eps=0.1)
  clean = dat.cw_margin(logits_fn(x0), y, 50.0)
  assert bool(jnp.all(info.loss >= clean - 1e-4))
  assert float(jnp.mean(info.loss)) > float(jnp.mean(clean))


def test_evaluation_attacks_are_pgd_with_their_settings_and_pass_kwargs():
  # Each evaluation attack is exactly pgd with its documented settings, and
  # passes its keyword arguments on (the clip range here clips inside the
  # ball: x0 is in [0.2, 0.8], eps 0.1).
  params = _mlp_params()
  x0, y = _data(8, low=0.2, high=0.8)
  logits_fn = functools.partial(_mlp, params)
  key = jax.random.key(3)
  eps = 0.1
  quarter = jnp.asarray(eps) / 4
  kwargs = dict(clip_min=0.25, clip_max=0.75, c_stop=0.05)
  cases = [
      (dat.fgsm, {}, dict(step_size=eps, num_steps=1, random_start=False)),
      (dat.pgd10, {}, dict(step_size=quarter, num_steps=10)),
      (dat.pgd20, {}, dict(step_size=quarter, num_steps=20)),
      (dat.cw_inf, {}, dict(step_size=quarter, num_steps=30, loss='cw',
                            kappa=50.0)),
      (dat.cw_inf, dict(kappa=5.0, num_steps=7),
       dict(step_size=quarter, num_steps=7, loss='cw', kappa=5.0)),
  ]
  for attack, own, settings in cases:
    got = attack(logits_fn, x0, y, key, eps=eps, **own, **kwargs)
    want = dat.pgd(logits_fn, x0, y, key, eps=eps, **settings, **kwargs)
    chex.assert_trees_all_equal(got, want)
    assert float(jnp.min(got[0])) >= 0.25 and float(jnp.max(got[0])) <= 0.75
  # The random start of PGD-10/20 and CW-inf: another key, another result.
  for attack in (dat.pgd10, dat.pgd20, dat.cw_inf):
    a, _ = attack(logits_fn, x0, y, key, eps=eps)
    b, _ = attack(logits_fn, x0, y, jax.random.key(4), eps=eps)
    assert not np.array_equal(a, b)


def test_pgd_raises_attack_loss_on_nonlinear_model():
  params = _mlp_params()
  x0, y = _data(64, low=0.2, high=0.8)
  logits_fn = functools.partial(_mlp, params)
  clean = dat.xent(logits_fn(x0), y)
  _, info = dat.pgd20(logits_fn, x0, y, jax.random.key(0), eps=0.1)
  assert float(jnp.mean(info.loss)) > float(jnp.mean(clean)) + 0.1


@pytest.mark.parametrize('c_stop', [None, 0.5])
def test_final_eval_false_costs_k_gradients_and_moves_the_same(c_stop):
  params = _mlp_params()
  x0, y = _data(16, low=0.2, high=0.8)
  calls = []

  def counting_logits(x):
    jax.debug.callback(lambda: calls.append(1))
    return _mlp(params, x)

  def run(final_eval):
    calls.clear()
    out = jax.jit(lambda k: dat.pgd(
        counting_logits, x0, y, k, eps=0.1, step_size=0.025, num_steps=6,
        c_stop=c_stop, final_eval=final_eval))(jax.random.key(0))
    jax.block_until_ready(out)
    return out, len(calls)

  (x_a, info_a), n_a = run(True)
  (x_b, info_b), n_b = run(False)
  np.testing.assert_array_equal(x_a, x_b)
  np.testing.assert_array_equal(info_a.steps, info_b.steps)
  iters = int(info_a.num_iters)
  assert n_a == iters + 1
  assert n_b == iters if iters == 6 else iters + 1
  moving = np.asarray(info_b.steps) == 6
  assert np.all(np.isnan(np.asarray(info_b.fosc)[moving]))
  np.testing.assert_array_equal(np.asarray(info_b.fosc)[~moving],
                                np.asarray(info_a.fosc)[~moving])
  if c_stop is None:
    assert iters == 6 and moving.all()


def test_random_start_needs_key():
  x0, y = _data(2)
  with pytest.raises(ValueError) as error:
    dat.pgd(functools.partial(_mlp, _mlp_params()), x0, y, None, eps=0.1,
            step_size=0.1, num_steps=1)
  assert str(error.value) == 'pgd: random_start=True needs a PRNG key'


def test_unclipped_start_takes_its_first_gradient_outside_the_box():
  # The authors' start: x0 + U(-eps, eps), not clipped to [0, 1]. pgd with
  # clip_start=False keeps it (0 steps), takes the first gradient there and
  # clips only the steps: one step equals the same update by hand.
  params = _mlp_params()
  logits = functools.partial(_mlp, params)
  x0, y = _data(16)  # uniform in [0, 1]: many starts fall outside the box
  eps, step = 0.3, 0.075
  start = x0 + eps * jax.random.uniform(jax.random.key(5), x0.shape,
                                        x0.dtype, -1.0, 1.0)
  assert float(start.min()) < 0.0 and float(start.max()) > 1.0
  run = lambda k, clip: dat.pgd(logits, x0, y, eps=eps, step_size=step,
                                num_steps=k, x_start=start, clip_start=clip)
  x, info = run(0, False)
  np.testing.assert_array_equal(x, start)
  _, g = dat.input_grad(logits, start, y)
  np.testing.assert_allclose(info.fosc, dat.fosc(start, x0, g, eps),
                             rtol=1e-5)
  x_clipped, _ = run(0, True)
  np.testing.assert_array_equal(x_clipped, jnp.clip(start, 0.0, 1.0))
  x1, info1 = run(1, False)
  by_hand = jnp.clip(jnp.clip(start + step * jnp.sign(g), x0 - eps, x0 + eps),
                     0.0, 1.0)
  np.testing.assert_allclose(x1, by_hand, rtol=0, atol=1e-7)
  assert float(x1.min()) >= 0.0 and float(x1.max()) <= 1.0
  # The clipped start takes its first gradient elsewhere, so it moves
  # differently.
  x1_clipped, _ = run(1, True)
  assert not np.allclose(x1, x1_clipped)
  np.testing.assert_array_equal(info1.steps, np.ones(16))


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_random_start_point_is_uniform_in_the_ball_and_clipped_to_the_box(
    dtype):
  # Columns at the box's edges, in its middle and near its lower edge.
  x0 = jnp.asarray(np.tile([0.0, 1.0, 0.5, 0.05], (256, 1)), dtype)
  eps = 0.25
  tol = 1e-6 if dtype == jnp.float32 else 1e-2
  for box, kwargs in (((0.0, 1.0), {}),
                      ((0.1, 0.9), dict(clip_min=0.1, clip_max=0.9))):
    x = dat.random_start_point(jax.random.key(0), x0, eps, **kwargs)
    assert x.dtype == dtype
    x, ref = np.float32(x), np.float32(x0)
    lo, hi = np.float32(jnp.asarray(box[0], dtype)), np.float32(
        jnp.asarray(box[1], dtype))
    # Clipped to the box on both sides, and some points on each edge.
    assert x.min() == lo and x.max() == hi
    assert np.all(np.abs(x - np.clip(ref, lo, hi)) <= eps + tol)
  # Unclipped in the middle: uniform on [x0 - eps, x0 + eps].
  x = np.float32(dat.random_start_point(jax.random.key(1), x0, eps))
  middle = x[:, 2] - 0.5
  assert middle.min() < -0.2 and middle.max() > 0.2
  assert abs(float(middle.mean())) < 0.05


def test_coordinates_without_gradient_do_not_move():
  # A linear model that ignores the first half of the input: the gradient is
  # exactly 0 there, and a sign-gradient step leaves those pixels alone.
  d = int(np.prod(_SHAPE))
  w = np.random.default_rng(0).normal(size=(d, _NUM_CLASSES))
  w[:d // 2] = 0.0
  w = jnp.float32(w)

  def logits_fn(x):
    return x.reshape(len(x), -1) @ w

  x0, y = _data(4, low=0.2, high=0.8)
  x, _ = dat.pgd(logits_fn, x0, y, eps=0.1, step_size=0.025, num_steps=5,
                 random_start=False)
  flat, flat0 = np.asarray(x).reshape(4, -1), np.asarray(x0).reshape(4, -1)
  np.testing.assert_array_equal(flat[:, :d // 2], flat0[:, :d // 2])
  assert np.all(flat[:, d // 2:] != flat0[:, d // 2:])


@pytest.mark.parametrize('batch, compact, expected', [
    # Off: one buffer of the whole batch.
    (128, False, (128,)),
    (128, None, (128,)),
    (128, 0, (128,)),
    # True: eighths of the batch down to 16 (the documented default).
    (128, True, (128, 112, 96, 80, 64, 48, 32, 16)),
    # An integer is the smallest buffer; 1 is not True's 16.
    (128, 32, (128, 112, 96, 80, 64, 48, 32)),
    (8, 1, (8, 7, 6, 5, 4, 3, 2, 1)),
    (8, -3, (8, 7, 6, 5, 4, 3, 2, 1)),
    # Eighths, then halving while even and still >= the smallest.
    (256, True, (256, 224, 192, 160, 128, 96, 64, 32, 16)),
    # Not a multiple of 8: halving only, while even.
    (100, True, (100, 50, 25)),
    (100, 30, (100, 50)),
    # No bucket smaller than the batch reaches the smallest size.
    (16, True, (16,)),
])
def test_compaction_bucket_sizes(batch, compact, expected):
  from dynamic_at import _attacks  # pylint: disable=g-import-not-at-top
  assert _attacks._bucket_sizes(batch, compact) == expected


@pytest.mark.parametrize('loss, kappa', [('xent', None), ('cw', None),
                                         ('cw', 5.0)])
def test_info_is_the_loss_and_fosc_of_the_returned_point(loss, kappa):
  # info.loss and info.fosc are those of the returned point under the attack's
  # own loss (C&W: its kappa, 50 when not given), FOSC centred on x0; the
  # documented dtypes and shapes.
  params = _mlp_params()
  logits_fn = functools.partial(_mlp, params)
  x0, y = _data(8, low=0.2, high=0.8)
  eps = 0.1
  settings = {} if kappa is None else dict(kappa=kappa)
  x, info = dat.pgd(logits_fn, x0, y, jax.random.key(2), eps=eps,
                    step_size=eps / 4, num_steps=3, loss=loss, **settings)
  loss_fn = dat.get_loss(loss, 50.0 if kappa is None else kappa)
  want_loss, grad = dat.input_grad(logits_fn, x, y, loss_fn)
  np.testing.assert_allclose(info.loss, want_loss, rtol=1e-6)
  np.testing.assert_allclose(info.loss, loss_fn(logits_fn(x), y), rtol=1e-6)
  np.testing.assert_allclose(info.fosc, dat.fosc(x, x0, grad, eps),
                             rtol=1e-5, atol=1e-6)
  # input_grad's own default kappa is 50 too.
  got_loss, got_grad = dat.input_grad(logits_fn, x, y, loss, **settings)
  np.testing.assert_array_equal(got_loss, want_loss)
  np.testing.assert_array_equal(got_grad, grad)
  assert info.steps.dtype == jnp.int32 and info.steps.shape == (8,)
  assert info.num_iters.dtype == jnp.int32 and info.num_iters.shape == ()
  assert info.fosc.dtype == info.loss.dtype == jnp.float32
  assert info.fosc.shape == info.loss.shape == (8,)


@pytest.mark.parametrize('compact', [False, 2])
@pytest.mark.parametrize('final_eval', [True, False])
def test_bfloat16_inputs_cast_every_argument_to_their_dtype(compact,
                                                             final_eval):
  # bfloat16 images with float32 eps, step size, start and FOSC centre (values
  # that bfloat16 cannot hold): the same as with those cast to bfloat16 first,
  # and the result stays bfloat16.
  params = _mlp_params()
  logits_fn = functools.partial(_mlp, params)
  x0_32, y = _data(16, low=0.2, high=0.8)
  x0 = x0_32.astype(jnp.bfloat16)
  eps, step = jnp.float32(0.1), jnp.float32(0.0301)
  noise = jax.random.uniform(jax.random.key(4), x0.shape, jnp.float32, -1, 1)
  start = x0_32 + 0.1 * noise
  center = x0_32 + 0.01 * noise[::-1]
  bf = lambda a: jnp.asarray(a, jnp.bfloat16)
  assert not np.array_equal(np.float32(bf(start)), np.asarray(start))
  common = dict(num_steps=4, c_stop=0.3, compact=compact,
                final_eval=final_eval)
  for extra, extra_bf16 in (
      (dict(x_start=start, fosc_center=center),
       dict(x_start=bf(start), fosc_center=bf(center))),
      ({}, {})):
    got = dat.pgd(logits_fn, x0, y, jax.random.key(1), eps=eps,
                  step_size=step, **common, **extra)
    want = dat.pgd(logits_fn, x0, y, jax.random.key(1), eps=bf(eps),
                   step_size=bf(step), **common, **extra_bf16)
    chex.assert_trees_all_equal(got, want)
    assert got[0].dtype == jnp.bfloat16
    assert got[1].fosc.dtype == jnp.bfloat16


def test_fosc_is_centred_on_fosc_center_when_given():
  # The authors' variant: FOSC around another point (their random start);
  # the projection stays around x0.
  params = _mlp_params()
  logits_fn = functools.partial(_mlp, params)
  x0, y = _data(8, low=0.2, high=0.8)
  eps = 0.1
  center = dat.random_start_point(jax.random.key(3), x0, eps)
  x, info = dat.pgd(logits_fn, x0, y, eps=eps, step_size=eps / 4,
                    num_steps=3, random_start=False, fosc_center=center)
  _, grad = dat.input_grad(logits_fn, x, y)
  np.testing.assert_allclose(info.fosc, dat.fosc(x, center, grad, eps),
                             rtol=1e-5, atol=1e-6)
  assert not np.allclose(info.fosc, dat.fosc(x, x0, grad, eps), rtol=1e-3)
  assert float(jnp.max(jnp.abs(x - x0))) <= eps + 1e-6
  # Without a threshold the centre changes only the reported FOSC, not the
  # points (the stop rule reads the same values as info.fosc).
  x_plain, _ = dat.pgd(logits_fn, x0, y, eps=eps, step_size=eps / 4,
                       num_steps=3, random_start=False)
  np.testing.assert_array_equal(x, x_plain)


def test_unclipped_random_start_with_clip_start_false():
  params = _mlp_params()
  logits_fn = functools.partial(_mlp, params)
  x0, y = _data(16)  # uniform in [0, 1]: many starts fall outside the box
  eps, key = 0.3, jax.random.key(5)
  drawn = x0 + eps * jax.random.uniform(key, x0.shape, x0.dtype, -1.0, 1.0)
  assert float(drawn.min()) < 0.0 and float(drawn.max()) > 1.0
  for clip_start, want in ((False, drawn), (True, jnp.clip(drawn, 0.0, 1.0))):
    x, info = dat.pgd(logits_fn, x0, y, key, eps=eps, step_size=eps / 4,
                      num_steps=0, clip_start=clip_start)
    np.testing.assert_allclose(x, want, rtol=0, atol=1e-7)
    _, grad = dat.input_grad(logits_fn, want, y)
    np.testing.assert_allclose(info.fosc, dat.fosc(want, x0, grad, eps),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('compact, want_sizes', [
    # Off (the default): every evaluation is of the whole batch.
    (None, [32, 32, 32, 32, 32]),
    # Buffers 32, 28, 24, ..., 4, 2: the smallest that holds the active
    # examples (16 active: 16, not 20).
    (2, [32, 32, 32, 16, 8]),
    # One buffer besides the batch: 28.
    (28, [32, 32, 32, 28, 28]),
])
def test_compaction_evaluates_the_smallest_buffer_holding_the_active(
    compact, want_sizes):
  logits_fn, loss, w, _, _ = _linear_problem()
  rng = np.random.default_rng(1)
  x0 = jnp.float32(rng.integers(24, 41, (32,) + _SHAPE) / 64.0)
  # From x0, (y + 1) * (1 - k / 4) <= 1/2 freezes y = 0 at step 2, y = 1 at
  # step 3 and y = 3 at step 4 (FOSC 0): 16, 8 and 8 examples.
  y = jnp.int32([0] * 16 + [1] * 8 + [3] * 8)
  c = 0.5 * 0.25 * float(jnp.abs(w).sum())
  sizes = []

  def recording(x):
    jax.debug.callback(functools.partial(sizes.append, x.shape[0]),
                       ordered=True)
    return logits_fn(x)

  settings = {} if compact is None else dict(compact=compact)
  x, info = jax.jit(lambda: dat.pgd(
      recording, x0, y, eps=0.25, step_size=0.0625, num_steps=10, c_stop=c,
      random_start=False, loss=loss, **settings))()
  jax.effects_barrier()
  np.testing.assert_array_equal(info.steps, [2] * 16 + [3] * 8 + [4] * 8)
  assert sizes == want_sizes
  expected_k = np.asarray(info.steps, np.float32).reshape(32, 1, 1, 1)
  np.testing.assert_array_equal(
      x, x0 + expected_k * 0.0625 * jnp.sign(w).reshape(_SHAPE))


def test_threshold_is_compared_in_float32_even_with_x64():
  # A threshold a float32 rounds onto the FOSC value c: frozen at c (<=), as
  # in test_positive_threshold_stops_early_at_the_predicted_step.
  logits_fn, loss, w, x0, y = _linear_problem()
  eps, step = 0.25, 0.0625
  c = 0.5 * eps * float(jnp.abs(w).sum())
  below = c * (1 - 2.0**-30)
  assert below < c and np.float32(below) == np.float32(c)
  # A Python float is weakly typed; a numpy float64 is not.
  for threshold in (below, np.float64(below)):
    with jax.enable_x64(True):
      _, info = dat.pgd(logits_fn, x0, y, None, eps=eps, step_size=step,
                        num_steps=10, c_stop=threshold, random_start=False,
                        loss=loss)
    np.testing.assert_array_equal(info.steps, [2, 3, 4, 4])
