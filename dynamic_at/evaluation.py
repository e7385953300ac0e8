"""Robustness evaluation: white-box and black-box (transfer) accuracy under the
paper's attacks and sanity checks against gradient masking; the functions
return plain dicts and lists (writing them to files is the caller's job, e.g.
``experiments.reporting``).

Wang et al. (ICML 2019) report, for every defence, the accuracy on clean test
images and under FGSM, PGD-10, PGD-20 and CW-inf (Table 1 white-box; Table 2
black-box, where the attacks are crafted on a separately trained source model
and then fed to the defended target model). :func:`evaluate` computes all of
them in one pass over the test set with the library's attacks
(:func:`dynamic_at.fgsm`, :func:`dynamic_at.pgd10`, :func:`dynamic_at.pgd20`,
:func:`dynamic_at.cw_inf`; step ``eps / 4`` and the random start live there).

Batches all have the same shape (the last one is padded and the padding
masked), every attack is one jitted function cached on the model's
``apply_fn``, so an evaluation compiles each attack once, and a later
evaluation of the same model (e.g. every epoch) compiles nothing.

This module never reads absl flags; every function takes explicit arguments.
"""

import functools
import math
from typing import (Any, Callable, Dict, Iterator, List, Mapping, Optional,
                    Sequence, Tuple)

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from dynamic_at import _apgd
from dynamic_at import _attacks
from dynamic_at import parallel

ApplyFn = Callable[..., jax.Array]

PAPER_ATTACKS = ('clean', 'fgsm', 'pgd10', 'pgd20', 'cw_inf')
# The paper's attacks plus AutoAttack's parameter-free APGD (Croce & Hein
# 2020): APGD-CE and APGD-T (targeted DLR, 9 target classes), 100 steps each.
STRONG_ATTACKS = PAPER_ATTACKS + ('apgd_ce', 'apgd_t')

WORST_CASE = 'worst_case'

# With ``cascade=True`` these attack only the examples that every attack
# before them left correctly classified (AutoAttack's practice).
CASCADE_ATTACKS = ('apgd_ce', 'apgd_t')

# Each attack folds its own fixed number into the batch key, so an attack's
# random start does not depend on which other attacks run or in what order.
_ATTACK_IDS = {name: i for i, name in enumerate(STRONG_ATTACKS)}

def _apgd_t(logits_fn, x, y, key, *, eps):
  """APGD-T with AutoAttack's 9 target classes (fewer if the model has
  fewer than 10 classes)."""
  num_classes = jax.eval_shape(logits_fn, x).shape[-1]
  return _apgd.apgd_targeted(logits_fn, x, y, key, eps=eps,
                             num_targets=min(9, num_classes - 1))


# The evaluation only needs the points: final_eval=False skips the loss and
# FOSC at the last step's points (one gradient evaluation of K + 1).
_ATTACK_FNS = {
    'fgsm': functools.partial(_attacks.fgsm, final_eval=False),
    'pgd10': functools.partial(_attacks.pgd10, final_eval=False),
    'pgd20': functools.partial(_attacks.pgd20, final_eval=False),
    'cw_inf': functools.partial(_attacks.cw_inf, final_eval=False),
    'apgd_ce': functools.partial(_apgd.apgd, loss='ce'),
    'apgd_t': _apgd_t,
}

# How reports and warnings name each attack.
DISPLAY_NAMES = {
    'clean': 'Clean',
    'fgsm': 'FGSM',
    'pgd10': 'PGD-10',
    'pgd20': 'PGD-20',
    'cw_inf': 'CW-inf',
    'apgd_ce': 'APGD-CE',
    'apgd_t': 'APGD-T',
    WORST_CASE: 'Worst case',
}

# Tolerance (accuracy points) of the orderings :func:`sanity_warnings` checks.
DEFAULT_TOLERANCE = 1.0
# Largest PGD-20 accuracy at eps = 1 (percent) that is not flagged.
EPS_ONE_MAX_ACCURACY = 1.0


class _ByIdentity:
  """Makes an unhashable ``apply_fn`` usable as a static jit argument.

  Equal only to itself, so such a model gets a fresh cache entry per
  :func:`evaluate` call (still compiled once per attack within the call).
  """

  def __init__(self, fn: ApplyFn):
    self.fn = fn

  def __call__(self, *args, **kwargs):
    return self.fn(*args, **kwargs)


def _static_fn(fn: ApplyFn) -> ApplyFn:
  try:
    hash(fn)
  except TypeError:
    return _ByIdentity(fn)
  return fn


@functools.partial(jax.jit,
                   static_argnames=('apply_fn', 'source_apply_fn', 'attack'))
def _batch_correct(variables: Any, source_variables: Any, x: jax.Array,
                   y: jax.Array, eps: jax.Array, key: jax.Array,
                   batch_index: jax.Array, *, apply_fn: ApplyFn,
                   source_apply_fn: Optional[ApplyFn],
                   attack: str) -> jax.Array:
  """Whether the target model classifies each attacked example correctly.

  Args:
    variables: the target model's variables.
    source_variables: the source model's variables (black-box), else unused.
    x: ``[B, H, W, C]`` clean images.
    y: ``[B]`` labels.
    eps: L-inf radius (traced: changing it never recompiles).
    key: the evaluation's base key.
    batch_index: ``i32[]`` index of this batch (traced).
    apply_fn: the target model's ``apply``.
    source_apply_fn: the source model's ``apply`` (black-box) or ``None``
      (white-box: the attack sees the target model).
    attack: a name of :data:`STRONG_ATTACKS`.

  Returns:
    ``bool[B]``.
  """
  target = lambda x_: apply_fn(variables, x_, train=False)
  if source_apply_fn is None:
    crafting = target
  else:
    crafting = lambda x_: source_apply_fn(source_variables, x_, train=False)
  if attack == 'clean':
    x_adv = x
  else:
    key = jax.random.fold_in(jax.random.fold_in(key, batch_index),
                             _ATTACK_IDS[attack])
    x_adv, _ = _ATTACK_FNS[attack](crafting, x, y, key, eps=eps)
  return jnp.argmax(target(x_adv), axis=-1) == y


def _check_attacks(attacks: Sequence[str]) -> Tuple[str, ...]:
  attacks = tuple(attacks)
  unknown = [a for a in attacks if a not in _ATTACK_IDS]
  if unknown:
    raise ValueError(f'unknown attacks {unknown}; valid: {STRONG_ATTACKS}')
  if len(set(attacks)) != len(attacks):
    raise ValueError(f'attacks has duplicates: {attacks}')
  if not attacks:
    raise ValueError('attacks is empty')
  return attacks


def _place_batch(arr: np.ndarray, mesh: Optional[Mesh]) -> jax.Array:
  """Puts a full (every process holds all of it) batch on the mesh."""
  if mesh is None:
    return jnp.asarray(arr)
  return jax.make_array_from_callback(arr.shape, parallel.batch_sharded(mesh),
                                      lambda index: arr[index])


def _to_host(arr: jax.Array) -> np.ndarray:
  if getattr(arr, 'is_fully_addressable', True):
    return np.asarray(arr)
  return np.asarray(multihost_utils.process_allgather(arr, tiled=True))


def _accuracy(correct: np.ndarray) -> float:
  return float(100.0 * np.mean(correct))


def _padded_batches(images: np.ndarray, labels: np.ndarray, batch_size: int,
                    mesh: Optional[Mesh]
                    ) -> Iterator[Tuple[int, int, jax.Array, jax.Array]]:
  """``(batch index, real examples, x, y)`` of each batch; the last batch is
  padded to ``batch_size`` with copies of its last example."""
  n = int(images.shape[0])
  for b in range(math.ceil(n / batch_size)):
    lo, hi = b * batch_size, min((b + 1) * batch_size, n)
    x, y = images[lo:hi], labels[lo:hi]
    if hi - lo < batch_size:
      pad = batch_size - (hi - lo)
      x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
      y = np.concatenate([y, np.repeat(y[-1:], pad, axis=0)])
    yield b, hi - lo, _place_batch(x, mesh), _place_batch(y, mesh)


def cascade_batch_size(num_examples: int, batch_size: int,
                       mesh: Optional[Mesh]) -> int:
  """The batch size of a cascaded attack on ``num_examples`` examples: at
  most ``batch_size``, and no more than those examples need, rounded up to a
  multiple of the mesh's devices. Padding a few hundred survivors to a full
  batch of 500 would cost APGD (100 steps, 9 targets) as much as 500."""
  step = 1 if mesh is None else int(mesh.devices.size)
  return min(batch_size, max(step, -(-num_examples // step) * step))


def evaluate(apply_fn: ApplyFn,
             variables: Any,
             images: np.ndarray,
             labels: np.ndarray,
             *,
             eps: float,
             key: jax.Array,
             batch_size: int = 500,
             mesh: Optional[Mesh] = None,
             attacks: Sequence[str] = PAPER_ATTACKS,
             source: Optional[Tuple[ApplyFn, Any]] = None,
             cascade: bool = False,
             progress: Optional[Callable[[str], None]] = None
             ) -> Dict[str, Any]:
  """White-box (and optionally black-box) accuracy under the paper's attacks.

  The model is ``lambda x: apply_fn(variables, x, train=False)`` (inference
  mode). Examples are processed in batches of ``batch_size``; the last batch is
  padded to the full size and the padding dropped, so one compiled function
  per attack serves every batch. Batch ``b``'s attack ``a`` uses the key
  ``fold_in(fold_in(key, b), i)``, ``i`` the index of ``a`` in
  :data:`PAPER_ATTACKS`: results are deterministic, do not depend on which
  other attacks run, and the black-box attacks draw the same random starts as
  the white-box ones (so a black-box evaluation with the target as its own
  source reproduces the white-box numbers).

  With a ``mesh`` every batch is split over its ``'data'`` axis and the
  variables are replicated; every process must pass the whole ``images`` and
  ``labels`` and gets the whole result.

  Args:
    apply_fn: the target model's ``apply(variables, x, train=False)``; it is a
      static jit argument, so pass the same object (e.g. ``model.apply``) to
      reuse the compiled attacks across calls.
    variables: the target model's variables (params and BatchNorm statistics).
    images: ``[N, H, W, C]`` float images in ``[0, 1]``.
    labels: ``[N]`` integer labels.
    eps: L-inf radius of every attack.
    key: PRNG key of the random starts.
    batch_size: examples per batch.
    mesh: device mesh (:func:`dynamic_at.parallel.make_mesh`) or ``None``.
    attacks: names from :data:`STRONG_ATTACKS`.
    source: ``(source_apply_fn, source_variables)``: also measure black-box
      accuracy, i.e. the target's accuracy on examples crafted on the source
      model with each of the paper's attacks except ``'clean'`` (APGD is
      white-box only).
    cascade: run each of :data:`CASCADE_ATTACKS` (APGD) only on the examples
      that every attack listed before it in ``attacks`` left correctly
      classified, as AutoAttack does; the others count as broken for it. Its
      accuracy is then the robust accuracy of it and all attacks before it
      (cumulative), ``worst_case`` measures what it measures without
      ``cascade``, and its cost falls with the share of examples still
      robust. Its batches hold only those examples, and are no larger than
      they need be (:func:`cascade_batch_size`), so its random starts (and
      hence single outcomes) differ from a run without ``cascade``.
    progress: called with one line (e.g. ``'batch 3/20: clean, fgsm,
      pgd20'``) after each batch's attacks have finished; it waits for that
      batch's results first, so the host no longer queues the next batch
      while the device works on this one. ``None``: no waiting.

  Returns:
    ``{'white_box': {attack: accuracy}, 'black_box': {attack: accuracy} or
    None, 'num_eval_examples': N, 'per_example': {'white_box': {attack:
    bool[N]}, 'black_box': {attack: bool[N]} or None}}``; accuracies are
    percentages (Python floats). If more than one non-clean attack ran,
    ``white_box['worst_case']`` (and its per-example array) counts an example
    only if every white-box attack that ran, ``'clean'`` included, left it
    correctly classified.

  Raises:
    ValueError: on unknown attacks, mismatched or empty data, a non-positive
      ``batch_size``, or a ``batch_size`` that does not split over the mesh.
  """
  attacks = _check_attacks(attacks)
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int32)
  n = int(images.shape[0])
  if labels.shape != (n,):
    raise ValueError(f'labels {labels.shape} must be [N] with N={n} (the '
                     f'number of images {images.shape})')
  if n == 0:
    raise ValueError('evaluate: no examples')
  if batch_size < 1:
    raise ValueError(f'batch_size={batch_size} must be positive')
  if mesh is not None:
    parallel.check_batch_size(batch_size, mesh)
    variables = parallel.replicate(variables, mesh)
    key = parallel.replicate(key, mesh)
  black_attacks = ()
  source_apply_fn, source_variables = None, None
  if source is not None:
    source_apply_fn, source_variables = source
    source_apply_fn = _static_fn(source_apply_fn)
    if mesh is not None:
      source_variables = parallel.replicate(source_variables, mesh)
    # Table 2's transfer attacks; APGD is a white-box evaluation here.
    black_attacks = tuple(a for a in attacks
                          if a != 'clean' and a in PAPER_ATTACKS)
  apply_fn = _static_fn(apply_fn)
  eps = np.float32(eps)  # numpy scalars: fine as jit inputs on every host

  cascaded = tuple(a for a in attacks if cascade and a in CASCADE_ATTACKS)
  direct = tuple(a for a in attacks if a not in cascaded)
  white = {a: [] for a in direct}
  black = {a: [] for a in black_attacks}

  def report(parts, line):
    if progress is not None:
      jax.block_until_ready([c for _, c in parts])
      progress(line)

  num_batches = math.ceil(n / batch_size)
  names = ', '.join(direct + tuple(f'black-box {a}' for a in black_attacks))
  for b, m, x, y in _padded_batches(images, labels, batch_size, mesh):
    index = np.int32(b)
    for a in direct:
      white[a].append((m, _batch_correct(
          variables, None, x, y, eps, key, index, apply_fn=apply_fn,
          source_apply_fn=None, attack=a)))
    for a in black_attacks:
      black[a].append((m, _batch_correct(
          variables, source_variables, x, y, eps, key, index,
          apply_fn=apply_fn, source_apply_fn=source_apply_fn, attack=a)))
    report([parts[-1] for parts in (*white.values(), *black.values())],
           f'batch {b + 1}/{num_batches}: {names}')

  def gather(parts):  # device results -> host, padding dropped
    if not parts:
      return np.zeros((0,), bool)
    return np.concatenate([_to_host(c)[:m] for m, c in parts]).astype(bool)

  per_white = {a: gather(parts) for a, parts in white.items()}
  for a in cascaded:  # on the examples every attack before it left correct
    alive = np.logical_and.reduce(
        [per_white[p] for p in attacks[:attacks.index(a)]] +
        [np.ones((n,), bool)])
    chosen = np.flatnonzero(alive)
    size = cascade_batch_size(chosen.size, batch_size, mesh)
    parts = []
    for b, m, x, y in _padded_batches(images[chosen], labels[chosen], size,
                                      mesh):
      parts.append((m, _batch_correct(variables, None, x, y, eps, key,
                                      np.int32(b), apply_fn=apply_fn,
                                      source_apply_fn=None, attack=a)))
      report(parts[-1:], f'{a} on the {chosen.size} examples still '
             f'robust: batch {b + 1}/{math.ceil(chosen.size / size)}')
    per_white[a] = np.zeros((n,), bool)
    per_white[a][chosen] = gather(parts)
  per_white = {a: per_white[a] for a in attacks}
  if sum(a != 'clean' for a in attacks) > 1:
    per_white[WORST_CASE] = np.logical_and.reduce(
        [per_white[a] for a in attacks])
  per_black = ({a: gather(parts) for a, parts in black.items()}
               if source is not None else None)
  return {
      'white_box': {a: _accuracy(c) for a, c in per_white.items()},
      'black_box': (None if per_black is None else
                    {a: _accuracy(c) for a, c in per_black.items()}),
      'num_eval_examples': n,
      'per_example': {'white_box': per_white, 'black_box': per_black},
  }


def accuracy_at_eps_one(apply_fn: ApplyFn, variables: Any, images: np.ndarray,
                        labels: np.ndarray, key: jax.Array, batch_size: int,
                        mesh: Optional[Mesh] = None) -> float:
  """PGD-20 accuracy at ``eps = 1`` (step ``0.25``, random start): a check for
  gradient masking.

  At ``eps = 1`` the ball contains every image of ``[0, 1]``, so the attacker
  may paint any picture and the accuracy of any model whose prediction depends
  on its input should be about 0; a clearly positive value means the gradient
  does not lead the attack (gradient masking), so the model's PGD numbers at
  the real ``eps`` are not to be trusted. (A model that ignores its input,
  e.g. one predicting a constant class, keeps that class's share under any
  attack: the check is meaningful only for models whose prediction changes.)
  Pass a subset of the test set to keep it cheap.

  Returns:
    The accuracy in percent.
  """
  results = evaluate(apply_fn, variables, images, labels, eps=1.0, key=key,
                     batch_size=batch_size, mesh=mesh, attacks=('pgd20',))
  return results['white_box']['pgd20']


def sanity_warnings(results: Mapping[str, Any], *,
                    eps_one_accuracy: Optional[float] = None,
                    tolerance: float = DEFAULT_TOLERANCE) -> List[str]:
  """Loud warnings about results that contradict how attacks must behave.

  Checks (accuracies in percent; each ordering allows ``tolerance`` points,
  default 1, because the random starts of PGD and CW-inf make a stronger
  attack occasionally score slightly above a weaker one on a finite test set):

  * PGD-20 accuracy above PGD-10's, or PGD-10's above FGSM's: more steps of
    the same attack should not help the model (the paper's relation).
  * any attack's accuracy above the clean accuracy.
  * any black-box accuracy below the white-box accuracy of the same attack: a
    transfer attack sees less than a white-box one.
  * ``eps_one_accuracy`` (:func:`accuracy_at_eps_one`) above 1%: at
    ``eps = 1`` any image is reachable, so ~0 is expected; more signals
    gradient masking.

  Args:
    results: :func:`evaluate`'s result or a dict with its keys
      ``'white_box'`` and optionally ``'black_box'``.
    eps_one_accuracy: the PGD-20 accuracy at ``eps = 1``, if measured.
    tolerance: accuracy points an ordering may be violated by.

  Returns:
    A list of human-readable warnings, empty when everything is consistent.
  """
  out = []
  white = results.get('white_box') or {}
  black = results.get('black_box') or {}

  def name(attack):
    return DISPLAY_NAMES.get(attack, attack)

  for stronger, weaker in (('pgd20', 'pgd10'), ('pgd10', 'fgsm')):
    if stronger in white and weaker in white:
      if white[stronger] > white[weaker] + tolerance:
        out.append(
            f'SANITY WARNING: white-box {name(stronger)} accuracy '
            f'{white[stronger]:.2f}% > {name(weaker)} accuracy '
            f'{white[weaker]:.2f}% (by more than {tolerance} points): the '
            'stronger attack should not do worse; suspect gradient masking '
            'or a broken attack.')
  if 'clean' in white:
    for attack, acc in white.items():
      if (attack not in ('clean', WORST_CASE) and
          acc > white['clean'] + tolerance):
        out.append(
            f'SANITY WARNING: white-box {name(attack)} accuracy {acc:.2f}% > '
            f'clean accuracy {white["clean"]:.2f}% (by more than {tolerance} '
            'points): an attack should not make the model more accurate.')
  for attack, acc in black.items():
    if attack in white and acc < white[attack] - tolerance:
      out.append(
          f'SANITY WARNING: black-box {name(attack)} accuracy {acc:.2f}% < '
          f'white-box {name(attack)} accuracy {white[attack]:.2f}% (by more '
          f'than {tolerance} points): a transfer attack should not beat the '
          'white-box one; suspect gradient masking.')
  if eps_one_accuracy is not None and eps_one_accuracy > EPS_ONE_MAX_ACCURACY:
    out.append(
        f'SANITY WARNING: PGD-20 accuracy at eps=1 is {eps_one_accuracy:.2f}% '
        f'(> {EPS_ONE_MAX_ACCURACY}%): at eps=1 the attack can paint any image,'
        ' so it should be ~0; suspect gradient masking (unless the model '
        'ignores its input).')
  return out
