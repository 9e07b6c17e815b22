"""Response bodies of the REST API (pydantic models, also the OpenAPI schema).

Times are timezone-aware UTC.  DIMSE statuses are the integers of PS3.7
Annex C (``last_status_hex`` repeats them as ``0xA700`` for people).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from storage.jobs import DeliveryStatus, JobStatus

__all__ = [
    "AuditEventBody",
    "AuditPage",
    "CompletionOutcome",
    "DeliveryInfo",
    "ErrorBody",
    "Health",
    "JobDetail",
    "JobSummary",
    "ResultInfo",
    "RetryOutcome",
    "SeriesSummary",
    "StudySummary",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Record(_Body):
    """A body read from the attributes of a :mod:`storage.queries` record."""

    model_config = ConfigDict(from_attributes=True)


class ErrorBody(_Body):
    """Every error answer: a sentence in ``detail``."""

    detail: str


class Health(_Body):
    """``GET /api/health``: answered 200 when ``status`` is ``ok``, else 503."""

    status: Literal["ok", "error"]
    database: bool
    """The database answered a query."""
    schema_revision: str | None
    """The Alembic revision the database is at (``None``: empty or unreachable)."""
    schema_head: str | None
    """The newest revision this code knows; ``ok`` needs both to be equal."""
    version: str
    listener: bool | None = None
    """The DICOM listener accepts associations (its socket is open and its
    accept thread alive); ``None`` where this process runs none."""
    problem: str | None = None
    """Why ``status`` is ``error``."""


class SeriesSummary(_Record):
    """One received series and how much of it arrived."""

    series_instance_uid: str
    modality: str | None
    series_description: str | None
    calling_ae: str | None
    instances: int
    bytes: int


class StudySummary(_Record):
    """One received study with its series, newest first."""

    study_instance_uid: str
    patient_id: str | None
    study_date: str | None
    study_description: str | None
    last_received_at: datetime | None
    series: list[SeriesSummary]


class JobSummary(_Record):
    """One job as ``dicom-node jobs list`` shows it."""

    id: int
    status: JobStatus
    rule: str
    pipeline: str
    level: str
    revision: int
    attempts: int
    max_attempts: int
    study_instance_uid: str | None
    series_instance_uids: list[str]
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    timings: dict[str, float]
    """Seconds per stage of the last attempt (wait, read, load, infer, write, ...)."""
    results: int
    """How many result objects the job wrote."""
    deliveries: dict[str, int]
    """Deliveries of those objects, counted by status."""


class DeliveryInfo(_Record):
    """One result object to one destination."""

    id: int
    destination: str
    status: DeliveryStatus
    attempts: int
    last_status: int | None
    """The peer's last DIMSE status (PS3.7 Annex C), ``None`` before any answer."""
    last_status_hex: str | None
    error: str | None
    next_attempt_at: datetime | None
    sent_at: datetime | None


class ResultInfo(_Record):
    """One DICOM object a job wrote, and its deliveries."""

    id: int
    kind: str
    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    created_at: datetime | None
    deliveries: list[DeliveryInfo]


class JobDetail(JobSummary):
    """``GET /api/jobs/{id}``: the summary plus every result object and delivery."""

    result_objects: list[ResultInfo] = Field(default_factory=list)


class RetryOutcome(_Body):
    """What ``POST /api/jobs/{id}/retry`` did (like ``dicom-node jobs retry``)."""

    job_id: int
    retried: Literal["job", "deliveries"]
    """``job``: the failed or skipped job is queued again with fresh attempts;
    ``deliveries``: the finished job's failed deliveries are pending again."""
    count: int


class CompletionOutcome(_Body):
    """What ``POST /api/complete/{uid}`` did (like ``dicom-node complete``)."""

    uid: str
    completed: list[str]
    """``level uid rule rev N`` for each completion made or revised."""
    unchanged: list[str]
    """Completions that already existed with the same instances."""
    job_ids: list[int]
    """The jobs queued."""


class AuditEventBody(_Body):
    """One audited event (DICOM PS3.15 A.5; :mod:`dicom_node.audit`)."""

    id: int | None
    at: datetime
    event: str
    action: str
    """EventActionCode: C, R, U, D or E."""
    outcome: int
    """EventOutcomeIndicator: 0 success, 4 minor, 8 serious, 12 major failure."""
    actor: str | None
    actor_kind: str
    address: str | None
    node: str | None
    study_instance_uid: str | None
    detail: dict[str, Any]


class AuditPage(_Body):
    """``GET /api/audit``: a page of the trail, newest first."""

    total: int
    """How many events match the filter."""
    offset: int
    events: list[AuditEventBody]
