"""The REST API's bodies made from :mod:`storage.queries` records.

The web reads only through :mod:`storage.queries` and holds no SQL; every
change goes through :mod:`storage.jobs` and :mod:`dicom_node.collect`,
exactly as the CLI does.
"""

from __future__ import annotations

import dataclasses

from dicom_node.web.schemas import JobDetail, JobSummary, ResultInfo, StudySummary
from storage import queries
from storage.db import Database
from storage.queries import FailedDelivery

__all__ = ["FailedDelivery", "job_detail", "job_results", "job_summaries", "study_summaries"]


def study_summaries(db: Database, limit: int) -> list[StudySummary]:
    """Received studies, most recently received first (:func:`storage.queries.study_summaries`)."""
    return [StudySummary.model_validate(s) for s in queries.study_summaries(db, limit)]


def job_summaries(db: Database, status: str | None, limit: int) -> list[JobSummary]:
    """Jobs, newest first (:func:`storage.queries.job_summaries`)."""
    return [
        JobSummary.model_validate(j) for j in queries.job_summaries(db, status=status, limit=limit)
    ]


def job_results(db: Database, job_id: int) -> list[ResultInfo]:
    """The result objects of one job, each with its deliveries, in the order written
    (:func:`storage.queries.job_results`)."""
    return [ResultInfo.model_validate(r) for r in queries.job_results(db, job_id)]


def job_detail(db: Database, job_id: int) -> JobDetail | None:
    """One job with its result objects and deliveries; ``None`` for an unknown job."""
    job = queries.job_summary(db, job_id)
    if job is None:
        return None
    return JobDetail.model_validate(
        {**dataclasses.asdict(job), "result_objects": job_results(db, job_id)}
    )
