"""An exclusive lock on a run's workdir, so that two writers never share it.

Training and evaluation hold ``WORKDIR/.lock`` while they write into the
workdir: an open file with an exclusive ``flock`` and, inside, who holds it
(pid, host, start time, command). A second process gets
:class:`WorkdirLockedError` naming the holder and changes nothing. The
kernel drops a ``flock`` when its process dies, so a lock left by a killed
process (``kill -9``) is free again; its file still names the dead holder,
which is reported as a stale lock taken over. On file systems without
``flock`` the pid is checked instead (same host only: a lock of another host
is never taken over automatically). A clean release empties the file but
keeps it (removing it would let a third process lock a new file while a
second one still holds the old one).

With several JAX processes only process 0 holds the lock (pass
``primary=False`` on the others).
"""

import dataclasses
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from typing import Any, Dict, Optional

LOCK_FILE = '.lock'


class WorkdirLockedError(RuntimeError):
  """Another live process holds the workdir's lock."""


@dataclasses.dataclass(frozen=True)
class Holder:
  """Who holds (or held) a lock."""
  pid: int
  host: str
  started: str
  command: str

  @classmethod
  def me(cls) -> 'Holder':
    return cls(pid=os.getpid(), host=socket.gethostname(),
               started=datetime.datetime.now(datetime.timezone.utc)
               .isoformat(timespec='seconds'),
               command=' '.join(sys.argv)[:500])

  def describe(self) -> str:
    return (f'pid {self.pid} on host {self.host}, started {self.started} '
            f'({self.command})')

  def is_alive(self) -> Optional[bool]:
    """Whether the process runs (``None``: another host, cannot tell)."""
    if self.host != socket.gethostname():
      return None
    try:
      os.kill(self.pid, 0)
    except ProcessLookupError:
      return False
    except PermissionError:
      return True
    return True


def _parse(text: str) -> Optional[Holder]:
  try:
    raw: Dict[str, Any] = json.loads(text)
    return Holder(pid=int(raw['pid']), host=str(raw['host']),
                  started=str(raw['started']), command=str(raw['command']))
  except (ValueError, KeyError, TypeError):
    return None


class WorkdirLock:
  """Context manager holding ``workdir``'s lock.

  Args:
    workdir: the run folder (must exist).
    primary: whether this process takes the lock (``False``: a no-op, for JAX
      processes other than 0).

  Attributes:
    stale: the holder of a stale lock this one took over, else ``None``.
  """

  def __init__(self, workdir: str, *, primary: bool = True):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.primary = primary
    self.stale: Optional[Holder] = None
    self._fd: Optional[int] = None

  def _read(self, fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 1 << 16).decode('utf-8', 'replace')

  def _refuse(self, fd: int, holder: Optional[Holder], raw: str) -> None:
    os.close(fd)
    who = holder.describe() if holder else f'unknown holder ({raw[:200]!r})'
    raise WorkdirLockedError(
        f'--workdir={os.path.dirname(self.path)} is in use by {who}; its lock '
        f'file is {self.path}. Wait for that process to end or stop it, or '
        'use another --workdir. Nothing was changed.')

  def acquire(self) -> 'WorkdirLock':
    """Takes the lock.

    Raises:
      WorkdirLockedError: naming the holder, if a live process holds it.
    """
    if not self.primary or self._fd is not None:
      return self
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      flocked = True
    except BlockingIOError:
      raw = self._read(fd)
      self._refuse(fd, _parse(raw), raw)
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS,
                         errno.EINVAL):
        os.close(fd)
        raise
      flocked = False  # no flock here: fall back to the pid check below
    raw = self._read(fd)
    previous = _parse(raw) if raw.strip() else None
    if raw.strip() and not flocked:
      alive = previous.is_alive() if previous else None
      if alive is not False:
        self._refuse(fd, previous, raw)
    if previous is not None:
      self.stale = previous
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(dataclasses.asdict(Holder.me())) + '\n')
             .encode())
    os.fsync(fd)
    self._fd = fd
    return self

  def release(self) -> None:
    """Empties the lock file and releases the lock (idempotent)."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      os.ftruncate(fd, 0)
    except OSError:
      pass  # an unwritable lock file must not hide the run's own error
    finally:
      os.close(fd)  # drops the flock

  def __enter__(self) -> 'WorkdirLock':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
