"""Tests for dynamic_at.checkpoint and exact resumption of a training run."""

import errno
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamic_at import checkpoint
from dynamic_at import models
from dynamic_at import parallel
from dynamic_at import train
from tests import run_utils

REPO = run_utils.REPO
SHARED_DATA = run_utils.SHARED_DATA
MNIST_DIR = SHARED_DATA / 'mnist'



_require = run_utils.require
_run = run_utils.run


def _state(seed=0):
  tx = train.make_optimizer(learning_rate=0.1, momentum=0.9,
                            weight_decay=1e-4, steps_per_epoch=2,
                            lr_drop_epochs=(1,))
  return train.create_train_state(models.get_model('mnist_cnn'),
                                  jax.random.key(seed), (28, 28, 1), tx)


def _stepped_state():
  """A state after one update, so the momentum buffers and the schedule's
  count are non-zero, with moved BatchNorm statistics."""
  state = _state()
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), state.params)
  state = state.apply_gradients(grads=grads)
  return state.replace(batch_stats=jax.tree.map(lambda v: v + 0.25,
                                                state.batch_stats))


def _assert_trees_equal(a, b):
  """Every leaf of the pytrees ``a`` and ``b`` (e.g. whole train states:
  params, batch_stats, opt_state, step), walked by jax, not by a list of
  fields. Leaves are matched by their key paths (the structure's static
  fields, ``apply_fn`` and ``tx``, are the restore target's own objects)."""
  assert type(a) is type(b)
  leaves_a = jax.tree_util.tree_leaves_with_path(a)
  leaves_b = jax.tree_util.tree_leaves_with_path(b)
  paths = [jax.tree_util.keystr(p) for p, _ in leaves_a]
  assert paths == [jax.tree_util.keystr(p) for p, _ in leaves_b]
  for path, (_, x), (_, y) in zip(paths, leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=path)


def test_roundtrip_is_bit_identical(tmp_path):
  state = _stepped_state()
  key = jax.random.key(42)
  arrays = {'fosc': np.linspace(0, 1, 7).astype(np.float32), 'key': key,
            'idx': np.arange(5, dtype=np.int32)}
  meta = {'epoch': 3, 'k': 2, 'loss_sum': 0.1 + 0.2}
  with checkpoint.Checkpointer(tmp_path / 'ckpt', max_to_keep=2) as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.save(7, state, arrays=arrays, meta=meta)
  with checkpoint.Checkpointer(tmp_path / 'ckpt', read_only=True) as ckpt:
    assert ckpt.latest_step() == 7
    restored, got_arrays, got_meta = ckpt.restore(
        _state(seed=1), arrays_target={'fosc': np.zeros(7, np.float32),
                                       'key': jax.random.key(0),
                                       'idx': np.ones(5, np.int32)})
  _assert_trees_equal(restored, state)
  # Every leaf of the restore target differs from the saved state's (the
  # momentum too), so a leaf the checkpoint lost would show above.
  template = _state(seed=1)
  leaves = jax.tree_util.tree_leaves_with_path(state)
  fresh = jax.tree_util.tree_leaves_with_path(template)
  assert [p for p, _ in leaves] == [p for p, _ in fresh]
  paths = [jax.tree_util.keystr(p) for p, _ in leaves]
  # The momentum: one buffer per parameter array.
  assert (sum('opt_state' in p for p in paths) >=
          len(jax.tree.leaves(state.params)))
  for path, (_, saved), (_, new) in zip(paths, leaves, fresh):
    assert not np.array_equal(saved, new), path
  # optax's NamedTuples come back as themselves, not as lists.
  assert type(restored.opt_state) is type(state.opt_state)
  assert type(restored.opt_state[1][0]) is type(state.opt_state[1][0])
  assert int(restored.step) == 1
  # numpy buffers come back as numpy arrays of their dtype and shape.
  for name in ('fosc', 'idx'):
    assert type(got_arrays[name]) is np.ndarray, name
    assert got_arrays[name].dtype == arrays[name].dtype, name
    assert got_arrays[name].shape == arrays[name].shape, name
    np.testing.assert_array_equal(got_arrays[name], arrays[name])
  assert jax.dtypes.issubdtype(got_arrays['key'].dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.key_data(got_arrays['key']),
                                jax.random.key_data(key))
  assert got_meta == meta


def test_keeps_last_n_and_skips_saved_step(tmp_path):
  state = _state()
  with checkpoint.Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    for step in (1, 2, 3, 4):
      assert ckpt.save(step, state, meta={'step': step},
                       arrays={'n': np.full(3, step, np.int32)})
    ckpt.wait_until_finished()
    assert not ckpt.save(4, state)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == (3, 4)
    _, arrays, meta = ckpt.restore(state, step=3)
    assert arrays is None  # no arrays_target
    assert meta == {'step': 3}
    # A given step restores its arrays too.
    _, arrays, meta = ckpt.restore(state, step=3,
                                   arrays_target={'n': np.zeros(3, np.int32)})
  assert meta == {'step': 3}
  np.testing.assert_array_equal(arrays['n'], np.full(3, 3, np.int32))


def test_restore_without_checkpoint_raises(tmp_path):
  with checkpoint.Checkpointer(tmp_path / 'empty') as ckpt:
    with pytest.raises(FileNotFoundError, match='no checkpoint'):
      ckpt.restore(_state())


def _no_space(*args, **kwargs):
  del args, kwargs
  raise OSError(errno.ENOSPC, 'No space left on device')


def test_failed_writes_name_the_checkpoint_and_the_kept_steps(tmp_path,
                                                               monkeypatch):
  state = _state()
  with checkpoint.Checkpointer(tmp_path, max_to_keep=3) as ckpt:
    ckpt.save(1, state)
    ckpt.save(2, state)
    ckpt.wait_until_finished()
    (tmp_path / '5.unreadable').mkdir()  # not a step
    monkeypatch.setattr(ckpt._manager, 'save', _no_space)
    with pytest.raises(checkpoint.CheckpointError) as info:
      ckpt.save(3, state)
    assert isinstance(info.value.__cause__, OSError)
    assert str(info.value) == (
        f'could not write checkpoint step 3 in {str(tmp_path)!r}: [Errno 28] '
        'No space left on device. The checkpoints already there are '
        'unchanged (steps [1, 2]); free space or fix the folder, then rerun '
        'to resume from the newest.')
    # An asynchronous save that failed is reported when waiting for it.
    monkeypatch.setattr(ckpt._manager, 'wait_until_finished', _no_space)
    with pytest.raises(checkpoint.CheckpointError) as info:
      ckpt.wait_until_finished()
    assert str(info.value).startswith(
        f'could not write a checkpoint in {str(tmp_path)!r}: [Errno 28] ')

    def timed_out(*args, **kwargs):  # as orbax's async write reports it
      del args, kwargs
      raise TimeoutError('ChainedFuture completed 1/5 futures but timed out '
                         'after 0.00 seconds.')

    monkeypatch.setattr(ckpt._manager, 'wait_until_finished', timed_out)
    with pytest.raises(checkpoint.CheckpointError) as info:
      ckpt.wait_until_finished()
    assert str(info.value) == (
        f'could not write a checkpoint in {str(tmp_path)!r}: ChainedFuture '
        'completed 1/5 futures but timed out after 0.00 seconds. The '
        'checkpoints already there are unchanged (steps [1, 2]); the write '
        'did not finish in time (the process was suspended, or the disk is '
        'slow); rerun to resume from the newest.')
    monkeypatch.undo()
  # The folder is gone (or cannot be listed): "steps none".
  empty = tmp_path / 'empty'
  with checkpoint.Checkpointer(empty) as ckpt:
    shutil.rmtree(empty, ignore_errors=True)
    monkeypatch.setattr(ckpt._manager, 'save', _no_space)
    with pytest.raises(checkpoint.CheckpointError,
                       match=r'unchanged \(steps none\)'):
      ckpt.save(1, state)
    monkeypatch.undo()


@pytest.mark.parametrize('impl', [None, 'rbg'])
def test_key_encoding_roundtrip(impl):
  tree = {'k': jax.random.key(3, impl=impl), 'x': jnp.arange(3)}
  encoded = checkpoint.encode_keys(tree)
  assert encoded['k'].dtype == jnp.uint32
  decoded = checkpoint.decode_keys(encoded, tree)
  # The key's own implementation (not the default one) with its data.
  assert jax.random.key_impl(decoded['k']) == jax.random.key_impl(tree['k'])
  np.testing.assert_array_equal(jax.random.key_data(decoded['k']),
                                jax.random.key_data(tree['k']))
  np.testing.assert_array_equal(decoded['x'], tree['x'])


def test_restore_places_the_state_like_the_target(tmp_path):
  # Saved from one device, restored into a state replicated on a mesh: every
  # leaf gets the target's sharding, not the one it was saved with.
  state = _stepped_state()
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state)
  mesh = parallel.make_mesh()
  target = parallel.replicate(_state(seed=1), mesh)
  with checkpoint.Checkpointer(tmp_path, read_only=True) as ckpt:
    restored, _, _ = ckpt.restore(target)
  for got, want in zip(jax.tree.leaves(checkpoint.state_tree(restored)),
                       jax.tree.leaves(checkpoint.state_tree(target))):
    assert got.sharding == want.sharding
    assert got.sharding != jax.tree.leaves(state.params)[0].sharding
  _assert_trees_equal(checkpoint.state_tree(restored),
                      checkpoint.state_tree(state))


@pytest.mark.parametrize('error,line', [
    (ValueError('first\nsecond'), 'ValueError: first'),
    (OSError(''), 'OSError'),
    (ValueError('  \n'), 'ValueError'),
    (KeyError('BOX'), "KeyError: 'BOX'"),
    (RuntimeError('a: BOX'), 'RuntimeError: a: BOX'),
    (ValueError('x' * 400), 'ValueError: ' + 'x' * 300),
])
def test_one_line_error_summary(error, line):
  # How each unreadable checkpoint's error is named in messages and logs.
  assert checkpoint._one_line(error) == line


def _final_params(workdir):
  from experiments import reporting  # pylint: disable=g-import-not-at-top
  from experiments import training  # pylint: disable=g-import-not-at-top
  config = reporting.load_saved_config(str(workdir))
  template = training.initial_state(config, (28, 28, 1), 4)
  with checkpoint.Checkpointer(Path(workdir) / 'checkpoints',
                               read_only=True) as ckpt:
    state, arrays, meta = ckpt.restore(
        template, arrays_target={'fosc': np.zeros(4 * 64, np.float32)})
  return state, arrays, meta


_RUN_TIME_KEYS = ('epoch_time_s', 'train_time_s')


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path,
                                                      subprocess_env):
  """Uninterrupted vs stopped mid-epoch and resumed: identical parameters.

  Curriculum with threshold 0 grows k after every epoch, so a resumed run
  that lost k would attack differently; the eps warm-up changes eps per
  epoch, loss weighting switches on after epoch 0, and the Keras-style
  augmentation draws random numbers per batch.
  """
  _require(MNIST_DIR)
  args = ['--data_dir', MNIST_DIR, '--method=curriculum',
          '--curriculum_threshold=0', '--curriculum_start_steps=1',
          '--curriculum_max_steps=3', '--eps_warmup_epochs=2',
          '--loss_weighting', '--augment=keras', '--num_train_examples=256',
          '--batch_size=64', '--num_epochs=2', '--num_eval_examples=8',
          '--eval_batch_size=8', '--checkpoint_every_steps=3',
          '--log_every_steps=2']
  full, parts = tmp_path / 'full', tmp_path / 'parts'
  _run('experiments.mnist', [f'--workdir={full}', *args], subprocess_env)
  # Stop inside epoch 1 (4 steps per epoch), after a step checkpoint at 3.
  _run('experiments.mnist', [f'--workdir={parts}', '--stop_after_steps=5',
                             *args], subprocess_env)
  assert not (parts / 'results.json').exists()
  _, _, meta = _final_params(parts)
  assert meta['step'] == 5 and meta['method_state'] == 2
  proc = _run('experiments.mnist', [f'--workdir={parts}', *args],
              subprocess_env)
  assert 'Resuming from step 5' in proc.stdout

  state_a, arrays_a, meta_a = _final_params(full)
  state_b, arrays_b, meta_b = _final_params(parts)
  assert meta_a['step'] == meta_b['step'] == 8
  _assert_trees_equal(state_a, state_b)
  np.testing.assert_array_equal(arrays_a['fosc'], arrays_b['fosc'])
  for name in ('epoch_0000.npy', 'epoch_0001.npy'):
    np.testing.assert_array_equal(np.load(full / 'fosc' / name),
                                  np.load(parts / 'fosc' / name))

  def rows(workdir):
    lines = (workdir / 'metrics.jsonl').read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items()
             if k not in _RUN_TIME_KEYS} for line in lines]

  assert rows(full) == rows(parts)
  assert [r['num_steps'] for r in rows(full)] == [1, 2]
  assert [r['eps'] for r in rows(full)] == pytest.approx([0.15, 0.3])
  results_a = json.loads((full / 'results.json').read_text())
  results_b = json.loads((parts / 'results.json').read_text())
  assert results_a['white_box'] == results_b['white_box']
