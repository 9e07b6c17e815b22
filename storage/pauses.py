"""Pausing rules and destinations: the ``pause`` table.

An operator pauses a destination while its archive is down for maintenance
(its deliveries stay pending, no association is tried) or a rule while a
model is being checked (the series it matches wait, unsettled, and are
completed when it is resumed).  Nothing is dropped by a pause.  The node's
processes read the paused names at every pass, so a pause set from the web
or the CLI holds across processes and hosts sharing the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import delete, insert, select

from storage.db import Database, DuplicateRow
from storage.jobs import as_utc
from storage.models import Pause, utcnow

__all__ = ["PAUSE_KINDS", "PauseKind", "PauseRecord", "PauseStore"]

PauseKind = Literal["rule", "destination"]
PAUSE_KINDS: tuple[PauseKind, ...] = ("rule", "destination")


@dataclass(frozen=True, slots=True)
class PauseRecord:
    """One paused rule or destination."""

    kind: str
    name: str
    paused_by: str | None
    reason: str | None
    paused_at: datetime | None


class PauseStore:
    """Reads and writes the ``pause`` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def pause(
        self, kind: PauseKind, name: str, *, by: str | None = None, reason: str | None = None
    ) -> bool:
        """Pause *name*; False when it was paused already (the first pause is kept)."""
        _check(kind)
        try:
            with self.db.engine.begin() as conn:
                conn.execute(
                    insert(Pause).values(
                        kind=kind, name=name, paused_by=by, reason=reason, paused_at=utcnow()
                    )
                )
        except DuplicateRow:
            return False
        return True

    def resume(self, kind: PauseKind, name: str) -> bool:
        """Resume *name*; False when it was not paused."""
        _check(kind)
        with self.db.engine.begin() as conn:
            gone = conn.execute(delete(Pause).where(Pause.kind == kind, Pause.name == name))
        return bool(gone.rowcount)

    def names(self, kind: PauseKind) -> frozenset[str]:
        """The paused names of one kind."""
        _check(kind)
        with self.db.engine.connect() as conn:
            return frozenset(
                str(n) for n in conn.execute(select(Pause.name).where(Pause.kind == kind)).scalars()
            )

    def records(self) -> list[PauseRecord]:
        """Every pause, oldest first."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(select(Pause.__table__).order_by(Pause.paused_at, Pause.id)).all()
        return [
            PauseRecord(r.kind, r.name, r.paused_by, r.reason, as_utc(r.paused_at)) for r in rows
        ]


def _check(kind: str) -> None:
    if kind not in PAUSE_KINDS:
        raise ValueError(f"cannot pause a {kind!r}: only {', '.join(PAUSE_KINDS)}")
