"""Shared helpers of the benchmarks: A/B timing and the machine line.

The project's timing rule: time the sides alternately (A, B, A, B, ...) on
the same warm process and report the median of the pairwise ratios, so that
load from other processes on a shared machine hits both sides alike.
"""

import os
import platform
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np


def block(out):
  """Waits for a result: JAX arrays (any pytree) or anything else as is."""
  try:
    import jax  # pylint: disable=g-import-not-at-top
    return jax.block_until_ready(out)
  except ImportError:
    return out


def time_call(fn: Callable[[], object]) -> float:
  """Seconds one call of ``fn()`` takes, result ready (``block``)."""
  t = time.perf_counter()
  block(fn())
  return time.perf_counter() - t


def alternate(sides: Mapping[str, Callable[[], object]], rounds: int,
              warmup: int = 2, reps: int = 1) -> Dict[str, List[float]]:
  """Times every side once per round, in turn, after ``warmup`` rounds.

  Args:
    sides: name -> zero-argument callable (it runs one unit of work).
    rounds: timed rounds; each gives one time per side.
    warmup: untimed rounds first (compilation, caches, thread pools).
    reps: calls per timed sample (the sample is their mean).

  Returns:
    name -> list of ``rounds`` seconds per call.
  """
  for _ in range(warmup):
    for fn in sides.values():
      time_call(fn)
  out = {name: [] for name in sides}
  for _ in range(rounds):
    for name, fn in sides.items():
      t = time.perf_counter()
      for _ in range(reps):
        block(fn())
      out[name].append((time.perf_counter() - t) / reps)
  return out


def median_ratio(num: Sequence[float], den: Sequence[float]) -> float:
  """Median over rounds of ``num[i] / den[i]`` (the project's A/B rule)."""
  return float(np.median(np.asarray(num) / np.asarray(den)))


def ms(ts: Sequence[float]) -> float:
  return 1e3 * float(np.median(ts))


def _cpuinfo() -> Dict[str, str]:
  info = {}
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if ':' in line:
          k, v = line.split(':', 1)
          info.setdefault(k.strip(), v.strip())
  except OSError:
    pass
  return info


def cpu_description() -> Dict[str, object]:
  """CPU model, MHz, vector flags and core count from ``/proc/cpuinfo``."""
  info = _cpuinfo()
  flags = set(info.get('flags', '').split())
  vec = [f for f in ('avx512f', 'avx512_bf16', 'avx512_vnni', 'avx2', 'fma')
         if f in flags]
  return {
      'model': info.get('model name', platform.processor() or 'unknown'),
      'mhz': float(info['cpu MHz']) if 'cpu MHz' in info else None,
      'flags': vec,
      'cores': os.cpu_count(),
  }


def peak_flops_per_cycle_f32(flags: Sequence[str]) -> int:
  """Theoretical float32 FLOP per cycle per core from the vector width,
  assuming two FMA units (2 FMA x lanes x 2 FLOP). A guess: some cores have
  one 512-bit FMA unit or split 512-bit ops into two 256-bit halves."""
  lanes = 16 if 'avx512f' in flags else 8 if 'avx2' in flags else 4
  return 2 * lanes * 2


def versions() -> str:
  parts = []
  try:
    import jax  # pylint: disable=g-import-not-at-top
    parts.append(f'jax {jax.__version__}')
  except ImportError:
    pass
  try:
    import torch  # pylint: disable=g-import-not-at-top
    parts.append(f'torch {torch.__version__} ({torch.get_num_threads()} '
                 'threads)')
  except ImportError:
    pass
  return ', '.join(parts)


def machine_line() -> str:
  """One line: CPU model, clock, vector flags, cores, library versions."""
  d = cpu_description()
  mhz = f", {d['mhz']:.0f} MHz" if d['mhz'] else ''
  line = (f"machine: {d['model']}{mhz}, flags {'/'.join(d['flags']) or '-'}, "
          f"{d['cores']} cores; {versions()}")
  try:
    line += f'; load avg {os.getloadavg()[0]:.1f}'
  except OSError:
    pass
  xla = os.environ.get('XLA_FLAGS')
  if xla:
    line += f'; XLA_FLAGS={xla}'
  return line


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
  """A small markdown table."""
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '---|' * len(header)]
  for r in rows:
    lines.append('| ' + ' | '.join(
        f'{c:.4g}' if isinstance(c, float) else str(c) for c in r) + ' |')
  return '\n'.join(lines)


# Input shapes and the paper's eps of the two paper CNNs.
IMAGE_SHAPES = {'mnist_cnn': (28, 28, 1), 'cifar10_cnn': (32, 32, 3)}
PAPER_EPS = {'mnist_cnn': 0.3, 'cifar10_cnn': 8 / 255}


def synthetic_state_and_batch(model_name: str, batch: int, *,
                              steps_per_epoch: int):
  """``(state, batch)``: a fresh train state of ``model_name`` (key 0, SGD
  lr 0.01, momentum 0.9, no weight decay) and ``batch`` uniform-noise images
  with random labels (numpy seed 0)."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  from dynamic_at import models
  from dynamic_at import train
  shape = IMAGE_SHAPES[model_name]
  rng = np.random.default_rng(0)
  images = jnp.float32(rng.uniform(size=(batch,) + shape))
  labels = jnp.int32(rng.integers(0, 10, batch))
  tx = train.make_optimizer(learning_rate=0.01, momentum=0.9,
                            weight_decay=0.0, steps_per_epoch=steps_per_epoch)
  state = train.create_train_state(models.get_model(model_name),
                                   jax.random.key(0), shape, tx)
  return state, {'image': images, 'label': labels}


def paper_step_inputs(model_name: str, batch: int, num_steps: int):
  """``(state, batch, attack_params, key)`` of a PGD-``num_steps`` training
  step of ``model_name`` (:func:`synthetic_state_and_batch`, 100 steps per
  epoch) with the paper's eps and step eps / 4, key 1."""
  # pylint: disable=g-import-not-at-top
  import jax
  from dynamic_at import train
  state, images = synthetic_state_and_batch(model_name, batch,
                                            steps_per_epoch=100)
  eps = PAPER_EPS[model_name]
  return (state, images, train.AttackParams.make(eps, eps / 4, num_steps),
          jax.random.key(1))


def print_step_ab(args, sides: Mapping[str, Callable[..., object]], state0,
                  batch, key, ap, *, column: str) -> None:
  """Times two training steps of one model alternately (``args.rounds``
  rounds after a warm-up round) and prints the machine line, the largest
  parameter difference after one step from ``state0``, a table and the
  median ratio of the first side's time to the second's.

  Args:
    args: the benchmark's arguments (``model``, ``num_steps``, ``batch``,
      ``rounds``).
    sides: two ``label -> step(state, batch, key, ap)``, compiled already.
    state0, batch, key, ap: the step's inputs.
    column: the first column's header.
  """
  import jax  # pylint: disable=g-import-not-at-top
  (a, step_a), (b, step_b) = sides.items()
  params = [step(state0, batch, key, ap)[0].params for step in (step_a, step_b)]
  diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(*map(jax.tree.leaves, params)))
  times = alternate({name: (lambda f=f: f(state0, batch, key, ap)[1]['loss'])
                     for name, f in sides.items()},
                    rounds=args.rounds, warmup=1)
  print(machine_line())
  print(f'{args.model}, PGD-{args.num_steps} training step, batch '
        f'{args.batch}, {args.rounds} A/B rounds; max |param diff| after one '
        f'step {diff:.2e}')
  print(table([column, 'median ms', 'examples/s'],
              [[name, ms(times[name]), args.batch / np.median(times[name])]
               for name in (a, b)]))
  print(f'median of pairwise time ratios {a} / {b}: '
        f'{median_ratio(times[a], times[b]):.2f}')


def mnist_batch(batch: int, seed: int = 0, data_dir: Optional[str] = None):
  """A batch of real MNIST training images if ``data_dir`` holds them, else
  uniform noise images with random labels (shape [B, 28, 28, 1])."""
  rng = np.random.default_rng(seed)
  if data_dir:
    from dynamic_at import data  # pylint: disable=g-import-not-at-top
    ds = data.load_dataset('mnist', 'train', data_dir=data_dir)
    idx = rng.choice(len(ds.labels), batch, replace=False)
    return ds.images[idx], ds.labels[idx]
  return (rng.uniform(size=(batch, 28, 28, 1)).astype(np.float32),
          rng.integers(0, 10, batch).astype(np.int32))


def torch_threads(n: Optional[int] = None) -> int:
  """Sets PyTorch's intra-op threads to ``n`` (default: all cores, as XLA)."""
  import torch  # pylint: disable=g-import-not-at-top
  n = n or os.cpu_count()
  torch.set_num_threads(n)
  return n
