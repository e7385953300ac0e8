"""NumPy transcription of AutoAttack's L-inf Square attack, for the tests.

Transcribed from ``autoattack/square.py`` of fra31/auto-attack (commit
a392200): ``SquareAttack.p_selection``, ``attack_single_run`` with
``norm='Linf'`` and ``loss='margin'``, and ``perturb`` (untargeted, one
restart), with ``resc_schedule=False`` as AutoAttack's standard version builds
it. Written from the reference's code, not from ``dynamic_at/_square.py``.

Changes, none of which changes what is computed:

* NHWC instead of NCHW: the stripe draw ``[n, c, 1, w]`` is ``[n, 1, w, c]``
  here and a square's sign draw ``[c, 1, 1]`` is ``[c]``.
* ``torch.rand`` is the injected ``rand(shape)`` (float32 in ``[0, 1)``), called
  in the reference's order: the stripes, then per iteration ``vh``, ``vw``
  (shape ``[1]`` each) and the square's signs.
* The box is ``[clip_min, clip_max]`` (the reference hard-codes ``[0, 1]``).
* :func:`perturb` also returns ``attack_single_run``'s points, query counts and
  final margins (the reference drops them), scattered back to the batch.
"""

import math

import numpy as np


def p_selection(it, p_init=0.8, n_queries=5000, rescale_schedule=False):
  """``SquareAttack.p_selection``."""
  if rescale_schedule:
    it = int(it / n_queries * 10000)
  if 10 < it <= 50:
    p = p_init / 2
  elif 50 < it <= 200:
    p = p_init / 4
  elif 200 < it <= 500:
    p = p_init / 8
  elif 500 < it <= 1000:
    p = p_init / 16
  elif 1000 < it <= 2000:
    p = p_init / 32
  elif 2000 < it <= 4000:
    p = p_init / 64
  elif 4000 < it <= 6000:
    p = p_init / 128
  elif 6000 < it <= 8000:
    p = p_init / 256
  elif 8000 < it:
    p = p_init / 512
  else:
    p = p_init
  return p


def square_side(it, h, w, c, p_init=0.8):
  """The side ``s`` of iteration ``it``'s square, as ``attack_single_run``."""
  n_features = c * h * w
  p = p_selection(it, p_init)
  s = max(int(round(math.sqrt(p * n_features / c))), 1)
  return min(s, min(h, w))


def margin_and_loss(predict, x, y):
  """``SquareAttack.margin_and_loss`` for ``loss='margin'``: both are the
  margin ``z_y - max_{j != y} z_j``."""
  logits = np.array(predict(x), np.float32)
  u = np.arange(x.shape[0])
  y_corr = logits[u, y].copy()
  logits[u, y] = -np.inf
  y_others = logits.max(axis=-1)
  return y_corr - y_others, y_corr - y_others


def _random_choice(rand, shape):
  t = 2 * rand(shape) - 1
  return np.sign(t)


def _random_int(rand, low=0, high=1, shape=(1,)):
  t = low + np.float32(high - low) * rand(shape)
  return t.astype(np.int64)


def attack_single_run(predict, x, y, eps, rand, n_queries=5000, p_init=0.8,
                      clip_min=0.0, clip_max=1.0):
  """``attack_single_run`` with ``norm='Linf'``; returns ``(n_queries,
  x_best, margin_min)`` (the reference returns the first two)."""
  eps = np.float32(eps)
  x = np.asarray(x, np.float32)
  n, h, w, c = x.shape
  n_features = c * h * w
  n_ex_total = n

  x_best = np.clip(x + eps * _random_choice(rand, (n, 1, w, c)),
                   clip_min, clip_max).astype(np.float32)
  margin_min, loss_min = margin_and_loss(predict, x_best, y)
  queries = np.ones(n, np.float32)

  if (margin_min < 0.0).all():
    return queries, x_best, margin_min

  for i_iter in range(n_queries):
    idx_to_fool = np.nonzero(margin_min > 0.0)[0]

    x_curr = x[idx_to_fool]
    x_best_curr = x_best[idx_to_fool]
    y_curr = y[idx_to_fool]
    margin_min_curr = margin_min[idx_to_fool]
    loss_min_curr = loss_min[idx_to_fool]

    p = p_selection(i_iter, p_init)
    s = max(int(round(math.sqrt(p * n_features / c))), 1)
    s = min(s, min(h, w))
    vh = int(_random_int(rand, 0, h - s)[0])
    vw = int(_random_int(rand, 0, w - s)[0])
    new_deltas = np.zeros((h, w, c), np.float32)
    new_deltas[vh:vh + s, vw:vw + s, :] = (
        2. * eps * _random_choice(rand, (c,)))

    x_new = x_best_curr + new_deltas
    x_new = np.minimum(np.maximum(x_new, x_curr - eps), x_curr + eps)
    x_new = np.clip(x_new, clip_min, clip_max).astype(np.float32)

    margin, loss = margin_and_loss(predict, x_new, y_curr)

    # update loss if new loss is better
    idx_improved = (loss < loss_min_curr).astype(np.float32)
    loss_min[idx_to_fool] = idx_improved * loss + (
        1. - idx_improved) * loss_min_curr

    # update margin and x_best if new loss is better or misclassification
    idx_miscl = (margin <= 0.).astype(np.float32)
    idx_improved = np.maximum(idx_improved, idx_miscl)
    margin_min[idx_to_fool] = idx_improved * margin + (
        1. - idx_improved) * margin_min_curr
    idx_improved = idx_improved.reshape([-1, 1, 1, 1])
    x_best[idx_to_fool] = idx_improved * x_new + (
        1. - idx_improved) * x_best_curr
    queries[idx_to_fool] += 1.

    ind_succ = np.nonzero(margin_min <= 0.)[0]
    if ind_succ.size == n_ex_total:
      break

  return queries, x_best, margin_min


def perturb(predict, x, y, eps, rand, **kwargs):
  """``SquareAttack.perturb`` (untargeted, ``n_restarts=1``).

  Returns:
    A dict: ``adv`` (what the reference returns: the attack's point where it
    misclassifies, ``x`` elsewhere), ``x_best``, ``queries`` and ``margin``
    (``attack_single_run``'s, for the examples it attacked; ``x``, 0 and
    ``nan`` for the others) and ``attacked`` (the clean-correct mask).
  """
  x = np.asarray(x, np.float32)
  y = np.asarray(y)
  adv = x.copy()
  acc = np.argmax(predict(x), axis=1) == y
  x_best_all = x.copy()
  queries_all = np.zeros(x.shape[0], np.float32)
  margin_all = np.full(x.shape[0], np.nan, np.float32)

  ind_to_fool = np.nonzero(acc)[0]
  if ind_to_fool.size != 0:
    x_to_fool = x[ind_to_fool].copy()
    y_to_fool = y[ind_to_fool].copy()
    queries, adv_curr, margin = attack_single_run(
        predict, x_to_fool, y_to_fool, eps, rand, **kwargs)
    output_curr = predict(adv_curr)
    acc_curr = np.argmax(output_curr, axis=1) == y_to_fool
    ind_curr = np.nonzero(~acc_curr)[0]
    acc[ind_to_fool[ind_curr]] = False
    adv[ind_to_fool[ind_curr]] = adv_curr[ind_curr].copy()
    x_best_all[ind_to_fool] = adv_curr
    queries_all[ind_to_fool] = queries
    margin_all[ind_to_fool] = margin
  return dict(adv=adv, x_best=x_best_all, queries=queries_all,
              margin=margin_all, attacked=np.asarray(
                  np.argmax(predict(x), axis=1) == y))
