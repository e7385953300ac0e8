"""References of TRADES, MART and FAT written from their authors' code.

Each follows the PyTorch reference line by line in NumPy (the model's logits
and input gradients come from a JAX callable, since the model is ours):

* ``trades_loss``, ``trades_attack``: yaodongyu/TRADES ``trades.py``
  (``trades_loss``: ``KLDivLoss(size_average=False)`` of
  ``log_softmax(model(x_adv))`` against ``softmax(model(x_natural))``, divided
  by the batch size, plus ``F.cross_entropy`` of the clean logits).
* ``mart_loss``: YisenWang/MART ``mart.py`` (``argsort`` of the adversarial
  probabilities for the best wrong class, ``nll_loss`` of
  ``log(1.0001 - adv_probs + 1e-12)``, ``KLDivLoss(reduction='none')`` of
  ``log(adv_probs + 1e-12)`` against the clean probabilities weighted by
  ``1.0000001 - true_probs``).
* ``fat_earlystop``: zjfheart/Friendly-Adversarial-Training ``earlystop.py``
  (the ``control`` budget per example, the index lists of examples still
  iterated and of those output, the loop of ``perturb_steps`` trips).
"""

import numpy as np


def _softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def _log_softmax(z):
  z = np.asarray(z, np.float64)
  m = z.max(axis=1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def _kl_div_sum(log_input, target):
  """torch ``KLDivLoss`` elementwise: ``target * (log target - input)``,
  0 where the target is 0."""
  with np.errstate(divide='ignore', invalid='ignore'):
    out = target * (np.log(target) - log_input)
  return np.where(target > 0, out, 0.0)


def _cross_entropy(z, y):
  return -_log_softmax(z)[np.arange(len(y)), y]


def trades_loss(logits_nat, logits_adv, y, beta):
  """The mean TRADES loss of a batch (``trades.py``'s ``trades_loss``)."""
  batch_size = len(y)
  loss_natural = _cross_entropy(logits_nat, y).mean()
  loss_robust = _kl_div_sum(_log_softmax(logits_adv),
                            _softmax(logits_nat)).sum() / batch_size
  return loss_natural + beta * loss_robust


def mart_loss(logits_nat, logits_adv, y, beta):
  """The mean MART loss of a batch (``mart.py``'s ``mart_loss``)."""
  batch_size = len(y)
  adv_probs = _softmax(logits_adv)
  tmp1 = np.argsort(adv_probs, axis=1, kind='stable')[:, -2:]
  new_y = np.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
  nll = -np.log(1.0001 - adv_probs + 1e-12)[np.arange(batch_size), new_y]
  loss_adv = _cross_entropy(logits_adv, y).mean() + nll.mean()
  nat_probs = _softmax(logits_nat)
  true_probs = nat_probs[np.arange(batch_size), y]
  kl = _kl_div_sum(np.log(adv_probs + 1e-12), nat_probs).sum(axis=1)
  loss_robust = (1.0 / batch_size) * np.sum(kl * (1.0000001 - true_probs))
  return loss_adv + float(beta) * loss_robust


def sign_steps(grad_fn, x_natural, x_adv, *, step_size, epsilon,
               perturb_steps):
  """``trades.py``'s / ``mart.py``'s attack loop from ``x_adv``: a sign step
  on the loss's gradient, the projection onto the eps-ball, the clamp to
  ``[0, 1]``, ``perturb_steps`` times. ``grad_fn(x_adv) -> gradient``."""
  x_adv = np.array(x_adv, np.float32)
  for _ in range(perturb_steps):
    grad = np.asarray(grad_fn(x_adv))
    x_adv = x_adv + step_size * np.sign(grad)
    x_adv = np.minimum(np.maximum(x_adv, x_natural - epsilon),
                       x_natural + epsilon)
    x_adv = np.clip(x_adv, 0.0, 1.0).astype(np.float32)
  return x_adv


def fat_earlystop(logits_fn, grad_fn, data, target, iter_adv, *, step_size,
                  epsilon, perturb_steps, tau):
  """``earlystop.py``'s early-stopped PGD from the start ``iter_adv`` (no
  step noise). Returns the adversarial points in the input order and each
  example's number of steps (their ``count`` per example).

  ``logits_fn(x)`` and ``grad_fn(x, y)`` (the cross-entropy's input
  gradient) take the batch of examples still iterated.
  """
  index = np.arange(len(target))            # where each row came from
  control = np.full(len(target), tau)
  iter_adv = np.array(iter_adv, np.float32)
  iter_clean = np.asarray(data, np.float32)
  iter_target = np.asarray(target)
  out = {}
  steps = np.zeros(len(target), np.int64)
  for _ in range(perturb_steps):
    pred = np.argmax(np.asarray(logits_fn(iter_adv)), axis=1)
    output_index, iter_index = [], []
    for idx in range(len(pred)):
      if pred[idx] != iter_target[idx]:
        if control[idx] == 0:
          output_index.append(idx)
        else:
          control[idx] -= 1
          iter_index.append(idx)
      else:
        iter_index.append(idx)
    for idx in output_index:
      out[index[idx]] = iter_adv[idx]
    grad = np.asarray(grad_fn(iter_adv, iter_target))
    if not iter_index:
      break
    keep = np.asarray(iter_index)
    control, iter_adv, iter_clean = control[keep], iter_adv[keep], iter_clean[keep]
    iter_target, index, grad = iter_target[keep], index[keep], grad[keep]
    iter_adv = iter_adv + step_size * np.sign(grad)
    iter_adv = np.minimum(np.maximum(iter_adv, iter_clean - epsilon),
                          iter_clean + epsilon)
    iter_adv = np.clip(iter_adv, 0.0, 1.0).astype(np.float32)
    steps[index] += 1
  for row, i in enumerate(index):
    if i not in out:
      out[i] = iter_adv[row]
  return np.stack([out[i] for i in range(len(target))]), steps
