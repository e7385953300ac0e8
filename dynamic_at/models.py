"""Models used in "On the Convergence and Robustness of Adversarial Training".

This module implements, in Flax linen, the classifiers of Wang et al. (ICML
2019):

* :class:`MnistCNN` -- a small 4-layer CNN for MNIST.
* :class:`Cifar10CNN` -- the paper's 8-layer CNN for CIFAR-10.
* :class:`WideResNet` -- the pre-activation Wide ResNet used by Madry et al.
  and TRADES (WRN-34-10 by default, about 46.2M parameters).
* :class:`PreActResNet18` -- the pre-activation ResNet-18 of Wong et al.
  (2020) and Rice et al. (2020), the usual model of efficient adversarial
  training benchmarks (11,172,170 parameters).

A model is a name plus its keyword arguments: :data:`MODELS` holds one
:class:`ModelSpec` per name (constructor, default arguments, the datasets it
fits, its input shape), and :func:`get_model` / :func:`model_kwargs` build
and check a model from a name and arguments. Adding a model is its class and
one :func:`register_model` call.

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

import dataclasses
import functools
import math
import types
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "MODELS",
    "MODEL_NAMES",
    "Cifar10CNN",
    "MnistCNN",
    "ModelKwargsError",
    "ModelSpec",
    "PreActResNet18",
    "WideResNet",
    "count_params",
    "get_model",
    "max_pool_2x2",
    "model_kwargs",
    "model_spec",
    "models_for_dataset",
    "register_model",
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


class _PreActBlock(nn.Module):
  """The pre-activation basic block of PreAct ResNet (He et al. 2016), as in
  Wong et al.'s and Rice et al.'s ``preact_resnet.py``.

  ``BN-ReLU`` of the input feeds ``conv3x3(stride)-BN-ReLU-conv3x3``; the
  shortcut is a 1x1 strided convolution of that pre-activated input when the
  stride or the number of channels changes, else the raw input. No
  convolution has a bias.

  Attributes:
      planes: Number of output channels.
      stride: Stride of the first convolution (and of the shortcut).
  """

  planes: int
  stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Applies the block to the NHWC feature map ``x``."""
    conv = functools.partial(
        nn.Conv,
        use_bias=False,
        kernel_init=_torch_default_init,
        conv_general_dilated=conv_general_dilated,
    )
    out = nn.relu(_batch_norm(train, name="bn1")(x))
    if self.stride != 1 or x.shape[-1] != self.planes:
      shortcut = conv(
          self.planes,
          (1, 1),
          strides=(self.stride, self.stride),
          padding="VALID",
          name="shortcut",
      )(out)
    else:
      shortcut = x
    out = conv(
        self.planes,
        (3, 3),
        strides=(self.stride, self.stride),
        padding=((1, 1), (1, 1)),
        name="conv1",
    )(out)
    out = nn.relu(_batch_norm(train, name="bn2")(out))
    out = conv(self.planes, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(
        out
    )
    return out + shortcut


# PyTorch's default initialisation of Conv2d and Linear weights,
# kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_torch_default_init = nn.initializers.variance_scaling(
    1.0 / 3.0, "fan_in", "uniform"
)


def _torch_linear_bias_init(fan_in: int):
  """PyTorch's Linear bias initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class PreActResNet18(nn.Module):
  """PreAct ResNet-18 for CIFAR-10, as in Wong et al. (2020, "Fast is better
  than free") and Rice et al. (2020, "Overfitting in adversarially robust
  deep learning"), ``preact_resnet.py`` of their code.

  A 3x3 convolution with 64 channels, four stages of two
  :class:`_PreActBlock` with 64, 128, 256 and 512 channels (strides 1, 2, 2,
  2), then BN + ReLU, average pooling over the 4x4 map (of 32x32 inputs; here
  the global mean) and a dense classifier. 11,172,170 parameters for 10
  classes, as PyTorch counts the reference's (BatchNorm's running statistics
  are not parameters; 11,173,962 is the post-activation ResNet-18 of the same
  repositories, whose shortcuts have a BatchNorm each). Weights are initialised as PyTorch's
  defaults do (the reference sets none). The stride-1 convolutions use
  :func:`conv_general_dilated` (the CPU-friendly input gradient); the
  strided ones fall through to ``lax``'s.

  The reference normalises its inputs outside the model with the CIFAR-10
  mean and standard deviation; here, as for the other CIFAR-10 models, that
  happens inside the model with fixed constants (``normalize=False``: raw
  [0, 1] pixels).

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
    x = nn.Conv(
        64,
        (3, 3),
        padding=((1, 1), (1, 1)),
        use_bias=False,
        kernel_init=_torch_default_init,
        conv_general_dilated=conv_general_dilated,
        name="conv1",
    )(x)
    for stage, (planes, stride) in enumerate(
        zip((64, 128, 256, 512), (1, 2, 2, 2))
    ):
      for i in range(2):
        x = _PreActBlock(
            planes, stride if i == 0 else 1, name=f"layer{stage + 1}_{i}"
        )(x, train)
    x = nn.relu(_batch_norm(train, name="bn")(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(
        self.num_classes,
        kernel_init=_torch_default_init,
        bias_init=_torch_linear_bias_init(x.shape[-1]),
        name="linear",
    )(x)


# --------------------------------------------------------------------------
# The registry: a model is a name plus its keyword arguments
# --------------------------------------------------------------------------


class ModelKwargsError(ValueError):
  """Keyword arguments a model does not take or does not accept.

  Attributes:
      kwarg: the argument at fault (``None``: the arguments as a whole).
  """

  def __init__(self, message: str, kwarg: Optional[str] = None):
    super().__init__(message)
    self.kwarg = kwarg


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """One model: everything the rest of the code needs to know about it.

  Attributes:
      name: the registry name (``--model``).
      constructor: builds the Flax module from the keyword arguments.
      default_kwargs: every argument a user may set, with its default; a
          value's type is the argument's type (an int is accepted for a
          float).
      datasets: the datasets it fits.
      input_shape: the image shape ``(H, W, C)`` it takes.
      description: one line for help texts and tables.
      check: ``check(kwargs) -> None`` raising :class:`ModelKwargsError`
          (naming the argument) for arguments the constructor would refuse
          only when the model is first applied.
      display: ``display(kwargs) -> str``, the architecture's name as papers
          write it (e.g. ``'WideResNet-34-10'``).
      flag_kwargs: ``{argument: flag}`` for the older per-model flags of
          ``experiments.config`` that set an argument (``--wrn_depth``).
  """

  name: str
  constructor: Callable[..., nn.Module]
  default_kwargs: Mapping[str, Any]
  datasets: Tuple[str, ...]
  input_shape: Tuple[int, int, int]
  description: str = ""
  check: Optional[Callable[[Mapping[str, Any]], None]] = None
  display: Optional[Callable[[Mapping[str, Any]], str]] = None
  flag_kwargs: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    object.__setattr__(
        self, "default_kwargs", types.MappingProxyType(dict(self.default_kwargs))
    )
    object.__setattr__(
        self, "flag_kwargs", types.MappingProxyType(dict(self.flag_kwargs))
    )
    object.__setattr__(self, "datasets", tuple(self.datasets))
    object.__setattr__(self, "input_shape", tuple(self.input_shape))
    unknown = set(self.flag_kwargs) - set(self.default_kwargs)
    if unknown:
      raise ValueError(
          f"model {self.name!r}: flag_kwargs name arguments it does not "
          f"take: {sorted(unknown)}"
      )

  def kwargs(self, given: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """All of the model's arguments: ``given`` over the defaults, checked.

    Raises:
        ModelKwargsError: an argument the model does not take (the message
            lists those it does), a value of the wrong type, or one the
            model's own ``check`` refuses.
    """
    given = dict(given or {})
    unknown = sorted(set(given) - set(self.default_kwargs))
    if unknown:
      known = ", ".join(self.default_kwargs) or "none"
      raise ModelKwargsError(
          f"model {self.name!r} takes no argument "
          f"{', '.join(map(repr, unknown))}; its arguments: {known}.",
          unknown[0],
      )
    out = dict(self.default_kwargs)
    for k, v in given.items():
      default = self.default_kwargs[k]
      if isinstance(default, bool) or not isinstance(default, (int, float)):
        ok = type(v) is type(default)
      elif isinstance(default, int):
        ok = isinstance(v, int) and not isinstance(v, bool)
      else:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        v = float(v) if ok else v
      if not ok:
        raise ModelKwargsError(
            f"model {self.name!r}: {k}={v!r} must be a "
            f"{type(default).__name__} (default {default!r}).",
            k,
        )
      out[k] = v
    if self.check is not None:
      self.check(out)
    return out

  def build(self, **kwargs: Any) -> nn.Module:
    """The (uninitialised) Flax module with ``kwargs`` over the defaults."""
    return self.constructor(**self.kwargs(kwargs))

  def architecture(self, kwargs: Optional[Mapping[str, Any]] = None) -> str:
    """The architecture's name with ``kwargs`` (e.g. ``'WideResNet-34-10'``)."""
    full = self.kwargs(kwargs)
    return self.display(full) if self.display else self.name


MODELS: Dict[str, ModelSpec] = {}
MODEL_NAMES: Tuple[str, ...] = ()


def register_model(spec: ModelSpec) -> ModelSpec:
  """Adds ``spec`` to :data:`MODELS` (and its name to :data:`MODEL_NAMES`).

  Raises:
      ValueError: if the name is taken.
  """
  global MODEL_NAMES
  if spec.name in MODELS:
    raise ValueError(f"model {spec.name!r} is already registered")
  spec.kwargs()  # the defaults pass the model's own check
  MODELS[spec.name] = spec
  MODEL_NAMES = tuple(MODELS)
  return spec


def _check_wrn(kwargs: Mapping[str, Any]) -> None:
  depth, width = kwargs["depth"], kwargs["width"]
  if depth < 10 or (depth - 4) % 6 != 0:
    raise ModelKwargsError(
        f"depth={depth}: (depth - 4) must be divisible by 6 and depth >= 10 "
        "(e.g. 16, 28, 34).",
        "depth",
    )
  if width < 1:
    raise ModelKwargsError(f"width={width}: the width k must be >= 1.",
                           "width")


def _check_num_classes(kwargs: Mapping[str, Any]) -> None:
  if kwargs["num_classes"] < 2:
    raise ModelKwargsError(
        f"num_classes={kwargs['num_classes']}: must be >= 2.", "num_classes"
    )


def _checks(*fns):
  def check(kwargs):
    for fn in fns:
      fn(kwargs)

  return check


register_model(ModelSpec(
    name="mnist_cnn",
    constructor=MnistCNN,
    default_kwargs={"num_classes": 10},
    datasets=("mnist",),
    input_shape=(28, 28, 1),
    description="the paper's 4-layer MNIST CNN",
    check=_check_num_classes,
))
register_model(ModelSpec(
    name="cifar10_cnn",
    constructor=Cifar10CNN,
    default_kwargs={"num_classes": 10, "normalize": True},
    datasets=("cifar10",),
    input_shape=(32, 32, 3),
    description="the paper's 8-layer CIFAR-10 CNN",
    check=_check_num_classes,
))
register_model(ModelSpec(
    name="wrn",
    constructor=WideResNet,
    default_kwargs={"depth": 34, "width": 10, "num_classes": 10,
                    "normalize": True},
    datasets=("cifar10",),
    input_shape=(32, 32, 3),
    description="pre-activation WideResNet (Madry et al., TRADES)",
    check=_checks(_check_wrn, _check_num_classes),
    display=lambda kw: f"WideResNet-{kw['depth']}-{kw['width']}",
    flag_kwargs={"depth": "wrn_depth", "width": "wrn_width"},
))
register_model(ModelSpec(
    name="preact_resnet18",
    constructor=PreActResNet18,
    default_kwargs={"num_classes": 10, "normalize": True},
    datasets=("cifar10",),
    input_shape=(32, 32, 3),
    description="PreAct ResNet-18 (Wong et al. 2020, Rice et al. 2020)",
    check=_check_num_classes,
    display=lambda kw: "PreActResNet-18",
))


def model_spec(name: str) -> ModelSpec:
  """The :class:`ModelSpec` of ``name``.

  Raises:
      ValueError: if ``name`` is unknown (the message lists the known ones).
  """
  try:
    return MODELS[name]
  except KeyError:
    raise ValueError(
        f"Unknown model name {name!r}; valid names: {', '.join(MODEL_NAMES)}"
    ) from None


def model_kwargs(name: str, given: Optional[Mapping[str, Any]] = None
                 ) -> Dict[str, Any]:
  """All arguments of model ``name``: ``given`` over its defaults, checked
  (:meth:`ModelSpec.kwargs`)."""
  return model_spec(name).kwargs(given)


def models_for_dataset(dataset: str) -> Tuple[str, ...]:
  """The names of the models that fit ``dataset``, in registration order."""
  return tuple(n for n, s in MODELS.items() if dataset in s.datasets)


def get_model(name: str, **kwargs: Any) -> nn.Module:
  """Builds a model by name.

  Args:
      name: A name of :data:`MODEL_NAMES` (``'mnist_cnn'``,
          ``'cifar10_cnn'``, ``'wrn'``, ``'preact_resnet18'``).
      **kwargs: The model's arguments over its defaults (e.g. ``depth`` and
          ``width`` for ``'wrn'``, ``num_classes`` for any model).

  Returns:
      The (uninitialised) Flax module.

  Raises:
      ValueError: If ``name`` is unknown; :class:`ModelKwargsError` (a
          ValueError) for arguments the model does not take or accept.
  """
  return model_spec(name).build(**kwargs)


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
