"""One writer per run directory: an exclusive lock the operating system releases when its process dies.

Two processes training into one directory interleave their metrics and checkpoints (the config
of one, the weights of the other). ``RunLock`` takes ``flock`` on ``DIR/.lock`` without waiting;
the second writer gets :class:`RunDirectoryBusy` naming the process that holds it. A killed
holder (even ``kill -9``) leaves the file but not the lock, so the next run resumes freely.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = ".lock"


class RunDirectoryBusy(RuntimeError):
    pass


class RunLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirectoryBusy(
                f"{self.path.parent} is being written by {holder}; wait for it to finish, or train into another --out"
            ) from None
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder} ({' '.join(sys.argv)[:200]})\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
