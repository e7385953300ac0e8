"""Per-example losses that the attacks maximise.

Every attack loss maps ``logits`` of shape ``[batch, num_classes]`` and a
per-example target (integer labels ``[batch]``, or a target distribution
``[batch, num_classes]`` for :func:`kl_to_probs`) to a per-example loss
``[batch]``. Attacks maximise it. :func:`kl_from_logits` and :func:`mart` are
training losses (TRADES', MART's).
"""

from typing import Callable, Union

import jax
import jax.numpy as jnp
import jax.scipy.special  # pylint: disable=unused-import
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


def kl_to_probs(logits: jax.Array, target_probs: jax.Array) -> jax.Array:
  """``KL(p || softmax(logits))`` per example for a target distribution
  ``p`` (``[batch, num_classes]``): TRADES' attack loss, maximised over the
  input with ``p`` the clean example's prediction. ``0 log 0 = 0``.
  """
  p = target_probs
  return jnp.sum(jax.scipy.special.xlogy(p, p) -
                 p * jax.nn.log_softmax(logits, -1), axis=-1)


def kl_from_logits(logits_adv: jax.Array, logits_nat: jax.Array) -> jax.Array:
  """``KL(softmax(logits_nat) || softmax(logits_adv))`` per example, the
  gradient flowing through both (TRADES' training term, ``trades.py``)."""
  return kl_to_probs(logits_adv, jax.nn.softmax(logits_nat, -1))


def mart(logits_adv: jax.Array, logits_nat: jax.Array, labels: jax.Array,
         beta: float) -> jax.Array:
  r"""MART's training loss per example, as ``mart.py`` computes it.

  .. math:: \mathrm{CE}(z', y) - \log(1.0001 - p'_{\hat y} + 10^{-12})
     + \beta \sum_k p_k (\log p_k - \log(p'_k + 10^{-12}))
     (1.0000001 - p_y)

  with ``p = softmax(logits_nat)``, ``p' = softmax(logits_adv)`` and
  ``\hat y`` the most probable class of ``p'`` other than ``y``: the
  "boosted" cross-entropy of the adversarial example plus the KL to the
  clean prediction, weighted by how badly the clean example is classified.
  The constants are the reference's.
  """
  num_classes = logits_adv.shape[-1]
  p_adv = jax.nn.softmax(logits_adv, -1)
  p_nat = jax.nn.softmax(logits_nat, -1)
  onehot = jax.nn.one_hot(labels, num_classes, dtype=bool)
  # The most probable wrong class of the adversarial prediction.
  other = jnp.argmax(jnp.where(onehot, -jnp.inf, p_adv), axis=-1)
  p_other = jnp.take_along_axis(p_adv, other[:, None], axis=-1)[:, 0]
  boosted = xent(logits_adv, labels) - jnp.log(1.0001 - p_other + 1e-12)
  kl = jnp.sum(jax.scipy.special.xlogy(p_nat, p_nat) -
               p_nat * jnp.log(p_adv + 1e-12), axis=-1)
  true_nat = jnp.sum(jnp.where(onehot, p_nat, 0.0), axis=-1)
  return boosted + beta * kl * (1.0000001 - true_nat)


def get_loss(loss: Union[str, LossFn], kappa: float = 50.0) -> LossFn:
  """Resolves ``'xent'``, ``'cw'``, ``'kl'`` (:func:`kl_to_probs`: the
  target is a distribution) or a callable to a per-example loss."""
  if callable(loss):
    return loss
  if loss == 'xent':
    return xent
  if loss == 'cw':
    return lambda logits, labels: cw_margin(logits, labels, kappa)
  if loss == 'kl':
    return kl_to_probs
  raise ValueError(
      f"loss must be 'xent', 'cw', 'kl' or a callable (logits, target) -> "
      f'[batch]; got {loss!r}')
