"""One writer per workdir: an advisory lock held for the run's life.

The lock is `fcntl.flock` on `<workdir>/.lock`, so the kernel drops it when its process dies
(`kill -9` included): a stale lock of a dead process is simply taken over. The file holds the
holder's host and pid, which a second run names in its error. In a multi-process run only
process 0 holds it (the processes share the workdir).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from kdknob_jax.errors import RunStateError

LOCK_FILE = ".lock"


def check_workdir(workdir: Path) -> None:
  """Raises RunStateError unless `workdir` is a directory or can become one."""
  if workdir.exists() and not workdir.is_dir():
    raise RunStateError(f"The workdir {workdir} is a file, not a directory. Pass another "
                        "--workdir, or move the file away.")
  for parent in workdir.absolute().parents:
    if parent.exists():
      if not parent.is_dir():
        raise RunStateError(f"The workdir {workdir} lies under {parent}, which is a file. "
                            "Pass another --workdir.")
      break


class WorkdirLock:
  """Holds `<workdir>/.lock` exclusively until `release` (or the process's end).

  Args:
    workdir: the run directory (created if needed).
    enabled: False makes this a no-op (processes other than 0 of a multi-process run).

  Raises:
    RunStateError: another live process holds the lock (named), or the workdir cannot be
      written (read-only, full, or a file).
  """

  def __init__(self, workdir: str | Path, enabled: bool = True):
    self.path = Path(workdir) / LOCK_FILE
    self._fd = None
    if not enabled:
      return
    import fcntl  # pylint: disable=g-import-not-at-top
    check_workdir(Path(workdir))
    try:
      Path(workdir).mkdir(parents=True, exist_ok=True)
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise RunStateError(f"Cannot write the workdir {workdir} ({e.strerror}). Make it "
                          "writable, free space, or pass another --workdir.") from e
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = self._holder(fd)
      os.close(fd)
      raise RunStateError(
          f"The workdir {workdir} is in use by another run ({holder}). Wait for it to end, "
          "stop it, or pass another --workdir; two runs writing one workdir would corrupt "
          "its checkpoints.") from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode())
    os.fsync(fd)
    self._fd = fd

  @staticmethod
  def _holder(fd: int) -> str:
    try:
      info = json.loads(os.pread(fd, 4096, 0) or b"{}")
      return f"pid {info.get('pid')} on {info.get('host')}"
    except (OSError, ValueError):
      return "holder unknown"

  def release(self) -> None:
    """Drops the lock (the file stays; it is empty of meaning without a holder)."""
    if self._fd is not None:
      os.close(self._fd)  # closing the descriptor releases the flock
      self._fd = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()
