"""Tests of the train state, the optimiser and the four methods' step."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dynamic_at
from dynamic_at import _attacks  # patched where train calls it
from dynamic_at import fosc
from dynamic_at import models
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
  _, attacked = jax.jit(train.make_train_step('standard'))(
      _state(), batch, jax.random.key(1), _ap())
  assert calls
  # The same metrics as an attacked step (names, shapes, dtypes: the
  # training loop sums and saves them alike), with no PGD step and FOSC 0.
  shapes = lambda m: jax.tree.map(lambda a: (a.shape, a.dtype), m)
  assert shapes(metrics) == shapes(attacked)
  for name in ('steps', 'steps_max', 'iters_max', 'iters', 'steps_mean',
               'fosc'):
    np.testing.assert_array_equal(metrics[name], 0, err_msg=name)


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
  fields = lambda a: (a.eps.item(), a.step_size.item(), a.num_steps.item(),
                      a.c_stop.item())
  eps, step = np.float32(0.3).item(), np.float32(0.075).item()
  # Every method's eps, step size, K and stop threshold, exactly.
  assert fields(train.attack_params_for_epoch('unsecured', 3, **kw)) == (
      eps, step, 0, -np.inf)
  assert fields(train.attack_params_for_epoch('standard', 3, **kw)) == (
      eps, step, 10, -np.inf)
  assert fields(train.attack_params_for_epoch(
      'curriculum', 3, curriculum_steps=4, **kw)) == (eps, step, 4, -np.inf)
  assert fields(train.attack_params_for_epoch('dynamic', 20, **kw)) == (
      eps, step, 10, 0.25)
  with pytest.raises(ValueError, match='^curriculum needs curriculum_steps$'):
    train.attack_params_for_epoch('curriculum', 3, **kw)
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


def test_optimizer_applies_learning_rate_schedule():
  """make_optimizer's rate of update i is learning_rate_schedule(i), exactly
  (lr / 10 at each drop epoch, / (1 + decay * i) per iteration)."""
  params, grads = {'w': jnp.ones(())}, {'w': jnp.ones(())}
  kw = dict(steps_per_epoch=3, lr_drop_epochs=(1, 3), keras_decay=0.25)
  tx = train.make_optimizer(learning_rate=0.05, momentum=0.0,
                            weight_decay=0.0, **kw)
  schedule = train.learning_rate_schedule(0.05, **kw)
  s = tx.init(params)
  for i in range(12):
    u, s = tx.update(grads, s, params)
    assert -np.asarray(u['w']) == np.asarray(schedule(jnp.int32(i)))
    assert float(schedule(jnp.int32(i))) == pytest.approx(
        0.05 * 0.1 ** ((i >= 3) + (i >= 9)) / (1 + 0.25 * i), rel=1e-6)
  # The defaults: drops by 0.1, no per-iteration decay.
  plain = train.learning_rate_schedule(0.05, steps_per_epoch=3,
                                       lr_drop_epochs=(1,))
  np.testing.assert_allclose([float(plain(jnp.int32(i))) for i in range(6)],
                             [0.05] * 3 + [0.005] * 3, rtol=1e-6)


def test_optimizer_momentum_and_drop_factor():
  """SGD momentum carries the previous gradients (trace = g + m * trace,
  update = -rate * trace), and the rate drops by the given factor."""
  params = {'w': jnp.ones(())}
  tx = train.make_optimizer(learning_rate=0.1, momentum=0.9, weight_decay=0.0,
                            steps_per_epoch=1, lr_drop_epochs=(1,),
                            lr_drop_factor=0.5)
  s = tx.init(params)
  updates = []
  for g in (1.0, 2.0, -1.0):
    u, s = tx.update({'w': jnp.float32(g)}, s, params)
    updates.append(float(u['w']))
  trace2 = 2.0 + 0.9 * 1.0
  np.testing.assert_allclose(
      updates, [-0.1, -0.05 * trace2, -0.05 * (-1.0 + 0.9 * trace2)],
      rtol=1e-6)


def test_warmup_eps():
  assert [train.warmup_eps(t, 0.3, 3) for t in range(5)] == pytest.approx(
      [0.1, 0.2, 0.3, 0.3, 0.3])
  assert [train.warmup_eps(t, 0.3) for t in range(2)] == [0.3, 0.3]


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


# ------------------------------------------- steps computed by hand (#17) ----
#
# The MNIST CNN of the paper (conv + BatchNorm + ReLU + max-pool, twice, then
# two dense layers) on 8x8 inputs: the real model with BatchNorm, small.

_LR = 0.1
_EPS = 0.3


def _cnn_state():
  tx = train.make_optimizer(learning_rate=_LR, momentum=0.9, weight_decay=0.0,
                            steps_per_epoch=100)
  return train.create_train_state(models.MnistCNN(), jax.random.key(0),
                                  dp_worker.SHAPE, tx)


def _inference(state):
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  return lambda x: state.apply_fn(variables, x, train=False)


def _hand_start(state, x0, key, eps=_EPS):
  """The random start of the step at ``state.step``: the base key folded with
  the step, a uniform point of the eps-ball, clipped to [0, 1]."""
  return dynamic_at.random_start_point(jax.random.fold_in(key, state.step), x0,
                                       eps)


@jax.jit
def _hand_attack(state, x0, y, key, ap):
  """dynamic_at's PGD on the inference-mode model from the hand-drawn start
  (jitted: only to compile once instead of running op by op)."""
  return dynamic_at.pgd(_inference(state), x0, y, eps=ap.eps,
                        step_size=ap.step_size, num_steps=ap.num_steps,
                        c_stop=ap.c_stop, random_start=False,
                        x_start=_hand_start(state, x0, key, ap.eps))


@jax.jit
def _hand_sgd_step(state, x, y):
  """One optax SGD-with-momentum step (first step: momentum buffer 0) on the
  batch ``x`` in training mode; returns ``(params, batch_stats, logits)``."""

  def loss(params):
    logits, new = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
        mutable=['batch_stats'])
    return (optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(),
            (logits, new['batch_stats']))

  grads, (logits, batch_stats) = jax.grad(loss, has_aux=True)(state.params)
  sgd = optax.sgd(_LR, momentum=0.9)
  updates, _ = sgd.update(grads, sgd.init(state.params), state.params)
  return optax.apply_updates(state.params, updates), batch_stats, logits


def _max_abs_diff(a, b):
  return max(float(jnp.max(jnp.abs(u - v)))
             for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_step_trains_on_the_adversarial_batch_and_updates_batch_stats():
  """One Standard step of the BatchNorm CNN equals, by hand: dynamic_at's PGD
  from the start drawn with ``fold_in(key, step)``, then an SGD step on the
  adversarial batch in training mode, whose BatchNorm statistics become the
  state's. A step on the clean batch gives clearly different parameters."""
  state = _cnn_state()
  batch = dp_worker.fixed_batch()
  x0, y = jnp.asarray(batch['image']), jnp.asarray(batch['label'])
  key = jax.random.key(3)
  ap = train.AttackParams.make(_EPS, _EPS / 4, 5)
  new, metrics = jax.jit(train.make_train_step('standard'))(state, batch, key,
                                                            ap)
  x_adv, info = _hand_attack(state, x0, y, key, ap)
  np.testing.assert_array_equal(metrics['steps'], np.full(16, 5))
  np.testing.assert_allclose(metrics['fosc'], info.fosc, rtol=1e-4, atol=1e-5)
  assert float(jnp.max(jnp.abs(x_adv - x0))) > _EPS / 2  # a real attack
  params_adv, stats_adv, adv_logits = _hand_sgd_step(state, x_adv, y)
  params_clean, stats_clean, _ = _hand_sgd_step(state, x0, y)
  tol = dict(rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(new.params, params_adv, **tol)
  # The reported loss and accuracy: the training-mode logits' on the
  # adversarial batch, example by example (not, e.g., the share of one
  # class's labels, which this batch tells apart).
  np.testing.assert_allclose(
      metrics['loss'],
      optax.softmax_cross_entropy_with_integer_labels(adv_logits, y).mean(),
      rtol=1e-5)
  accuracy = float(jnp.mean(jnp.argmax(adv_logits, -1) == y))
  assert float(metrics['accuracy']) == accuracy
  flat = int(jnp.argmax(adv_logits))
  assert accuracy not in (float(jnp.mean(y == 0)), float(jnp.mean(y == flat)))
  assert _max_abs_diff(params_adv, params_clean) > 1e-3
  # BatchNorm statistics moved, to those of the adversarial batch.
  assert _max_abs_diff(new.batch_stats, state.batch_stats) > 1e-3
  chex.assert_trees_all_close(new.batch_stats, stats_adv, **tol)
  assert _max_abs_diff(stats_adv, stats_clean) > 1e-3
  assert int(new.step) == 1


def test_consecutive_steps_draw_different_random_starts():
  """With zero PGD steps the reported FOSC is that of the random start. Two
  consecutive steps with the same base key report the FOSC of starts drawn
  with ``fold_in(key, 0)`` and ``fold_in(key, 1)``: the key depends on the
  step. The same two parameter sets at the starts of the other step's key
  give different values, so a step-independent key would show."""
  state0 = _cnn_state()
  batch = dp_worker.fixed_batch()
  x0, y = jnp.asarray(batch['image']), jnp.asarray(batch['label'])
  key = jax.random.key(5)
  ap = train.AttackParams.make(_EPS, _EPS / 4, 0)
  step = jax.jit(train.make_train_step('standard'))
  state1, m0 = step(state0, batch, key, ap)
  _, m1 = step(state1, batch, key, ap)
  np.testing.assert_array_equal(m0['steps'], 0)

  def start_fosc(state, start):
    _, g = dynamic_at.input_grad(_inference(state), start, y)
    return fosc(start, x0, g, _EPS)

  starts = [_hand_start(s, x0, key) for s in (state0, state1)]
  assert float(jnp.min(jnp.max(jnp.abs(starts[0] - starts[1]),
                               axis=(1, 2, 3)))) > 0.01
  for m, state, start, other in ((m0, state0, starts[0], starts[1]),
                                 (m1, state1, starts[1], starts[0])):
    np.testing.assert_allclose(m['fosc'], start_fosc(state, start), rtol=1e-5,
                               atol=1e-6)
    assert not np.allclose(m['fosc'], start_fosc(state, other), rtol=1e-3)
    # ... and the step did not use the unfolded base key either.
    assert not np.allclose(m['fosc'], start_fosc(
        state, dynamic_at.random_start_point(key, x0, _EPS)), rtol=1e-3)


def _reference_fosc_pgd(logits_fn, x0, y, start, eps, alpha, num_steps,
                        c_stop):
  """Algorithm 1 step by step in numpy: every active example takes a
  sign-gradient step, is projected onto its eps-ball and [0, 1], and is
  frozen once the FOSC ``eps * ||g||_1 - <x - x0, g>`` of its new point is
  ``<= c_stop``. Returns ``(steps, fosc, checks)``: per example its steps
  and final FOSC, and every FOSC value the rule compared with ``c_stop``."""
  grad_fn = jax.jit(jax.grad(lambda x: dynamic_at.xent(logits_fn(x), y).sum()))
  x0 = np.asarray(x0, np.float64)
  x = np.asarray(start, np.float64)
  batch = x.shape[0]
  active = np.ones(batch, bool)
  steps = np.zeros(batch, np.int32)
  fosc_now = np.full(batch, np.nan)
  checks = []
  for _ in range(num_steps):
    if not active.any():
      break
    g = np.asarray(grad_fn(jnp.float32(x)), np.float64)
    for i in np.flatnonzero(active):
      xi = np.clip(x[i] + alpha * np.sign(g[i]), x0[i] - eps, x0[i] + eps)
      x[i] = np.clip(xi, 0.0, 1.0)
      steps[i] += 1
    g = np.asarray(grad_fn(jnp.float32(x)), np.float64)
    for i in np.flatnonzero(active):
      f = np.sum(eps * np.abs(g[i]) - (x[i] - x0[i]) * g[i])
      fosc_now[i] = f
      checks.append(f)
      if f <= c_stop:
        active[i] = False
  return steps, fosc_now, np.asarray(checks)


def test_dynamic_fosc_stop_rule_on_a_batchnorm_cnn():
  """Dynamic's per-example steps and FOSC equal a step-by-step reference of
  the stop rule on the BatchNorm CNN in inference mode (running statistics,
  made non-trivial by a first training step), from the step's random
  start."""
  batch = dp_worker.fixed_batch()
  x0, y = jnp.asarray(batch['image']), jnp.asarray(batch['label'])
  state = _cnn_state()
  state, _ = jax.jit(train.make_train_step('standard'))(
      state, batch, jax.random.key(9), train.AttackParams.make(_EPS, 0.1, 2))
  assert _max_abs_diff(state.batch_stats, _cnn_state().batch_stats) > 1e-3
  key = jax.random.key(4)
  start = _hand_start(state, x0, key)
  eps, alpha, k = _EPS, _EPS / 4, 8
  # An example's checks under a threshold are a prefix of its checks in plain
  # PGD (examples are independent): put c_t in the widest gap between the
  # middle half of plain PGD's FOSC values, so no decision is a near-tie.
  _, _, plain = _reference_fosc_pgd(_inference(state), x0, y, start, eps,
                                    alpha, k, -np.inf)
  values = np.sort(plain)
  mid = values[len(values) // 4:3 * len(values) // 4]
  i = int(np.argmax(np.diff(mid)))
  c_stop = float((mid[i] + mid[i + 1]) / 2)
  steps, ref_fosc, checks = _reference_fosc_pgd(_inference(state), x0, y,
                                                start, eps, alpha, k, c_stop)
  assert np.min(np.abs(checks - c_stop)) > 1e-4 * np.max(np.abs(plain))
  assert len(set(steps.tolist())) >= 3  # the rule acts at several steps
  _, m = jax.jit(train.make_train_step('dynamic'))(
      state, batch, key, train.AttackParams.make(eps, alpha, k, c_stop))
  np.testing.assert_array_equal(m['steps'], steps)
  np.testing.assert_allclose(m['fosc'], ref_fosc, rtol=1e-4, atol=1e-5)
  stopped = steps < k
  assert bool(np.all(np.asarray(m['fosc'])[stopped] <= c_stop))
  assert int(m['iters_max']) == steps.max()


def test_curriculum_threshold_is_strict():
  """k grows only when the accuracy is strictly above the threshold."""
  assert train.curriculum_num_steps(2, 0.5, threshold=0.5, max_steps=5) == 2
  above = float(np.nextafter(0.5, 1.0))
  assert train.curriculum_num_steps(2, above, threshold=0.5, max_steps=5) == 3
  assert train.curriculum_num_steps(2, 0.0, threshold=0.0, max_steps=5) == 2


def test_curriculum_k_follows_the_adversarial_training_accuracy():
  """The step's ``accuracy`` (what the run averages into ``train_accuracy``
  and passes to :func:`train.curriculum_num_steps`) is that of the
  training-mode logits on the adversarial batch. Labels are the model's own
  clean predictions, so the clean accuracy is 1 and would grow k; the
  adversarial accuracy is below the threshold and keeps it."""
  state = _cnn_state()
  batch = dp_worker.fixed_batch()
  x0 = jnp.asarray(batch['image'])
  _, _, clean_logits = _hand_sgd_step(state, x0, jnp.zeros(16, jnp.int32))
  y = jnp.argmax(clean_logits, -1).astype(jnp.int32)
  batch = dict(batch, label=np.asarray(y))
  key = jax.random.key(2)
  ap = train.AttackParams.make(_EPS, _EPS / 4, 3)
  _, m = jax.jit(train.make_train_step('curriculum'))(state, batch, key, ap)
  x_adv, _ = _hand_attack(state, x0, y, key, ap)
  _, _, adv_logits = _hand_sgd_step(state, x_adv, y)
  adv_acc = float(jnp.mean(jnp.argmax(adv_logits, -1) == y))
  assert float(m['accuracy']) == adv_acc
  assert adv_acc < 0.9
  threshold = 0.9
  assert train.curriculum_num_steps(3, 1.0, threshold=threshold,
                                    max_steps=5) == 4  # clean would grow k
  assert train.curriculum_num_steps(3, float(m['accuracy']),
                                    threshold=threshold, max_steps=5) == 3


def test_sharded_pgd_passes_its_settings_to_pgd(monkeypatch):
  """The per-device attack starts at the given point and passes on the FOSC
  centre, the start's clipping and compaction; its defaults are the
  paper's (centre on the clean example, clipped start) without compaction."""
  calls = []
  real = _attacks.pgd

  def spy(*args, **kwargs):
    calls.append(kwargs)
    return real(*args, **kwargs)

  monkeypatch.setattr(_attacks, 'pgd', spy)
  state = _state()
  x0 = jnp.full((4,) + dp_worker.SHAPE, 0.5)
  start = x0 + 0.05
  y = jnp.arange(4) % 2
  for attack in (train.sharded_pgd(None),
                 train.sharded_pgd(None, fosc_centre_random_start=True,
                                   compact=True, unclipped_random_start=True)):
    attack(state, x0, start, y, _ap(num_steps=2))
  default, authors = calls
  for kwargs in calls:
    assert kwargs['random_start'] is False
    np.testing.assert_array_equal(kwargs['x_start'], start)
  assert default['fosc_center'] is None
  assert (default['clip_start'], default['compact']) == (True, False)
  np.testing.assert_array_equal(authors['fosc_center'], start)
  assert (authors['clip_start'], authors['compact']) == (False, True)


def test_train_step_starts_from_the_step_keys_point_clipped_or_not(
    monkeypatch):
  """The attack of a training step starts at ``x0 + eps * U(-1, 1)`` drawn
  with the step's key: clipped to the pixel box [0, 1] (the paper), or left
  outside it on both sides (the authors' ``unclipped_random_start``)."""
  starts = []
  real = _attacks.pgd

  def spy(*args, **kwargs):
    starts.append(np.asarray(kwargs['x_start']))
    return real(*args, **kwargs)

  monkeypatch.setattr(_attacks, 'pgd', spy)
  batch = dp_worker.fixed_batch()
  edges = dict(batch, image=jnp.round(batch['image']))  # pixels at 0 and 1
  state, key, ap = _state(), jax.random.key(1), _ap(1)
  for unclipped in (False, True):
    train.make_train_step('standard', unclipped_random_start=unclipped)(
        state, edges, key, ap)
  x0 = edges['image']
  noise = jax.random.uniform(jax.random.fold_in(key, state.step), x0.shape,
                             x0.dtype, -1.0, 1.0)
  raw = np.asarray(x0 + ap.eps * noise)
  assert (raw < 0).any() and (raw > 1).any()
  np.testing.assert_array_equal(starts[0], np.clip(raw, 0.0, 1.0))
  np.testing.assert_array_equal(starts[1], raw)


def test_model_without_batchnorm_trains():
  """A model without BatchNorm (no batch_stats collection) gets an empty
  batch_stats and trains with every method's step."""

  class Mlp(nn.Module):

    @nn.compact
    def __call__(self, x, train=False):
      del train
      return nn.Dense(3)(x.reshape(x.shape[0], -1))

  tx = train.make_optimizer(learning_rate=0.1, momentum=0.9,
                            weight_decay=1e-4, steps_per_epoch=10)
  state = train.create_train_state(Mlp(), jax.random.key(0), (4, 4, 1), tx)
  assert state.batch_stats == {}
  batch = {'image': jnp.full((8, 4, 4, 1), 0.5), 'label': jnp.arange(8) % 3}
  for method in train.METHODS:
    new, metrics = jax.jit(train.make_train_step(method))(
        state, batch, jax.random.key(1), _ap(num_steps=2))
    assert int(new.step) == 1 and new.batch_stats == {}
    assert np.isfinite(float(metrics['loss']))


@pytest.mark.parametrize('method', ['standard', 'dynamic'])
def test_compaction_defaults_to_dynamic_on_the_cpu(monkeypatch, method):
  """compact=None (the default): Dynamic's attack compacts its still-active
  examples on the CPU backend (a speed-up there, measured in
  benchmarks/README.md); Standard's never does."""
  seen = []
  real = _attacks.pgd

  def spy(*args, **kwargs):
    seen.append(kwargs['compact'])
    return real(*args, **kwargs)

  monkeypatch.setattr(_attacks, 'pgd', spy)
  state = _state()
  batch = {'image': jnp.full((4,) + dp_worker.SHAPE, 0.5),
           'label': jnp.arange(4) % 2}
  train.make_train_step(method)(state, batch, jax.random.key(0),
                                _ap(num_steps=2))
  assert seen == [method == 'dynamic' and jax.default_backend() == 'cpu']
