"""``dicom-node retention run [--dry-run]``: one retention pass, now (click command).

It works on the database and folders directly, beside a running node; what
it deletes is audited as ``retention-purge`` with the OS user as the actor.
The CLI group registers it with ``main.add_command``.
"""

from __future__ import annotations

import getpass
import sys
from datetime import datetime
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from dicom_node.retention import RetentionReport

__all__ = ["retention"]

console = Console()
err_console = Console(stderr=True)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


@click.group("retention")
def retention() -> None:
    """Delete received instances and results the node has finished with ([retention])."""


@retention.command("run")
@click.option("--dry-run", is_flag=True, help="Only say what would be deleted.")
@click.pass_context
def retention_run(ctx: click.Context, dry_run: bool) -> None:
    """One retention pass now: by age (keep_days), then by disk watermark."""
    from dicom_node import audit
    from dicom_node.retention import Retention
    from storage.db import Database

    settings = ctx.obj.settings()
    if not settings.retention.enabled:
        err_console.print(
            "retention is off: set [retention] keep_days and/or disk_high_watermark_percent",
            markup=False,
        )
        sys.exit(2)
    db = Database(settings.storage.database_url)
    db.upgrade()
    installed = None
    if not dry_run:
        installed = audit.auditor_from_settings(settings.audit, db)
        audit.install(installed)
    try:
        report = Retention(settings, db, actor=getpass.getuser(), actor_kind="user").run(
            dry_run=dry_run
        )
    finally:
        if installed is not None:
            installed.close()
            audit.install(None)
        db.dispose()
    _print(report)


def _print(report: RetentionReport) -> None:
    verb = "would delete" if report.dry_run else "deleted"
    table = Table(title=f"retention: {verb}")
    for col in ("reason", "series", "instances", "results", "bytes", "oldest received (UTC)"):
        table.add_column(col)
    for reason in ("age", "watermark"):
        count = report.by_reason.get(reason)
        if count is None:
            continue
        table.add_row(
            reason,
            str(count.series),
            str(count.instances),
            str(count.results),
            _size(count.bytes),
            _when(count.oldest),
        )
    if not report.by_reason:
        console.print(f"retention: nothing to delete{' (dry run)' if report.dry_run else ''}")
    else:
        console.print(table)
    if report.usage_before is not None:
        line = f"disk: {report.usage_before:.1f}% used"
        if not report.dry_run and report.usage_after is not None:
            line += f", {report.usage_after:.1f}% after"
        console.print(line)
    if not report.dry_run:
        console.print(f"files deleted: {report.files_deleted}")
        if report.swept:
            console.print(f"files left by an interrupted purge, deleted: {report.swept}")
