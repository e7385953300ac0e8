"""The golden file of the training methods: parameter checksums after 3 steps.

Recorded before the methods became values (issue 25) with the step of that
commit, so that the reshaped code can be checked to train bit-identically.
``tests/test_method_golden.py`` recomputes every case and compares it with
``tests/testdata/method_golden.json``. Regenerate (only on purpose, and say
why in the commit) with::

  python -m tests.method_golden
"""

import hashlib
import json
import os
import platform
import sys

import jax
import numpy as np

from dynamic_at import parallel
from dynamic_at import train
from tests import dp_worker

GOLDEN = os.path.join(os.path.dirname(__file__), 'testdata',
                      'method_golden.json')
STEPS = 3

# name -> (method, per-epoch schedule settings, make_train_step options,
# weighted). Epoch 1 of a T' = 3 schedule: Dynamic's c_t is 1/3.
CASES = {
    'unsecured': ('unsecured', {}, {}, False),
    'standard': ('standard', {}, {}, False),
    'curriculum_k2': ('curriculum', {'curriculum_steps': 2}, {}, False),
    'dynamic': ('dynamic', {}, {}, False),
    'dynamic_compact': ('dynamic', {}, {'compact': True}, False),
    'dynamic_no_compact': ('dynamic', {}, {'compact': False}, False),
    'dynamic_weighted': ('dynamic', {}, {}, True),
    'dynamic_authors_start': ('dynamic', {}, {
        'fosc_centre_random_start': True, 'unclipped_random_start': True},
                              False),
}
SCHEDULE = dict(eps=0.1, step_size=0.025, num_steps=5, c_max=0.5, t_prime=3)
EPOCH = 1


def fingerprint():
  """What bit-identical results depend on besides the code."""
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          cpu = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  return {'jax': jax.__version__, 'jaxlib': jax.lib.__version__
          if hasattr(jax.lib, '__version__') else None,
          'backend': jax.default_backend(),
          'devices': jax.device_count(),
          'xla_flags': os.environ.get('XLA_FLAGS', ''), 'cpu': cpu}


def _digest(a):
  a = np.ascontiguousarray(np.asarray(a))
  return {'sha256': hashlib.sha256(a.tobytes()).hexdigest(),
          'sum': float(np.sum(a.astype(np.float64))),
          'dtype': str(a.dtype), 'shape': list(a.shape)}


def _tree_digest(tree):
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): _digest(leaf) for path, leaf in flat}


def run_case(name, make_step, attack_params_for):
  """Digests of params, batch_stats and the last step's metrics.

  Args:
    name: a key of :data:`CASES`.
    make_step: ``(method, mesh, **options) -> train_step``.
    attack_params_for: ``(method, epoch, **schedule) -> AttackParams``.
  """
  method, extra, options, weighted = CASES[name]
  mesh = parallel.make_mesh()
  tx = train.make_optimizer(learning_rate=0.05, momentum=0.9,
                            weight_decay=1e-4, steps_per_epoch=100)
  state = train.create_train_state(dp_worker.TinyCNN(), jax.random.key(0),
                                   dp_worker.SHAPE, tx)
  state = parallel.replicate(state, mesh)
  batch = parallel.global_batch(dp_worker.fixed_batch(), mesh)
  ap = attack_params_for(method, EPOCH, **SCHEDULE, **extra)
  step = jax.jit(make_step(method, mesh, **options))
  metrics = None
  for _ in range(STEPS):
    state, metrics = step(state, batch, jax.random.key(1), ap, weighted)
  keep = ('loss', 'accuracy', 'steps', 'fosc')
  return {'params': _tree_digest(state.params),
          'batch_stats': _tree_digest(state.batch_stats),
          'metrics': {k: _digest(metrics[k]) for k in keep}}


def main():
  out = {'fingerprint': fingerprint(), 'steps': STEPS,
         'cases': {name: run_case(name, train.make_train_step,
                                  train.attack_params_for_epoch)
                   for name in CASES}}
  with open(GOLDEN, 'w') as f:
    json.dump(out, f, indent=1, sort_keys=True)
    f.write('\n')
  print(f'wrote {GOLDEN}: {len(CASES)} cases, {out["fingerprint"]}')


if __name__ == '__main__':
  sys.exit(main())
