"""Dataset loading and batching for MNIST and CIFAR-10.

Two ways to get data:

* Raw files (``data_dir`` given): the original MNIST IDX files or the CIFAR-10
  binary batches / ``cifar-10-binary.tar.gz``. No network, no TensorFlow.
* TFDS (``data_dir`` is None): ``tfds.data_source`` (array_record), which needs
  a dataset that is already prepared; this module never downloads.

Everything returns plain numpy arrays: images float32 [N, H, W, C] in [0, 1],
labels int32 [N]. Batching (``epoch_batches``) is deterministic given
(seed, epoch) and splits every global batch between processes.

This module never reads absl flags; every function takes explicit arguments.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
import tarfile
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

PathLike = Union[str, os.PathLike]

__all__ = [
    'DataError',
    'Dataset',
    'FULL_TRAIN_SIZES',
    'augment_cifar',
    'dataset_warning',
    'epoch_batches',
    'load_cifar10_raw',
    'load_dataset',
    'load_mnist_raw',
    'load_tfds',
    'num_batches',
    'raw_files',
]

DATASET_NAMES = ('mnist', 'cifar10')
SPLITS = ('train', 'test')

# Size of the full official train splits.
FULL_TRAIN_SIZES = {'mnist': 60000, 'cifar10': 50000}
_DISPLAY_NAMES = {'mnist': 'MNIST', 'cifar10': 'CIFAR-10'}
_NUM_CLASSES = 10

# MNIST IDX files (without the optional .gz suffix).
_MNIST_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dims
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dim

# CIFAR-10 binary version.
_CIFAR_TARBALL = 'cifar-10-binary.tar.gz'
_CIFAR_SUBDIR = 'cifar-10-batches-bin'
_CIFAR_TEST = 'test_batch.bin'
_CIFAR_TRAIN_RE = re.compile(r'^data_batch_(\d+)\.bin$')
_CIFAR_HW = 32
_CIFAR_RECORD = 1 + 3 * _CIFAR_HW * _CIFAR_HW  # 3073 bytes


class DataError(ValueError):
  """Data could not be found, read or validated."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """An in-memory dataset.

  Attributes:
    images: float32 [N, H, W, C] in [0, 1].
    labels: int32 [N].
    name: 'mnist' or 'cifar10'.
    split: split name, e.g. 'train' or 'test'.
    source: human-readable description of where the data came from.
  """

  images: np.ndarray
  labels: np.ndarray
  name: str
  split: str
  source: str

  def __post_init__(self):
    if self.images.dtype != np.float32 or self.images.ndim != 4:
      raise DataError(
          'Dataset.images must be float32 [N, H, W, C], got '
          f'{self.images.dtype} {self.images.shape}')
    if self.labels.dtype != np.int32 or self.labels.ndim != 1:
      raise DataError('Dataset.labels must be int32 [N], got '
                      f'{self.labels.dtype} {self.labels.shape}')
    if len(self.images) != len(self.labels):
      raise DataError(f'{len(self.images)} images but {len(self.labels)} '
                      'labels')

  @property
  def num_examples(self) -> int:
    return int(self.labels.shape[0])

  @property
  def image_shape(self) -> tuple:
    return tuple(self.images.shape[1:])

  def __repr__(self) -> str:
    return (f'Dataset(name={self.name!r}, split={self.split!r}, '
            f'num_examples={self.num_examples}, '
            f'image_shape={self.image_shape}, source={self.source!r})')


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _check_name(name: str) -> str:
  if name not in DATASET_NAMES:
    raise DataError(f'Unknown dataset {name!r}; expected one of '
                    f'{", ".join(DATASET_NAMES)}.')
  return name


def _check_raw_split(split: str) -> str:
  if split not in SPLITS:
    raise DataError(f'Unknown split {split!r} for raw files; expected one of '
                    f'{", ".join(SPLITS)}.')
  return split


def _check_dir(data_dir: PathLike, what: str) -> Path:
  path = Path(data_dir).expanduser()
  if not path.is_dir():
    raise DataError(f'data_dir {str(path)!r} does not exist or is not a '
                    f'folder (expected it to hold {what}).')
  return path


def _to_float(images_u8: np.ndarray) -> np.ndarray:
  out = images_u8.astype(np.float32)
  out *= np.float32(1.0 / 255.0)
  return out


def _check_labels(labels: np.ndarray, where: str) -> None:
  if labels.size and int(labels.max()) >= _NUM_CLASSES:
    raise DataError(f'{where}: label {int(labels.max())} out of range '
                    f'0..{_NUM_CLASSES - 1}; is this the right file?')


# --------------------------------------------------------------------------
# MNIST (IDX files)
# --------------------------------------------------------------------------


def _find_idx_file(folder: Path, stem: str) -> Path:
  for candidate in (folder / (stem + '.gz'), folder / stem):
    if candidate.is_file():
      return candidate
  raise DataError(f'MNIST file {stem}.gz (or {stem}) not found in '
                  f'{str(folder)!r}.')


def _read_bytes(path: Path) -> bytes:
  try:
    raw = path.read_bytes()
    if path.name.endswith('.gz'):
      raw = gzip.decompress(raw)
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    # BadGzipFile is an OSError; EOFError = truncated gzip stream.
    raise DataError(f'Could not read {str(path)!r}: {e} (truncated or '
                    'corrupt file?)') from e
  return raw


def _parse_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
  raw = _read_bytes(path)
  header_len = 4 + 4 * ndim
  if len(raw) < header_len:
    raise DataError(f'{str(path)!r}: expected at least a {header_len}-byte '
                    f'IDX header, got {len(raw)} bytes (truncated file?).')
  header = np.frombuffer(raw, dtype='>u4', count=1 + ndim)
  if int(header[0]) != magic:
    raise DataError(f'{str(path)!r}: bad IDX magic number {int(header[0])} '
                    f'(expected {magic}); is this the right file?')
  dims = tuple(int(d) for d in header[1:])
  expected = header_len + int(np.prod(dims, dtype=np.int64))
  if len(raw) != expected:
    dims_str = ' x '.join(str(d) for d in dims)
    raise DataError(
        f'{str(path)!r}: expected {expected} bytes ({header_len}-byte header '
        f'+ {dims_str}) but the file holds {len(raw)} bytes '
        f'({"truncated" if len(raw) < expected else "trailing data"}).')
  return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def load_mnist_raw(data_dir: PathLike, split: str) -> Dataset:
  """Loads MNIST ``split`` ('train'/'test') from the IDX files in data_dir.

  Accepts ``train-images-idx3-ubyte.gz`` etc. or the un-gzipped names.
  """
  _check_raw_split(split)
  image_stem, label_stem = _MNIST_FILES[split]
  folder = _check_dir(
      data_dir, f'the MNIST files {image_stem}.gz and {label_stem}.gz')
  image_path = _find_idx_file(folder, image_stem)
  label_path = _find_idx_file(folder, label_stem)
  images = _parse_idx(image_path, _IDX_IMAGES_MAGIC, 3)
  labels = _parse_idx(label_path, _IDX_LABELS_MAGIC, 1)
  if images.shape[0] != labels.shape[0]:
    raise DataError(f'{str(image_path)!r} holds {images.shape[0]} images but '
                    f'{str(label_path)!r} holds {labels.shape[0]} labels.')
  _check_labels(labels, str(label_path))
  n = images.shape[0]
  return Dataset(
      images=_to_float(images)[..., None],
      labels=labels.astype(np.int32),
      name='mnist',
      split=split,
      source=(f'raw files in {folder} ({image_path.name}, {label_path.name}: '
              f'{n} images)'),
  )


# --------------------------------------------------------------------------
# CIFAR-10 (binary batches)
# --------------------------------------------------------------------------


def _wanted_cifar_member(basename: str, split: str) -> Optional[int]:
  """Sort key of a wanted batch file for split, or None if not wanted."""
  if split == 'test':
    return 0 if basename == _CIFAR_TEST else None
  m = _CIFAR_TRAIN_RE.match(basename)
  return int(m.group(1)) if m else None


def _parse_cifar_batch(raw: bytes, where: str) -> tuple:
  if not raw or len(raw) % _CIFAR_RECORD:
    raise DataError(
        f'{where}: size {len(raw)} bytes is not a positive multiple of the '
        f'{_CIFAR_RECORD}-byte CIFAR-10 record (truncated or wrong file?).')
  records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
  labels = records[:, 0]
  _check_labels(labels, where)
  images = records[:, 1:].reshape(-1, 3, _CIFAR_HW, _CIFAR_HW)
  return images.transpose(0, 2, 3, 1), labels  # CHW -> HWC


def _cifar_from_files(folder: Path, split: str) -> Optional[tuple]:
  found = []
  for path in folder.iterdir():
    key = _wanted_cifar_member(path.name, split)
    if key is not None and path.is_file():
      found.append((key, path))
  if not found:
    return None
  parts = []
  for _, path in sorted(found):
    try:
      raw = path.read_bytes()
    except OSError as e:
      raise DataError(f'Could not read {str(path)!r}: {e}') from e
    parts.append((path.name, *_parse_cifar_batch(raw, repr(str(path)))))
  return str(folder), parts


def _cifar_from_tarball(tar_path: Path, split: str) -> Optional[tuple]:
  found = []
  try:
    # Stream mode: members are read in order, entirely in memory.
    with tarfile.open(tar_path, mode='r|gz') as tar:
      for member in tar:
        basename = member.name.rsplit('/', 1)[-1]
        key = _wanted_cifar_member(basename, split)
        if key is None or not member.isfile():
          continue
        f = tar.extractfile(member)
        found.append((key, basename, f.read()))
  except (tarfile.TarError, OSError, EOFError) as e:
    raise DataError(f'Could not read {str(tar_path)!r}: {e} (truncated or '
                    'corrupt tarball?)') from e
  if not found:
    return None
  parts = []
  for _, basename, raw in sorted(found, key=lambda t: t[0]):
    where = f'{basename} in {str(tar_path)!r}'
    parts.append((basename, *_parse_cifar_batch(raw, where)))
  return str(tar_path), parts


def load_cifar10_raw(data_dir: PathLike, split: str) -> Dataset:
  """Loads CIFAR-10 ``split`` ('train'/'test') from the binary version.

  data_dir may hold extracted ``data_batch_*.bin`` / ``test_batch.bin``
  (directly or under ``cifar-10-batches-bin/``) or ``cifar-10-binary.tar.gz``,
  which is read in memory. Whatever train batches are present are used, in
  numeric order.
  """
  _check_raw_split(split)
  wanted = ('data_batch_1.bin ... data_batch_5.bin' if split == 'train'
            else _CIFAR_TEST)
  what = (f'the CIFAR-10 binary files ({wanted}, directly or under '
          f'{_CIFAR_SUBDIR}/) or {_CIFAR_TARBALL}')
  folder = _check_dir(data_dir, what)
  result = None
  for sub in (folder, folder / _CIFAR_SUBDIR):
    if sub.is_dir():
      result = _cifar_from_files(sub, split)
      if result is not None:
        break
  if result is None and (folder / _CIFAR_TARBALL).is_file():
    result = _cifar_from_tarball(folder / _CIFAR_TARBALL, split)
    if result is None:
      raise DataError(f'{str(folder / _CIFAR_TARBALL)!r} holds no {wanted} '
                      f'(needed for the {split} split).')
  if result is None:
    raise DataError(f'No CIFAR-10 {split} data found in {str(folder)!r}: '
                    f'expected {what}.')
  origin, parts = result
  images = np.concatenate([p[1] for p in parts])
  labels = np.concatenate([p[2] for p in parts])
  counts = ', '.join(f'{p[0]}: {len(p[2])} images' for p in parts)
  return Dataset(
      images=_to_float(images),
      labels=labels.astype(np.int32),
      name='cifar10',
      split=split,
      source=f'raw files in {origin} ({counts})',
  )


# --------------------------------------------------------------------------
# TFDS
# --------------------------------------------------------------------------


def _raw_files_hint(name: str) -> str:
  if name == 'mnist':
    files = ', '.join(f'{s}.gz' for pair in _MNIST_FILES.values()
                      for s in pair)
    return f'the MNIST IDX files ({files})'
  return (f'the CIFAR-10 binary version ({_CIFAR_TARBALL}, or the extracted '
          f'data_batch_1..5.bin and {_CIFAR_TEST})')


# How the TFDS errors name the raw-files argument (a caller with its own name
# for it, such as a command-line flag, may replace this text).
DATA_DIR_ARGUMENT = 'load_dataset(data_dir=...)'


def load_tfds(name: str, split: str,
              data_dir: Optional[PathLike] = None) -> Dataset:
  """Loads a prepared TFDS dataset through ``tfds.data_source``.

  Never downloads: if the dataset is not prepared (in array_record format)
  under ``data_dir`` (TFDS's own data dir; default ~/tensorflow_datasets),
  raises DataError telling the user to pass :func:`load_dataset` a
  ``data_dir`` with the raw files (its text holds :data:`DATA_DIR_ARGUMENT`).
  """
  _check_name(name)
  hint = (f'To read the raw files instead, pass {DATA_DIR_ARGUMENT} a folder '
          f'holding {_raw_files_hint(name)}.')
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except Exception as e:  # ImportError, or a broken install.
    raise DataError(f'Cannot import tensorflow_datasets ({e}). {hint}') from e
  where = str(data_dir) if data_dir is not None else 'the default TFDS data_dir'
  try:
    source = tfds.data_source(
        name, split=split,
        data_dir=None if data_dir is None else os.fspath(data_dir),
        download=False)
    n = len(source)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(
        f'TFDS dataset {name!r} (split {split!r}) is not available in '
        f'{where} as a prepared array_record dataset, and this library never '
        f'downloads it. {hint} (TFDS said: {type(e).__name__}: {e})') from e
  if n == 0:
    raise DataError(f'TFDS dataset {name!r} split {split!r} is empty. {hint}')
  # Plain indexing: works for real ArrayRecordDataSource and for the TFDS
  # mock (whose __getitems__ is broken in tfds 4.9.10).
  examples = [source[i] for i in range(n)]
  images = np.stack([np.asarray(ex['image']) for ex in examples])
  labels = np.asarray([ex['label'] for ex in examples])
  del examples
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.dtype != np.uint8:
    raise DataError(f'TFDS {name!r} images have unexpected shape/dtype '
                    f'{images.shape} {images.dtype}.')
  _check_labels(labels, f'TFDS {name!r} {split!r}')
  return Dataset(
      images=_to_float(images),
      labels=labels.astype(np.int32),
      name=name,
      split=split,
      source=f'tfds {name} (split {split!r}, {where})',
  )


def raw_files(name: str, data_dir: PathLike) -> list:
  """The raw files :func:`load_dataset` reads for ``name`` from
  ``data_dir`` (both splits), found as the loaders find them: MNIST's four
  IDX files (``.gz`` or not); CIFAR-10's extracted batch files (in
  ``data_dir`` or its ``cifar-10-batches-bin/``), else its tarball. For
  recording their checksums beside a trained model.

  Raises:
    DataError: if a file is missing.
  """
  _check_name(name)
  folder = _check_dir(data_dir, f'the raw {_DISPLAY_NAMES[name]} files')
  if name == 'mnist':
    return [_find_idx_file(folder, stem)
            for split in SPLITS for stem in _MNIST_FILES[split]]
  for sub in (folder, folder / _CIFAR_SUBDIR):
    if sub.is_dir():
      found = sorted(p for p in sub.iterdir() if p.is_file() and any(
          _wanted_cifar_member(p.name, split) is not None
          for split in SPLITS))
      if found:
        return found
  if (folder / _CIFAR_TARBALL).is_file():
    return [folder / _CIFAR_TARBALL]
  raise DataError(f'No CIFAR-10 files found in {str(folder)!r}.')


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def load_dataset(name: str, split: str, data_dir: Optional[PathLike] = None,
                 num_examples: Optional[int] = None) -> Dataset:
  """Loads a dataset: raw files from data_dir if given, else TFDS.

  Args:
    name: 'mnist' or 'cifar10'.
    split: 'train' or 'test' (TFDS also accepts slicing syntax).
    data_dir: folder with the raw files; None -> TFDS (prepared data only).
    num_examples: if given, keep only the first num_examples examples.
  """
  _check_name(name)
  if data_dir is not None:
    reader = load_mnist_raw if name == 'mnist' else load_cifar10_raw
    ds = reader(data_dir, split)
  else:
    ds = load_tfds(name, split)
  if num_examples is None:
    return ds
  if (isinstance(num_examples, bool) or
      not isinstance(num_examples, (int, np.integer))):
    raise DataError(f'num_examples must be an int, got {num_examples!r}.')
  if num_examples < 1 or num_examples > ds.num_examples:
    raise DataError(
        f'num_examples={num_examples} is out of range: the {name} {split} '
        f'split has {ds.num_examples} examples ({ds.source}); use '
        f'1..{ds.num_examples}.')
  if num_examples == ds.num_examples:
    return ds
  n = int(num_examples)
  return dataclasses.replace(
      ds,
      images=ds.images[:n].copy(),
      labels=ds.labels[:n].copy(),
      source=f'{ds.source}, first {n} of {ds.num_examples}',
  )


def dataset_warning(ds: Dataset,
                    expected_train: Optional[int] = None) -> Optional[str]:
  """A loud warning if a train split is smaller than the full dataset.

  Args:
    ds: the dataset.
    expected_train: full train size; default FULL_TRAIN_SIZES[ds.name].

  Returns:
    The warning string, or None if ds is not a train split or is full size.
  """
  if expected_train is None:
    expected_train = FULL_TRAIN_SIZES.get(ds.name)
  if expected_train is None or ds.split.split('[', 1)[0] != 'train':
    return None
  if ds.num_examples >= expected_train:
    return None
  display = _DISPLAY_NAMES.get(ds.name, ds.name)
  return (f'WARNING: training on {ds.num_examples:,} {display} images, not '
          f'{expected_train:,} (source: {ds.source}). Accuracy numbers will '
          f'not be comparable with full-dataset results.')


# --------------------------------------------------------------------------
# Batching and augmentation
# --------------------------------------------------------------------------


def num_batches(n: int, batch_size: int, drop_remainder: bool) -> int:
  """Number of batches epoch_batches yields for n examples."""
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  if n < 0:
    raise ValueError(f'n must be >= 0, got {n}.')
  return n // batch_size if drop_remainder else -(-n // batch_size)


def epoch_batches(ds: Dataset, batch_size: int, *, seed: int, epoch: int,
                  shuffle: bool = True, drop_remainder: bool = True,
                  process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict]:
  """Yields this process's part of each global batch of one epoch.

  The order is a pure function of (seed, epoch) and is the same in every
  process. Each global batch of batch_size examples is cut into process_count
  contiguous slices; this process gets slice process_index. With
  drop_remainder=False the last, smaller global batch is also yielded (for
  evaluation); it is split with np.array_split, so with several processes the
  slices may differ in size by one (and may be empty), but every process
  yields the same number of batches.

  Yields:
    {'image': float32 [B_local, H, W, C], 'label': int32 [B_local]}.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  if process_count < 1:
    raise ValueError(f'process_count must be >= 1, got {process_count}.')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in '
                     f'[0, {process_count}).')
  if batch_size % process_count:
    raise ValueError(f'batch_size {batch_size} is not divisible by '
                     f'process_count {process_count}.')
  n = ds.num_examples
  steps = num_batches(n, batch_size, drop_remainder)
  if steps == 0:
    raise ValueError(f'batch_size {batch_size} is larger than the dataset '
                     f'({n} examples) and drop_remainder=True: no batches.')
  if shuffle:
    order = np.random.default_rng([seed, epoch]).permutation(n)
  else:
    order = np.arange(n)
  local = batch_size // process_count
  for step in range(steps):
    idx = order[step * batch_size:(step + 1) * batch_size]
    if len(idx) == batch_size:
      idx = idx[process_index * local:(process_index + 1) * local]
    else:
      idx = np.array_split(idx, process_count)[process_index]
    yield {'image': ds.images[idx], 'label': ds.labels[idx]}


def augment_cifar(images: np.ndarray, rng: np.random.Generator,
                  pad: int = 4) -> np.ndarray:
  """Random crop (zero padding of pad pixels) + random horizontal flip.

  Vectorised over the batch; deterministic given rng.

  Args:
    images: [B, H, W, C].
    rng: numpy Generator.
    pad: zero padding on each side before cropping back to H x W.

  Returns:
    Augmented images, same shape and dtype.
  """
  b, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = rng.integers(0, 2 * pad + 1, size=(b, 2))
  flip = rng.random(b) < 0.5
  rows = offsets[:, :1] + np.arange(h)  # [B, H]
  cols = offsets[:, 1:] + np.arange(w)  # [B, W]
  cols = np.where(flip[:, None], cols[:, ::-1], cols)
  return padded[np.arange(b)[:, None, None], rows[:, :, None],
                cols[:, None, :]]
