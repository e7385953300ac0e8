"""Stopping a training run cleanly on SIGTERM (preemption) and SIGINT.

The training loop asks :meth:`StopRequest.should_stop` after every step; when
it says yes, the loop saves a checkpoint of that step, writes what it has and
raises :class:`TrainingInterrupted`, so that rerunning the same command
resumes exactly there.

* One process: Python handlers record SIGTERM and SIGINT. A second SIGINT
  aborts at once (``KeyboardInterrupt``), for a user who does not want to
  wait for the step to finish.
* Several processes (``jax.distributed`` initialised): all of them must save
  the same step. A SIGTERM to any of them reaches JAX's preemption service
  (its notifier is installed by ``jax.distributed.initialize``), which agrees
  on a step every process reaches;
  :func:`jax.experimental.multihost_utils.reached_preemption_sync_point` is
  polled at every step. A SIGINT is turned into a SIGTERM of its own
  process so that it takes the same path.

Handlers are installed only in the main thread and restored on exit.
"""

import os
import signal
import threading
from typing import Any, Dict, Optional

from jax.experimental import multihost_utils


class TrainingInterrupted(Exception):
  """Training stopped on a signal after checkpointing its current step.

  Attributes:
    signal_name: e.g. ``'SIGTERM'``.
    exit_code: the conventional ``128 + signal number``.
  """

  def __init__(self, message: str, signal_name: str, exit_code: int):
    super().__init__(message)
    self.signal_name = signal_name
    self.exit_code = exit_code


class StopRequest:
  """Context manager turning SIGTERM / SIGINT into a stop at a step boundary.

  Args:
    distributed: whether ``jax.distributed`` is initialised (use JAX's
      preemption sync point instead of local handlers for SIGTERM).
  """

  def __init__(self, distributed: bool = False):
    self.distributed = distributed
    self.signum: Optional[int] = None
    #: Whether :meth:`should_stop` has said yes.
    self.stopped = False
    self._previous: Dict[int, Any] = {}

  @property
  def signal_name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else ''

  @property
  def exit_code(self) -> int:
    return 128 + int(self.signum or signal.SIGTERM)

  def _record(self, signum, frame) -> None:  # pylint: disable=unused-argument
    if self.signum == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt  # second Ctrl-C: abort now
    if self.signum is None:
      self.signum = signum

  def _forward_to_preemption_service(self, signum, frame
                                     ) -> None:  # pylint: disable=unused-argument
    if self.signum is None:
      self.signum = signum
      os.kill(os.getpid(), signal.SIGTERM)
    else:
      raise KeyboardInterrupt

  def __enter__(self) -> 'StopRequest':
    if threading.current_thread() is not threading.main_thread():
      return self
    if self.distributed:
      handlers = {signal.SIGINT: self._forward_to_preemption_service}
    else:
      handlers = {signal.SIGTERM: self._record, signal.SIGINT: self._record}
    for signum, handler in handlers.items():
      self._previous[signum] = signal.signal(signum, handler)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def should_stop(self, step: int) -> bool:
    """Whether to checkpoint ``step`` (just finished) and stop.

    With several processes every process must call this at every step with
    the same ``step``; they all get ``True`` at the same one.
    """
    if self.distributed:
      if multihost_utils.reached_preemption_sync_point(step):
        if self.signum is None:
          self.signum = signal.SIGTERM
        self.stopped = True
    else:
      self.stopped = self.signum is not None
    return self.stopped
