"""``dicom-node audit``: list and filter the audit trail (:mod:`dicom_node.audit`).

Reads the database the node writes its trail to, so it works beside a running
node.  Reading the trail is itself audited (``audit-read``, PS3.15 A.5.3.3
"Audit Log Used"), with the operating-system user who ran the command.
"""

from __future__ import annotations

import getpass
import json
import re
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from dicom_node.cli_lazy import LazyChoice

if TYPE_CHECKING:
    from storage.audit import AuditEntry

__all__ = ["audit_command", "parse_when"]

console = Console()
err_console = Console(stderr=True)

_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_OUTCOMES = {0: "success", 4: "minor failure", 8: "serious failure", 12: "major failure"}


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """A point in time from ``30m``/``24h``/``7d`` (that long ago) or an ISO 8601 date/time.

    Naive times are taken as UTC.

    Raises
    ------
    ValueError
        Neither form.
    """
    now = now or datetime.now(timezone.utc)
    match = _AGO.match(text.strip().lower())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration ago (30m, 24h, 7d) nor an ISO 8601 date/time"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _when_option(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_when(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _summary(entry: AuditEntry) -> str:
    parts = []
    for key, value in entry.detail.items():
        if isinstance(value, list):
            text = f"{len(value)} item(s)" if len(value) > 3 else ", ".join(map(str, value))
        else:
            text = str(value)
        parts.append(f"{key}={text}")
    return "; ".join(parts)


def _events() -> list[str]:
    from dicom_node import audit

    return [e.value for e in audit.AuditEvent]


@click.command("audit")
@click.option("--since", callback=_when_option, default="24h", show_default=True,
              help="From when: a duration ago (30m, 24h, 7d) or an ISO 8601 date/time.")
@click.option("--until", callback=_when_option, default=None,
              help="Until when (same forms; default now).")
@click.option("--event", "events", multiple=True,
              type=LazyChoice(_events),
              help="Only these events (repeatable).")
@click.option("--actor", default=None, help="Only this actor (user, calling AE, destination).")
@click.option("--study", default=None, help="Only this Study Instance UID.")
@click.option("--failures", is_flag=True, help="Only events that did not succeed.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@click.pass_context
def audit_command(
    ctx: click.Context,
    since: datetime | None,
    until: datetime | None,
    events: tuple[str, ...],
    actor: str | None,
    study: str | None,
    failures: bool,
    limit: int,
    as_json: bool,
) -> None:
    """List the audit trail, newest first: associations, stores, jobs, sends, logins, actions."""
    from dicom_node import audit
    from storage.audit import AuditFilter, AuditStore
    from storage.db import Database

    settings = ctx.obj.settings()
    db = Database(settings.storage.database_url)
    db.upgrade()
    where = AuditFilter(
        since=since,
        until=until,
        events=events,
        actor=actor,
        study_instance_uid=study,
        failures_only=failures,
    )
    store = AuditStore(db)
    entries = store.query(where, limit=limit)
    total = store.count(where)
    auditor = audit.auditor_from_settings(settings.audit, db)
    auditor.record(
        audit.AuditEvent.AUDIT_READ,
        actor=getpass.getuser(),
        actor_kind="user",
        via="cli",
        filter={
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "events": list(events) or None,
            "actor": actor,
            "study": study,
            "failures": failures or None,
        },
        returned=len(entries),
    )
    auditor.close()
    db.dispose()
    if as_json:
        for entry in entries:
            click.echo(json.dumps(entry.as_dict(), default=str, sort_keys=True))
        return
    table = Table(title=f"audit trail: {len(entries)} of {total} event(s), newest first")
    for column in ("time (UTC)", "event", "outcome", "actor", "address", "study", "detail"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        table.add_row(
            entry.at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            entry.event,
            _OUTCOMES.get(entry.outcome, str(entry.outcome)),
            f"{entry.actor or ''} ({entry.actor_kind})",
            entry.address or "",
            entry.study_instance_uid or "",
            _summary(entry),
        )
    console.print(table)
