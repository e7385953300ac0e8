"""Data parallelism over a 1-D device mesh: one code path for 1..N devices
and 1..N hosts.

The batch is split over the mesh axis ``'data'``; parameters, BatchNorm
statistics and optimiser state are replicated. Steps are compiled with
``jax.jit`` and these shardings (XLA inserts the gradient all-reduce); the
attack alone runs under ``jax.shard_map`` so that each device runs its own
PGD loop and stops as soon as its own examples are done (see
:func:`dynamic_at.train.make_train_step`).
"""

from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh named ``'data'`` over ``devices`` (default: all, all hosts)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of parameters and other state: a full copy on every device."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding of batch arrays: the leading axis split over ``'data'``."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  """Raises ValueError unless ``batch_size`` splits evenly over the devices."""
  n = mesh.devices.size
  if batch_size % n or batch_size % jax.process_count():
    raise ValueError(
        f'batch_size={batch_size} must be divisible by the number of devices '
        f'({n}) and of processes ({jax.process_count()})')


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> Any:
  """Assembles each process's share of a batch into global sharded arrays.

  Every process passes only its own slice of the global batch (its
  ``1 / process_count`` share, in process order); on one host that is the
  whole batch.
  """
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}


def is_typed_key(x: Any) -> bool:
  """Whether ``x`` is an array of typed PRNG keys (``jax.random.key``)."""
  dtype = getattr(x, 'dtype', None)
  return dtype is not None and jax.dtypes.issubdtype(dtype,
                                                     jax.dtypes.prng_key)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree (e.g. a fresh train state) replicated on the mesh.

  Every process passes the same values. Typed PRNG keys travel as their key
  data (``device_put`` refuses a key array onto devices of other processes).
  """
  sharding = replicated(mesh)

  def put(x):
    if is_typed_key(x):
      return jax.random.wrap_key_data(put(jax.random.key_data(x)),
                                      impl=jax.random.key_impl(x))
    return jax.device_put(x, sharding)

  return jax.tree.map(put, tree)
