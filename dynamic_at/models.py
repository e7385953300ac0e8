"""Models used in "On the Convergence and Robustness of Adversarial Training".

This module implements, in Flax linen, the classifiers of Wang et al. (ICML
2019):

* :class:`MnistCNN` -- a small 4-layer CNN for MNIST.
* :class:`Cifar10CNN` -- the paper's 8-layer CNN for CIFAR-10.
* :class:`WideResNet` -- the pre-activation Wide ResNet used by Madry et al.
  and TRADES (WRN-34-10 by default, about 46.2M parameters).

Conventions shared by every model:

* Inputs are images with pixel values in ``[0, 1]``, layout NHWC, float32.
  Any input normalisation (e.g. CIFAR-10 per-channel mean/std) is applied
  *inside* the model with fixed constants (not parameters), so adversarial
  perturbations and their budgets ``eps`` live in pixel space.
* ``__call__(x, train)``: with ``train=True`` BatchNorm uses batch statistics
  and updates the ``batch_stats`` collection (apply with
  ``mutable=['batch_stats']``); with ``train=False`` it uses the running
  averages, so every example's output is independent of the rest of the batch
  (important for per-example attacks).
* Output: unnormalised logits of shape ``[B, num_classes]``.

All BatchNorm layers mirror the PyTorch defaults (momentum 0.1, i.e. flax
``momentum=0.9``; ``epsilon=1e-5``).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "MODEL_NAMES",
    "Cifar10CNN",
    "MnistCNN",
    "WideResNet",
    "count_params",
    "get_model",
    "max_pool_2x2",
]

# Per-channel statistics of the CIFAR-10 training set (pixel values in [0, 1]).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

_BN_MOMENTUM = 0.9  # flax convention; equals PyTorch's default momentum 0.1.
_BN_EPSILON = 1e-5

# He/Kaiming normal with fan-out, as in the PyTorch WRN of Madry/TRADES.
_kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
  """Creates a BatchNorm layer with PyTorch-like hyper-parameters.

  Args:
      train: If True, normalise with batch statistics and update the running
          averages; otherwise use the running averages.
      name: Optional submodule name.

  Returns:
      A configured ``flax.linen.BatchNorm`` module.
  """
  return nn.BatchNorm(
      use_running_average=not train,
      momentum=_BN_MOMENTUM,
      epsilon=_BN_EPSILON,
      name=name,
  )


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling with stride 2 ('VALID' padding), NHWC.

  Implemented as a reshape to ``[B, H/2, 2, W/2, 2, C]`` followed by
  ``jnp.max`` over axes (2, 4). The forward result is identical to
  ``flax.linen.max_pool(x, (2, 2), strides=(2, 2))``, but the backward pass
  avoids XLA's ``select_and_scatter`` which is slow on the CPU backend
  (measured to make an MNIST PGD training step roughly 46% faster).

  If ``H`` or ``W`` is odd, the last row/column is cropped before pooling,
  which matches 'VALID' padding of ``flax.linen.max_pool``
  (output size ``floor(H/2) x floor(W/2)``).

  The gradient goes to one entry per window, the first maximum (top row
  before bottom, left before right), through the index found in the forward
  pass, as ``flax.linen.max_pool`` routes it. It does not compare the input
  with the pooled output again (``jnp.max``'s own gradient does): under
  XLA's CPU flag ``--xla_backend_optimization_level=0`` that comparison
  failed inside a jitted MNIST CNN input gradient, whose values then
  differed from the op-by-op ones by up to 0.14 (largest entry 0.19).

  Args:
      x: Array of shape ``[B, H, W, C]``.

  Returns:
      Array of shape ``[B, H // 2, W // 2, C]``.
  """
  if x.ndim != 4:
    raise ValueError(f"max_pool_2x2 expects NHWC input, got shape {x.shape}")
  b, h, w, c = x.shape
  h2, w2 = h // 2, w // 2
  x = x[:, : 2 * h2, : 2 * w2, :]
  return _max_of_windows(x.reshape(b, h2, 2, w2, 2, c))


@jax.custom_vjp
def _max_of_windows(x6: jax.Array) -> jax.Array:
  """``[B, H2, 2, W2, 2, C] -> [B, H2, W2, C]``: the max over axes 2 and 4."""
  return jnp.max(x6, axis=(2, 4))


def _max_of_windows_fwd(x6):
  col = jnp.argmax(x6, axis=4)  # [B, H2, 2, W2, C]: each row's first max
  rows = jnp.max(x6, axis=4)
  row = jnp.argmax(rows, axis=2)  # [B, H2, W2, C]: the first row's max
  return jnp.max(rows, axis=2), (row, col)


def _max_of_windows_bwd(res, g):
  row, col = res
  g_rows = g[:, :, None] * jax.nn.one_hot(row, 2, dtype=g.dtype, axis=2)
  return (g_rows[:, :, :, :, None] *
          jax.nn.one_hot(col, 2, dtype=g.dtype, axis=4),)


_max_of_windows.defvjp(_max_of_windows_fwd, _max_of_windows_bwd)


def _same_conv(lhs: jax.Array, rhs: jax.Array, padding) -> jax.Array:
  return jax.lax.conv_general_dilated(
      lhs, rhs, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_s1(lhs: jax.Array, rhs: jax.Array, padding) -> jax.Array:
  return _same_conv(lhs, rhs, padding)


def _conv_s1_fwd(lhs, rhs, padding):
  return _same_conv(lhs, rhs, padding), (lhs, rhs)


def _conv_s1_bwd(padding, res, g):
  lhs, rhs = res
  kh, kw = rhs.shape[:2]
  (pt, pb), (pl, pr) = padding
  # The input gradient is the 'full' correlation of g with the spatially
  # flipped kernel whose in/out features are swapped. Materialised behind an
  # optimization barrier so that XLA keeps the kernel in HWIO order instead
  # of folding the transpose into the convolution's dimension numbers (an
  # 'OIHW-like' kernel that the CPU backend runs on a slow path).
  rt = jax.lax.optimization_barrier(jnp.flip(rhs, (0, 1)).transpose(0, 1, 3, 2))
  dx = _same_conv(
      g, rt, ((kh - 1 - pt, kh - 1 - pb), (kw - 1 - pl, kw - 1 - pr))
  )
  _, vjp = jax.vjp(lambda w: _same_conv(lhs, w, padding), rhs)
  return dx, vjp(g)[0]


_conv_s1.defvjp(_conv_s1_fwd, _conv_s1_bwd)


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
):
  """``lax.conv_general_dilated`` with a CPU-friendly input gradient.

  Used by the models' convolutions. For the case they use (NHWC/HWIO,
  stride 1, no dilation, one group) the forward pass is the same
  convolution, and the backward pass computes the input gradient as a
  convolution with an explicitly transposed HWIO kernel; every other case
  falls through to ``lax.conv_general_dilated``.

  Why: for the input gradient JAX's transpose rule emits a convolution with
  a reversed kernel whose feature dimensions are swapped
  (``dim_labels=..._01oi``). With a traced kernel (parameters passed to a
  jitted step, as in training) XLA's CPU backend (jax 0.10.2) runs that
  convolution on a slow path instead of its YNNPACK kernels: it took about
  60% of the PGD-10 training step of the MNIST CNN. Materialising the
  transposed kernel made the step 2.1x faster on MNIST and CIFAR-10 with
  bit-identical parameters after a step (``python -m benchmarks.conv_grad``).

  The rule is a ``jax.custom_vjp``: reverse mode (``grad``, ``vjp``, also
  reverse-over-reverse) works; forward mode (``jvp``, ``jacfwd``) through
  these convolutions does not (nothing in this project uses it).
  """
  simple = (
      tuple(window_strides) == (1, 1)
      and lhs_dilation in (None, (1, 1))
      and rhs_dilation in (None, (1, 1))
      and feature_group_count == 1
      and batch_group_count == 1
      and precision is None
      and preferred_element_type is None
      and lhs.ndim == 4
      and dimension_numbers is not None
      and tuple(getattr(dimension_numbers, "lhs_spec", ())) == (0, 3, 1, 2)
      and tuple(getattr(dimension_numbers, "rhs_spec", ())) == (3, 2, 0, 1)
      and tuple(getattr(dimension_numbers, "out_spec", ())) == (0, 3, 1, 2)
  )
  if simple:
    if isinstance(padding, str):
      padding = jax.lax.padtype_to_pads(
          lhs.shape[1:3], rhs.shape[:2], (1, 1), padding
      )
    return _conv_s1(lhs, rhs, tuple(tuple(int(q) for q in p) for p in padding))
  return jax.lax.conv_general_dilated(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      batch_group_count=batch_group_count,
      precision=precision,
      preferred_element_type=preferred_element_type,
  )


def _normalize(
    x: jax.Array, mean: Sequence[float], std: Sequence[float]
) -> jax.Array:
  """Applies fixed per-channel normalisation ``(x - mean) / std``.

  Args:
      x: NHWC images in [0, 1].
      mean: Per-channel means.
      std: Per-channel standard deviations.

  Returns:
      The normalised images, same shape and dtype as ``x``.
  """
  mean_arr = jnp.asarray(mean, dtype=x.dtype)
  std_arr = jnp.asarray(std, dtype=x.dtype)
  return (x - mean_arr) / std_arr


def _conv_bn_relu(x: jax.Array, features: int, train: bool) -> jax.Array:
  """3x3 'SAME' convolution (with :func:`conv_general_dilated`), BatchNorm,
  ReLU: the block of both paper CNNs. Call it inside a compact module; its
  submodules are named there (``Conv_i``, ``BatchNorm_i``) as if inlined."""
  x = nn.Conv(
      features,
      (3, 3),
      padding="SAME",
      conv_general_dilated=conv_general_dilated,
  )(x)
  return nn.relu(_batch_norm(train)(x))


class MnistCNN(nn.Module):
  """Small CNN for MNIST.

  Architecture: conv3x3-32 + BN + ReLU + maxpool2, conv3x3-64 + BN + ReLU +
  maxpool2, flatten, dense-128 + ReLU, dense-``num_classes``.
  No input normalisation (inputs in [0, 1] are used as is).

  Attributes:
      num_classes: Number of output logits.
  """

  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Computes logits.

    Args:
        x: Images ``[B, 28, 28, 1]`` with values in [0, 1].
        train: Whether BatchNorm uses (and updates) batch statistics.

    Returns:
        Logits of shape ``[B, num_classes]``.
    """
    for features in (32, 64):
      x = max_pool_2x2(_conv_bn_relu(x, features, train))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(128)(x))
    return nn.Dense(self.num_classes)(x)


class Cifar10CNN(nn.Module):
  """The 8-layer CNN for CIFAR-10 of Wang et al. (2019).

  Architecture: [conv64 x2, pool], [conv128 x2, pool], [conv196 x2, pool],
  each conv 3x3 'SAME' + BN + ReLU; flatten; dense-256 + BN + ReLU;
  dense-``num_classes``. Inputs are normalised inside the model with the
  fixed CIFAR-10 per-channel mean/std.

  Attributes:
      num_classes: Number of output logits.
      normalize: Whether to apply CIFAR-10 mean/std normalisation.
  """

  num_classes: int = 10
  normalize: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Logits ``[B, num_classes]`` of images ``x`` ``[B, 32, 32, 3]`` in
    [0, 1]; with ``train`` BatchNorm uses (and updates) batch statistics."""
    if self.normalize:
      x = _normalize(x, CIFAR10_MEAN, CIFAR10_STD)
    for features in (64, 128, 196):
      for _ in range(2):
        x = _conv_bn_relu(x, features, train)
      x = max_pool_2x2(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(256)(x)
    x = _batch_norm(train)(x)
    x = nn.relu(x)
    return nn.Dense(self.num_classes)(x)


class _WideBasicBlock(nn.Module):
  """Pre-activation wide basic block (Madry / TRADES WRN).

  ``BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3`` plus a shortcut. When the
  number of channels changes, the shortcut is a 1x1 strided convolution of
  the pre-activated input; otherwise it is the identity on the raw input.

  Attributes:
      out_channels: Number of output channels.
      stride: Stride of the first convolution (and of the shortcut).
  """

  out_channels: int
  stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Applies the block.

    Args:
        x: NHWC feature map.
        train: Whether BatchNorm uses (and updates) batch statistics.

    Returns:
        The output feature map.
    """
    conv = functools.partial(
        nn.Conv, use_bias=False, kernel_init=_kaiming_fan_out
    )
    equal_in_out = x.shape[-1] == self.out_channels
    act = nn.relu(_batch_norm(train, name="bn1")(x))
    if equal_in_out:
      if self.stride != 1:
        raise ValueError("identity shortcut requires stride 1")
      shortcut = x
    else:
      shortcut = conv(
          self.out_channels,
          (1, 1),
          strides=(self.stride, self.stride),
          padding="VALID",
          name="shortcut",
      )(act)
    out = conv(
        self.out_channels,
        (3, 3),
        strides=(self.stride, self.stride),
        padding=((1, 1), (1, 1)),
        name="conv1",
    )(act)
    out = nn.relu(_batch_norm(train, name="bn2")(out))
    out = conv(
        self.out_channels, (3, 3), padding=((1, 1), (1, 1)), name="conv2"
    )(out)
    return out + shortcut


class WideResNet(nn.Module):
  """Pre-activation Wide ResNet (Zagoruyko & Komodakis), as in Madry/TRADES.

  A 3x3 conv stem with 16 channels is followed by three groups of
  ``(depth - 4) // 6`` wide basic blocks with ``16k``, ``32k`` and ``64k``
  channels (``k = width``; strides 1, 2, 2), then BN + ReLU, global average
  pooling and a dense classifier. WRN-34-10 has about 46.2M parameters.
  Inputs are normalised inside the model with the fixed CIFAR-10
  per-channel mean/std (set ``normalize=False`` to feed raw [0, 1] pixels,
  as TRADES does).

  Attributes:
      depth: Network depth; ``(depth - 4)`` must be divisible by 6.
      width: Widening factor ``k``.
      num_classes: Number of output logits.
      normalize: Whether to apply CIFAR-10 mean/std normalisation.
  """

  depth: int = 34
  width: int = 10
  num_classes: int = 10
  normalize: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Computes logits.

    Args:
        x: Images ``[B, H, W, 3]`` with values in [0, 1].
        train: Whether BatchNorm uses (and updates) batch statistics.

    Returns:
        Logits of shape ``[B, num_classes]``.

    Raises:
        ValueError: If ``depth`` is invalid or ``width`` is not positive.
    """
    if self.depth < 10 or (self.depth - 4) % 6 != 0:
      raise ValueError(
          f"WideResNet depth must satisfy (depth - 4) % 6 == 0 and "
          f"depth >= 10, got depth={self.depth}"
      )
    if self.width < 1:
      raise ValueError(f"WideResNet width must be >= 1, got width={self.width}")
    n = (self.depth - 4) // 6
    if self.normalize:
      x = _normalize(x, CIFAR10_MEAN, CIFAR10_STD)
    x = nn.Conv(
        16,
        (3, 3),
        padding=((1, 1), (1, 1)),
        use_bias=False,
        kernel_init=_kaiming_fan_out,
        name="stem",
    )(x)
    widths = (16 * self.width, 32 * self.width, 64 * self.width)
    strides = (1, 2, 2)
    for g, (ch, stride) in enumerate(zip(widths, strides)):
      for i in range(n):
        x = _WideBasicBlock(
            ch, stride if i == 0 else 1, name=f"group{g}_block{i}"
        )(x, train)
    x = nn.relu(_batch_norm(train, name="bn_final")(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(
        self.num_classes, bias_init=nn.initializers.zeros, name="classifier"
    )(x)


_MODEL_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "mnist_cnn": MnistCNN,
    "cifar10_cnn": Cifar10CNN,
    "wrn": WideResNet,
}

MODEL_NAMES: tuple[str, ...] = tuple(_MODEL_FACTORIES)


def get_model(name: str, **kwargs: Any) -> nn.Module:
  """Builds a model by name.

  Args:
      name: One of ``'mnist_cnn'``, ``'cifar10_cnn'``, ``'wrn'``.
      **kwargs: Forwarded to the model constructor (e.g. ``depth`` and
          ``width`` for ``'wrn'``, ``num_classes`` for any model).

  Returns:
      The (uninitialised) Flax module.

  Raises:
      ValueError: If ``name`` is unknown.
  """
  try:
    factory = _MODEL_FACTORIES[name]
  except KeyError:
    raise ValueError(
        f"Unknown model name {name!r}; valid names: {', '.join(MODEL_NAMES)}"
    ) from None
  return factory(**kwargs)


def count_params(params: Any) -> int:
  """Counts the scalar entries of a parameter pytree.

  Works on concrete arrays and on ``jax.ShapeDtypeStruct`` leaves (e.g. the
  output of ``jax.eval_shape``).

  Args:
      params: A pytree of arrays (e.g. ``variables['params']``).

  Returns:
      The total number of scalars.
  """
  return int(
      sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))
  )
