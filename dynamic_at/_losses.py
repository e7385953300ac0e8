"""Per-example losses that the attacks maximise.

Every loss maps ``logits`` of shape ``[batch, num_classes]`` and integer labels
``[batch]`` to a per-example loss ``[batch]``. Attacks maximise it.
"""

from typing import Callable, Union

import jax
import jax.numpy as jnp
import optax

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy per example, ``[batch]``."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def cw_margin(logits: jax.Array, labels: jax.Array,
              kappa: float = 50.0) -> jax.Array:
  """Carlini-Wagner margin loss with confidence ``kappa``, per example.

  .. math:: -\\max(z_y - \\max_{j \\ne y} z_j + \\kappa, 0)

  as in Madry et al.'s CW-inf attack: maximising it pushes the best wrong
  logit above the true one, and it saturates at 0 once the margin of the wrong
  class reaches ``kappa``.

  Args:
    logits: ``[batch, num_classes]``.
    labels: ``[batch]`` integer labels.
    kappa: confidence; the paper evaluates with 50.

  Returns:
    ``[batch]`` losses, all ``<= 0``.
  """
  num_classes = logits.shape[-1]
  onehot = jax.nn.one_hot(labels, num_classes, dtype=bool)
  correct = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
  wrong = jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=-1)
  return -jax.nn.relu(correct - wrong + kappa)


def get_loss(loss: Union[str, LossFn], kappa: float = 50.0) -> LossFn:
  """Resolves ``'xent'``, ``'cw'`` or a callable to a per-example loss."""
  if callable(loss):
    return loss
  if loss == 'xent':
    return xent
  if loss == 'cw':
    return lambda logits, labels: cw_margin(logits, labels, kappa)
  raise ValueError(
      f"loss must be 'xent', 'cw' or a callable (logits, labels) -> [batch];"
      f' got {loss!r}')
