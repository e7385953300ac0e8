"""Atomic file writes: a reader never sees a half-written file.

The content goes to a temporary file in the destination's folder, which then
replaces the destination with ``os.replace``; on any error the temporary file
is removed and the destination is left as it was.
"""

import os
import tempfile
from typing import Any, Callable


def atomic_write(path: 'os.PathLike[str] | str', write: Callable[[Any], None],
                 *, binary: bool = False) -> str:
  """Calls ``write(f)`` on a temporary file, then moves it to ``path``.

  Args:
    path: destination; its folder is created if needed.
    write: writes the content to the open file object it is given.
    binary: open the temporary file in binary mode.

  Returns:
    ``path`` as a string.
  """
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path),
                             suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb' if binary else 'w') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def atomic_write_text(path: 'os.PathLike[str] | str', text: str) -> str:
  """Writes ``text`` to ``path`` atomically."""
  return atomic_write(path, lambda f: f.write(text))
