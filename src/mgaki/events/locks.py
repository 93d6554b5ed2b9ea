"""A lock across processes and threads: ``flock`` on a file in a data or results folder.

Why: ``mgaki serve --workers N`` runs N processes on one data folder, so whatever was
serialised by a ``threading.Lock`` (the event-store writer, the migrations at start-up)
must be serialised across processes. The kernel releases an ``flock`` when its holder
dies, so a crashed worker never leaves the folder locked. POSIX only (fcntl).
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from types import TracebackType

__all__ = ["FileLock"]


class FileLock:
    """Exclusive lock on ``path`` (created if missing); a context manager, blocking.

    ``shared=True``: a shared lock instead (many holders at once, none while an exclusive one is held).
    """

    def __init__(self, path: Path, shared: bool = False) -> None:
        self.path = Path(path)
        self._mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        self._thread_lock = threading.Lock()  # one holder per process; flock excludes the other processes
        self._fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock; with ``blocking=False`` return False at once if another holder has it."""
        if not self._thread_lock.acquire(blocking):
            return False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, self._mode if blocking else self._mode | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._thread_lock.release()
                return False
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            self._thread_lock.release()
            raise
        self._fd = fd
        return True

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            raise RuntimeError(f"{self.path}: release of a lock not held")
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
            self._thread_lock.release()

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        self.release()
