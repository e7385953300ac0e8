"""The training loop of the experiment mains.

Builds the model, the optimiser's state and the jitted step of a
:class:`~experiments.config.Config` (:func:`setup`), then trains
(:func:`train_loop`): restoring the workdir's newest checkpoint
(:func:`restore_or_init`), fetching metrics once per ``--log_every_steps``
and checking them for NaN (:class:`TrainingDivergedError`), writing one
``metrics.jsonl`` row (:func:`epoch_row`), TensorBoard scalars and the FOSC
values per epoch, and checkpointing the state with the host-side
:class:`Progress`.
"""

import dataclasses
import math
import os
import sys
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dynamic_at import checkpoint
from dynamic_at import data
from dynamic_at import evaluation
from dynamic_at import methods as methods_lib
from dynamic_at import models
from dynamic_at import parallel
from dynamic_at import train
from experiments import preemption
from experiments.config import CHECKPOINT_DIR
from experiments.config import Config
from experiments.config import ConfigError
from experiments.config import TB_DIR
from experiments.config import model_kwargs_of
from experiments.inputs import augment
from experiments.outputs import append_metrics
from experiments.outputs import atomic_save_npy
from experiments.outputs import fosc_path
from experiments.outputs import is_main_process
from experiments.outputs import print_loud
from experiments.outputs import print_main
from experiments.outputs import to_host
from experiments.outputs import truncate_metrics

CHANCE_LOSS = math.log(10.0)  # cross-entropy of a uniform 10-class guess
_CHANCE_TOLERANCE = 0.05
# fold_in constants of the evaluation keys (from jax.random.key(seed); the
# training keys come from its split, see run_keys).
EVAL_KEY = 1_000_003
_EPOCH_EVAL_KEY = 1_000_033


class TrainingDivergedError(RuntimeError):
  """The training loss became NaN or infinite."""


# --------------------------------------------------------------------------
# Model, optimiser, schedules
# --------------------------------------------------------------------------


def build_model(config: Config):
  """The Flax module of ``config.model`` with its arguments
  (:func:`experiments.config.model_kwargs_of`)."""
  return models.get_model(config.model, **model_kwargs_of(config))


def run_keys(seed: int) -> Tuple[jax.Array, jax.Array]:
  """``(init_key, train_key)``: the parameter initialisation's key and the
  training step's base key (each step folds in its global step)."""
  init_key, train_key = jax.random.split(jax.random.key(seed))
  return init_key, train_key


def _lr_settings(config: Config, steps_per_epoch: int) -> Dict[str, Any]:
  """The arguments of :func:`train.learning_rate_schedule` (and of the
  optimiser's schedule) for a run."""
  return dict(learning_rate=config.learning_rate,
              steps_per_epoch=steps_per_epoch,
              lr_drop_epochs=config.lr_drop_epochs,
              keras_decay=config.keras_decay)


def initial_state(config: Config, input_shape: Tuple[int, ...],
                  steps_per_epoch: int) -> train.TrainState:
  """A fresh (unplaced) train state with the run's optimiser."""
  tx = train.make_optimizer(
      momentum=config.momentum, weight_decay=config.weight_decay,
      **_lr_settings(config, steps_per_epoch))
  init_key, _ = run_keys(config.seed)
  state = train.create_train_state(build_model(config), init_key, input_shape,
                                   tx)
  return state.replace(step=jnp.zeros((), jnp.int32))


def learning_rate_schedule(config: Config, steps_per_epoch: int):
  """The optax schedule the run's optimiser (:func:`initial_state`) uses."""
  return train.learning_rate_schedule(**_lr_settings(config, steps_per_epoch))


def method_of(config: Config) -> methods_lib.Method:
  """The :class:`~dynamic_at.methods.Method` of ``--method``."""
  return methods_lib.get_method(config.method)


def epoch_attack_params(config: Config, epoch: int,
                        method_state: Any) -> train.AttackParams:
  """The traced attack settings of ``epoch`` (the method's, from its host
  state, e.g. Curriculum's k): eps ramped over ``--eps_warmup_epochs``
  (:func:`train.warmup_eps`), the step size scaled with it."""
  eps = train.warmup_eps(epoch, config.eps, config.eps_warmup_epochs)
  return method_of(config).attack_params(
      epoch, eps, config.step_size * eps / config.eps, config.to_dict(),
      method_state)


def _float32_value(x: Any) -> float:
  """A float32 the training step used, logged as the shortest decimal that
  reads back as the same float32 (0.01, not 0.009999999776482582)."""
  return float(str(np.float32(x)))


# The step metrics the loop fetches and reduces, each by its declared kind
# (train.METRIC_KINDS); the others are not computed.
_STEP_METRICS = tuple(train.METRIC_KINDS)
# The metrics.jsonl name of a metric where it is not the metric's own.
_ROW_NAMES = {'loss': 'train_loss', 'accuracy': 'train_accuracy'}


def make_step(config: Config, mesh) -> Tuple[Any, List[int]]:
  """The jitted training step (state donated) and a trace counter.

  ``weighted`` (the authors' loss weighting, ``--loss_weighting`` after epoch
  0) and the attack parameters are traced, so neither recompiles the step.
  """
  step = train.make_train_step(
      method_of(config), mesh,
      fosc_centre_random_start=config.fosc_centre_random_start,
      unclipped_random_start=config.unclipped_random_start,
      beta=config.beta,
      start=None if config.attack_start == 'method' else config.attack_start,
      step_noise=config.fat_step_noise or None)
  traces = [0]

  def counted(state, batch, key, attack_params, weighted):
    traces[0] += 1
    state, metrics = step(state, batch, key, attack_params, weighted)
    return state, {k: metrics[k] for k in _STEP_METRICS}

  return jax.jit(counted, donate_argnums=0), traces


# --------------------------------------------------------------------------
# Host-side progress (checkpointed)
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Progress:
  """What the host tracks besides the train state; checkpointed with it.

  Attributes:
    step: global step (optimiser updates so far).
    method_state: the method's host state (Curriculum's current k; see
      :attr:`dynamic_at.methods.Method.initial_state`).
    fosc: ``f32[steps_per_epoch * batch_size]`` FOSC of the epoch's
      adversarial examples (batch ``i`` at ``[i * B, (i + 1) * B)``).
    sums, maxima: per metric of kind ``'mean'`` / ``'max'``
      (:data:`dynamic_at.train.METRIC_KINDS`), its sum / maximum over the
      epoch's batches so far.
    counts: per ``'mean'`` metric, the batches in its sum (fewer than
      ``num_batches`` only for a metric added since an older checkpoint of
      the epoch was written).
    num_batches: batches of the epoch folded in so far.
    epoch_time_s: wall time spent on the epoch so far.
    train_time_s: wall time of all training so far.
  """
  step: int
  method_state: Any
  fosc: np.ndarray
  sums: Dict[str, float] = dataclasses.field(default_factory=dict)
  maxima: Dict[str, float] = dataclasses.field(default_factory=dict)
  counts: Dict[str, int] = dataclasses.field(default_factory=dict)
  num_batches: int = 0
  epoch_time_s: float = 0.0
  train_time_s: float = 0.0

  _META = ('step', 'method_state', 'sums', 'maxima', 'counts', 'num_batches',
           'epoch_time_s', 'train_time_s')
  # Checkpoints written before the metrics were declared by kind.
  _OLD_SUMS = {'loss': 'loss_sum', 'accuracy': 'accuracy_sum',
               'steps_mean': 'steps_mean_sum'}
  _OLD_MAXIMA = ('steps_max', 'iters_max')

  def meta(self) -> Dict[str, Any]:
    return {k: getattr(self, k) for k in self._META}

  @classmethod
  def from_meta(cls, meta: Mapping[str, Any], fosc: np.ndarray) -> 'Progress':
    fosc = np.asarray(fosc, np.float32)
    if 'sums' in meta:
      return cls(fosc=fosc, **{k: meta[k] for k in cls._META})
    n = meta['num_batches']
    return cls(
        step=meta['step'], method_state=meta.get('curriculum_k'), fosc=fosc,
        sums={k: meta[old] for k, old in cls._OLD_SUMS.items()},
        maxima={k: meta[k] for k in cls._OLD_MAXIMA},
        counts={k: n for k in cls._OLD_SUMS}, num_batches=n,
        epoch_time_s=meta['epoch_time_s'], train_time_s=meta['train_time_s'])

  def mean(self, name: str) -> Optional[float]:
    """The epoch's mean of a ``'mean'`` metric (``None`` before any batch)."""
    n = self.counts.get(name, 0)
    return self.sums.get(name, 0.0) / n if n else None

  def reset_epoch(self) -> None:
    self.sums, self.maxima, self.counts = {}, {}, {}
    self.num_batches = 0
    self.epoch_time_s = 0.0
    self.fosc = np.zeros_like(self.fosc)


@dataclasses.dataclass
class Run:
  """The fixed parts of a training run (no mutable training state)."""
  config: Config
  mesh: Any
  train_ds: data.Dataset
  test_ds: data.Dataset
  steps_per_epoch: int
  key: jax.Array
  step_fn: Any
  traces: List[int]
  ckpt: checkpoint.Checkpointer
  writer: Any  # tensorboardX.SummaryWriter on process 0, else None
  stop: preemption.StopRequest = dataclasses.field(
      default_factory=preemption.StopRequest)

  @property
  def total_steps(self) -> int:
    return self.config.num_epochs * self.steps_per_epoch


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


def model_variables(state: train.TrainState) -> Dict[str, Any]:
  """The model's ``{'params', 'batch_stats'}`` of ``state``."""
  return {'params': state.params, 'batch_stats': state.batch_stats}


def _fresh_progress(config: Config, steps_per_epoch: int) -> Progress:
  return Progress(step=0,
                  method_state=method_of(config).initial_state(
                      config.to_dict()),
                  fosc=np.zeros(steps_per_epoch * config.batch_size,
                                np.float32))


def restore_or_init(run: Run, template: train.TrainState
                    ) -> Tuple[train.TrainState, Progress]:
  """The newest checkpoint of the run, or the fresh state."""
  progress = _fresh_progress(run.config, run.steps_per_epoch)
  if run.ckpt.latest_step() is None:
    return template, progress
  state, arrays, meta = run.ckpt.restore(
      template, arrays_target={'fosc': progress.fosc})
  for name, expected in (('steps_per_epoch', run.steps_per_epoch),
                         ('batch_size', run.config.batch_size)):
    if meta.get(name) != expected:
      raise ConfigError(
          f'--workdir={run.config.workdir}: its checkpoint was written with '
          f'{name}={meta.get(name)} but this run has {expected} (did the '
          'training data change? --data_dir points at '
          f'{run.config.data_dir!r}).')
  for step, moved_to, error in run.ckpt.moved_aside:
    print_loud(f'WARNING: checkpoint step {step} in {run.ckpt.directory} '
               f'could not be read ({error}); it was moved aside to {moved_to} '
               '(not deleted) and the run resumes from the older step '
               f'{meta.get("step")}.')
  progress = Progress.from_meta(meta, arrays['fosc'])
  print_main(f'Resuming from step {progress.step} (epoch '
             f'{progress.step // run.steps_per_epoch}, batch '
             f'{progress.step % run.steps_per_epoch}) in {run.ckpt.directory}')
  return state, progress


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                            for x in jax.tree.leaves(tree)]))


def _last_good(run: Run) -> str:
  """Where a rerun after a divergence would resume from."""
  run.ckpt.wait_until_finished()
  last = run.ckpt.latest_step()
  if last is None:
    return ('No checkpoint was written yet: a rerun starts from scratch (in '
            f'{run.ckpt.directory}).')
  return f'The last good checkpoint is step {last} in {run.ckpt.directory}.'


def _save(run: Run, state: train.TrainState, progress: Progress) -> None:
  """Checkpoints ``state`` unless its parameters are no longer finite."""
  if not bool(to_host(_all_finite((state.params, state.batch_stats)))):
    raise TrainingDivergedError(
        f'the parameters are NaN or infinite after step {progress.step}; '
        f'stopping without saving them. {_last_good(run)} Try a lower '
        '--learning_rate or --eps_warmup_epochs.')
  meta = dict(progress.meta(), steps_per_epoch=run.steps_per_epoch,
              batch_size=run.config.batch_size,
              num_train_examples=run.train_ds.num_examples,
              train_data_source=run.train_ds.source)
  run.ckpt.save(progress.step, state, arrays={'fosc': progress.fosc},
                meta=meta)


def _flush(run: Run, pending: List[Tuple[int, Dict[str, Any]]],
           progress: Progress, since: float) -> float:
  """Fetches the pending steps' metrics (one transfer), checks them for NaN
  and folds them into ``progress``. Returns the time of the flush."""
  if not pending:
    return since
  fetched = to_host([m for _, m in pending])
  batch = run.config.batch_size
  for (index, _), m in zip(pending, fetched):
    loss = float(m['loss'])
    if not math.isfinite(loss):
      epoch = (progress.step - 1) // run.steps_per_epoch
      raise TrainingDivergedError(
          f'the training loss is {loss} at step '
          f'{epoch * run.steps_per_epoch + index + 1} (epoch {epoch}, batch '
          f'{index}); stopping without saving the diverged state. '
          f'{_last_good(run)} Try a lower --learning_rate or '
          '--eps_warmup_epochs.')
    for name, kind in train.METRIC_KINDS.items():
      value = m[name]
      if kind == 'mean':
        progress.sums[name] = progress.sums.get(name, 0.0) + float(value)
        progress.counts[name] = progress.counts.get(name, 0) + 1
      elif kind == 'max':
        value = value.item() if hasattr(value, 'item') else value
        progress.maxima[name] = max(progress.maxima.get(name, value), value)
      elif kind == 'per_example':
        getattr(progress, name)[index * batch:(index + 1) * batch] = (
            np.asarray(value, np.float32))
      else:
        raise ValueError(f'metric {name}: unknown kind {kind!r}')
    progress.num_batches += 1
  pending.clear()
  now = time.time()
  progress.epoch_time_s += now - since
  progress.train_time_s += now - since
  return now


def epoch_row(run: Run, epoch: int, progress: Progress,
              attack_params: train.AttackParams) -> Dict[str, Any]:
  """The epoch's metrics.jsonl row.

  Keys: ``epoch`` (from 0), ``step`` (global step at its end); every step
  metric reduced by its kind (:data:`dynamic_at.train.METRIC_KINDS`):
  ``train_loss`` / ``train_accuracy`` (mean over batches of the adversarial
  batch's training loss / accuracy as a fraction), ``steps_mean`` (mean PGD
  steps per example), ``steps_max`` (most steps of an example),
  ``iters_max`` (most loop iterations a device ran), the cost per example:
  ``grad_evals`` (attack input-gradient evaluations an example got),
  ``attack_rows`` (rows the attack's evaluations covered, frozen and padding
  rows included), ``train_passes`` (training forward and backward passes),
  ``clean_forwards`` (extra inference forward passes); then ``c_t``
  (the FOSC threshold, else ``None``), ``tau`` (FAT's, else ``None``),
  ``num_steps`` (K, or Curriculum's k), ``eps``, ``step_size``, ``lr`` (at
  the epoch's first step), ``epoch_time_s``, ``train_time_s`` (cumulative);
  :func:`evaluate_epoch` adds ``test_clean`` and ``test_pgd20`` (percent)
  when due.

  ``c_t``, ``tau``, ``num_steps``, ``eps`` and ``step_size`` are those of
  ``attack_params``, the settings the epoch's steps used, and ``lr`` is the
  optimiser's own schedule at the epoch's first step; the float32 values are
  logged as the shortest decimals that read back as them.
  """
  c_stop = float(attack_params.c_stop)
  lr = learning_rate_schedule(run.config, run.steps_per_epoch)(
      jnp.int32(epoch * run.steps_per_epoch))
  row = {'epoch': epoch, 'step': progress.step}
  for name, kind in train.METRIC_KINDS.items():
    if kind == 'mean':
      row[_ROW_NAMES.get(name, name)] = progress.mean(name)
    elif kind == 'max':
      row[_ROW_NAMES.get(name, name)] = progress.maxima.get(name, 0)
  uses_tau = method_of(run.config).stop.name == 'fat'
  row.update({
      'c_t': _float32_value(c_stop) if math.isfinite(c_stop) else None,
      'tau': int(attack_params.tau) if uses_tau else None,
      'num_steps': int(attack_params.num_steps),
      'eps': _float32_value(attack_params.eps),
      'step_size': _float32_value(attack_params.step_size),
      'lr': _float32_value(lr),
      'epoch_time_s': progress.epoch_time_s,
      'train_time_s': progress.train_time_s,
  })
  return row


def evaluate_epoch(run: Run, state: train.TrainState) -> Dict[str, float]:
  """Clean and PGD-20 test accuracy (%) on ``--eval_every_examples``."""
  config = run.config
  n = min(config.eval_every_examples, run.test_ds.num_examples)
  res = evaluation.evaluate(
      state.apply_fn, model_variables(state), run.test_ds.images[:n],
      run.test_ds.labels[:n], eps=config.eps,
      key=jax.random.fold_in(jax.random.key(config.seed), _EPOCH_EVAL_KEY),
      batch_size=evaluation_batch_size(config, n), mesh=run.mesh,
      attacks=('clean', 'pgd20'))
  return {'test_clean': res['white_box']['clean'],
          'test_pgd20': res['white_box']['pgd20']}


def evaluation_batch_size(config: Config, n: int) -> int:
  """``--eval_batch_size``, or less for fewer examples (still a multiple of
  the device count)."""
  devices = jax.device_count()
  return min(config.eval_batch_size, -(-n // devices) * devices)


def chance_warning(config: Config, row: Mapping[str, Any],
                   when: str) -> None:
  """Warns when the adversarial training loss is at chance level, ln(10).

  On MNIST at eps 0.3 this is PGD training's known failure to leave chance
  level; on CIFAR-10 it is expected early on (e.g. after the first epoch of a
  subset, a few dozen steps), so there the message only says what to try if
  it lasts.
  """
  if not method_of(config).adversarial:
    return
  if abs(row['train_loss'] - CHANCE_LOSS) >= _CHANCE_TOLERANCE:
    return
  head = (f'WARNING: {when} the adversarial training loss is '
          f'{row["train_loss"]:.4f}, about ln(10) = {CHANCE_LOSS:.4f}: the '
          'model is at chance level')
  if config.dataset == 'mnist':
    print_loud(f'{head} and may be stuck there (a known failure of PGD '
               'training on MNIST at eps 0.3). Try --eps_warmup_epochs=5 (ramp '
               'eps up over 5 epochs) or a lower --learning_rate.')
  else:
    print_loud(f'{head}. If it is still there after several epochs, try '
               '--eps_warmup_epochs=5 (ramp eps up over 5 epochs) or a lower '
               '--learning_rate.')


def _log_epoch(run: Run, row: Mapping[str, Any], fosc: np.ndarray) -> None:
  """Writes the epoch's row, TensorBoard scalars and FOSC values."""
  if not is_main_process():
    return
  epoch = row['epoch']
  append_metrics(run.config.workdir, row)
  adversarial = method_of(run.config).adversarial
  if adversarial:
    atomic_save_npy(fosc_path(run.config.workdir, epoch), fosc)
  if run.writer is not None:
    for k, v in row.items():
      if k != 'epoch' and isinstance(v, (int, float)) and v is not None:
        run.writer.add_scalar(k, v, epoch)
    if adversarial:
      run.writer.add_histogram('fosc', fosc, epoch)
    run.writer.flush()
  parts = [f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
           for k, v in row.items() if v is not None]
  print_main('epoch summary: ' + ' '.join(parts))


def _end_epoch(run: Run, state: train.TrainState, progress: Progress,
               epoch: int, attack_params: train.AttackParams) -> None:
  """Logs the finished epoch, evaluates it if due and updates k."""
  config = run.config
  row = epoch_row(run, epoch, progress, attack_params)
  last = epoch == config.num_epochs - 1
  if config.eval_every and ((epoch + 1) % config.eval_every == 0 or last):
    row.update(evaluate_epoch(run, state))
  _log_epoch(run, row, progress.fosc)
  if epoch == 0:
    chance_warning(config, row, 'after the first epoch')
  progress.method_state = method_of(config).next_state(
      progress.method_state, row, config.to_dict())
  progress.reset_epoch()


def _epoch_batches(run: Run, epoch: int, skip: int) -> Iterator[
    Tuple[int, Dict[str, np.ndarray]]]:
  """``(index, local batch)`` of ``epoch`` from batch ``skip`` on."""
  batches = data.epoch_batches(
      run.train_ds, run.config.batch_size, seed=run.config.seed, epoch=epoch,
      process_index=jax.process_index(), process_count=jax.process_count())
  for i, local in enumerate(batches):
    if i >= skip:
      yield i, local


def train_epoch(run: Run, state: train.TrainState, progress: Progress,
                stop_at: int) -> Tuple[train.TrainState, bool]:
  """Trains from ``progress.step`` to the end of its epoch (or ``stop_at``).

  Returns:
    ``(state, finished_epoch)``.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  config = run.config
  epoch, skip = divmod(progress.step, run.steps_per_epoch)
  attack_params = epoch_attack_params(config, epoch, progress.method_state)
  ap = parallel.replicate(attack_params, run.mesh)
  weighted = parallel.replicate(
      jnp.asarray(config.loss_weighting and epoch > 0), run.mesh)
  pending = []
  since = time.time()
  bar = tqdm(total=run.steps_per_epoch, initial=skip,
             desc=f'epoch {epoch + 1}/{config.num_epochs}', dynamic_ncols=True,
             disable=not is_main_process(), file=sys.stdout)
  c_t = float(attack_params.c_stop)
  try:
    for index, local in _epoch_batches(run, epoch, skip):
      local = dict(local, image=augment(config, local['image'], epoch, index))
      batch = parallel.global_batch(local, run.mesh)
      state, metrics = run.step_fn(state, batch, run.key, ap, weighted)
      pending.append((index, metrics))
      progress.step += 1
      bar.update(1)
      end = index == run.steps_per_epoch - 1
      # Every process asks at every step (the preemption sync point needs it).
      interrupted = run.stop.should_stop(progress.step)
      save = end or progress.step == stop_at or interrupted or (
          config.checkpoint_every_steps and
          progress.step % config.checkpoint_every_steps == 0)
      if save or progress.step % config.log_every_steps == 0:
        since = _flush(run, pending, progress, since)
        mean = lambda name: progress.mean(name) or 0.0
        bar.set_postfix(loss=f'{mean("loss"):.4f}',
                        adv_acc=f'{mean("accuracy"):.4f}',
                        pgd_steps=f'{mean("steps_mean"):.2f}',
                        c_t=f'{c_t:.3f}' if math.isfinite(c_t) else '-')
      if end:
        _end_epoch(run, state, progress, epoch, attack_params)
      if save:
        _save(run, state, progress)
      if (progress.step == stop_at or interrupted) and not end:
        return state, False
      if interrupted:
        break
  finally:
    bar.close()
  return state, True


@dataclasses.dataclass
class TrainResult:
  """What :func:`train_loop` returns."""
  state: train.TrainState
  finished: bool
  step: int
  num_traces: int
  train_time_s: float
  run: Run


def setup(config: Config, *, train_ds: data.Dataset,
          test_ds: data.Dataset) -> Tuple[Run, train.TrainState]:
  """Builds the mesh, the replicated fresh state, the step and the
  checkpointer of a validated config."""
  mesh = parallel.make_mesh()
  steps_per_epoch = data.num_batches(train_ds.num_examples, config.batch_size,
                                     drop_remainder=True)
  state = parallel.replicate(
      initial_state(config, train_ds.image_shape, steps_per_epoch), mesh)
  step_fn, traces = make_step(config, mesh)
  writer = None
  if is_main_process():
    import tensorboardX  # pylint: disable=g-import-not-at-top
    writer = tensorboardX.SummaryWriter(os.path.join(config.workdir, TB_DIR))
  run = Run(config=config, mesh=mesh, train_ds=train_ds, test_ds=test_ds,
            steps_per_epoch=steps_per_epoch,
            key=parallel.replicate(run_keys(config.seed)[1], mesh),
            step_fn=step_fn, traces=traces,
            ckpt=checkpoint.Checkpointer(
                os.path.join(config.workdir, CHECKPOINT_DIR),
                max_to_keep=config.keep_checkpoints),
            writer=writer,
            stop=preemption.StopRequest(distributed=config.multihost))
  return run, state


def train_loop(config: Config, *, train_ds: data.Dataset,
               test_ds: data.Dataset) -> TrainResult:
  """Trains (resuming from the workdir's newest checkpoint) until
  ``num_epochs`` or ``stop_after_steps``.

  ``config`` must be validated and the workdir prepared (:func:`prepare`).
  """
  run, state = setup(config, train_ds=train_ds, test_ds=test_ds)
  try:
    with run.stop:
      state, progress = restore_or_init(run, state)
      if is_main_process():
        truncate_metrics(config.workdir,
                         progress.step // run.steps_per_epoch)
      stop_at = min(config.stop_after_steps or run.total_steps,
                    run.total_steps)
      while progress.step < stop_at and not run.stop.stopped:
        state, _ = train_epoch(run, state, progress, stop_at)
    if run.stop.stopped:
      run.ckpt.wait_until_finished()
      raise preemption.TrainingInterrupted(
          f'{run.stop.signal_name}: stopped after step {progress.step} of '
          f'{run.total_steps} (epoch {progress.step // run.steps_per_epoch}, '
          f'batch {progress.step % run.steps_per_epoch}) and saved it as '
          f'checkpoint step {run.ckpt.latest_step()} in {run.ckpt.directory}; '
          'metrics.jsonl holds the finished epochs, the checkpoint the '
          'unfinished one. Rerun the same command to resume from it.',
          run.stop.signal_name, run.stop.exit_code)
    finished = progress.step >= run.total_steps
    if not finished:
      print_main(f'Stopped at step {progress.step} of {run.total_steps} '
                 '(--stop_after_steps); rerun without it to resume.')
  except KeyboardInterrupt:
    run.ckpt.wait_until_finished()
    print_main(f'\nInterrupted. The newest checkpoint is step '
               f'{run.ckpt.latest_step()} in {run.ckpt.directory}; rerun the '
               'same command to resume from it.')
    raise
  finally:
    run.ckpt.close()
    if run.writer is not None:
      run.writer.close()
  return TrainResult(state=state, finished=finished, step=progress.step,
                     num_traces=run.traces[0],
                     train_time_s=progress.train_time_s, run=run)
