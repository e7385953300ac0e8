"""Paths and helpers of the tests that run the entry points."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data'
MNIST_DIR = SHARED_DATA / 'mnist'
CIFAR_DIR = SHARED_DATA / 'cifar10-jpeg-subset'

# Tests compile tiny models on CPU: XLA's backend optimisations cost more
# compile time than they save at this size. All subprocess runs share one
# persistent compilation cache.
FAST_XLA = ('--xla_backend_optimization_level=0 '
            '--xla_llvm_disable_expensive_passes=true')


# Set (to anything but '' or '0') by .ci/run: a missing shared data folder
# fails the test instead of skipping it.
REQUIRE_DATA_ENV = 'DYNAMIC_AT_REQUIRE_DATA'


def require(path):
  """Skips the test when a shared data folder is missing, or fails it when
  ``DYNAMIC_AT_REQUIRE_DATA`` is set (CI must not pass by skipping)."""
  path = Path(path)
  if path.exists():
    return
  if os.environ.get(REQUIRE_DATA_ENV, '') not in ('', '0'):
    pytest.fail(f'shared data folder {path} is missing and '
                f'{REQUIRE_DATA_ENV} is set: put the data in {path} '
                f'(the repository expects ../shared/data/ next to it; see '
                f'README "Set up"), or unset {REQUIRE_DATA_ENV} to skip the '
                f'tests that need it', pytrace=False)
  pytest.skip(f'shared data folder {path} is missing')


def run(module, args, env, expect_ok=True):
  """Runs ``python -m module args`` in the repository root."""
  proc = subprocess.run([sys.executable, '-m', module, *map(str, args)],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)
  if expect_ok and proc.returncode:
    raise AssertionError(f'{module} failed ({proc.returncode}):\n'
                         f'{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}')
  return proc


def start(module, args, env):
  """Starts ``python -m module args`` in the background (text pipes)."""
  return subprocess.Popen([sys.executable, '-m', module, *map(str, args)],
                          cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def free_port():
  """A TCP port on localhost that is free now."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]
