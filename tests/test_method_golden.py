"""Every method trains bit-identically to its golden file (tests/method_golden.py).

Exact (sha256 of every parameter, BatchNorm statistic and metric) where the
environment matches the one the file was recorded in (jax version, XLA_FLAGS,
CPU model: XLA's CPU code generation depends on each); elsewhere the integer
metrics must still be exact and the float sums agree to 1e-5 relative.
"""

import json

import numpy as np
import pytest

from dynamic_at import train
from tests import method_golden

with open(method_golden.GOLDEN) as _f:
  _GOLDEN = json.load(_f)


@pytest.mark.parametrize('name', sorted(method_golden.CASES))
def test_method_matches_golden(name):
  got = method_golden.run_case(name, train.make_train_step,
                               train.attack_params_for_epoch)
  want = _GOLDEN['cases'][name]
  exact = method_golden.fingerprint() == _GOLDEN['fingerprint']
  for part in ('params', 'batch_stats', 'metrics'):
    assert sorted(got[part]) == sorted(want[part]), part
    for leaf, w in want[part].items():
      g = got[part][leaf]
      assert (g['dtype'], g['shape']) == (w['dtype'], w['shape']), leaf
      if exact or not w['dtype'].startswith('float'):
        assert g['sha256'] == w['sha256'], (
            f'{name}: {part} {leaf} differs from the golden file '
            f'(sum {g["sum"]!r} vs {w["sum"]!r})')
      else:
        np.testing.assert_allclose(g['sum'], w['sum'], rtol=1e-5, atol=1e-6,
                                   err_msg=f'{name}: {part} {leaf}')
