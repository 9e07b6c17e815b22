"""Group-committed durability: one ``syncfs`` makes many writes durable at once.

Acknowledging an instance needs its file, its directory entry and its database
rows on disk.  Doing that with ``fsync`` costs three flushes per instance
(file, folder, SQLite WAL).  Instead, writers do plain writes and then call
:meth:`DurabilityBarrier.wait`: one ``syncfs(2)`` per file system flushes
everything written before it, and concurrent callers share one flush
(group commit).  Where ``syncfs`` is missing, ``os.sync()`` is used.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

__all__ = ["DurabilityBarrier", "fsync_path", "syncfs_available"]

LOGGER = logging.getLogger(__name__)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)


def fsync_path(path: Path) -> None:
    """``fsync`` one file or folder (a folder: the entries made in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs_available() -> bool:
    """True when the C library offers ``syncfs(2)`` (Linux)."""
    return _syncfs is not None


class DurabilityBarrier:
    """Flush the file systems holding *paths*; group-commit concurrent callers.

    Parameters
    ----------
    paths:
        Folders whose file systems must be flushed (the spool, the SQLite
        database's folder).  One descriptor is kept per distinct device.
    """

    def __init__(self, paths: Iterable[Path]) -> None:
        self._fds: list[int] = []
        seen: set[int] = set()
        for path in paths:
            path = Path(path)
            path.mkdir(parents=True, exist_ok=True)
            dev = os.stat(path).st_dev
            if dev in seen:
                continue
            seen.add(dev)
            self._fds.append(os.open(path, os.O_RDONLY | os.O_DIRECTORY))
        self._cond = threading.Condition()
        self._next_ticket = 1
        self._synced_upto = 0
        self._syncing = False
        self.flushes = 0
        """How many flushes were done (for tests and metrics)."""

    def _flush(self) -> None:
        if _syncfs is None:
            os.sync()
            return
        for fd in self._fds:
            if _syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"syncfs failed: {os.strerror(err)}")

    def wait(self) -> None:
        """Return once everything this thread wrote before the call is on disk.

        Raises
        ------
        OSError
            When the flush reports an I/O error (the caller must not
            acknowledge then).
        """
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            while self._synced_upto < ticket:
                if self._syncing:
                    self._cond.wait()
                    continue
                self._syncing = True
                target = self._next_ticket - 1
                self._cond.release()
                try:
                    self._flush()
                    ok = True
                except OSError:
                    ok = False
                    raise
                finally:
                    self._cond.acquire()
                    self._syncing = False
                    if ok:
                        self._synced_upto = max(self._synced_upto, target)
                        self.flushes += 1
                    self._cond.notify_all()

    def close(self) -> None:
        """Release the folder descriptors."""
        for fd in self._fds:
            os.close(fd)
        self._fds = []
