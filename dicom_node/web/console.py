"""The console's pages: studies, a study's series and why each was (not) routed,
a job's timeline and preview, rules with their dry-run, destinations,
pipelines, configuration, and the live overview.

Server-rendered (:mod:`.pages`, Jinja2 with autoescape, no script), read
through :mod:`storage.console`; every page needs a principal, and patient
identifiers follow ``[web] phi_roles`` as on the dashboard.  What an operator
changes goes through :mod:`.console_actions` (confirmed, audited).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from dicom_node.config import Settings
from dicom_node.config_check import config_problems, redact_url
from dicom_node.web.access import Principal
from dicom_node.web.dashboard import _KNOWN, access_text
from dicom_node.web.deps import Context, WebContext, same_origin
from dicom_node.web.guard import Who, sees_phi, verify_csrf
from dicom_node.web.live import live_overview
from dicom_node.web.notices import Notice
from dicom_node.web.pages import render
from storage import console as q
from storage.jobs import DeliveryStatus, JobStatus
from storage.pauses import PauseStore
from storage.queries import job_results, job_summary

__all__ = ["PAGE", "console", "job_actions_allowed", "viewer_link"]

LOGGER = logging.getLogger(__name__)

PAGE = 25
"""Studies per page."""
MAX_UPLOAD = 64 * 2**20
"""The largest file the dry-run accepts."""
_STATES = ("unrouted", *[s.value for s in JobStatus])

console = APIRouter(tags=["console"])


def _common(ctx: WebContext, who: Principal, notice: str | None = None) -> dict[str, Any]:
    return {"who": who, "access": access_text(ctx, who), "refresh": None, "known": _KNOWN,
            "notice": notice}


def viewer_link(ctx: WebContext, study_uid: str | None) -> str | None:
    """The configured web viewer's address of a study (``[web] viewer_url``)."""
    template = ctx.settings.web.viewer_url
    if not template or not study_uid:
        return None
    return template.replace("{study}", quote(study_uid, safe=""))


# -- studies -------------------------------------------------------------------------------
@console.get("/studies", response_class=HTMLResponse, include_in_schema=False)
def get_studies(
    ctx: Context,
    who: Who,
    text: Annotated[str | None, Query(max_length=128)] = None,
    modality: Annotated[str | None, Query(max_length=16)] = None,
    state: Annotated[str | None, Query(max_length=16)] = None,
    date_from: Annotated[str | None, Query(max_length=10)] = None,
    date_to: Annotated[str | None, Query(max_length=10)] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    """Received studies, searched (patient ID, accession, name, UID, description,
    modality, job state, study date) and paged, newest first."""
    show_phi = who.via != "open" and sees_phi(who, ctx)
    problems = []
    if state and state not in _STATES:
        problems.append(f"state: one of {', '.join(_STATES)}")
        state = None

    def day(value: str | None, name: str) -> str | None:
        if not value:
            return None
        digits = value.replace("-", "")
        if len(digits) != 8 or not digits.isdigit():
            problems.append(f"{name}: a date as YYYY-MM-DD or YYYYMMDD")
            return None
        return digits

    where = q.StudyFilter(
        text=(text or "").strip() or None,
        patient_fields=show_phi or who.via == "open",
        modality=(modality or "").strip() or None,
        state=state or None,
        date_from=day(date_from, "from"),
        date_to=day(date_to, "to"),
    )
    found = q.search_studies(ctx.db, where, limit=PAGE, offset=(page - 1) * PAGE)
    filters = {"text": text or "", "modality": modality or "", "state": state or "",
               "date_from": date_from or "", "date_to": date_to or ""}

    def link(number: int) -> str:
        return "/studies?" + urlencode({**{k: v for k, v in filters.items() if v}, "page": number})

    return render(
        "studies.html",
        **_common(ctx, who),
        page=page,
        pages=max(1, math.ceil(found.total / PAGE)),
        total=found.total,
        rows=found.rows,
        link=link,
        filters=filters,
        states=_STATES,
        problems=problems,
        phi_columns=who.via != "open",
        show_phi=show_phi,
        searches_phi=where.patient_fields,
    )


@console.get("/studies/{study_uid}", response_class=HTMLResponse, include_in_schema=False)
def get_study(ctx: Context, who: Who, study_uid: str, notice: Notice) -> HTMLResponse:
    """One study: its series, which rules matched each and why the others did not, its jobs."""
    study = q.study_detail(ctx.db, study_uid)
    if study is None:
        raise HTTPException(status_code=404, detail=f"no study {study_uid} was received")
    jobs = [j for j in (job_summary(ctx.db, i) for i in study.job_ids[:100]) if j is not None]
    by_series: dict[str, list[Any]] = {}
    for job in jobs:
        for uid in job.series_instance_uids:
            by_series.setdefault(uid, []).append(job)
    return render(
        "study.html",
        **_common(ctx, who, notice),
        study=study,
        jobs=jobs,
        by_series=by_series,
        phi_columns=who.via != "open",
        show_phi=who.via != "open" and sees_phi(who, ctx),
        viewer=viewer_link(ctx, study.study_instance_uid),
        paused=PauseStore(ctx.db).names("rule"),
        configured_rules={r.name for r in ctx.settings.rules},
    )


# -- one job -----------------------------------------------------------------------------
def job_actions_allowed(status: str, deliveries: dict[str, int]) -> dict[str, bool]:
    """Which actions the job page offers for a job in *status* with *deliveries*."""
    active = status in (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
    return {
        "retry": status in (JobStatus.FAILED.value, JobStatus.SKIPPED.value)
        or (not active and bool(deliveries.get(DeliveryStatus.FAILED.value))),
        "cancel": active or bool(deliveries.get(DeliveryStatus.PENDING.value)),
        "rerun": not active,
    }


@console.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
def get_job(ctx: Context, who: Who, job_id: int, notice: Notice) -> HTMLResponse:
    """One job: timeline, stage timings, error with its cause, results and deliveries,
    a preview, and the operator's actions."""
    job = job_summary(ctx.db, job_id)
    if job is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id}")
    timeline = q.job_timeline(ctx.db, job_id)
    from ai_models.pipelines import list_pipelines

    pipelines = sorted(i.name for i in list_pipelines(ctx.settings.pipeline_specs()))
    return render(
        "job.html",
        **_common(ctx, who, notice),
        job=job,
        timeline=timeline,
        results=job_results(ctx.db, job_id),
        actions=job_actions_allowed(job.status, job.deliveries),
        pipelines=pipelines,
        viewer=viewer_link(ctx, job.study_instance_uid),
    )


@console.get("/jobs/{job_id}/preview.png", include_in_schema=False)
async def get_preview(ctx: Context, who: Who, job_id: int) -> Response:
    """PNG: source slices with the outlines, boxes or heat map the job produced."""
    del who
    files = q.job_files(ctx.db, job_id)
    if files is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id}")
    from dicom_node.web.preview import PreviewSource, PreviewUnavailable, render_preview

    spool = Path(ctx.settings.storage.spool_dir)
    results = Path(ctx.settings.storage.results_dir)
    source = PreviewSource(
        source_paths=[spool / p for p in files.source_paths],
        result_paths=[(kind, results / p) for kind, p in files.result_paths],
    )
    try:
        png = await run_in_threadpool(render_preview, source)
    except PreviewUnavailable as exc:
        raise HTTPException(status_code=404, detail=f"no preview: {exc}") from exc
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


# -- rules -------------------------------------------------------------------------------
def _rule_rows(ctx: WebContext) -> list[dict[str, Any]]:
    paused = PauseStore(ctx.db).names("rule")
    rows = []
    for rule in sorted(ctx.settings.rules, key=lambda r: -r.priority):
        rows.append({
            "rule": rule,
            "match": _toml_inline(rule.match),
            "paused": rule.name in paused,
        })
    return rows


def _toml_inline(value: Any) -> str:
    """A match table as the one-line TOML an admin wrote."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_inline(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_inline(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def _dry_run(ctx: WebContext, attrs: dict[str, Any]) -> list[dict[str, Any]]:
    from dicom_node.collect.routing import evaluate_rules

    paused = PauseStore(ctx.db).names("rule")
    by_name = {r.name: r for r in ctx.settings.rules}
    out = []
    for m in evaluate_rules(ctx.settings.rules, attrs):
        rule = by_name[m.rule]
        out.append({
            "rule": m.rule,
            "trigger": rule.trigger,
            "matched": m.matched,
            "fallback": m.fallback,
            "paused": m.rule in paused,
            "pipelines": list(rule.pipelines),
            "destinations": list(rule.destinations),
            "note": "fallback rule: another rule matched"
            if m.fallback and not m.matched and all(e.ok for e in m.explanations)
            else None,
            "conditions": [{"path": e.path, "ok": e.ok, "reason": e.reason}
                           for e in m.explanations],
        })
    return out


def _rules_page(
    ctx: WebContext,
    who: Principal,
    *,
    series: str | None = None,
    tested: str | None = None,
    verdicts: list[dict[str, Any]] | None = None,
    attributes: dict[str, Any] | None = None,
    problem: str | None = None,
    status_code: int = 200,
    notice: str | None = None,
) -> HTMLResponse:
    return render(
        "rules.html",
        status_code=status_code,
        **_common(ctx, who, notice),
        rules=_rule_rows(ctx),
        recent=q.recent_series(ctx.db, 30),
        series=series or "",
        tested=tested,
        verdicts=verdicts,
        attributes=attributes or {},
        problem=problem,
    )


@console.get("/rules", response_class=HTMLResponse, include_in_schema=False)
def get_rules(
    ctx: Context,
    who: Who,
    notice: Notice,
    series: Annotated[str | None, Query(max_length=64, description="Dry-run on it.")] = None,
) -> HTMLResponse:
    """The rules as configured, and the dry-run on a received series."""
    if not series:
        return _rules_page(ctx, who, notice=notice)
    row = q.series_routing_attributes(ctx.db, series.strip())
    if row is None:
        return _rules_page(ctx, who, series=series,
                           problem=f"no series {series} was received", status_code=404)
    from dicom_node.collect.collector import series_attributes

    attrs = series_attributes(row)
    return _rules_page(ctx, who, series=series, tested=f"received series {series}",
                       verdicts=_dry_run(ctx, attrs), attributes=_shown(attrs, who, ctx))


@console.post("/rules/dry-run", response_class=HTMLResponse, include_in_schema=False)
async def post_dry_run(
    request: Request,
    ctx: Context,
    who: Who,
    file: UploadFile,
) -> HTMLResponse:
    """The dry-run on an uploaded DICOM file (nothing is stored or sent)."""
    form = await request.form()
    same_origin(request, ctx)
    verify_csrf(request, ctx, who, str(form.get("csrf_token") or "") or None)
    data = await file.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        return _rules_page(ctx, who, problem="the file is larger than 64 MiB", status_code=413)
    try:
        attrs = await run_in_threadpool(_file_attributes, data)
    except ValueError as exc:
        return _rules_page(ctx, who, problem=f"{file.filename}: {exc}", status_code=400)
    attrs.update(calling_ae=str(form.get("calling_ae") or "")[:16],
                 called_ae=ctx.settings.node.ae_title, peer_address="")
    return _rules_page(ctx, who, tested=f"uploaded file {file.filename}",
                       verdicts=_dry_run(ctx, attrs), attributes=_shown(attrs, who, ctx))


def _file_attributes(data: bytes) -> dict[str, Any]:
    """Routing attributes of one uploaded DICOM file, read as the receiver reads them."""
    from io import BytesIO

    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    from dicom_node.receive.header import routing_attributes

    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError) as exc:
        raise ValueError(f"not a DICOM file ({exc})") from exc
    return dict(routing_attributes(ds))


_PHI_KEYS = ("Patient", "AccessionNumber", "Physician", "OperatorsName", "InstitutionName",
             "StudyID", "OtherPatient", "IssuerOfPatientID")


def _shown(attrs: dict[str, Any], who: Principal, ctx: WebContext) -> dict[str, str]:
    """The attributes a dry-run saw, less patient identifiers for roles that do not see them."""
    phi_ok = who.via == "open" or sees_phi(who, ctx)
    return {
        k: str(v)
        for k, v in sorted(attrs.items())
        if v not in (None, "", []) and (phi_ok or not any(p in k for p in _PHI_KEYS))
    }


# -- destinations, pipelines, configuration, overview -------------------------------------
@console.get("/destinations", response_class=HTMLResponse, include_in_schema=False)
def get_destinations(ctx: Context, who: Who, notice: Notice) -> HTMLResponse:
    """Each destination: type and address, paused or not, queue, last success and error."""
    return render("destinations.html", **_common(ctx, who, notice), **destination_rows(ctx))


def destination_rows(ctx: WebContext, echo: dict[str, str] | None = None) -> dict[str, Any]:
    """What the destinations page shows (also after an echo, with its outcome)."""
    states = q.destination_states(ctx.db, [d.name for d in ctx.settings.destinations])
    paused = PauseStore(ctx.db).names("destination")
    rows = []
    for dest in ctx.settings.destinations:
        where = getattr(dest, "path", None)
        if where is None:
            ae = getattr(dest, "ae_title", "")
            where = f"{ae}@{getattr(dest, 'host', '')}:{getattr(dest, 'port', '')}"
        rows.append({
            "dest": dest,
            "where": str(where),
            "state": states[dest.name],
            "paused": dest.name in paused,
            "echo": (echo or {}).get(dest.name),
            "can_echo": hasattr(dest, "ae_title"),
        })
    unknown = sorted(set(states) - {d.name for d in ctx.settings.destinations})
    return {"rows": rows, "unknown": [states[n] for n in unknown]}


@console.get("/pipelines", response_class=HTMLResponse, include_in_schema=False)
async def get_pipelines(ctx: Context, who: Who) -> HTMLResponse:
    """Each pipeline: modalities, labels, version, the Device UID its results carry,
    the configured device, and whether its model is warm."""
    rows = await run_in_threadpool(pipeline_rows, ctx.settings, ctx)
    from dicom_node.web.live import warm_models

    return render("pipelines.html", **_common(ctx, who), rows=rows,
                  device=ctx.settings.worker.device, warm=warm_models())


def pipeline_rows(settings: Settings, ctx: WebContext) -> list[dict[str, Any]]:
    """One row per available pipeline (built-in and configured)."""
    from ai_models.pipelines import list_pipelines

    activity = q.pipeline_activity(ctx.db)
    used = {p for r in settings.rules for p in r.pipelines}
    results_dir = Path(settings.storage.results_dir)
    rows = []
    for info in list_pipelines(settings.pipeline_specs()):
        act = activity.get(info.name)
        rows.append({
            "info": info,
            "activity": act,
            "device_uid": _device_uid(results_dir / act.result_path)
            if act and act.result_path else None,
            "routed": info.name in used,
        })
    return rows


def _device_uid(path: Path) -> str | None:
    """The Device UID (0018,1002) of the Contributing Equipment a result was written with."""
    from pydicom import dcmread

    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["ContributingEquipmentSequence"])
    except (OSError, ValueError, EOFError) as exc:
        LOGGER.debug("pipelines page: %s: %s", path.name, exc)
        return None
    for item in ds.get("ContributingEquipmentSequence", []):
        uid = item.get("DeviceUID")
        if uid:
            return str(uid)
    return None


_SECRET_WORDS = ("password", "token", "secret", "private")


def masked_settings(settings: Settings) -> str:
    """The effective configuration as TOML, secrets masked, database URLs redacted."""
    data = settings.model_dump(mode="json", exclude={"source_path"})

    def clean(key: str, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(k, v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(key, v) for v in value]
        if isinstance(value, str) and "://" in value and "@" in value:
            return redact_url(value)
        if value not in (None, "") and any(w in key.lower() for w in _SECRET_WORDS):
            return "***"
        return value

    return _toml(clean("", data))


def _toml(data: dict[str, Any]) -> str:
    lines: list[str] = []
    tables: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((f"[{key}]", value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            tables.extend((f"[[{key}]]", v) for v in value)
        elif value is not None:
            lines.append(f"{key} = {_toml_inline(value)}")
    for header, table in tables:
        lines.append("")
        lines.append(header)
        for key, value in table.items():
            if value is not None:
                lines.append(f"{key} = {_toml_inline(value)}")
    return "\n".join(lines).strip() + "\n"


@console.get("/config", response_class=HTMLResponse, include_in_schema=False)
async def get_config(ctx: Context, who: Who) -> HTMLResponse:
    """The configuration in effect (read-only, secrets masked) with its problems."""
    problems = await run_in_threadpool(config_problems, ctx.settings)
    text = masked_settings(ctx.settings)
    return render("config.html", **_common(ctx, who), text=text, problems=problems,
                  source=str(ctx.settings.source_path or "built-in defaults"))


@console.get("/overview", response_class=HTMLResponse, include_in_schema=False)
def get_overview(request: Request, ctx: Context, who: Who) -> HTMLResponse:
    """Associations now, instances/s, queues per pipeline and destination, GPU memory,
    disk against the watermark; reloads itself every few seconds."""
    live = live_overview(ctx.db, ctx.settings,
                         getattr(request.app.state, "live_associations", None))
    states = q.destination_states(ctx.db, [d.name for d in ctx.settings.destinations])
    common = {**_common(ctx, who), "refresh": 5}
    return render("overview.html", **common, live=live, destinations=states,
                  paused=PauseStore(ctx.db).names("destination"))
