"""Recording received instances: the spool file and its database rows together.

:meth:`ReceivedStore.store` is the one place where a received instance becomes
durable: the file is moved into the spool (already fsync'd) and the study,
series and instance rows are committed.  Only when it returns is the instance
safe to acknowledge.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError

from storage.db import Database
from storage.durability import DurabilityBarrier
from storage.models import Instance, Series, Study, utcnow
from storage.spool import Spool, SpooledFile

__all__ = ["DuplicateAction", "InstanceRecord", "ReceivedStore", "StoreOutcome", "StoreResult"]

LOGGER = logging.getLogger(__name__)

_ATTEMPTS = 5
_TOUCH_INTERVAL_S = 1.0
"""last_received_at of a study/series is refreshed at most this often (it drives
quiet-period completion, which counts in tens of seconds)."""
# PostgreSQL deadlock_detected / serialization_failure; SQLite "database is locked".
_TRANSIENT_SQLSTATES = {"40P01", "40001"}


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
        self._insert_study = _insert_returning_id(db, Study)
        self._insert_series = _insert_returning_id(db, Series)
        self._insert_instance = _insert_returning_id(db, Instance)

    def store(self, record: InstanceRecord, spooled: SpooledFile) -> StoreResult:
        """Make *spooled* durable as *record*; returns what was done.

        The temporary file is always consumed (moved into place or removed).
        Raises on database or file system errors; the caller answers a failure
        status then, and the sender may retry.  Raises
        :class:`~storage.spool.SpoolConflict` when a new instance's path
        already holds a file (it is never replaced).
        """
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

    def _study_id(self, conn: Connection, record: InstanceRecord, now: datetime) -> int:
        uid = record.study_instance_uid
        with self._ids_lock:
            cached = self._study_ids.get(uid)
        if cached is not None:
            if self._due("study:" + uid, time.monotonic()):
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
        self, conn: Connection, record: InstanceRecord, study_id: int, now: datetime
    ) -> int:
        uid = record.series_instance_uid
        with self._ids_lock:
            cached = self._series_ids.get(uid)
        if cached is not None:
            if self._due("series:" + uid, time.monotonic()):
                conn.execute(update(Series).where(Series.id == cached).values(last_received_at=now))
            return cached
        existing = conn.execute(
            select(Series.id).where(Series.series_instance_uid == uid)
        ).scalar_one_or_none()
        if existing is not None:
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
        return existing

    def known_paths(self) -> set[str]:
        """The spool-relative paths of every recorded instance."""
        with self.db.engine.connect() as conn:
            return set(conn.execute(select(Instance.path)).scalars())


def _insert_returning_id(db: Database, model: type[Any]) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING RETURNING id`` for the database's dialect."""
    table = model.__table__
    if db.is_sqlite:
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table).on_conflict_do_nothing().returning(table.c.id)
    from sqlalchemy.dialects import postgresql

    return postgresql.insert(table).on_conflict_do_nothing().returning(table.c.id)


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
