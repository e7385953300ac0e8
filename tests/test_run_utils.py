"""Tests of the tests' own helpers: ``run_utils.require`` skips a test whose
shared data folder is missing, or fails it when CI asks for the data."""

import shutil
import subprocess

import pytest

from tests import run_utils

_ENV = 'DYNAMIC_AT_REQUIRE_DATA'


def test_env_var_name_is_the_one_ci_sets():
  assert run_utils.REQUIRE_DATA_ENV == _ENV
  ci = (run_utils.REPO / '.ci' / 'run').read_text()
  assert f'export {_ENV}=1' in ci


@pytest.mark.parametrize('value', [None, '', '0'])
def test_missing_folder_skips_without_the_env_var(tmp_path, monkeypatch,
                                                  value):
  if value is None:
    monkeypatch.delenv(_ENV, raising=False)
  else:
    monkeypatch.setenv(_ENV, value)
  missing = tmp_path / 'no_such_data'
  with pytest.raises(pytest.skip.Exception) as info:
    run_utils.require(missing)
  assert str(info.value) == f'shared data folder {missing} is missing'


@pytest.mark.parametrize('value', ['1', 'yes'])
def test_missing_folder_fails_with_the_env_var(tmp_path, monkeypatch, value):
  monkeypatch.setenv(_ENV, value)
  missing = tmp_path / 'no_such_data'
  with pytest.raises(pytest.fail.Exception) as info:
    run_utils.require(missing)
  # A failure, not a skip (Skipped and Failed are unrelated outcomes).
  assert not isinstance(info.value, pytest.skip.Exception)
  msg = str(info.value)
  assert f'shared data folder {missing} is missing' in msg
  assert f'put the data in {missing}' in msg
  assert _ENV in msg


@pytest.mark.parametrize('value', [None, '1'])
def test_existing_folder_passes_either_way(tmp_path, monkeypatch, value):
  if value is None:
    monkeypatch.delenv(_ENV, raising=False)
  else:
    monkeypatch.setenv(_ENV, value)
  assert run_utils.require(tmp_path) is None


def test_ci_script_stops_before_installing_when_data_is_missing(tmp_path):
  # The script's own copy in a repository whose ../shared/data has only mnist:
  # it names the missing folder and exits 1 before creating its virtualenv.
  repo = tmp_path / 'repo'
  (repo / '.ci').mkdir(parents=True)
  shutil.copy(run_utils.REPO / '.ci' / 'run', repo / '.ci' / 'run')
  (tmp_path / 'shared' / 'data' / 'mnist').mkdir(parents=True)
  proc = subprocess.run(['bash', str(repo / '.ci' / 'run')], cwd=tmp_path,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 1
  assert 'shared data folder ../shared/data/cifar10-jpeg-subset' in proc.stderr
  assert '../shared/data/mnist' not in proc.stderr
  assert not (repo / '.venv-ci').exists()
