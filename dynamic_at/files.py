"""Atomic file writes: a reader never sees a half-written file.

The content goes to a temporary file in the destination's folder, which then
replaces the destination with ``os.replace``; on any error the temporary file
is removed and the destination is left as it was. A write the system refuses
(disk full, read-only folder, file too large) raises :class:`WriteError`,
which names the file.
"""

import os
import tempfile
from typing import Any, Callable


class WriteError(OSError):
  """A file could not be written; the previous version is unchanged."""


def atomic_write(path: 'os.PathLike[str] | str', write: Callable[[Any], None],
                 *, binary: bool = False) -> str:
  """Calls ``write(f)`` on a temporary file, then moves it to ``path``.

  Args:
    path: destination; its folder is created if needed.
    write: writes the content to the open file object it is given.
    binary: open the temporary file in binary mode.

  Returns:
    ``path`` as a string.

  Raises:
    WriteError: if the system refuses the write; ``path`` is unchanged.
  """
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  tmp = None
  try:
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder,
                               prefix='.' + os.path.basename(path),
                               suffix='.tmp')
    with os.fdopen(fd, 'wb' if binary else 'w') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    # mkstemp creates 0600: keep the destination's mode, else rw-r--r--.
    os.chmod(tmp, os.stat(path).st_mode & 0o777 if os.path.exists(path)
             else 0o644)
    os.replace(tmp, path)
  except OSError as e:
    _remove(tmp)
    if isinstance(e, WriteError):
      raise
    raise WriteError(e.errno, f'could not write {path!r}: '
                     f'{e.strerror or e}; the previous version (if any) is '
                     'unchanged') from e
  except BaseException:
    _remove(tmp)
    raise
  return path


def _remove(tmp) -> None:
  if tmp is not None and os.path.exists(tmp):
    os.remove(tmp)


def atomic_write_text(path: 'os.PathLike[str] | str', text: str) -> str:
  """Writes ``text`` to ``path`` atomically."""
  return atomic_write(path, lambda f: f.write(text))
