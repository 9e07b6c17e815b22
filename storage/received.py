"""Recording received instances: the spool file and its database rows together.

:meth:`ReceivedStore.store` is the one place where a received instance becomes
durable: the file is moved into the spool (already fsync'd) and the study,
series and instance rows are committed.  Only when it returns is the instance
safe to acknowledge.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError

from storage.db import Database
from storage.durability import DurabilityBarrier
from storage.intake import (
    IntakeEntry,
    IntakeJournal,
    IntakeWriter,
    JournalFull,
    read_entries,
    write_checkpoint,
)
from storage.models import Instance, Series, Study, utcnow
from storage.spool import BufferedFile, Spool, SpooledFile

__all__ = ["DuplicateAction", "InstanceRecord", "ReceivedStore", "StoreOutcome", "StoreResult"]

LOGGER = logging.getLogger(__name__)

_ATTEMPTS = 5
_TOUCH_INTERVAL_S = 1.0
"""last_received_at of a study/series is refreshed at most this often (it drives
quiet-period completion, which counts in tens of seconds)."""
# PostgreSQL deadlock_detected / serialization_failure; SQLite "database is locked".
_TRANSIENT_SQLSTATES = {"40P01", "40001"}
_INTAKE_MAX_PENDING_BYTES = 512 * 2**20
"""Past this much journaled data not yet written, instances are stored directly."""


def _is_transient(exc: OperationalError) -> bool:
    state = getattr(exc.orig, "sqlstate", None)
    return state in _TRANSIENT_SQLSTATES or "database is locked" in str(exc.orig)


class DuplicateAction(str, enum.Enum):
    """How to treat an instance whose SOP Instance UID is already stored with other bytes."""

    KEEP_FIRST = "keep-first"
    REPLACE = "replace"
    REJECT = "reject"


class StoreOutcome(str, enum.Enum):
    """What :meth:`ReceivedStore.store` did."""

    STORED = "stored"
    """New instance, file and rows written."""
    DUPLICATE_SAME = "duplicate-same"
    """Already stored with identical bytes; counted, nothing rewritten."""
    DUPLICATE_KEPT = "duplicate-kept"
    """Already stored with different bytes; the first copy was kept."""
    REPLACED = "replaced"
    """Already stored with different bytes; replaced by the new copy."""
    REJECTED = "rejected"
    """Already stored with different bytes; refused (policy ``reject``)."""
    REPAIRED = "repaired"
    """Already recorded, but its file was lost (crash); restored from this copy."""


_PLACED = frozenset({StoreOutcome.STORED, StoreOutcome.REPLACED, StoreOutcome.REPAIRED})
"""Outcomes that moved the temporary file into the spool."""


@dataclass
class InstanceRecord:
    """What the receiver knows about one instance (no pixel data)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    instance_number: int | None = None
    modality: str | None = None
    body_part_examined: str | None = None
    series_description: str | None = None
    series_number: int | None = None
    manufacturer: str | None = None
    manufacturer_model_name: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    study_date: str | None = None
    accession_number: str | None = None
    study_description: str | None = None
    calling_ae: str | None = None
    called_ae: str | None = None
    peer_address: str | None = None
    attributes: dict[str, Any] | Callable[[], dict[str, Any]] = field(default_factory=dict)
    """Routing attributes of the series, or a callable that makes them (called only
    when the instance starts a new series)."""


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(InstanceRecord) if f.name != "attributes")
"""What an intake journal entry keeps of a record (a series' attributes are
recorded with its first instance, which never goes through the journal)."""


@dataclass(frozen=True)
class StoreResult:
    """The outcome of storing one instance."""

    outcome: StoreOutcome
    instance_id: int | None
    path: str


class ReceivedStore:
    """Spool + database for received instances.

    Parameters
    ----------
    db:
        The database (schema already upgraded).
    spool:
        The file spool.
    duplicate_action:
        Policy for re-sent instances with different content.
    barrier:
        When given, :meth:`store` ends with a group-committed flush of the
        spool and database file systems (the spool then does not fsync
        each file itself).
    """

    def __init__(
        self,
        db: Database,
        spool: Spool,
        duplicate_action: DuplicateAction = DuplicateAction.KEEP_FIRST,
        barrier: DurabilityBarrier | None = None,
    ) -> None:
        self.db = db
        self.spool = spool
        self.barrier = barrier
        self.duplicate_action = DuplicateAction(duplicate_action)
        self._ids_lock = threading.Lock()
        self._study_ids: dict[str, int] = {}
        self._series_ids: dict[str, int] = {}
        self._touched: dict[str, float] = {}
        self._live_series: set[str] = set()
        """Series whose row exists, not purged: their new instances may be journaled."""
        self.journal: IntakeJournal | None = None
        self.intake: IntakeWriter | None = None
        self.intake_memory_limit = 4 * 2**20
        """Data sets up to this many bytes are received in memory and journaled."""
        self._insert_study = _insert_returning_id(db, Study)
        self._insert_series = _insert_returning_id(db, Series)
        self._insert_instance = _insert_returning_id(db, Instance)
        self._insert_instance_uids = _insert_returning_id(
            db, Instance, Instance.__table__.c.sop_instance_uid
        )

    def store(self, record: InstanceRecord, spooled: SpooledFile | BufferedFile) -> StoreResult:
        """Make *spooled* durable as *record*; returns what was done.

        A new instance of a series this store already knows, held in memory,
        goes through the intake journal (:mod:`storage.intake`): one durable
        append, its file and rows written soon after in a batch
        (``instance_id`` is then ``None``).  Everything else -- the first
        instance of a series, a re-sent instance, a large data set -- is
        written directly, file and rows, before this returns.

        The temporary file is always consumed (moved into place or removed).
        Raises on database or file system errors; the caller answers a failure
        status then, and the sender may retry.  Raises
        :class:`~storage.spool.SpoolConflict` when a new instance's path
        already holds a file (it is never replaced).
        """
        if isinstance(spooled, BufferedFile):
            journaled = self._store_journaled(record, spooled)
            if journaled is not None:
                return journaled
            spooled = self.spool.spill(spooled)
        # Journaled instances first (the direct path reads the rows they make); a
        # writer that keeps failing (database down) is waited for only briefly.
        if self.intake is not None and not self.intake.drain(30.0 if self.intake.healthy else 2.0):
            self.spool.discard(spooled)
            raise OperationalError(
                "intake", None, Exception("received instances not yet written (database down?)")
            )
        placed = False
        self._resolve_attributes(record)
        try:
            for attempt in range(_ATTEMPTS):
                try:
                    result = self._store_once(record, spooled)
                    placed = result.outcome in _PLACED
                    if self.barrier is not None and result.outcome is not StoreOutcome.REJECTED:
                        self.barrier.wait()
                    return result
                except IntegrityError:
                    # A concurrent association inserted the same study/series/instance.
                    if attempt == _ATTEMPTS - 1:
                        raise
                    self._forget_ids(record)
                except OperationalError as exc:
                    self._forget_ids(record)
                    if attempt == _ATTEMPTS - 1 or not _is_transient(exc):
                        raise
                    LOGGER.debug("transient database error, retrying: %s", exc)
                    time.sleep(0.01 * (attempt + 1))
            raise AssertionError("unreachable")
        finally:
            if not placed:
                self.spool.discard(spooled)

    # -- the intake journal ------------------------------------------------------------
    def start_intake(self, folder: Path, *, durable: bool, memory_limit: int = 4 * 2**20) -> None:
        """Receive through an intake journal in *folder* (this process's own)."""
        self.intake_memory_limit = memory_limit
        self.journal = IntakeJournal(folder, durable=durable)
        self.intake = IntakeWriter(
            self.journal,
            self.apply_intake,
            self.barrier.wait if self.barrier is not None else None,
        )

    def replay_intake(self, folders: list[Path]) -> int:
        """Apply every entry the journals in *folders* hold past their checkpoints.

        Run at start-up before anything is received (and before a journal in
        those folders is opened for writing).  Returns how many entries were
        applied; each journal's checkpoint is moved past them.
        """
        applied = 0
        for folder in folders:
            batch: list[IntakeEntry] = []
            last = 0
            for entry in read_entries(folder):
                batch.append(entry)
                last = entry.seq
                if len(batch) >= 64:
                    self.apply_intake(batch)
                    applied += len(batch)
                    batch = []
            if batch:
                self.apply_intake(batch)
                applied += len(batch)
            if last:
                if self.barrier is not None:
                    self.barrier.wait()
                write_checkpoint(folder, last)
        return applied

    def flush_intake(self, timeout_s: float = 10.0) -> bool:
        """Write the journaled instances now; False when they are not all written."""
        return self.intake is None or self.intake.drain(timeout_s)

    def stop_intake(self) -> None:
        """Write what the journal holds, then close it."""
        if self.intake is not None:
            self.intake.close()
            self.intake = None
        if self.journal is not None:
            self.journal.close()
            self.journal = None

    def _store_journaled(self, record: InstanceRecord, data: BufferedFile) -> StoreResult | None:
        """Append a new instance of a known series to the journal; ``None``: not here."""
        intake = self.intake
        if (
            intake is None
            or self.journal is None
            or not intake.healthy
            or intake.pending_bytes > _INTAKE_MAX_PENDING_BYTES
        ):
            return None
        with self._ids_lock:
            if (
                record.series_instance_uid not in self._live_series
                or record.study_instance_uid not in self._study_ids
            ):
                return None
        rel = self.spool.relative_path(
            record.study_instance_uid, record.series_instance_uid, record.sop_instance_uid
        )
        if not intake.reserve(rel):
            return None  # the same instance is being written: the direct path decides
        try:
            if self.spool.absolute(rel).exists():
                intake.release(rel)
                return None  # re-sent: the direct path applies the duplicate policy
            entry = IntakeEntry(
                path=rel,
                record={name: getattr(record, name) for name in _RECORD_FIELDS},
                sha256=data.sha256,
                size_bytes=data.size_bytes,
                meta_length=data.meta_length,
                chunks=data.chunks,
            )
            self.journal.append(entry)
        except JournalFull as exc:
            intake.release(rel)
            LOGGER.debug("intake journal full (%s); storing directly", exc)
            return None
        except BaseException:
            intake.release(rel)
            raise
        intake.submit(entry)
        return StoreResult(StoreOutcome.STORED, None, rel)

    def apply_intake(self, entries: list[IntakeEntry]) -> None:
        """Write the files and rows of journaled instances, in one transaction.

        Applying an entry twice changes nothing (start-up replay may do so).
        A row that exists already is an instance re-sent meanwhile, or one whose
        file was purged or lost: it is treated like :meth:`store` treats it.
        Files are written unflushed; the caller flushes once after.
        """
        now = utcnow()
        records = [InstanceRecord(**e.record) for e in entries]
        with self.db.engine.begin() as conn:
            series_ids = {}
            for record in records:
                uid = record.series_instance_uid
                if uid not in series_ids:
                    study_id = self._study_id(conn, record, now, touch=False)
                    series_ids[uid] = self._series_id(conn, record, study_id, now, touch=False)
            uids = [r.sop_instance_uid for r in records]
            existing: dict[str, Any] = _instance_rows(conn, uids)
            rows = []
            new: dict[str, IntakeEntry] = {}
            for entry, record in zip(entries, records, strict=True):
                if record.sop_instance_uid in existing:
                    self._apply_existing(
                        conn, entry, record, existing[record.sop_instance_uid], now
                    )
                    continue
                rows.append(
                    {
                        "sop_instance_uid": record.sop_instance_uid,
                        "series_id": series_ids[record.series_instance_uid],
                        "sop_class_uid": record.sop_class_uid,
                        "transfer_syntax_uid": record.transfer_syntax_uid,
                        "instance_number": record.instance_number,
                        "path": entry.path,
                        "size_bytes": entry.size_bytes,
                        "sha256": entry.sha256,
                        "calling_ae": record.calling_ae,
                        "peer_address": record.peer_address,
                        "received_at": now,
                        "receive_count": 1,
                    }
                )
                existing[record.sop_instance_uid] = None  # twice in one batch: once
                new[record.sop_instance_uid] = entry
            # Rows first, files after: another process's writer or direct store may
            # insert the same instance meanwhile (the insert waits for its commit);
            # only the rows inserted here get their files written here.  The files
            # are in place before the rows become visible (commit).
            inserted: set[str] = set()
            if rows:
                inserted = {uid for (uid,) in conn.execute(self._insert_instance_uids, rows)}
            for uid, entry in new.items():
                if uid in inserted:
                    self.spool.write_unsynced(entry.path, entry.chunks)
            raced = [uid for uid in new if uid not in inserted]
            if raced:
                for uid, row in _instance_rows(conn, raced).items():
                    entry = new[uid]
                    self._apply_existing(conn, entry, InstanceRecord(**entry.record), row, now)
            for table, ids in (
                (Series, set(series_ids.values())),
                (Study, {self._study_ids[r.study_instance_uid] for r in records}),
            ):
                conn.execute(update(table).where(table.id.in_(ids)).values(last_received_at=now))

    def _apply_existing(
        self,
        conn: Connection,
        entry: IntakeEntry,
        record: InstanceRecord,
        known: Any,
        now: datetime,
    ) -> None:
        """A journaled instance whose row exists already (see :meth:`apply_intake`)."""
        if known is None:
            return  # the same instance earlier in this batch
        final = self.spool.absolute(known.path)
        if known.purged_at is not None:
            # Clear the purge mark before writing the file (see _restore_purged).
            conn.execute(
                update(Instance)
                .where(Instance.id == known.id)
                .values(
                    purged_at=None,
                    receive_count=Instance.receive_count + 1,
                    sha256=entry.sha256,
                    size_bytes=entry.size_bytes,
                    transfer_syntax_uid=record.transfer_syntax_uid,
                    received_at=now,
                )
            )
            self.spool.write_unsynced(known.path, entry.chunks)
            return
        values: dict[str, Any] = {"receive_count": Instance.receive_count + 1}
        same = known.sha256 == entry.sha256
        missing = not final.is_file()
        if missing or (not same and self.duplicate_action is DuplicateAction.REPLACE):
            self.spool.write_unsynced(known.path, entry.chunks)
            values.update(sha256=entry.sha256, size_bytes=entry.size_bytes, received_at=now)
        elif not same:
            LOGGER.warning(
                "instance re-sent with different content while the first copy was being "
                "written; kept the first: %s",
                record.sop_instance_uid,
            )
        conn.execute(update(Instance).where(Instance.id == known.id).values(**values))

    def _resolve_attributes(self, record: InstanceRecord) -> None:
        """Make a series' routing attributes before the write transaction.

        They are needed only when the series row is new; a callable (a full
        header parse) runs here, outside the transaction, so the database's
        write lock is never held while a header is parsed.
        """
        if not callable(record.attributes):
            return
        with self._ids_lock:
            known = record.series_instance_uid in self._series_ids
        if not known:
            record.attributes = record.attributes()

    def _forget_ids(self, record: InstanceRecord) -> None:
        """Drop cached row ids after a rollback (the rows may not exist)."""
        with self._ids_lock:
            self._study_ids.pop(record.study_instance_uid, None)
            self._series_ids.pop(record.series_instance_uid, None)
            self._live_series.discard(record.series_instance_uid)

    def _store_once(self, record: InstanceRecord, spooled: SpooledFile) -> StoreResult:
        now = utcnow()
        rel = self.spool.relative_path(
            record.study_instance_uid, record.series_instance_uid, record.sop_instance_uid
        )
        with self.db.engine.begin() as conn:
            study_id = self._study_id(conn, record, now)
            series_id = self._series_id(conn, record, study_id, now)
            # One statement in the common case; a conflict means a re-sent instance.
            inserted = conn.execute(
                self._insert_instance,
                {
                    "sop_instance_uid": record.sop_instance_uid,
                    "series_id": series_id,
                    "sop_class_uid": record.sop_class_uid,
                    "transfer_syntax_uid": record.transfer_syntax_uid,
                    "instance_number": record.instance_number,
                    "path": rel,
                    "size_bytes": spooled.size_bytes,
                    "sha256": spooled.sha256,
                    "calling_ae": record.calling_ae,
                    "peer_address": record.peer_address,
                    "received_at": now,
                    "receive_count": 1,
                },
            ).first()
            if inserted is None:
                existing = conn.execute(
                    select(Instance.id, Instance.sha256, Instance.path, Instance.purged_at).where(
                        Instance.sop_instance_uid == record.sop_instance_uid
                    )
                ).one()
                if existing.purged_at is not None:
                    return self._restore_purged(conn, record, spooled, existing, now)
                return self._duplicate(conn, record, spooled, existing[:3], now)
            # The file is in place before the row becomes visible (commit); a file
            # already at that path belongs to no row and is never replaced.
            self.spool.place_new(spooled, rel)
            return StoreResult(StoreOutcome.STORED, int(inserted[0]), rel)

    def _duplicate(
        self,
        conn: Connection,
        record: InstanceRecord,
        spooled: SpooledFile,
        existing: Any,
        now: datetime,
    ) -> StoreResult:
        inst_id, sha, rel = existing
        values: dict[str, Any] = {"receive_count": Instance.receive_count + 1}
        if sha == spooled.sha256:
            outcome = StoreOutcome.DUPLICATE_SAME
            final = self.spool.absolute(rel)
            if not final.is_file() or final.stat().st_size != spooled.size_bytes:
                # The row survived a crash that its file did not: repair from this copy.
                LOGGER.warning("spool file of a stored instance was missing; restored it")
                self.spool.commit(spooled, rel)
                outcome = StoreOutcome.REPAIRED
        elif self.duplicate_action is DuplicateAction.REJECT:
            return StoreResult(StoreOutcome.REJECTED, inst_id, rel)
        elif self.duplicate_action is DuplicateAction.REPLACE:
            self.spool.commit(spooled, rel)
            values.update(
                sha256=spooled.sha256,
                size_bytes=spooled.size_bytes,
                transfer_syntax_uid=record.transfer_syntax_uid,
                received_at=now,
            )
            outcome = StoreOutcome.REPLACED
        else:
            outcome = StoreOutcome.DUPLICATE_KEPT
        conn.execute(update(Instance).where(Instance.id == inst_id).values(**values))
        return StoreResult(outcome, inst_id, rel)

    def _restore_purged(
        self,
        conn: Connection,
        record: InstanceRecord,
        spooled: SpooledFile,
        existing: Any,
        now: datetime,
    ) -> StoreResult:
        """An instance whose file retention deleted arrives again: keep this copy.

        The row's purge mark is cleared *before* the file is placed: that
        ``UPDATE`` takes the row's write lock, which a purge deleting files
        holds too (:meth:`storage.retention.RetentionStore.delete_files`), so
        the new file is never deleted by a purge already under way.
        """
        conn.execute(
            update(Instance)
            .where(Instance.id == existing.id)
            .values(
                purged_at=None,
                receive_count=Instance.receive_count + 1,
                sha256=spooled.sha256,
                size_bytes=spooled.size_bytes,
                transfer_syntax_uid=record.transfer_syntax_uid,
                received_at=now,
            )
        )
        self.spool.commit(spooled, existing.path)
        return StoreResult(StoreOutcome.REPAIRED, int(existing.id), str(existing.path))

    def _due(self, key: str, now_mono: float) -> bool:
        """True when *key*'s last_received_at was not updated in the last second."""
        with self._ids_lock:
            last = self._touched.get(key, -1e9)
            if now_mono - last < _TOUCH_INTERVAL_S:
                return False
            self._touched[key] = now_mono
            return True

    def _study_id(
        self, conn: Connection, record: InstanceRecord, now: datetime, *, touch: bool = True
    ) -> int:
        uid = record.study_instance_uid
        with self._ids_lock:
            cached = self._study_ids.get(uid)
        if cached is not None:
            if touch and self._due("study:" + uid, time.monotonic()):
                conn.execute(update(Study).where(Study.id == cached).values(last_received_at=now))
            return cached
        row = conn.execute(
            self._insert_study,
            {
                "study_instance_uid": uid,
                "patient_id": _clip(record.patient_id, 64),
                "patient_name": _clip(record.patient_name, 324),
                "study_date": _clip(record.study_date, 8),
                "accession_number": _clip(record.accession_number, 16),
                "study_description": _clip(record.study_description, 64),
                "first_received_at": now,
                "last_received_at": now,
            },
        ).first()
        if row is None:
            study_id = int(
                conn.execute(select(Study.id).where(Study.study_instance_uid == uid)).scalar_one()
            )
            conn.execute(update(Study).where(Study.id == study_id).values(last_received_at=now))
        else:
            study_id = int(row[0])
        with self._ids_lock:
            self._study_ids[uid] = study_id
            self._touched["study:" + uid] = time.monotonic()
        return study_id

    def _series_id(
        self,
        conn: Connection,
        record: InstanceRecord,
        study_id: int,
        now: datetime,
        *,
        touch: bool = True,
    ) -> int:
        uid = record.series_instance_uid
        with self._ids_lock:
            cached = self._series_ids.get(uid)
        if cached is not None:
            if touch and self._due("series:" + uid, time.monotonic()):
                conn.execute(update(Series).where(Series.id == cached).values(last_received_at=now))
            return cached
        live = True
        found = conn.execute(
            select(Series.id, Series.purged_at).where(Series.series_instance_uid == uid)
        ).one_or_none()
        existing = None if found is None else int(found.id)
        if found is not None:
            live = found.purged_at is None
            conn.execute(update(Series).where(Series.id == existing).values(last_received_at=now))
        else:
            attrs = record.attributes() if callable(record.attributes) else record.attributes
            row = conn.execute(
                self._insert_series,
                {
                    "series_instance_uid": uid,
                    "study_id": study_id,
                    "modality": _clip(record.modality, 16),
                    "body_part_examined": _clip(record.body_part_examined, 64),
                    "series_description": _clip(record.series_description, 64),
                    "series_number": record.series_number,
                    "manufacturer": _clip(record.manufacturer, 64),
                    "manufacturer_model_name": _clip(record.manufacturer_model_name, 64),
                    "calling_ae": _clip(record.calling_ae, 16),
                    "called_ae": _clip(record.called_ae, 16),
                    "peer_address": _clip(record.peer_address, 64),
                    "attributes": _without_nul(attrs),
                    "first_received_at": now,
                    "last_received_at": now,
                },
            ).first()
            existing = None if row is None else int(row[0])
        if existing is None:  # inserted concurrently by another association
            existing = int(
                conn.execute(
                    select(Series.id).where(Series.series_instance_uid == uid)
                ).scalar_one()
            )
            conn.execute(update(Series).where(Series.id == existing).values(last_received_at=now))
        with self._ids_lock:
            self._series_ids[uid] = existing
            self._touched["series:" + uid] = time.monotonic()
            if live:
                self._live_series.add(uid)
        return existing

    def known_paths(self) -> set[str]:
        """The spool-relative paths of every recorded instance."""
        with self.db.engine.connect() as conn:
            return set(conn.execute(select(Instance.path)).scalars())


def _instance_rows(conn: Connection, uids: list[str]) -> dict[str, Any]:
    """The rows (id, sha256, path, purged_at) of the instances among *uids* that exist."""
    return {
        row.sop_instance_uid: row
        for row in conn.execute(
            select(
                Instance.sop_instance_uid,
                Instance.id,
                Instance.sha256,
                Instance.path,
                Instance.purged_at,
            ).where(Instance.sop_instance_uid.in_(uids))
        )
    }


def _insert_returning_id(db: Database, model: type[Any], column: Any = None) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING RETURNING id`` (or *column*) for the
    database's dialect."""
    table = model.__table__
    returned = table.c.id if column is None else column
    if db.is_sqlite:
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table).on_conflict_do_nothing().returning(returned)
    from sqlalchemy.dialects import postgresql

    return postgresql.insert(table).on_conflict_do_nothing().returning(returned)


def _clip(value: str | None, n: int) -> str | None:
    """*value* cut to *n* characters, without NUL characters: no text VR may hold one
    (PS3.5 6.2; only UI values are padded with it) and PostgreSQL text cannot.  The
    spool file keeps the bytes as received."""
    return None if value is None else value.replace("\x00", "")[:n]


def _without_nul(value: Any) -> Any:
    """*value* (routing attributes: JSON of dicts, lists and strings) without NUL
    characters, which PostgreSQL refuses in text and in JSON."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value
