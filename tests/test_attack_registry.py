"""Tests of the attack registry, the AutoAttack evaluation (APGD-CE, APGD-T,
FAB-T, Square as a cascade), AutoAttack's checks and model_info.json."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamic_at import evaluation

_SHAPE = (4, 4, 1)


class _TinyMLP(nn.Module):
  num_classes: int = 5

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.num_classes)(jnp.tanh(nn.Dense(16)(x)))


_MLP = _TinyMLP()
_VARS = _MLP.init(jax.random.key(0), jnp.zeros((1,) + _SHAPE))


def _data(n, seed=0, model=_MLP, variables=_VARS):
  rng = np.random.default_rng(seed)
  x = rng.uniform(0.0, 1.0, (n,) + _SHAPE).astype(np.float32)
  pred = np.asarray(jnp.argmax(model.apply(variables, x), -1))
  random = rng.integers(0, model.num_classes, n)
  y = np.where(rng.uniform(size=n) < 0.8, pred, random).astype(np.int32)
  return x, y


# ------------------------------------------------------------ registry ----

def test_stream_ids_are_the_ones_results_were_computed_with():
  """The attacks that existed before the registry keep the random streams
  they had (their positions in the old list), so committed results stay
  reproducible; the new ones have their own fixed numbers."""
  ids = {a.name: a.stream_id for a in evaluation.ATTACKS.values()}
  assert ids == {'clean': 0, 'fgsm': 1, 'pgd10': 2, 'pgd20': 3, 'cw_inf': 4,
                 'apgd_ce': 5, 'apgd_t': 6, 'fab_t': 7, 'square': 8}


def test_registry_properties_drive_the_sets():
  attacks = evaluation.ATTACKS
  assert evaluation.CASCADE_ATTACKS == ('apgd_ce', 'apgd_t', 'fab_t',
                                        'square')
  assert [a for a in attacks if attacks[a].transferable] == [
      'fgsm', 'pgd10', 'pgd20', 'cw_inf']
  assert evaluation.AUTOATTACK == ('clean', 'apgd_ce', 'apgd_t', 'fab_t',
                                   'square')
  assert set(evaluation.ATTACK_SETS) == {'paper', 'strong', 'autoattack'}
  for name, attack in attacks.items():
    assert evaluation.DISPLAY_NAMES[name] == attack.display_name
    assert attack.description
    assert (attack.fn is None) == (name == 'clean')


def test_register_rejects_duplicates(monkeypatch):
  monkeypatch.setattr(evaluation, 'ATTACKS', dict(evaluation.ATTACKS))
  pgd20 = evaluation.ATTACKS['pgd20']
  with pytest.raises(ValueError, match="'pgd20' is already registered"):
    evaluation.register_attack(pgd20)
  with pytest.raises(ValueError, match="stream_id 3 is 'pgd20'"):
    evaluation.register_attack(dataclasses.replace(pgd20, name='other'))
  with pytest.raises(ValueError, match='already registered'):
    evaluation.register_attack(dataclasses.replace(
        pgd20, name=evaluation.WORST_CASE, stream_id=99))
  added = evaluation.register_attack(dataclasses.replace(
      pgd20, name='other', stream_id=99))
  assert evaluation.ATTACKS['other'] is added


def test_attack_set_parses_names_and_lists():
  assert evaluation.attack_set('paper') == evaluation.PAPER_ATTACKS
  assert evaluation.attack_set('autoattack') == evaluation.AUTOATTACK
  assert evaluation.attack_set('clean, pgd20,square') == (
      'clean', 'pgd20', 'square')
  with pytest.raises(ValueError, match=r"unknown attacks \['pgd7'\]"):
    evaluation.attack_set('clean,pgd7')
  with pytest.raises(ValueError, match='valid attacks: clean, fgsm'):
    evaluation.attack_set('')
  with pytest.raises(ValueError, match='duplicates'):
    evaluation.attack_set('pgd20,pgd20')


def test_a_registered_attack_runs_with_its_own_stream(monkeypatch):
  """An attack added with one registry entry is evaluated (white-box, also
  cascaded) with the key fold_in(fold_in(key, batch), its stream_id)."""
  seen = []

  def shift(logits_fn, x, y, key, *, eps):
    del logits_fn, y
    seen.append(key)
    return jnp.clip(x + eps, 0.0, 1.0), None

  monkeypatch.setattr(evaluation, 'ATTACKS', dict(evaluation.ATTACKS))
  evaluation.register_attack(evaluation.Attack(
      'shift', 'Shift', shift, 42, cascadable=True, description='test'))
  x, y = _data(8)
  r = evaluation.evaluate(_MLP.apply, _VARS, x, y, eps=0.5,
                          key=jax.random.key(3), batch_size=8,
                          attacks=('clean', 'shift'))
  pred = np.asarray(jnp.argmax(_MLP.apply(_VARS, np.clip(x + 0.5, 0, 1)), -1))
  np.testing.assert_array_equal(r['per_example']['white_box']['shift'],
                                pred == y)
  assert len(seen) == 1  # traced once, inside jit


# ------------------------------------------------------- AutoAttack ----

@pytest.fixture(scope='module')
def autoattack_results():
  x, y = _data(24)
  plain = evaluation.evaluate(_MLP.apply, _VARS, x, y, eps=0.08,
                              key=jax.random.key(1), batch_size=24,
                              attacks=evaluation.AUTOATTACK)
  casc = evaluation.evaluate(_MLP.apply, _VARS, x, y, eps=0.08,
                             key=jax.random.key(1), batch_size=24,
                             attacks=evaluation.AUTOATTACK, cascade=True)
  return x, y, plain, casc


def test_autoattack_cascade_is_cumulative(autoattack_results):
  """Each of the four attacks runs on exactly the examples every attack
  before it left correct (equal to running it alone on them); its column is
  the cumulative robust accuracy; the last one equals the worst case, which
  equals the plain (non-cascaded) worst case."""
  x, y, plain, casc = autoattack_results
  per = casc['per_example']['white_box']
  assert casc['cascaded'] == ['apgd_ce', 'apgd_t', 'fab_t', 'square']
  alive = per['clean'].copy()
  assert 0 < alive.sum() < len(y)
  for a in casc['cascaded']:
    chosen = np.flatnonzero(alive)
    if chosen.size:
      alone = evaluation.evaluate(_MLP.apply, _VARS, x[chosen], y[chosen],
                                  eps=0.08, key=jax.random.key(1),
                                  batch_size=chosen.size, attacks=(a,))
      expected = np.zeros(len(y), bool)
      expected[chosen] = alone['per_example']['white_box'][a]
      np.testing.assert_array_equal(per[a], expected)
    alive = alive & per[a]
  np.testing.assert_array_equal(per['worst_case'], alive)
  assert casc['white_box']['square'] == casc['white_box']['worst_case']
  # The attacks are deterministic given their keys except for the points
  # they start from (APGD's random start differs with the batch), so the
  # worst case is the same up to the examples those starts decide.
  assert abs(plain['white_box']['worst_case'] -
             casc['white_box']['worst_case']) <= 100.0 * 2 / len(y)
  # Clean accuracy is an upper bound and the attacks break something.
  assert casc['white_box']['worst_case'] < casc['white_box']['clean']


def test_cumulative_log_lines(autoattack_results):
  _, _, plain, casc = autoattack_results
  for r in (plain, casc):
    lines = evaluation.cumulative_log(r)
    per = r['per_example']['white_box']
    alive = per['clean']
    assert lines[0] == f'clean accuracy: {r["white_box"]["clean"]:.2f}%'
    for line, a in zip(lines[1:], evaluation.AUTOATTACK[1:]):
      alive = alive & per[a]
      name = evaluation.DISPLAY_NAMES[a]
      assert line == (f'robust accuracy after {name}: '
                      f'{100 * alive.mean():.2f}% (cumulative)')
    assert lines[-1] == ('worst case over all attacks: '
                         f'{r["white_box"]["worst_case"]:.2f}%')
  # Without per-example arrays (a results.json): the accuracies as they are.
  lines = evaluation.cumulative_log({'white_box': {'apgd_ce': 50.0,
                                                   'clean': 90.0}})
  assert lines == ['clean accuracy: 90.00%',
                   'robust accuracy after APGD-CE: 50.00% (cumulative)']


def test_model_info_of_an_autoattack_evaluation(autoattack_results):
  _, _, _, casc = autoattack_results
  info = evaluation.model_info(casc, dataset='cifar10', eps=8 / 255,
                               architecture='cifar10_cnn', name='m',
                               extra={'commit': 'abc'})
  white = casc['white_box']
  assert info['threat_model'] == 'Linf' and info['eps'] == '8/255'
  assert info['clean_acc'] == f'{white["clean"]:.2f}'
  assert info['autoattack_acc'] == f'{white["worst_case"]:.2f}'
  assert info['num_test_points'] == 24 and info['commit'] == 'abc'
  assert info['attacks'] == ['apgd_ce', 'apgd_t', 'fab_t', 'square']
  # Not AutoAttack: no autoattack_acc, only the worst case of what ran.
  partial = {'white_box': {'clean': 90.0, 'pgd20': 40.0},
             'num_eval_examples': 10}
  info = evaluation.model_info(partial, dataset='mnist', eps=0.3,
                               architecture='mnist_cnn', name='m')
  assert info['eps'] == '0.3' and info['autoattack_acc'] is None
  assert info['robust_acc'] == '40.00'


# ------------------------------------------------------------- checks ----

def test_square_below_the_gradient_attacks_is_flagged():
  base = {'clean': 90.0, 'apgd_ce': 50.0, 'apgd_t': 48.0, 'fab_t': 48.0}
  quiet = evaluation.sanity_warnings({'white_box': {**base, 'square': 47.81}})
  assert quiet == []
  loud = evaluation.sanity_warnings({'white_box': {**base, 'square': 47.7}})
  assert len(loud) == 1 and 'Square' in loud[0] and '47.70%' in loud[0]
  assert 'gradient masking' in loud[0]
  # Square alone (nothing to compare with) is not flagged.
  assert evaluation.sanity_warnings(
      {'white_box': {'clean': 90.0, 'square': 10.0}}) == []


class _Softmax(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return jax.nn.softmax(_TinyMLP()(x, train))


def test_model_checks():
  x, y = _data(16)
  assert evaluation.model_checks(_MLP.apply, _VARS, x, y,
                                 evaluation.AUTOATTACK) == [
      'AUTOATTACK CHECK: 5 classes: APGD-T, FAB-T use 4 target classes '
      "instead of AutoAttack's 9."]
  ten = _TinyMLP(num_classes=10)
  ten_vars = ten.init(jax.random.key(0), jnp.zeros((1,) + _SHAPE))
  assert evaluation.model_checks(ten.apply, ten_vars, x, y,
                                 evaluation.AUTOATTACK) == []
  # The class check only concerns the targeted attacks.
  assert evaluation.model_checks(_MLP.apply, _VARS, x, y,
                                 evaluation.PAPER_ATTACKS) == []
  soft = _Softmax()
  warnings = evaluation.model_checks(soft.apply, soft.init(
      jax.random.key(0), x[:1]), x, y, ('clean', 'apgd_ce'))
  assert len(warnings) == 1 and 'probabilities' in warnings[0]
  calls = []

  def noisy(variables, x_, train=False):
    calls.append(1)
    return _MLP.apply(variables, x_, train=train) + 0.1 * len(calls)

  warnings = evaluation.model_checks(noisy, _VARS, x, y, ('clean',))
  assert len(calls) == 5
  assert len(warnings) == 1 and 'not deterministic' in warnings[0]
  two = _TinyMLP(num_classes=3)
  warnings = evaluation.model_checks(
      two.apply, two.init(jax.random.key(0), x[:1]), x, y % 3, ('apgd_t',))
  assert warnings == ['AUTOATTACK CHECK: with only 3 classes the targeted '
                      'DLR loss and targets of APGD-T are not possible.']
