"""Shared fixtures of the tests that run the entry points in subprocesses."""

import os

import pytest

from tests import run_utils


@pytest.fixture(scope='session')
def subprocess_env(tmp_path_factory):
  """Environment of entry-point subprocesses: the repository on the path,
  fast CPU compiles, one persistent compilation cache per test session."""
  env = dict(os.environ)
  env.update(
      PYTHONPATH=os.pathsep.join([str(run_utils.REPO),
                                  env.get('PYTHONPATH', '')]),
      JAX_PLATFORMS='cpu', XLA_FLAGS=run_utils.FAST_XLA,
      JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.getbasetemp() /
                                    'jax_cache'),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  return env
