"""Read-only queries of the REST API and the dashboard that ``storage`` does not offer.

They only read; every change goes through :mod:`storage.jobs` and
:mod:`dicom_node.collect`, exactly as the CLI does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from dicom_node.web.schemas import DeliveryInfo, ResultInfo
from storage.db import Database
from storage.jobs import DeliveryStatus, JobQueue, as_utc
from storage.models import Delivery, Job, Result

__all__ = ["FailedDelivery", "failed_deliveries", "job_results", "status_counts"]


def _hex(status: int | None) -> str | None:
    return None if status is None else f"0x{status:04X}"


def job_results(db: Database, job_id: int) -> list[ResultInfo]:
    """The result objects of one job, each with its deliveries, in the order written
    (:meth:`storage.jobs.JobQueue.results_with_deliveries`)."""
    return [
        ResultInfo(
            id=r["id"],
            kind=r["kind"],
            sop_instance_uid=r["sop_instance_uid"],
            series_instance_uid=r["series_instance_uid"],
            sop_class_uid=r["sop_class_uid"],
            created_at=r["created_at"],
            deliveries=[
                DeliveryInfo(
                    id=d["id"],
                    destination=d["destination"],
                    status=DeliveryStatus(d["status"]),
                    attempts=d["attempts"],
                    last_status=d["last_status"],
                    last_status_hex=_hex(d["last_status"]),
                    error=d["error"],
                    next_attempt_at=d["next_attempt_at"],
                    sent_at=d["sent_at"],
                )
                for d in r["deliveries"]
            ],
        )
        for r in JobQueue(db).results_with_deliveries(job_id)
    ]


@dataclass(frozen=True)
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
    """Failed deliveries, newest first."""
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


def status_counts(db: Database) -> tuple[dict[str, int], dict[str, int]]:
    """Jobs and deliveries counted by status."""
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
    return jobs, deliveries
