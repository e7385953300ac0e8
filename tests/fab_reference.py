"""A NumPy transcription of AutoAttack's targeted L-inf FAB, for the tests.

Written line by line from the authors' code (fra31/auto-attack, commit
a392200): ``autoattack/fab_projections.py`` ``projection_linf``,
``autoattack/fab_base.py`` ``FABAttack.attack_single_run`` (with
``is_targeted=True``, ``norm='Linf'``) and ``FABAttack.perturb`` (the
``targeted`` branch), ``autoattack/fab_pt.py``
``get_diff_logits_grads_batch_targeted``. Only the first restart
(``use_rand_start=False``) is transcribed, so nothing is random. Torch's
in-place boolean-mask updates become NumPy's; ``torch.argsort`` (not stable)
becomes a stable ``np.argsort``. The model is given as NumPy callables.
"""

import math

import numpy as np


def projection_linf(points_to_project, w_hyperplane, b_hyperplane):
  """``projection_linf`` of the reference: box ``[0, 1]``, rows ``[n, d]``."""
  t, w, b = points_to_project, w_hyperplane.copy(), b_hyperplane.copy()

  sign = 2 * ((w * t).sum(1) - b >= 0) - 1
  w = w * sign[:, None]
  b = b * sign

  a = (w < 0).astype(t.dtype)
  d = (a - t) * (w != 0).astype(t.dtype)

  p = a - t * (2 * a - 1)
  indp = np.argsort(p, axis=1, kind='stable')

  b = b - (w * t).sum(1)
  b0 = (w * d).sum(1)

  indp2 = indp[:, ::-1]
  ws = np.take_along_axis(w, indp2, 1)
  bs2 = -ws * np.take_along_axis(d, indp2, 1)

  s = np.cumsum(np.abs(ws), axis=1)
  sb = np.cumsum(bs2, axis=1) + b0[:, None]

  b2 = sb[:, -1] - s[:, -1] * np.take_along_axis(p, indp[:, 0:1], 1)[:, 0]
  c_l = b - b2 > 0
  c2 = (b - b0 > 0) & (~c_l)
  lb = np.zeros(c2.sum(), t.dtype)
  ub = np.full_like(lb, w.shape[1] - 1)
  nitermax = math.ceil(math.log2(w.shape[1]))

  indp_, sb_, s_, p_, b_ = indp[c2], sb[c2], s[c2], p[c2], b[c2]
  for _ in range(nitermax):
    counter4 = np.floor((lb + ub) / 2)

    counter2 = counter4.astype(np.int64)[:, None]
    indcurr = np.take_along_axis(indp_, indp_.shape[1] - 1 - counter2, 1)
    b2 = (np.take_along_axis(sb_, counter2, 1)
          - np.take_along_axis(s_, counter2, 1)
          * np.take_along_axis(p_, indcurr, 1))[:, 0]
    c = b_ - b2 > 0

    lb = np.where(c, counter4, lb)
    ub = np.where(c, ub, counter4)

  lb = lb.astype(np.int64)

  if c_l.any():
    lmbd_opt = np.maximum((b[c_l] - sb[c_l, -1]) / (-s[c_l, -1]), 0)[:, None]
    d[c_l] = (2 * a[c_l] - 1) * lmbd_opt

  rows = np.nonzero(c2)[0]
  lmbd_opt = np.maximum((b[c2] - sb[rows, lb]) / (-s[rows, lb]), 0)[:, None]
  d[c2] = (np.minimum(lmbd_opt, d[c2]) * a[c2]
           + np.maximum(-lmbd_opt, d[c2]) * (1 - a[c2]))

  return d * (w != 0).astype(t.dtype)


def attack_single_run_targeted(predict, diff_grad, x, y, target_class,
                               n_iter=100, alpha_max=0.1, eta=1.05, beta=0.9):
  """``attack_single_run(x, y, use_rand_start=False, is_targeted=True)``.

  Args:
    predict: ``[n, ...]`` images -> ``[n, classes]`` logits.
    diff_grad: ``(images, la, la_target)`` -> ``(df [n, 1], dg [n, 1, ...])``,
      ``df = f_t - f_y`` and its input gradient
      (``get_diff_logits_grads_batch_targeted``).
    x: ``[n, ...]`` clean images.
    y: ``[n]`` labels.
    target_class: the reference's ``self.target_class`` (2 for the
      runner-up).

  Returns:
    ``(adv_c, res2_full)``: the returned images and, per example, the best
    adversarial distance found (``1e10`` if none or not attacked).
  """
  ndims = x.ndim - 1
  x = x.copy()
  y_pred = predict(x).argmax(1)
  pred = y_pred == y
  res_full = np.full(x.shape[0], 1e10, x.dtype)
  if pred.sum() == 0:
    return x, res_full
  pred = np.nonzero(pred)[0]

  output = predict(x)
  la_target = np.argsort(output, axis=-1, kind='stable')[:, -target_class]
  la_target2 = la_target[pred].copy()

  im2 = x[pred].copy()
  la2 = y[pred].copy()
  bs = im2.shape[0]
  u1 = np.arange(bs)
  adv = im2.copy()
  adv_c = x.copy()
  res2 = 1e10 * np.ones([bs], x.dtype)
  x1 = im2.copy()
  x0 = im2.copy().reshape([bs, -1])
  shape1 = [-1] + [1] * ndims

  for _ in range(n_iter):
    df, dg = diff_grad(x1, la2, la_target2)
    dist1 = np.abs(df) / (1e-12 + np.abs(dg).reshape(
        dg.shape[0], dg.shape[1], -1).sum(-1))
    ind = dist1.argmin(1)
    dg2 = dg[u1, ind]
    b = -df[u1, ind] + (dg2 * x1).reshape(x1.shape[0], -1).sum(-1)
    w = dg2.reshape([bs, -1])

    d3 = projection_linf(np.concatenate((x1.reshape([bs, -1]), x0), 0),
                         np.concatenate((w, w), 0),
                         np.concatenate((b, b), 0))
    d1 = d3[:bs].reshape(x1.shape)
    d2 = d3[-bs:].reshape(x1.shape)
    a0 = np.abs(d3).max(1, keepdims=True).reshape(shape1)
    a0 = np.maximum(a0, 1e-8 * np.ones(a0.shape, x.dtype))
    a1 = a0[:bs]
    a2 = a0[-bs:]
    alpha = np.minimum(np.maximum(a1 / (a1 + a2), np.zeros(a1.shape, x.dtype)),
                       alpha_max * np.ones(a1.shape, x.dtype))
    x1 = np.clip((x1 + eta * d1) * (1 - alpha) + (im2 + d2 * eta) * alpha,
                 0.0, 1.0).astype(x.dtype)

    is_adv = predict(x1).argmax(1) != la2

    if is_adv.sum() > 0:
      ind_adv = np.nonzero(is_adv)[0]
      t = np.abs(x1[ind_adv] - im2[ind_adv]).reshape(
          [ind_adv.shape[0], -1]).max(1)
      better = (t < res2[ind_adv]).astype(x.dtype)
      adv[ind_adv] = (x1[ind_adv] * better.reshape(shape1)
                      + adv[ind_adv] * (1 - better).reshape(shape1))
      res2[ind_adv] = t * better + res2[ind_adv] * (1 - better)
      x1[ind_adv] = im2[ind_adv] + (x1[ind_adv] - im2[ind_adv]) * beta

  ind_succ = np.nonzero(res2 < 1e10)[0]
  adv_c[pred[ind_succ]] = adv[ind_succ].copy()
  res_full[pred] = res2
  return adv_c, res_full


def perturb_targeted(predict, diff_grad, x, y, eps, n_target_classes=9,
                     **kwargs):
  """``perturb(x, y)`` with ``targeted=True``, ``n_restarts=1``, ``Linf``.

  Returns:
    ``(adv, runs)``: the returned images, and per run (target) the dict
    ``{'attacked': indices, 'res': best distance of each attacked example}``.
  """
  adv = x.copy()
  acc = predict(x).argmax(1) == y
  runs = []
  for target_class in range(2, n_target_classes + 2):
    ind_to_fool = np.nonzero(acc)[0]
    if ind_to_fool.size != 0:
      x_to_fool, y_to_fool = x[ind_to_fool].copy(), y[ind_to_fool].copy()
      adv_curr, res_curr = attack_single_run_targeted(
          predict, diff_grad, x_to_fool, y_to_fool, target_class, **kwargs)
      acc_curr = predict(adv_curr).argmax(1) == y_to_fool
      res = np.abs(x_to_fool - adv_curr).reshape(x_to_fool.shape[0], -1).max(1)
      acc_curr = np.maximum(acc_curr, res > eps)
      ind_curr = np.nonzero(acc_curr == 0)[0]
      acc[ind_to_fool[ind_curr]] = 0
      adv[ind_to_fool[ind_curr]] = adv_curr[ind_curr].copy()
      runs.append({'attacked': ind_to_fool, 'res': res_curr})
  return adv, runs
