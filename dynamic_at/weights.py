"""Trained weights in one small file: parameters and BatchNorm statistics.

A weights file holds what evaluating a model needs and nothing else (no
optimiser state): the model's name and constructor arguments, its
``params`` and ``batch_stats``, and a JSON-ready ``info`` dictionary (e.g.
the run's flags, data and results), serialised with Flax's msgpack. The
MNIST CNN's file is 1.7 MB.

  >>> model, variables, info = load_weights('model.msgpack')  # doctest: +SKIP
  >>> logits = model.apply(variables, images, train=False)    # doctest: +SKIP

This module never reads absl flags.
"""

import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

from flax import serialization
import jax
import jax.numpy as jnp
import numpy as np

from dynamic_at import files
from dynamic_at import models

FORMAT = 'dynamic_at.weights/1'


class WeightsError(ValueError):
  """A weights file that cannot be read; the message names the file."""


def save_weights(path: 'os.PathLike[str] | str', variables: Mapping[str, Any],
                 *, model: str, model_kwargs: Optional[Mapping[str, Any]] = None,
                 info: Optional[Mapping[str, Any]] = None) -> str:
  """Writes ``variables`` (``params``, ``batch_stats``) to ``path`` atomically.

  Args:
    path: the file to write (conventionally ``*.msgpack``).
    variables: the model's ``params`` and (optionally) ``batch_stats``.
    model: its name for :func:`dynamic_at.models.get_model`.
    model_kwargs: its constructor arguments (e.g. WideResNet's depth, width).
    info: JSON-ready facts to keep beside the weights.

  Returns:
    ``path`` as a string.
  """
  if model not in models.MODEL_NAMES:
    raise ValueError(f'model must be one of {models.MODEL_NAMES}; got '
                     f'{model!r}')
  host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)),
                      {'params': variables['params'],
                       'batch_stats': variables.get('batch_stats', {})})
  payload = {
      'format': FORMAT,
      'model': model,
      'model_kwargs': json.dumps(dict(model_kwargs or {}), sort_keys=True),
      'info': json.dumps(dict(info or {}), sort_keys=True),
      'variables': serialization.to_state_dict(host),
  }
  data = serialization.msgpack_serialize(payload)
  return files.atomic_write(path, lambda f: f.write(data), binary=True)


def load_weights(path: 'os.PathLike[str] | str'
                 ) -> Tuple[Any, Dict[str, Any], Dict[str, Any]]:
  """Reads a weights file written by :func:`save_weights`.

  Returns:
    ``(model, variables, info)``: the Flax module, ``{'params',
    'batch_stats'}`` as JAX arrays (checked against the module's own shapes)
    and the saved ``info``.

  Raises:
    WeightsError: naming the file, if it is missing, damaged or not of this
      format, or if its arrays do not fit its model.
  """
  path = os.fspath(path)
  try:
    with open(path, 'rb') as f:
      payload = serialization.msgpack_restore(f.read())
  except OSError as e:
    raise WeightsError(f'cannot read weights file {path}: {e}') from None
  except Exception as e:  # pylint: disable=broad-except
    raise WeightsError(f'{path} is not a readable weights file ({e}).'
                       ) from None
  if not isinstance(payload, dict) or payload.get('format') != FORMAT:
    raise WeightsError(f'{path} is not a dynamic_at weights file (format '
                       f'{FORMAT!r} expected).')
  try:
    model = models.get_model(payload['model'],
                             **json.loads(payload['model_kwargs']))
    info = json.loads(payload['info'])
  except (KeyError, ValueError, TypeError) as e:
    raise WeightsError(f'{path}: cannot build its model: {e}') from None
  variables = {'params': payload['variables'].get('params', {}),
               'batch_stats': payload['variables'].get('batch_stats', {})}
  shape = info.get('input_shape')
  if shape:
    expected = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape)),
                           train=False))
    expected = {'params': expected['params'],
                'batch_stats': expected.get('batch_stats', {})}
    got = jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), variables)
    want = jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), expected)
    if got != want:
      raise WeightsError(f'{path}: its arrays do not fit model '
                         f'{payload["model"]!r} with input shape {shape}.')
  return model, jax.tree.map(jnp.asarray, variables), info
