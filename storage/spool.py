"""The DICOM file spool: atomic, fsync'd writes in a fixed layout.

Layout: ``<spool>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.
A file is first written under ``<spool>/.tmp/``, flushed and fsync'd, then
renamed into place (atomic on POSIX) and its folder fsync'd, so a file that
exists under its final name is complete and survives a crash.

A UID is used as its own file name when it has only digits and ``.`` and
starts with a digit (the UID alphabet of PS3.5 9.1).  Anything else (real
senders do send such UIDs) is replaced by ``@`` and a SHA-1 of the value: no
plain name starts with ``@``, so no UID can take the name of another one's
hash.  The database keeps the real UID and the relative path.  A new
instance never replaces a file that is already there (:class:`SpoolConflict`).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BufferedFile",
    "DataSetWriter",
    "SpoolConflict",
    "SpooledFile",
    "Spool",
    "TempWriter",
    "safe_component",
]

LOGGER = logging.getLogger(__name__)

_PLAIN_RE = re.compile(r"^[0-9][0-9.]{0,63}$")
_HASHED_PREFIX = "@"
"""Starts every hashed name; never the first character of a plain one."""
QUARANTINE_DIR = ".quarantine"
"""Spool files that could not be re-registered at start-up are moved under here."""


class SpoolConflict(FileExistsError):
    """The final path of a new instance already holds a file; nothing was replaced."""


def safe_component(uid: str) -> str:
    """A file-name-safe, stable, collision-free name for *uid*.

    The UID itself when it has only digits and dots (starting with a digit:
    never ``.`` or ``..``, the same on case-insensitive file systems), else
    ``@`` + SHA-1 of its UTF-8 bytes.
    """
    if _PLAIN_RE.fullmatch(uid):
        return uid
    return _HASHED_PREFIX + hashlib.sha1(uid.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class SpooledFile:
    """A file written to the spool's temporary area, not yet in place."""

    temp_path: Path
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class BufferedFile:
    """A received file held in memory (small data sets), not yet in the spool.

    ``chunks`` are the file's bytes: the file meta the receiver wrote
    (``meta_length`` bytes, not hashed), then the data set as sent.
    """

    chunks: tuple[bytes, ...]
    size_bytes: int
    sha256: str
    meta_length: int


class TempWriter:
    """A temporary spool file being written piece by piece (e.g. from PDVs)."""

    def __init__(self, path: Path, fsync: bool, digest: Any = None, size: int = 0) -> None:
        self.path = path
        self._fsync = fsync
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        self._digest = digest if digest is not None else hashlib.sha256()
        self.size = size

    def write(self, data: bytes | bytearray | memoryview, *, hashed: bool = True) -> None:
        """Append *data*; ``hashed=False`` leaves it out of the content hash
        (e.g. the file meta a receiver adds, which differs between senders)."""
        assert self._fd is not None, "writer already closed"
        view = memoryview(data)
        if hashed:
            self._digest.update(view)
        self.size += len(view)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def finish(self) -> SpooledFile:
        """Close the file (fsync'd when the spool says so)."""
        assert self._fd is not None, "writer already closed"
        fd, self._fd = self._fd, None
        try:
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return SpooledFile(self.path, self.size, self._digest.hexdigest())

    def abort(self) -> None:
        """Close and remove the unfinished file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.unlink(missing_ok=True)


class DataSetWriter:
    """A received file written piece by piece: in memory while it is small, else to disk.

    Up to *memory_limit* bytes the pieces stay in memory and :meth:`finish`
    returns a :class:`BufferedFile` (for the intake journal); past it they go
    to a temporary spool file and :meth:`finish` returns a :class:`SpooledFile`.
    """

    def __init__(self, spool: Spool, memory_limit: int) -> None:
        self._spool = spool
        self._limit = memory_limit
        self._chunks: list[bytes] = []
        self._digest = hashlib.sha256()
        self._unhashed = 0
        self.size = 0
        self._temp: TempWriter | None = None
        if memory_limit <= 0:
            self._temp = spool.open_temp()

    def write(self, data: bytes | bytearray | memoryview, *, hashed: bool = True) -> None:
        """Append *data*; ``hashed=False`` leaves it out of the content hash."""
        if self._temp is not None:
            self._temp.write(data, hashed=hashed)
            return
        if self.size + len(data) > self._limit:
            temp = self._spool.open_temp()
            temp._digest, temp.size = self._digest, 0
            try:
                for chunk in self._chunks:
                    temp.write(chunk, hashed=False)
            except BaseException:
                temp.abort()
                raise
            temp.size = self.size
            self._temp, self._chunks = temp, []
            temp.write(data, hashed=hashed)
            return
        chunk = bytes(data)
        if hashed:
            self._digest.update(chunk)
        elif not self._chunks:
            self._unhashed = len(chunk)
        self._chunks.append(chunk)
        self.size += len(chunk)

    @property
    def in_memory(self) -> bool:
        return self._temp is None

    def finish(self) -> SpooledFile | BufferedFile:
        """The file written: in memory, or closed on disk."""
        if self._temp is not None:
            return self._temp.finish()
        return BufferedFile(
            tuple(self._chunks), self.size, self._digest.hexdigest(), self._unhashed
        )

    def abort(self) -> None:
        """Drop what was written."""
        if self._temp is not None:
            self._temp.abort()
        self._chunks = []


class Spool:
    """A folder of received DICOM files.

    Parameters
    ----------
    root:
        The spool folder; created when missing.
    fsync:
        Flush each file and folder to disk with ``fsync`` before a write
        counts as done.  Turn it off when a
        :class:`~storage.durability.DurabilityBarrier` flushes instead.
    min_free_bytes:
        Free-space watermark used by :meth:`has_room_for`.
    temp_name:
        A temporary folder of this writer's own, ``.tmp/<temp_name>`` (a spool
        several receivers share); ``None``: ``.tmp`` itself.
    """

    def __init__(
        self,
        root: Path,
        *,
        fsync: bool = True,
        min_free_bytes: int = 0,
        temp_name: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.min_free_bytes = min_free_bytes
        self.tmp_dir = self.root / ".tmp" / temp_name if temp_name else self.root / ".tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._free_lock = threading.Lock()
        self._free_checked_at = 0.0
        self._free_bytes = 0

    # -- paths -----------------------------------------------------------
    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """The spool-relative path of an instance (POSIX separators)."""
        return "/".join(
            (
                safe_component(study_uid),
                safe_component(series_uid),
                safe_component(sop_uid) + ".dcm",
            )
        )

    def absolute(self, relative: str) -> Path:
        """The absolute path of a spool-relative path."""
        return self.root / relative

    # -- disk space ------------------------------------------------------
    def free_bytes(self, max_age_s: float = 0.5) -> int:
        """Free bytes on the spool's file system (cached for *max_age_s*)."""
        now = time.monotonic()
        with self._free_lock:
            if now - self._free_checked_at > max_age_s:
                self._free_bytes = shutil.disk_usage(self.root).free
                self._free_checked_at = now
            return self._free_bytes

    def has_room_for(self, nbytes: int) -> bool:
        """True when writing *nbytes* keeps free space above the watermark."""
        return self.free_bytes() - nbytes >= self.min_free_bytes

    # -- writing ---------------------------------------------------------
    def open_temp(self) -> TempWriter:
        """A new temporary file to write piece by piece."""
        return TempWriter(self.tmp_dir / f"{uuid.uuid4().hex}.part", self.fsync)

    def write_temp(self, chunks: bytes | bytearray | memoryview | list[bytes]) -> SpooledFile:
        """Write *chunks* to a new temporary file; return its path and hash."""
        parts = chunks if isinstance(chunks, list) else [chunks]
        writer = self.open_temp()
        try:
            for part in parts:
                writer.write(part)
            return writer.finish()
        except BaseException:
            writer.abort()
            raise

    def spill(self, buffered: BufferedFile) -> SpooledFile:
        """Write a file held in memory to a temporary file (its hash is kept)."""
        writer = self.open_temp()
        try:
            for chunk in buffered.chunks:
                writer.write(chunk, hashed=False)
            spooled = writer.finish()
        except BaseException:
            writer.abort()
            raise
        return SpooledFile(spooled.temp_path, buffered.size_bytes, buffered.sha256)

    def write_unsynced(self, relative: str, chunks: Iterable[bytes | memoryview]) -> None:
        """Write (or overwrite) the file at *relative* without flushing it.

        For the intake journal's writer only: the data is durable in the
        journal already, the file's database row is committed after this
        returns (nobody reads the file before), one flush of the file system
        later covers many files, and after a crash the journal is replayed,
        which writes the file again.
        """
        final = self.root / relative
        try:
            fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        except FileNotFoundError:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def commit(self, spooled: SpooledFile, relative: str) -> Path:
        """Move a temporary file to its final *relative* path, atomically and durably."""
        final = self.root / relative
        folder = final.parent
        if not folder.is_dir():
            self._make_dirs(folder)
        try:
            os.replace(spooled.temp_path, final)
        except FileNotFoundError:
            # Placed by an earlier attempt whose transaction was rolled back
            # (temporary names are unique, so nobody else moved it).
            if not final.exists():
                raise
        if self.fsync:
            self._fsync_dir(folder)
        return final

    def place_new(self, spooled: SpooledFile, relative: str) -> Path:
        """Move a temporary file to the final path of a *new* instance, never replacing.

        Like :meth:`commit`, but an existing file at *relative* is left alone
        and :class:`SpoolConflict` is raised (the temporary file stays for the
        caller to discard).  The move is a hard link then an unlink of the
        temporary name, so the check and the placing are one atomic step;
        file systems without hard links get a check, then a rename.
        """
        final = self.root / relative
        folder = final.parent
        if not folder.is_dir():
            self._make_dirs(folder)
        try:
            os.link(spooled.temp_path, final)
        except FileExistsError:
            if spooled.temp_path.exists():
                raise SpoolConflict(f"spool path {relative} already holds a file") from None
            # Placed by an earlier attempt whose transaction was rolled back.
        except FileNotFoundError:
            if not final.exists():
                raise
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
                raise
            if final.exists():
                raise SpoolConflict(f"spool path {relative} already holds a file") from None
            os.replace(spooled.temp_path, final)
        else:
            spooled.temp_path.unlink()
        if self.fsync:
            self._fsync_dir(folder)
        return final

    # -- start-up reconciliation ----------------------------------------------
    def iter_files(self) -> Iterator[str]:
        """Relative paths of the instance files in the spool (``*.dcm``), skipping
        the temporary and quarantine folders."""
        for dirpath, dirnames, filenames in os.walk(self.root):
            if dirpath == str(self.root):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in filenames:
                if name.endswith(".dcm"):
                    yield name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")

    def adopt(self, relative: str, unhashed_bytes: int) -> SpooledFile:
        """Move a placed file back to the temporary area, as if just received.

        The content hash leaves out the first *unhashed_bytes* (the file meta
        the receiver added), like :meth:`TempWriter.write` with ``hashed=False``.
        """
        temp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        os.replace(self.root / relative, temp)
        digest = hashlib.sha256()
        with temp.open("rb") as fh:
            fh.seek(unhashed_bytes)
            while chunk := fh.read(2**20):
                digest.update(chunk)
        return SpooledFile(temp, temp.stat().st_size, digest.hexdigest())

    def quarantine(self, source: Path, relative: str) -> Path:
        """Move *source* (a spool or temporary file) to ``.quarantine/<relative>``."""
        target = self.root / QUARANTINE_DIR / relative
        if target.exists():
            target = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}")
        self._make_dirs(target.parent)
        os.replace(source, target)
        return target

    def discard(self, spooled: SpooledFile | BufferedFile) -> None:
        """Remove a temporary file that will not be kept."""
        if isinstance(spooled, SpooledFile):
            spooled.temp_path.unlink(missing_ok=True)

    def clean_temp(self) -> int:
        """Remove leftover temporary files (from a crash); returns how many."""
        removed = 0
        for path in self.tmp_dir.glob("*.part"):
            path.unlink(missing_ok=True)
            removed += 1
        if removed:
            LOGGER.info("removed %d unfinished temporary file(s) from the spool", removed)
        return removed

    def _make_dirs(self, folder: Path) -> None:
        missing: list[Path] = []
        p = folder
        while not p.exists():
            missing.append(p)
            p = p.parent
        folder.mkdir(parents=True, exist_ok=True)
        if self.fsync:
            # Make the new directory entries durable, parents last.
            for created in missing:
                self._fsync_dir(created.parent)

    @staticmethod
    def _fsync_dir(folder: Path) -> None:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
