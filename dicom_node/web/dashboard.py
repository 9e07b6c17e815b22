"""``GET /``: a small read-only HTML dashboard.

One page, no JavaScript, no external assets (it works offline and under a
``default-src 'none'`` Content-Security-Policy): recent studies, jobs with
their status in colour, and failed deliveries with a retry button (an HTML
form that posts to ``/api/jobs/{id}/retry?then=dashboard``).  The page
reloads itself every :data:`REFRESH_S` seconds.  Every value from the
database is escaped: DICOM attributes come from scanners and are untrusted.

Patient identifiers are left out of the page (the JSON API has them).
Access: see :mod:`dicom_node.web.auth`.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, Response

from dicom_node import __version__
from dicom_node.web.deps import Context
from storage.jobs import DeliveryStatus, JobStatus, as_utc
from storage.queries import (
    FailedDelivery,
    JobSummary,
    StudySummary,
    failed_deliveries,
    job_summaries,
    status_counts,
    study_summaries,
)

__all__ = ["REFRESH_S", "SECURITY_HEADERS", "dashboard", "render_dashboard"]

REFRESH_S = 5
"""Seconds between automatic reloads of the page."""

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # not "no-referrer": browsers then send "Origin: null" with the retry form
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_NOTICES = {
    "job": "job {id}: queued again",
    "deliveries": "job {id}: failed deliveries set to pending",
    "unknown": "job {id}: no such job",
    "nothing": "job {id}: nothing to retry (queued, running, or no failed delivery)",
}

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.num{text-align:right}
.uid{font-family:monospace;font-size:.9em}.err{color:#900;max-width:40em;overflow-wrap:anywhere}
.badge{display:inline-block;padding:0 .5em;border-radius:.7em;color:#fff;background:#777}
.queued{background:#777}.running{background:#1565c0}.succeeded,.sent{background:#2e7d32}
.failed{background:#c62828}.skipped,.pending{background:#ef6c00}
.superseded,.cancelled{background:#9e9e9e}
.notice{padding:.4em .8em;background:#fff8e1;border:1px solid #ffe082}
.muted{color:#777}form{display:inline;margin:0}
"""

_FAILED_HEADERS = (
    "job", "pipeline", "destination", "kind", "SOP Instance UID", "tries", "DIMSE", "error", "",
)  # fmt: skip
_JOB_HEADERS = (
    "id", "status", "pipeline", "rule", "series", "try", "created (UTC)", "took", "results",
    "deliveries", "error", "",
)  # fmt: skip
_STUDY_HEADERS = (
    "study", "date", "description", "last received (UTC)", "modality", "series description",
    "instances", "from AE",
)  # fmt: skip


def _e(value: object) -> str:
    """Escaped text of *value* (empty for ``None``)."""
    return html.escape("" if value is None else str(value), quote=True)


def _when(value: datetime | None) -> str:
    value = as_utc(value)
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _short(uid: str | None) -> str:
    if not uid:
        return ""
    return uid if len(uid) <= 28 else "\u2026" + uid[-27:]


def _badge(status: str) -> str:
    known = {s.value for s in JobStatus} | {s.value for s in DeliveryStatus}
    css = status if status in known else ""
    return f'<span class="badge {css}">{_e(status)}</span>'


def _retry_button(job_id: int) -> str:
    return (
        f'<form method="post" action="/api/jobs/{int(job_id)}/retry?then=dashboard">'
        f'<button type="submit">retry</button></form>'
    )


def _table(headers: Sequence[str], rows: Iterable[str], empty: str) -> str:
    body = "".join(rows)
    if not body:
        return f'<p class="muted">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _counts(counts: Mapping[str, int]) -> str:
    if not counts:
        return '<span class="muted">none</span>'
    return " ".join(f"{_badge(s)} {int(n)}" for s, n in sorted(counts.items()))


def render_dashboard(
    studies: Sequence[StudySummary],
    jobs: Sequence[JobSummary],
    failed: Sequence[FailedDelivery],
    job_counts: Mapping[str, int],
    delivery_counts: Mapping[str, int],
    notice: str | None = None,
    access: str = "no authentication",
) -> str:
    """The page's HTML; every value is escaped here."""
    study_rows = []
    for st in studies:
        series = st.series
        for i, se in enumerate(series):
            lead = ""
            if i == 0:
                span = len(series)
                lead = (
                    f'<td rowspan="{span}" class="uid" title="{_e(st.study_instance_uid)}">'
                    f"{_e(_short(st.study_instance_uid))}</td>"
                    f'<td rowspan="{span}">{_e(st.study_date)}</td>'
                    f'<td rowspan="{span}">{_e(st.study_description)}</td>'
                    f'<td rowspan="{span}">{_e(_when(st.last_received_at))}</td>'
                )
            study_rows.append(
                f"<tr>{lead}<td>{_e(se.modality)}</td>"
                f"<td>{_e(se.series_description)}</td>"
                f'<td class="num">{int(se.instances)}</td>'
                f"<td>{_e(se.calling_ae)}</td></tr>"
            )
    job_rows = []
    for job in jobs:
        took = ""
        started, finished = as_utc(job.started_at), as_utc(job.finished_at)
        if started and finished:
            took = f"{(finished - started).total_seconds():.1f} s"
        deliveries = job.deliveries
        can_retry = job.status in (JobStatus.FAILED.value, JobStatus.SKIPPED.value) or (
            job.status not in (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
            and deliveries.get(DeliveryStatus.FAILED.value)
        )
        job_id = int(job.id)
        job_rows.append(
            f'<tr id="job-{job_id}"><td><a href="/api/jobs/{job_id}">{job_id}</a></td>'
            f"<td>{_badge(job.status)}</td>"
            f"<td>{_e(job.pipeline)}</td><td>{_e(job.rule)}</td>"
            f'<td class="uid">'
            + "<br>".join(_e(_short(u)) for u in job.series_instance_uids)
            + f"</td><td>{int(job.attempts)}/{int(job.max_attempts)}</td>"
            f"<td>{_e(_when(job.created_at))}</td><td>{_e(took)}</td>"
            f'<td class="num">{int(job.results)}</td>'
            f"<td>{_counts(deliveries) if deliveries else ''}</td>"
            f'<td class="err">{_e((job.error or "")[:300])}</td>'
            f"<td>{_retry_button(job_id) if can_retry else ''}</td></tr>"
        )
    failed_rows = [
        f'<tr><td><a href="/api/jobs/{int(d.job_id)}">{int(d.job_id)}</a></td>'
        f"<td>{_e(d.pipeline)}</td><td>{_e(d.destination)}</td><td>{_e(d.kind)}</td>"
        f'<td class="uid">{_e(_short(d.sop_instance_uid))}</td>'
        f'<td class="num">{int(d.attempts)}</td><td>{_e(d.last_status_hex)}</td>'
        f'<td class="err">{_e((d.error or "")[:300])}</td>'
        f"<td>{_retry_button(d.job_id)}</td></tr>"
        for d in failed
    ]
    notice_html = f'<p class="notice">{_e(notice)}</p>' if notice else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_S}; url=/">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dicom-node</title><style>{_STYLE}</style></head>
<body>
<h1>dicom-node</h1>
<p class="muted">version {_e(__version__)} &middot; refreshes every {REFRESH_S} s &middot;
<a href="/api/health">health</a> &middot; <a href="/metrics">metrics</a> &middot;
<a href="/api/openapi.json">API schema</a> &middot; {_e(access)}</p>
{notice_html}
<p>jobs: {_counts(job_counts)}<br>deliveries: {_counts(delivery_counts)}</p>
<h2>Failed deliveries</h2>
{_table(_FAILED_HEADERS, failed_rows, "No failed delivery.")}
<h2>Jobs</h2>
{_table(_JOB_HEADERS, job_rows, "No job yet.")}
<h2>Recent studies</h2>
{_table(_STUDY_HEADERS, study_rows, "No study received yet.")}
</body></html>
"""


dashboard = APIRouter(tags=["dashboard"])


@dashboard.get("/", response_class=HTMLResponse, include_in_schema=False)
def get_dashboard(
    ctx: Context,
    retried: Annotated[int | None, Query()] = None,
    outcome: Annotated[Literal["job", "deliveries", "unknown", "nothing"] | None, Query()] = None,
) -> HTMLResponse:
    """The dashboard page (and, after a retry form, what the retry did)."""
    notice = None
    if retried is not None and outcome is not None:
        notice = _NOTICES[outcome].format(id=retried)
    counts = status_counts(ctx.db)
    page = render_dashboard(
        studies=study_summaries(ctx.db, limit=20),
        jobs=job_summaries(ctx.db, limit=50),
        failed=failed_deliveries(ctx.db, limit=50),
        job_counts=counts.jobs,
        delivery_counts=counts.deliveries,
        notice=notice,
        access="token required" if ctx.settings.web.token is not None else "no authentication",
    )
    return HTMLResponse(page, headers=SECURITY_HEADERS)


@dashboard.get("/favicon.ico", include_in_schema=False)
def get_favicon() -> Response:
    """No icon (answered, so browsers do not log a 404 on every refresh)."""
    return Response(status_code=204)
