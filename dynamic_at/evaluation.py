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

import dataclasses
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
from dynamic_at import _fab
from dynamic_at import _square
from dynamic_at import parallel

ApplyFn = Callable[..., jax.Array]

WORST_CASE = 'worst_case'


@dataclasses.dataclass(frozen=True)
class Attack:
  """One evaluation attack: everything the evaluation, the reports and the
  flags need to know of it. Adding an attack is its module plus one
  :func:`register_attack` call below.

  Attributes:
    name: the key of :data:`ATTACKS`, of ``results.json`` and of ``--attacks``
      lists (lower case, no spaces).
    display_name: how reports, tables and warnings name it.
    fn: ``fn(logits_fn, x, y, key, *, eps) -> (x_adv, info)``; ``None`` for
      ``'clean'`` (the images as they are).
    stream_id: the number folded into each batch's key for this attack's
      random draws. Fixed per attack, never derived from a list position, so
      an attack's draws (and results) do not depend on which other attacks
      run or in what order.
    cascadable: may run as a cascade (``evaluate(cascade=True)``): only on the
      examples every attack listed before it left correctly classified.
    transferable: is crafted on the source model in a black-box
      (``source=...``) evaluation.
    description: one line for the flag help and the docs: what it is and its
      cost in model evaluations per example.
  """
  name: str
  display_name: str
  fn: Optional[Callable[..., Tuple[jax.Array, Any]]]
  stream_id: int
  cascadable: bool = False
  transferable: bool = False
  description: str = ''


ATTACKS: Dict[str, Attack] = {}


def register_attack(attack: Attack) -> Attack:
  """Adds ``attack`` to :data:`ATTACKS` (its name and stream id unique)."""
  if attack.name in ATTACKS or attack.name == WORST_CASE:
    raise ValueError(f'attack {attack.name!r} is already registered')
  used = {a.stream_id: a.name for a in ATTACKS.values()}
  if attack.stream_id in used:
    raise ValueError(f'attack {attack.name!r}: stream_id {attack.stream_id} '
                     f'is {used[attack.stream_id]!r}\'s')
  ATTACKS[attack.name] = attack
  return attack


def _num_targets(logits_fn, x) -> int:
  """AutoAttack's 9 target classes, fewer if the model has fewer than 10."""
  return min(9, jax.eval_shape(logits_fn, x).shape[-1] - 1)


def _apgd_t(logits_fn, x, y, key, *, eps):
  return _apgd.apgd_targeted(logits_fn, x, y, key, eps=eps,
                             num_targets=_num_targets(logits_fn, x))


def _fab_t(logits_fn, x, y, key, *, eps):
  return _fab.fab_targeted(logits_fn, x, y, key, eps=eps,
                           num_targets=_num_targets(logits_fn, x))


# The stream ids 0-6 are the positions the attacks had in the list that
# numbered them before the registry existed: results stay bit-identical.
# The paper's attacks only need the points: final_eval=False skips the loss
# and FOSC at the last step's points (one gradient evaluation of K + 1).
register_attack(Attack(
    'clean', 'Clean', None, 0, transferable=False,
    description='the test images as they are (no attack)'))
register_attack(Attack(
    'fgsm', 'FGSM', functools.partial(_attacks.fgsm, final_eval=False), 1,
    transferable=True,
    description='one sign step of size eps from the clean point (1 gradient)'))
register_attack(Attack(
    'pgd10', 'PGD-10', functools.partial(_attacks.pgd10, final_eval=False), 2,
    transferable=True,
    description='PGD, 10 steps of eps/4 from a random start (10 gradients)'))
register_attack(Attack(
    'pgd20', 'PGD-20', functools.partial(_attacks.pgd20, final_eval=False), 3,
    transferable=True,
    description='PGD, 20 steps of eps/4 from a random start (20 gradients)'))
register_attack(Attack(
    'cw_inf', 'CW-inf', functools.partial(_attacks.cw_inf, final_eval=False),
    4, transferable=True,
    description='PGD on the C&W margin loss, kappa 50, 30 steps of eps/4 '
    '(30 gradients)'))
register_attack(Attack(
    'apgd_ce', 'APGD-CE', functools.partial(_apgd.apgd, loss='ce'), 5,
    cascadable=True,
    description="AutoAttack's APGD on cross-entropy, 100 steps (100 "
    'gradients)'))
register_attack(Attack(
    'apgd_t', 'APGD-T', _apgd_t, 6, cascadable=True,
    description="AutoAttack's APGD on the targeted DLR loss, 9 targets x 100 "
    'steps (900 gradients)'))
register_attack(Attack(
    'fab_t', 'FAB-T', _fab_t, 7, cascadable=True,
    description="AutoAttack's targeted FAB, 9 targets x 100 steps (900 "
    'gradients and 902 forward passes)'))
register_attack(Attack(
    'square', 'Square', _square.square_attack, 8, cascadable=True,
    description='the Square attack, 5,000 queries, no gradients (up to 5,001 '
    'forward passes)'))

# The attack sets of ``--attacks``. ``autoattack`` is AutoAttack's standard
# version (Croce & Hein 2020): APGD-CE, APGD-T, FAB-T and Square, meant to
# run as a cascade on the examples still robust.
PAPER_ATTACKS = ('clean', 'fgsm', 'pgd10', 'pgd20', 'cw_inf')
# The paper's attacks plus AutoAttack's parameter-free APGD-CE and APGD-T.
STRONG_ATTACKS = PAPER_ATTACKS + ('apgd_ce', 'apgd_t')
AUTOATTACK = ('clean', 'apgd_ce', 'apgd_t', 'fab_t', 'square')
ATTACK_SETS = {'paper': PAPER_ATTACKS, 'strong': STRONG_ATTACKS,
               'autoattack': AUTOATTACK}

# Derived from the registry (kept for the callers that read them).
CASCADE_ATTACKS = tuple(a.name for a in ATTACKS.values() if a.cascadable)
DISPLAY_NAMES = {**{a.name: a.display_name for a in ATTACKS.values()},
                 WORST_CASE: 'Worst case'}


def attack_set(spec: str) -> Tuple[str, ...]:
  """The attacks of ``spec``: a set name of :data:`ATTACK_SETS` or a
  comma-separated list of :data:`ATTACKS` names (e.g.
  ``'clean,pgd20,square'``), checked.

  Raises:
    ValueError: naming the unknown set or attacks and listing the valid ones.
  """
  if spec in ATTACK_SETS:
    return ATTACK_SETS[spec]
  names = tuple(a.strip() for a in spec.split(',') if a.strip())
  unknown = [a for a in names if a not in ATTACKS]
  if unknown or not names:
    raise ValueError(
        f'attacks {spec!r}: not a set ({", ".join(ATTACK_SETS)}) and '
        f'unknown attacks {unknown}; valid attacks: {", ".join(ATTACKS)}')
  return _check_attacks(names)


# Tolerance (accuracy points) of the orderings :func:`sanity_warnings` checks.
DEFAULT_TOLERANCE = 1.0
# AutoAttack's check_square_sr: Square may be below the lowest gradient
# attack's accuracy by at most this many points (its alpha 0.002).
SQUARE_TOLERANCE = 0.2
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
    attack: a name of :data:`ATTACKS`.

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
                             ATTACKS[attack].stream_id)
    x_adv, _ = ATTACKS[attack].fn(crafting, x, y, key, eps=eps)
  return jnp.argmax(target(x_adv), axis=-1) == y


def _check_attacks(attacks: Sequence[str]) -> Tuple[str, ...]:
  attacks = tuple(attacks)
  unknown = [a for a in attacks if a not in ATTACKS]
  if unknown:
    raise ValueError(f'unknown attacks {unknown}; valid: {tuple(ATTACKS)}')
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
  """White-box (and optionally black-box) accuracy under the given attacks.

  The model is ``lambda x: apply_fn(variables, x, train=False)`` (inference
  mode). Examples are processed in batches of ``batch_size``; the last batch is
  padded to the full size and the padding dropped, so one compiled function
  per attack serves every batch. Batch ``b``'s attack ``a`` uses the key
  ``fold_in(fold_in(key, b), ATTACKS[a].stream_id)``: results are
  deterministic, do not depend on which other attacks run, and the black-box
  attacks draw the same random starts as the white-box ones (so a black-box evaluation with the target as its own
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
    attacks: names from :data:`ATTACKS` (e.g. a set of :data:`ATTACK_SETS`).
    source: ``(source_apply_fn, source_variables)``: also measure black-box
      accuracy, i.e. the target's accuracy on examples crafted on the source
      model with each of the ``attacks`` that is ``transferable`` (the
      paper's; APGD, FAB-T and Square are white-box only here).
    cascade: run each ``cascadable`` attack (APGD-CE, APGD-T, FAB-T, Square:
      :data:`CASCADE_ATTACKS`) only on the examples
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
    black_attacks = tuple(a for a in attacks if ATTACKS[a].transferable)
  apply_fn = _static_fn(apply_fn)
  eps = np.float32(eps)  # numpy scalars: fine as jit inputs on every host

  cascaded = tuple(a for a in attacks if cascade and ATTACKS[a].cascadable)
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
      'cascaded': list(cascaded),
      'per_example': {'white_box': per_white, 'black_box': per_black},
  }


def cumulative_log(results: Mapping[str, Any]) -> List[str]:
  """AutoAttack's log of an evaluation: one line per attack, in the order
  they ran, with the robust accuracy of it and every attack before it
  (cumulative: the share of examples no attack so far has broken), then the
  per-example worst case.

  Args:
    results: :func:`evaluate`'s result (its ``per_example`` entry is used
      when present, else the accuracies, which are cumulative for cascaded
      attacks only).

  Returns:
    Lines such as ``'robust accuracy after APGD-T: 88.40% (cumulative)'``.
  """
  white = results.get('white_box') or {}
  per = (results.get('per_example') or {}).get('white_box')
  order = list(white)
  if per is None:  # e.g. read from a results.json: the registry's order
    order.sort(key=lambda a: list(ATTACKS).index(a) if a in ATTACKS
               else len(ATTACKS))
  lines = []
  alive = None
  for a in order:
    if a == WORST_CASE:
      continue
    name = DISPLAY_NAMES.get(a, a)
    if per is not None:
      alive = per[a] if alive is None else alive & per[a]
      acc = _accuracy(alive)
    else:
      acc = white[a]
    label = 'clean accuracy' if a == 'clean' else f'robust accuracy after {name}'
    lines.append(f'{label}: {acc:.2f}% (cumulative)' if a != 'clean' else
                 f'{label}: {acc:.2f}%')
  if WORST_CASE in white:
    lines.append(f'worst case over all attacks: {white[WORST_CASE]:.2f}%')
  return lines


def model_checks(apply_fn: ApplyFn, variables: Any, images: np.ndarray,
                 labels: np.ndarray, attacks: Sequence[str], *,
                 num_passes: int = 5, alpha: float = 1e-4) -> List[str]:
  """AutoAttack's checks of the model itself (``autoattack/checks.py``),
  as warnings: each of them makes an AutoAttack number untrustworthy.

  * A randomised forward pass: ``num_passes`` inference passes over
    ``images`` whose L2-normalised outputs differ by more than ``alpha``, or
    whose numbers of correct predictions differ (``check_randomized``).
  * Outputs that look like probabilities (all in ``[0, 1]`` up to 1e-5 and
    summing to 1): the attacks' losses need logits (``check_range_output``).
  * Fewer classes than the targeted attacks need: the DLR losses need more
    than 3 classes, and 9 targets need 10 (``check_n_classes``; our APGD-T
    and FAB-T then use ``classes - 1`` targets).

  Args:
    apply_fn, variables: the model, as for :func:`evaluate`.
    images, labels: a batch to run the checks on (AutoAttack uses the first
      batch of the evaluation).
    attacks: the attacks that will run (the class check concerns APGD-T and
      FAB-T only).
    num_passes: forward passes of the randomness check.
    alpha: tolerance of the randomness and probability checks.

  Returns:
    A list of warnings, empty when the model passes.
  """
  x = jnp.asarray(images, jnp.float32)
  y = np.asarray(labels)
  outs = [np.asarray(apply_fn(variables, x, train=False), np.float64)
          for _ in range(num_passes)]
  out = []
  normed = [o / (np.linalg.norm(o, axis=-1, keepdims=True) + 1e-10)
            for o in outs]
  max_diff = max((float(np.max(np.linalg.norm(normed[i] - normed[j], axis=-1)))
                  for i in range(num_passes) for j in range(i + 1, num_passes)),
                 default=0.0)
  correct = {int(np.sum(np.argmax(o, -1) == y)) for o in outs}
  if len(correct) > 1 or max_diff > alpha:
    out.append(
        'AUTOATTACK CHECK: the forward pass is not deterministic (outputs of '
        f'{num_passes} passes differ by up to {max_diff:.3g}): a randomised '
        'defence needs AutoAttack\'s "rand" version (EOT), not this one.')
  o = outs[0]
  if (o.max() < 1 + 1e-5 and o.min() > -1e-5 and
      np.all(np.abs(o.sum(-1) - 1) < 1e-5)):
    out.append(
        'AUTOATTACK CHECK: the model\'s outputs look like probabilities (in '
        '[0, 1], summing to 1): the attacks need logits, give the model '
        'without its softmax.')
  num_classes = o.shape[-1]
  targeted = [DISPLAY_NAMES[a] for a in attacks if a in ('apgd_t', 'fab_t')]
  if targeted and num_classes <= 3:
    out.append(f'AUTOATTACK CHECK: with only {num_classes} classes the '
               f'targeted DLR loss and targets of {", ".join(targeted)} are '
               'not possible.')
  elif targeted and num_classes < 10:
    out.append(f'AUTOATTACK CHECK: {num_classes} classes: '
               f'{", ".join(targeted)} use {num_classes - 1} target classes '
               'instead of AutoAttack\'s 9.')
  return out


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
  * Square's accuracy more than 0.2 points below the lowest accuracy of any
    other attack (AutoAttack's ``check_square_sr``; in a cascade these are
    the cumulative accuracies, as AutoAttack compares them): an attack with
    no gradients found what the gradient attacks missed.
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
  others = [acc for a, acc in white.items()
            if a not in ('clean', 'square', WORST_CASE)]
  if 'square' in white and others and (
      white['square'] < min(others) - SQUARE_TOLERANCE):
    out.append(
        f'SANITY WARNING: the Square attack (no gradients) reached '
        f'{white["square"]:.2f}%, below every gradient attack (lowest '
        f'{min(others):.2f}%, by more than {SQUARE_TOLERANCE} points): the '
        'gradients mislead the attacks (AutoAttack\'s check_square_sr); '
        'suspect gradient masking and try Square with more queries or an '
        'adaptive attack.')
  if eps_one_accuracy is not None and eps_one_accuracy > EPS_ONE_MAX_ACCURACY:
    out.append(
        f'SANITY WARNING: PGD-20 accuracy at eps=1 is {eps_one_accuracy:.2f}% '
        f'(> {EPS_ONE_MAX_ACCURACY}%): at eps=1 the attack can paint any image,'
        ' so it should be ~0; suspect gradient masking (unless the model '
        'ignores its input).')
  return out


def _eps_text(eps: float) -> str:
  """``8/255`` for multiples of 1/255 (RobustBench's notation), else ``0.3``."""
  k = eps * 255
  if abs(k - round(k)) < 1e-6 and round(k) > 0:
    return f'{round(k)}/255'
  return f'{eps:g}'


def model_info(results: Mapping[str, Any], *, dataset: str, eps: float,
               architecture: str, name: str,
               extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
  """A RobustBench-style ``model_info.json`` of an evaluated model.

  RobustBench's fields (``dataset``, ``threat_model``, ``eps`` as text,
  ``architecture``, ``clean_acc`` and ``autoattack_acc`` as percentages with
  two decimals, as text; ``number_forward_passes`` 1; ``additional_data``
  false), plus ours: ``num_test_points`` and ``attacks`` (those whose
  per-example worst case ``autoattack_acc`` is). ``autoattack_acc`` is set
  only when all four attacks of AutoAttack's standard version ran
  (:data:`AUTOATTACK`), else ``None`` with ``robust_acc`` the worst case of
  the attacks that did run, so a partial evaluation is never mistaken for
  AutoAttack's.

  Args:
    results: :func:`evaluate`'s result (or the ``results.json`` written from
      it: ``white_box``, ``num_eval_examples``).
    dataset: e.g. ``'mnist'``, ``'cifar10'``.
    eps: the L-inf radius of the evaluation.
    architecture: the model's name and arguments, e.g. ``'mnist_cnn'``.
    name: the model's name.
    extra: more fields (e.g. the evaluation's commit and command).

  Returns:
    A JSON-ready dict.
  """
  white = dict(results.get('white_box') or {})
  attacked = [a for a in white if a not in ('clean', WORST_CASE)]
  robust = white.get(WORST_CASE, white[attacked[0]] if len(attacked) == 1
                     else None)
  is_aa = all(a in white for a in AUTOATTACK)
  fmt = lambda v: None if v is None else f'{float(v):.2f}'
  info = {
      'name': name,
      'dataset': dataset,
      'threat_model': 'Linf',
      'eps': _eps_text(float(eps)),
      'architecture': architecture,
      'additional_data': False,
      'number_forward_passes': 1,
      'clean_acc': fmt(white.get('clean')),
      'autoattack_acc': fmt(robust) if is_aa else None,
      'robust_acc': fmt(robust),
      'attacks': attacked,
      'cascaded': list(results.get('cascaded') or []),
      'num_test_points': results.get('num_eval_examples'),
  }
  info.update(extra or {})
  return info
