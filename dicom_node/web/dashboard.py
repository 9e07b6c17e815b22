"""``GET /``: the dashboard, and ``GET /audit``: the audit trail for operators.

Server-rendered pages (:mod:`.pages`, Jinja2 with autoescape), no script,
no external assets (they work offline and under a CSP without
``script-src``): recent studies, jobs with their status in colour, failed
deliveries with a retry button for operators (an HTML form that posts to
``/api/jobs/{id}/retry?then=dashboard`` with the session's CSRF token).  The
dashboard reloads itself every :data:`REFRESH_S` seconds.

Patient names, IDs and accession numbers are shown to logged-in users whose
role is in ``[web] phi_roles`` and masked for the others; an open node
(no users, no token, loopback) leaves them out, as the page always did.
Access: see :mod:`dicom_node.web.access`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from dicom_node import audit
from dicom_node.web.access import Principal, client_address
from dicom_node.web.deps import Context
from dicom_node.web.guard import Operator, Who, sees_phi
from dicom_node.web.pages import render
from storage.audit import AuditFilter, AuditStore
from storage.jobs import DeliveryStatus, JobStatus, as_utc
from storage.patients import patient_fields
from storage.queries import failed_deliveries, job_summaries, status_counts, study_summaries

__all__ = ["AUDIT_PAGE", "REFRESH_S", "dashboard"]

REFRESH_S = 5
"""Seconds between automatic reloads of the page."""
AUDIT_PAGE = 50
"""Audit events per page."""

_NOTICES = {
    "job": "job {id}: queued again",
    "deliveries": "job {id}: failed deliveries set to pending",
    "unknown": "job {id}: no such job",
    "nothing": "job {id}: nothing to retry (queued, running, or no failed delivery)",
    "purged": "job {id}: its files were purged; it cannot be retried",
}
_KNOWN = frozenset({s.value for s in JobStatus} | {s.value for s in DeliveryStatus})
_OUTCOMES = {0: "success", 4: "minor failure", 8: "serious failure", 12: "major failure"}


def access_text(ctx: Context, who: Principal) -> str:
    """How the page was reached, for its header line."""
    if who.via == "open":
        return "no authentication"
    if who.via in ("token", "basic"):
        return "token required"
    return "signed in" if who.via == "session" else "single sign-on"


dashboard = APIRouter(tags=["dashboard"])


@dashboard.get("/", response_class=HTMLResponse, include_in_schema=False)
def get_dashboard(
    ctx: Context,
    who: Who,
    retried: Annotated[int | None, Query()] = None,
    auto: Annotated[int | None, Query(ge=1, le=1)] = None,
    outcome: Annotated[
        Literal["job", "deliveries", "unknown", "nothing", "purged"] | None, Query()
    ] = None,
) -> HTMLResponse:
    """The dashboard page (and, after a retry form, what the retry did).

    ``auto=1``: the page's own reload, which does not keep a session alive.
    """
    del auto  # read by AccessControl
    notice = None
    if retried is not None and outcome is not None:
        notice = _NOTICES[outcome].format(id=retried)
    counts = status_counts(ctx.db)
    studies = study_summaries(ctx.db, limit=20)
    phi_columns = who.via != "open"
    show_phi = phi_columns and sees_phi(who, ctx)
    # Read for the masked roles too: they see that a value is there, not what it is.
    patients = (
        patient_fields(ctx.db, [s.study_instance_uid for s in studies]) if phi_columns else {}
    )
    jobs: list[dict[str, Any]] = []
    for job in job_summaries(ctx.db, limit=50):
        started, finished = as_utc(job.started_at), as_utc(job.finished_at)
        took = f"{(finished - started).total_seconds():.1f} s" if started and finished else ""
        can_retry = job.status in (JobStatus.FAILED.value, JobStatus.SKIPPED.value) or bool(
            job.status not in (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
            and job.deliveries.get(DeliveryStatus.FAILED.value)
        )
        jobs.append({"job": job, "took": took, "can_retry": can_retry})
    return render(
        "dashboard.html",
        who=who,
        access=access_text(ctx, who),
        refresh=REFRESH_S,
        notice=notice,
        known=_KNOWN,
        job_counts=counts.jobs,
        delivery_counts=counts.deliveries,
        failed=failed_deliveries(ctx.db, limit=50),
        jobs=jobs,
        studies=studies,
        patients=patients,
        phi_columns=phi_columns,
        show_phi=show_phi,
    )


@dashboard.get("/audit", response_class=HTMLResponse, include_in_schema=False)
def get_audit_page(
    request: Request,
    ctx: Context,
    who: Operator,
    event: Annotated[str | None, Query(max_length=48)] = None,
    actor: Annotated[str | None, Query(max_length=128)] = None,
    study: Annotated[str | None, Query(max_length=64)] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    """The audit trail, newest first, filtered by event, actor and study, a page at a time."""
    filters = {"event": event or None, "actor": actor or None, "study": study or None}
    where = AuditFilter(
        events=(filters["event"],) if filters["event"] else (),
        actor=filters["actor"],
        study_instance_uid=filters["study"],
    )
    store = AuditStore(ctx.db)
    total = store.count(where)
    entries = store.query(where, limit=AUDIT_PAGE, offset=(page - 1) * AUDIT_PAGE)
    record_read(request, ctx, who, via_page="dashboard", returned=len(entries),
                filter={**filters, "page": page})

    def link(number: int) -> str:
        query = {k: v for k, v in filters.items() if v}
        return "/audit?" + urlencode({**query, "page": number})

    return render(
        "audit.html",
        who=who,
        access=access_text(ctx, who),
        refresh=None,
        entries=entries,
        total=total,
        page=page,
        pages=max(1, -(-total // AUDIT_PAGE)),
        link=link,
        filters=filters,
        event_names=[e.value for e in audit.AuditEvent],
        outcomes=_OUTCOMES,
    )


def record_read(request: Request, ctx: Context, who: Principal, **detail: Any) -> None:
    """An ``audit-read`` event (PS3.15 A.5.3.3 Audit Log Used) for the web."""
    audit.auditor().record(
        audit.AuditEvent.AUDIT_READ,
        actor=who.name,
        actor_kind=who.actor_kind,
        address=client_address(request.scope, ctx.settings.web),
        via="web",
        **detail,
    )


@dashboard.get("/favicon.ico", include_in_schema=False)
def get_favicon() -> Response:
    """No icon (answered, so browsers do not log a 404 on every refresh)."""
    return Response(status_code=204)
