"""The audit trail's table: append events, read them back filtered.

The event vocabulary (names, action and outcome codes, after DICOM PS3.15
A.5 / IHE ATNA) belongs to :mod:`dicom_node.audit`; this module only stores
and reads rows.  Nothing here is ever updated: the trail is append-only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select

from storage.db import Database
from storage.jobs import as_utc
from storage.models import AuditEvent, utcnow

__all__ = ["AuditEntry", "AuditFilter", "AuditStore"]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited event, as written and as read back."""

    event: str
    action: str
    outcome: int = 0
    actor: str | None = None
    actor_kind: str = "node"
    address: str | None = None
    node: str | None = None
    study_instance_uid: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=utcnow)
    id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (``at`` in ISO 8601 UTC)."""
        return {
            "id": self.id,
            "at": _utc(self.at).isoformat(),
            "event": self.event,
            "action": self.action,
            "outcome": self.outcome,
            "actor": self.actor,
            "actor_kind": self.actor_kind,
            "address": self.address,
            "node": self.node,
            "study_instance_uid": self.study_instance_uid,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which events :meth:`AuditStore.query` returns (every field optional)."""

    since: datetime | None = None
    until: datetime | None = None
    events: Sequence[str] = ()
    actor: str | None = None
    study_instance_uid: str | None = None
    failures_only: bool = False
    """Only events whose outcome is not 0 (success)."""


class AuditStore:
    """Append-only access to the ``audit_event`` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def append(self, entries: Iterable[AuditEntry]) -> int:
        """Write *entries* in one transaction; returns how many were written."""
        rows = [
            {
                "at": e.at,
                "event": e.event,
                "action": e.action,
                "outcome": e.outcome,
                "actor": (e.actor or None) and e.actor[:128],
                "actor_kind": e.actor_kind,
                "address": (e.address or None) and e.address[:64],
                "node": (e.node or None) and e.node[:128],
                "study_instance_uid": e.study_instance_uid,
                "detail": e.detail,
            }
            for e in entries
        ]
        if not rows:
            return 0
        with self.db.session() as session:
            session.execute(insert(AuditEvent), rows)
        return len(rows)

    def query(
        self, where: AuditFilter | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[AuditEntry]:
        """Events matching *where*, newest first."""
        stmt = self._filtered(select(AuditEvent), where or AuditFilter())
        stmt = stmt.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit).offset(offset)
        with self.db.sessions() as session:
            return [_entry(row) for row in session.scalars(stmt)]

    def count(self, where: AuditFilter | None = None) -> int:
        """How many events match *where*."""
        stmt = self._filtered(select(func.count()).select_from(AuditEvent), where or AuditFilter())
        with self.db.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    @staticmethod
    def _filtered(stmt: Any, where: AuditFilter) -> Any:
        if where.since is not None:
            stmt = stmt.where(AuditEvent.at >= where.since)
        if where.until is not None:
            stmt = stmt.where(AuditEvent.at < where.until)
        if where.events:
            stmt = stmt.where(AuditEvent.event.in_(list(where.events)))
        if where.actor is not None:
            stmt = stmt.where(AuditEvent.actor == where.actor)
        if where.study_instance_uid is not None:
            stmt = stmt.where(AuditEvent.study_instance_uid == where.study_instance_uid)
        if where.failures_only:
            stmt = stmt.where(AuditEvent.outcome != 0)
        return stmt


def _utc(value: datetime) -> datetime:
    return as_utc(value) or value


def _entry(row: AuditEvent) -> AuditEntry:
    return AuditEntry(
        id=row.id,
        at=_utc(row.at),
        event=row.event,
        action=row.action,
        outcome=row.outcome,
        actor=row.actor,
        actor_kind=row.actor_kind,
        address=row.address,
        node=row.node,
        study_instance_uid=row.study_instance_uid,
        detail=dict(row.detail or {}),
    )
