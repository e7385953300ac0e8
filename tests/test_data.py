"""Tests for dynamic_at.data."""

import gzip
import io
import sys
import tarfile

import numpy as np
import pytest

from dynamic_at import data as D
from tests import run_utils
from tests.run_utils import CIFAR_DIR
from tests.run_utils import MNIST_DIR

_require = run_utils.require


# ---------------------------------------------------------------------------
# Real shared files
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def mnist_train():
  _require(MNIST_DIR)
  return D.load_dataset('mnist', 'train', MNIST_DIR)


def test_real_mnist_train(mnist_train):
  ds = mnist_train
  assert ds.images.shape == (60000, 28, 28, 1)
  assert ds.images.dtype == np.float32
  assert ds.labels.shape == (60000,) and ds.labels.dtype == np.int32
  assert ds.images.min() == 0.0 and ds.images.max() == 1.0
  assert set(np.unique(ds.labels)) == set(range(10))
  assert ds.labels[0] == 5
  assert ds.num_examples == 60000
  assert ds.name == 'mnist' and ds.split == 'train'
  assert 'train-images-idx3-ubyte.gz' in ds.source
  assert D.dataset_warning(ds) is None


def test_real_mnist_test():
  _require(MNIST_DIR)
  ds = D.load_mnist_raw(MNIST_DIR, 'test')
  assert ds.images.shape == (10000, 28, 28, 1)
  assert ds.images.dtype == np.float32
  assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
  assert ds.labels.min() >= 0 and ds.labels.max() <= 9
  assert ds.labels[0] == 7
  assert D.dataset_warning(ds) is None  # not a train split


def test_real_mnist_num_examples_warns(mnist_train):
  _require(MNIST_DIR)
  ds = D.load_dataset('mnist', 'train', MNIST_DIR, num_examples=1000)
  assert ds.num_examples == 1000
  np.testing.assert_array_equal(ds.labels, mnist_train.labels[:1000])
  warning = D.dataset_warning(ds)
  assert warning.startswith('WARNING') and '1,000' in warning
  assert '60,000' in warning


def test_real_cifar_tarball():
  _require(CIFAR_DIR)
  train = D.load_dataset('cifar10', 'train', CIFAR_DIR)
  test = D.load_dataset('cifar10', 'test', CIFAR_DIR)
  assert train.images.shape == (5000, 32, 32, 3)
  assert test.images.shape == (1000, 32, 32, 3)
  for ds in (train, test):
    assert ds.images.dtype == np.float32 and ds.labels.dtype == np.int32
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    assert ds.labels.min() >= 0 and ds.labels.max() <= 9
  assert 'data_batch_1.bin: 5000 images' in train.source
  assert 'test_batch.bin: 1000 images' in test.source
  warning = D.dataset_warning(train)
  assert warning is not None
  assert '5,000 CIFAR-10' in warning and '50,000' in warning
  assert D.dataset_warning(test) is None


# ---------------------------------------------------------------------------
# Synthetic MNIST IDX files
# ---------------------------------------------------------------------------


def _idx_bytes(array, magic):
  header = np.array([magic, *array.shape], dtype='>u4').tobytes()
  return header + array.astype(np.uint8).tobytes()


def _write_mnist(folder, split, images, labels, gz):
  stems = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
           'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}
  paths = []
  for stem, arr, magic in zip(stems[split], (images, labels), (2051, 2049)):
    raw = _idx_bytes(arr, magic)
    path = folder / (stem + ('.gz' if gz else ''))
    path.write_bytes(gzip.compress(raw) if gz else raw)
    paths.append(path)
  return paths


def _random_mnist(n, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(n, 5, 4), dtype=np.uint8)
  labels = rng.integers(0, 10, size=n, dtype=np.uint8)
  return images, labels


@pytest.mark.parametrize('gz', [True, False])
def test_synthetic_idx_roundtrip(tmp_path, gz):
  images, labels = _random_mnist(7)
  _write_mnist(tmp_path, 'test', images, labels, gz)
  ds = D.load_dataset('mnist', 'test', tmp_path)
  assert ds.images.shape == (7, 5, 4, 1) and ds.images.dtype == np.float32
  np.testing.assert_array_equal(
      np.round(ds.images[..., 0] * 255).astype(np.uint8), images)
  np.testing.assert_array_equal(ds.labels, labels.astype(np.int32))


@pytest.mark.parametrize('gz', [True, False])
def test_truncated_idx_names_file(tmp_path, gz):
  images, labels = _random_mnist(7)
  image_path, _ = _write_mnist(tmp_path, 'train', images, labels, gz=False)
  raw = image_path.read_bytes()[:-10]
  if gz:
    image_path.unlink()
    image_path = image_path.with_name(image_path.name + '.gz')
    image_path.write_bytes(gzip.compress(raw))
  else:
    image_path.write_bytes(raw)
  with pytest.raises(D.DataError) as err:
    D.load_mnist_raw(tmp_path, 'train')
  msg = str(err.value)
  assert image_path.name in msg
  assert str(16 + 7 * 5 * 4) in msg and str(16 + 7 * 5 * 4 - 10) in msg


def test_truncated_gzip_stream_names_file(tmp_path):
  images, labels = _random_mnist(7)
  _, label_path = _write_mnist(tmp_path, 'train', images, labels, gz=True)
  label_path.write_bytes(label_path.read_bytes()[:-12])
  with pytest.raises(D.DataError, match=label_path.name):
    D.load_mnist_raw(tmp_path, 'train')


def test_bad_magic_and_count_mismatch(tmp_path):
  images, labels = _random_mnist(7)
  image_path, label_path = _write_mnist(tmp_path, 'train', images, labels,
                                        gz=False)
  label_path.write_bytes(_idx_bytes(labels, 2051))
  with pytest.raises(D.DataError, match='magic'):
    D.load_mnist_raw(tmp_path, 'train')
  label_path.write_bytes(_idx_bytes(labels[:6], 2049))
  with pytest.raises(D.DataError, match='7 images but'):
    D.load_mnist_raw(tmp_path, 'train')


def test_missing_folder_and_files(tmp_path):
  missing = tmp_path / 'nope'
  with pytest.raises(D.DataError) as err:
    D.load_dataset('mnist', 'train', missing)
  assert str(missing) in str(err.value)
  assert 'train-images-idx3-ubyte.gz' in str(err.value)
  with pytest.raises(D.DataError) as err:
    D.load_dataset('cifar10', 'train', missing)
  assert str(missing) in str(err.value)
  assert 'cifar-10-binary.tar.gz' in str(err.value)
  # Folder exists but is empty.
  with pytest.raises(D.DataError) as err:
    D.load_dataset('mnist', 'test', tmp_path)
  assert str(tmp_path) in str(err.value)
  assert 't10k-images-idx3-ubyte' in str(err.value)
  with pytest.raises(D.DataError) as err:
    D.load_dataset('cifar10', 'test', tmp_path)
  assert str(tmp_path) in str(err.value) and 'test_batch.bin' in str(err.value)


def test_unknown_name_and_split(tmp_path):
  with pytest.raises(D.DataError, match='svhn'):
    D.load_dataset('svhn', 'train', tmp_path)
  with pytest.raises(D.DataError, match='validation'):
    D.load_dataset('mnist', 'validation', tmp_path)


def test_num_examples_bounds(tmp_path):
  images, labels = _random_mnist(7)
  _write_mnist(tmp_path, 'train', images, labels, gz=True)
  ds = D.load_dataset('mnist', 'train', tmp_path, num_examples=3)
  assert ds.num_examples == 3
  np.testing.assert_array_equal(ds.labels, labels[:3])
  assert D.load_dataset('mnist', 'train', tmp_path,
                        num_examples=7).num_examples == 7
  for bad in (0, -1, 8):
    with pytest.raises(D.DataError, match='num_examples'):
      D.load_dataset('mnist', 'train', tmp_path, num_examples=bad)
  # Tiny train split -> loud warning.
  assert D.dataset_warning(ds).startswith('WARNING: training on 3 MNIST')


# ---------------------------------------------------------------------------
# Synthetic CIFAR-10 binary files
# ---------------------------------------------------------------------------


def _random_cifar(n, seed):
  rng = np.random.default_rng(seed)
  images_hwc = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, size=n, dtype=np.uint8)
  chw = images_hwc.transpose(0, 3, 1, 2).reshape(n, -1)
  raw = np.concatenate([labels[:, None], chw], axis=1).tobytes()
  return images_hwc, labels, raw


@pytest.mark.parametrize('subdir', ['', 'cifar-10-batches-bin'])
def test_synthetic_cifar_bins_roundtrip(tmp_path, subdir):
  folder = tmp_path / subdir
  folder.mkdir(exist_ok=True)
  im1, lb1, raw1 = _random_cifar(3, 1)
  im2, lb2, raw2 = _random_cifar(4, 2)
  imt, lbt, rawt = _random_cifar(2, 3)
  # Written out of order: batches must still come in numeric order.
  (folder / 'data_batch_2.bin').write_bytes(raw2)
  (folder / 'data_batch_1.bin').write_bytes(raw1)
  (folder / 'test_batch.bin').write_bytes(rawt)
  train = D.load_dataset('cifar10', 'train', tmp_path)
  assert train.images.shape == (7, 32, 32, 3)
  np.testing.assert_array_equal(
      np.round(train.images * 255).astype(np.uint8), np.concatenate([im1, im2]))
  np.testing.assert_array_equal(train.labels, np.concatenate([lb1, lb2]))
  assert 'data_batch_1.bin: 3 images, data_batch_2.bin: 4 images' in (
      train.source)
  test = D.load_cifar10_raw(tmp_path, 'test')
  np.testing.assert_array_equal(
      np.round(test.images * 255).astype(np.uint8), imt)
  np.testing.assert_array_equal(test.labels, lbt)


def test_synthetic_cifar_chw_to_hwc():
  # One record whose red plane is 1, green 2, blue 3.
  record = bytes([6]) + bytes([1] * 1024 + [2] * 1024 + [3] * 1024)
  images, labels = D._parse_cifar_batch(record, 'x')  # pylint: disable=protected-access
  assert images.shape == (1, 32, 32, 3) and labels.tolist() == [6]
  np.testing.assert_array_equal(images[0, 5, 7], [1, 2, 3])


def test_synthetic_cifar_tarball_and_truncation(tmp_path):
  im1, lb1, raw1 = _random_cifar(3, 1)
  _, _, rawt = _random_cifar(2, 3)
  tar_path = tmp_path / 'cifar-10-binary.tar.gz'
  with tarfile.open(tar_path, 'w:gz') as tar:
    for name, raw in [('data_batch_1.bin', raw1), ('test_batch.bin', rawt)]:
      info = tarfile.TarInfo(f'cifar-10-batches-bin/{name}')
      info.size = len(raw)
      tar.addfile(info, io.BytesIO(raw))
  ds = D.load_dataset('cifar10', 'train', tmp_path)
  np.testing.assert_array_equal(np.round(ds.images * 255).astype(np.uint8), im1)
  np.testing.assert_array_equal(ds.labels, lb1)
  assert 'cifar-10-binary.tar.gz (data_batch_1.bin: 3 images)' in ds.source
  assert D.load_dataset('cifar10', 'test', tmp_path).num_examples == 2
  # Truncated extracted file takes precedence over the tarball and errors.
  (tmp_path / 'test_batch.bin').write_bytes(rawt[:-5])
  with pytest.raises(D.DataError, match='test_batch.bin'):
    D.load_cifar10_raw(tmp_path, 'test')
  # A truncated tarball.
  (tmp_path / 'test_batch.bin').unlink()
  tar_path.write_bytes(tar_path.read_bytes()[:200])
  with pytest.raises(D.DataError, match='cifar-10-binary.tar.gz'):
    D.load_cifar10_raw(tmp_path, 'train')


# ---------------------------------------------------------------------------
# Batching and augmentation
# ---------------------------------------------------------------------------


def _tiny_dataset(n=23):
  images = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) / n
  return D.Dataset(images=images, labels=np.arange(n, dtype=np.int32),
                   name='mnist', split='train', source='synthetic')


def _labels(batches):
  return [b['label'] for b in batches]


def test_epoch_batches_determinism():
  ds = _tiny_dataset()
  a = _labels(D.epoch_batches(ds, 4, seed=3, epoch=1))
  b = _labels(D.epoch_batches(ds, 4, seed=3, epoch=1))
  c = _labels(D.epoch_batches(ds, 4, seed=3, epoch=2))
  assert len(a) == 5 == D.num_batches(23, 4, True)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(np.concatenate(a), np.concatenate(c))
  # Each example at most once per epoch (drop_remainder drops 3).
  flat = np.concatenate(a)
  assert len(np.unique(flat)) == len(flat) == 20


def test_epoch_batches_content_and_dtypes():
  ds = _tiny_dataset()
  for batch in D.epoch_batches(ds, 4, seed=0, epoch=0):
    assert batch['image'].shape == (4, 1, 1, 1)
    assert batch['image'].dtype == np.float32
    assert batch['label'].dtype == np.int32
    np.testing.assert_allclose(batch['image'][:, 0, 0, 0],
                               batch['label'] / 23)


def test_epoch_batches_processes_union():
  ds = _tiny_dataset()
  full = list(D.epoch_batches(ds, 6, seed=5, epoch=4))
  parts = [list(D.epoch_batches(ds, 6, seed=5, epoch=4, process_index=i,
                                process_count=2)) for i in range(2)]
  assert len(parts[0]) == len(parts[1]) == len(full) == 3
  for step, batch in enumerate(full):
    assert parts[0][step]['label'].shape == (3,)
    np.testing.assert_array_equal(
        np.concatenate([parts[0][step]['label'], parts[1][step]['label']]),
        batch['label'])
    np.testing.assert_array_equal(
        np.concatenate([parts[0][step]['image'], parts[1][step]['image']]),
        batch['image'])
  with pytest.raises(ValueError, match='batch_size'):
    next(D.epoch_batches(ds, 5, seed=0, epoch=0, process_count=2))


def test_epoch_batches_eval_covers_all():
  ds = _tiny_dataset()
  batches = list(D.epoch_batches(ds, 4, seed=0, epoch=0, shuffle=False,
                                 drop_remainder=False))
  assert len(batches) == 6 == D.num_batches(23, 4, False)
  assert batches[-1]['label'].shape == (3,)
  np.testing.assert_array_equal(np.concatenate(_labels(batches)),
                                np.arange(23))
  # Two processes: still every example exactly once, same number of batches.
  parts = [list(D.epoch_batches(ds, 4, seed=0, epoch=0, drop_remainder=False,
                                process_index=i, process_count=2))
           for i in range(2)]
  assert len(parts[0]) == len(parts[1]) == 6
  union = np.concatenate(_labels(parts[0]) + _labels(parts[1]))
  np.testing.assert_array_equal(np.sort(union), np.arange(23))


def test_epoch_batches_too_small():
  with pytest.raises(ValueError, match='batch_size'):
    next(D.epoch_batches(_tiny_dataset(3), 4, seed=0, epoch=0))


def test_augment_cifar():
  rng = np.random.default_rng(0)
  images = rng.random((16, 8, 8, 3), dtype=np.float32)
  out = D.augment_cifar(images, np.random.default_rng(1))
  again = D.augment_cifar(images, np.random.default_rng(1))
  assert out.shape == images.shape and out.dtype == np.float32
  np.testing.assert_array_equal(out, again)
  assert not np.array_equal(out, images)
  # Each output is some crop (optionally flipped) of the zero-padded input.
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  for i in range(len(images)):
    candidates = [padded[i, y:y + 8, x:x + 8] for y in range(9)
                  for x in range(9)]
    candidates += [c[:, ::-1] for c in candidates]
    assert any(np.array_equal(out[i], c) for c in candidates)
  # pad=0 leaves only the flips.
  out0 = D.augment_cifar(images, np.random.default_rng(2), pad=0)
  for i in range(len(images)):
    assert (np.array_equal(out0[i], images[i]) or
            np.array_equal(out0[i], images[i, :, ::-1]))


# ---------------------------------------------------------------------------
# TFDS
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('name,shape', [('mnist', (28, 28, 1)),
                                        ('cifar10', (32, 32, 3))])
def test_load_tfds_mock(name, shape):
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=6,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    ds = D.load_dataset(name, 'train', num_examples=5)
    full = D.load_tfds(name, 'test')
  assert ds.images.shape == (5, *shape) and ds.images.dtype == np.float32
  assert ds.labels.dtype == np.int32
  assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
  assert ds.labels.min() >= 0 and ds.labels.max() <= 9
  assert ds.source.startswith(f'tfds {name}')
  assert full.num_examples == 6 and full.split == 'test'
  assert D.dataset_warning(ds) is not None


def test_load_tfds_not_prepared(tmp_path, monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')

  download_calls = []

  def no_download(*args, **kwargs):
    # load_tfds catches every TFDS exception, so record the call as well.
    download_calls.append((args, kwargs))
    raise AssertionError('load_tfds must never download')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare',
                      no_download)
  with pytest.raises(D.DataError) as err:
    D.load_tfds('mnist', 'train', data_dir=tmp_path)
  msg = str(err.value)
  assert 'pass load_dataset(data_dir=...) a folder' in msg
  assert '--' not in msg and 'train-images-idx3-ubyte.gz' in msg
  with pytest.raises(D.DataError, match='cifar-10-binary.tar.gz'):
    D.load_tfds('cifar10', 'test', data_dir=tmp_path)
  assert not download_calls


def test_load_tfds_import_error(monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
  with pytest.raises(D.DataError) as err:
    D.load_dataset('mnist', 'train')
  assert D.DATA_DIR_ARGUMENT in str(err.value)
  assert '--data_dir' not in str(err.value)
