"""Tests of APGD, APGD-T, the DLR losses and the worst-case combination."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dynamic_at as dat
from tests import tiny_mlp

_SHAPE = tiny_mlp.SHAPE
_NUM_CLASSES = tiny_mlp.NUM_CLASSES
_LOSSES = ('ce', 'dlr', 'dlr_targeted')
_mlp_params = tiny_mlp.mlp_params
_mlp = tiny_mlp.mlp
_data = tiny_mlp.data


@functools.partial(jax.jit, static_argnames=('num_steps', 'loss',
                                              'random_start'))
def _apgd_mlp(params, x0, y, key, eps, target=None, num_steps=20, loss='ce',
              random_start=True):
  return dat.apgd(functools.partial(_mlp, params), x0, y, key, eps=eps,
                  num_steps=num_steps, loss=loss, target_class=target,
                  random_start=random_start)


@functools.partial(jax.jit, static_argnames=('num_steps', 'num_targets'))
def _apgd_t_mlp(params, x0, y, key, eps, num_steps=20, num_targets=4):
  return dat.apgd_targeted(functools.partial(_mlp, params), x0, y, key,
                           eps=eps, num_steps=num_steps,
                           num_targets=num_targets)


def _wrong(params, x, y):
  return np.asarray(jnp.argmax(_mlp(params, x), -1) != y)


def test_dlr_losses_by_hand():
  logits = jnp.array([[4.0, 1.0, 2.0, 0.0, -1.0],
                      [1.0, 3.0, 0.0, 2.0, 0.5]])
  y = jnp.array([0, 2])
  # Row 0: y top, runner-up 2, pi1 - pi3 = 4 - 1.  Row 1: z_y = 0, best other
  # 3, pi1 - pi3 = 3 - 1.
  np.testing.assert_allclose(dat.dlr_loss(logits, y),
                             [-(4 - 2) / 3, -(0 - 3) / 2], rtol=1e-6)
  t = jnp.array([4, 3])
  # Row 0: -(4 - (-1)) / (4 - (1 + 0) / 2).  Row 1: -(0 - 2) / (3 - (1 + .5)/2).
  np.testing.assert_allclose(dat.dlr_targeted_loss(logits, y, t),
                             [-5 / 3.5, 2 / 2.25], rtol=1e-6)
  # Invariant to shifting and positive scaling of the logits.
  np.testing.assert_allclose(dat.dlr_loss(3.0 * logits + 7.0, y),
                             dat.dlr_loss(logits, y), rtol=1e-5)
  np.testing.assert_allclose(dat.dlr_targeted_loss(2.0 * logits - 1.0, y, t),
                             dat.dlr_targeted_loss(logits, y, t), rtol=1e-5)


def test_checkpoint_schedule():
  # The paper: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03,
  # 0.06), w_j = ceil(p_j N), while p_j <= 1.
  p = [0.0, 0.22]
  while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1:
    p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
  # round(): 0.57 * 100 is 57.00000000000001 in floating point.
  paper = tuple(math.ceil(round(q * 100, 9)) for q in p)
  assert paper == (0, 22, 41, 57, 70, 80, 87, 93, 99)
  assert dat.apgd_checkpoints(100) == paper
  # The reference code's integer schedule for other N.
  assert dat.apgd_checkpoints(1000) == tuple(10 * w for w in paper)
  assert dat.apgd_checkpoints(50) == (0, 11, 21, 30, 38, 45)
  assert dat.apgd_checkpoints(10) == (0,) + tuple(range(2, 11))
  assert dat.apgd_checkpoints(1) == (0, 1)


@pytest.mark.parametrize('loss', _LOSSES)
def test_output_in_ball_and_box(loss):
  params = _mlp_params()
  x0, y = _data(32)  # uniform in [0, 1]: many coordinates near the borders
  target = (y + 1) % _NUM_CLASSES if loss == 'dlr_targeted' else None
  for eps in (0.3, 8 / 255):
    x, info = _apgd_mlp(params, x0, y, jax.random.key(3), eps, target,
                        loss=loss)
    assert float(jnp.max(jnp.abs(x - x0))) <= eps + 1e-6
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert info.loss.shape == info.success.shape == info.best_loss.shape
    np.testing.assert_array_equal(info.success, _wrong(params, x, y))
  x, info = _apgd_t_mlp(params, x0, y, jax.random.key(3), 0.3)
  assert float(jnp.max(jnp.abs(x - x0))) <= 0.3 + 1e-6
  assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
  np.testing.assert_array_equal(info.success, _wrong(params, x, y))


def test_linear_model_reaches_analytic_optimum():
  """Two classes, logits linear in x: the CE of class 0 grows with
  ``<w1 - w0, x>``, so its maximum over the ball is at
  ``x0 + eps * sign(w1 - w0)``. A large bias keeps class 0 predicted there, so
  the returned point is the highest-loss one."""
  rng = np.random.default_rng(0)
  d = int(np.prod(_SHAPE))
  w = jnp.float32(rng.normal(size=(d, 2)))
  x0 = jnp.float32(rng.uniform(0.3, 0.7, (6,) + _SHAPE))
  y = jnp.zeros(6, jnp.int32)
  eps = 0.2
  optimum = x0 + eps * jnp.sign(w[:, 1] - w[:, 0]).reshape(_SHAPE)
  # Margin of class 0 at the optimum: 2 (large enough to stay predicted, small
  # enough that the CE and its gradient do not underflow).
  margin = optimum.reshape(6, -1) @ (w[:, 1] - w[:, 0])
  b = jnp.stack([jnp.max(margin) + 2.0, 0.0])
  logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w + b
  best = dat.xent(logits_fn(optimum), y)
  assert np.all(best > 1e-3)
  for random_start in (True, False):
    x, info = dat.apgd(logits_fn, x0, y, jax.random.key(0), eps=eps,
                       num_steps=10, random_start=random_start)
    np.testing.assert_allclose(x, optimum, rtol=0, atol=1e-6)
    np.testing.assert_allclose(info.loss, best, rtol=1e-4)
    np.testing.assert_allclose(info.best_loss, best, rtol=1e-4)
    assert not np.any(info.success)


def test_large_eps_fools_unsecured_mlp():
  params = _mlp_params()
  x0, _ = _data(32, low=0.2, high=0.8)
  y = jnp.argmax(_mlp(params, x0), -1)  # clean accuracy 100 %
  for loss in ('ce', 'dlr'):
    x, info = _apgd_mlp(params, x0, y, jax.random.key(0), 0.5, loss=loss)
    assert np.all(info.success), loss
    assert np.all(_wrong(params, x, y)), loss
  x, info = _apgd_t_mlp(params, x0, y, jax.random.key(0), 0.5)
  assert np.all(info.success) and np.all(_wrong(params, x, y))


def test_clean_misclassified_returned_unchanged():
  params = _mlp_params()
  x0, _ = _data(32, low=0.2, high=0.8)
  pred = jnp.argmax(_mlp(params, x0), -1)
  y = jnp.where(jnp.arange(32) % 2 == 0, pred, (pred + 1) % _NUM_CLASSES)
  x, info = _apgd_mlp(params, x0, y, jax.random.key(0), 0.05)
  odd = np.arange(32) % 2 == 1
  np.testing.assert_array_equal(np.asarray(x)[odd], np.asarray(x0)[odd])
  assert np.all(np.asarray(info.success)[odd])
  np.testing.assert_allclose(np.asarray(info.loss)[odd],
                             np.asarray(dat.xent(_mlp(params, x0), y))[odd],
                             rtol=1e-5)


def test_worst_case_combination():
  params = _mlp_params()
  x0, _ = _data(32, low=0.2, high=0.8)
  y = jnp.argmax(_mlp(params, x0), -1)
  eps, key = 0.08, jax.random.key(1)
  correct = {}
  for loss in ('ce', 'dlr'):
    x, _ = _apgd_mlp(params, x0, y, key, eps, loss=loss)
    correct[f'apgd-{loss}'] = ~_wrong(params, x, y)
  x, _ = _apgd_t_mlp(params, x0, y, key, eps)
  correct['apgd-t'] = ~_wrong(params, x, y)
  worst = dat.worst_case(correct)
  assert worst.dtype == bool and worst.shape == (32,)
  for name, c in correct.items():
    assert worst.mean() <= c.mean(), name
    assert not np.any(worst & ~c), name
  # At this eps the attacks fool some but not all examples.
  assert 0 < worst.mean() < 1
  np.testing.assert_array_equal(
      dat.worst_case({'a': [True, True, False, True],
                      'b': np.array([1, 0, 1, 1])}),
      [True, False, False, True])
  with pytest.raises(ValueError, match='no attacks'):
    dat.worst_case({})
  with pytest.raises(ValueError, match='differ in shape'):
    dat.worst_case({'a': [True], 'b': [True, False]})


def test_same_key_same_result_and_traced_eps():
  params = _mlp_params()
  x0, y = _data(8)
  logits_fn = functools.partial(_mlp, params)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def attack(key, eps):
    return dat.apgd(logits_fn, x0, y, key, eps=eps, num_steps=10)

  a = attack(jax.random.key(5), 0.1)
  b = attack(jax.random.key(5), 0.1)
  chex.assert_trees_all_equal(a, b)
  c = attack(jax.random.key(6), 0.1)
  assert not np.array_equal(a[0], c[0])
  # Another eps: same trace.
  x, _ = attack(jax.random.key(5), 0.2)
  assert float(jnp.max(jnp.abs(x - x0))) <= 0.2 + 1e-6
  # Per-example eps: each example keeps its own ball.
  eps_b = jnp.linspace(0.01, 0.2, 8)
  x, _ = dat.apgd(logits_fn, x0, y, jax.random.key(5), eps=eps_b,
                  num_steps=10)
  dist = jnp.max(jnp.abs(x - x0).reshape(8, -1), axis=1)
  assert bool(jnp.all(dist <= eps_b + 1e-6))


def _reference_apgd(params, x0, y, x_start, eps, num_steps, loss_fn,
                    rho=0.75):
  """The reference ``attack_single_run`` (Linf) as a numpy loop.

  A transcription of ``APGDAttack.attack_single_run`` of the authors'
  ``autopgd_base.py`` with its loss history and ``check_oscillation``. One
  deliberate difference, as in :mod:`dynamic_at._apgd`: the first loss
  comparison is with the start point's loss, where the reference reads an
  unset history entry through index -1.

  Returns:
    ``(x_best, loss_best, step_size)`` after ``num_steps`` iterations.
  """
  def grad_fn(x_):
    def summed(xx):
      per = loss_fn(_mlp(params, xx), y)
      return jnp.sum(per), per
    g, per = jax.grad(summed, has_aux=True)(jnp.asarray(x_))
    return np.array(per, np.float64), np.array(g)
  x0 = np.asarray(x0)
  batch = x0.shape[0]
  n_iter_2 = max(int(0.22 * num_steps), 1)
  n_iter_min = max(int(0.06 * num_steps), 1)
  size_decr = max(int(0.03 * num_steps), 1)

  x_adv = np.array(x_start)
  loss_indiv, grad = grad_fn(x_adv)
  loss_steps = np.zeros((num_steps + 1, batch))  # [0]: the start point
  loss_steps[0] = loss_indiv
  x_best, grad_best, loss_best = x_adv.copy(), grad.copy(), loss_indiv.copy()
  step = np.full(batch, 2.0 * eps, np.float32)
  x_old = x_adv.copy()
  k, counter3 = n_iter_2, 0
  loss_best_last_check = loss_best.copy()
  reduced_last_check = np.ones(batch, bool)

  def proj(v):
    return np.clip(np.clip(v, x0 - np.float32(eps), x0 + np.float32(eps)),
                   0.0, 1.0)

  for i in range(num_steps):
    grad2 = x_adv - x_old
    x_old = x_adv.copy()
    a = np.float32(0.75 if i > 0 else 1.0)
    s = step.reshape(-1, 1, 1, 1)
    x1 = proj(x_adv + s * np.sign(grad))
    x_adv = proj(x_adv + (x1 - x_adv) * a + grad2 * (np.float32(1) - a))
    loss_indiv, grad = grad_fn(x_adv)
    loss_steps[i + 1] = loss_indiv
    ind = loss_indiv > loss_best
    x_best[ind], grad_best[ind], loss_best[ind] = (
        x_adv[ind], grad[ind], loss_indiv[ind])
    counter3 += 1
    if counter3 == k:
      t = np.zeros(batch)
      for c5 in range(k):
        t += loss_steps[i + 1 - c5] > loss_steps[i - c5]
      fl_osc = t <= k * rho
      fl_no_impr = ~reduced_last_check & (loss_best_last_check >= loss_best)
      fl_osc = fl_osc | fl_no_impr
      reduced_last_check = fl_osc.copy()
      loss_best_last_check = loss_best.copy()
      step[fl_osc] /= 2.0
      x_adv[fl_osc] = x_best[fl_osc]
      grad[fl_osc] = grad_best[fl_osc]
      k = max(k - size_decr, n_iter_min)
      counter3 = 0
  return x_best, loss_best, step


@pytest.mark.parametrize('loss', ['ce', 'dlr'])
def test_matches_reference_loop(loss):
  params = _mlp_params(1)
  x0, _ = _data(32, low=0.2, high=0.8, seed=1)
  y = jnp.argmax(_mlp(params, x0), -1)
  eps, num_steps = 0.05, 40
  loss_fn = dat.xent if loss == 'ce' else dat.dlr_loss
  x, info = _apgd_mlp(params, x0, y, None, eps, loss=loss, num_steps=num_steps,
                      random_start=False)
  x_best, loss_best, step = _reference_apgd(params, x0, y, x0, eps, num_steps,
                                            loss_fn)
  # Some examples had their step halved more often than others.
  assert len(set(step.tolist())) > 1
  np.testing.assert_allclose(info.best_loss, loss_best, rtol=1e-4, atol=1e-5)
  robust = ~np.asarray(info.success)
  assert robust.sum() >= 8
  np.testing.assert_allclose(np.asarray(x)[robust], x_best[robust], rtol=0,
                             atol=1e-5)


def test_targeted_uses_top_other_classes():
  params = _mlp_params()
  x0, _ = _data(32, low=0.2, high=0.8)
  y = jnp.argmax(_mlp(params, x0), -1)
  eps, key = 0.05, jax.random.key(2)
  x, info = _apgd_t_mlp(params, x0, y, key, eps, num_targets=1)
  # One target: the runner-up class, with the first split key.
  logits = _mlp(params, x0)
  runner_up = jnp.argsort(logits, axis=-1)[:, -2]
  x1, info1 = _apgd_mlp(params, x0, y, jax.random.split(key, 1)[0], eps,
                        runner_up, loss='dlr_targeted')
  np.testing.assert_allclose(x, x1, rtol=0, atol=1e-6)
  np.testing.assert_allclose(info.best_loss, info1.best_loss, rtol=1e-5)
  # More targets never fool fewer examples.
  _, info4 = _apgd_t_mlp(params, x0, y, key, eps, num_targets=4)
  assert not np.any(np.asarray(info.success) & ~np.asarray(info4.success))


def test_argument_errors():
  x0, y = _data(2)
  fn = functools.partial(_mlp, _mlp_params())
  with pytest.raises(ValueError, match='PRNG key'):
    dat.apgd(fn, x0, y, None, eps=0.1, num_steps=2)
  with pytest.raises(ValueError, match='needs target_class'):
    dat.apgd(fn, x0, y, jax.random.key(0), eps=0.1, loss='dlr_targeted')
  with pytest.raises(ValueError, match='loss must be'):
    dat.apgd(fn, x0, y, jax.random.key(0), eps=0.1, loss='xent')
  with pytest.raises(ValueError, match='num_targets'):
    dat.apgd_targeted(fn, x0, y, jax.random.key(0), eps=0.1, num_targets=5)
