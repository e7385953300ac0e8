"""Tests of the method registry and of TRADES, MART and FAT against references
written from their authors' code (tests/methods_reference.py)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dynamic_at import _attacks
from dynamic_at import _losses
from dynamic_at import methods
from dynamic_at import train
from tests import methods_reference as ref
from tests import tiny_mlp


class TinyNet(nn.Module):
  """Dense -> tanh -> Dense: no BatchNorm, so a training step is easy to
  compute by hand."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(tiny_mlp.NUM_CLASSES)(jnp.tanh(nn.Dense(16)(x) * 2.0))


def _logits(seed=3, n=12):
  rng = np.random.default_rng(seed)
  return (np.float32(rng.normal(size=(n, 5)) * 2),
          np.float32(rng.normal(size=(n, 5)) * 2),
          np.int32(rng.integers(0, 5, n)))


# ---------------------------------------------------------------------------
# Losses against the references
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('beta', [0.0, 1.0, 6.0])
def test_trades_loss_equals_reference(beta):
  nat, adv, y = _logits()
  per_example = (_losses.xent(nat, y) +
                 beta * _losses.kl_from_logits(adv, nat))
  np.testing.assert_allclose(float(jnp.mean(per_example)),
                             ref.trades_loss(nat, adv, y, beta), rtol=2e-6)


def test_trades_kl_terms_and_beta():
  nat, adv, y = _logits(4)
  kl = np.asarray(_losses.kl_from_logits(adv, nat))
  # KL >= 0, 0 for the same logits, and beta scales only the KL term.
  assert np.all(kl > 0)
  np.testing.assert_allclose(_losses.kl_from_logits(nat, nat), 0, atol=1e-6)
  np.testing.assert_allclose(
      ref.trades_loss(nat, adv, y, 6.0) - ref.trades_loss(nat, adv, y, 1.0),
      5.0 * kl.mean(), rtol=1e-5)
  # kl_to_probs takes the target distribution directly (the attack's loss).
  np.testing.assert_allclose(
      _losses.kl_to_probs(adv, jax.nn.softmax(nat)), kl, rtol=1e-6)


@pytest.mark.parametrize('beta', [0.0, 6.0])
def test_mart_loss_equals_reference(beta):
  nat, adv, y = _logits(5, 32)
  got = float(jnp.mean(_losses.mart(adv, nat, y, beta)))
  np.testing.assert_allclose(got, ref.mart_loss(nat, adv, y, beta),
                             rtol=2e-6)


def test_mart_picks_the_best_wrong_class():
  # The true class is the most probable: the boosted term uses the second.
  adv = np.float32([[5.0, 1.0, 3.0, 0.0, -1.0]])
  nat = np.zeros((1, 5), np.float32)
  p = np.asarray(jax.nn.softmax(adv))[0]
  want = -np.log(p[0]) - np.log(1.0001 - p[2] + 1e-12)
  np.testing.assert_allclose(_losses.mart(adv, nat, np.int32([0]), 0.0)[0],
                             want, rtol=1e-6)
  # ... and when it is not, the most probable class.
  want = -np.log(p[1]) - np.log(1.0001 - p[0] + 1e-12)
  np.testing.assert_allclose(_losses.mart(adv, nat, np.int32([1]), 0.0)[0],
                             want, rtol=1e-6)


# ---------------------------------------------------------------------------
# The attacks: TRADES' KL ascent, FAT's early stop
# ---------------------------------------------------------------------------


def _mlp():
  params = tiny_mlp.mlp_params(1)
  return lambda x: tiny_mlp.mlp(params, x)


def test_trades_attack_increases_the_kl_and_equals_reference():
  logits_fn = _mlp()
  x0, _ = tiny_mlp.data(32, seed=2, low=0.1, high=0.9)
  target = jax.nn.softmax(logits_fn(x0))
  start = x0 + 0.001 * jax.random.normal(jax.random.key(0), x0.shape)
  kw = dict(eps=0.1, step_size=0.01, num_steps=10)
  x_adv, info = _attacks.pgd(logits_fn, x0, target, None, random_start=False,
                             x_start=start, clip_start=False, loss='kl',
                             stop='none', **kw)
  kl = lambda x: np.asarray(_losses.kl_to_probs(logits_fn(x), target))
  assert np.mean(kl(x_adv)) > 10 * np.mean(kl(start))
  assert np.mean(kl(x_adv) > kl(start)) > 0.9
  np.testing.assert_array_equal(info.steps, 10)
  grad_fn = jax.grad(lambda x: jnp.sum(_losses.kl_to_probs(logits_fn(x),
                                                           target)))
  want = ref.sign_steps(grad_fn, np.asarray(x0), np.asarray(start),
                        step_size=0.01, epsilon=0.1, perturb_steps=10)
  np.testing.assert_allclose(x_adv, want, atol=1e-6)


def _fat_data(logits_fn):
  """Examples labelled as the model classifies them (so that they start
  correct and become wrong at different steps)."""
  x0, _ = tiny_mlp.data(64, seed=7, low=0.2, high=0.8)
  return x0, jnp.argmax(logits_fn(x0), -1).astype(jnp.int32)


@pytest.mark.parametrize('tau', [0, 1, 2])
def test_fat_stopping_equals_earlystop_reference(tau):
  logits_fn = _mlp()
  x0, y = _fat_data(logits_fn)
  start = _attacks.random_start_point(jax.random.key(3), x0, 0.15)
  kw = dict(eps=0.15, step_size=0.03, num_steps=10)
  x_adv, info = _attacks.pgd(logits_fn, x0, y, None, random_start=False,
                             x_start=start, stop='fat', tau=tau, **kw)
  grad_fn = lambda x, t: _attacks.input_grad(logits_fn, x, t)[1]
  want_x, want_steps = ref.fat_earlystop(
      logits_fn, grad_fn, np.asarray(x0), np.asarray(y), np.asarray(start),
      step_size=0.03, epsilon=0.15, perturb_steps=10, tau=tau)
  np.testing.assert_array_equal(info.steps, want_steps)
  np.testing.assert_allclose(x_adv, want_x, atol=1e-6)
  # The test means something: some examples stop early, at different steps.
  assert 0 < np.sum(want_steps < 10) < 64 and len(set(want_steps)) > 2
  # Compaction changes nothing but the cost.
  x_c, info_c = _attacks.pgd(logits_fn, x0, y, None, random_start=False,
                             x_start=start, stop='fat', tau=tau, compact=8,
                             **kw)
  np.testing.assert_array_equal(info_c.steps, want_steps)
  np.testing.assert_allclose(x_c, want_x, atol=1e-6)
  assert int(info_c.evaluated) < int(info.evaluated) == 64 * (
      int(info.num_iters) + 1)


def test_fat_larger_tau_never_stops_sooner():
  logits_fn = _mlp()
  x0, y = _fat_data(logits_fn)
  steps = [np.asarray(_attacks.pgd(
      logits_fn, x0, y, jax.random.key(1), eps=0.15, step_size=0.03,
      num_steps=10, stop='fat', tau=t)[1].steps) for t in (0, 1, 2, 3)]
  for a, b in zip(steps, steps[1:]):
    assert np.all(a <= b)
  # With tau 0 an example misclassified at its start takes no step at all.
  assert np.any(steps[0] == 0) and np.all(steps[3] >= np.minimum(steps[0] + 3,
                                                                 10))


def test_step_noise_is_per_example_and_off_by_default():
  logits_fn = _mlp()
  x0, y = tiny_mlp.data(8, seed=1, low=0.3, high=0.7)
  kw = dict(eps=0.1, step_size=0.02, num_steps=3, random_start=False,
            stop='none')
  plain, _ = _attacks.pgd(logits_fn, x0, y, None, **kw)
  keys = jax.random.split(jax.random.key(5), 8)
  noisy, _ = _attacks.pgd(logits_fn, x0, y, None, step_noise=0.001,
                          noise_key=keys, **kw)
  diff = np.abs(np.asarray(noisy) - np.asarray(plain))
  assert 0 < diff.max() <= 0.05
  # Example i's noise depends on its own key only.
  half, _ = _attacks.pgd(logits_fn, x0[:4], y[:4], None, step_noise=0.001,
                         noise_key=keys[:4], **kw)
  np.testing.assert_array_equal(half, noisy[:4])
  with pytest.raises(ValueError, match='noise_key'):
    _attacks.pgd(logits_fn, x0, y, None, step_noise=0.001, **kw)


# ---------------------------------------------------------------------------
# One training step of each new method, by hand
# ---------------------------------------------------------------------------

_LR = 0.1
_EPS, _STEP, _K = 0.1, 0.025, 4


def _tiny_state():
  tx = train.make_optimizer(learning_rate=_LR, momentum=0.0, weight_decay=0.0,
                            steps_per_epoch=10)
  return train.create_train_state(TinyNet(), jax.random.key(0),
                                  tiny_mlp.SHAPE, tx)


def _batch():
  x0, y = tiny_mlp.data(16, seed=9, low=0.1, high=0.9)
  return {'image': x0, 'label': y}


def _by_hand(name, beta, tau=0):
  """The step of ``name`` computed from the references: the start point as
  the step draws it, the authors' attack loop, their loss, plain SGD."""
  state, batch = _tiny_state(), _batch()
  x0, y = np.asarray(batch['image']), np.asarray(batch['label'])
  method = methods.get_method(name)
  key = jax.random.fold_in(jax.random.key(1), 0)
  start = np.asarray(train.start_point(method.start, key, batch['image'],
                                       _EPS))
  variables = lambda p: {'params': p, 'batch_stats': {}}
  infer = lambda x: state.apply_fn(variables(state.params), x)
  if name == 'trades':
    target = jax.nn.softmax(infer(x0))
    grad_fn = jax.grad(lambda x: jnp.sum(_losses.kl_to_probs(infer(x),
                                                             target)))
    x_adv = ref.sign_steps(grad_fn, x0, start, step_size=_STEP, epsilon=_EPS,
                           perturb_steps=_K)
    loss = ref.trades_loss
  elif name == 'mart':
    grad_fn = jax.grad(lambda x: jnp.sum(_losses.xent(infer(x), y)))
    x_adv = ref.sign_steps(grad_fn, x0, start, step_size=_STEP, epsilon=_EPS,
                           perturb_steps=_K)
    loss = ref.mart_loss
  else:  # fat
    grad_fn = lambda x, t: jax.grad(
        lambda x_: jnp.sum(_losses.xent(infer(x_), t)))(x)
    x_adv, _ = ref.fat_earlystop(infer, grad_fn, x0, y, start,
                                 step_size=_STEP, epsilon=_EPS,
                                 perturb_steps=_K, tau=tau)
    loss = lambda nat, adv, y_, beta_: ref._cross_entropy(adv, y_).mean()  # pylint: disable=protected-access

  # The reference loss (float64 NumPy) has no gradient: the gradient is
  # JAX's of an expression checked to equal the reference's value here.
  logits = lambda p, x: state.apply_fn(variables(p), x)
  if name == 'fat':
    jloss = lambda p: jnp.mean(_losses.xent(logits(p, x_adv), y))
  elif name == 'trades':
    jloss = lambda p: jnp.mean(_losses.xent(logits(p, x0), y) + beta *
                               _losses.kl_from_logits(logits(p, x_adv),
                                                      logits(p, x0)))
  else:
    jloss = lambda p: jnp.mean(_losses.mart(logits(p, x_adv), logits(p, x0),
                                            y, beta))
  # The JAX loss is the reference's at these params (so its gradient is the
  # gradient of the authors' loss).
  np.testing.assert_allclose(
      float(jloss(state.params)),
      loss(np.asarray(logits(state.params, x0)),
           np.asarray(logits(state.params, x_adv)), y, beta), rtol=1e-5)
  grads = jax.grad(jloss)(state.params)
  return x_adv, jax.tree.map(lambda p, g: p - _LR * g, state.params, grads)


@pytest.mark.parametrize('name,tau', [('trades', 0), ('mart', 0), ('fat', 0),
                                      ('fat', 2)])
def test_one_training_step_equals_the_step_by_hand(name, tau):
  beta = 6.0
  want_x, want_params = _by_hand(name, beta, tau)
  step = jax.jit(train.make_train_step(name, beta=beta, compact=False))
  ap = train.AttackParams.make(_EPS, _STEP, _K, tau=tau)
  state, metrics = step(_tiny_state(), _batch(), jax.random.key(1), ap)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               state.params, want_params)
  # The counted cost: the attack's evaluations per example and the training
  # passes.
  assert float(metrics['train_passes']) == (2 if name != 'fat' else 1)
  assert float(metrics['clean_forwards']) == (1 if name == 'trades' else 0)
  np.testing.assert_allclose(float(metrics['grad_evals']),
                             np.mean(np.asarray(metrics['steps']) + 1))
  assert float(metrics['attack_rows']) == int(metrics['iters_max']) + 1
  if name != 'fat':
    np.testing.assert_array_equal(metrics['steps'], _K)


# ---------------------------------------------------------------------------
# Schedules and the registry
# ---------------------------------------------------------------------------


def test_fat_tau_schedule():
  # FAT.py: tau 0 in its epochs 1-50, 1 in 51-90, 2 after (from 1); ours
  # count from 0.
  assert [methods.fat_tau(e, 120) for e in (0, 49, 50, 89, 90, 119)] == [
      0, 0, 1, 1, 2, 2]
  assert methods.fat_tau_epochs(120) == (50, 90)
  assert methods.fat_tau_epochs(50) == (21, 38)
  assert methods.fat_tau_epochs(24) == (10, 18)
  assert [methods.fat_tau(e, 50, (3, 5)) for e in range(7)] == [
      0, 0, 0, 1, 1, 2, 2]
  ap = train.attack_params_for_epoch('fat', 40, eps=0.3, step_size=0.075,
                                     num_steps=10, num_epochs=50,
                                     fat_tau_epochs=())
  assert (int(ap.tau), int(ap.num_steps), float(ap.c_stop)) == (
      2, 10, -np.inf)


def test_registry_lists_every_method_once():
  assert tuple(methods.METHODS) == ('unsecured', 'standard', 'curriculum',
                                    'dynamic', 'fat', 'trades', 'mart')
  assert train.METHODS == tuple(methods.METHODS)
  for name, m in methods.METHODS.items():
    assert m.name == name and m.description
    assert methods.get_method(m) is m
  with pytest.raises(ValueError, match='already registered'):
    methods.register_method(methods.STANDARD)
  with pytest.raises(ValueError, match="method must be one of .*'mart'"):
    methods.get_method('madry')
  with pytest.raises(ValueError, match='start must be one of'):
    methods.register_method(dataclasses.replace(methods.STANDARD,
                                                name='x', start='gaussian'))


def test_a_new_method_is_its_definition(monkeypatch):
  """A method defined outside the library trains through the one step: here
  Standard with the TRADES start and a fixed k of 2, registered by value."""
  monkeypatch.setattr(methods, 'METHODS', dict(methods.METHODS))
  mine = methods.register_method(methods.Method(
      'pgd2_normal_start', 'PGD-2 from x + 0.001 N(0, 1)',
      lambda epoch, eps, step, settings, state: methods.AttackParams.make(
          eps, step, 2), methods.xent_train_loss, start='normal'))
  ap = train.attack_params_for_epoch('pgd2_normal_start', 0, eps=0.1,
                                     step_size=0.025)
  step = jax.jit(train.make_train_step('pgd2_normal_start'))
  state, metrics = step(_tiny_state(), _batch(), jax.random.key(1), ap)
  np.testing.assert_array_equal(metrics['steps'], 2)
  assert int(state.step) == 1 and mine.adversarial
