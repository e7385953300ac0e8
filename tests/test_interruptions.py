"""Runs that survive: the workdir lock, damaged checkpoints, SIGTERM / SIGINT
and failed writes.

The end-to-end cases train tiny MNIST runs in real processes (signals, kill -9,
a second process on the same workdir, a file-size limit); the others call the
pieces in-process.
"""

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from dynamic_at import checkpoint
from dynamic_at import files
from experiments import common
from experiments import outputs
from experiments import workdir_lock
from tests import run_utils
from tests.test_checkpoint import _assert_trees_equal
from tests.test_checkpoint import _state
from tests.test_checkpoint import _stepped_state

MNIST_DIR = run_utils.MNIST_DIR
_require = run_utils.require
_run = run_utils.run

# 4 steps per epoch, K = 2: a run takes seconds.
TINY = ['--data_dir', MNIST_DIR, '--method=standard', '--num_steps=2',
        '--num_train_examples=256', '--batch_size=64', '--num_eval_examples=8',
        '--eval_batch_size=8', '--eval_every=0']
# 64 steps per epoch, so that a signal sent when epoch 0 ends lands in
# epoch 1 well before it ends.
LONG_EPOCH = ['--data_dir', MNIST_DIR, '--method=standard', '--num_steps=2',
              '--num_train_examples=2048', '--batch_size=32',
              '--num_epochs=2', '--num_eval_examples=8', '--eval_batch_size=8',
              '--eval_every=0']
_TIME_KEYS = ('epoch_time_s', 'train_time_s')


def _main(args):
  return common.main_with_args(['mnist', *map(str, args)], 'mnist')


def _snapshot(folder):
  return {str(p): (p.read_bytes(), p.stat().st_mtime_ns)
          for p in sorted(Path(folder).rglob('*')) if p.is_file()}


def _wait_for(predicate, proc=None, timeout=300):
  start = time.time()
  while not predicate():
    if proc is not None and proc.poll() is not None:
      out, err = proc.communicate()
      raise AssertionError(f'process ended early ({proc.returncode}):\n'
                           f'{out[-2000:]}\n{err[-3000:]}')
    if time.time() - start > timeout:
      raise AssertionError('timed out')
    time.sleep(0.02)


def _restore(workdir, steps_per_epoch, batch_size):
  from experiments import reporting  # pylint: disable=g-import-not-at-top
  from experiments import training  # pylint: disable=g-import-not-at-top
  config = reporting.load_saved_config(str(workdir))
  template = training.initial_state(config, (28, 28, 1), steps_per_epoch)
  with checkpoint.Checkpointer(Path(workdir) / 'checkpoints',
                               read_only=True) as ckpt:
    return ckpt.restore(template, arrays_target={
        'fosc': np.zeros(steps_per_epoch * batch_size, np.float32)})


def _rows(workdir):
  return [{k: v for k, v in r.items() if k not in _TIME_KEYS}
          for r in outputs.read_metrics(str(workdir))]


def _assert_same_run(a, b, steps_per_epoch, batch_size):
  state_a, arrays_a, meta_a = _restore(a, steps_per_epoch, batch_size)
  state_b, arrays_b, meta_b = _restore(b, steps_per_epoch, batch_size)
  assert meta_a['step'] == meta_b['step']
  _assert_trees_equal(checkpoint.state_tree(state_a),
                      checkpoint.state_tree(state_b))
  np.testing.assert_array_equal(arrays_a['fosc'], arrays_b['fosc'])
  assert _rows(a) == _rows(b)
  for name in sorted(os.listdir(Path(a) / 'fosc')):
    np.testing.assert_array_equal(np.load(Path(a) / 'fosc' / name),
                                  np.load(Path(b) / 'fosc' / name))


# ---------------------------------------------------------------------------
# SIGTERM / SIGINT
# ---------------------------------------------------------------------------


def _interrupt_in_epoch_1(workdir, signum, env):
  """Starts a LONG_EPOCH run, sends ``signum`` as soon as epoch 0's metrics
  row is written, and returns the finished process and its output."""
  proc = run_utils.start('experiments.mnist',
                         [*LONG_EPOCH, f'--workdir={workdir}'], env)
  _wait_for(lambda: (workdir / 'metrics.jsonl').exists(), proc)
  proc.send_signal(signum)
  out, err = proc.communicate(timeout=600)
  return proc, out, err


def test_sigterm_mid_epoch_saves_that_step_and_resumes_bit_identical(
    tmp_path, subprocess_env):
  _require(MNIST_DIR)
  parts, full = tmp_path / 'parts', tmp_path / 'full'
  proc, _, err = _interrupt_in_epoch_1(parts, signal.SIGTERM, subprocess_env)
  assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
  _, _, meta = _restore(parts, 64, 32)
  step = meta['step']
  assert 64 < step < 128  # inside epoch 1
  assert meta['num_batches'] == step - 64  # the unfinished epoch's sums
  assert (f'SIGTERM: stopped after step {step} of 128 (epoch 1, batch '
          f'{step - 64}) and saved it as checkpoint step {step}') in err
  assert 'Rerun the same command to resume' in err
  assert [r['epoch'] for r in outputs.read_metrics(str(parts))] == [0]
  assert not (parts / 'results.json').exists()
  assert (parts / workdir_lock.LOCK_FILE).read_text() == ''  # released

  resumed = _run('experiments.mnist', [*LONG_EPOCH, f'--workdir={parts}'],
                 subprocess_env)
  assert f'Resuming from step {step} (epoch 1, batch {step - 64})' in (
      resumed.stdout)
  _run('experiments.mnist', [*LONG_EPOCH, f'--workdir={full}'],
       subprocess_env)
  _assert_same_run(parts, full, 64, 32)
  assert (json.loads((parts / 'results.json').read_text())['white_box'] ==
          json.loads((full / 'results.json').read_text())['white_box'])


def test_sigint_saves_the_current_step(tmp_path, subprocess_env):
  _require(MNIST_DIR)
  proc, _, err = _interrupt_in_epoch_1(tmp_path / 'run', signal.SIGINT,
                                       subprocess_env)
  assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
  _, _, meta = _restore(tmp_path / 'run', 64, 32)
  assert 64 < meta['step'] < 128
  assert f'SIGINT: stopped after step {meta["step"]} of 128' in err


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(
    tmp_path, subprocess_env):
  """JAX's preemption service: process 1 alone gets SIGTERM; both save the
  same step, and a two-process rerun resumes from it to the end."""
  _require(MNIST_DIR)
  env = dict(subprocess_env, XLA_FLAGS='')
  workdir = tmp_path / 'run'

  def start():
    port = run_utils.free_port()
    return [run_utils.start('experiments.mnist', [
        *LONG_EPOCH, f'--workdir={workdir}', '--multihost',
        f'--coordinator_address=localhost:{port}', '--num_processes=2',
        f'--process_id={i}'], env) for i in range(2)]

  procs = start()
  _wait_for(lambda: (workdir / 'metrics.jsonl').exists(), procs[0])
  procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=600) for p in procs]
  steps = []
  for proc, (_, err) in zip(procs, outs):
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    line = [l for l in err.splitlines() if 'SIGTERM: stopped after step' in l]
    assert len(line) == 1, err[-3000:]
    steps.append(int(line[0].split('step ')[1].split()[0]))
  assert steps[0] == steps[1] and 64 < steps[0] < 128
  _, _, meta = _restore(workdir, 64, 32)
  assert meta['step'] == steps[0]
  procs = start()
  outs = [p.communicate(timeout=600) for p in procs]
  for proc, (out, err) in zip(procs, outs):
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
  assert f'Resuming from step {steps[0]}' in outs[0][0]  # process 0 prints
  _, _, meta = _restore(workdir, 64, 32)
  assert meta['step'] == 128
  assert json.loads((workdir / 'results.json').read_text())['flags'][
      'num_epochs'] == 2


# ---------------------------------------------------------------------------
# The workdir lock
# ---------------------------------------------------------------------------

_HOLD = ('import sys, time\n'
         'from experiments.workdir_lock import WorkdirLock\n'
         'WorkdirLock(sys.argv[1]).acquire()\n'
         'print("held", flush=True)\n'
         'time.sleep(600)\n')


def _holder(workdir, env):
  """A process that holds ``workdir``'s lock (and sleeps)."""
  workdir.mkdir(parents=True, exist_ok=True)
  proc = subprocess.Popen([sys.executable, '-c', _HOLD, str(workdir)],
                          cwd=run_utils.REPO, env=env, stdout=subprocess.PIPE,
                          text=True)
  assert proc.stdout.readline().strip() == 'held'
  return proc


def test_second_training_process_on_a_workdir_is_refused(tmp_path,
                                                         subprocess_env):
  _require(MNIST_DIR)
  workdir = tmp_path / 'run'
  first = run_utils.start('experiments.mnist',
                          [*LONG_EPOCH, f'--workdir={workdir}'],
                          subprocess_env)
  lock = workdir / workdir_lock.LOCK_FILE
  _wait_for(lambda: lock.exists() and f'"pid": {first.pid},' in
            lock.read_text(), first)
  second = _run('experiments.mnist', [*LONG_EPOCH, f'--workdir={workdir}'],
                subprocess_env, expect_ok=False)
  assert second.returncode == 1
  assert f'is in use by pid {first.pid} on host' in second.stderr
  assert 'Nothing was changed' in second.stderr
  out, err = first.communicate(timeout=600)
  assert first.returncode == 0, out[-2000:] + err[-3000:]
  assert json.loads((workdir / 'results.json').read_text())
  assert lock.read_text() == ''


def test_locked_workdir_changes_nothing_and_kill_9_lock_is_taken_over(
    tmp_path, subprocess_env, capsys):
  _require(MNIST_DIR)
  workdir = tmp_path / 'run'
  holder = _holder(workdir, subprocess_env)
  try:
    before = _snapshot(workdir)
    with pytest.raises(workdir_lock.WorkdirLockedError,
                       match=f'in use by pid {holder.pid} on host'):
      _main([*TINY, '--num_epochs=1', f'--workdir={workdir}'])
    assert _snapshot(workdir) == before
    # Evaluation that writes into the workdir is refused too.
    from experiments import evaluate  # pylint: disable=g-import-not-at-top
    with pytest.raises(workdir_lock.WorkdirLockedError):
      evaluate._locked(str(workdir)).__enter__()  # pylint: disable=protected-access
  finally:
    holder.kill()  # SIGKILL: no clean release
    holder.wait()
  capsys.readouterr()
  result = _main([*TINY, '--num_epochs=1', f'--workdir={workdir}'])
  assert result['white_box']
  err = capsys.readouterr().err
  assert f'was left by pid {holder.pid} on host' in err
  assert 'no longer running' in err


def test_lock_without_flock_checks_the_pid(tmp_path, monkeypatch):
  """Where flock is unsupported, a live pid of this host keeps the lock, a
  dead one is taken over, and another host's is never taken over."""

  def no_flock(fd, op):
    raise OSError(errno.ENOLCK, 'No locks available')

  monkeypatch.setattr(workdir_lock.fcntl, 'flock', no_flock)
  lock_file = tmp_path / workdir_lock.LOCK_FILE
  finished = subprocess.Popen([sys.executable, '-c', 'pass'])
  finished.wait()

  def write(pid, host):
    lock_file.write_text(json.dumps({'pid': pid, 'host': host,
                                     'started': 'then', 'command': 'x'}))

  me = workdir_lock.Holder.me()
  write(os.getppid(), me.host)
  with pytest.raises(workdir_lock.WorkdirLockedError,
                     match=f'pid {os.getppid()} on host {me.host}'):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  write(finished.pid, 'another-host.example')
  with pytest.raises(workdir_lock.WorkdirLockedError,
                     match='another-host.example'):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  write(finished.pid, me.host)
  with workdir_lock.WorkdirLock(str(tmp_path)) as lock:
    assert lock.stale.pid == finished.pid
    assert json.loads(lock_file.read_text())['pid'] == os.getpid()
  assert lock_file.read_text() == ''


def test_lock_of_other_processes_is_a_no_op(tmp_path):
  with workdir_lock.WorkdirLock(str(tmp_path), primary=False):
    assert not (tmp_path / workdir_lock.LOCK_FILE).exists()
    with workdir_lock.WorkdirLock(str(tmp_path)) as lock:
      assert lock.stale is None
      with pytest.raises(workdir_lock.WorkdirLockedError,
                         match=f'pid {os.getpid()}'):
        workdir_lock.WorkdirLock(str(tmp_path)).acquire()


# ---------------------------------------------------------------------------
# Damaged checkpoints
# ---------------------------------------------------------------------------


def _damage(step_dir, what):
  """Flips bytes of the state's array files, or of the JSON metadata."""
  if what == 'arrays':
    paths = [p for p in (step_dir / 'state').rglob('*')
             if p.is_file() and p.parent.name == 'd']
  else:
    paths = [step_dir / 'meta' / 'metadata']
  assert paths
  for path in paths:
    raw = bytearray(path.read_bytes())
    for i in range(0, len(raw), 97):
      raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  _require(MNIST_DIR)
  workdir = tmp_path_factory.mktemp('uninterrupted') / 'run'
  _main([*TINY, '--num_epochs=2', f'--workdir={workdir}'])
  return workdir


@pytest.mark.parametrize('what', ['arrays', 'meta'])
def test_damaged_newest_checkpoint_is_moved_aside_and_the_previous_used(
    tmp_path, uninterrupted, what, capsys):
  workdir = tmp_path / 'run'
  args = [*TINY, '--num_epochs=2', f'--workdir={workdir}',
          '--checkpoint_every_steps=1']
  assert _main([*args, '--stop_after_steps=6']) is None
  ckpts = workdir / 'checkpoints'
  assert sorted(os.listdir(ckpts)) == ['4', '5', '6']
  _damage(ckpts / '6', what)
  damaged = _snapshot(ckpts / '6')
  capsys.readouterr()
  _main(args)
  captured = capsys.readouterr()
  assert 'checkpoint step 6 in' in captured.err
  assert 'could not be read' in captured.err
  assert 'resumes from the older step 5' in captured.err
  assert 'Resuming from step 5 (epoch 1, batch 1)' in captured.out
  # Moved aside with its bytes, never deleted.
  moved = ckpts / '6.unreadable'
  assert {k.replace('6.unreadable', '6'): v[0]
          for k, v in _snapshot(moved).items()} == {
              k: v[0] for k, v in damaged.items()}
  _assert_same_run(workdir, uninterrupted, 4, 64)


def _two_checkpoints(folder):
  """Saves steps 1 and 2 (metas {'a': 1}, {'a': 2}); returns the state."""
  state = _stepped_state()
  with checkpoint.Checkpointer(folder, max_to_keep=3) as ckpt:
    ckpt.save(1, state, meta={'a': 1})
    ckpt.save(2, state, meta={'a': 2})
  return state


def test_no_readable_checkpoint_is_one_clear_error(tmp_path):
  _two_checkpoints(tmp_path)
  _damage(tmp_path / '2', 'arrays')
  _damage(tmp_path / '1', 'meta')
  before = _snapshot(tmp_path)
  with checkpoint.Checkpointer(tmp_path, max_to_keep=3) as ckpt:
    with pytest.raises(checkpoint.CheckpointError,
                       match=r'could be read \(tried, newest first: step 2: '
                       r'ValueError: .*; step 1: UnicodeDecodeError: .*\)\. '
                       'Nothing was moved or deleted'):
      ckpt.restore(_state(seed=1))
  assert _snapshot(tmp_path) == before


def test_unreadable_newest_are_moved_aside_with_a_free_name(tmp_path, caplog):
  # The Checkpointer alone (no training run): steps 3 and 2 cannot be read,
  # 1 can. Each unreadable one is renamed, bytes intact, to <step>.unreadable,
  # or <step>.unreadable2, ... when that exists from an earlier move.
  state = _stepped_state()
  with checkpoint.Checkpointer(tmp_path, max_to_keep=4) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, state, meta={'a': step})
  (tmp_path / '3.unreadable').mkdir()
  _damage(tmp_path / '3', 'meta')
  _damage(tmp_path / '2', 'arrays')
  damaged = {s: _snapshot(tmp_path / str(s)) for s in (2, 3)}
  with checkpoint.Checkpointer(tmp_path, max_to_keep=4) as ckpt:
    with caplog.at_level(logging.WARNING, logger='dynamic_at.checkpoint'):
      restored, _, meta = ckpt.restore(_state(seed=1))
    assert meta == {'a': 1}
    assert ckpt.all_steps() == (1,)
    moved = {2: str(tmp_path / '2.unreadable'),
             3: str(tmp_path / '3.unreadable2')}
    assert [(s, m) for s, m, _ in ckpt.moved_aside] == [(3, moved[3]),
                                                         (2, moved[2])]
    errors = {s: e for s, _, e in ckpt.moved_aside}
  assert errors[3].startswith('UnicodeDecodeError: ')
  assert errors[2].startswith('ValueError: ')
  assert [r.getMessage() for r in caplog.records
          if r.name == 'dynamic_at.checkpoint'] == [
      f'checkpoint step {s} in {tmp_path} could not be read ({errors[s]}); '
      f'moved aside to {moved[s]}' for s in (3, 2)]
  assert sorted(os.listdir(tmp_path)) == ['1', '2.unreadable', '3.unreadable',
                                          '3.unreadable2']
  for s in (2, 3):
    assert {k.replace(moved[s], str(tmp_path / str(s))): v[0]
            for k, v in _snapshot(moved[s]).items()} == {
                k: v[0] for k, v in damaged[s].items()}
  _assert_trees_equal(checkpoint.state_tree(restored),
                      checkpoint.state_tree(state))


def test_read_only_restore_skips_without_moving(tmp_path, caplog):
  state = _two_checkpoints(tmp_path)
  _damage(tmp_path / '2', 'meta')
  before = _snapshot(tmp_path)
  with checkpoint.Checkpointer(tmp_path, read_only=True) as ckpt:
    with caplog.at_level(logging.WARNING, logger='dynamic_at.checkpoint'):
      restored, _, meta = ckpt.restore(_state(seed=1))
    assert meta == {'a': 1}
    assert [(s, m) for s, m, _ in ckpt.moved_aside] == [(2, None)]
    error = ckpt.moved_aside[0][2]
    ckpt.save(3, state)  # skipped: read-only never writes
    ckpt.wait_until_finished()
  assert [r.getMessage() for r in caplog.records
          if r.name == 'dynamic_at.checkpoint'] == [
      f'checkpoint step 2 in {tmp_path} could not be read ({error}); skipped']
  assert sorted(os.listdir(tmp_path)) == ['1', '2']
  assert _snapshot(tmp_path) == before  # no file written, moved or touched
  # Opening a folder that does not exist read-only creates nothing.
  with checkpoint.Checkpointer(tmp_path / 'missing', read_only=True) as ckpt:
    with pytest.raises(FileNotFoundError):
      ckpt.restore(_state(seed=1))
  assert not (tmp_path / 'missing').exists()
  _assert_trees_equal(checkpoint.state_tree(restored),
                      checkpoint.state_tree(state))


# ---------------------------------------------------------------------------
# Failed writes
# ---------------------------------------------------------------------------


# Runs argv[2:] with files limited to argv[1] bytes: writes past it fail with
# EFBIG (as on a full disk) instead of killing the process. An exec wrapper,
# not preexec_fn, which is unsafe after JAX has started threads.
_LIMITED = ('import os, resource, signal, sys\n'
            'signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n'
            'n = int(sys.argv[1])\n'
            'resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))\n'
            'os.execv(sys.executable, [sys.executable] + sys.argv[2:])\n')


def _limited(max_bytes, *args):
  return [sys.executable, '-c', _LIMITED, str(max_bytes), *map(str, args)]


def test_failed_atomic_write_names_the_file_and_keeps_the_old_one(tmp_path):
  path = tmp_path / 'results.json'
  path.write_text('old')
  code = ('import sys\n'
          'from dynamic_at import files\n'
          'try:\n'
          '  files.atomic_write_text(sys.argv[1], "x" * 100000)\n'
          'except files.WriteError as e:\n'
          '  print(e.errno, e)\n')
  proc = subprocess.run(_limited(10000, '-c', code, path),
                        cwd=run_utils.REPO, capture_output=True, text=True,
                        check=True)
  assert proc.stdout.startswith(f'{errno.EFBIG} ')
  assert f"could not write '{path}'" in proc.stdout
  assert path.read_text() == 'old'
  assert os.listdir(tmp_path) == ['results.json']  # no temporary file left


def test_atomic_write_keeps_the_destination_mode(tmp_path):
  path = tmp_path / 'a.txt'
  files.atomic_write_text(path, 'one')
  assert path.stat().st_mode & 0o777 == 0o644
  path.chmod(0o640)
  files.atomic_write_text(path, 'two')
  assert path.stat().st_mode & 0o777 == 0o640 and path.read_text() == 'two'


def test_failed_checkpoint_write_is_clear_and_keeps_the_previous(
    tmp_path, subprocess_env):
  """Training resumed under a 200 kB file-size limit cannot write its next
  checkpoint (the CNN's arrays are larger): one clear error, and the
  previous checkpoint still restores to what it was."""
  _require(MNIST_DIR)
  workdir = tmp_path / 'run'
  args = [*TINY, '--num_epochs=2', f'--workdir={workdir}']
  _run('experiments.mnist', [*args, '--stop_after_steps=4'], subprocess_env)
  before = _snapshot(workdir / 'checkpoints')
  metrics = (workdir / 'metrics.jsonl').read_text()
  env = dict(subprocess_env)
  env.pop('JAX_COMPILATION_CACHE_DIR')  # its files would hit the limit too
  proc = subprocess.run(_limited(200_000, '-m', 'experiments.mnist', *args),
                        cwd=run_utils.REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 1, proc.stderr[-3000:]
  # The run's own error is one line (exit status 1, not an uncaught
  # exception). Orbax's writer thread logs its traceback too, usually before
  # that line; on a loaded machine it can come after it.
  errors = [line for line in proc.stderr.splitlines()
            if line.startswith('ERROR: could not write ')]
  assert len(errors) == 1, proc.stderr[-3000:]
  last = errors[0]
  assert 'checkpoint' in last and str(workdir / 'checkpoints') in last
  assert 'The checkpoints already there are unchanged (steps [4])' in last
  assert {k: v[0] for k, v in _snapshot(workdir / 'checkpoints').items()
          if '.orbax-checkpoint-tmp' not in k} == {
              k: v[0] for k, v in before.items()}
  assert (workdir / 'metrics.jsonl').read_text().startswith(metrics)
  _, _, meta = _restore(workdir, 4, 64)
  assert meta['step'] == 4


def test_nan_before_any_checkpoint_says_none_was_written(tmp_path):
  _require(MNIST_DIR)
  from experiments import config as config_lib  # pylint: disable=g-import-not-at-top
  from experiments import training  # pylint: disable=g-import-not-at-top
  config = config_lib.Config(
      dataset='mnist', workdir=str(tmp_path / 'run'), data_dir=str(MNIST_DIR),
      method='unsecured', num_epochs=1, batch_size=64, num_train_examples=256,
      learning_rate=1e30, log_every_steps=1, eval_batch_size=64)
  train_ds, test_ds = common.prepare(config)
  with pytest.raises(training.TrainingDivergedError) as info:
    training.train_loop(config, train_ds=train_ds, test_ds=test_ds)
  assert 'None' not in str(info.value)
  assert 'No checkpoint was written yet: a rerun starts from scratch' in str(
      info.value)


def test_stop_request_records_sigterm_and_restores_the_handlers():
  from experiments import preemption  # pylint: disable=g-import-not-at-top
  stop = preemption.StopRequest()
  with stop:
    assert not stop.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.should_stop(2) and stop.signal_name == 'SIGTERM'
    assert stop.exit_code == 143
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
  assert jax.process_count() == 1
