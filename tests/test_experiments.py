"""Tests for the experiment entry points (experiments/).

End-to-end runs go through ``python -m experiments.<main>`` in subprocesses on
a few batches of the real shared data; flag and input checks run in-process
through :func:`experiments.common.main_with_args`.
"""

import copy
import gzip
import json
import os
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from dynamic_at import data
from dynamic_at import evaluation
from dynamic_at import parallel
from experiments import common
from experiments import config as config_lib
from experiments import inputs
from experiments import outputs
from experiments import reporting
from experiments import training
from tests import run_utils

REPO = run_utils.REPO
CONFIGS = REPO / 'experiments' / 'configs'
SHARED_DATA = run_utils.SHARED_DATA
MNIST_DIR = SHARED_DATA / 'mnist'
CIFAR_DIR = SHARED_DATA / 'cifar10-jpeg-subset'


# A tiny MNIST run: 4 steps per epoch, K = 2, 64 evaluation examples.
TINY_MNIST = ['--num_train_examples=256', '--batch_size=64', '--num_steps=2',
              '--num_eval_examples=64', '--eval_batch_size=8']

RESULT_KEYS = {'dataset', 'method', 'white_box', 'black_box',
               'num_eval_examples', 'flags', 'wall_time_s', 'devices',
               'data_source', 'num_train_examples'}
ROW_KEYS = {'epoch', 'train_loss', 'train_accuracy', 'steps_mean',
            'steps_max', 'iters_max', 'c_t', 'num_steps', 'eps', 'lr',
            'epoch_time_s', 'train_time_s'}


_require = run_utils.require
_run = run_utils.run


def _main(args, dataset='mnist'):
  return common.main_with_args([dataset, *map(str, args)], dataset)


def _snapshot(folder):
  """Every file under ``folder`` with its bytes and modification time."""
  out = {}
  for path in sorted(Path(folder).rglob('*')):
    if path.is_file():
      out[str(path)] = (path.read_bytes(), path.stat().st_mtime_ns)
  return out


def _is_png(path):
  return Path(path).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


@pytest.fixture(autouse=True)
def _from_repository_root(monkeypatch):
  """The flagfiles include their base file by a path relative to the
  repository root (absl resolves a nested --flagfile relative to the current
  directory), as the subprocesses of run_utils, which run there."""
  monkeypatch.chdir(REPO)


# ---------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def mnist_run(tmp_path_factory, subprocess_env):
  """A finished 2-epoch Dynamic run from the paper's MNIST flagfile."""
  _require(MNIST_DIR)
  workdir = tmp_path_factory.mktemp('mnist_run') / 'run'
  proc = _run('experiments.mnist', [
      f'--flagfile={CONFIGS / "mnist_dynamic.flags"}', f'--workdir={workdir}',
      f'--data_dir={MNIST_DIR}', '--num_epochs=2', *TINY_MNIST,
      '--eval_every=1', '--eval_every_examples=16',
      '--checkpoint_every_steps=3'], subprocess_env)
  return workdir, proc


def test_mnist_end_to_end(mnist_run):
  workdir, proc = mnist_run
  assert 'WARNING: training on 256 MNIST images, not 60,000' in proc.stderr
  assert '| white-box |' in proc.stdout

  rows = outputs.read_metrics(str(workdir))
  assert [r['epoch'] for r in rows] == [0, 1]
  for row in rows:
    assert ROW_KEYS <= set(row)
    assert {'test_clean', 'test_pgd20'} <= set(row)
    assert row['num_steps'] == 2 and 0 < row['steps_mean'] <= 2
  assert rows[0]['c_t'] == pytest.approx(0.5)
  assert rows[1]['c_t'] == pytest.approx(0.5 - 0.5 / 40)

  results = json.loads((workdir / 'results.json').read_text())
  assert RESULT_KEYS <= set(results)
  assert results['dataset'] == 'mnist' and results['method'] == 'dynamic'
  assert set(results['white_box']) >= {'clean', 'fgsm', 'pgd10', 'pgd20',
                                       'cw_inf'}
  assert results['black_box'] is None
  assert results['num_eval_examples'] == 64
  assert results['num_train_examples'] == 256
  assert results['flags']['t_prime'] == 40 and results['flags']['eps'] == 0.3
  assert 'first 256 of 60000' in results['data_source']['train']
  assert (workdir / 'results.md').exists()

  saved = json.loads((workdir / 'flags.json').read_text())
  assert saved['method'] == 'dynamic' and saved['num_epochs'] == 2
  for name in ('fosc_histograms.png', 'training_curves.png'):
    assert _is_png(workdir / name)
  assert list((workdir / 'tb').glob('events.out.tfevents.*'))
  fosc = np.load(workdir / 'fosc' / 'epoch_0001.npy')
  assert fosc.shape == (256,) and np.all(np.isfinite(fosc))
  assert np.all(fosc >= 0)
  # Epoch ends (4, 8) and every 3 steps; the newest 3 are kept.
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir()
                 if p.name.isdigit())
  assert steps == [4, 6, 8]


def test_evaluate_entry_point_black_box(mnist_run, tmp_path, subprocess_env):
  workdir, _ = mnist_run
  target = tmp_path / 'target'
  shutil.copytree(workdir, target)
  proc = _run('experiments.evaluate', [
      f'--workdir={target}', f'--source_workdir={workdir}',
      '--num_eval_examples=16', f'--data_dir={MNIST_DIR}'], subprocess_env)
  assert '| black-box |' in proc.stdout
  results = json.loads((target / 'results.json').read_text())
  assert RESULT_KEYS <= set(results)
  assert results['num_eval_examples'] == 16
  assert set(results['black_box']) == {'fgsm', 'pgd10', 'pgd20', 'cw_inf'}
  # The source is the target itself: transfer equals white-box.
  for attack, acc in results['black_box'].items():
    assert acc == results['white_box'][attack]
  assert results['flags']['method'] == 'dynamic'
  assert results['step'] == 8
  # The training run's own results (copied with the workdir) are kept.
  for ext in ('json', 'md'):
    assert (target / f'results.1.{ext}').read_bytes() == (
        workdir / f'results.{ext}').read_bytes()
  assert f'Kept the previous results.json as {target}/results.1.json' in (
      proc.stdout)


def test_evaluate_strong_attacks_as_a_cascade(mnist_run, tmp_path,
                                              subprocess_env):
  """--attacks=strong --attack_cascade from the command line: APGD runs as a
  cascade, so its last column is the worst case, and the report says so;
  the run's own results.json is not touched."""
  workdir, _ = mnist_run
  before = (workdir / 'results.json').read_bytes()
  target = tmp_path / 'target'
  shutil.copytree(workdir, target)
  proc = _run('experiments.evaluate', [
      f'--workdir={target}', '--attacks=strong', '--attack_cascade',
      '--num_eval_examples=16', f'--data_dir={MNIST_DIR}'], subprocess_env)
  results = json.loads((target / 'results.json').read_text())
  white = results['white_box']
  assert results['flags']['attack_cascade'] is True
  assert results['flags']['attacks'] == 'strong'
  assert white['apgd_t'] == white['worst_case']
  assert white['apgd_t'] <= white['apgd_ce'] <= min(
      white[a] for a in ('clean', 'fgsm', 'pgd10', 'pgd20', 'cw_inf'))
  assert 'ran as a cascade' in (target / 'results.md').read_text()
  assert 'ran as a cascade' in proc.stdout
  assert (workdir / 'results.json').read_bytes() == before


def test_evaluate_autoattack(mnist_run, tmp_path, subprocess_env):
  """--attacks=autoattack: APGD-CE, APGD-T, FAB-T and Square as a cascade
  (without --attack_cascade), AutoAttack's cumulative log printed, the
  checks run, and a RobustBench-style model_info.json beside results.json."""
  workdir, _ = mnist_run
  target = tmp_path / 'target'
  shutil.copytree(workdir, target)
  proc = _run('experiments.evaluate', [
      f'--workdir={target}', '--attacks=autoattack',
      '--num_eval_examples=16', f'--data_dir={MNIST_DIR}'], subprocess_env)
  results = json.loads((target / 'results.json').read_text())
  white = results['white_box']
  assert set(white) == {'clean', 'apgd_ce', 'apgd_t', 'fab_t', 'square',
                        'worst_case'}
  assert results['cascaded'] == ['apgd_ce', 'apgd_t', 'fab_t', 'square']
  assert white['square'] == white['worst_case']
  assert (white['square'] <= white['fab_t'] <= white['apgd_t'] <=
          white['apgd_ce'] <= white['clean'])
  assert f'robust accuracy after FAB-T: {white["fab_t"]:.2f}% (cumulative)' \
      in proc.stdout
  assert 'APGD-CE, APGD-T, FAB-T, Square ran as a cascade' in (
      target / 'results.md').read_text()
  info = json.loads((target / 'model_info.json').read_text())
  assert info['threat_model'] == 'Linf' and info['eps'] == '0.3'
  assert info['dataset'] == 'mnist' and info['architecture'] == 'mnist_cnn'
  assert info['clean_acc'] == f'{white["clean"]:.2f}'
  assert info['autoattack_acc'] == f'{white["worst_case"]:.2f}'
  assert info['num_test_points'] == 16
  assert 'experiments.evaluate' in info['evaluation_command']
  assert info['evaluation_commit']


def test_cifar10_end_to_end(tmp_path, subprocess_env):
  _require(CIFAR_DIR)
  workdir = tmp_path / 'run'
  proc = _run('experiments.cifar10', [
      f'--flagfile={CONFIGS / "cifar10_standard.flags"}',
      f'--workdir={workdir}', f'--data_dir={CIFAR_DIR}', '--num_epochs=1',
      '--num_train_examples=32', '--batch_size=16', '--num_steps=1',
      '--num_eval_examples=8', '--eval_batch_size=8', '--eval_every=0'],
      subprocess_env)
  assert 'WARNING: training on 32 CIFAR-10 images' in proc.stderr
  results = json.loads((workdir / 'results.json').read_text())
  assert RESULT_KEYS <= set(results)
  assert results['dataset'] == 'cifar10'
  assert results['flags']['augment'] == 'crop_flip'
  assert results['flags']['eps'] == pytest.approx(8 / 255)
  rows = outputs.read_metrics(str(workdir))
  assert len(rows) == 1 and rows[0]['c_t'] is None
  assert _is_png(workdir / 'training_curves.png')


@pytest.mark.parametrize('method', ['unsecured', 'dynamic'])
def test_multihost_two_processes_match_one_process(tmp_path, subprocess_env,
                                                   method):
  """--multihost with 2 JAX processes on this machine (gloo collectives),
  each feeding its half of every batch, trains and evaluates like one."""
  _require(MNIST_DIR)
  # XLA's default optimisation level: at level 0 (the other tests' speed-up)
  # the sharded and the unsharded programs round differently.
  subprocess_env = dict(subprocess_env, XLA_FLAGS='')
  # Dynamic: one step. PGD moves every pixel by sign(gradient), so a rounding
  # difference between the sharded and the unsharded program flips the sign
  # of near-zero gradients and grows from step to step (measured: parameters
  # 1e-8 apart after one step, 1.5e-4 after four).
  steps = 1 if method == 'dynamic' else 4
  args = [f'--flagfile={CONFIGS / f"mnist_{method}.flags"}',
          f'--data_dir={MNIST_DIR}', '--num_epochs=1', *TINY_MNIST,
          f'--num_train_examples={64 * steps}', '--eval_every=0']
  port = run_utils.free_port()
  multi = [run_utils.start('experiments.mnist', [
      *args, f'--workdir={tmp_path / "multi"}', '--multihost',
      f'--coordinator_address=localhost:{port}', '--num_processes=2',
      f'--process_id={i}'], subprocess_env) for i in range(2)]
  _run('experiments.mnist', [*args, f'--workdir={tmp_path / "single"}'],
       subprocess_env)
  for proc in multi:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:] + err[-5000:]
  single = json.loads((tmp_path / 'single' / 'results.json').read_text())
  both = json.loads((tmp_path / 'multi' / 'results.json').read_text())
  assert both['devices'].startswith('2 x cpu')
  rows_1 = outputs.read_metrics(str(tmp_path / 'single'))
  rows_2 = outputs.read_metrics(str(tmp_path / 'multi'))
  assert rows_2[0]['train_loss'] == pytest.approx(rows_1[0]['train_loss'],
                                                  rel=1e-6)
  assert rows_2[0]['steps_mean'] == pytest.approx(rows_1[0]['steps_mean'])
  mesh = parallel.make_mesh()
  _, s1, _ = reporting.restore_model(str(tmp_path / 'single'), (28, 28, 1),
                                     mesh)
  _, s2, _ = reporting.restore_model(str(tmp_path / 'multi'), (28, 28, 1),
                                     mesh)
  assert int(s1.step) == int(s2.step) == steps
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-5)
  # Each run's reported accuracy is that of its own final model, evaluated
  # here in one process. (The two models differ by float rounding, so an
  # example near the decision boundary may flip between them.)
  _, test_ds = inputs.load_data(reporting.load_saved_config(
      str(tmp_path / 'single')))
  for state, results in ((s1, single), (s2, both)):
    clean = evaluation.evaluate(
        state.apply_fn, training.model_variables(state), test_ds.images,
        test_ds.labels, eps=0.3, key=jax.random.key(0), batch_size=8,
        attacks=('clean',))['white_box']['clean']
    assert results['white_box']['clean'] == clean
    assert results['num_eval_examples'] == test_ds.num_examples == 64


def test_cpu_devices_split_the_batch_and_resume_across_device_counts(
    tmp_path, subprocess_env):
  """--cpu_devices=2 trains on two single-threaded CPU devices; a run started
  on one device resumes on two and ends where a one-device run ends, up to
  float rounding."""
  _require(MNIST_DIR)
  args = [f'--flagfile={CONFIGS / "mnist_unsecured.flags"}',
          f'--data_dir={MNIST_DIR}', '--num_epochs=1', *TINY_MNIST,
          '--eval_every=0']
  _run('experiments.mnist', [*args, f'--workdir={tmp_path / "one"}'],
       subprocess_env)
  _run('experiments.mnist', [*args, f'--workdir={tmp_path / "two"}',
                             '--stop_after_steps=2'], subprocess_env)
  _run('experiments.mnist', [*args, f'--workdir={tmp_path / "two"}',
                             '--cpu_devices=2'], subprocess_env)
  one = json.loads((tmp_path / 'one' / 'results.json').read_text())
  two = json.loads((tmp_path / 'two' / 'results.json').read_text())
  assert one['devices'].startswith('1 x cpu')
  assert two['devices'].startswith('2 x cpu')
  assert json.loads((tmp_path / 'two' / 'flags.json').read_text())[
      'cpu_devices'] == 2
  mesh = parallel.make_mesh()
  _, s1, _ = reporting.restore_model(str(tmp_path / 'one'), (28, 28, 1), mesh)
  _, s2, _ = reporting.restore_model(str(tmp_path / 'two'), (28, 28, 1), mesh)
  assert int(s1.step) == int(s2.step) == 4
  for a, b in zip(jax.tree.leaves((s1.params, s1.batch_stats)),
                  jax.tree.leaves((s2.params, s2.batch_stats))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-5)


def test_cpu_devices_after_jax_started_is_a_clear_error(monkeypatch):
  """In a process where JAX already runs, --cpu_devices can only confirm the
  device count it has; anything else names the flag, XLA_FLAGS untouched."""
  monkeypatch.setenv('XLA_FLAGS', '--xla_backend_optimization_level=1')
  have = len(jax.devices('cpu'))
  config_lib.initialize_devices(config_lib.Config(
      dataset='mnist', workdir='unused', cpu_devices=have))
  with pytest.raises(config_lib.ConfigError,
                     match=rf'^--cpu_devices={have + 1}: JAX has already '
                     rf'started in this process with {have} CPU device'):
    config_lib.initialize_devices(config_lib.Config(
        dataset='mnist', workdir='unused', cpu_devices=have + 1))
  assert os.environ['XLA_FLAGS'] == '--xla_backend_optimization_level=1'


def test_tfds_mock_training_in_process(tmp_path):
  """Without --data_dir the data comes from TFDS (here its mock); two epochs
  with changing c_t, eps and loss weighting compile the step once."""
  tfds = pytest.importorskip('tensorflow_datasets')
  config = config_lib.Config(
      dataset='mnist', workdir=str(tmp_path / 'run'), method='dynamic',
      num_epochs=2, batch_size=32, num_steps=2, eps_warmup_epochs=2,
      loss_weighting=True, eval_batch_size=32, eval_every=0)
  with tfds.testing.mock_data(num_examples=64,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    train_ds, test_ds = common.prepare(config)
  assert train_ds.source.startswith('tfds mnist')
  result = training.train_loop(config, train_ds=train_ds, test_ds=test_ds)
  assert result.finished and result.step == 4
  assert result.num_traces == 1
  rows = outputs.read_metrics(config.workdir)
  assert [r['eps'] for r in rows] == pytest.approx([0.15, 0.3])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  _require(MNIST_DIR)
  config = config_lib.Config(
      dataset='mnist', workdir=str(tmp_path / 'run'), data_dir=str(MNIST_DIR),
      method='unsecured', num_epochs=1, batch_size=64, num_train_examples=256,
      learning_rate=1e30, log_every_steps=1, checkpoint_every_steps=1,
      eval_batch_size=64)
  train_ds, test_ds = common.prepare(config)
  with pytest.raises(training.TrainingDivergedError,
                     match='training loss is nan at step 2.*last good '
                     'checkpoint is step 1'):
    training.train_loop(config, train_ds=train_ds, test_ds=test_ds)
  steps = [p.name for p in (tmp_path / 'run' / 'checkpoints').iterdir()]
  assert steps == ['1']
  assert not (tmp_path / 'run' / 'metrics.jsonl').exists()


def test_chance_loss_warning(capsys):
  config = config_lib.Config(dataset='mnist', workdir='/w', method='standard')
  training.chance_warning(config, {'train_loss': 2.3026}, 'after epoch 1')
  mnist = capsys.readouterr().err
  assert 'adversarial training loss is 2.3026' in mnist
  assert 'a known failure of PGD training on MNIST at eps 0.3' in mnist
  assert '--eps_warmup_epochs=5' in mnist and '--learning_rate' in mnist
  cifar = config_lib.Config(dataset='cifar10', workdir='/w',
                            method='standard')
  training.chance_warning(cifar, {'train_loss': 2.3026}, 'after epoch 1')
  text = capsys.readouterr().err
  assert 'adversarial training loss is 2.3026' in text
  assert ('the model is at chance level. If it is still there after several '
          'epochs, try --eps_warmup_epochs=5') in text
  assert '--learning_rate' in text
  assert 'MNIST' not in text and 'known failure' not in text
  for c in (config, cifar):
    training.chance_warning(c, {'train_loss': 0.9}, 'after epoch 1')
    training.chance_warning(c.replace(method='unsecured'),
                            {'train_loss': 2.3026}, 'after epoch 1')
  assert not capsys.readouterr().err


# ---------------------------------------------------------------------------
# Workdir reuse
# ---------------------------------------------------------------------------


def test_refuses_workdir_with_different_flags(mnist_run):
  workdir, _ = mnist_run
  before = _snapshot(workdir)
  with pytest.raises(config_lib.ConfigError) as err:
    _main([f'--flagfile={CONFIGS / "mnist_dynamic.flags"}',
           f'--workdir={workdir}', f'--data_dir={MNIST_DIR}',
           '--num_epochs=2', *TINY_MNIST, '--eps=0.2', '--num_steps=3'])
  message = str(err.value)
  assert '--eps: saved 0.3, now 0.2' in message
  assert '--num_steps: saved 2, now 3' in message
  assert '--method:' not in message and '--num_epochs:' not in message
  assert _snapshot(workdir) == before


def test_flag_differences_ignores_resumable_flags():
  config = config_lib.Config(dataset='mnist', workdir='/a', num_epochs=5)
  saved = config.to_dict()
  changed = config.replace(workdir='/b', num_epochs=9, data_dir='/d',
                           eval_every=2, stop_after_steps=3,
                           checkpoint_every_steps=7, source_workdir='/s')
  assert config_lib.flag_differences(saved, changed) == []
  assert config_lib.flag_differences(saved, config.replace(seed=1)) == [
      ('seed', 0, 1)]
  # A flag missing from an older flags.json counts as its default.
  del saved['keras_decay']
  assert config_lib.flag_differences(saved, config) == []
  assert config_lib.flag_differences(saved, config.replace(keras_decay=1e-4))


# ---------------------------------------------------------------------------
# Bad inputs: one clear error naming the flag or file, before training
# ---------------------------------------------------------------------------


def test_unknown_method_is_rejected(tmp_path, subprocess_env):
  proc = _run('experiments.mnist', [f'--workdir={tmp_path / "w"}',
                                    '--method=bogus'], subprocess_env,
              expect_ok=False)
  assert proc.returncode != 0
  assert '--method=bogus' in proc.stderr
  assert 'unsecured|standard|curriculum|dynamic' in proc.stderr
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('eps', ['0', '1.5', '-0.1'])
def test_eps_outside_unit_interval_is_rejected(tmp_path, eps):
  with pytest.raises(config_lib.ConfigError,
                     match=f'--eps={float(eps)} is '
                     r'outside \(0, 1\]'):
    _main([f'--workdir={tmp_path / "w"}', f'--eps={eps}',
           f'--data_dir={MNIST_DIR}'])
  assert not (tmp_path / 'w').exists()


def test_batch_size_not_divisible_by_devices(tmp_path, subprocess_env):
  env = dict(subprocess_env)
  env['XLA_FLAGS'] += ' --xla_force_host_platform_device_count=2'
  proc = _run('experiments.mnist', [
      f'--workdir={tmp_path / "w"}', '--batch_size=63',
      f'--data_dir={MNIST_DIR}'], env, expect_ok=False)
  assert proc.returncode == 1
  assert ('ERROR: --batch_size=63 is not divisible by the number of devices '
          '(2)') in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not (tmp_path / 'w').exists()


def _copy_mnist(folder):
  _require(MNIST_DIR)
  folder.mkdir()
  for path in MNIST_DIR.iterdir():
    shutil.copyfile(path, folder / path.name)
  return folder


def test_missing_data_file_is_named(tmp_path):
  folder = _copy_mnist(tmp_path / 'mnist')
  (folder / 'train-images-idx3-ubyte.gz').unlink()
  with pytest.raises(data.DataError, match='train-images-idx3-ubyte'):
    _main([f'--workdir={tmp_path / "w"}', f'--data_dir={folder}'])
  assert not (tmp_path / 'w').exists()


def test_missing_tfds_data_names_the_flag(tmp_path, monkeypatch):
  """The library's error names its argument; the main names the flag."""
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
  with pytest.raises(data.DataError) as err:
    _main([f'--workdir={tmp_path / "w"}'])
  message = str(err.value)
  assert 'pass --data_dir a folder holding' in message
  assert data.DATA_DIR_ARGUMENT not in message
  assert 'train-images-idx3-ubyte.gz' in message
  assert not (tmp_path / 'w').exists()


def test_truncated_data_file_is_named(tmp_path):
  folder = _copy_mnist(tmp_path / 'mnist')
  path = folder / 't10k-labels-idx1-ubyte.gz'
  raw = gzip.decompress(path.read_bytes())
  path.write_bytes(gzip.compress(raw[:-100]))
  with pytest.raises(data.DataError) as err:
    _main([f'--workdir={tmp_path / "w"}', f'--data_dir={folder}',
           '--num_train_examples=256'])
  assert str(path) in str(err.value) and 'truncated' in str(err.value)
  assert not (tmp_path / 'w').exists()


def test_unwritable_workdir_is_named(tmp_path):
  _require(MNIST_DIR)
  # A path below a regular file cannot be created, even by root (for whom
  # chmod does not stop writes).
  blocker = tmp_path / 'file.txt'
  blocker.write_text('not a folder')
  with pytest.raises(config_lib.ConfigError,
                     match='--workdir=.*file.txt/sub'):
    _main([f'--workdir={blocker / "sub"}', f'--data_dir={MNIST_DIR}',
           '--num_train_examples=256'])
  if os.geteuid() != 0:
    locked = tmp_path / 'locked'
    locked.mkdir(mode=0o500)
    with pytest.raises(config_lib.ConfigError, match='--workdir=.*locked'):
      _main([f'--workdir={locked}', f'--data_dir={MNIST_DIR}',
             '--num_train_examples=256'])


def test_source_workdir_must_be_a_run(tmp_path):
  with pytest.raises(config_lib.ConfigError, match='--source_workdir='):
    _main([f'--workdir={tmp_path / "w"}', f'--data_dir={MNIST_DIR}',
           f'--source_workdir={tmp_path}'])
  assert not (tmp_path / 'w').exists()


# ---------------------------------------------------------------------------
# Flagfiles and small helpers
# ---------------------------------------------------------------------------


def _parse(dataset, args):
  """The Config a main for ``dataset`` would read from ``args``, parsed in
  a copy of the global flags (whose defaults stay those of the Config)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = copy.deepcopy(flags.FLAGS)
  fv.unparse_flags()
  config_lib.set_dataset_defaults(dataset, fv)
  rest = fv([dataset, *args])
  assert rest == [dataset], f'flagfile left positional arguments {rest}'
  return config_lib.config_from_flags(dataset, fv)


# The resolved Config of each of the 12 method flagfiles before they were
# split into a base file per dataset/model and short per-method files
# (issue #16; written once by the code and the files of commit 599facd).
FLAGFILE_CONFIGS = json.loads(
    (REPO / 'tests' / 'testdata' / 'flagfile_configs.json').read_text())
METHOD_FLAGFILES = sorted(p for p in CONFIGS.glob('*.flags')
                          if not p.stem.endswith('_base'))


# Method flagfiles added since (issue 25): per dataset, a method of the
# registry on the dataset's base file with its own settings.
NEW_METHOD_SETTINGS = {
    'mnist_fat': dict(method='fat', fat_step_noise=0.0),
    'cifar10_fat': dict(method='fat', fat_step_noise=0.0),
    'mnist_trades': dict(method='trades', beta=1.0),
    'cifar10_trades': dict(method='trades', beta=6.0),
    'mnist_mart': dict(method='mart', beta=6.0),
    'cifar10_mart': dict(method='mart', beta=6.0),
}


def _expected_flagfile_config(stem):
  """What a method flagfile resolves to: the snapshot (settings added since
  at their defaults), or for a new method the dataset's Standard file with
  the method's settings."""
  defaults = config_lib.Config(dataset='mnist', workdir='/tmp/unused')
  if stem in FLAGFILE_CONFIGS:
    snapshot = FLAGFILE_CONFIGS[stem]
    return {**{k: v for k, v in defaults.to_dict().items()
               if k not in snapshot}, **snapshot}
  standard = _expected_flagfile_config(stem.split('_')[0] + '_standard')
  return {**standard, **NEW_METHOD_SETTINGS[stem]}


def test_flagfile_layout():
  """A base file per dataset/model; the method files are the 12 names of
  the paper's methods and the new methods' files."""
  assert sorted(p.stem for p in CONFIGS.glob('*.flags')) == sorted(
      list(FLAGFILE_CONFIGS) + list(NEW_METHOD_SETTINGS) +
      ['mnist_base', 'cifar10_base', 'cifar10_wrn_base'])
  assert len(METHOD_FLAGFILES) == 18
  for path in METHOD_FLAGFILES:
    lines = [l for l in path.read_text().splitlines()
             if l and not l.startswith('#')]
    base = path.stem.rsplit('_', 1)[0] + '_base'
    assert lines[:2] == [f'--flagfile=experiments/configs/{base}.flags',
                         f'--method={path.stem.rsplit("_", 1)[1]}']


@pytest.mark.parametrize('path', METHOD_FLAGFILES, ids=lambda p: p.stem)
def test_flagfiles(path):
  dataset = path.stem.split('_')[0]
  method = path.stem.split('_')[-1]
  config = _parse(dataset, [f'--flagfile={path}', '--workdir=/tmp/unused'])
  config_lib.validate_config(config)
  # Exactly the Config the file gave before the split, every field (the
  # settings added since at their defaults).
  assert config.to_dict() == _expected_flagfile_config(path.stem)
  # The same through the relative path of the README's commands.
  assert _parse(dataset, [f'--flagfile={path.relative_to(REPO)}',
                          '--workdir=/tmp/unused']) == config
  assert config.method == method
  assert config.batch_size == 128 and config.num_steps == 10
  assert config.momentum == 0.9 and config.c_max == 0.5
  assert config.learning_rate == 0.01 and config.seed == 0
  assert (config.curriculum_start_steps, config.curriculum_threshold) == (1, 0.5)
  assert (config.eval_every, config.num_eval_examples) == (1, 0)
  assert config.eval_batch_size == (250 if dataset == 'mnist' else 500)
  assert config.checkpoint_every_steps == (200 if '_wrn_' in path.name else 0)
  assert not (config.loss_weighting or config.unclipped_random_start or
              config.fosc_centre_random_start or config.keras_decay)
  assert config.step_size == pytest.approx(config.eps / 4)
  # Section 5: weight decay 1e-4 for both datasets.
  assert config.weight_decay == 1e-4
  if dataset == 'mnist':
    assert (config.eps, config.num_epochs, config.t_prime) == (0.3, 50, 40)
    assert config.lr_drop_epochs == (20, 40)
    assert config.curriculum_max_steps == 40 and config.augment == 'none'
  else:
    assert config.eps == pytest.approx(8 / 255)
    assert (config.num_epochs, config.t_prime) == (120, 100)
    assert config.lr_drop_epochs == (60, 100)
    assert config.augment == 'crop_flip'
    assert config.curriculum_max_steps == 7
    assert config.model == ('wrn' if '_wrn_' in path.name else 'cifar10_cnn')
    if config.model == 'wrn':  # WRN-34-10, Table 3 of the paper.
      assert (config.wrn_depth, config.wrn_width) == (34, 10)
  # A later command-line flag overrides the file.
  assert _parse(dataset, [f'--flagfile={path}', '--workdir=/tmp/unused',
                          '--eps=0.1']).eps == 0.1


def test_wrn_flagfile_trains_one_pgd10_step_on_cpu():
  """A WRN Standard step (PGD-10) through the experiments' training path:
  the WRN flagfile at depth 10, width 1, batch 8."""
  config = _parse('cifar10', [
      f'--flagfile={CONFIGS / "cifar10_wrn_standard.flags"}',
      '--workdir=/tmp/unused', '--wrn_depth=10', '--wrn_width=1',
      '--batch_size=8'])
  config_lib.validate_config(config)
  model = training.build_model(config)
  assert (type(model).__name__, model.depth, model.width) == (
      'WideResNet', 10, 1)
  mesh = parallel.make_mesh()
  state = parallel.replicate(
      training.initial_state(config, config_lib.IMAGE_SHAPES['cifar10'], 4),
      mesh)
  params0 = jax.tree.map(np.array, state.params)
  stats0 = jax.tree.map(np.array, state.batch_stats)
  rng = np.random.default_rng(0)
  batch = parallel.global_batch(
      {'image': rng.random((8, 32, 32, 3), dtype=np.float32),
       'label': rng.integers(0, 10, 8).astype(np.int32)}, mesh)
  step, traces = training.make_step(config, mesh)
  ap = training.epoch_attack_params(config, 0, config.curriculum_start_steps)
  assert int(ap.num_steps) == 10 and float(ap.c_stop) == -np.inf
  _, train_key = training.run_keys(config.seed)
  state, metrics = step(state, batch, train_key, ap, False)
  assert traces[0] == 1 and int(state.step) == 1
  assert np.isfinite(float(metrics['loss']))
  assert float(metrics['loss']) > 0
  # Standard runs all K = 10 PGD steps on every example.
  assert int(metrics['steps_max']) == 10
  assert float(metrics['steps_mean']) == 10.0
  params1 = jax.tree.map(np.array, state.params)
  changed = jax.tree.leaves(jax.tree.map(
      lambda a, b: bool(np.all(np.isfinite(b))) and not np.array_equal(a, b),
      params0, params1))
  assert len(changed) > 10 and all(changed)
  stats_changed = jax.tree.leaves(jax.tree.map(
      lambda a, b: not np.array_equal(a, np.asarray(b)), stats0,
      state.batch_stats))
  assert stats_changed and all(stats_changed)


def test_dataset_defaults_without_flagfile():
  mnist = _parse('mnist', ['--workdir=/tmp/unused'])
  cifar = _parse('cifar10', ['--workdir=/tmp/unused'])
  assert (mnist.model, mnist.eps, mnist.augment) == ('mnist_cnn', 0.3, 'none')
  assert mnist.step_size == pytest.approx(0.075)
  assert (cifar.model, cifar.augment) == ('cifar10_cnn', 'crop_flip')
  assert cifar.eps == pytest.approx(8 / 255)
  assert cifar.lr_drop_epochs == (60, 100)


def test_eps_warmup_and_learning_rate():
  config = config_lib.Config(dataset='mnist', workdir='/w', eps=0.3,
                             eps_warmup_epochs=3, lr_drop_epochs=(2, 4),
                             learning_rate=0.1)
  aps = [training.epoch_attack_params(config, t, 1) for t in range(5)]
  assert [float(ap.eps) for ap in aps] == pytest.approx(
      [0.1, 0.2, 0.3, 0.3, 0.3])
  assert float(aps[0].step_size) == pytest.approx(0.1 / 4)
  schedule = training.learning_rate_schedule(config, steps_per_epoch=3)
  assert [float(schedule(3 * t)) for t in (0, 1, 2, 3, 4)] == (
      pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001]))


@pytest.mark.parametrize('method', ('dynamic', 'standard', 'curriculum'))
def test_epoch_row_logs_what_the_step_used(method):
  """c_t, eps, step size and K of a row are the epoch's AttackParams, its lr
  the rate the run's own optimiser applies at the epoch's first step (each
  read back as float32, exactly)."""
  config = config_lib.Config(
      dataset='mnist', workdir='/w', method=method, eps=0.3, step_size=0.075,
      eps_warmup_epochs=2, lr_drop_epochs=(2, 3), learning_rate=0.01,
      keras_decay=0.3, momentum=0.0, weight_decay=0.0, c_max=0.5, t_prime=3)
  steps_per_epoch = 2
  state = training.initial_state(config, (28, 28, 1), steps_per_epoch)
  params = {'w': np.ones((), np.float32)}
  opt_state = state.tx.init(params)
  run = training.Run(config=config, mesh=None, train_ds=None, test_ds=None,
                     steps_per_epoch=steps_per_epoch, key=None, step_fn=None,
                     traces=[0], ckpt=None, writer=None)
  for epoch in range(5):
    # The rate of the epoch's first update (momentum 0, gradient 1).
    update, _ = state.tx.update(params, opt_state, params)
    for _ in range(steps_per_epoch):
      _, opt_state = state.tx.update(params, opt_state, params)
    ap = training.epoch_attack_params(config, epoch, 2)
    progress = training.Progress(step=(epoch + 1) * steps_per_epoch,
                                 method_state=2, fosc=np.zeros(4, np.float32))
    row = training.epoch_row(run, epoch, progress, ap)
    assert np.float32(row['lr']) == -np.asarray(update['w'])
    assert np.float32(row['eps']) == np.asarray(ap.eps)
    assert np.float32(row['step_size']) == np.asarray(ap.step_size)
    assert row['num_steps'] == int(ap.num_steps)
    if method == 'dynamic':
      assert np.float32(row['c_t']) == np.asarray(ap.c_stop)
      assert row['c_t'] == pytest.approx(max(0.5 - epoch * 0.5 / 3, 0.0))
    else:
      assert row['c_t'] is None
    assert row['eps'] == pytest.approx(0.3 * min(epoch + 1, 2) / 2)
    assert row['lr'] == pytest.approx(
        0.01 * 0.1 ** sum(epoch >= e for e in (2, 3)) /
        (1 + 0.3 * epoch * steps_per_epoch))
  assert json.loads(json.dumps(row)) == row


def test_keras_augmentation_is_deterministic():
  pytest.importorskip('scipy')
  config = config_lib.Config(dataset='cifar10', workdir='/w',
                             model='cifar10_cnn', augment='keras')
  images = np.random.default_rng(0).random((4, 32, 32, 3), np.float32)
  a = inputs.augment(config, images, epoch=1, batch_index=2)
  b = inputs.augment(config, images, epoch=1, batch_index=2)
  c = inputs.augment(config, images, epoch=1, batch_index=3)
  assert a.shape == images.shape and a.dtype == images.dtype
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c) and not np.array_equal(a, images)
  assert a.min() >= 0.0 and a.max() <= 1.0
