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
    PreActResNet18,
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
    ("preact_resnet18", {}, CIFAR_SHAPE),
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
        ("preact_resnet18", {"normalize": False}, PreActResNet18),
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


# ---------------------------------------------------------------------------
# PreAct ResNet-18 (Wong et al. 2020, Rice et al. 2020)
# ---------------------------------------------------------------------------


def _preact_resnet18_expected_params(num_classes: int = 10) -> int:
  """The reference's ``preact_resnet.py``, layer by layer."""
  total = _conv(3, 3, 64, bias=False)
  cin = 64
  for planes, stride in zip((64, 128, 256, 512), (1, 2, 2, 2)):
    for i in range(2):
      s = stride if i == 0 else 1
      total += _bn(cin) + _conv(3, cin, planes, bias=False)
      total += _bn(planes) + _conv(3, planes, planes, bias=False)
      if s != 1 or cin != planes:
        total += _conv(1, cin, planes, bias=False)
      cin = planes
  return total + _bn(512) + _dense(512, num_classes)


def test_preact_resnet18_param_count_and_shapes():
  model = get_model("preact_resnet18")
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *CIFAR_SHAPE)))
  )
  params = shapes["params"]
  assert count_params(params) == _preact_resnet18_expected_params()
  # PyTorch's count of the reference PreActResNet18 (11,173,962 is the
  # post-activation ResNet18 of the same repositories: 1,792 more, its
  # shortcuts have BatchNorms).
  assert count_params(params) == 11_172_170
  assert count_params(shapes["batch_stats"]) == 2 * 3904  # mean, var
  # Stages of two blocks, 64-128-256-512, 1x1 shortcuts where the shape
  # changes, no convolution biases.
  assert sorted(params) == [
      "bn", "conv1", "layer1_0", "layer1_1", "layer2_0", "layer2_1",
      "layer3_0", "layer3_1", "layer4_0", "layer4_1", "linear"]
  for stage, planes in enumerate((64, 128, 256, 512), start=1):
    first = params[f"layer{stage}_0"]
    assert ("shortcut" in first) == (stage > 1)
    assert "shortcut" not in params[f"layer{stage}_1"]
    assert first["conv2"]["kernel"].shape == (3, 3, planes, planes)
    for block in (first, params[f"layer{stage}_1"]):
      assert set(block["conv1"]) == {"kernel"}
  assert params["layer2_0"]["shortcut"]["kernel"].shape == (1, 1, 64, 128)
  assert params["linear"]["kernel"].shape == (512, 10)
  assert count_params(jax.eval_shape(lambda: get_model(
      "preact_resnet18", num_classes=100).init(
          jax.random.PRNGKey(0), jnp.zeros((1, *CIFAR_SHAPE))))["params"]) == (
              _preact_resnet18_expected_params(100))


def test_preact_resnet18_output_shape_and_downsampling():
  model = get_model("preact_resnet18")
  x = jax.ShapeDtypeStruct((3, *CIFAR_SHAPE), jnp.float32)
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x
  )
  out = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False), variables, x
  )
  assert (out.shape, out.dtype) == ((3, 10), jnp.float32)
  # The last stage sees a 4x4 map (strides 1, 2, 2, 2 of a 32x32 input).
  _, inter = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False,
                               capture_intermediates=True,
                               mutable=["intermediates"]), variables, x)
  assert inter["intermediates"]["layer4_1"]["__call__"][0].shape == (
      3, 4, 4, 512)
  assert inter["intermediates"]["layer1_1"]["__call__"][0].shape == (
      3, 32, 32, 64)


def test_preact_resnet18_init_is_pytorch_default():
  """Conv and Linear weights U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's
  kaiming_uniform(a=sqrt(5))), Linear bias the same, BatchNorm 1 / 0."""
  model = get_model("preact_resnet18")
  variables = jax.jit(lambda k: model.init(
      k, jnp.zeros((1, *CIFAR_SHAPE)), train=False))(jax.random.PRNGKey(3))
  p = variables["params"]
  for w, fan_in in ((p["conv1"]["kernel"], 27),
                    (p["layer3_0"]["conv1"]["kernel"], 9 * 128),
                    (p["layer3_0"]["shortcut"]["kernel"], 128),
                    (p["linear"]["kernel"], 512)):
    bound = 1 / np.sqrt(fan_in)
    w = np.asarray(w)
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.95 * bound  # uniform: reaches the bound
    np.testing.assert_allclose(w.std(), bound / np.sqrt(3), rtol=0.1)
  bias = np.asarray(p["linear"]["bias"])  # 10 draws of U(-b, b), b = 1/sqrt(512)
  assert np.abs(bias).max() <= 1 / np.sqrt(512) and len(set(bias)) == 10
  np.testing.assert_array_equal(p["bn"]["scale"], np.ones(512))
  np.testing.assert_array_equal(p["bn"]["bias"], np.zeros(512))


def test_preact_resnet18_uses_the_fast_convolution_path(monkeypatch):
  """Its stride-1 convolutions go through models.conv_general_dilated's
  custom input gradient (_conv_s1); the strided ones do not."""
  calls = []
  real = models._conv_s1

  def spy(lhs, rhs, padding):
    calls.append(rhs.shape)
    return real(lhs, rhs, padding)

  monkeypatch.setattr(models, "_conv_s1", spy)
  model = get_model("preact_resnet18")
  x = jax.ShapeDtypeStruct((1, *CIFAR_SHAPE), jnp.float32)
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
  calls.clear()
  jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  # 1 stem + 8 blocks x 2 convolutions, less the 3 strided first convs.
  assert len(calls) == 1 + 16 - 3
  assert (1, 1, 64, 128) not in calls  # the strided shortcut


# ---------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------


def test_registry_declares_every_model():
  assert models.MODEL_NAMES == (
      "mnist_cnn", "cifar10_cnn", "wrn", "preact_resnet18")
  assert models.models_for_dataset("mnist") == ("mnist_cnn",)
  assert models.models_for_dataset("cifar10") == (
      "cifar10_cnn", "wrn", "preact_resnet18")
  for name, spec in models.MODELS.items():
    assert spec.name == name
    assert spec.input_shape == {"mnist": MNIST_SHAPE,
                                "cifar10": CIFAR_SHAPE}[spec.datasets[0]]
    # The default arguments are the constructor's own defaults.
    module = spec.constructor()
    for k, v in spec.default_kwargs.items():
      assert getattr(module, k) == v, (name, k)
    assert get_model(name) == spec.constructor(**spec.default_kwargs)


def test_model_kwargs_are_checked():
  assert models.model_kwargs("wrn", {"depth": 16}) == {
      "depth": 16, "width": 10, "num_classes": 10, "normalize": True}
  assert models.model_kwargs("mnist_cnn") == {"num_classes": 10}
  with pytest.raises(models.ModelKwargsError,
                     match="takes no argument 'depth'; its arguments: "
                     "num_classes") as e:
    get_model("mnist_cnn", depth=3)
  assert e.value.kwarg == "depth"
  with pytest.raises(models.ModelKwargsError, match="depth=12: ") as e:
    get_model("wrn", depth=12)
  assert e.value.kwarg == "depth"
  with pytest.raises(models.ModelKwargsError, match="must be a bool"):
    get_model("cifar10_cnn", normalize="yes")
  with pytest.raises(models.ModelKwargsError, match="must be a int"):
    get_model("wrn", width=True)
  with pytest.raises(models.ModelKwargsError, match="num_classes=1: "):
    get_model("preact_resnet18", num_classes=1)
  assert models.MODELS["wrn"].architecture({"depth": 28}) == (
      "WideResNet-28-10")
  assert models.MODELS["mnist_cnn"].architecture() == "mnist_cnn"
  assert models.MODELS["preact_resnet18"].architecture() == "PreActResNet-18"


def test_register_model_refuses_a_taken_name():
  with pytest.raises(ValueError, match="already registered"):
    models.register_model(models.MODELS["wrn"])
