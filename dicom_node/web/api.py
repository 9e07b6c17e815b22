"""The REST API under ``/api/``: health, studies, jobs, forced completion.

One router per resource.  Access: bind the web server to loopback (the
default, ``[web] host = "127.0.0.1"``), or set ``[web] token``
(:mod:`dicom_node.web.auth`) and put TLS in front beyond loopback.  Changes
go through the same code as the CLI (:meth:`storage.jobs.JobQueue.retry`,
:meth:`dicom_node.collect.Collector.complete`), so the node's collector,
workers and sender pick them up at their next poll.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import RedirectResponse

from dicom_node import __version__
from dicom_node.web.deps import Context, same_origin
from dicom_node.web.queries import job_detail, job_summaries, study_summaries
from dicom_node.web.schemas import (
    CompletionOutcome,
    ErrorBody,
    Health,
    JobDetail,
    JobSummary,
    RetryOutcome,
    StudySummary,
)
from storage.db import DatabaseError, DuplicateRow
from storage.jobs import JobQueue, JobStatus

__all__ = ["completion", "health", "jobs", "studies"]

LOGGER = logging.getLogger(__name__)

_404: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody}}
Limit = Annotated[int, Query(ge=1, le=1000, description="At most this many, newest first.")]

# -- health ----------------------------------------------------------------------------
health = APIRouter(prefix="/api", tags=["health"])


@health.get("/health", response_model=Health, responses={503: {"model": Health}})
def get_health(ctx: Context, request: Request, response: Response) -> Health:
    """Whether the node can work: the database answers, its schema is current,
    and the DICOM listener accepts associations.

    200 with ``status: ok``, else 503 with the ``problem``.  The listener is
    known when the node set ``app.state.dicom_listener`` (a callable that
    returns why the listener cannot accept, or ``None``).
    """
    listener, listener_problem = _listener_state(request)
    try:
        revision = ctx.db.current_revision()
    except DatabaseError as exc:
        LOGGER.warning("health: database unreachable: %s", exc.__class__.__name__)
        response.status_code = 503
        return Health(
            status="error",
            database=False,
            schema_revision=None,
            schema_head=ctx.schema_head,
            version=__version__,
            listener=listener,
            problem=f"database unreachable ({exc.__class__.__name__})",
        )
    problem = None
    if revision != ctx.schema_head:
        problem = f"schema at revision {revision}, code expects {ctx.schema_head}"
    elif listener_problem is not None:
        problem = listener_problem
    if problem:
        response.status_code = 503
    return Health(
        status="error" if problem else "ok",
        database=True,
        schema_revision=revision,
        schema_head=ctx.schema_head,
        version=__version__,
        listener=listener,
        problem=problem,
    )


def _listener_state(request: Request) -> tuple[bool | None, str | None]:
    """``(accepting, problem)`` of the DICOM listener; ``(None, None)`` without one."""
    probe = getattr(request.app.state, "dicom_listener", None)
    if probe is None:
        return None, None
    problem = probe()
    if problem is not None:
        LOGGER.warning("health: %s", problem)
    return problem is None, problem


# -- studies -----------------------------------------------------------------------------
studies = APIRouter(prefix="/api", tags=["studies"])


@studies.get("/studies", response_model=list[StudySummary])
def list_studies(ctx: Context, limit: Limit = 50) -> list[StudySummary]:
    """Received studies, most recently received first, with their series and counts."""
    return study_summaries(ctx.db, limit)


# -- jobs --------------------------------------------------------------------------------
jobs = APIRouter(prefix="/api", tags=["jobs"])
JobId = Annotated[int, Path(ge=1, description="The job's id.")]


@jobs.get("/jobs", response_model=list[JobSummary])
def list_jobs(
    ctx: Context,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
    limit: Limit = 50,
) -> list[JobSummary]:
    """Jobs, newest first, with delivery counts (``dicom-node jobs list``)."""
    return job_summaries(ctx.db, status.value if status else None, limit)


@jobs.get("/jobs/{job_id}", response_model=JobDetail, responses=_404)
def get_job(ctx: Context, job_id: JobId) -> JobDetail:
    """One job with each result object and delivery (``dicom-node jobs show``)."""
    detail = job_detail(ctx.db, job_id)
    if detail is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id}")
    return detail


@jobs.post(
    "/jobs/{job_id}/retry",
    response_model=RetryOutcome,
    responses={
        **_404,
        303: {"description": "``then=dashboard``: back to the dashboard"},
        409: {"model": ErrorBody},
    },
    dependencies=[Depends(same_origin)],
)
def retry_job(
    ctx: Context,
    job_id: JobId,
    then: Annotated[
        Literal["json", "dashboard"],
        Query(description="``dashboard``: answer with a redirect to ``/`` (the HTML form)."),
    ] = "json",
) -> Any:
    """Run a failed or skipped job again, or re-send a finished job's failed deliveries.

    The same as ``dicom-node jobs retry``: 404 for an unknown job, 409 when
    it is queued or running, or has no failed delivery.
    """
    try:
        what, n = JobQueue(ctx.db).retry(job_id)
    except LookupError as exc:
        if then == "dashboard":
            return _back(job_id, "unknown")
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    except ValueError as exc:
        if then == "dashboard":
            return _back(job_id, "nothing")
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    LOGGER.info("job %d: %s retried from the web (%d)", job_id, what, n)
    if then == "dashboard":
        return _back(job_id, what)
    return RetryOutcome(job_id=job_id, retried="job" if what == "job" else "deliveries", count=n)


def _back(job_id: int, outcome: str) -> RedirectResponse:
    return RedirectResponse(f"/?retried={job_id}&outcome={outcome}", status_code=303)


# -- completion --------------------------------------------------------------------------
completion = APIRouter(prefix="/api", tags=["completion"])


@completion.post(
    "/complete/{uid}",
    response_model=CompletionOutcome,
    responses={**_404, 409: {"model": ErrorBody}},
    dependencies=[Depends(same_origin)],
)
def complete(
    ctx: Context,
    uid: Annotated[str, Path(description="A SeriesInstanceUID or StudyInstanceUID.")],
) -> CompletionOutcome:
    """Force completion of a series or study now (``dicom-node complete``).

    A SeriesInstanceUID runs that series' series-level rules; a
    StudyInstanceUID every series of the study and the study-level rules.
    404 when no such series or study was received.
    """
    try:
        report = ctx.collector.complete(uid)
    except LookupError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    except DuplicateRow as exc:  # the collector completed it at the same moment
        raise HTTPException(
            status_code=409, detail=f"{uid} was completed concurrently; try again"
        ) from exc
    LOGGER.info("forced completion from the web: %d job(s) queued", len(report.job_ids))
    return CompletionOutcome(
        uid=uid,
        completed=report.completed,
        unchanged=report.unchanged,
        job_ids=report.job_ids,
    )
