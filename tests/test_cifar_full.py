"""A full-size CIFAR-10 binary tarball loads, batches and reports 50,000.

The shared data holds only a 5,000-image subset of CIFAR-10, so these tests
write a synthetic tarball with the official layout and sizes (random pixels
and labels from a seeded generator) and read it through the library
(``dynamic_at.data``) and through the experiments' input path
(``experiments.inputs.load_data``). About 184 MB of records are written with
gzip level 1 once per module.
"""

import io
import tarfile

import numpy as np
import pytest

from dynamic_at import data as D
from experiments import config as config_lib
from experiments import inputs

TARBALL = 'cifar-10-binary.tar.gz'
SUBDIR = 'cifar-10-batches-bin'
TRAIN_FILES = [f'data_batch_{i}.bin' for i in range(1, 6)]
TEST_FILE = 'test_batch.bin'
PER_FILE = 10000
RECORD = 1 + 3 * 32 * 32  # label byte + R, G, B planes of 32 x 32, row-major
CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
           'horse', 'ship', 'truck']
SOURCE_COUNTS = ', '.join(f'{name}: {PER_FILE} images' for name in TRAIN_FILES)

# (file, record index) pairs whose decoded image and label are checked
# against the bytes written: the first and last record of every file, and
# one in the middle of two train files.
CHECKED = [(name, i) for name in TRAIN_FILES + [TEST_FILE]
           for i in (0, PER_FILE - 1)] + [('data_batch_2.bin', 4321),
                                          ('data_batch_4.bin', 777)]


@pytest.fixture(scope='module')
def cifar_full(tmp_path_factory):
  """``(data_dir, records)``: a folder holding only the tarball, and each
  file's ``uint8 [10000, 3073]`` records as written."""
  rng = np.random.default_rng(20190613)
  records = {}
  for name in TRAIN_FILES + [TEST_FILE]:
    rec = rng.integers(0, 256, size=(PER_FILE, RECORD), dtype=np.uint8)
    rec[:, 0] = rng.integers(0, 10, size=PER_FILE, dtype=np.uint8)
    records[name] = rec
  files = {name: rec.tobytes() for name, rec in records.items()}
  files['batches.meta.txt'] = ''.join(c + '\n' for c in CLASSES).encode()
  files['readme.html'] = (b'<meta HTTP-EQUIV="REFRESH" content="0; '
                          b'url=http://www.cs.toronto.edu/~kriz/cifar.html">\n')
  folder = tmp_path_factory.mktemp('cifar_full')
  # Members out of numeric order (the loader sorts the train batches), with
  # the folder entry first.
  order = ['data_batch_1.bin', 'batches.meta.txt', 'data_batch_3.bin',
           'data_batch_4.bin', TEST_FILE, 'readme.html', 'data_batch_5.bin',
           'data_batch_2.bin']
  assert sorted(order) == sorted(files)
  with tarfile.open(folder / TARBALL, 'w:gz', compresslevel=1) as tar:
    info = tarfile.TarInfo(SUBDIR)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)
    for name in order:
      info = tarfile.TarInfo(f'{SUBDIR}/{name}')
      info.size = len(files[name])
      info.mode = 0o644
      tar.addfile(info, io.BytesIO(files[name]))
  del files
  assert [p.name for p in folder.iterdir()] == [TARBALL]
  return folder, records


@pytest.fixture(scope='module')
def full_train(cifar_full):
  return D.load_dataset('cifar10', 'train', cifar_full[0])


def _u8(images):
  """Pixels in [0, 1] back to their bytes (exact for k / 255)."""
  return np.round(images * 255).astype(np.uint8)


def _expected_image(record):
  """HWC image of one record, spelled out from the plane layout."""
  image = np.empty((32, 32, 3), np.uint8)
  for channel in range(3):  # R, G, B planes, each row-major
    for row in range(32):
      start = 1 + channel * 1024 + row * 32
      image[row, :, channel] = record[start:start + 32]
  return image


def _check_records(ds, records, names):
  """The CHECKED records of ``names`` decode to the bytes written."""
  checked = 0
  for name, i in CHECKED:
    if name not in names:
      continue
    record = records[name][i]
    index = names.index(name) * PER_FILE + i
    assert ds.labels[index] == record[0]
    np.testing.assert_array_equal(_u8(ds.images[index]),
                                  _expected_image(record))
    # Three single pixels by hand: (row 0, col 0) red, (row 5, col 7) green,
    # (row 31, col 31) blue.
    assert _u8(ds.images[index, 0, 0, 0]) == record[1]
    assert _u8(ds.images[index, 5, 7, 1]) == record[1 + 1024 + 5 * 32 + 7]
    assert _u8(ds.images[index, 31, 31, 2]) == record[RECORD - 1]
    checked += 1
  return checked


def _check_all(ds, records, names):
  """Every label and pixel equals the bytes written (file by file)."""
  expected_labels = np.concatenate([records[n][:, 0] for n in names])
  np.testing.assert_array_equal(ds.labels, expected_labels)
  for k, name in enumerate(names):
    chw = records[name][:, 1:].reshape(PER_FILE, 3, 32, 32)
    np.testing.assert_array_equal(
        _u8(ds.images[k * PER_FILE:(k + 1) * PER_FILE]),
        chw.transpose(0, 2, 3, 1))


def test_full_cifar_tarball_loads_50000(cifar_full, full_train):
  folder, records = cifar_full
  train = full_train
  test = D.load_dataset('cifar10', 'test', folder)
  assert train.num_examples == 50000 and test.num_examples == 10000
  assert train.images.shape == (50000, 32, 32, 3)
  assert test.images.shape == (10000, 32, 32, 3)
  assert train.image_shape == test.image_shape == (32, 32, 3)
  for ds in (train, test):
    assert ds.images.dtype == np.float32 and ds.labels.dtype == np.int32
  assert _check_records(train, records, TRAIN_FILES) == 12
  assert _check_records(test, records, [TEST_FILE]) == 2
  _check_all(train, records, TRAIN_FILES)
  _check_all(test, records, [TEST_FILE])
  # The source names the tarball and all five batches, and no subset.
  assert train.source == (f'raw files in {folder / TARBALL} '
                          f'({SOURCE_COUNTS})')
  assert test.source == (f'raw files in {folder / TARBALL} '
                         f'({TEST_FILE}: {PER_FILE} images)')
  assert D.dataset_warning(train) is None
  assert D.dataset_warning(test) is None
  # num_examples=50000 is the whole split: the same dataset, unchanged.
  assert D.load_dataset('cifar10', 'train', folder,
                        num_examples=50000).source == train.source


def test_full_cifar_subset_warns(cifar_full, full_train):
  folder, _ = cifar_full
  subset = D.load_dataset('cifar10', 'train', folder, num_examples=5000)
  assert subset.num_examples == 5000
  np.testing.assert_array_equal(subset.labels, full_train.labels[:5000])
  assert subset.source.endswith(', first 5000 of 50000')
  assert D.dataset_warning(subset) == (
      'WARNING: training on 5,000 CIFAR-10 images, not 50,000 (source: '
      f'{subset.source}). Accuracy numbers will not be comparable with '
      'full-dataset results.')


def test_full_cifar_epoch_of_390_batches(full_train):
  train = full_train
  assert D.num_batches(50000, 128, drop_remainder=True) == 390
  assert D.num_batches(50000, 128, drop_remainder=False) == 391
  # Each image's first 8 pixels identify it (random bytes; checked unique).
  keys = {train.images[i, 0, :8].tobytes(): i for i in range(50000)}
  assert len(keys) == 50000
  seen = []
  batches = 0
  for batch in D.epoch_batches(train, 128, seed=0, epoch=0):
    assert batch['image'].shape == (128, 32, 32, 3)
    assert batch['label'].shape == (128,)
    idx = np.array([keys[img[0, :8].tobytes()] for img in batch['image']])
    np.testing.assert_array_equal(batch['image'], train.images[idx])
    np.testing.assert_array_equal(batch['label'], train.labels[idx])
    seen.append(idx)
    batches += 1
  assert batches == 390
  seen = np.concatenate(seen)
  assert len(seen) == 390 * 128 == 49920
  assert len(np.unique(seen)) == 49920  # distinct examples
  # Shuffled: the epoch does not start with the file order.
  assert not np.array_equal(seen[:128], np.arange(128))


def test_full_cifar_through_experiments_inputs(cifar_full, capsys):
  folder, records = cifar_full
  config = config_lib.Config(dataset='cifar10', workdir=str(folder / 'run'),
                             data_dir=str(folder), model='cifar10_cnn')
  assert config.batch_size == 128 and config.num_train_examples == 0
  train, test = inputs.load_data(config)
  out = capsys.readouterr()
  assert train.num_examples == 50000 and test.num_examples == 10000
  assert train.image_shape == test.image_shape == (32, 32, 3)
  assert _check_records(train, records, TRAIN_FILES) == 12
  assert _check_records(test, records, [TEST_FILE]) == 2
  np.testing.assert_array_equal(
      train.labels, np.concatenate([records[n][:, 0] for n in TRAIN_FILES]))
  assert (f'Training data: 50,000 examples from raw files in '
          f'{folder / TARBALL} ({SOURCE_COUNTS})\n') in out.out
  assert 'Test data: 10,000 examples from ' in out.out
  assert 'WARNING' not in out.err and 'first' not in out.out
  assert D.dataset_warning(train) is None
  del train, test
  # The 5,000-image subset does warn, loudly.
  train, _ = inputs.load_data(config.replace(num_train_examples=5000))
  out = capsys.readouterr()
  assert train.num_examples == 5000
  assert train.source.endswith(', first 5000 of 50000')
  assert 'Training data: 5,000 examples from ' in out.out
  assert 'WARNING: training on 5,000 CIFAR-10 images, not 50,000' in out.err
