"""Output helpers of the experiment mains.

Printing on the main process only (:func:`print_main`, and :func:`print_loud`
for warnings), atomic file writes, the run's ``metrics.jsonl`` and one-transfer
fetches of (possibly multi-host) arrays.
"""

import json
import os
import sys
from typing import Any, Dict, List, Mapping

import jax
from jax.experimental import multihost_utils
import numpy as np

from dynamic_at import files
from experiments.config import FOSC_DIR
from experiments.config import METRICS_FILE

# --------------------------------------------------------------------------
# Output helpers
# --------------------------------------------------------------------------


def is_main_process() -> bool:
  """Whether this is process 0 (the one that prints and writes files)."""
  return jax.process_index() == 0


def print_main(message: str) -> None:
  """Prints ``message`` to stdout on the main process."""
  if is_main_process():
    print(message, flush=True)


def print_loud(message: str) -> None:
  """Prints ``message`` between bars of '!' to stderr on the main process
  (warnings)."""
  if is_main_process():
    bar = '!' * 78
    print(f'\n{bar}\n{message}\n{bar}\n', file=sys.stderr, flush=True)


def atomic_save_npy(path: str, array: np.ndarray) -> None:
  """``np.save`` to ``path`` atomically."""
  files.atomic_write(path, lambda f: np.save(f, array), binary=True)


def read_metrics(workdir: str) -> List[Dict[str, Any]]:
  """The rows of ``workdir/metrics.jsonl`` (empty if there is none)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def fosc_path(workdir: str, epoch: int) -> str:
  """Where a run keeps the FOSC of ``epoch``'s training adversarial
  examples: ``WORKDIR/fosc/epoch_0007.npy``."""
  return os.path.join(workdir, FOSC_DIR, f'epoch_{epoch:04d}.npy')


def fosc_files(workdir: str) -> Dict[int, str]:
  """``epoch -> path`` of a run's saved FOSC arrays, by epoch."""
  folder = os.path.join(workdir, FOSC_DIR)
  if not os.path.isdir(folder):
    return {}
  found = {int(name[len('epoch_'):-len('.npy')]): os.path.join(folder, name)
           for name in os.listdir(folder)
           if name.startswith('epoch_') and name.endswith('.npy')}
  return dict(sorted(found.items()))


def truncate_metrics(workdir: str, first_epoch: int) -> None:
  """Drops rows of epochs >= ``first_epoch`` (re-done after a resume)."""
  rows = read_metrics(workdir)
  kept = [r for r in rows if r.get('epoch', -1) < first_epoch]
  if len(kept) != len(rows):
    _write_metrics(workdir, kept)


def append_metrics(workdir: str, row: Mapping[str, Any]) -> None:
  """Adds ``row`` to ``metrics.jsonl`` by rewriting it atomically (a failed
  write leaves the previous rows intact, never a half line)."""
  _write_metrics(workdir, read_metrics(workdir) + [dict(row)])


def _write_metrics(workdir: str, rows: List[Mapping[str, Any]]) -> None:
  """Replaces ``metrics.jsonl`` atomically by ``rows``, one JSON line each."""
  files.atomic_write_text(os.path.join(workdir, METRICS_FILE),
                          ''.join(json.dumps(r) + '\n' for r in rows))


def devices_description() -> str:
  """E.g. ``'1 x cpu (cpu), 1 process(es)'``."""
  d = jax.devices()[0]
  return (f'{jax.device_count()} x {d.platform} ({d.device_kind}), '
          f'{jax.process_count()} process(es)')


def to_host(tree: Any) -> Any:
  """One transfer of a pytree of (possibly multi-host) arrays to numpy."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)
