"""The data-parallel step on 4 fake CPU devices and on 2 JAX processes gives
the parameters of the single-device step.

Each check runs in a subprocess: the number of CPU devices and the
distributed runtime are fixed when JAX starts.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
_WORKER = _ROOT / 'tests' / 'dp_worker.py'

_FOUR_DEVICES = r'''
import jax, numpy as np
import chex
from dynamic_at import parallel, train
from tests import dp_worker
assert jax.device_count() == 4, jax.devices()
one = parallel.make_mesh(jax.devices()[:1])
four = parallel.make_mesh()
for method in train.METHODS:
  s1, m1 = dp_worker.run(one, method, 3)
  s4, m4 = dp_worker.run(four, method, 3)
  # TRADES' attack starts 0.001 from the clean example, where the gradient of
  # its KL is nearly 0: the signs of its tiniest components follow the float
  # rounding of the device layout, so its steps (and parameters, ~7e-4 here)
  # differ more than the other methods' (<= 1.2e-7).
  tol = dict(rtol=1e-5, atol=2e-3 if method == 'trades' else 1e-6)
  chex.assert_trees_all_close(s1.params, s4.params, **tol)
  chex.assert_trees_all_close(s1.batch_stats, s4.batch_stats, **tol)
  np.testing.assert_array_equal(m1['steps'], m4['steps'])
# Dynamic with a threshold that freezes examples at different steps: every
# device runs its own loop and stops with its own slowest example.
_, probe = dp_worker.run(one, 'standard', 1)
c = float(np.median(np.asarray(probe['fosc'])))
ap = train.AttackParams.make(0.1, 0.025, 8, c)
s1, m1 = dp_worker.run(one, 'dynamic', 1, ap)
s4, m4 = dp_worker.run(four, 'dynamic', 1, ap)
steps = np.asarray(m4['steps'])
np.testing.assert_array_equal(steps, np.asarray(m1['steps']))
assert len(set(steps.tolist())) > 1, steps
iters = np.asarray(m4['iters'])
np.testing.assert_array_equal(iters, steps.reshape(4, -1).max(axis=1))
assert int(np.asarray(m1['iters'])[0]) == steps.max()
chex.assert_trees_all_close(s1.params, s4.params, rtol=1e-5, atol=1e-6)
print('OK', iters.tolist(), steps.tolist())
'''


def _env(**extra):
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(
      [str(_ROOT)] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
  env.update(extra)
  return env


def test_four_fake_devices_match_one_device():
  env = _env(XLA_FLAGS='--xla_force_host_platform_device_count=4')
  out = subprocess.run([sys.executable, '-c', _FOUR_DEVICES], env=env,
                       cwd=_ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout + out.stderr
  assert 'OK' in out.stdout


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
  port = _free_port()
  env = _env()
  procs = [
      subprocess.Popen([sys.executable, str(_WORKER),
                        str(tmp_path / f'p{i}.npz'), 'dynamic', '3', str(i),
                        '2', str(port)], env=env, cwd=_ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True) for i in range(2)
  ]
  single = subprocess.run([sys.executable, str(_WORKER),
                           str(tmp_path / 'single.npz'), 'dynamic', '3'],
                          env=env, cwd=_ROOT, capture_output=True, text=True,
                          timeout=600)
  assert single.returncode == 0, single.stdout + single.stderr
  for p in procs:
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
  ref = np.load(tmp_path / 'single.npz')
  for i in range(2):
    got = np.load(tmp_path / f'p{i}.npz')
    assert sorted(got.files) == sorted(ref.files)
    for k in ref.files:
      np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6,
                                 err_msg=k)
