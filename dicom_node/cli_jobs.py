"""``dicom-node complete`` and ``dicom-node jobs list|show|retry`` (click commands).

They work on the database directly, so they act on a running node too: a
forced completion or a retried job is picked up by the node's collector,
workers and sender at their next poll.  The CLI group registers them with
``main.add_command``.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from dicom_node.cli_lazy import LazyChoice

if TYPE_CHECKING:
    from dicom_node.config import Settings
    from storage.db import Database
    from storage.queries import DeliveryRecord, ResultRecord

__all__ = ["complete", "jobs"]

console = Console()
err_console = Console(stderr=True)


def _database(ctx: click.Context) -> tuple[Any, Database]:
    from storage.db import Database

    settings = ctx.obj.settings()
    database = Database(settings.storage.database_url)
    database.upgrade()
    return settings, database


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _admin_action(settings: Settings, database: Database, **detail: Any) -> None:
    """Audit an administrative action of the CLI (ADMIN_ACTION, the OS user as actor).

    A one-shot command installs its own auditor and closes it (flushing the event).
    """
    from dicom_node import audit

    auditor = audit.auditor_from_settings(settings.audit, database)
    try:
        auditor.record(
            audit.AuditEvent.ADMIN_ACTION,
            outcome=audit.Outcome.SUCCESS,
            actor=getpass.getuser(),
            actor_kind="user",
            via="cli",
            **detail,
        )
    finally:
        auditor.close()


def _short(uid: str | None) -> str:
    if not uid:
        return ""
    return uid if len(uid) <= 24 else f"...{uid[-21:]}"


@click.command("complete")
@click.argument("uid")
@click.pass_context
def complete(ctx: click.Context, uid: str) -> None:
    """Force completion of a series or study now (its rules run without the quiet period).

    UID is a SeriesInstanceUID (that series' series-level rules) or a
    StudyInstanceUID (every series of the study, and study-level rules).
    """
    from dicom_node.collect import Collector

    settings, database = _database(ctx)
    try:
        report = Collector(database, settings).complete(uid)
        _admin_action(settings, database, action="complete", uid=uid, job_ids=report.job_ids)
    except LookupError as exc:
        err_console.print(f"error: {exc}", markup=False)
        sys.exit(1)
    finally:
        database.dispose()
    for line in report.completed:
        console.print(f"completed {line}", markup=False)
    for line in report.unchanged:
        console.print(f"already complete with the same instances: {line}", markup=False)
    if report.job_ids:
        console.print(f"queued job(s): {', '.join(map(str, report.job_ids))}")
    elif not report.unchanged:
        console.print("no rule matches; nothing queued")


@click.group("jobs")
def jobs() -> None:
    """Jobs and their deliveries: list, show, retry."""


def _job_states() -> list[str]:
    from storage.jobs import JobStatus

    return [s.value for s in JobStatus]


@jobs.command("list")
@click.option("--status", type=LazyChoice(_job_states), help="Only jobs in this state.")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@click.pass_context
def jobs_list(ctx: click.Context, status: str | None, limit: int, as_json: bool) -> None:
    """Newest jobs first, with their deliveries (sent / pending / failed)."""
    from storage.queries import job_summaries
    from storage.retention import purged_jobs

    _settings, database = _database(ctx)
    try:
        rows = job_summaries(database, status=status, limit=limit)
        purged = purged_jobs(database, (row.id for row in rows))
    finally:
        database.dispose()
    if as_json:
        for row in rows:
            line = {**dataclasses.asdict(row), "purged_at": purged.get(row.id)}
            click.echo(json.dumps(line, default=str))
        return
    table = Table(title=f"jobs ({len(rows)})")
    for col in (
        "id",
        "status",
        "rule",
        "pipeline",
        "series",
        "rev",
        "try",
        "created",
        "took",
        "results",
        "deliveries",
        "error",
    ):
        table.add_column(col, overflow="fold")
    for row in rows:
        took = ""
        if row.finished_at and row.started_at:
            took = f"{(row.finished_at - row.started_at).total_seconds():.1f} s"
        deliveries = ", ".join(f"{n} {s}" for s, n in sorted(row.deliveries.items()))
        style = {"failed": "red", "succeeded": "green", "running": "cyan"}.get(row.status)
        shown = f"[{style}]{row.status}[/]" if style else row.status
        table.add_row(
            str(row.id),
            shown + (" [dim](purged)[/]" if row.id in purged else ""),
            row.rule,
            row.pipeline,
            "\n".join(_short(u) for u in row.series_instance_uids),
            str(row.revision),
            f"{row.attempts}/{row.max_attempts}",
            _when(row.created_at),
            took,
            str(row.results),
            deliveries,
            (row.error or "")[:200],
        )
    console.print(table)


@jobs.command("show")
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@click.pass_context
def jobs_show(ctx: click.Context, job_id: int, as_json: bool) -> None:
    """One job: its state, timings, result files and where each was delivered."""
    from storage.jobs import DeliveryStatus
    from storage.queries import job_results, job_summary
    from storage.retention import job_purged_at

    settings, database = _database(ctx)
    try:
        job = job_summary(database, job_id)
        if job is None:
            err_console.print(f"error: no job {job_id}", markup=False)
            sys.exit(1)
        records = job_results(database, job_id)
        purged_at = job_purged_at(database, job_id)
    finally:
        database.dispose()
    if as_json:
        objects = [_shown(settings, record) for record in records]
        shown = {**dataclasses.asdict(job), "purged_at": purged_at, "objects": objects}
        click.echo(json.dumps(shown, default=str))
        return
    out = Console(soft_wrap=True)  # paths and UIDs whole, never folded
    out.print(
        f"job {job.id}: {job.status} ({job.pipeline}, rule {job.rule}, "
        f"revision {job.revision}, attempt {job.attempts}/{job.max_attempts})",
        markup=False,
    )
    if purged_at is not None:
        out.print(
            f"purged: retention deleted its series and result files on {_when(purged_at)} UTC",
            markup=False,
        )
    out.print(f"study {job.study_instance_uid}", markup=False)
    for uid in job.series_instance_uids:
        out.print(f"series {uid}", markup=False)
    if job.timings:
        out.print(
            "timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in job.timings.items()),
            markup=False,
        )
    if job.error:
        # The column holds why a job failed, why it was skipped or superseded, or
        # a note on a job that succeeded (e.g. no findings and no negative report).
        label = {"succeeded": "note", "skipped": "skipped", "superseded": "superseded"}.get(
            job.status, "error"
        )
        out.print(f"{label}: {job.error}", markup=False)
    if not records:
        out.print("no result files", markup=False)
    for result in records:
        path = settings.storage.results_dir / result.path
        there = "" if path.is_file() else " (purged)" if purged_at else " (no longer there)"
        out.print(f"{result.kind} {result.sop_instance_uid}: {path}{there}", markup=False)
        if not result.deliveries:
            out.print("  not delivered anywhere", markup=False)
        for d in result.deliveries:
            where = _delivered_to(settings, result, d)
            line = f"  -> {d.destination}"
            if where["destination_type"]:
                line += f" ({where['destination_type']})"
            line += f": {d.status}, {d.attempts} attempt(s)"
            if d.last_status is not None:
                line += f", DIMSE status {d.last_status_hex}"
            if where["written_to"]:
                line += f", written to {where['written_to']}"
            if d.status == DeliveryStatus.PENDING.value and d.next_attempt_at:
                line += f", next attempt {_when(d.next_attempt_at)} UTC"
            if d.error:
                line += f", last error: {d.error}"
            out.print(line, markup=False)


def _shown(settings: Settings, result: ResultRecord) -> dict[str, Any]:
    """*result* as ``jobs show --json`` prints it: its fields with ``path`` made
    absolute (under the results folder), and each delivery with :func:`_delivered_to`."""
    shown = dataclasses.asdict(result)
    shown["path"] = str(settings.storage.results_dir / result.path)
    shown["deliveries"] = [
        {**dataclasses.asdict(d), **_delivered_to(settings, result, d)} for d in result.deliveries
    ]
    return shown


def _delivered_to(
    settings: Settings, result: ResultRecord, delivery: DeliveryRecord
) -> dict[str, Any]:
    """The destination's type, and for a sent folder delivery the file it wrote.

    The folder layout is the sender's (:func:`dicom_node.deliver.destinations.folder.folder_file`).
    """
    from dicom_node.deliver.destinations.folder import FolderDestinationSettings, folder_file
    from storage.jobs import DeliveryStatus

    dest = next((d for d in settings.destinations if d.name == delivery.destination), None)
    written_to = None
    if isinstance(dest, FolderDestinationSettings) and delivery.status == DeliveryStatus.SENT.value:
        written_to = str(
            folder_file(
                Path(dest.path),
                result.study_instance_uid,
                result.series_instance_uid,
                result.sop_instance_uid,
            )
        )
    return {"destination_type": dest.type if dest is not None else None, "written_to": written_to}


@jobs.command("retry")
@click.argument("job_ids", type=int, nargs=-1, required=True)
@click.pass_context
def jobs_retry(ctx: click.Context, job_ids: tuple[int, ...]) -> None:
    """Run failed or skipped jobs again, or re-send a finished job's failed deliveries."""
    from storage.jobs import DeliveryStatus, JobPurged, JobQueue

    settings, database = _database(ctx)
    failed = False
    retried: list[int] = []
    refused: dict[str, str] = {}
    try:
        queue = JobQueue(database)
        for job_id in job_ids:
            try:
                what, n = queue.retry(job_id)
            except JobPurged as exc:
                err_console.print(f"job {job_id}: purged: {exc}", markup=False)
                refused[str(job_id)] = "purged"
                failed = True
                continue
            except (LookupError, ValueError) as exc:
                err_console.print(f"job {job_id}: {exc}", markup=False)
                refused[str(job_id)] = str(exc)
                failed = True
                continue
            retried.append(job_id)
            if what == "job":
                console.print(f"job {job_id}: queued again")
            else:
                console.print(
                    f"job {job_id}: {n} failed deliverie(s) set to {DeliveryStatus.PENDING.value}"
                )
        _admin_action(
            settings,
            database,
            action="jobs-retry",
            job_ids=list(job_ids),
            retried=retried,
            refused=refused or None,
        )
    finally:
        database.dispose()
    if failed:
        sys.exit(1)
