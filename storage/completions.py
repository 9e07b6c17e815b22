"""Completion records and the series/study rows the collector reads.

The collector (:mod:`dicom_node.collect`) decides *when* a series or study is
complete and *which* jobs it makes; this module holds the SQL for it: the
rows that may have become quiet, their instance counts, the
:class:`~storage.models.Completion` snapshot (inserted, or revised when
instances arrived after it, superseding the earlier revision's queued jobs
and unsent deliveries) and the jobs, inserted through
:func:`storage.jobs.insert_job`.  One :class:`CompletionTransaction` is one
database transaction: the completion and its jobs become visible together.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.engine import Connection, Row

from storage.db import Database
from storage.jobs import DeliveryStatus, JobStatus, NewJob, as_utc, insert_job
from storage.models import Completion, Delivery, Instance, Job, Result, Series, Study

__all__ = [
    "CompletionRecord",
    "CompletionStore",
    "CompletionTransaction",
    "SeriesRow",
    "StudyRow",
]

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesRow:
    """A received series as the collector sees it (first instance's attributes)."""

    id: int
    study_id: int
    series_instance_uid: str
    modality: str | None
    body_part_examined: str | None
    series_description: str | None
    attributes: dict[str, Any]
    calling_ae: str | None
    called_ae: str | None
    peer_address: str | None
    last_received_at: datetime | None
    collected_at: datetime | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> SeriesRow:
        return cls(
            id=int(row.id),
            study_id=int(row.study_id),
            series_instance_uid=str(row.series_instance_uid),
            modality=row.modality,
            body_part_examined=row.body_part_examined,
            series_description=row.series_description,
            attributes=dict(row.attributes or {}),
            calling_ae=row.calling_ae,
            called_ae=row.called_ae,
            peer_address=row.peer_address,
            last_received_at=row.last_received_at,
            collected_at=row.collected_at,
        )


@dataclass(frozen=True)
class StudyRow:
    """A received study as the collector sees it."""

    id: int
    study_instance_uid: str
    last_received_at: datetime | None
    collected_at: datetime | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> StudyRow:
        return cls(
            id=int(row.id),
            study_instance_uid=str(row.study_instance_uid),
            last_received_at=row.last_received_at,
            collected_at=row.collected_at,
        )


@dataclass(frozen=True)
class CompletionRecord:
    """The outcome of :meth:`CompletionTransaction.record`.

    ``id`` is ``None`` when the snapshot was already recorded unchanged (no
    new jobs are due).
    """

    id: int | None
    revision: int
    superseded_jobs: int = 0
    cancelled_deliveries: int = 0


class CompletionTransaction:
    """The statements of one completion pass, in one database transaction."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    # -- reads --------------------------------------------------------------
    def series_by_uid(self, uid: str) -> SeriesRow | None:
        row = self._conn.execute(
            select(Series.__table__).where(Series.series_instance_uid == uid)
        ).one_or_none()
        return None if row is None else SeriesRow.from_row(row)

    def study_by_uid(self, uid: str) -> StudyRow | None:
        row = self._conn.execute(
            select(Study.__table__).where(Study.study_instance_uid == uid)
        ).one_or_none()
        return None if row is None else StudyRow.from_row(row)

    def series_of_study(self, study_id: int) -> list[SeriesRow]:
        rows = self._conn.execute(
            select(Series.__table__).where(Series.study_id == study_id).order_by(Series.id)
        ).all()
        return [SeriesRow.from_row(r) for r in rows]

    def series_instances(self, series_id: int) -> tuple[int, datetime | None]:
        """How many instances the series has, and when the last one arrived (UTC)."""
        count, last = self._conn.execute(
            select(func.count(), func.max(Instance.received_at)).where(
                Instance.series_id == series_id
            )
        ).one()
        return int(count), as_utc(last)

    def study_instances(self, study_id: int) -> tuple[int, datetime | None]:
        """How many instances the study has, and when the last one arrived (UTC)."""
        count, last = self._conn.execute(
            select(func.count(), func.max(Instance.received_at))
            .join(Series, Series.id == Instance.series_id)
            .where(Series.study_id == study_id)
        ).one()
        return int(count), as_utc(last)

    # -- writes -------------------------------------------------------------
    def mark_series_collected(self, series: SeriesRow) -> None:
        """The collector has settled everything the series held at its last arrival."""
        self._conn.execute(
            update(Series)
            .where(Series.id == series.id)
            .values(collected_at=series.last_received_at)
        )

    def record_routing(self, series_id: int, routing: dict[str, Any], now: datetime) -> None:
        """Keep how the rules judged the series (shown by the console: which
        rules matched and why the others did not)."""
        self._conn.execute(
            update(Series).where(Series.id == series_id).values(routing=routing, routed_at=now)
        )

    def mark_study_collected(self, study: StudyRow) -> None:
        """The collector has settled everything the study held at its last arrival."""
        self._conn.execute(
            update(Study).where(Study.id == study.id).values(collected_at=study.last_received_at)
        )

    def record(
        self,
        *,
        level: str,
        uid: str,
        rule: str,
        study_id: int,
        series_id: int | None,
        count: int,
        last: datetime,
        now: datetime,
        forced: bool,
    ) -> CompletionRecord:
        """Insert the completion of (*level*, *uid*, *rule*), or revise it.

        A revision (new instances since the recorded snapshot) supersedes the
        earlier revisions' queued jobs and cancels their unsent deliveries.
        """
        existing = self._conn.execute(
            select(Completion.__table__).where(
                Completion.level == level, Completion.uid == uid, Completion.rule == rule
            )
        ).one_or_none()
        if existing is None:
            completion_id = self._conn.execute(
                insert(Completion)
                .values(
                    level=level,
                    uid=uid,
                    rule=rule,
                    study_id=study_id,
                    series_id=series_id,
                    instance_count=count,
                    last_instance_at=last,
                    revision=0,
                    forced=forced,
                    completed_at=now,
                )
                .returning(Completion.id)
            ).scalar_one()
            return CompletionRecord(int(completion_id), 0)
        if existing.instance_count == count and as_utc(existing.last_instance_at) == last:
            return CompletionRecord(None, int(existing.revision))
        revision = int(existing.revision) + 1
        self._conn.execute(
            update(Completion)
            .where(Completion.id == existing.id)
            .values(
                instance_count=count,
                last_instance_at=last,
                revision=revision,
                forced=forced,
                completed_at=now,
            )
        )
        n_jobs, n_deliveries = self._supersede(int(existing.id), revision)
        return CompletionRecord(int(existing.id), revision, n_jobs, n_deliveries)

    def enqueue(self, job: NewJob) -> int:
        """Queue *job* in this transaction; returns its id."""
        return insert_job(self._conn, job)

    def _supersede(self, completion_id: int, revision: int) -> tuple[int, int]:
        older = select(Job.id).where(Job.completion_id == completion_id, Job.revision < revision)
        n_jobs = self._conn.execute(
            update(Job)
            .where(Job.id.in_(older), Job.status == JobStatus.QUEUED.value)
            .values(status=JobStatus.SUPERSEDED.value, error="superseded by a later revision")
        ).rowcount
        n_deliveries = self._conn.execute(
            update(Delivery)
            .where(
                Delivery.result_id.in_(select(Result.id).where(Result.job_id.in_(older))),
                Delivery.status == DeliveryStatus.PENDING.value,
            )
            .values(
                status=DeliveryStatus.CANCELLED.value,
                error="superseded by a later revision before it was sent",
            )
        ).rowcount
        return int(n_jobs), int(n_deliveries)


class CompletionStore:
    """Where the collector reads received series and records completions.

    Parameters
    ----------
    db:
        The node's database.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    def unsettled_series(self, horizon_s: float, now: datetime) -> list[SeriesRow]:
        """Series with instances since they were last settled, quiet for *horizon_s*."""
        return [SeriesRow.from_row(r) for r in self._unsettled(Series, horizon_s, now)]

    def unsettled_studies(self, horizon_s: float, now: datetime) -> list[StudyRow]:
        """Studies with instances since they were last settled, quiet for *horizon_s*."""
        return [StudyRow.from_row(r) for r in self._unsettled(Study, horizon_s, now)]

    def _unsettled(
        self, model: type[Series] | type[Study], horizon_s: float, now: datetime
    ) -> Sequence[Row[Any]]:
        with self.db.engine.connect() as conn:
            return conn.execute(
                select(model.__table__).where(
                    model.last_received_at <= now - timedelta(seconds=horizon_s),
                    or_(
                        model.collected_at.is_(None),
                        model.last_received_at > model.collected_at,
                    ),
                )
            ).all()

    @contextmanager
    def transaction(self) -> Iterator[CompletionTransaction]:
        """One transaction: committed when the block ends, rolled back on an exception."""
        with self.db.engine.begin() as conn:
            yield CompletionTransaction(conn)
