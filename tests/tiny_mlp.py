"""A tiny smooth nonlinear model and data, shared by the attack tests."""

import jax
import jax.numpy as jnp
import numpy as np

SHAPE = (4, 4, 1)
NUM_CLASSES = 5


def mlp_params(seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  d = int(np.prod(SHAPE))
  return (jax.random.normal(k1, (d, 16)) * 2.0,
          jax.random.normal(k2, (16, NUM_CLASSES)))


def mlp(params, x):
  """A batch of ``SHAPE`` images -> ``NUM_CLASSES`` logits."""
  w1, w2 = params
  return jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2


def data(batch=16, seed=0, low=0.0, high=1.0):
  """Uniform images in ``[low, high]`` and random labels."""
  rng = np.random.default_rng(seed)
  x0 = jnp.float32(rng.uniform(low, high, (batch,) + SHAPE))
  y = jnp.int32(rng.integers(0, NUM_CLASSES, batch))
  return x0, y
