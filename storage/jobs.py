"""The durable job and delivery queues: rows in the database, leased by workers.

A job is ``queued`` until a worker claims it: the claim is a compare-and-set
``UPDATE`` (only one worker can win it, on SQLite and PostgreSQL alike) that
sets ``running``, the worker's name and a lease expiry.  The worker renews the
lease with heartbeats; a worker that dies leaves a lease that expires, and
the next claim takes the job over (counting an attempt).  A job ends
``succeeded`` (its result and delivery rows written in the same transaction),
``skipped`` (the pipeline does not apply), ``failed`` (after its last
attempt; retryable by command) or ``superseded`` (a later revision of the
same series replaced it).

Deliveries (one per result object and destination) follow the same pattern,
claimed in batches per destination so one association carries many objects,
with an exponential backoff between attempts.

Nothing here knows DICOM networking; callers pass plain values.  What people
read of jobs and deliveries (lists, details, counts) is in :mod:`storage.queries`.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from storage.db import Database
from storage.models import (
    Completion,
    Delivery,
    Instance,
    Job,
    Pause,
    Result,
    Series,
    Study,
    utcnow,
)

if TYPE_CHECKING:
    from storage.queries import FailedDelivery

__all__ = [
    "ClaimedDelivery",
    "ClaimedJob",
    "DeliveryOutcome",
    "DeliveryQueue",
    "DeliveryStatus",
    "FailedDelivery",
    "JobPurged",
    "JobQueue",
    "JobStatus",
    "LeaseLost",
    "NewJob",
    "NewResult",
    "StoredInstance",
    "StoredSeries",
    "as_utc",
    "backoff_s",
    "insert_job",
    "worker_name",
]

LOGGER = logging.getLogger(__name__)


def __getattr__(name: str) -> Any:
    # FailedDelivery moved to storage.queries, which imports this module.
    if name == "FailedDelivery":
        from storage.queries import FailedDelivery

        return FailedDelivery
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class JobStatus(str, enum.Enum):
    """The states of :class:`storage.models.Job`."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    SUPERSEDED = "superseded"
    CANCELLED = "cancelled"
    """An operator cancelled it (:func:`storage.job_actions.cancel_job`)."""


class DeliveryStatus(str, enum.Enum):
    """The states of :class:`storage.models.Delivery`."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"


class LeaseLost(RuntimeError):
    """The worker no longer holds the lease of the job it is working on."""


class JobPurged(ValueError):
    """The job cannot run or send again: retention deleted its files (:mod:`storage.retention`).

    ``purged_at`` says when.  The series must be sent to the node again: it
    is then collected again and a new job runs on it.
    """

    def __init__(self, job_id: int, purged_at: datetime | None) -> None:
        self.job_id = job_id
        self.purged_at = purged_at
        when = f" on {purged_at:%Y-%m-%d %H:%M} UTC" if purged_at else ""
        super().__init__(
            f"job {job_id} cannot be retried: retention deleted its series and result "
            f"files{when}; send the series to the node again to run it anew"
        )


def as_utc(value: datetime | None) -> datetime | None:
    """A timezone-aware UTC datetime (SQLite returns naive UTC values)."""
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """Seconds to wait after failed attempt number *attempt* (1-based): base * 2^(n-1), capped."""
    return float(min(max_s, base_s * 2 ** max(0, attempt - 1)))


def worker_name(role: str = "worker") -> str:
    """A name for a lease owner: ``host:pid:role:<random>``."""
    return f"{socket.gethostname()}:{os.getpid()}:{role}:{os.urandom(3).hex()}"


def _owner_pid(owner: str) -> tuple[str, int] | None:
    parts = owner.split(":")
    if len(parts) >= 2 and parts[1].isdigit():
        return parts[0], int(parts[1])
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to run a job (a snapshot of its row)."""

    id: int
    pipeline: str
    rule: str
    level: str
    revision: int
    completion_id: int
    study_id: int
    series_ids: list[int]
    outputs: list[str]
    destinations: dict[str, list[str]]
    uid_seed: str
    attempts: int
    max_attempts: int
    created_at: datetime
    owner: str


@dataclass(frozen=True)
class StoredInstance:
    """One received instance: its spool path (relative) and identifiers."""

    path: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str


@dataclass(frozen=True)
class StoredSeries:
    """A received series with its instances, as a job reads it."""

    series_instance_uid: str
    study_instance_uid: str
    modality: str
    instances: list[StoredInstance]


@dataclass(frozen=True)
class NewJob:
    """A job to queue: one pipeline on the series of one completion revision."""

    completion_id: int
    revision: int
    rule: str
    pipeline: str
    level: str
    study_id: int
    series_ids: list[int]
    outputs: list[str]
    destinations: dict[str, list[str]]
    priority: int
    max_attempts: int
    uid_seed: str
    """Seeds the UIDs of every result object, fixed before anything is sent."""
    created_at: datetime


def insert_job(conn: Connection, job: NewJob) -> int:
    """Insert *job* as ``queued`` (due at once) on *conn*; returns its id."""
    job_id = conn.execute(
        insert(Job)
        .values(
            completion_id=job.completion_id,
            revision=job.revision,
            rule=job.rule,
            pipeline=job.pipeline,
            level=job.level,
            study_id=job.study_id,
            series_ids=list(job.series_ids),
            outputs=list(job.outputs),
            destinations={k: list(v) for k, v in job.destinations.items()},
            priority=job.priority,
            status=JobStatus.QUEUED.value,
            attempts=0,
            max_attempts=job.max_attempts,
            not_before=job.created_at,
            uid_seed=job.uid_seed,
            created_at=job.created_at,
            timings={},
        )
        .returning(Job.id)
    ).scalar_one()
    return int(job_id)


@dataclass(frozen=True)
class NewResult:
    """A result object a job wrote (its file is already durable)."""

    kind: str
    source_series_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    path: str
    size_bytes: int


@dataclass(frozen=True)
class ClaimedDelivery:
    """One object to send, with what the sender needs."""

    id: int
    result_id: int
    destination: str
    path: str
    kind: str
    sop_instance_uid: str
    attempts: int
    sop_class_uid: str = ""
    """The object's SOP Class UID (from its result row; the sender need not read it)."""
    study_instance_uid: str = ""
    """The Study Instance UID the object belongs to (for the audit trail)."""


@dataclass
class DeliveryOutcome:
    """What happened to one delivery attempt, whatever the destination's protocol.

    ``sent`` says whether the object arrived.  ``status`` is the status code
    the destination answered with, if its protocol has one (a DIMSE status,
    PS3.7 Annex C, for a DICOM peer; 0x0000 for a file written; ``None`` when
    there was no answer); it is kept as the delivery's ``last_status``.
    ``error`` says in words why an attempt failed, for any destination.
    ``retry`` says whether a failure may succeed later (peer down, out of
    resources); permanent failures (refused SOP class, bad data set) are
    marked failed at once.
    """

    delivery_id: int
    sent: bool
    status: int | None = None
    error: str | None = None
    retry: bool = True


@dataclass
class JobFinish:
    """What :meth:`JobQueue.complete` did."""

    status: JobStatus
    result_ids: list[int] = field(default_factory=list)
    deliveries: int = 0


class JobQueue:
    """Claim, heartbeat and finish jobs stored in *db*.

    Parameters
    ----------
    db:
        The node's database (schema upgraded).
    lease_s:
        How long a claim or heartbeat holds a job.
    retry_base_s, retry_max_s:
        Backoff between attempts of a job that failed with a retryable error.
    """

    def __init__(
        self,
        db: Database,
        *,
        lease_s: float = 60.0,
        retry_base_s: float = 10.0,
        retry_max_s: float = 600.0,
    ) -> None:
        self.db = db
        self.lease = timedelta(seconds=lease_s)
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s

    # -- queueing ------------------------------------------------------------
    def enqueue(self, job: NewJob) -> int:
        """Queue *job* in a transaction of its own; returns its id.

        The collector queues the jobs of a completion together with it
        (:meth:`storage.completions.CompletionTransaction.enqueue`).
        """
        with self.db.engine.begin() as conn:
            return insert_job(conn, job)

    # -- claiming ------------------------------------------------------------
    @staticmethod
    def claimable(now: datetime) -> Any:
        """Jobs a worker may claim at *now*: queued and due, or running with an expired lease."""
        return or_(
            and_(Job.status == JobStatus.QUEUED.value, Job.not_before <= now),
            and_(Job.status == JobStatus.RUNNING.value, Job.lease_expires_at < now),
        )

    def claim(
        self, owner: str, now: datetime | None = None, *, job_id: int | None = None
    ) -> ClaimedJob | None:
        """Lease the next due job (highest priority, oldest first), or ``None``.

        With *job_id*, only that job (when it is due).  A running job whose
        lease expired is taken over; one that has used up its attempts that
        way is marked failed instead.
        """
        now = now or utcnow()
        query = (
            select(Job.id, Job.status, Job.attempts, Job.max_attempts, Job.lease_owner)
            .where(self.claimable(now))
            .order_by(Job.priority.desc(), Job.id)
            .limit(8)
        )
        if job_id is not None:
            query = query.where(Job.id == job_id)
        with self.db.engine.begin() as conn:
            candidates = conn.execute(query).all()
            for cand_id, status, attempts, max_attempts, previous in candidates:
                if status == JobStatus.RUNNING.value and attempts >= max_attempts:
                    conn.execute(
                        update(Job)
                        .where(Job.id == cand_id, self.claimable(now))
                        .values(
                            status=JobStatus.FAILED.value,
                            finished_at=now,
                            lease_owner=None,
                            lease_expires_at=None,
                            error=f"worker {previous} stopped heart-beating on the last "
                            f"attempt ({attempts} of {max_attempts})",
                        )
                    )
                    LOGGER.warning("job %d failed: its worker died on the last attempt", cand_id)
                    continue
                won = conn.execute(
                    update(Job)
                    .where(Job.id == cand_id, self.claimable(now))
                    .values(
                        status=JobStatus.RUNNING.value,
                        lease_owner=owner,
                        lease_expires_at=now + self.lease,
                        heartbeat_at=now,
                        started_at=now,
                        attempts=Job.attempts + 1,
                    )
                ).rowcount
                if won != 1:
                    continue
                if status == JobStatus.RUNNING.value:
                    LOGGER.warning("job %d taken over from %s (lease expired)", cand_id, previous)
                row = conn.execute(select(Job.__table__).where(Job.id == cand_id)).one()
                return ClaimedJob(
                    id=row.id,
                    pipeline=row.pipeline,
                    rule=row.rule,
                    level=row.level,
                    revision=row.revision,
                    completion_id=row.completion_id,
                    study_id=row.study_id,
                    series_ids=list(row.series_ids),
                    outputs=list(row.outputs),
                    destinations={k: list(v) for k, v in row.destinations.items()},
                    uid_seed=row.uid_seed,
                    attempts=row.attempts,
                    max_attempts=row.max_attempts,
                    created_at=as_utc(row.created_at) or now,
                    owner=owner,
                )
        return None

    def heartbeat(self, job_id: int, owner: str, now: datetime | None = None) -> bool:
        """Extend the lease; ``False`` when the job is no longer ours."""
        now = now or utcnow()
        with self.db.engine.begin() as conn:
            n = conn.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.lease_owner == owner,
                    Job.status == JobStatus.RUNNING.value,
                )
                .values(heartbeat_at=now, lease_expires_at=now + self.lease)
            ).rowcount
        return n == 1

    def release_dead(self, host: str | None = None) -> int:
        """Expire the leases of workers on this host whose process is gone.

        After a crash and restart the node need not wait out its own old
        leases.  Returns how many jobs and deliveries were released.
        """
        host = host or socket.gethostname()
        released = 0
        with self.db.engine.begin() as conn:
            for model, running in (
                (Job, JobStatus.RUNNING.value),
                (Delivery, DeliveryStatus.PENDING.value),
            ):
                owners = conn.execute(
                    select(model.lease_owner)
                    .where(model.status == running, model.lease_owner.is_not(None))
                    .distinct()
                ).scalars()
                for owner in list(owners):
                    parsed = _owner_pid(owner or "")
                    if parsed is None or parsed[0] != host or _pid_alive(parsed[1]):
                        continue
                    released += conn.execute(
                        update(model)
                        .where(model.lease_owner == owner, model.status == running)
                        .values(lease_expires_at=datetime(1970, 1, 1, tzinfo=timezone.utc))
                    ).rowcount
        if released:
            LOGGER.warning("released %d lease(s) of workers that are gone", released)
        return released

    # -- finishing -------------------------------------------------------------
    def _owned(self, conn: Any, job_id: int, owner: str) -> Any:
        row = conn.execute(
            select(Job.__table__).where(
                Job.id == job_id, Job.lease_owner == owner, Job.status == JobStatus.RUNNING.value
            )
        ).one_or_none()
        if row is None:
            raise LeaseLost(f"job {job_id} is no longer leased by {owner}")
        return row

    def complete(
        self,
        job: ClaimedJob,
        results: Sequence[NewResult],
        timings: dict[str, float],
        now: datetime | None = None,
        note: str | None = None,
    ) -> JobFinish:
        """Record the results and their deliveries, and end the job, atomically.

        A job whose completion has moved on to a later revision meanwhile ends
        ``superseded``: its results are kept but not delivered.  ``note`` (e.g.
        why a series gave no result object) is kept in the job's ``error``
        column, as a skipped job's reason is.

        Raises
        ------
        LeaseLost
            The lease expired and another worker took the job over.
        """
        now = now or utcnow()
        with self.db.engine.begin() as conn:
            row = self._owned(conn, job.id, job.owner)
            current = conn.execute(
                select(Completion.revision).where(Completion.id == row.completion_id)
            ).scalar_one()
            superseded = current > row.revision
            finish = JobFinish(JobStatus.SUPERSEDED if superseded else JobStatus.SUCCEEDED)
            for res in results:
                result_id = conn.execute(
                    insert(Result)
                    .values(
                        job_id=job.id,
                        kind=res.kind,
                        source_series_uid=res.source_series_uid,
                        study_instance_uid=res.study_instance_uid,
                        series_instance_uid=res.series_instance_uid,
                        sop_instance_uid=res.sop_instance_uid,
                        sop_class_uid=res.sop_class_uid,
                        path=res.path,
                        size_bytes=res.size_bytes,
                        created_at=now,
                    )
                    .returning(Result.id)
                ).scalar_one()
                finish.result_ids.append(int(result_id))
                if superseded:
                    continue
                for destination, kinds in sorted(job.destinations.items()):
                    if res.kind not in kinds:
                        continue
                    conn.execute(
                        insert(Delivery).values(
                            result_id=result_id,
                            destination=destination,
                            status=DeliveryStatus.PENDING.value,
                            attempts=0,
                            next_attempt_at=now,
                            created_at=now,
                        )
                    )
                    finish.deliveries += 1
            conn.execute(
                update(Job)
                .where(Job.id == job.id)
                .values(
                    status=finish.status.value,
                    finished_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                    error="superseded by a later revision" if superseded else note,
                    timings=timings,
                )
            )
        return finish

    def skip(self, job: ClaimedJob, reason: str, timings: dict[str, float]) -> None:
        """End the job as ``skipped``: the pipeline does not apply (reason kept)."""
        self._end(job, JobStatus.SKIPPED, reason, timings)

    def fail(
        self,
        job: ClaimedJob,
        error: str,
        timings: dict[str, float],
        *,
        retryable: bool = True,
        now: datetime | None = None,
    ) -> JobStatus:
        """Record a failed attempt: queued again after a backoff, or failed for good."""
        now = now or utcnow()
        if retryable and job.attempts < job.max_attempts:
            delay = backoff_s(job.attempts, self.retry_base_s, self.retry_max_s)
            with self.db.engine.begin() as conn:
                self._owned(conn, job.id, job.owner)
                conn.execute(
                    update(Job)
                    .where(Job.id == job.id)
                    .values(
                        status=JobStatus.QUEUED.value,
                        not_before=now + timedelta(seconds=delay),
                        lease_owner=None,
                        lease_expires_at=None,
                        error=error,
                        timings=timings,
                    )
                )
            return JobStatus.QUEUED
        self._end(job, JobStatus.FAILED, error, timings, now)
        return JobStatus.FAILED

    def _end(
        self,
        job: ClaimedJob,
        status: JobStatus,
        error: str | None,
        timings: dict[str, float],
        now: datetime | None = None,
    ) -> None:
        now = now or utcnow()
        with self.db.engine.begin() as conn:
            self._owned(conn, job.id, job.owner)
            conn.execute(
                update(Job)
                .where(Job.id == job.id)
                .values(
                    status=status.value,
                    finished_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                    error=error,
                    timings=timings,
                )
            )

    # -- admin -----------------------------------------------------------------
    def retry(self, job_id: int, now: datetime | None = None) -> tuple[str, int]:
        """Make a job run again, or its failed deliveries be sent again.

        A failed or skipped job is queued with fresh attempts.  A succeeded
        job's failed deliveries go back to pending.  Returns ``(what, n)``:
        ``("job", 1)`` or ``("deliveries", n)``.

        Raises
        ------
        LookupError
            No such job.
        JobPurged
            Retention deleted the job's files (a :class:`ValueError`).
        ValueError
            The job is queued or running, or has nothing to retry.
        """
        now = now or utcnow()
        with self.db.engine.begin() as conn:
            # FOR UPDATE (PostgreSQL): a purge marking this job waits, or has marked it.
            row = conn.execute(
                select(Job.status, Job.purged_at).where(Job.id == job_id).with_for_update()
            ).one_or_none()
            if row is None:
                raise LookupError(f"no job {job_id}")
            status = row[0]
            if row[1] is not None:
                raise JobPurged(job_id, as_utc(row[1]))
            if status in (JobStatus.FAILED.value, JobStatus.SKIPPED.value):
                conn.execute(
                    update(Job)
                    .where(Job.id == job_id)
                    .values(
                        status=JobStatus.QUEUED.value,
                        attempts=0,
                        not_before=now,
                        error=None,
                        finished_at=None,
                    )
                )
                return "job", 1
            if status in (JobStatus.QUEUED.value, JobStatus.RUNNING.value):
                raise ValueError(f"job {job_id} is {status}; nothing to retry")
            result_ids = select(Result.id).where(Result.job_id == job_id)
            n = conn.execute(
                update(Delivery)
                .where(
                    Delivery.result_id.in_(result_ids),
                    Delivery.status == DeliveryStatus.FAILED.value,
                )
                .values(
                    status=DeliveryStatus.PENDING.value,
                    attempts=0,
                    next_attempt_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            ).rowcount
            if not n:
                raise ValueError(f"job {job_id} is {status} and has no failed delivery")
            return "deliveries", int(n)

    def status_of(self, job_id: int) -> str:
        """The job's current status value (``NoResultFound`` for an unknown job)."""
        with self.db.engine.connect() as conn:
            return str(conn.execute(select(Job.status).where(Job.id == job_id)).scalar_one())

    def series_instances(self, series_id: int) -> StoredSeries:
        """A series as received: its UIDs, modality and instances in receive order.

        Instances whose files retention deleted (``purged_at``) are left out:
        a series reopened by a late instance runs on what is on disk.
        """
        with self.db.engine.connect() as conn:
            series = conn.execute(
                select(Series.series_instance_uid, Series.modality, Study.study_instance_uid)
                .join(Study, Study.id == Series.study_id)
                .where(Series.id == series_id)
            ).one()
            rows = conn.execute(
                select(
                    Instance.path,
                    Instance.sop_instance_uid,
                    Instance.sop_class_uid,
                    Instance.transfer_syntax_uid,
                )
                .where(Instance.series_id == series_id, Instance.purged_at.is_(None))
                .order_by(Instance.id)
            ).all()
        return StoredSeries(
            series_instance_uid=str(series.series_instance_uid),
            study_instance_uid=str(series.study_instance_uid),
            modality=str(series.modality or ""),
            instances=[
                StoredInstance(
                    path=str(r.path),
                    sop_instance_uid=str(r.sop_instance_uid),
                    sop_class_uid=str(r.sop_class_uid or ""),
                    transfer_syntax_uid=str(r.transfer_syntax_uid or ""),
                )
                for r in rows
            ],
        )

    def earlier_srs(
        self, job: ClaimedJob, source_series_uid: str
    ) -> list[tuple[str, str, str, str]]:
        """The SRs of the latest earlier revision of *job* that produced one for the series.

        Each as ``(study UID, series UID, SOP Class UID, SOP Instance UID)``.
        """
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                select(
                    Result.study_instance_uid,
                    Result.series_instance_uid,
                    Result.sop_class_uid,
                    Result.sop_instance_uid,
                    Job.revision,
                )
                .join(Job, Job.id == Result.job_id)
                .where(
                    Job.completion_id == job.completion_id,
                    Job.pipeline == job.pipeline,
                    Job.revision < job.revision,
                    Result.kind == "sr",
                    Result.source_series_uid == source_series_uid,
                )
                .order_by(Job.revision.desc(), Result.id)
            ).all()
        if not rows:
            return []
        latest = rows[0].revision
        return [(r[0], r[1], r[2], r[3]) for r in rows if r.revision == latest]


_PAUSED_DESTINATIONS = select(Pause.name).where(Pause.kind == "destination")


class DeliveryQueue:
    """Claim due deliveries per destination and record what the sender did.

    Parameters
    ----------
    db:
        The node's database.
    lease_s:
        How long a claimed batch is held before another sender may take it.
    kind_order:
        Result kinds in the order a job's objects are sent (the node's order
        of writing them, e.g. SEG before the SR that references it); kinds
        not named come after, and objects of one kind in the order they were
        stored.
    """

    def __init__(
        self, db: Database, *, lease_s: float = 120.0, kind_order: Sequence[str] = ()
    ) -> None:
        self.db = db
        self.lease = timedelta(seconds=lease_s)
        self.kind_order = {kind: i for i, kind in enumerate(kind_order)}

    @staticmethod
    def due(now: datetime) -> Any:
        """Deliveries a sender may claim at *now*: pending, due, not leased, and
        not to a destination an operator paused (:mod:`storage.pauses`)."""
        return and_(
            Delivery.status == DeliveryStatus.PENDING.value,
            Delivery.next_attempt_at <= now,
            or_(Delivery.lease_owner.is_(None), Delivery.lease_expires_at < now),
            Delivery.destination.not_in(_PAUSED_DESTINATIONS),
        )

    def claim_batch(
        self,
        owner: str,
        limit: int = 256,
        now: datetime | None = None,
        *,
        destination: str | None = None,
    ) -> list[ClaimedDelivery]:
        """Lease up to *limit* due deliveries of one destination (the longest waiting,
        or *destination*).

        They come in job order and, within a job, in ``kind_order``.
        """
        now = now or utcnow()
        kind_order = self.kind_order
        with self.db.engine.begin() as conn:
            pick = select(Delivery.destination).where(self.due(now))
            if destination is not None:
                pick = pick.where(Delivery.destination == destination)
            first = conn.execute(
                pick.order_by(Delivery.next_attempt_at, Delivery.id).limit(1)
            ).scalar_one_or_none()
            if first is None:
                return []
            rows = conn.execute(
                select(
                    Delivery.id,
                    Delivery.result_id,
                    Delivery.attempts,
                    Result.path,
                    Result.kind,
                    Result.sop_instance_uid,
                    Result.sop_class_uid,
                    Result.study_instance_uid,
                    Result.job_id,
                )
                .join(Result, Result.id == Delivery.result_id)
                .where(self.due(now), Delivery.destination == first)
                .order_by(Result.job_id, Delivery.id)
                .limit(limit)
            ).all()
            claimed: list[ClaimedDelivery] = []
            for row in rows:
                won = conn.execute(
                    update(Delivery)
                    .where(Delivery.id == row.id, self.due(now))
                    .values(lease_owner=owner, lease_expires_at=now + self.lease)
                ).rowcount
                if won == 1:
                    claimed.append(
                        ClaimedDelivery(
                            id=row.id,
                            result_id=row.result_id,
                            destination=first,
                            path=row.path,
                            kind=row.kind,
                            sop_instance_uid=row.sop_instance_uid,
                            attempts=row.attempts,
                            sop_class_uid=row.sop_class_uid,
                            study_instance_uid=row.study_instance_uid,
                        )
                    )
        by_id = {r.id: r.job_id for r in rows}
        last = len(kind_order)
        claimed.sort(key=lambda c: (by_id[c.id], kind_order.get(c.kind, last), c.id))
        return claimed

    def record(
        self,
        owner: str,
        outcomes: Iterable[DeliveryOutcome],
        *,
        max_attempts: int,
        retry_base_s: float,
        retry_max_s: float,
        now: datetime | None = None,
    ) -> dict[str, int]:
        """Store the outcome of each attempt; returns counts by resulting status."""
        now = now or utcnow()
        counts: dict[str, int] = {}
        with self.db.engine.begin() as conn:
            for out in outcomes:
                attempts = conn.execute(
                    select(Delivery.attempts).where(
                        Delivery.id == out.delivery_id, Delivery.lease_owner == owner
                    )
                ).scalar_one_or_none()
                if attempts is None:
                    LOGGER.warning("delivery %d: lease lost before recording", out.delivery_id)
                    continue
                attempts += 1
                values: dict[str, Any] = {
                    "attempts": attempts,
                    "last_status": out.status,
                    "lease_owner": None,
                    "lease_expires_at": None,
                }
                if out.sent:
                    values.update(status=DeliveryStatus.SENT.value, sent_at=now, error=None)
                elif out.retry and attempts < max_attempts:
                    delay = backoff_s(attempts, retry_base_s, retry_max_s)
                    values.update(
                        status=DeliveryStatus.PENDING.value,
                        error=out.error,
                        next_attempt_at=now + timedelta(seconds=delay),
                    )
                else:
                    values.update(status=DeliveryStatus.FAILED.value, error=out.error)
                conn.execute(
                    update(Delivery).where(Delivery.id == out.delivery_id).values(**values)
                )
                counts[values["status"]] = counts.get(values["status"], 0) + 1
        return counts

    def release(self, owner: str, ids: Iterable[int]) -> None:
        """Give claimed deliveries back untouched (e.g. at shutdown)."""
        with self.db.engine.begin() as conn:
            conn.execute(
                update(Delivery)
                .where(Delivery.id.in_(list(ids)), Delivery.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None)
            )

    def next_due_in(self, now: datetime | None = None) -> float | None:
        """Seconds until the next pending delivery is due (``None``: nothing pending)."""
        now = now or utcnow()
        with self.db.engine.connect() as conn:
            nxt = conn.execute(
                select(func.min(Delivery.next_attempt_at)).where(
                    Delivery.status == DeliveryStatus.PENDING.value,
                    Delivery.destination.not_in(_PAUSED_DESTINATIONS),
                )
            ).scalar_one_or_none()
        nxt = as_utc(nxt)
        return None if nxt is None else max(0.0, (nxt - now).total_seconds())
