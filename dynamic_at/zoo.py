"""A zoo of trained models: loaded by name, checked against their manifests.

Every model lives in its own folder ``<root>/<dataset>/<name>/`` (``root``
is the repository's ``models/`` unless given) and is named
``'<dataset>/<name>'`` (e.g. ``'mnist/dynamic_cmax01_seed0'``). The folder
holds:

* ``weights.msgpack``: parameters and BatchNorm statistics only, float32
  (:mod:`dynamic_at.weights`);
* ``manifest.json``: what the model is and how it came about: its
  architecture and arguments, method and settings, the training command,
  commit, data (with the sha256 of the data files), hardware and time, the
  sha256 of the weights file, the evaluation results, and the
  ``check``: clean and PGD-20 correct counts on the first 500 test images
  with a recorded key, which :func:`quick_eval` reproduces exactly;
* ``model_info.json``: RobustBench's fields
  (:func:`dynamic_at.evaluation.model_info`).

  >>> from dynamic_at import load_pretrained                 # doctest: +SKIP
  >>> model, variables = load_pretrained('mnist/standard_seed0')
  >>> logits = model.apply(variables, images, train=False)

This module never reads absl flags.
"""

import hashlib
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import jax
import numpy as np

from dynamic_at import evaluation
from dynamic_at import models
from dynamic_at import weights

FORMAT = 'dynamic_at.zoo/1'
WEIGHTS_FILE = 'weights.msgpack'
MANIFEST_FILE = 'manifest.json'
MODEL_INFO_FILE = 'model_info.json'

# The check every model's manifest records and the tests repeat: the clean
# and PGD-20 accuracy of the first CHECK_EXAMPLES test images.
CHECK_EXAMPLES = 500
CHECK_ATTACKS = ('clean', 'pgd20')
CHECK_BATCH_SIZE = 500

__all__ = [
    'CHECK_ATTACKS', 'CHECK_EXAMPLES', 'ZooError', 'array_sha256',
    'check_key', 'default_root', 'list_models', 'load_manifest',
    'load_pretrained', 'model_dir', 'quick_eval', 'sha256_file',
    'verify_weights',
]


class ZooError(ValueError):
  """A zoo model that cannot be found or loaded; the message says which
  and why (the file, the expected checksum)."""


def default_root() -> str:
  """The repository's ``models/`` folder (beside ``dynamic_at/``)."""
  return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))), 'models')


def _root(root: Optional[str]) -> str:
  return os.path.abspath(os.fspath(root)) if root is not None else (
      default_root())


def list_models(root: Optional[str] = None) -> List[str]:
  """The names (``'<dataset>/<name>'``) of the zoo's models, sorted: every
  ``<root>/<dataset>/<name>/`` that holds a ``manifest.json``."""
  root = _root(root)
  if not os.path.isdir(root):
    return []
  names = []
  for dataset in sorted(os.listdir(root)):
    folder = os.path.join(root, dataset)
    if not os.path.isdir(folder):
      continue
    for name in sorted(os.listdir(folder)):
      if os.path.isfile(os.path.join(folder, name, MANIFEST_FILE)):
        names.append(f'{dataset}/{name}')
  return names


def _known(root: str) -> str:
  names = list_models(root)
  if not names:
    return f'the zoo in {root} holds no models yet'
  return 'known models: ' + ', '.join(names)


def model_dir(name: str, root: Optional[str] = None) -> str:
  """The folder of model ``name``.

  Raises:
    ZooError: if ``name`` is not ``'<dataset>/<name>'`` or not in the zoo
      (the message lists the models there are).
  """
  root = _root(root)
  parts = name.split('/') if isinstance(name, str) else []
  if len(parts) != 2 or not all(parts) or any(
      p in ('.', '..') for p in parts):
    raise ZooError(f'{name!r} is not a zoo model name (<dataset>/<name>, '
                   f'e.g. mnist/standard_seed0); {_known(root)}.')
  folder = os.path.join(root, *parts)
  if not os.path.isfile(os.path.join(folder, MANIFEST_FILE)):
    raise ZooError(f'no model {name!r} in the zoo ({root}); {_known(root)}.')
  return folder


def load_manifest(name: str, root: Optional[str] = None) -> Dict[str, Any]:
  """The manifest of model ``name``.

  Raises:
    ZooError: unknown model, or a manifest that does not read (naming it).
  """
  path = os.path.join(model_dir(name, root), MANIFEST_FILE)
  try:
    with open(path) as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    raise ZooError(f'cannot read the manifest {path}: {e}') from None
  if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
    raise ZooError(f'{path} is not a zoo manifest (format {FORMAT!r} '
                   'expected).')
  for key in ('name', 'dataset', 'architecture', 'weights'):
    if key not in manifest:
      raise ZooError(f'{path} has no {key!r}.')
  if manifest['name'] != name:
    raise ZooError(f'{path} is the manifest of {manifest["name"]!r}, not of '
                   f'{name!r}.')
  return manifest


def sha256_file(path: 'os.PathLike[str] | str') -> str:
  """The hex sha256 of a file's bytes."""
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def array_sha256(*arrays: np.ndarray) -> str:
  """The hex sha256 of arrays' dtypes, shapes and bytes (C order)."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(f'{a.dtype.str}{a.shape}'.encode())
    h.update(a.tobytes())
  return h.hexdigest()


def verify_weights(name: str, root: Optional[str] = None
                   ) -> Tuple[str, Dict[str, Any]]:
  """Checks the weights file of ``name`` against its manifest's sha256.

  Returns:
    ``(weights path, manifest)``.

  Raises:
    ZooError: naming the file and the expected sha256 if it is missing,
      damaged or truncated.
  """
  manifest = load_manifest(name, root)
  entry = manifest['weights']
  path = os.path.join(model_dir(name, root), entry.get('file', WEIGHTS_FILE))
  expected = entry.get('sha256')
  size = entry.get('bytes')
  try:
    got = sha256_file(path)
    have = os.path.getsize(path)
  except OSError as e:
    raise ZooError(f'cannot read the weights file {path} of {name!r} '
                   f'({e.strerror or e}); expected sha256 {expected}.'
                   ) from None
  if got != expected:
    how = ('truncated' if size is not None and have < size else
           'damaged' if size is None or have == size else 'not the same file')
    raise ZooError(
        f'the weights file {path} of {name!r} is {how}: its sha256 is {got} '
        f'({have:,} bytes) but the manifest expects {expected}'
        f'{"" if size is None else f" ({size:,} bytes)"}. Restore it (e.g. '
        f'git checkout -- {os.path.relpath(path)}) or add the model again.')
  return path, manifest


def load_pretrained(name: str, *, root: Optional[str] = None
                    ) -> Tuple[Any, Dict[str, Any]]:
  """Loads zoo model ``name`` (e.g. ``'mnist/dynamic_cmax01_seed0'``).

  The weights file is checked against the manifest's sha256 before it is
  decoded, and the model it builds against the manifest's architecture.

  Args:
    name: ``'<dataset>/<name>'``, one of :func:`list_models`.
    root: the zoo's folder (default: the repository's ``models/``).

  Returns:
    ``(model, variables)``: the Flax module and ``{'params',
    'batch_stats'}``; ``model.apply(variables, images, train=False)`` gives
    logits of images in [0, 1].

  Raises:
    ZooError: an unknown name (listing the known ones), a missing, damaged
      or truncated weights file (naming it and the expected sha256), or a
      file that does not fit its manifest.
  """
  path, manifest = verify_weights(name, root)
  try:
    model, variables, _ = weights.load_weights(path)
  except weights.WeightsError as e:
    raise ZooError(f'{name!r}: {e}') from None
  arch = manifest['architecture']
  try:
    want = models.get_model(arch['name'], **arch.get('kwargs', {}))
  except (KeyError, TypeError, ValueError) as e:
    raise ZooError(f'{name!r}: the manifest\'s architecture {arch!r} does not '
                   f'build ({e}).') from None
  if want != model:
    raise ZooError(f'{name!r}: {path} holds {model!r}, but the manifest says '
                   f'{want!r}.')
  return model, variables


def check_key(seed: int) -> jax.Array:
  """The PRNG key of the manifest's check: ``jax.random.key(seed)``."""
  return jax.random.key(int(seed))


def quick_eval(model: Any, variables: Any, images: np.ndarray,
               labels: np.ndarray, *, eps: float, key_seed: int,
               num_examples: int = CHECK_EXAMPLES,
               batch_size: int = CHECK_BATCH_SIZE) -> Dict[str, Any]:
  """The manifest's check: clean and PGD-20 correct counts on the first
  ``num_examples`` of ``images`` (the test split), on one device.

  :func:`dynamic_at.evaluation.evaluate` with the key
  :func:`check_key` ``(key_seed)``; the same model, data and key give the same
  counts (that is what the zoo's tests check).

  Returns:
    ``{'num_examples', 'attacks', 'eps', 'key_seed', 'batch_size',
    'data_sha256', 'correct': {attack: int}, 'accuracy': {attack: %}}``.

  Raises:
    ValueError: fewer than ``num_examples`` images.
  """
  if len(images) < num_examples:
    raise ValueError(f'the check needs {num_examples} test images; got '
                     f'{len(images)}.')
  x = np.asarray(images[:num_examples], np.float32)
  y = np.asarray(labels[:num_examples], np.int32)
  out = evaluation.evaluate(
      model.apply, variables, x, y, eps=float(eps), key=check_key(key_seed),
      batch_size=min(batch_size, num_examples), mesh=None,
      attacks=CHECK_ATTACKS)
  per = out['per_example']['white_box']
  correct = {a: int(np.sum(per[a])) for a in CHECK_ATTACKS}
  return {
      'num_examples': num_examples,
      'attacks': list(CHECK_ATTACKS),
      'eps': float(eps),
      'key_seed': int(key_seed),
      'key': f'jax.random.key({int(key_seed)})',
      'batch_size': min(batch_size, num_examples),
      'data_sha256': array_sha256(x, y),
      'correct': correct,
      'accuracy': {a: 100.0 * c / num_examples for a, c in correct.items()},
  }


def headline(manifest: Mapping[str, Any]) -> Dict[str, Any]:
  """The numbers ``experiments.zoo list`` prints: the check's clean and
  PGD-20 accuracy, and the full evaluation's (first one recorded) clean,
  PGD-20 and worst case with its number of examples."""
  check = manifest.get('check') or {}
  acc = check.get('accuracy') or {}
  full = (manifest.get('evaluations') or [{}])[0]
  white = full.get('white_box') or {}
  return {
      'name': manifest.get('name'),
      'architecture': (manifest.get('architecture') or {}).get('display'),
      'method': (manifest.get('method') or {}).get('name'),
      'check_clean': acc.get('clean'),
      'check_pgd20': acc.get('pgd20'),
      'clean': white.get('clean'),
      'pgd20': white.get('pgd20'),
      'worst_case': white.get(evaluation.WORST_CASE),
      'num_eval_examples': full.get('num_eval_examples'),
      'attacks': full.get('attacks'),
  }
