"""The operator's actions in the console: each asked to be confirmed, then done and audited.

``GET /actions/{action}?target=...`` shows what the action will do and a
form (with the session's CSRF token) that posts to ``POST /actions/{action}``;
the page a button is on links there, so nothing changes on a click alone and
the pages need no script.  The POST runs the same code as the CLI and the
REST API (:mod:`storage.jobs`, :mod:`storage.job_actions`,
:mod:`storage.pauses`, :class:`~dicom_node.collect.Collector`), records an
``admin-action`` audit event (refusals too), and redirects (303) to the page
it came from with a ``done`` code that the page turns into a sentence.

Actions: ``retry``, ``cancel`` and ``rerun`` a job; ``complete`` a series or
study now; ``pause`` and ``resume`` a rule or destination; ``echo`` a
destination (no confirmation: it changes nothing; the answer is shown at once).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from dicom_node.web.access import Principal
from dicom_node.web.console import _common, destination_rows
from dicom_node.web.deps import Context, WebContext
from dicom_node.web.guard import Operator, form_fields, operator_change, record_action
from dicom_node.web.pages import render
from storage.db import DuplicateRow
from storage.job_actions import cancel_job, rerun_job
from storage.jobs import JobPurged, JobQueue
from storage.pauses import PauseStore
from storage.queries import job_summary

__all__ = ["ACTIONS", "actions", "echo_destination"]

LOGGER = logging.getLogger(__name__)

Action = Literal["retry", "cancel", "rerun", "complete", "pause", "resume"]


@dataclass(frozen=True)
class ActionSpec:
    """What the confirmation page says of one action."""

    title: str
    question: str
    """With ``{target}`` and, for pause/resume, ``{kind}``."""
    button: str


ACTIONS: dict[str, ActionSpec] = {
    "retry": ActionSpec("Retry a job", "Run job {target} again, or re-send its failed "
                        "deliveries?", "retry"),
    "cancel": ActionSpec("Cancel a job", "Cancel job {target}? A queued or running job stops "
                         "and writes nothing; deliveries not yet sent are cancelled. Results "
                         "already sent stay in the archive.", "cancel the job"),
    "rerun": ActionSpec("Re-run a series", "Run the series of job {target} again through "
                        "the pipeline chosen below? The new job writes new result objects "
                        "and sends them to the job's destinations.", "re-run"),
    "complete": ActionSpec("Force completion", "Complete {target} now, without waiting for its "
                           "quiet period? Its matching rules queue their jobs at once.",
                           "complete now"),
    "pause": ActionSpec("Pause", "Pause {kind} {target}? A paused rule queues no job (its "
                        "series wait and run when it is resumed); a paused destination is sent "
                        "nothing (its deliveries wait). Nothing is dropped.", "pause"),
    "resume": ActionSpec("Resume", "Resume {kind} {target}? What waited for it goes ahead "
                         "at once.", "resume"),
}

actions = APIRouter(tags=["console"])


def _back(path: str, done: str, target: str, n: int | None = None) -> RedirectResponse:
    query: dict[str, Any] = {"done": done, "target": target}
    if n is not None:
        query["n"] = n
    return RedirectResponse(f"{path}?{urlencode(query)}", status_code=303)


def _job_target(target: str) -> int:
    try:
        job_id = int(target)
    except ValueError:
        raise HTTPException(status_code=422, detail=f"target: a job id, not {target!r}") from None
    if job_id < 1:
        raise HTTPException(status_code=422, detail="target: a job id")
    return job_id


def _pipelines(ctx: WebContext) -> list[str]:
    from ai_models.pipelines import list_pipelines

    return sorted(i.name for i in list_pipelines(ctx.settings.pipeline_specs()))


def _check_named(ctx: WebContext, kind: str, name: str) -> None:
    if kind == "rule":
        known = {r.name for r in ctx.settings.rules}
    elif kind == "destination":
        known = {d.name for d in ctx.settings.destinations}
    else:
        raise HTTPException(status_code=422, detail="kind: rule or destination")
    if name not in known:
        raise HTTPException(status_code=404, detail=f"no {kind} {name!r} is configured")


@actions.get("/actions/{action}", response_class=HTMLResponse, include_in_schema=False)
def confirm(
    ctx: Context,
    who: Operator,
    action: Action,
    target: Annotated[str, Query(max_length=128)],
    kind: str = "",
    pipeline: str = "",
) -> HTMLResponse:
    """The confirmation page of *action* on *target* (operators only)."""
    spec = ACTIONS[action]
    choices: list[str] = []
    current = ""
    if action in ("retry", "cancel", "rerun"):
        job = job_summary(ctx.db, _job_target(target))
        if job is None:
            raise HTTPException(status_code=404, detail=f"no job {target}")
        current = job.pipeline
        if action == "rerun":
            choices = _pipelines(ctx)
    back = f"/jobs/{_job_target(target)}" if action in ("retry", "cancel", "rerun") else "/studies"
    if action in ("pause", "resume"):
        _check_named(ctx, kind, target)
        back = "/rules" if kind == "rule" else "/destinations"
    return render(
        "confirm.html",
        **_common(ctx, who),
        action=action,
        spec=spec,
        question=spec.question.format(target=target, kind=kind),
        target=target,
        kind=kind,
        choices=choices,
        chosen=pipeline or current,
        back=back,
    )


@actions.post("/actions/{action}", include_in_schema=False)
async def perform(
    request: Request,
    ctx: Context,
    who: Annotated[Principal, Depends(operator_change)],
    action: Action,
) -> RedirectResponse:
    """Do *action* (the confirmed form's fields: ``target``, ``kind``, ``pipeline``)."""
    fields = await form_fields(request)
    target = fields.get("target", "")[:128]
    if not target:
        raise HTTPException(status_code=422, detail="target: required")
    return await run_in_threadpool(_perform, request, ctx, who, action, target, fields)


def _perform(
    request: Request,
    ctx: WebContext,
    who: Principal,
    action: str,
    target: str,
    fields: dict[str, str],
) -> RedirectResponse:
    if action in ("retry", "cancel", "rerun"):
        return _job_action(request, ctx, who, action, _job_target(target), fields)
    if action == "complete":
        return _complete(request, ctx, who, target)
    kind = fields.get("kind", "")
    _check_named(ctx, kind, target)
    store = PauseStore(ctx.db)
    changed = (
        store.pause(kind, target, by=who.name)  # type: ignore[arg-type]
        if action == "pause"
        else store.resume(kind, target)  # type: ignore[arg-type]
    )
    record_action(request, ctx, who, action, ok=changed, kind=kind, name=target)
    LOGGER.info("%s %s %s from the web by %s", action, kind, target, who.name)
    page = "/rules" if kind == "rule" else "/destinations"
    return _back(page, f"{action}:{'done' if changed else 'already'}", f"{kind} {target}")


def _job_action(
    request: Request,
    ctx: WebContext,
    who: Principal,
    action: str,
    job_id: int,
    fields: dict[str, str],
) -> RedirectResponse:
    summary = job_summary(ctx.db, job_id)
    if summary is None:
        record_action(request, ctx, who, action, ok=False, job_id=job_id, refused="unknown")
        raise HTTPException(status_code=404, detail=f"no job {job_id}")
    study = summary.study_instance_uid
    page = f"/jobs/{job_id}"
    try:
        if action == "retry":
            what, n = JobQueue(ctx.db).retry(job_id)
            outcome, count = what, n
        elif action == "cancel":
            done = cancel_job(ctx.db, job_id)
            outcome = "job" if done.job_cancelled else "deliveries"
            count = done.deliveries_cancelled
        else:
            pipeline = fields.get("pipeline") or summary.pipeline
            if pipeline not in _pipelines(ctx):
                raise HTTPException(status_code=422, detail=f"no pipeline {pipeline!r}")
            count = rerun_job(ctx.db, job_id, pipeline)
            outcome = "queued"
    except JobPurged:
        record_action(request, ctx, who, action, ok=False, study_instance_uid=study,
                      job_id=job_id, refused="purged")
        return _back(page, f"{action}:purged", str(job_id))
    except ValueError as exc:
        record_action(request, ctx, who, action, ok=False, study_instance_uid=study,
                      job_id=job_id, refused=str(exc))
        return _back(page, f"{action}:{'busy' if action == 'rerun' else 'nothing'}", str(job_id))
    record_action(request, ctx, who, action, study_instance_uid=study, job_id=job_id,
                  result=outcome, count=count)
    LOGGER.info("job %d: %s (%s) from the web by %s", job_id, action, outcome, who.name)
    return _back(page, f"{action}:{outcome}", str(job_id), count)


def _complete(request: Request, ctx: WebContext, who: Principal, uid: str) -> RedirectResponse:
    try:
        report = ctx.collector.complete(uid)
    except LookupError as exc:
        record_action(request, ctx, who, "complete", ok=False, uid=uid, refused="unknown")
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    except DuplicateRow:
        record_action(request, ctx, who, "complete", ok=False, uid=uid, refused="concurrent")
        return _back(_study_page(ctx, uid), "complete:concurrent", uid)
    record_action(request, ctx, who, "complete", uid=uid, job_ids=report.job_ids,
                  completed=len(report.completed))
    LOGGER.info("forced completion from the web: %d job(s) queued", len(report.job_ids))
    if report.job_ids or report.completed:
        done = "complete:done"
    elif any("paused" in line for line in report.unchanged):
        done = "complete:paused"
    else:
        done = "complete:unchanged"
    return _back(_study_page(ctx, uid), done, uid, len(report.job_ids))


def _study_page(ctx: WebContext, uid: str) -> str:
    from storage.console import study_of

    study = study_of(ctx.db, uid) or uid
    return "/studies/" + quote(study, safe="")


@actions.post("/destinations/echo", response_class=HTMLResponse, include_in_schema=False)
async def echo(
    request: Request,
    ctx: Context,
    who: Annotated[Principal, Depends(operator_change)],
) -> HTMLResponse:
    """C-ECHO (or the check of another destination type) of one destination, shown at once."""
    fields = await form_fields(request)
    name = fields.get("target", "")
    _check_named(ctx, "destination", name)
    outcome = await run_in_threadpool(echo_destination, ctx, name)
    record_action(request, ctx, who, "echo", ok=outcome.startswith("success"), destination=name,
                  result=outcome)
    return render("destinations.html", **_common(ctx, who),
                  **destination_rows(ctx, echo={name: outcome}))


def echo_destination(ctx: WebContext, name: str) -> str:
    """``success in N ms`` or ``failed: <why>`` for one configured destination."""
    from dicom_node.deliver.destinations.registry import open_destination
    from dicom_node.errors import DeliveryError

    dest = next(d for d in ctx.settings.destinations if d.name == name)
    try:
        seconds = open_destination(dest, calling_ae=ctx.settings.node.ae_title).echo()
    except (DeliveryError, OSError, ValueError, RuntimeError) as exc:
        return f"failed: {exc}"
    return f"success in {seconds * 1000:.1f} ms"
