"""Which jobs and deliveries are due, for executors that hand them to workers elsewhere.

The Celery executor (:mod:`dicom_node.work.celery_executor`) publishes the
ids these queries return; the worker that receives one still claims the job
in the database (:meth:`storage.jobs.JobQueue.claim`) before running it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from storage.db import Database
from storage.jobs import DeliveryQueue, JobQueue
from storage.models import Delivery, Job, utcnow

__all__ = ["DueJob", "due_destinations", "due_jobs"]


@dataclass(frozen=True, slots=True)
class DueJob:
    """A job a worker may claim now: queued and due, or running with an expired lease."""

    id: int
    rule: str
    pipeline: str
    attempts: int
    """Attempts so far: a job due again after a failed or abandoned attempt has more."""


def due_jobs(db: Database, now: datetime | None = None, limit: int = 500) -> list[DueJob]:
    """Jobs a worker may claim at *now*, highest priority then oldest first."""
    now = now or utcnow()
    query = (
        select(Job.id, Job.rule, Job.pipeline, Job.attempts)
        .where(JobQueue.claimable(now))
        .order_by(Job.priority.desc(), Job.id)
        .limit(limit)
    )
    with db.engine.connect() as conn:
        return [DueJob(r.id, r.rule, r.pipeline, r.attempts) for r in conn.execute(query)]


def due_destinations(db: Database, now: datetime | None = None) -> list[str]:
    """Destinations with deliveries a sender may claim at *now*, by name."""
    now = now or utcnow()
    query = (
        select(Delivery.destination)
        .where(DeliveryQueue.due(now))
        .group_by(Delivery.destination)
        .order_by(Delivery.destination)
    )
    with db.engine.connect() as conn:
        return [str(name) for name in conn.execute(query).scalars()]
