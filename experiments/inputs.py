"""Data loading and augmentation of the experiment mains.

Loads the train and test splits of a :class:`~experiments.config.Config`
(optionally their first ``--num_train_examples`` / ``--num_eval_examples``),
announcing what was loaded, and augments one batch at a time as a pure
function of the seed, the epoch and the batch index.
"""

import dataclasses
from typing import Tuple

import jax
import numpy as np

from dynamic_at import data
from experiments.config import Config
from experiments.config import ConfigError
from experiments.outputs import print_loud
from experiments.outputs import print_main

# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def _first(ds: data.Dataset, n: int, flag: str) -> data.Dataset:
  """The first ``n`` examples (0 = all), checked against the split's size."""
  if not n or n == ds.num_examples:
    return ds
  if n > ds.num_examples:
    raise ConfigError(f'--{flag}={n} but the {ds.name} {ds.split} split has '
                      f'only {ds.num_examples} examples ({ds.source}).')
  return dataclasses.replace(
      ds, images=ds.images[:n].copy(), labels=ds.labels[:n].copy(),
      source=f'{ds.source}, first {n} of {ds.num_examples}')


def _load_split(config: Config, split: str) -> data.Dataset:
  """``data.load_dataset`` of ``split``; its errors name the flag
  ``--data_dir`` where the library names its argument."""
  try:
    return data.load_dataset(config.dataset, split, config.data_dir)
  except data.DataError as e:
    message = str(e)
    if data.DATA_DIR_ARGUMENT not in message:
      raise
    raise data.DataError(
        message.replace(data.DATA_DIR_ARGUMENT, '--data_dir')) from e


def load_data(config: Config) -> Tuple[data.Dataset, data.Dataset]:
  """Loads the train and test splits and prints loudly what was loaded.

  Raises:
    data.DataError: missing or corrupt files (the message names the file).
    ConfigError: a subset larger than the split.
  """
  train_ds = _first(_load_split(config, 'train'), config.num_train_examples,
                    'num_train_examples')
  test_ds = load_test_data(config, announce=False)
  if config.batch_size > train_ds.num_examples:
    raise ConfigError(f'--batch_size={config.batch_size} is larger than the '
                      f'{train_ds.num_examples} training examples '
                      '(--num_train_examples).')
  print_main(f'Training data: {train_ds.num_examples:,} examples from '
             f'{train_ds.source}')
  print_main(f'Test data: {test_ds.num_examples:,} examples from '
             f'{test_ds.source}')
  warning = data.dataset_warning(train_ds)
  if warning:
    print_loud(warning)
  return train_ds, test_ds


def load_test_data(config: Config, *, announce: bool = True
                   ) -> data.Dataset:
  """The first ``--num_eval_examples`` test examples (0 = all)."""
  test_ds = _first(_load_split(config, 'test'), config.num_eval_examples,
                   'num_eval_examples')
  if announce:
    print_main(f'Test data: {test_ds.num_examples:,} examples from '
               f'{test_ds.source}')
  return test_ds


def _augment_keras(images: np.ndarray, rng: np.random.Generator, *,
                   rotation: float = 10.0, shift: float = 0.2) -> np.ndarray:
  """The authors' Keras ImageDataGenerator(rotation_range=10,
  width_shift_range=0.2, height_shift_range=0.2, horizontal_flip=True):
  a random rotation, shift and horizontal flip per image, bilinear, with the
  nearest edge pixel filling the border (Keras' default fill_mode)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  b, h, w, _ = images.shape
  angles = np.deg2rad(rng.uniform(-rotation, rotation, b))
  shifts = rng.uniform(-shift, shift, (b, 2)) * np.array([h, w])
  flips = rng.random(b) < 0.5
  centre = np.array([(h - 1) / 2, (w - 1) / 2])
  out = np.empty_like(images)
  for i in range(b):
    cos, sin = np.cos(angles[i]), np.sin(angles[i])
    rot = np.array([[cos, -sin], [sin, cos]])
    matrix = np.eye(3)
    matrix[:2, :2] = rot
    offset = np.zeros(3)
    # input = rot @ (output - centre) + centre - shift
    offset[:2] = centre - rot @ centre - shifts[i]
    img = ndimage.affine_transform(images[i], matrix, offset, order=1,
                                   mode='nearest')
    out[i] = img[:, ::-1] if flips[i] else img
  return out


def augment(config: Config, images: np.ndarray, epoch: int,
            batch_index: int) -> np.ndarray:
  """Augments this process's share of one batch.

  The random numbers are a pure function of (seed, epoch, batch index,
  process), so a resumed epoch augments its remaining batches exactly as an
  uninterrupted one.
  """
  if config.augment == 'none':
    return images
  rng = np.random.default_rng(
      [config.seed, epoch, batch_index, jax.process_index(), 7])
  if config.augment == 'crop_flip':
    return data.augment_cifar(images, rng)
  return _augment_keras(images, rng)
