"""The intake journal: one durable append per received instance, rows and files later.

Acknowledging a C-STORE needs its data on disk (PS3.4 B.2.3: Success means the
instance is stored).  Writing the instance's own file, its folder entry and its
database rows durably costs a file-system journal commit per instance; the
intake journal replaces that with one ``pwrite`` into a preallocated segment
and an ``fdatasync`` shared by every association waiting at that moment (group
commit).  A background :class:`IntakeWriter` then writes the spool files and
the database rows of many instances in one transaction, flushes the file
systems once, and records a checkpoint.  At start-up, before anything is
received, :func:`replay` applies every entry written after the last
checkpoint, so an acknowledged instance survives a crash at any point.

Layout: ``<spool>/.intake/<journal name>/`` holds segment files
(``segment-NNN.log``, :data:`SEGMENT_BYTES` each, zero-filled when made so that
an overwrite never changes file metadata) and ``checkpoint`` (the sequence
number up to which every entry is in the spool and the database).  A segment
starts with a header block naming its generation; each entry is::

    magic "DNJ1" | generation u64 | sequence u64 | meta length u32 | data length u32
    | CRC-32 of the meta u32 | meta (JSON) | data (file meta + data set, as sent)

The JSON meta holds the spool path, the instance record, the SHA-256 of the
data set (which :func:`replay` checks) and a CRC-32 of the file meta the
receiver added.  Reading stops at the first entry whose magic, generation or
checksums do not match: a torn write at a crash is never applied, and it was
never acknowledged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "SEGMENT_BYTES",
    "IntakeEntry",
    "IntakeJournal",
    "IntakeWriter",
    "JournalFull",
    "read_entries",
    "write_checkpoint",
]

LOGGER = logging.getLogger(__name__)

SEGMENT_BYTES = 64 * 2**20
"""Size of one journal segment; an entry larger than a segment is never journaled."""
_HEADER_BLOCK = 4096
_SEGMENT_MAGIC = b"DNJS"
_SEGMENT_HEADER = struct.Struct("<4sQ")
_ENTRY = struct.Struct("<4sQQIII")
_ENTRY_MAGIC = b"DNJ1"
_MAX_SEGMENTS = 16
"""At most this many segments (1 GiB): beyond, :class:`JournalFull` (the caller
then stores the instance the direct way)."""


class JournalFull(RuntimeError):
    """Every segment holds entries not yet checkpointed (the writer lags behind)."""


@dataclass
class IntakeEntry:
    """One acknowledged instance: where its file goes and the rows it makes."""

    path: str
    """Spool-relative path of the instance file."""
    record: dict[str, Any]
    """The :class:`~storage.received.InstanceRecord` fields (no routing attributes)."""
    sha256: str
    size_bytes: int
    meta_length: int
    """Bytes of file meta the receiver put before the data set (not hashed)."""
    chunks: Sequence[bytes | memoryview]
    """The file's bytes: file meta, then the data set as sent."""
    seq: int = 0
    received_at: float = field(default_factory=time.time)

    def meta_json(self, meta_crc: int) -> bytes:
        return json.dumps(
            {
                "path": self.path,
                "record": self.record,
                "sha256": self.sha256,
                "size": self.size_bytes,
                "meta_length": self.meta_length,
                "meta_crc": meta_crc,
                "received_at": self.received_at,
            },
            separators=(",", ":"),
        ).encode()


class _Segment:
    def __init__(self, path: Path, fd: int, generation: int) -> None:
        self.path = path
        self.fd = fd
        self.generation = generation
        self.offset = _HEADER_BLOCK
        self.last_seq = 0
        """Highest sequence number written here (0: none)."""


class IntakeJournal:
    """Append-only, group-committed journal of received instances.

    Parameters
    ----------
    folder:
        This journal's own folder (one per receiving process).
    durable:
        ``fdatasync`` before :meth:`append` returns (off only when the node
        runs with ``[storage] fsync = false``).
    """

    def __init__(self, folder: Path, *, durable: bool = True) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.durable = durable
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._current: _Segment | None = None
        self._generation = 0
        self._seq = self._read_checkpoint()
        self._checkpointed = self._seq
        self._unapplied: set[int] = set()
        """Sequence numbers appended but not yet applied (the checkpoint stays below)."""
        self._dirty: set[int] = set()
        self._sync_cond = threading.Condition()
        self._next_ticket = 1
        self._synced_upto = 0
        self._syncing = False
        self.syncs = 0
        for path in sorted(self.folder.glob("segment-*.log")):
            fd = os.open(path, os.O_RDWR)
            head = os.pread(fd, _SEGMENT_HEADER.size, 0)
            gen = _SEGMENT_HEADER.unpack(head)[1] if head[:4] == _SEGMENT_MAGIC else 0
            self._generation = max(self._generation, gen)
            self._segments.append(_Segment(path, fd, gen))
        self._switch_segment()

    # -- writing ---------------------------------------------------------------------
    def append(self, entry: IntakeEntry) -> int:
        """Write *entry*; return its sequence number once it is durable.

        Raises
        ------
        JournalFull
            No segment is free (the caller stores the instance directly).
        OSError
            The write or the flush failed: nothing may be acknowledged.
        """
        head = bytes(entry.chunks[0][: entry.meta_length]) if entry.meta_length else b""
        data_length = sum(len(c) for c in entry.chunks)
        with self._lock:
            self._seq += 1
            entry.seq = seq = self._seq
            meta = entry.meta_json(zlib.crc32(head))
            size = _ENTRY.size + len(meta) + data_length
            if size > SEGMENT_BYTES - _HEADER_BLOCK:
                self._seq -= 1
                raise JournalFull(f"entry of {size} bytes is larger than a journal segment")
            segment = self._current
            assert segment is not None
            if segment.offset + size > SEGMENT_BYTES:
                try:
                    segment = self._switch_segment()
                except JournalFull:
                    self._seq -= 1
                    raise
            offset = segment.offset
            segment.offset += size
            self._unapplied.add(seq)
            segment.last_seq = seq
            self._dirty.add(segment.fd)
            fd = segment.fd
        header = _ENTRY.pack(
            _ENTRY_MAGIC, segment.generation, seq, len(meta), data_length, zlib.crc32(meta)
        )
        try:
            _pwritev_all(fd, [header, meta, *entry.chunks], offset)
            if self.durable:
                self._sync()
        except BaseException:
            self.applied([seq])  # never acknowledged: it must not hold the checkpoint back
            raise
        return seq

    def _switch_segment(self) -> _Segment:
        """Make a free (or new) segment current under a new generation (lock held)."""
        free = next(
            (
                s
                for s in self._segments
                if s is not self._current and s.last_seq <= self._checkpointed
            ),
            None,
        )
        if free is None:
            if len(self._segments) >= _MAX_SEGMENTS:
                raise JournalFull(f"all {_MAX_SEGMENTS} journal segments are in use")
            free = self._new_segment(len(self._segments))
            self._segments.append(free)
        self._generation += 1
        free.generation = self._generation
        free.offset = _HEADER_BLOCK
        free.last_seq = 0
        os.pwrite(free.fd, _SEGMENT_HEADER.pack(_SEGMENT_MAGIC, free.generation), 0)
        os.fdatasync(free.fd)
        self._current = free
        return free

    def _new_segment(self, index: int) -> _Segment:
        path = self.folder / f"segment-{index:03d}.log"
        temp = path.with_suffix(".new")
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o640)
        zeros = bytes(2**20)
        for _ in range(SEGMENT_BYTES // len(zeros)):
            os.write(fd, zeros)
        os.fsync(fd)
        os.replace(temp, path)
        dir_fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return _Segment(path, fd, 0)

    def _sync(self) -> None:
        """Group commit: one ``fdatasync`` covers every append made before it."""
        with self._sync_cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            while self._synced_upto < ticket:
                if self._syncing:
                    self._sync_cond.wait()
                    continue
                self._syncing = True
                target = self._next_ticket - 1
                with self._lock:
                    fds, self._dirty = list(self._dirty), set()
                self._sync_cond.release()
                ok = False
                try:
                    for fd in fds:
                        os.fdatasync(fd)
                    ok = True
                finally:
                    self._sync_cond.acquire()
                    self._syncing = False
                    if ok:
                        self._synced_upto = max(self._synced_upto, target)
                        self.syncs += 1
                    else:
                        with self._lock:
                            self._dirty.update(fds)
                    self._sync_cond.notify_all()

    # -- checkpoints -------------------------------------------------------------------
    def applied(self, seqs: Sequence[int]) -> None:
        """Entries *seqs* are in the spool and the database, durably: move the checkpoint.

        The checkpoint is the highest sequence number below which every entry
        is applied.  Its file is written without a flush: losing it only makes
        :func:`read_entries` return entries again, and applying one twice
        changes nothing.
        """
        with self._lock:
            self._unapplied.difference_update(seqs)
            seq = min(self._unapplied) - 1 if self._unapplied else self._seq
            if seq <= self._checkpointed:
                return
            self._checkpointed = seq
        write_checkpoint(self.folder, seq)

    @property
    def checkpointed(self) -> int:
        return self._checkpointed

    def _read_checkpoint(self) -> int:
        try:
            return int((self.folder / "checkpoint").read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        with self._lock:
            for segment in self._segments:
                os.close(segment.fd)
            self._segments = []
            self._current = None


def write_checkpoint(folder: Path, seq: int) -> None:
    """Record that every entry of the journal in *folder* up to *seq* is applied."""
    temp = folder / "checkpoint.new"
    temp.write_text(str(seq))
    os.replace(temp, folder / "checkpoint")


def _pwritev_all(fd: int, parts: list[bytes | memoryview], offset: int) -> None:
    """Write *parts* at *offset*, all of them (``pwritev`` may write less)."""
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        written = os.pwritev(fd, views[:512], offset)
        offset += written
        while written and views:
            if written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][written:]
                written = 0


def read_entries(folder: Path) -> Iterator[IntakeEntry]:
    """Every valid entry of the journal in *folder* after its checkpoint, in order.

    An entry is valid when its magic, generation, CRC-32 of the meta, CRC-32 of
    the file meta and SHA-256 of the data set all match; reading a segment
    stops at its first invalid entry.
    """
    folder = Path(folder)
    try:
        checkpoint = int((folder / "checkpoint").read_text().strip() or 0)
    except (OSError, ValueError):
        checkpoint = 0
    segments = []
    for path in folder.glob("segment-*.log"):
        with path.open("rb") as fh:
            head = fh.read(_SEGMENT_HEADER.size)
        if len(head) == _SEGMENT_HEADER.size and head[:4] == _SEGMENT_MAGIC:
            segments.append((_SEGMENT_HEADER.unpack(head)[1], path))
    # Generations grow with the sequence numbers: segment order is entry order.
    for generation, path in sorted(segments):
        yield from _segment_entries(path, generation, checkpoint)


def _segment_entries(path: Path, generation: int, checkpoint: int) -> Iterator[IntakeEntry]:
    with path.open("rb") as fh:
        offset = _HEADER_BLOCK
        while offset + _ENTRY.size <= SEGMENT_BYTES:
            fh.seek(offset)
            raw = fh.read(_ENTRY.size)
            if len(raw) < _ENTRY.size:
                return
            magic, gen, seq, meta_len, data_len, meta_crc = _ENTRY.unpack(raw)
            if magic != _ENTRY_MAGIC or gen != generation:
                return
            if seq <= checkpoint:  # applied already: skip without reading the data
                offset += _ENTRY.size + meta_len + data_len
                continue
            meta_raw = fh.read(meta_len)
            if len(meta_raw) != meta_len or zlib.crc32(meta_raw) != meta_crc:
                return
            data = fh.read(data_len)
            if len(data) != data_len:
                return
            try:
                meta = json.loads(meta_raw)
            except ValueError:
                return
            unhashed = int(meta["meta_length"])
            if zlib.crc32(data[:unhashed]) != meta["meta_crc"]:
                return
            if hashlib.sha256(memoryview(data)[unhashed:]).hexdigest() != meta["sha256"]:
                return
            offset += _ENTRY.size + meta_len + data_len
            yield IntakeEntry(
                path=meta["path"],
                record=meta["record"],
                sha256=meta["sha256"],
                size_bytes=int(meta["size"]),
                meta_length=unhashed,
                chunks=[data],
                seq=seq,
                received_at=float(meta.get("received_at", time.time())),
            )


class IntakeWriter:
    """The background thread that turns journal entries into files and rows.

    Parameters
    ----------
    journal:
        The journal the entries were appended to.
    apply:
        Writes a batch's files and rows (one transaction) and returns once they
        are committed (:meth:`storage.received.ReceivedStore.apply_intake`).
    flush:
        Makes the spool and database file systems durable (a
        :class:`~storage.durability.DurabilityBarrier`'s ``wait``); ``None``
        when the node runs without fsync.
    batch:
        At most this many entries per transaction.
    linger_s:
        How long a batch waits for more entries (each batch costs a transaction
        and a flush of the file systems; the entries are durable meanwhile).
    """

    def __init__(
        self,
        journal: IntakeJournal,
        apply: Callable[[list[IntakeEntry]], None],
        flush: Callable[[], None] | None,
        *,
        batch: int = 256,
        linger_s: float = 0.1,
    ) -> None:
        self.journal = journal
        self._apply = apply
        self._flush = flush
        self._batch = batch
        self._linger_s = linger_s
        self._draining = 0
        self._cond = threading.Condition()
        self._queue: list[IntakeEntry] = []
        self._pending: dict[str, int] = {}
        """Spool path -> entries queued or being written (for duplicate checks)."""
        self._pending_bytes = 0
        self._stopping = False
        self.error: BaseException | None = None
        """The last failure of a batch (cleared by the next success)."""
        self.applied = 0
        self._thread = threading.Thread(target=self._run, name="intake-writer", daemon=True)
        self._thread.start()

    def is_pending(self, path: str) -> bool:
        """True while an entry for *path* is not yet in the spool and the database."""
        with self._cond:
            return path in self._pending

    @property
    def pending_bytes(self) -> int:
        with self._cond:
            return self._pending_bytes

    @property
    def healthy(self) -> bool:
        """False after a failed batch, until one succeeds."""
        return self.error is None

    def reserve(self, path: str) -> bool:
        """Claim *path* for an entry about to be appended; False when one is pending."""
        with self._cond:
            if path in self._pending:
                return False
            self._pending[path] = 1
            return True

    def release(self, path: str) -> None:
        """Give up a claim whose entry was not appended."""
        with self._cond:
            self._pending.pop(path, None)
            self._cond.notify_all()

    def submit(self, entry: IntakeEntry) -> None:
        """Queue an appended entry (its path claimed with :meth:`reserve`) for writing."""
        with self._cond:
            self._queue.append(entry)
            self._pending_bytes += entry.size_bytes
            self._cond.notify_all()

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until every queued entry is written; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._draining += 1
            self._cond.notify_all()
            try:
                while self._pending_bytes or self._queue:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(min(left, 0.5))
            finally:
                self._draining -= 1
        return True

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what is queued, then stop the thread."""
        self.drain(timeout_s)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                deadline = time.monotonic() + self._linger_s
                while (
                    len(self._queue) < self._batch
                    and not self._stopping
                    and not self._draining
                    and (left := deadline - time.monotonic()) > 0
                ):
                    self._cond.wait(left)
                batch, self._queue = self._queue[: self._batch], self._queue[self._batch :]
            try:
                self._apply(batch)
                if self._flush is not None:
                    self._flush()
            except Exception as exc:  # noqa: BLE001 - retried; the journal keeps the data
                if self.error is None:
                    LOGGER.error(
                        "intake: %d received instance(s) not yet written to the spool and "
                        "database (%s); retrying (they are safe in the journal)",
                        len(batch),
                        exc,
                    )
                self.error = exc
                with self._cond:
                    self._queue[:0] = batch
                    self._cond.wait(0.5)
                continue
            if self.error is not None:
                LOGGER.warning("intake: writing received instances again after an error")
            self.error = None
            self.journal.applied([e.seq for e in batch])
            with self._cond:
                for entry in batch:
                    self._pending.pop(entry.path, None)
                    self._pending_bytes -= entry.size_bytes
                self.applied += len(batch)
                self._cond.notify_all()
