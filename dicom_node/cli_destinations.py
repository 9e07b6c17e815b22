"""``dicom-node destinations list|echo``: the configured ``[[destinations]]`` (click commands).

``list`` prints each destination, where it points and, when the database can
be read, its pending and failed deliveries; ``echo`` sends a C-ECHO to every
DICOM destination (or checks those named, of any type) and says for each
that it answered, in how many milliseconds, or why not.  The CLI group
registers the ``destinations`` group lazily (``dicom_node.cli.LAZY_COMMANDS``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from dicom_node.config import DestinationSettings, Settings

__all__ = ["destinations"]

console = Console()
err_console = Console(stderr=True)


@click.group("destinations")
def destinations() -> None:
    """The configured destinations: list them, C-ECHO them."""


def _where(dest: DestinationSettings) -> str:
    """``AE@host:port`` of a peer, the folder of a folder destination."""
    ae_title, host, port = (getattr(dest, key, None) for key in ("ae_title", "host", "port"))
    if host and port:
        return f"{ae_title}@{host}:{port}" if ae_title else f"{host}:{port}"
    path = getattr(dest, "path", None)
    return "" if path is None else str(path)


def _tls(dest: DestinationSettings) -> str:
    tls = getattr(dest, "tls", None)
    return "" if tls is None else "yes" if tls else "no"


@destinations.command("list")
@click.pass_context
def destinations_list(ctx: click.Context) -> None:
    """The destinations: type, where, TLS, outputs, attempts, pending and failed deliveries."""
    settings = ctx.obj.settings()
    if not settings.destinations:
        err_console.print("no [[destinations]] configured", markup=False)
        return
    counts, note = _delivery_counts(settings)
    table = Table(title=f"destinations ({len(settings.destinations)})", caption=note or None)
    for column in ("name", "type", "where", "TLS", "outputs", "max attempts"):
        table.add_column(column, overflow="fold")
    table.add_column("pending", justify="right")
    table.add_column("failed", justify="right")
    for dest in settings.destinations:
        mine = (counts or {}).get(dest.name, {})
        table.add_row(
            Text(dest.name),
            dest.type,
            Text(_where(dest)),
            _tls(dest),
            "all" if dest.outputs is None else ", ".join(dest.outputs),
            str(dest.max_attempts),
            "" if counts is None else str(mine.get("pending", 0)),
            "" if counts is None else str(mine.get("failed", 0)),
        )
    console.print(table)
    configured = {d.name for d in settings.destinations}
    for name, by_status in sorted((counts or {}).items()):
        waiting = {s: n for s, n in by_status.items() if s in ("pending", "failed") and n}
        if name not in configured and waiting:
            line = ", ".join(f"{n} {s}" for s, n in sorted(waiting.items()))
            console.print(f"deliveries to {name}, no longer configured: {line}", markup=False)


def _delivery_counts(settings: Settings) -> tuple[dict[str, dict[str, int]] | None, str]:
    """Deliveries per destination and status, or ``None`` and why not.

    Reads only: a SQLite file that does not exist is not created, and the
    schema is not upgraded.
    """
    from storage.db import Database, DatabaseError
    from storage.destination_stats import delivery_counts

    url = settings.storage.database_url
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if path and path != ":memory:" and not Path(path).is_file():
            return None, f"no database yet ({path}): no delivery counts"
    database = Database(url)
    try:
        return delivery_counts(database), ""
    except DatabaseError as exc:
        return None, f"database not readable ({type(exc).__name__}): no delivery counts"
    finally:
        database.dispose()


@destinations.command("echo")
@click.argument("names", nargs=-1)
@click.option("--timeout", default=10.0, show_default=True, help="Seconds per destination.")
@click.pass_context
def destinations_echo(ctx: click.Context, names: tuple[str, ...], timeout: float) -> None:
    """C-ECHO every DICOM destination, or check those named; exit 1 if one fails.

    A named destination of another type is checked as ``dicom-node echo``
    checks it (a ``folder``: that a file can be written there).
    """
    settings = ctx.obj.settings()
    configured = {d.name: d for d in settings.destinations}
    unknown = [name for name in names if name not in configured]
    if unknown:
        err_console.print(
            f"error: unknown destination(s) {', '.join(unknown)} "
            f"(configured: {', '.join(configured) or 'none'})",
            markup=False,
        )
        sys.exit(2)
    if names:
        chosen = [configured[name] for name in dict.fromkeys(names)]
    else:
        chosen = [d for d in settings.destinations if d.type == "dicom"]
    if not chosen:
        err_console.print("no DICOM destinations configured", markup=False)
        return
    table = Table(title=f"echo from {settings.node.ae_title}")
    for column in ("name", "where", "result", "ms"):
        table.add_column(column, justify="right" if column == "ms" else "left")
    table.add_column("reason", overflow="fold")
    failed = 0
    for dest in chosen:
        seconds, reason = _check(dest, settings.node.ae_title, timeout)
        if seconds is None:
            failed += 1
            result, ms = "[red]failed[/]", ""
        else:
            result, ms = "[green]ok[/]", f"{seconds * 1000:.1f}"
        table.add_row(Text(dest.name), Text(_where(dest)), result, ms, Text(reason))
    console.print(table)
    if failed:
        sys.exit(1)


def _check(
    dest: DestinationSettings, calling_ae: str, timeout_s: float
) -> tuple[float | None, str]:
    """The round trip in seconds, or ``None`` and why the destination failed
    (for a DICOM peer, what :func:`dicom_node.deliver.scu.echo` says)."""
    from dicom_node.deliver.destinations.dicom import DicomDestinationSettings
    from dicom_node.errors import DeliveryError

    try:
        if isinstance(dest, DicomDestinationSettings):
            from dicom_node.deliver.scu import echo, peer_of

            return echo(peer_of(dest), calling_ae, timeout_s), ""
        from dicom_node.deliver.destinations.registry import open_destination

        return open_destination(dest, calling_ae=calling_ae).echo(), ""
    except (DeliveryError, OSError, ValueError) as exc:
        return None, str(exc)
