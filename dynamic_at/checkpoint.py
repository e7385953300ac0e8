"""Checkpoints: a small layer over ``orbax.checkpoint.CheckpointManager``.

A checkpoint is one orbax step directory holding three items:

* ``state``: the train state's pytree leaves (``params``, ``batch_stats``,
  ``opt_state``, ``step``), restored into a template state so that optax's
  NamedTuples come back as themselves (restoring without a target would give
  lists) and every array lands on the template's sharding.
* ``arrays``: any other pytree of arrays the caller wants back bit-exactly
  (e.g. host-side per-example buffers of a half-finished epoch).
* ``meta``: a JSON dictionary (plain Python numbers, strings, lists).

Typed PRNG keys (``jax.random.key``) are stored as their ``key_data`` and
rebuilt with ``jax.random.wrap_key_data`` on restore.

Saves are atomic (orbax writes a temporary directory and renames it) and
asynchronous: call :meth:`Checkpointer.wait_until_finished` or
:meth:`Checkpointer.close` before the process exits. A save that cannot be
written (disk full, read-only folder) raises :class:`CheckpointError` and
leaves the checkpoints already there as they were. Restores are
bit-identical.

Restoring the newest checkpoint (``step=None``) falls back to older ones:
if the newest cannot be read (damaged files) but an older one can, the
unreadable ones are moved aside to ``<step>.unreadable`` (never deleted),
listed in :attr:`Checkpointer.moved_aside` and logged, and the older one is
restored. If none can be read, :class:`CheckpointError` lists every step tried
with its error and nothing is moved.

Examples:
  >>> ckpt = Checkpointer('/tmp/run/checkpoints', max_to_keep=3)
  >>> ckpt.save(100, state, meta={'epoch': 2})            # doctest: +SKIP
  >>> state, arrays, meta = ckpt.restore(fresh_state)     # doctest: +SKIP
  >>> ckpt.close()                                        # doctest: +SKIP

This module never reads absl flags.
"""

import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from dynamic_at import parallel
from dynamic_at import train

PathLike = Any  # str or os.PathLike

_LOG = logging.getLogger(__name__)
_STATE_FIELDS = ('params', 'batch_stats', 'opt_state', 'step')
UNREADABLE_SUFFIX = '.unreadable'


class CheckpointError(RuntimeError):
  """A checkpoint could not be written, or no checkpoint could be read."""


def encode_keys(tree: Any) -> Any:
  """Replaces every typed PRNG key leaf by its ``jax.random.key_data``."""
  return jax.tree.map(
      lambda x: jax.random.key_data(x) if parallel.is_typed_key(x) else x, tree)


def decode_keys(tree: Any, like: Any) -> Any:
  """Inverse of :func:`encode_keys`: rewraps the leaves that are typed keys in
  ``like`` (same structure as ``tree``) with their key implementation."""
  return jax.tree.map(
      lambda x, ref: (jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref))
                      if parallel.is_typed_key(ref) else x), tree, like)


def _abstract(tree: Any) -> Any:
  """Restore target of a concrete (encoded) pytree: shapes, dtypes and, for
  jax arrays, shardings; numpy leaves stay numpy arrays."""

  def leaf(x):
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return np.zeros(np.shape(x), np.asarray(x).dtype)

  return jax.tree.map(leaf, tree)


def state_tree(state: train.TrainState) -> Dict[str, Any]:
  """The saved leaves of a train state (no functions, no optimiser object)."""
  return {name: getattr(state, name) for name in _STATE_FIELDS}


class Checkpointer:
  """Saves and restores train states with JSON metadata.

  Args:
    directory: where the step directories go (created on the first save).
    max_to_keep: keep only the newest this many checkpoints (``None``: all).
    read_only: open an existing directory for restoring only.
  """

  def __init__(self, directory: PathLike, *, max_to_keep: Optional[int] = None,
               read_only: bool = False):
    self.directory = os.fspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else max_to_keep,
        create=not read_only, read_only=read_only,
        save_interval_steps=0 if read_only else 1)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._read_only = read_only
    #: ``(step, moved_to, error)`` of each newest checkpoint that could not be
    #: read by :meth:`restore` (``moved_to`` is ``None`` when read-only).
    self.moved_aside: List[Tuple[int, Optional[str], str]] = []

  def latest_step(self) -> Optional[int]:
    """The newest saved step, or ``None`` if there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> Tuple[int, ...]:
    """Every saved step, oldest first."""
    return tuple(sorted(self._manager.all_steps()))

  def save(self, step: int, state: train.TrainState, *,
           arrays: Optional[Mapping[str, Any]] = None,
           meta: Optional[Mapping[str, Any]] = None) -> bool:
    """Starts an asynchronous save of ``state`` (and ``arrays``, ``meta``).

    Args:
      step: the checkpoint's number (e.g. the global training step).
      state: the train state.
      arrays: optional pytree of arrays (numpy or jax; typed keys allowed).
      meta: optional JSON-serialisable dictionary.

    Returns:
      ``False`` (and saves nothing) if ``step`` is already saved, else
      ``True``.
    """
    if step in self._manager.all_steps():
      return False
    items = {'state': ocp.args.StandardSave(encode_keys(state_tree(state))),
             'meta': ocp.args.JsonSave(dict(meta or {}))}
    if arrays is not None:
      items['arrays'] = ocp.args.StandardSave(encode_keys(dict(arrays)))
    try:
      self._manager.save(int(step), args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(f'checkpoint step {step}', e) from e
    return True

  def _write_error(self, what: str, error: BaseException) -> CheckpointError:
    try:  # what is on disk now (not the manager's cached list)
      kept = [int(n) for n in os.listdir(self.directory) if n.isdigit()]
    except OSError:
      kept = []
    if isinstance(error, TimeoutError):  # e.g. orbax's async write
      advice = ('the write did not finish in time (the process was '
                'suspended, or the disk is slow); rerun')
    else:
      advice = 'free space or fix the folder, then rerun'
    return CheckpointError(
        f'could not write {what} in {self.directory!r}: '
        f'{str(error).rstrip(".")}. The checkpoints already there are '
        f'unchanged (steps {sorted(kept) or "none"}); {advice} to resume '
        'from the newest.')

  def restore(self, target: train.TrainState, *,
              arrays_target: Optional[Mapping[str, Any]] = None,
              step: Optional[int] = None
              ) -> Tuple[train.TrainState, Optional[Dict[str, Any]],
                         Dict[str, Any]]:
    """Restores a checkpoint into the structure of ``target``.

    Args:
      target: a train state of the same model and optimiser (e.g. a freshly
        created one, placed as the restored arrays should be).
      arrays_target: like the ``arrays`` given to :meth:`save` (values are
        ignored; shapes, dtypes and structure are used), or ``None`` to skip
        them.
      step: which checkpoint (default: the newest).

    Returns:
      ``(state, arrays, meta)``; ``arrays`` is ``None`` without
      ``arrays_target``.

    Raises:
      FileNotFoundError: if there is no checkpoint to restore.
      CheckpointError: if no checkpoint could be read (``step=None``).
    """
    if step is not None:
      return self._restore(int(step), target, arrays_target)
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f'no checkpoint in {self.directory!r}')
    failed = []
    for candidate in steps:
      try:
        result = self._restore(candidate, target, arrays_target)
      except Exception as e:  # pylint: disable=broad-except
        # Damaged files raise ValueError (tensorstore), UnicodeDecodeError
        # or JSONDecodeError (metadata), OSError, ...: try the next one.
        failed.append((candidate, e))
        continue
      for bad, error in failed:
        self._move_aside(bad, error)
      return result
    tried = '; '.join(f'step {s}: {_one_line(e)}' for s, e in failed)
    raise CheckpointError(
        f'no checkpoint in {self.directory!r} could be read (tried, newest '
        f'first: {tried}). Nothing was moved or deleted.')

  def _move_aside(self, step: int, error: BaseException) -> None:
    """Renames the unreadable ``step`` to ``<step>.unreadable`` (process 0,
    unless read-only) and records it in :attr:`moved_aside`."""
    path = os.path.join(self.directory, str(step))
    moved_to = None
    if (not self._read_only and jax.process_index() == 0 and
        os.path.isdir(path)):
      moved_to = path + UNREADABLE_SUFFIX
      n = 1
      while os.path.exists(moved_to):
        n += 1
        moved_to = f'{path}{UNREADABLE_SUFFIX}{n}'
      os.rename(path, moved_to)
      self._manager.reload()
    self.moved_aside.append((step, moved_to, _one_line(error)))
    _LOG.warning('checkpoint step %d in %s could not be read (%s); %s',
                    step, self.directory, _one_line(error),
                    f'moved aside to {moved_to}' if moved_to else 'skipped')

  def _restore(self, step: int, target: train.TrainState,
               arrays_target: Optional[Mapping[str, Any]]
               ) -> Tuple[train.TrainState, Optional[Dict[str, Any]],
                          Dict[str, Any]]:
    target_tree = state_tree(target)
    items = {'state': ocp.args.StandardRestore(
        _abstract(encode_keys(target_tree))),
             'meta': ocp.args.JsonRestore()}
    if arrays_target is not None:
      arrays_target = dict(arrays_target)
      items['arrays'] = ocp.args.StandardRestore(
          _abstract(encode_keys(arrays_target)))
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    tree = decode_keys(restored['state'], target_tree)
    arrays = None
    if arrays_target is not None:
      arrays = decode_keys(restored['arrays'], arrays_target)
    return target.replace(**tree), arrays, dict(restored['meta'] or {})

  def wait_until_finished(self) -> None:
    """Blocks until every asynchronous save has been written.

    Raises:
      CheckpointError: if a save failed.
    """
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error('a checkpoint', e) from e

  def close(self) -> None:
    """Waits for pending saves and releases the manager (raising
    :class:`CheckpointError` if a save failed)."""
    try:
      self.wait_until_finished()
    finally:
      self._manager.close()

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _one_line(error: BaseException) -> str:
  """``Type: first line of the message`` (at most 300 characters)."""
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0][:300] if text else ""}'.rstrip(': ')
