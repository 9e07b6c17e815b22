"""The REST API under ``/api/``: health, studies, jobs, forced completion, audit trail.

One router per resource.  Access (:mod:`dicom_node.web.access`): a session
(``/login``), a trusted proxy's user header, or ``[web] token`` as a Bearer
token (machines; operator rights); open only on loopback with neither users
nor token.  Reading needs any role; patient IDs are masked for roles outside
``[web] phi_roles``.  Changes need the operator role and, from a browser,
the session's CSRF token (:mod:`dicom_node.web.guard`), and are audited.
They go through the same code as the CLI (:meth:`storage.jobs.JobQueue.retry`,
:meth:`dicom_node.collect.Collector.complete`), so the node's collector,
workers and sender pick them up at their next poll.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import RedirectResponse

from dicom_node import __version__
from dicom_node.web.access import Principal
from dicom_node.web.dashboard import record_read
from dicom_node.web.deps import Context
from dicom_node.web.guard import Operator, Who, operator_change, record_action, sees_phi
from dicom_node.web.queries import job_detail, job_summaries, study_summaries
from dicom_node.web.schemas import (
    AuditEventBody,
    AuditPage,
    CompletionOutcome,
    ErrorBody,
    Health,
    JobDetail,
    JobSummary,
    RetryOutcome,
    StudySummary,
)
from storage import jobs as _jobs
from storage.audit import AuditFilter, AuditStore
from storage.db import DatabaseError, DuplicateRow
from storage.jobs import JobQueue, JobStatus
from storage.queries import job_summary

__all__ = ["audit_trail", "completion", "health", "jobs", "studies"]

#: Retrying a job whose files retention purged (``storage.jobs.JobPurged``, where defined).
_PURGED: tuple[type[Exception], ...] = tuple(
    c for c in (getattr(_jobs, "JobPurged", None),) if isinstance(c, type)
)
MASK = "***"
"""What roles outside ``[web] phi_roles`` see instead of a patient identifier."""

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
def list_studies(ctx: Context, who: Who, limit: Limit = 50) -> list[StudySummary]:
    """Received studies, most recently received first, with their series and counts.

    ``patient_id`` is ``"***"`` for roles outside ``[web] phi_roles``.
    """
    found = study_summaries(ctx.db, limit)
    if sees_phi(who, ctx):
        return found
    return [s.model_copy(update={"patient_id": MASK if s.patient_id else None}) for s in found]


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
        403: {"model": ErrorBody},
        409: {"model": ErrorBody},
    },
)
def retry_job(
    request: Request,
    ctx: Context,
    who: Annotated[Principal, Depends(operator_change)],
    job_id: JobId,
    then: Annotated[
        Literal["json", "dashboard"],
        Query(description="``dashboard``: answer with a redirect to ``/`` (the HTML form)."),
    ] = "json",
) -> Any:
    """Run a failed or skipped job again, or re-send a finished job's failed deliveries.

    The same as ``dicom-node jobs retry``: 404 for an unknown job, 409 when
    it is queued or running, has no failed delivery, or its files were
    purged.  Operators only (403), audited as ``admin-action``.
    """
    summary = job_summary(ctx.db, job_id)
    study = summary.study_instance_uid if summary is not None else None

    def refused(outcome: str, status: int, exc: Exception) -> Any:
        record_action(request, ctx, who, "retry", ok=False, study_instance_uid=study,
                      job_id=job_id, refused=outcome)
        if then == "dashboard":
            return _back(job_id, outcome)
        raise HTTPException(status_code=status, detail=str(exc)) from exc

    try:
        what, n = JobQueue(ctx.db).retry(job_id)
    except _PURGED as exc:
        return refused("purged", 409, exc)
    except LookupError as exc:
        return refused("unknown", 404, exc)
    except ValueError as exc:
        return refused("nothing", 409, exc)
    record_action(request, ctx, who, "retry", study_instance_uid=study, job_id=job_id,
                  retried=what, count=n)
    LOGGER.info("job %d: %s retried from the web by %s (%d)", job_id, what, who.name, n)
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
    responses={**_404, 403: {"model": ErrorBody}, 409: {"model": ErrorBody}},
)
def complete(
    request: Request,
    ctx: Context,
    who: Annotated[Principal, Depends(operator_change)],
    uid: Annotated[str, Path(description="A SeriesInstanceUID or StudyInstanceUID.")],
) -> CompletionOutcome:
    """Force completion of a series or study now (``dicom-node complete``).

    A SeriesInstanceUID runs that series' series-level rules; a
    StudyInstanceUID every series of the study and the study-level rules.
    404 when no such series or study was received.  Operators only (403),
    audited as ``admin-action``.
    """
    try:
        report = ctx.collector.complete(uid)
    except LookupError as exc:
        record_action(request, ctx, who, "complete", ok=False, uid=uid, refused="unknown")
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    except DuplicateRow as exc:  # the collector completed it at the same moment
        record_action(request, ctx, who, "complete", ok=False, uid=uid, refused="concurrent")
        raise HTTPException(
            status_code=409, detail=f"{uid} was completed concurrently; try again"
        ) from exc
    record_action(request, ctx, who, "complete", uid=uid, job_ids=report.job_ids,
                  completed=len(report.completed))
    LOGGER.info("forced completion from the web: %d job(s) queued", len(report.job_ids))
    return CompletionOutcome(
        uid=uid,
        completed=report.completed,
        unchanged=report.unchanged,
        job_ids=report.job_ids,
    )


# -- audit trail -------------------------------------------------------------------------
audit_trail = APIRouter(prefix="/api", tags=["audit"])


@audit_trail.get("/audit", response_model=AuditPage, responses={403: {"model": ErrorBody}})
def list_audit(
    request: Request,
    ctx: Context,
    who: Operator,
    event: Annotated[list[str] | None, Query(description="Only these events (repeatable).")] = None,
    actor: Annotated[str | None, Query(max_length=128)] = None,
    study: Annotated[str | None, Query(max_length=64, description="A StudyInstanceUID.")] = None,
    failures: Annotated[bool, Query(description="Only events that did not succeed.")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> AuditPage:
    """The audit trail, newest first (operators only; reading it is audited as ``audit-read``)."""
    where = AuditFilter(
        events=tuple(event or ()), actor=actor, study_instance_uid=study, failures_only=failures
    )
    store = AuditStore(ctx.db)
    entries = store.query(where, limit=limit, offset=offset)
    total = store.count(where)
    record_read(request, ctx, who, via_page="api", returned=len(entries),
                filter={"events": list(event or ()) or None, "actor": actor, "study": study,
                        "failures": failures or None, "offset": offset})
    return AuditPage(
        total=total,
        offset=offset,
        events=[AuditEventBody.model_validate(e.as_dict()) for e in entries],
    )
