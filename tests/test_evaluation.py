"""Tests of dynamic_at.evaluation: accuracies, batching, compilation, meshes,
sanity warnings and result files."""

import json
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dynamic_at
from dynamic_at import evaluation
from dynamic_at import parallel

_SHAPE = (4, 4, 1)
_NUM_CLASSES = 5
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _TinyMLP(nn.Module):
  """A 2-layer MLP on 4x4x1 images with the library's ``train`` argument."""
  num_classes: int = _NUM_CLASSES

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = x.reshape(x.shape[0], -1)
    x = jnp.tanh(nn.Dense(16)(x))
    return nn.Dense(self.num_classes)(x)


class _Linear(nn.Module):
  num_classes: int = 2

  @nn.compact
  def __call__(self, x, train=False):
    del train
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


_MLP = _TinyMLP()
_MLP_VARS = _MLP.init(jax.random.key(0), jnp.zeros((1,) + _SHAPE))


def _data(n, seed=0, low=0.0, high=1.0, model=_MLP, variables=_MLP_VARS):
  """Images and labels: the model's own prediction for about 70% of them (so
  clean accuracy is high and attacks have something to break), random
  labels for the rest."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(low, high, (n,) + _SHAPE).astype(np.float32)
  pred = np.asarray(jnp.argmax(model.apply(variables, x), -1))
  random = rng.integers(0, model.num_classes, n)
  y = np.where(rng.uniform(size=n) < 0.7, pred, random).astype(np.int32)
  return x, y


def _eval(n=37, batch_size=16, apply_fn=_MLP.apply, variables=_MLP_VARS,
          **kwargs):
  x, y = _data(n)
  kwargs.setdefault('eps', 0.1)
  kwargs.setdefault('key', jax.random.key(1))
  return evaluation.evaluate(apply_fn, variables, x, y,
                             batch_size=batch_size, **kwargs)


@pytest.fixture(scope='module')
def paper_results():
  return _eval()


def test_evaluate_all_attacks(paper_results):
  r = paper_results
  x, y = _data(37)
  assert r['num_eval_examples'] == 37
  assert r['black_box'] is None and r['per_example']['black_box'] is None
  assert set(r['white_box']) == set(evaluation.PAPER_ATTACKS) | {'worst_case'}
  for name, acc in r['white_box'].items():
    assert isinstance(acc, float)
    assert 0.0 <= acc <= 100.0, name
    per = r['per_example']['white_box'][name]
    assert per.dtype == np.bool_ and per.shape == (37,)
    assert acc == pytest.approx(100.0 * per.mean())
  pred = np.argmax(np.asarray(_MLP.apply(_MLP_VARS, x)), -1)
  assert r['white_box']['clean'] == pytest.approx(100.0 * np.mean(pred == y))
  # The attacks at eps 0.1 do break this model.
  assert r['white_box']['pgd20'] < r['white_box']['clean']


def test_worst_case(paper_results):
  white = paper_results['white_box']
  per = paper_results['per_example']['white_box']
  for name in evaluation.PAPER_ATTACKS:
    assert white['worst_case'] <= white[name]
  np.testing.assert_array_equal(
      per['worst_case'],
      np.logical_and.reduce([per[a] for a in evaluation.PAPER_ATTACKS]))
  # One non-clean attack: no worst case.
  r = _eval(attacks=('clean', 'fgsm'))
  assert 'worst_case' not in r['white_box']


def test_strong_worst_case_over_apgd_and_paper_attacks():
  r = _eval(attacks=evaluation.STRONG_ATTACKS, source=(_MLP.apply, _MLP_VARS))
  white, per = r['white_box'], r['per_example']['white_box']
  assert set(white) == set(evaluation.STRONG_ATTACKS) | {'worst_case'}
  for name in evaluation.STRONG_ATTACKS:
    assert white['worst_case'] <= white[name], name
  np.testing.assert_array_equal(
      per['worst_case'],
      np.logical_and.reduce([per[a] for a in evaluation.STRONG_ATTACKS]))
  # APGD is at least as strong as PGD-20 here, and black-box stays the
  # paper's transfer attacks.
  assert white['apgd_ce'] <= white['pgd20'] + 1e-9
  assert set(r['black_box']) == set(evaluation.PAPER_ATTACKS) - {'clean'}


def test_cascade_attacks_only_the_examples_still_robust():
  """With cascade=True, APGD-CE runs on exactly the examples the paper's
  attacks all left correct and APGD-T on those APGD-CE also left correct:
  each equals a plain evaluation of that attack on those examples (same key,
  batches no larger than the survivors), every other example counts as
  broken, and the paper's attacks are untouched."""
  n, batch = 37, 16
  x, y = _data(n)
  plain = _eval(n=n, batch_size=batch, attacks=evaluation.STRONG_ATTACKS)
  casc = _eval(n=n, batch_size=batch, attacks=evaluation.STRONG_ATTACKS,
               cascade=True)
  per_p, per_c = plain['per_example']['white_box'], casc['per_example'][
      'white_box']
  for a in evaluation.PAPER_ATTACKS:
    np.testing.assert_array_equal(per_c[a], per_p[a])
  before = np.logical_and.reduce([per_p[a] for a in evaluation.PAPER_ATTACKS])
  # The paper's attacks break some examples and leave others, so the
  # cascade has something to skip and something to attack.
  assert 0 < before.sum() < n
  assert casc['cascaded'] == ['apgd_ce', 'apgd_t']
  assert plain['cascaded'] == []
  for a in casc['cascaded']:
    chosen = np.flatnonzero(before)
    # Batches of the survivors, no larger than they need be.
    alone = evaluation.evaluate(_MLP.apply, _MLP_VARS, x[chosen], y[chosen],
                                eps=0.1, key=jax.random.key(1),
                                batch_size=min(batch, chosen.size),
                                attacks=(a,))
    expected = np.zeros(n, bool)
    expected[chosen] = alone['per_example']['white_box'][a]
    np.testing.assert_array_equal(per_c[a], expected)
    assert casc['white_box'][a] == pytest.approx(100.0 * expected.mean())
    before = before & per_c[a]
  np.testing.assert_array_equal(per_c['worst_case'], before)
  # Cumulative columns: APGD-T's survivors are APGD-CE's survivors, and the
  # last attack's column is the worst case.
  assert not np.any(per_c['apgd_t'] & ~per_c['apgd_ce'])
  assert casc['white_box']['apgd_t'] == casc['white_box']['worst_case']


def test_cascade_batch_size():
  """The survivors' batch: at most the evaluation's batch size, otherwise the
  survivors rounded up to a multiple of the devices."""
  size = evaluation.cascade_batch_size
  assert [size(n, 500, None) for n in (0, 1, 220, 499, 500, 501, 5000)] == [
      1, 1, 220, 499, 500, 500, 500]
  mesh = parallel.make_mesh()
  d = mesh.devices.size
  assert size(0, 8 * d, mesh) == d
  assert size(d + 1, 8 * d, mesh) == 2 * d
  assert size(100 * d, 8 * d, mesh) == 8 * d


def test_cascade_batches_hold_only_the_survivors(monkeypatch):
  """With one batch of 64 for 37 examples, the paper's attacks run on 64
  (padded); each cascaded attack on exactly its survivors, not padded to
  64."""
  shapes = []
  real = evaluation._batch_correct  # pylint: disable=protected-access

  def spy(*args, attack, **kwargs):
    shapes.append((attack, args[2].shape[0]))
    return real(*args, attack=attack, **kwargs)

  monkeypatch.setattr(evaluation, '_batch_correct', spy)
  r = _eval(n=37, batch_size=64, attacks=evaluation.STRONG_ATTACKS,
            cascade=True)
  per = r['per_example']['white_box']
  alive = np.logical_and.reduce([per[a] for a in evaluation.PAPER_ATTACKS])
  assert 0 < alive.sum() < 37
  assert shapes == [(a, 64) for a in evaluation.PAPER_ATTACKS] + [
      ('apgd_ce', alive.sum()), ('apgd_t', (alive & per['apgd_ce']).sum())]


def test_progress_reports_each_batch_after_its_results(monkeypatch):
  """``progress`` gets one line per batch (37 examples in batches of 16: 3),
  naming the attacks that ran, then one per batch of each cascaded attack's
  survivors; each line comes after that batch's results are ready, and the
  results are those of a run without ``progress``."""
  lines, waited = [], []
  real_wait = jax.block_until_ready

  def wait(tree):
    waited.append(len(jax.tree_util.tree_leaves(tree)))
    return real_wait(tree)

  monkeypatch.setattr(jax, 'block_until_ready', wait)
  x, y = _data(37)
  src = (_MLP.apply, _MLP.init(jax.random.key(5), jnp.zeros((1,) + _SHAPE)))
  kwargs = dict(eps=0.1, key=jax.random.key(1), batch_size=16,
                attacks=evaluation.STRONG_ATTACKS, cascade=True, source=src)
  with_progress = evaluation.evaluate(_MLP.apply, _MLP_VARS, x, y,
                                      progress=lines.append, **kwargs)
  per = with_progress['per_example']['white_box']
  alive = np.logical_and.reduce([per[a] for a in evaluation.PAPER_ATTACKS])
  left = [int(alive.sum()), int((alive & per['apgd_ce']).sum())]
  assert 0 < left[1] <= left[0] < 37
  names = ', '.join(evaluation.PAPER_ATTACKS + tuple(
      f'black-box {a}' for a in evaluation.PAPER_ATTACKS if a != 'clean'))
  cascaded = [(a, k, b) for a, k in zip(evaluation.CASCADE_ATTACKS, left)
              for b in range(1, -(-k // 16) + 1)]
  assert lines == [f'batch {b}/3: {names}' for b in (1, 2, 3)] + [
      f'{a} on the {k} examples still robust: batch {b}/{-(-k // 16)}'
      for a, k, b in cascaded]
  # Each paper batch waits for its 5 white-box and 4 black-box results,
  # each survivors' batch for its one.
  assert waited == [9, 9, 9] + [1] * len(cascaded)
  monkeypatch.setattr(jax, 'block_until_ready', real_wait)
  without = evaluation.evaluate(_MLP.apply, _MLP_VARS, x, y, **kwargs)
  assert with_progress['white_box'] == without['white_box']
  assert with_progress['black_box'] == without['black_box']


def test_cascade_with_nothing_left_to_attack():
  """Labels no prediction matches: clean accuracy 0, so the cascaded APGD
  attacks have no example to run on and report 0 without an error."""
  x, _ = _data(10)
  pred = np.argmax(np.asarray(_MLP.apply(_MLP_VARS, x)), -1)
  y = ((pred + 1) % _NUM_CLASSES).astype(np.int32)
  r = evaluation.evaluate(_MLP.apply, _MLP_VARS, x, y, eps=0.1,
                          key=jax.random.key(1), batch_size=4,
                          attacks=('clean', 'apgd_ce', 'apgd_t'),
                          cascade=True)
  assert r['white_box'] == {'clean': 0.0, 'apgd_ce': 0.0, 'apgd_t': 0.0,
                            'worst_case': 0.0}
  assert r['per_example']['white_box']['apgd_t'].shape == (10,)


def test_batching_does_not_change_deterministic_attacks():
  """The padded last batch (37 = 16 + 16 + 5) gives exactly what one batch
  of 37 gives, for the deterministic clean and FGSM evaluations."""
  a = _eval(batch_size=16, attacks=('clean', 'fgsm'))
  b = _eval(batch_size=37, attacks=('clean', 'fgsm'))
  c = _eval(batch_size=64, attacks=('clean', 'fgsm'))  # one padded batch
  for name in ('clean', 'fgsm'):
    for other in (b, c):
      np.testing.assert_array_equal(a['per_example']['white_box'][name],
                                    other['per_example']['white_box'][name])
      assert a['white_box'][name] == other['white_box'][name]


def test_deterministic_given_key():
  a = _eval(attacks=('pgd10',))
  b = _eval(attacks=('pgd10',))
  np.testing.assert_array_equal(a['per_example']['white_box']['pgd10'],
                                b['per_example']['white_box']['pgd10'])


def test_compiles_once_per_attack():
  """Counts traces through a Python side effect in the model: three batches
  (the last one padded) trace each attack exactly as often as one batch, and
  a second evaluation of the same model traces nothing."""

  def counting(calls):
    def apply_fn(variables, x, train=False):
      calls.append(x.shape)
      return _MLP.apply(variables, x, train=train)
    return apply_fn

  attacks = ('clean', 'fgsm', 'pgd10')
  one_batch, three_batches = [], []
  _eval(n=16, apply_fn=counting(one_batch), attacks=attacks)
  fn = counting(three_batches)
  _eval(n=37, apply_fn=fn, attacks=attacks)
  assert one_batch and len(three_batches) == len(one_batch)
  assert {s[0] for s in three_batches} == {16}  # always the padded shape
  traced = len(three_batches)
  _eval(n=37, apply_fn=fn, attacks=attacks, eps=0.2, key=jax.random.key(7))
  assert len(three_batches) == traced  # cached: eps and key are traced


def test_linear_model_pgd20_breaks_everything():
  """At eps 0.5 on inputs in [0.25, 0.75] the ball holds every image of
  [0, 1]. For a 2-class linear model the input gradient of the loss has the
  constant sign of ``w_other - w_label``, so PGD-20 (20 steps of 0.125 >= 1)
  reaches the vertex maximising the wrong margin; that margin is positive
  whenever ``w_1 - w_0`` has entries of both signs (checked), so PGD-20
  accuracy is exactly 0 although clean accuracy is 100."""
  model = _Linear()
  rng = np.random.default_rng(0)
  w = rng.normal(size=(int(np.prod(_SHAPE)), 2)).astype(np.float32)
  w[:, 1] -= w[:, 1].mean() - w[:, 0].mean()  # both classes get predicted
  b = np.zeros(2, np.float32)
  variables = {'params': {'Dense_0': {'kernel': w, 'bias': b}}}
  dw, db = w[:, 1] - w[:, 0], b[1] - b[0]
  assert np.maximum(dw, 0).sum() + db > 0 and np.maximum(-dw, 0).sum() - db > 0
  x = rng.uniform(0.25, 0.75, (40,) + _SHAPE).astype(np.float32)
  y = np.asarray(jnp.argmax(model.apply(variables, x), -1), np.int32)
  assert 0 < y.sum() < len(y)  # both classes present
  r = evaluation.evaluate(model.apply, variables, x, y, eps=0.5,
                          key=jax.random.key(0), batch_size=16,
                          attacks=('clean', 'pgd20'))
  assert r['white_box']['clean'] == 100.0
  assert r['white_box']['pgd20'] == 0.0
  eps_one = evaluation.accuracy_at_eps_one(model.apply, variables, x, y,
                                           jax.random.key(0), 16)
  assert eps_one == 0.0
  assert not evaluation.sanity_warnings(r, eps_one_accuracy=eps_one)


def test_eps_one_flags_a_model_without_gradient():
  """A model that ignores its input keeps its accuracy at eps = 1."""

  def constant(variables, x, train=False):
    del train
    return jnp.broadcast_to(variables['logits'], (x.shape[0], _NUM_CLASSES))

  variables = {'logits': jnp.arange(_NUM_CLASSES, dtype=jnp.float32)}
  x, _ = _data(20)
  y = np.full(20, _NUM_CLASSES - 1, np.int32)
  acc = evaluation.accuracy_at_eps_one(constant, variables, x, y,
                                       jax.random.key(0), 8)
  assert acc == 100.0
  warnings = evaluation.sanity_warnings({'white_box': {}},
                                        eps_one_accuracy=acc)
  assert len(warnings) == 1 and 'eps=1' in warnings[0]


def test_black_box_with_itself_as_source_equals_white_box():
  r = _eval(attacks=('clean', 'fgsm', 'pgd10'),
            source=(_MLP.apply, _MLP_VARS))
  assert set(r['black_box']) == {'fgsm', 'pgd10'}  # no clean
  assert set(r['per_example']['black_box']) == {'fgsm', 'pgd10'}
  np.testing.assert_array_equal(r['per_example']['black_box']['fgsm'],
                                r['per_example']['white_box']['fgsm'])
  assert r['black_box']['fgsm'] == r['white_box']['fgsm']


def test_black_box_from_another_model():
  other = _MLP.init(jax.random.key(42), jnp.zeros((1,) + _SHAPE))
  r = _eval(attacks=('clean', 'fgsm'), source=(_MLP.apply, other))
  assert 0.0 <= r['black_box']['fgsm'] <= 100.0
  assert r['black_box']['fgsm'] >= r['white_box']['fgsm']


def test_mesh_gives_identical_results(paper_results):
  a = paper_results
  b = _eval(mesh=parallel.make_mesh())
  assert a['white_box'] == b['white_box']
  for name, per in a['per_example']['white_box'].items():
    np.testing.assert_array_equal(per, b['per_example']['white_box'][name])


def test_mesh_of_two_devices():
  """Two forced CPU devices in a subprocess: a batch size that does not split
  raises, and the sharded evaluation matches the unsharded one."""
  script = textwrap.dedent("""
      import jax, jax.numpy as jnp, numpy as np
      from dynamic_at import evaluation, parallel
      assert jax.device_count() == 2
      f = lambda v, x, train=False: jnp.tanh(x.reshape(x.shape[0], -1) @ v)
      v = jax.random.normal(jax.random.key(0), (16, 5))
      rng = np.random.default_rng(0)
      x = rng.uniform(0, 1, (21, 4, 4, 1)).astype(np.float32)
      y = rng.integers(0, 5, 21).astype(np.int32)
      mesh = parallel.make_mesh()
      try:
        evaluation.evaluate(f, v, x, y, eps=0.1, key=jax.random.key(0),
                            batch_size=15, mesh=mesh)
        raise SystemExit('no error')
      except ValueError as e:
        assert 'batch_size' in str(e), e
      kw = dict(eps=0.1, key=jax.random.key(0), batch_size=8,
                attacks=('clean', 'fgsm', 'pgd10'), source=(f, v * 0.5))
      a = evaluation.evaluate(f, v, x, y, **kw)
      b = evaluation.evaluate(f, v, x, y, mesh=mesh, **kw)
      for box in ('white_box', 'black_box'):
        for k, per in a['per_example'][box].items():
          np.testing.assert_array_equal(per, b['per_example'][box][k])
      print('OK', a['white_box'])
      """)
  env = dict(os.environ, PYTHONPATH=_REPO, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  out = subprocess.run([sys.executable, '-c', script], env=env,
                       capture_output=True, text=True, timeout=300,
                       check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'OK' in out.stdout


def test_bad_arguments():
  with pytest.raises(ValueError, match='unknown attacks'):
    _eval(attacks=('clean', 'pgd7'))
  with pytest.raises(ValueError, match='labels'):
    evaluation.evaluate(_MLP.apply, _MLP_VARS, np.zeros((4,) + _SHAPE),
                        np.zeros(3), eps=0.1, key=jax.random.key(0))
  with pytest.raises(ValueError, match='batch_size'):
    _eval(batch_size=0)


# ---------------------------------------------------------------- sanity ----

_CONSISTENT = {
    'white_box': {'clean': 90.0, 'fgsm': 60.0, 'pgd10': 50.0, 'pgd20': 48.0,
                  'cw_inf': 49.0, 'worst_case': 45.0},
    'black_box': {'fgsm': 70.0, 'pgd10': 65.0, 'pgd20': 64.0, 'cw_inf': 66.0},
    'num_eval_examples': 1000,
}


def _with(box, name, value):
  r = json.loads(json.dumps(_CONSISTENT))
  r[box][name] = value
  return r


def test_sanity_consistent_is_quiet():
  assert evaluation.sanity_warnings(_CONSISTENT) == []
  assert evaluation.sanity_warnings(_CONSISTENT, eps_one_accuracy=0.5) == []
  # Within the 1-point tolerance of random starts.
  assert evaluation.sanity_warnings(_with('white_box', 'pgd20', 50.9)) == []
  assert evaluation.sanity_warnings({'white_box': {'clean': 1.0},
                                     'black_box': None}) == []


@pytest.mark.parametrize('box,name,value,needle', [
    ('white_box', 'pgd20', 52.0, 'PGD-20'),
    ('white_box', 'pgd10', 62.0, 'PGD-10'),
    ('white_box', 'clean', 55.0, 'FGSM accuracy 60.00% > clean'),
    ('black_box', 'pgd20', 40.0, 'black-box PGD-20'),
    ('black_box', 'fgsm', 58.0, 'black-box FGSM'),
])
def test_sanity_each_violation(box, name, value, needle):
  warnings = evaluation.sanity_warnings(_with(box, name, value))
  assert len(warnings) == 1, warnings
  assert needle in warnings[0] and 'WARNING' in warnings[0]


def test_sanity_eps_one():
  warnings = evaluation.sanity_warnings(_CONSISTENT, eps_one_accuracy=10.0)
  assert len(warnings) == 1 and 'gradient masking' in warnings[0]


# ------------------------------------------- attacks reproduced by hand ----

def _keys(key, batch_index, attack):
  """The key of ``attack`` on batch ``batch_index`` (the documented rule)."""
  return jax.random.fold_in(jax.random.fold_in(key, batch_index),
                            evaluation.STRONG_ATTACKS.index(attack))


def test_black_box_attacks_are_crafted_on_the_source():
  """The target's black-box accuracy is its accuracy on examples crafted by
  the library's attacks on the source model (same keys), by hand. The source
  is an unrelated network, so the target's white-box examples (what an
  attack crafted on the target would give) are classified differently."""
  source_vars = _MLP.init(jax.random.key(42), jnp.zeros((1,) + _SHAPE))
  x, y = _data(32)
  key, eps, batch = jax.random.key(1), 0.15, 16
  attacks = ('fgsm', 'pgd10', 'pgd20', 'cw_inf')
  r = evaluation.evaluate(_MLP.apply, _MLP_VARS, x, y, eps=eps, key=key,
                          batch_size=batch, attacks=attacks,
                          source=(_MLP.apply, source_vars))
  source = lambda v: _MLP.apply(source_vars, v, train=False)
  crafting = {'fgsm': dynamic_at.fgsm, 'pgd10': dynamic_at.pgd10,
              'pgd20': dynamic_at.pgd20, 'cw_inf': dynamic_at.cw_inf}
  for name in attacks:
    correct = []
    for b in range(2):
      xb, yb = x[b * batch:(b + 1) * batch], y[b * batch:(b + 1) * batch]
      x_adv, _ = crafting[name](source, xb, yb, _keys(key, b, name), eps=eps)
      correct.append(np.argmax(_MLP.apply(_MLP_VARS, x_adv), -1) == yb)
    expected = np.concatenate(correct)
    np.testing.assert_array_equal(r['per_example']['black_box'][name],
                                  expected, err_msg=name)
    assert r['black_box'][name] == 100.0 * expected.mean()
    assert not np.array_equal(expected, r['per_example']['white_box'][name])


def _reference_pgd(logits_fn, x0, y, key, eps, num_steps, loss, *,
                   step=None, random_start=True):
  """PGD written out: a uniform start in the eps-ball (``U(-1, 1) * eps``
  drawn from ``key``), clipped to [0, 1], then ``num_steps`` steps of
  ``step`` (default ``eps / 4``) times the gradient's sign, each projected
  onto the ball and [0, 1]."""
  x0 = jnp.asarray(x0)
  step = eps / 4 if step is None else step
  grad = jax.jit(jax.grad(lambda v: loss(logits_fn(v), y).sum()))
  x = x0
  if random_start:
    noise = jax.random.uniform(key, x0.shape, x0.dtype, -1.0, 1.0)
    x = jnp.clip(x0 + eps * noise, 0.0, 1.0)
  for _ in range(num_steps):
    x = x + step * jnp.sign(grad(x))
    x = jnp.clip(jnp.clip(x, x0 - eps, x0 + eps), 0.0, 1.0)
  return x


def _probe(variables, x, train=False):
  """A "model" that says whether it sees the expected points: it predicts
  ``variables['labels']`` for an example iff the example equals
  ``variables['expected']`` (to 1e-6), another class otherwise."""
  del train
  diff = jnp.abs(x - variables['expected']).reshape(x.shape[0], -1)
  hit = jnp.max(diff, axis=1) <= 1e-6
  labels = variables['labels']
  return jax.nn.one_hot(jnp.where(hit, labels, (labels + 1) % _NUM_CLASSES),
                        _NUM_CLASSES)


def _sine(variables, x, train=False):
  """A source whose loss oscillates in the input, so PGD's end point depends
  on its start and step size."""
  del train
  return jnp.sin(x.reshape(x.shape[0], -1) @ variables)


@pytest.mark.parametrize('attack,num_steps,loss', [
    ('pgd10', 10, dynamic_at.xent),
    ('pgd20', 20, dynamic_at.xent),
    ('cw_inf', 30, lambda logits, y: dynamic_at.cw_margin(logits, y, 50.0)),
])
def test_evaluation_attacks_step_eps_over_4_from_a_random_start(
    attack, num_steps, loss):
  """The evaluation's PGD-10, PGD-20 and CW-inf are PGD with step ``eps / 4``
  from a random start drawn with the batch's key: crafted on a source model
  (black-box), they give exactly the written-out reference's points, which a
  probe target checks point by point. The reference without the random
  start, or with step ``eps / 8``, ends elsewhere. (White-box attacks run the
  same functions with the same keys: see
  ``test_black_box_with_itself_as_source_equals_white_box``.)"""
  x, y = _data(32, seed=5)
  key, eps = jax.random.key(3), 0.1
  w = 5.0 * jax.random.normal(jax.random.key(7), (16, _NUM_CLASSES))
  source = lambda v: _sine(w, v)
  k = _keys(key, 0, attack)
  expected = _reference_pgd(source, x, y, k, eps, num_steps, loss)
  for other in (_reference_pgd(source, x, y, k, eps, num_steps, loss,
                               random_start=False),
                _reference_pgd(source, x, y, k, eps, num_steps, loss,
                               step=eps / 8)):
    assert float(jnp.min(jnp.max(jnp.abs(other - expected),
                                 axis=(1, 2, 3)))) > 1e-3
  r = evaluation.evaluate(_probe, {'expected': expected, 'labels': y}, x, y,
                          eps=eps, key=key, batch_size=32,
                          attacks=('clean', attack), source=(_sine, w))
  assert r['white_box']['clean'] == 0.0  # the probe rejects the clean images
  np.testing.assert_array_equal(r['per_example']['black_box'][attack],
                                np.ones(32, bool))
