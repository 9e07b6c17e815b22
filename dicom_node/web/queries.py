"""Read-only views of the REST API and the dashboard, over :mod:`storage.jobs` queries.

They only read and hold no SQL; every change goes through :mod:`storage.jobs`
and :mod:`dicom_node.collect`, exactly as the CLI does.
"""

from __future__ import annotations

from dicom_node.web.schemas import DeliveryInfo, ResultInfo
from storage.db import Database
from storage.jobs import DeliveryStatus, FailedDelivery, JobQueue

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


def failed_deliveries(db: Database, limit: int = 100) -> list[FailedDelivery]:
    """Failed deliveries, newest first (:meth:`storage.jobs.JobQueue.failed_deliveries`)."""
    return JobQueue(db).failed_deliveries(limit)


def status_counts(db: Database) -> tuple[dict[str, int], dict[str, int]]:
    """Jobs and deliveries counted by status (:meth:`storage.jobs.JobQueue.status_counts`)."""
    return JobQueue(db).status_counts()
