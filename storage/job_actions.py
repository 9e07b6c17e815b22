"""What an operator does to one job besides retrying it: cancel it, or run it again.

:meth:`storage.jobs.JobQueue.retry` re-runs a failed job in place; the
actions here are the console's others.  Each is one transaction, so the
collector, workers and sender (in any process) see the change at their next
poll: a worker that is running a job it no longer owns loses its lease and
writes nothing (:class:`storage.jobs.LeaseLost`), a sender never claims a
cancelled delivery.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update

from storage.db import Database
from storage.jobs import DeliveryStatus, JobPurged, JobStatus, NewJob, as_utc, insert_job
from storage.models import Completion, Delivery, Job, Result, utcnow

__all__ = ["CancelOutcome", "cancel_job", "rerun_job"]

CANCELLED_BY_OPERATOR = "cancelled by an operator"


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    """What :func:`cancel_job` did."""

    job_id: int
    job_cancelled: bool
    """The job itself was queued or running and is now ``cancelled``."""
    deliveries_cancelled: int
    """Its pending deliveries, now ``cancelled``."""


def cancel_job(db: Database, job_id: int, now: datetime | None = None) -> CancelOutcome:
    """Cancel a queued or running job and every pending delivery of its results.

    A finished job with pending deliveries keeps its status; only those
    deliveries are cancelled (nothing more is sent).

    Raises
    ------
    LookupError
        No such job.
    ValueError
        Nothing to cancel: the job is finished and has no pending delivery.
    """
    now = now or utcnow()
    active = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
    with db.engine.begin() as conn:
        status = conn.execute(
            select(Job.status).where(Job.id == job_id).with_for_update()
        ).scalar_one_or_none()
        if status is None:
            raise LookupError(f"no job {job_id}")
        job_cancelled = status in active
        if job_cancelled:
            conn.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(
                    status=JobStatus.CANCELLED.value,
                    finished_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                    error=CANCELLED_BY_OPERATOR,
                )
            )
        n = conn.execute(
            update(Delivery)
            .where(
                Delivery.result_id.in_(select(Result.id).where(Result.job_id == job_id)),
                Delivery.status == DeliveryStatus.PENDING.value,
            )
            .values(status=DeliveryStatus.CANCELLED.value, error=CANCELLED_BY_OPERATOR)
        ).rowcount
        if not job_cancelled and not n:
            raise ValueError(f"job {job_id} is {status} and has no pending delivery to cancel")
    return CancelOutcome(job_id, job_cancelled, int(n))


def rerun_job(
    db: Database, job_id: int, pipeline: str | None = None, now: datetime | None = None
) -> int:
    """Queue a new job on the same series, rule and destinations as *job_id*,
    through *pipeline* (by default the same one); returns the new job's id.

    The re-run is a new revision of the job's completion (the same instances,
    marked forced): its results supersede the earlier ones, and its SR names
    the earlier SR it replaces, as for a series that changed.  So that no
    job of the earlier revision is superseded half-way, a re-run waits until
    every job of the completion has finished.

    Raises
    ------
    LookupError
        No such job.
    JobPurged
        Retention deleted the series' files (a :class:`ValueError`).
    ValueError
        A job of the same completion is still queued or running.
    """
    now = now or utcnow()
    active = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
    with db.engine.begin() as conn:
        row = conn.execute(select(Job.__table__).where(Job.id == job_id)).one_or_none()
        if row is None:
            raise LookupError(f"no job {job_id}")
        if row.purged_at is not None:
            raise JobPurged(job_id, as_utc(row.purged_at))
        revision = conn.execute(
            select(Completion.revision)
            .where(Completion.id == row.completion_id)
            .with_for_update()
        ).scalar_one()
        busy = conn.execute(
            select(Job.id).where(Job.completion_id == row.completion_id, Job.status.in_(active))
        ).scalars().first()
        if busy is not None:
            raise ValueError(
                f"job {busy} of the same completion is still queued or running; "
                "re-run when it has finished"
            )
        revision = int(revision) + 1
        conn.execute(
            update(Completion)
            .where(Completion.id == row.completion_id)
            .values(revision=revision, forced=True, completed_at=now)
        )
        return insert_job(
            conn,
            NewJob(
                completion_id=row.completion_id,
                revision=revision,
                rule=row.rule,
                pipeline=pipeline or row.pipeline,
                level=row.level,
                study_id=row.study_id,
                series_ids=list(row.series_ids),
                outputs=list(row.outputs),
                destinations={k: list(v) for k, v in (row.destinations or {}).items()},
                priority=row.priority,
                max_attempts=row.max_attempts,
                uid_seed=secrets.token_hex(16),
                created_at=now,
            ),
        )
