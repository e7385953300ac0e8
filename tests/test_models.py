"""Tests for dynamic_at.models."""

from __future__ import annotations

import functools
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamic_at import models
from dynamic_at.models import (
    Cifar10CNN,
    MnistCNN,
    WideResNet,
    count_params,
    get_model,
    max_pool_2x2,
)
from tests import run_utils

MNIST_SHAPE = (28, 28, 1)
CIFAR_SHAPE = (32, 32, 3)

# (name, kwargs, input shape without batch); WRN kept tiny for speed.
MODEL_CASES = [
    ("mnist_cnn", {}, MNIST_SHAPE),
    ("cifar10_cnn", {}, CIFAR_SHAPE),
    ("wrn", {"depth": 10, "width": 1}, CIFAR_SHAPE),
]


def _images(key: jax.Array, batch: int, shape: tuple[int, ...]) -> jax.Array:
  return jax.random.uniform(key, (batch, *shape), dtype=jnp.float32)


def _conv(k: int, cin: int, cout: int, bias: bool = True) -> int:
  return k * k * cin * cout + (cout if bias else 0)


def _bn(c: int) -> int:
  return 2 * c  # scale + bias


def _dense(fin: int, fout: int) -> int:
  return fin * fout + fout


@pytest.fixture(
    scope="module", params=MODEL_CASES, ids=[c[0] for c in MODEL_CASES]
)
def initialised(request):
  name, kwargs, shape = request.param
  model = get_model(name, **kwargs)
  x = _images(jax.random.PRNGKey(0), 4, shape)
  # Jitted init is much faster than eager op-by-op dispatch on CPU.
  variables = jax.jit(lambda k, x: model.init(k, x, train=False))(
      jax.random.PRNGKey(1), x
  )
  return model, variables, x


def test_output_shape_and_finite(initialised):
  model, variables, x = initialised
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert logits.shape == (x.shape[0], 10)
  assert logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))


def test_variables_are_float32_and_only_params_and_batch_stats(initialised):
  _, variables, _ = initialised
  assert set(variables.keys()) == {"params", "batch_stats"}
  for leaf in jax.tree_util.tree_leaves(variables):
    assert leaf.dtype == jnp.float32


def test_train_mode_updates_batch_stats(initialised):
  model, variables, x = initialised
  logits, updates = jax.jit(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])
  )(variables, x)
  assert logits.shape == (x.shape[0], 10)
  assert bool(jnp.all(jnp.isfinite(logits)))
  old = jax.tree_util.tree_leaves(variables["batch_stats"])
  new = jax.tree_util.tree_leaves(updates["batch_stats"])
  assert len(old) == len(new) > 0
  assert jax.tree_util.tree_structure(
      variables["batch_stats"]
  ) == jax.tree_util.tree_structure(updates["batch_stats"])
  # Every running mean/var moves away from its init (0 / 1).
  for o, n in zip(old, new):
    assert not np.allclose(np.asarray(o), np.asarray(n))


def test_eval_mode_is_per_example_independent(initialised):
  model, variables, x = initialised
  batch_a = jnp.stack([x[0], x[1]])
  batch_b = jnp.stack([x[0], x[2]])
  apply = jax.jit(lambda v, b: model.apply(v, b, train=False))
  out_a = np.asarray(apply(variables, batch_a))
  out_b = np.asarray(apply(variables, batch_b))
  np.testing.assert_array_equal(out_a[0], out_b[0])
  assert not np.array_equal(out_a[1], out_b[1])


def test_train_mode_depends_on_batch():
  # Sanity check of the previous test: batch statistics couple examples.
  model = MnistCNN()
  x = _images(jax.random.PRNGKey(0), 3, MNIST_SHAPE)
  variables = jax.jit(lambda k, x: model.init(k, x, train=False))(
      jax.random.PRNGKey(1), x
  )
  apply = jax.jit(
      lambda v, b: model.apply(v, b, train=True, mutable=["batch_stats"])[0]
  )
  out_a = apply(variables, x[:2])
  out_b = apply(variables, x[jnp.array([0, 2])])
  assert not np.allclose(np.asarray(out_a[0]), np.asarray(out_b[0]))


def test_mnist_cnn_param_count():
  model = MnistCNN()
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *MNIST_SHAPE)))
  )
  expected = (
      _conv(3, 1, 32)
      + _bn(32)
      + _conv(3, 32, 64)
      + _bn(64)
      + _dense(7 * 7 * 64, 128)
      + _dense(128, 10)
  )
  assert expected == 421_834
  assert count_params(shapes["params"]) == expected


def test_cifar10_cnn_param_count():
  model = Cifar10CNN()
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *CIFAR_SHAPE)))
  )
  expected = 0
  cin = 3
  for cout in (64, 64, 128, 128, 196, 196):
    expected += _conv(3, cin, cout) + _bn(cout)
    cin = cout
  expected += _dense(4 * 4 * 196, 256) + _bn(256) + _dense(256, 10)
  assert expected == 1_639_794
  assert count_params(shapes["params"]) == expected


def _wrn_expected_params(depth: int, width: int, num_classes: int = 10) -> int:
  n = (depth - 4) // 6
  total = _conv(3, 3, 16, bias=False)
  cin = 16
  for cout in (16 * width, 32 * width, 64 * width):
    for _ in range(n):
      total += _bn(cin) + _conv(3, cin, cout, bias=False)
      total += _bn(cout) + _conv(3, cout, cout, bias=False)
      if cin != cout:
        total += _conv(1, cin, cout, bias=False)
      cin = cout
  return total + _bn(cin) + _dense(cin, num_classes)


@pytest.mark.parametrize("depth,width", [(34, 10), (28, 10), (10, 1)])
def test_wrn_param_count(depth, width):
  model = WideResNet(depth=depth, width=width)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *CIFAR_SHAPE)))
  )
  n_params = count_params(shapes["params"])
  assert n_params == _wrn_expected_params(depth, width)
  if (depth, width) == (34, 10):
    assert 46_000_000 <= n_params <= 46_500_000
    assert n_params == 46_160_474  # PyTorch Madry/TRADES WRN-34-10.


def test_wrn34_10_output_shape_abstract():
  model = get_model("wrn")
  x = jax.ShapeDtypeStruct((2, *CIFAR_SHAPE), jnp.float32)
  shapes = jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x
  )
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), shapes, x)
  assert out.shape == (2, 10)
  assert out.dtype == jnp.float32


@pytest.mark.parametrize("depth", [0, 9, 12, 33])
def test_wrn_invalid_depth_raises(depth):
  model = WideResNet(depth=depth, width=1)
  with pytest.raises(ValueError, match=f"depth={depth}"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, *CIFAR_SHAPE)))


def test_cifar_normalisation_is_fixed_and_inside_model(initialised):
  model, variables, x = initialised
  if isinstance(model, MnistCNN):
    pytest.skip("MnistCNN has no input normalisation")
  raw = model.clone(normalize=False)
  # Same variable tree with/without normalisation: constants are not params.
  raw_shapes = jax.eval_shape(
      lambda: raw.init(jax.random.PRNGKey(1), x, train=False)
  )
  assert jax.tree_util.tree_structure(
      variables
  ) == jax.tree_util.tree_structure(raw_shapes)
  mean = jnp.asarray(models.CIFAR10_MEAN)
  std = jnp.asarray(models.CIFAR10_STD)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  apply_raw = jax.jit(lambda v, x: raw.apply(v, x, train=False))
  np.testing.assert_allclose(
      np.asarray(apply(variables, x)),
      np.asarray(apply_raw(variables, (x - mean) / std)),
      rtol=1e-5,
      atol=1e-5,
  )


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (3, 28, 28, 1), (1, 7, 9, 2)])
def test_max_pool_2x2_matches_flax_forward(shape):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  ours = max_pool_2x2(x)
  ref = nn.max_pool(x, (2, 2), strides=(2, 2))
  assert (
      ours.shape
      == ref.shape
      == (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
  )
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 2)])
def test_max_pool_2x2_matches_flax_gradient(shape):
  # Continuous random inputs: ties have probability zero.
  x = jax.random.normal(jax.random.PRNGKey(1), shape)
  w = jax.random.normal(
      jax.random.PRNGKey(2), (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
  )
  g_ours = jax.grad(lambda x: jnp.sum(w * max_pool_2x2(x)))(x)
  g_ref = jax.grad(
      lambda x: jnp.sum(w * nn.max_pool(x, (2, 2), strides=(2, 2)))
  )(x)
  np.testing.assert_allclose(
      np.asarray(g_ours), np.asarray(g_ref), rtol=0, atol=0
  )


def test_max_pool_2x2_ties_route_the_gradient_to_the_first_maximum():
  """All of a window's gradient goes to its first maximum (top row first,
  then left), as with flax's max_pool."""
  x = jnp.asarray([[1.0, 1.0], [1.0, 1.0]]).reshape(1, 2, 2, 1)
  x = jnp.concatenate([x, jnp.asarray([[0.0, 2.0], [2.0, 2.0]]).reshape(
      1, 2, 2, 1)], axis=-1)
  pool = lambda f: jax.grad(lambda x: jnp.sum(f(x) * jnp.asarray([3.0, 5.0])))
  g = pool(max_pool_2x2)(x)
  np.testing.assert_array_equal(np.asarray(g[0, :, :, 0]), [[3, 0], [0, 0]])
  np.testing.assert_array_equal(np.asarray(g[0, :, :, 1]), [[0, 5], [0, 0]])
  np.testing.assert_array_equal(
      np.asarray(g), np.asarray(pool(
          lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)))(x)))


_JIT_VS_OP_BY_OP = """
import jax, jax.numpy as jnp, numpy as np
from dynamic_at import models, train
import dynamic_at
tx = train.make_optimizer(learning_rate=0.01, momentum=0.9, weight_decay=0.0,
                          steps_per_epoch=100)
state = train.create_train_state(models.MnistCNN(), jax.random.key(0),
                                 (28, 28, 1), tx)
rng = np.random.default_rng(0)
batch = {'image': rng.uniform(size=(16, 28, 28, 1)).astype(np.float32),
         'label': rng.integers(0, 10, 16).astype(np.int32)}
ap = train.AttackParams.make(0.3, 0.075, 2)
state, _ = jax.jit(train.make_train_step('standard'))(
    state, batch, jax.random.key(5), ap)
variables = {'params': state.params, 'batch_stats': state.batch_stats}
f = lambda x: state.apply_fn(variables, x, train=False)
x = jnp.asarray(rng.uniform(size=(16, 28, 28, 1)).astype(np.float32))
y = jnp.asarray(batch['label'])
g_jit = jax.jit(lambda x: dynamic_at.input_grad(f, x, y)[1])(x)
g_ops = dynamic_at.input_grad(f, x, y)[1]
print(float(jnp.abs(g_jit - g_ops).max()), float(jnp.abs(g_ops).max()))
"""


def test_jitted_input_gradient_equals_op_by_op_under_fast_compile_flags(
    subprocess_env):
  """The MNIST CNN's input gradient after a training step, jitted as one
  program and op by op, under the tests' fast-compile XLA flags
  (run_utils.FAST_XLA): with jnp.max's own gradient in the pooling they
  differed by up to 0.14."""
  assert subprocess_env['XLA_FLAGS'] == run_utils.FAST_XLA
  proc = subprocess.run([sys.executable, '-c', _JIT_VS_OP_BY_OP],
                        env=subprocess_env, cwd=run_utils.REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-5000:]
  diff, largest = map(float, proc.stdout.split()[-2:])
  assert largest > 1e-3  # a gradient worth comparing
  assert diff <= 1e-5 * max(1.0, largest), (diff, largest)


def test_max_pool_2x2_rejects_non_4d():
  with pytest.raises(ValueError):
    max_pool_2x2(jnp.zeros((4, 4)))


@pytest.mark.parametrize(
    "name,kwargs,cls",
    [
        ("mnist_cnn", {}, MnistCNN),
        ("cifar10_cnn", {}, Cifar10CNN),
        ("wrn", {"depth": 16, "width": 2}, WideResNet),
    ],
)
def test_get_model(name, kwargs, cls):
  model = get_model(name, **kwargs)
  assert isinstance(model, cls)
  for k, v in kwargs.items():
    assert getattr(model, k) == v


def test_get_model_default_wrn_is_34_10():
  model = get_model("wrn")
  assert (model.depth, model.width, model.num_classes) == (34, 10, 10)


def test_get_model_unknown_name_raises():
  with pytest.raises(ValueError, match="mnist_cnn.*cifar10_cnn.*wrn"):
    get_model("resnet18")


def test_count_params_concrete():
  params = {"a": jnp.zeros((2, 3)), "b": {"c": jnp.zeros((4,))}}
  assert count_params(params) == 10


@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 0), (1, 1))])
def test_fast_conv_matches_lax_conv_and_its_gradients(padding):
  """models.conv_general_dilated (custom input gradient) == lax's conv."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 7, 6, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 4, 5)), jnp.float32)
  dn = jax.lax.conv_dimension_numbers(
      x.shape, w.shape, ("NHWC", "HWIO", "NHWC")
  )

  def loss(conv, x_, w_):
    out = conv(x_, w_, (1, 1), padding, dimension_numbers=dn)
    return jnp.sum(jnp.sin(out))

  ours = jax.jit(
      jax.grad(functools.partial(loss, models.conv_general_dilated), (0, 1))
  )
  ref = jax.jit(
      jax.grad(functools.partial(loss, jax.lax.conv_general_dilated), (0, 1))
  )
  np.testing.assert_allclose(
      models.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn),
      jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn),
      rtol=1e-5,
      atol=1e-5,
  )
  for a, b in zip(ours(x, w), ref(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
