"""Tests of the train state, the optimiser and the four methods' step."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dynamic_at import _attacks
from dynamic_at import parallel
from dynamic_at import train
from tests import dp_worker


def _state(lr=0.05):
  tx = train.make_optimizer(learning_rate=lr, momentum=0.9, weight_decay=1e-4,
                            steps_per_epoch=100)
  return train.create_train_state(dp_worker.TinyCNN(), jax.random.key(0),
                                  dp_worker.SHAPE, tx)


def _ap(num_steps=5, c_stop=None, eps=0.1):
  return train.AttackParams.make(eps, eps / 4, num_steps, c_stop)


@pytest.mark.parametrize('method', train.METHODS)
def test_each_method_decreases_its_training_loss(method):
  mesh = parallel.make_mesh()
  step = jax.jit(train.make_train_step(method, mesh))
  state = parallel.replicate(_state(), mesh)
  batch = parallel.global_batch(dp_worker.fixed_batch(), mesh)
  ap = _ap(3, 0.5 if method == 'dynamic' else None)
  losses = []
  for _ in range(12):
    state, metrics = step(state, batch, jax.random.key(1), ap)
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.8 * losses[0], losses
  assert int(state.step) == 12


def test_unsecured_never_calls_the_attack(monkeypatch):
  calls = []
  real = _attacks.pgd

  def counting(*args, **kwargs):
    calls.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(_attacks, 'pgd', counting)
  batch = dp_worker.fixed_batch()
  _, metrics = jax.jit(train.make_train_step('unsecured'))(
      _state(), batch, jax.random.key(1), _ap())
  assert not calls
  np.testing.assert_array_equal(metrics['steps'], 0)
  jax.jit(train.make_train_step('standard'))(_state(), batch,
                                             jax.random.key(1), _ap())
  assert calls


def test_standard_runs_all_steps_and_dynamic_limits():
  batch = dp_worker.fixed_batch()
  step = jax.jit(train.make_train_step('standard'))
  _, m = step(_state(), batch, jax.random.key(1), _ap(7))
  np.testing.assert_array_equal(m['steps'], np.full(16, 7))
  assert int(m['iters_max']) == 7
  dyn = jax.jit(train.make_train_step('dynamic'))
  # A huge c_t: every example is frozen after its first step.
  _, m = dyn(_state(), batch, jax.random.key(1), _ap(7, 1e9))
  np.testing.assert_array_equal(m['steps'], np.ones(16))
  assert int(m['iters_max']) == 1
  # c_t = 0 behaves like Standard: FOSC is 0 only where a further step could
  # not move the example anyway.
  s_std, m_std = step(_state(), batch, jax.random.key(1), _ap(7))
  s_dyn, m_dyn = dyn(_state(), batch, jax.random.key(1), _ap(7, 0.0))
  chex.assert_trees_all_close(s_std.params, s_dyn.params, rtol=1e-6,
                              atol=1e-7)
  np.testing.assert_allclose(m_std['fosc'], m_dyn['fosc'], rtol=1e-5)


def test_step_traced_once_across_epochs():
  mesh = parallel.make_mesh()
  fn = chex.assert_max_traces(train.make_train_step('dynamic', mesh), n=1)
  step = jax.jit(fn)
  state = parallel.replicate(_state(), mesh)
  batch = parallel.global_batch(dp_worker.fixed_batch(), mesh)
  for epoch, k in enumerate((10, 10, 3, 7)):
    c_t = train.attack_params_for_epoch(
        'dynamic', epoch, eps=0.1 * (epoch + 1) / 4, step_size=0.025,
        num_steps=k, c_max=0.5, t_prime=3)
    state, _ = step(state, batch, jax.random.key(1), c_t, epoch > 0)


def test_attack_params_for_epoch():
  kw = dict(eps=0.3, step_size=0.075, num_steps=10, c_max=0.5, t_prime=40)
  dyn = [train.attack_params_for_epoch('dynamic', t, **kw) for t in (0, 20, 40,
                                                                   49)]
  np.testing.assert_allclose([float(a.c_stop) for a in dyn],
                             [0.5, 0.25, 0.0, 0.0])
  std = train.attack_params_for_epoch('standard', 3, **kw)
  assert int(std.num_steps) == 10 and float(std.c_stop) == -np.inf
  cur = train.attack_params_for_epoch('curriculum', 3, curriculum_steps=4,
                                      **kw)
  assert int(cur.num_steps) == 4 and float(cur.c_stop) == -np.inf
  with pytest.raises(ValueError, match='method'):
    train.attack_params_for_epoch('madry', 0, **kw)
  with pytest.raises(ValueError, match='method'):
    train.make_train_step('madry')


def test_curriculum_schedule():
  k = 1
  for acc in (0.3, 0.6, 0.4, 0.7, 0.9):
    k = train.curriculum_num_steps(k, acc, threshold=0.5, max_steps=3)
  assert k == 3
  assert train.curriculum_num_steps(3, 0.99, threshold=0.5, max_steps=3) == 3


def test_optimizer_schedule_weight_decay_and_keras_decay():
  params = {'w': jnp.ones(())}
  grads = {'w': jnp.ones(())}

  def lrs(tx, steps):
    s = tx.init(params)
    out = []
    for _ in range(steps):
      u, s = tx.update(grads, s, params)
      out.append(-float(u['w']))
    return np.asarray(out)

  tx = train.make_optimizer(learning_rate=0.01, momentum=0.0, weight_decay=0.0,
                            steps_per_epoch=2, lr_drop_epochs=(2, 4))
  np.testing.assert_allclose(lrs(tx, 10), [0.01] * 4 + [0.001] * 4 +
                             [0.0001] * 2, rtol=1e-6)
  # Weight decay adds wd * param to the gradient.
  tx = train.make_optimizer(learning_rate=0.1, momentum=0.0, weight_decay=0.5,
                            steps_per_epoch=2)
  np.testing.assert_allclose(lrs(tx, 1), [0.1 * 1.5], rtol=1e-6)
  # The authors' Keras decay: lr / (1 + decay * iteration).
  tx = train.make_optimizer(learning_rate=0.1, momentum=0.0, weight_decay=0.0,
                            steps_per_epoch=2, keras_decay=0.5)
  np.testing.assert_allclose(lrs(tx, 3), [0.1, 0.1 / 1.5, 0.1 / 2.0],
                             rtol=1e-6)
  assert isinstance(tx, optax.GradientTransformation)


def test_deviation_flags_change_the_step():
  batch = dp_worker.fixed_batch()
  ap = _ap(3)
  base = train.make_train_step('standard')
  s0, m0 = jax.jit(base)(_state(), batch, jax.random.key(1), ap)
  s1, m1 = jax.jit(base)(_state(), batch, jax.random.key(1), ap, True)
  # Loss weighting reweights the gradient, not the attack.
  np.testing.assert_array_equal(m0['fosc'], m1['fosc'])
  assert not np.allclose(s0.params['Dense_0']['kernel'],
                         s1.params['Dense_0']['kernel'])
  centred = train.make_train_step('standard', fosc_centre_random_start=True)
  _, m2 = jax.jit(centred)(_state(), batch, jax.random.key(1), ap)
  assert not np.allclose(m0['fosc'], m2['fosc'])


def test_unclipped_random_start_changes_only_starts_outside_the_box():
  # Images at 0 and 1 put half of every start outside [0, 1]: the authors'
  # unclipped start then takes its first gradient elsewhere.
  batch = dp_worker.fixed_batch()
  ap = _ap(1)
  clipped = train.make_train_step('standard')
  unclipped = train.make_train_step('standard', unclipped_random_start=True)
  edges = dict(batch, image=jnp.round(batch['image']))
  _, m0 = jax.jit(clipped)(_state(), edges, jax.random.key(1), ap)
  _, m1 = jax.jit(unclipped)(_state(), edges, jax.random.key(1), ap)
  assert not np.allclose(m0['fosc'], m1['fosc'])
  # Strictly inside the box by more than eps, no start is clipped, so the
  # two steps are the same.
  inner = dict(batch, image=0.5 + 0.1 * (batch['image'] - 0.5))
  s0, m0 = jax.jit(clipped)(_state(), inner, jax.random.key(1), ap)
  s1, m1 = jax.jit(unclipped)(_state(), inner, jax.random.key(1), ap)
  np.testing.assert_array_equal(m0['fosc'], m1['fosc'])
  chex.assert_trees_all_equal(s0.params, s1.params)
