"""Read models: what the CLI, the REST API and the dashboard show people.

Each function reads with one connection of a :class:`storage.db.Database`
and returns frozen dataclasses defined here; none writes.  Claims, leases
and every change stay with :class:`storage.jobs.JobQueue`,
:class:`storage.jobs.DeliveryQueue` and :class:`storage.received.ReceivedStore`.

Times are timezone-aware UTC (:func:`storage.jobs.as_utc`).  Statuses are
the plain values of :class:`storage.jobs.JobStatus` and
:class:`storage.jobs.DeliveryStatus`.  Lists are newest first where the
function says so, else in the order the rows were written.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from storage.db import Database
from storage.jobs import DeliveryStatus, as_utc
from storage.models import Delivery, Instance, Job, Result, Series, Study

__all__ = [
    "DeliveryRecord",
    "FailedDelivery",
    "JobSummary",
    "ResultRecord",
    "SeriesSummary",
    "StatusCounts",
    "StudySummary",
    "failed_deliveries",
    "job_results",
    "job_summaries",
    "job_summary",
    "status_counts",
    "study_summaries",
]


def _hex(status: int | None) -> str | None:
    return None if status is None else f"0x{status:04X}"


# -- jobs --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class JobSummary:
    """One job as ``dicom-node jobs list`` shows it."""

    id: int
    status: str
    rule: str
    pipeline: str
    level: str
    """``series`` or ``study``."""
    revision: int
    """The revision of the completion the job runs on."""
    attempts: int
    max_attempts: int
    study_instance_uid: str | None
    series_instance_uids: tuple[str, ...]
    """The series the pipeline runs on, in the order they were received."""
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    """Why the job failed, was skipped or superseded, or a note on a success."""
    timings: dict[str, float]
    """Seconds per stage of the last attempt (wait, read, load, infer, write, ...)."""
    results: int
    """How many result objects the job wrote."""
    deliveries: dict[str, int]
    """Deliveries of those objects counted by status, statuses in alphabetical order."""


def job_summaries(
    db: Database, status: str | None = None, limit: int = 50, job_ids: Iterable[int] = ()
) -> list[JobSummary]:
    """The newest jobs first (at most *limit*), with their series and what they wrote.

    Parameters
    ----------
    status:
        Only jobs in this state.
    job_ids:
        Only these jobs (all when empty).

    Four queries whatever the number of jobs: the jobs with their study,
    then the series UIDs, the result counts and the delivery counts of all
    of them.
    """
    query = (
        select(
            Job.id,
            Job.status,
            Job.rule,
            Job.pipeline,
            Job.level,
            Job.revision,
            Job.attempts,
            Job.max_attempts,
            Job.series_ids,
            Job.created_at,
            Job.started_at,
            Job.finished_at,
            Job.error,
            Job.timings,
            Study.study_instance_uid,
        )
        .outerjoin(Study, Study.id == Job.study_id)
        .order_by(Job.id.desc())
        .limit(limit)
    )
    if status:
        query = query.where(Job.status == status)
    ids = list(job_ids)
    if ids:
        query = query.where(Job.id.in_(ids))
    with db.engine.connect() as conn:
        jobs = conn.execute(query).all()
        if not jobs:
            return []
        selected = [job.id for job in jobs]
        wanted = sorted({int(s) for job in jobs for s in job.series_ids or ()})
        series_uids: dict[int, str] = {}
        if wanted:
            series_uids = {
                int(sid): str(uid)
                for sid, uid in conn.execute(
                    select(Series.id, Series.series_instance_uid).where(Series.id.in_(wanted))
                )
            }
        results = {
            int(job_id): int(n)
            for job_id, n in conn.execute(
                select(Result.job_id, func.count())
                .where(Result.job_id.in_(selected))
                .group_by(Result.job_id)
            )
        }
        deliveries: dict[int, dict[str, int]] = {}
        for job_id, delivery_status, n in conn.execute(
            select(Result.job_id, Delivery.status, func.count())
            .join(Result, Result.id == Delivery.result_id)
            .where(Result.job_id.in_(selected))
            .group_by(Result.job_id, Delivery.status)
            .order_by(Result.job_id, Delivery.status)
        ):
            deliveries.setdefault(int(job_id), {})[str(delivery_status)] = int(n)
    return [
        JobSummary(
            id=job.id,
            status=job.status,
            rule=job.rule,
            pipeline=job.pipeline,
            level=job.level,
            revision=job.revision,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            study_instance_uid=job.study_instance_uid,
            series_instance_uids=tuple(
                series_uids[s] for s in sorted(set(job.series_ids or ())) if s in series_uids
            ),
            created_at=as_utc(job.created_at),
            started_at=as_utc(job.started_at),
            finished_at=as_utc(job.finished_at),
            error=job.error,
            timings=dict(job.timings or {}),
            results=results.get(job.id, 0),
            deliveries=deliveries.get(job.id, {}),
        )
        for job in jobs
    ]


def job_summary(db: Database, job_id: int) -> JobSummary | None:
    """One job's summary (:func:`job_summaries`), ``None`` for an unknown job."""
    found = job_summaries(db, job_ids=[job_id], limit=1)
    return found[0] if found else None


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One result object to one destination."""

    id: int
    destination: str
    status: str
    attempts: int
    last_status: int | None
    """The peer's last DIMSE status (PS3.7 Annex C), ``None`` before any answer."""
    error: str | None
    next_attempt_at: datetime | None
    sent_at: datetime | None

    @property
    def last_status_hex(self) -> str | None:
        """``last_status`` as ``0xA700``."""
        return _hex(self.last_status)


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """One DICOM object a job wrote, with its deliveries."""

    id: int
    kind: str
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    path: str
    """The file, relative to the results folder."""
    size_bytes: int
    created_at: datetime | None
    deliveries: tuple[DeliveryRecord, ...]
    """In the order they were queued."""


def job_results(db: Database, job_id: int) -> list[ResultRecord]:
    """A job's result objects in the order written, each with its deliveries.

    Empty for a job that wrote nothing, and for an unknown job.
    """
    with db.engine.connect() as conn:
        results = conn.execute(
            select(
                Result.id,
                Result.kind,
                Result.sop_instance_uid,
                Result.sop_class_uid,
                Result.study_instance_uid,
                Result.series_instance_uid,
                Result.path,
                Result.size_bytes,
                Result.created_at,
            )
            .where(Result.job_id == job_id)
            .order_by(Result.id)
        ).all()
        deliveries = conn.execute(
            select(
                Delivery.id,
                Delivery.result_id,
                Delivery.destination,
                Delivery.status,
                Delivery.attempts,
                Delivery.last_status,
                Delivery.error,
                Delivery.next_attempt_at,
                Delivery.sent_at,
            )
            .join(Result, Result.id == Delivery.result_id)
            .where(Result.job_id == job_id)
            .order_by(Delivery.id)
        ).all()
    by_result: dict[int, list[DeliveryRecord]] = {}
    for d in deliveries:
        by_result.setdefault(d.result_id, []).append(
            DeliveryRecord(
                id=d.id,
                destination=d.destination,
                status=d.status,
                attempts=d.attempts,
                last_status=d.last_status,
                error=d.error,
                next_attempt_at=as_utc(d.next_attempt_at),
                sent_at=as_utc(d.sent_at),
            )
        )
    return [
        ResultRecord(
            id=r.id,
            kind=r.kind,
            sop_instance_uid=r.sop_instance_uid,
            sop_class_uid=r.sop_class_uid,
            study_instance_uid=r.study_instance_uid,
            series_instance_uid=r.series_instance_uid,
            path=r.path,
            size_bytes=r.size_bytes,
            created_at=as_utc(r.created_at),
            deliveries=tuple(by_result.get(r.id, ())),
        )
        for r in results
    ]


@dataclass(frozen=True, slots=True)
class FailedDelivery:
    """A delivery that gave up (retryable with its job's retry)."""

    id: int
    job_id: int
    pipeline: str
    destination: str
    kind: str
    sop_instance_uid: str
    attempts: int
    last_status: int | None
    error: str | None
    created_at: datetime | None

    @property
    def last_status_hex(self) -> str | None:
        """``last_status`` as ``0xA700``."""
        return _hex(self.last_status)


def failed_deliveries(db: Database, limit: int = 100) -> list[FailedDelivery]:
    """Failed deliveries, newest first (at most *limit*)."""
    with db.engine.connect() as conn:
        rows = conn.execute(
            select(
                Delivery.id,
                Result.job_id,
                Job.pipeline,
                Delivery.destination,
                Result.kind,
                Result.sop_instance_uid,
                Delivery.attempts,
                Delivery.last_status,
                Delivery.error,
                Delivery.created_at,
            )
            .join(Result, Result.id == Delivery.result_id)
            .join(Job, Job.id == Result.job_id)
            .where(Delivery.status == DeliveryStatus.FAILED.value)
            .order_by(Delivery.id.desc())
            .limit(limit)
        ).all()
    return [
        FailedDelivery(
            id=r.id,
            job_id=r.job_id,
            pipeline=r.pipeline,
            destination=r.destination,
            kind=r.kind,
            sop_instance_uid=r.sop_instance_uid,
            attempts=r.attempts,
            last_status=r.last_status,
            error=r.error,
            created_at=as_utc(r.created_at),
        )
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class StatusCounts:
    """Jobs and deliveries counted by status (statuses without any row left out)."""

    jobs: dict[str, int]
    deliveries: dict[str, int]


def status_counts(db: Database) -> StatusCounts:
    """How many jobs and deliveries are in each status."""
    with db.engine.connect() as conn:
        jobs = {
            str(s): int(n)
            for s, n in conn.execute(select(Job.status, func.count()).group_by(Job.status))
        }
        deliveries = {
            str(s): int(n)
            for s, n in conn.execute(
                select(Delivery.status, func.count()).group_by(Delivery.status)
            )
        }
    return StatusCounts(jobs=jobs, deliveries=deliveries)


# -- received studies ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SeriesSummary:
    """One received series and how much of it arrived."""

    series_instance_uid: str
    modality: str | None
    series_description: str | None
    calling_ae: str | None
    """The AE title that sent it."""
    instances: int
    bytes: int
    """The size of its files."""


@dataclass(frozen=True, slots=True)
class StudySummary:
    """One received study with its series."""

    study_instance_uid: str
    patient_id: str | None
    study_date: str | None
    study_description: str | None
    last_received_at: datetime | None
    series: tuple[SeriesSummary, ...]
    """By Series Number."""


def study_summaries(db: Database, limit: int = 100) -> list[StudySummary]:
    """Received studies, most recently received first, with their series and counts.

    One query; it reads at most ``20 * limit`` series, so a study beyond
    them shows fewer series or is left out.
    """
    with db.engine.connect() as conn:
        rows = conn.execute(
            select(
                Study.study_instance_uid,
                Study.patient_id,
                Study.study_date,
                Study.study_description,
                Study.last_received_at,
                Series.series_instance_uid,
                Series.modality,
                Series.series_description,
                Series.calling_ae,
                func.count(Instance.id).label("instances"),
                func.coalesce(func.sum(Instance.size_bytes), 0).label("bytes"),
            )
            .join(Series, Series.study_id == Study.id)
            .outerjoin(Instance, Instance.series_id == Series.id)
            .group_by(Study.id, Series.id)
            .order_by(Study.last_received_at.desc(), Series.series_number)
            .limit(limit * 20)
        ).all()
    studies: dict[str, Any] = {}  # study UID -> its first row, in the order read
    series: dict[str, list[SeriesSummary]] = {}
    for row in rows:
        studies.setdefault(row.study_instance_uid, row)
        series.setdefault(row.study_instance_uid, []).append(
            SeriesSummary(
                series_instance_uid=row.series_instance_uid,
                modality=row.modality,
                series_description=row.series_description,
                calling_ae=row.calling_ae,
                instances=int(row.instances),
                bytes=int(row.bytes),
            )
        )
    return [
        StudySummary(
            study_instance_uid=uid,
            patient_id=row.patient_id,
            study_date=row.study_date,
            study_description=row.study_description,
            last_received_at=as_utc(row.last_received_at),
            series=tuple(series[uid]),
        )
        for uid, row in list(studies.items())[:limit]
    ]
