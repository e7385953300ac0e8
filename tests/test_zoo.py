"""Tests of the model zoo (dynamic_at.zoo, experiments.zoo).

Every committed model under models/ loads by name, its weights file has the
manifest's sha256, and its clean and PGD-20 correct counts on the first 500
test images, with the manifest's key, equal the manifest's. The same check
runs on a temporary zoo built here from a tiny MNIST model trained for 32
steps, so the mechanism is exercised while no model is committed; and damaged,
truncated and missing files and unknown names give clear errors.
"""

import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dynamic_at
from dynamic_at import data
from dynamic_at import models
from dynamic_at import weights
from dynamic_at import zoo
from tests import run_utils

REPO = run_utils.REPO
CONFIGS = REPO / 'experiments' / 'configs'
DATA_DIRS = {'mnist': run_utils.MNIST_DIR, 'cifar10': run_utils.CIFAR_DIR}
TINY = 'mnist/tiny_unsecured'
TINY_KEY_SEED = 7

COMMITTED = zoo.list_models()


def _test_data(dataset):
  run_utils.require(DATA_DIRS[dataset])
  return data.load_dataset(dataset, 'test', DATA_DIRS[dataset])


def _assert_reproduces(name, root=None):
  """The zoo's promise for one model: loads by name, sha256 as recorded,
  the check's counts exactly the manifest's."""
  manifest = zoo.load_manifest(name, root)
  folder = Path(zoo.model_dir(name, root))
  w = manifest['weights']
  assert zoo.sha256_file(folder / w['file']) == w['sha256']
  assert (folder / w['file']).stat().st_size == w['bytes']
  model, variables = dynamic_at.load_pretrained(name, root=root)
  assert set(variables) == {'params', 'batch_stats'}
  assert {str(x.dtype) for x in jax.tree.leaves(variables)} == {'float32'}
  arch = manifest['architecture']
  assert model == models.get_model(arch['name'], **arch['kwargs'])
  check = manifest['check']
  test = _test_data(manifest['dataset'])
  got = zoo.quick_eval(model, variables, test.images, test.labels,
                       eps=check['eps'], key_seed=check['key_seed'],
                       num_examples=check['num_examples'],
                       batch_size=check['batch_size'])
  # The same images as when the model was added.
  assert got['data_sha256'] == check['data_sha256']
  assert (got['num_examples'], got['attacks']) == (500, ['clean', 'pgd20'])
  assert got['correct'] == check['correct']
  assert got['accuracy'] == check['accuracy']
  return manifest, model, variables, test


@pytest.mark.parametrize('name', COMMITTED)
def test_committed_model_reproduces_its_manifest(name):
  _assert_reproduces(name)


def test_committed_models_listed():
  """What models/ holds (none yet: the full-protocol runs are training)."""
  root = Path(zoo.default_root())
  folders = sorted(f'{p.parent.parent.name}/{p.parent.name}'
                   for p in root.glob('*/*/manifest.json'))
  assert COMMITTED == folders


# ---------------------------------------------------------------------------
# A temporary zoo of one tiny model, built with the command line
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def tiny_zoo(tmp_path_factory, subprocess_env):
  """``experiments.zoo add`` of a 32-step unsecured MNIST run (eps 0.1)."""
  run_utils.require(run_utils.MNIST_DIR)
  base = tmp_path_factory.mktemp('zoo')
  workdir, root = base / 'tiny_unsecured', base / 'models'
  run_utils.run('experiments.mnist', [
      f'--flagfile={CONFIGS / "mnist_unsecured.flags"}',
      f'--workdir={workdir}', f'--data_dir={run_utils.MNIST_DIR}',
      '--num_epochs=1', '--num_train_examples=4096', '--batch_size=128',
      '--eps=0.1', '--num_eval_examples=64', '--eval_batch_size=64',
      '--eval_every=0'], subprocess_env)
  proc = run_utils.run('experiments.zoo', [
      'add', f'--workdir={workdir}', f'--name={TINY}', f'--zoo_dir={root}',
      f'--data_dir={run_utils.MNIST_DIR}', '--train_commit=0123abc',
      '--train_hardware=a test machine',
      f'--check_key_seed={TINY_KEY_SEED}'], subprocess_env)
  assert f'Added {TINY}: check on the first 500 test images' in proc.stdout
  return root, workdir


def test_tiny_zoo_model_reproduces_its_manifest(tiny_zoo):
  root, _ = tiny_zoo
  assert zoo.list_models(root) == [TINY]
  assert dynamic_at.list_models(root) == [TINY]
  manifest, model, variables, test = _assert_reproduces(TINY, root)
  check = manifest['check']
  assert check['key_seed'] == TINY_KEY_SEED
  assert check['key'] == 'jax.random.key(7)' and check['eps'] == 0.1
  # A model that learned something, and an attack that does something: the
  # equality above compares numbers that a wrong model would change.
  assert 300 < check['correct']['clean'] <= 500
  assert 0 < check['correct']['pgd20'] < check['correct']['clean']
  # Another key, other random starts: the key is part of the check.
  other = zoo.quick_eval(model, variables, test.images, test.labels,
                         eps=0.1, key_seed=TINY_KEY_SEED + 1)
  assert other['correct']['clean'] == check['correct']['clean']
  # A slightly different model gives other counts.
  bent = jax.tree.map(lambda x: x, variables)
  bent['params']['Dense_1']['bias'] = (
      variables['params']['Dense_1']['bias'].at[0].add(3.0))
  moved = zoo.quick_eval(model, bent, test.images, test.labels, eps=0.1,
                         key_seed=TINY_KEY_SEED)
  assert moved['correct'] != check['correct']


def test_tiny_zoo_manifest_records_the_run(tiny_zoo):
  root, workdir = tiny_zoo
  m = zoo.load_manifest(TINY, root)
  folder = Path(zoo.model_dir(TINY, root))
  assert sorted(p.name for p in folder.iterdir()) == [
      'manifest.json', 'model_info.json', 'weights.msgpack']
  assert (m['format'], m['name'], m['dataset']) == (
      zoo.FORMAT, TINY, 'mnist')
  assert m['architecture'] == {
      'name': 'mnist_cnn', 'kwargs': {'num_classes': 10},
      'display': 'mnist_cnn', 'input_shape': [28, 28, 1],
      'num_params': 421_834}
  assert m['method']['name'] == 'unsecured'
  settings = m['method']['settings']
  assert (settings['eps'], settings['num_train_examples'],
          settings['batch_size'], settings['seed']) == (0.1, 4096, 128, 0)
  assert 'workdir' not in settings and 'model' not in settings
  t = m['training']
  assert t['command'] == (
      'python -m experiments.mnist --workdir=tiny_unsecured --data_dir=mnist '
      '--method=unsecured --num_epochs=1 --eps=0.1 --num_train_examples=4096')
  assert t['command_source'] == "rebuilt from the run's flags.json"
  assert (t['commit'], t['hardware']) == ('0123abc', 'a test machine')
  assert (t['steps'], t['finished'], t['num_train_examples']) == (
      32, True, 4096)
  assert t['time_s'] > 0 and t['flags']['workdir'] == 'tiny_unsecured'
  # The data files, by checksum.
  files = m['data']['files_sha256']
  assert sorted(files) == sorted(
      p.name for p in data.raw_files('mnist', run_utils.MNIST_DIR))
  for name, sha in files.items():
    assert zoo.sha256_file(run_utils.MNIST_DIR / name) == sha
  # Weights: parameters and BatchNorm statistics, float32, the sha256.
  w = m['weights']
  assert (w['file'], w['dtypes'], w['contents']) == (
      'weights.msgpack', ['float32'], 'params and batch_stats')
  assert w['bytes'] < 2 * 1024 * 1024
  assert oct(os.stat(folder / 'weights.msgpack').st_mode & 0o777) == '0o644'
  # The run's own evaluation (64 images, the paper's attacks) is collected.
  (e,) = m['evaluations']
  with open(workdir / 'results.json') as f:
    results = json.load(f)
  assert e['white_box'] == results['white_box']
  assert e['attacks'] == ['clean', 'fgsm', 'pgd10', 'pgd20', 'cw_inf']
  assert (e['file'], e['attack_set'], e['num_eval_examples']) == (
      'results.json', 'paper', 64)
  assert e['key'].startswith('fold_in(jax.random.key(0), 1000003)')
  info = json.loads((folder / 'model_info.json').read_text())
  assert {k: info[k] for k in ('name', 'dataset', 'threat_model', 'eps',
                               'architecture', 'clean_acc',
                               'autoattack_acc', 'num_test_points')} == {
      'name': TINY, 'dataset': 'mnist', 'threat_model': 'Linf', 'eps': '0.1',
      'architecture': 'mnist_cnn',
      'clean_acc': f'{results["white_box"]["clean"]:.2f}',
      'autoattack_acc': None, 'num_test_points': 64}
  assert info['weights_sha256'] == w['sha256']


def test_zoo_list_and_evaluate_by_name(tiny_zoo, tmp_path, subprocess_env):
  root, _ = tiny_zoo
  m = zoo.load_manifest(TINY, root)
  proc = run_utils.run('experiments.zoo', ['list', f'--zoo_dir={root}'],
                       subprocess_env)
  (row,) = [l for l in proc.stdout.splitlines() if l.startswith(f'| {TINY} ')]
  acc = m['check']['accuracy']
  assert (f'| {acc["clean"]:.2f} | {acc["pgd20"]:.2f} | '
          f'{m["evaluations"][0]["white_box"]["clean"]:.2f} |') in row
  assert '1 models' in proc.stdout
  out = tmp_path / 'eval'
  run_utils.run('experiments.evaluate', [
      f'--model={TINY}', f'--zoo_dir={root}', f'--workdir={out}',
      f'--data_dir={run_utils.MNIST_DIR}', '--num_eval_examples=500',
      '--eval_batch_size=500', '--attacks=paper'], subprocess_env)
  results = json.loads((out / 'results.json').read_text())
  assert results['num_eval_examples'] == 500
  # The same model on the same 500 images: the check's clean accuracy.
  assert results['white_box']['clean'] == acc['clean']
  assert json.loads((out / 'model_info.json').read_text())['clean_acc'] == (
      f'{acc["clean"]:.2f}')


def test_zoo_check_command(tiny_zoo, subprocess_env):
  root, _ = tiny_zoo
  proc = run_utils.run('experiments.zoo', [
      'check', f'--zoo_dir={root}', f'--data_dir={run_utils.MNIST_DIR}'],
      subprocess_env)
  assert proc.stdout.startswith(f'ok   {TINY}: manifest ')


def test_add_refuses_to_replace_and_names_the_flag(tiny_zoo, subprocess_env):
  root, workdir = tiny_zoo
  proc = run_utils.run('experiments.zoo', [
      'add', f'--workdir={workdir}', f'--name={TINY}', f'--zoo_dir={root}',
      f'--data_dir={run_utils.MNIST_DIR}'], subprocess_env, expect_ok=False)
  assert proc.returncode == 1
  assert f'--name={TINY}: ' in proc.stderr and '--force' in proc.stderr
  proc = run_utils.run('experiments.zoo', [
      'add', f'--workdir={workdir}', '--name=cifar10/x', f'--zoo_dir={root}',
      f'--data_dir={run_utils.MNIST_DIR}'], subprocess_env, expect_ok=False)
  assert 'ERROR: --name=cifar10/x: expected mnist/<name>' in proc.stderr


# ---------------------------------------------------------------------------
# Damaged, truncated and missing files; unknown names
# ---------------------------------------------------------------------------


@pytest.fixture
def zoo_copy(tiny_zoo, tmp_path):
  root, _ = tiny_zoo
  copy = tmp_path / 'models'
  shutil.copytree(root, copy)
  m = zoo.load_manifest(TINY, copy)
  return copy, Path(zoo.model_dir(TINY, copy)) / 'weights.msgpack', m


def _no_decoder_traceback(error):
  # No chained exception from msgpack or the decoder (none, or from None).
  assert error.__cause__ is None
  assert error.__context__ is None or error.__suppress_context__


def test_flipped_bytes_name_the_file_and_the_checksum(zoo_copy):
  root, path, m = zoo_copy
  raw = bytearray(path.read_bytes())
  for i in (100, len(raw) // 2, len(raw) - 5):
    raw[i] ^= 0xFF
  path.write_bytes(bytes(raw))
  with pytest.raises(zoo.ZooError) as e:
    dynamic_at.load_pretrained(TINY, root=root)
  message = str(e.value)
  assert str(path) in message and m['weights']['sha256'] in message
  assert 'is damaged' in message and zoo.sha256_file(path) in message
  _no_decoder_traceback(e.value)
  assert isinstance(e.value, dynamic_at.ZooError)


@pytest.mark.parametrize('keep', [0, 17, 100_000, -1])
def test_truncated_file_names_the_file_and_the_checksum(zoo_copy, keep):
  root, path, m = zoo_copy
  raw = path.read_bytes()
  path.write_bytes(raw[:keep] if keep >= 0 else raw[:-1])
  with pytest.raises(zoo.ZooError) as e:
    dynamic_at.load_pretrained(TINY, root=root)
  message = str(e.value)
  assert str(path) in message and m['weights']['sha256'] in message
  assert 'is truncated' in message
  assert f'({m["weights"]["bytes"]:,} bytes)' in message
  _no_decoder_traceback(e.value)


def test_missing_weights_file(zoo_copy):
  root, path, m = zoo_copy
  path.unlink()
  with pytest.raises(zoo.ZooError) as e:
    dynamic_at.load_pretrained(TINY, root=root)
  assert str(path) in str(e.value) and m['weights']['sha256'] in str(e.value)
  _no_decoder_traceback(e.value)


def test_a_file_with_the_recorded_checksum_but_another_model(zoo_copy):
  """A manifest edited to another architecture (sha256 updated too) is
  caught when the file's model does not match it."""
  root, path, m = zoo_copy
  m['architecture'] = dict(m['architecture'], name='cifar10_cnn', kwargs={})
  (path.parent / 'manifest.json').write_text(json.dumps(m))
  with pytest.raises(zoo.ZooError, match='but the manifest says'):
    dynamic_at.load_pretrained(TINY, root=root)


def test_damaged_manifest_names_it(zoo_copy):
  root, path, _ = zoo_copy
  manifest = path.parent / 'manifest.json'
  manifest.write_text(manifest.read_text()[:50])
  with pytest.raises(zoo.ZooError, match=f'cannot read the manifest '
                     f'{manifest}'):
    dynamic_at.load_pretrained(TINY, root=root)


def test_weights_loader_alone_also_names_a_damaged_file(zoo_copy):
  """Below the sha256 check, the weights loader itself never lets a decoder
  error through (the zoo's check comes first, so this is the second line)."""
  _, path, _ = zoo_copy
  path.write_bytes(path.read_bytes()[:1000])
  with pytest.raises(weights.WeightsError, match=str(path)):
    weights.load_weights(path)


def test_unknown_name_lists_the_known_names(tiny_zoo):
  root, _ = tiny_zoo
  with pytest.raises(zoo.ZooError) as e:
    dynamic_at.load_pretrained('mnist/nope', root=root)
  assert str(e.value) == (f"no model 'mnist/nope' in the zoo ({root}); known "
                          f'models: {TINY}.')
  for bad in ('nope', 'mnist/', '../mnist', 'a/b/c', 'mnist/..'):
    with pytest.raises(zoo.ZooError, match=f'known models: {TINY}'):
      dynamic_at.load_pretrained(bad, root=root)


def test_unknown_name_in_an_empty_zoo(tmp_path, subprocess_env):
  with pytest.raises(zoo.ZooError, match='holds no models yet'):
    dynamic_at.load_pretrained('mnist/standard_seed0', root=tmp_path)
  assert zoo.list_models(tmp_path / 'missing') == []
  proc = run_utils.run('experiments.evaluate', [
      '--model=mnist/standard_seed0', f'--zoo_dir={tmp_path}',
      f'--workdir={tmp_path / "out"}'], subprocess_env, expect_ok=False)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      f"ERROR: --model=mnist/standard_seed0: no model 'mnist/standard_seed0' "
      f'in the zoo ({tmp_path}); the zoo in {tmp_path} holds no models yet.')
