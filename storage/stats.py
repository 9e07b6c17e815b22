"""Counts and ages across the node's tables, read in one connection (for ``/metrics``).

Storage owns the SQL; the web layer turns :class:`NodeStats` into Prometheus
metric families (:mod:`dicom_node.web.metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from storage.db import Database
from storage.jobs import DeliveryStatus, JobStatus
from storage.models import Delivery, Instance, Job, Result, Series, Study

__all__ = ["NodeStats", "node_stats"]


@dataclass(frozen=True)
class NodeStats:
    """What one read of the database says (all times as stored, naive UTC or aware)."""

    studies: int
    series: int
    instances: int
    receptions: int
    received_bytes: int
    results_by_kind: list[tuple[str, int]]
    jobs_by_status: list[tuple[str, int]]
    deliveries_by_destination_status: list[tuple[str, str, int]]
    jobs_due: int
    oldest_due_job: datetime | None
    deliveries_due: int
    oldest_pending_delivery: list[tuple[str, datetime | None]]
    recent_jobs: list[Any]
    """Finished jobs of the recent window, newest first: rows with ``pipeline``,
    ``status``, ``timings``, ``started_at``, ``finished_at``."""


def node_stats(
    db: Database, now: datetime, recent_window: timedelta, recent_limit: int
) -> NodeStats:
    """Read every figure of :class:`NodeStats` at *now*."""
    with db.engine.connect() as conn:
        n_studies = conn.execute(select(func.count()).select_from(Study)).scalar_one()
        n_series = conn.execute(select(func.count()).select_from(Series)).scalar_one()
        n_inst, n_recv, n_bytes = conn.execute(
            select(
                func.count(Instance.id),
                func.coalesce(func.sum(Instance.receive_count), 0),
                func.coalesce(func.sum(Instance.size_bytes), 0),
            )
        ).one()
        results = conn.execute(select(Result.kind, func.count()).group_by(Result.kind)).all()
        jobs = conn.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        deliveries = conn.execute(
            select(Delivery.destination, Delivery.status, func.count()).group_by(
                Delivery.destination, Delivery.status
            )
        ).all()
        jobs_due, oldest_job = conn.execute(
            select(func.count(), func.min(Job.created_at)).where(
                Job.status == JobStatus.QUEUED.value, Job.not_before <= now
            )
        ).one()
        deliveries_due = conn.execute(
            select(func.count()).where(
                Delivery.status == DeliveryStatus.PENDING.value,
                Delivery.next_attempt_at <= now,
            )
        ).scalar_one()
        oldest_pending = conn.execute(
            select(Delivery.destination, func.min(Delivery.created_at))
            .where(Delivery.status == DeliveryStatus.PENDING.value)
            .group_by(Delivery.destination)
        ).all()
        recent = conn.execute(
            select(Job.pipeline, Job.status, Job.timings, Job.started_at, Job.finished_at)
            .where(Job.finished_at.is_not(None), Job.finished_at >= now - recent_window)
            .order_by(Job.finished_at.desc())
            .limit(recent_limit)
        ).all()
    return NodeStats(
        studies=int(n_studies),
        series=int(n_series),
        instances=int(n_inst),
        receptions=int(n_recv),
        received_bytes=int(n_bytes),
        results_by_kind=[(str(k), int(n)) for k, n in results],
        jobs_by_status=[(str(s), int(n)) for s, n in jobs],
        deliveries_by_destination_status=[(str(d), str(s), int(n)) for d, s, n in deliveries],
        jobs_due=int(jobs_due),
        oldest_due_job=oldest_job,
        deliveries_due=int(deliveries_due),
        oldest_pending_delivery=[(str(d), c) for d, c in oldest_pending],
        recent_jobs=list(recent),
    )
