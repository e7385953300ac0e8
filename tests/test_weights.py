"""Tests of the weights files (dynamic_at.weights)."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamic_at import models
from dynamic_at import weights


def _trained_like_variables():
  model = models.get_model('mnist_cnn')
  variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)),
                         train=False)
  # Non-default BatchNorm statistics, so a loader that re-initialised them
  # would be caught.
  stats = jax.tree.map(lambda x: x + 0.25, variables['batch_stats'])
  return model, {'params': variables['params'], 'batch_stats': stats}


def test_round_trip_is_exact_and_small(tmp_path):
  model, variables = _trained_like_variables()
  path = tmp_path / 'model.msgpack'
  info = {'input_shape': [28, 28, 1], 'flags': {'eps': 0.3, 'seed': 1},
          'results': {'white_box': {'pgd20': 91.5}}}
  weights.save_weights(path, variables, model='mnist_cnn', info=info)
  assert os.path.getsize(path) < 2 * 1024 * 1024
  loaded_model, loaded, loaded_info = weights.load_weights(path)
  assert loaded_info == info
  chex.assert_trees_all_equal(loaded, variables)
  x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
  np.testing.assert_array_equal(
      loaded_model.apply(loaded, x, train=False),
      model.apply(variables, x, train=False))


def test_wrn_arguments_are_kept(tmp_path):
  model = models.get_model('wrn', depth=10, width=1)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                         train=False)
  path = tmp_path / 'wrn.msgpack'
  weights.save_weights(path, variables, model='wrn',
                       model_kwargs={'depth': 10, 'width': 1},
                       info={'input_shape': [32, 32, 3]})
  loaded_model, loaded, _ = weights.load_weights(path)
  assert (loaded_model.depth, loaded_model.width) == (10, 1)
  chex.assert_trees_all_equal(loaded, {
      'params': variables['params'],
      'batch_stats': variables['batch_stats']})


def test_bad_files_name_the_file(tmp_path):
  _, variables = _trained_like_variables()
  with pytest.raises(weights.WeightsError, match='missing.msgpack'):
    weights.load_weights(tmp_path / 'missing.msgpack')
  junk = tmp_path / 'junk.msgpack'
  junk.write_bytes(b'\x00\x01not msgpack at all')
  with pytest.raises(weights.WeightsError, match='junk.msgpack'):
    weights.load_weights(junk)
  # A good file cut short.
  good = tmp_path / 'good.msgpack'
  weights.save_weights(good, variables, model='mnist_cnn',
                       info={'input_shape': [28, 28, 1]})
  cut = tmp_path / 'cut.msgpack'
  cut.write_bytes(good.read_bytes()[:100_000])
  with pytest.raises(weights.WeightsError, match='cut.msgpack'):
    weights.load_weights(cut)
  # Arrays that do not fit the named model.
  wrong = tmp_path / 'wrong.msgpack'
  weights.save_weights(wrong, variables, model='cifar10_cnn',
                       info={'input_shape': [32, 32, 3]})
  with pytest.raises(weights.WeightsError, match='do not fit model'):
    weights.load_weights(wrong)
  with pytest.raises(ValueError, match='model must be one of'):
    weights.save_weights(tmp_path / 'x.msgpack', variables, model='vgg')
  assert not (tmp_path / 'x.msgpack').exists()
