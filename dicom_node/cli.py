"""The ``dicom-node`` command: one click group, thin sub-commands.

``serve`` runs the node; the others cover the admin's day: ``check-config``,
``echo``, ``send``, ``studies``, ``rules list|test``, ``destinations list|echo``,
``complete``, ``jobs``, ``analyze``, ``pipelines``, ``db upgrade``.

The command starts in a fraction of a second (container health checks run
``dicom-node echo`` every 30 s): this module imports click and rich only,
and the sub-commands of other modules are listed in :data:`LAZY_COMMANDS`
(name, ``"module:attribute"``, short help), imported when they run.  A new
sub-command goes into a ``cli_*`` module and one line of that table; a
command's heavy imports (pydicom, pynetdicom, SQLAlchemy, ``storage``,
``ai_models``) go inside the function that needs them.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from dicom_node import __version__
from dicom_node.cli_lazy import LazyCommand, LazyGroup
from dicom_node.errors import ConfigError, DeliveryError

if TYPE_CHECKING:
    from dicom_node.config import Settings

LOGGER = logging.getLogger(__name__)

console = Console(stderr=False)
err_console = Console(stderr=True)

#: The sub-commands of the ``cli_*`` modules, imported when they run; the help
#: text is what ``dicom-node --help`` lists (the first sentence of the docstring).
LAZY_COMMANDS: dict[str, LazyCommand] = {
    "analyze": LazyCommand(
        "dicom_node.cli_analyze:analyze",
        "Run a pipeline on the series under PATH... and write SEG/SR/SC files.",
    ),
    "audit": LazyCommand(
        "dicom_node.cli_audit:audit_command",
        "List the audit trail, newest first: associations, stores, jobs, sends, logins, "
        "actions.",
    ),
    "complete": LazyCommand(
        "dicom_node.cli_jobs:complete",
        "Force completion of a series or study now (its rules run without the quiet period).",
    ),
    "destinations": LazyCommand(
        "dicom_node.cli_destinations:destinations",
        "The configured destinations: list them, C-ECHO them.",
    ),
    "jobs": LazyCommand(
        "dicom_node.cli_jobs:jobs", "Jobs and their deliveries: list, show, retry."
    ),
    "pipelines": LazyCommand(
        "dicom_node.cli_analyze:pipelines",
        "List the available pipelines: name, modalities, description.",
    ),
    "retention": LazyCommand(
        "dicom_node.cli_retention:retention",
        "Delete received instances and results the node has finished with ([retention]).",
    ),
    "rules": LazyCommand("dicom_node.cli_rules:rules", "Routing rules: list, test."),
    "users": LazyCommand(
        "dicom_node.cli_users:users",
        "Local users of the web console and API (viewer or operator).",
    ),
    "worker": LazyCommand(
        "dicom_node.cli_worker:worker",
        'Run jobs published by ``serve`` with ``[worker] executor = "celery"``.',
    ),
}


class _State:
    """Shared by all sub-commands: where the config is and how to log.

    ``pipeline_specs`` gives the configured site models to ``analyze`` and
    ``pipelines``.
    """

    def __init__(self, config: Path | None, log_json: bool, verbose: bool) -> None:
        self.config_path = config
        self.log_json = log_json
        self.verbose = verbose
        self._settings: Settings | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            from dicom_node.config import load_settings
            from dicom_node.logs import configure_logging

            try:
                self._settings = load_settings(self.config_path)
            except ConfigError as exc:
                err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
                sys.exit(2)
            configure_logging(self.log_level, self.json_logs, phi=self._settings.log.phi)
        return self._settings

    @property
    def log_level(self) -> str:
        return "DEBUG" if self.verbose else self.settings().log.level

    @property
    def json_logs(self) -> bool:
        return self.log_json or self.settings().log.json_format

    @property
    def pipeline_specs(self) -> list[object]:
        return self.settings().pipeline_specs()


pass_state = click.make_pass_decorator(_State)


@click.group(
    cls=LazyGroup,
    lazy_commands=LAZY_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--config",
    "-c",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="DICOM_NODE_CONFIG",
    help="config.toml to use (default: ./config.toml when present, else built-in defaults).",
)
@click.option("--log-json", is_flag=True, help="Log JSON lines instead of text.")
@click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
@click.version_option(__version__, prog_name="dicom-node")
@click.pass_context
def main(ctx: click.Context, config: Path | None, log_json: bool, verbose: bool) -> None:
    """dicom-node: receive DICOM, run AI pipelines, send results back."""
    ctx.obj = _State(config, log_json, verbose)


@main.command()
@click.option(
    "--role",
    "role_text",
    default="all",
    show_default=True,
    metavar="ROLES",
    help="Comma-separated roles of this process: receiver, collector, worker, sender, "
    "web, or all. Roles in other processes or hosts share the database (and the spool).",
)
@pass_state
def serve(state: _State, role_text: str) -> None:
    """Run the node: Storage SCP, collector, workers, sender, dashboard."""
    from dicom_node.node import Node, parse_roles
    from dicom_node.web import WebServerError

    settings = state.settings()
    try:
        roles = parse_roles(role_text, settings.worker.executor)
    except ValueError as exc:
        err_console.print(f"[bold red]error:[/] --role: {exc}", markup=True, highlight=False)
        sys.exit(2)
    _log_configuration(settings)
    node = Node(settings, log_level=state.log_level, json_logs=state.json_logs, roles=roles)
    try:
        node.run_forever()
    except WebServerError as exc:  # the web server starts first: nothing else runs yet
        LOGGER.error("cannot start: %s", exc)
        sys.exit(2)


def _log_configuration(settings: Settings) -> None:
    """Say which configuration ``serve`` runs on; warn when it is not what one expects.

    Started outside the project folder without ``--config``, the node finds no
    ``config.toml`` and runs on the built-in defaults, which have no rules:
    it receives and stores, and analyses nothing.  Both are logged at WARNING
    (on stderr, with the other log lines).
    """
    from dicom_node.config import DEFAULT_CONFIG_PATH

    if settings.source_path is not None:
        LOGGER.info("configuration: %s", settings.source_path)
    else:
        LOGGER.warning(
            "no configuration file: no --config, no DICOM_NODE_CONFIG and no %s in %s; "
            "running on the built-in defaults (and DICOM_NODE_* variables)",
            DEFAULT_CONFIG_PATH,
            Path.cwd(),
        )
    if not settings.rules:
        fix = (
            f"add [[rules]] to {settings.source_path}"
            if settings.source_path is not None
            else "give a config.toml with [[rules]] with --config"
        )
        LOGGER.warning(
            "no routing rules: nothing will be analysed (received series are stored; %s)", fix
        )


@main.command("check-config")
@pass_state
def check_config(state: _State) -> None:
    """Validate config.toml and print a summary (exit 2 on errors)."""
    settings = state.settings()
    source = settings.source_path or "built-in defaults"
    from dicom_node.config_check import config_problems, redact_url

    problems = config_problems(settings)
    if problems:
        err_console.print(f"invalid configuration in {source}:", markup=False)
        for line in problems:
            err_console.print(f"  {line}", markup=False)
        sys.exit(2)
    console.print(f"[green]configuration OK[/] ({source})")
    n = settings.node
    console.print(f"  node      {n.ae_title} on {n.host}:{n.port}")
    console.print(
        f"  storage   {settings.storage.spool_dir}  {redact_url(settings.storage.database_url)}"
    )
    peers = str(len(settings.peers)) if settings.peers else "any (no [[peers]] configured)"
    console.print(f"  peers     {peers}", markup=False)
    console.print(f"  destinations {', '.join(d.name for d in settings.destinations) or 'none'}")
    console.print(f"  rules     {', '.join(r.name for r in settings.rules) or 'none'}")
    console.print(f"  models    {', '.join(m.name for m in settings.models) or 'none'}")


@main.command()
@click.argument("destination")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds.")
@pass_state
def echo(state: _State, destination: str, timeout: float) -> None:
    """Check a destination: a configured name (of any type), or HOST:PORT:AET (C-ECHO).

    A ``dicom`` destination is sent a C-ECHO; another type checks what it
    needs (a ``folder`` destination: that a file can be written there).
    """
    from dicom_node.deliver.scu import echo as do_echo
    from dicom_node.deliver.scu import parse_peer

    settings = state.settings()
    configured = {d.name: d for d in settings.destinations}
    try:
        if destination in configured and configured[destination].type != "dicom":
            from dicom_node.deliver.destinations.registry import open_destination

            dest = configured[destination]
            seconds = open_destination(dest, calling_ae=settings.node.ae_title).echo()
            console.print(
                f"[green]{dest.type} destination {dest.name}: reachable[/] "
                f"in {seconds * 1000:.1f} ms"
            )
            return
        peer = parse_peer(destination, settings.destinations)
        seconds = do_echo(peer, settings.node.ae_title, timeout)
    except (ValueError, DeliveryError) as exc:
        err_console.print(f"[bold red]echo failed:[/] {exc}")
        sys.exit(1)
    console.print(f"[green]C-ECHO {peer}: success[/] in {seconds * 1000:.1f} ms")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--to", "destination", required=True, help="Destination name or HOST:PORT:AET.")
@pass_state
def send(state: _State, paths: tuple[Path, ...], destination: str) -> None:
    """C-STORE DICOM files or folders to a destination, with a progress bar."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from dicom_node.deliver.scu import collect_dicom_files, parse_peer, send_files

    settings = state.settings()
    try:
        peer = parse_peer(destination, settings.destinations)
    except ValueError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)
    files = collect_dicom_files(paths)
    if not files:
        err_console.print("[yellow]no DICOM files found[/]")
        sys.exit(1)
    with Progress(
        TextColumn("[bold]sending[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    ) as progress:
        task = progress.add_task("send", total=len(files))
        try:
            report = send_files(
                peer,
                files,
                calling_ae=settings.node.ae_title,
                progress=lambda _p, _s: progress.advance(task),
            )
        except DeliveryError as exc:
            err_console.print(f"[bold red]send failed:[/] {exc}")
            sys.exit(1)
    rate = report.sent / report.seconds if report.seconds else 0.0
    console.print(
        f"sent {report.sent} of {len(files)} file(s) to {peer} "
        f"({report.bytes / 1e6:.1f} MB, {report.seconds:.1f} s, {rate:.0f}/s)"
    )
    for path, reason in report.failed:
        console.print(f"[red]failed[/] {path}: {reason}")
    if report.failed:
        sys.exit(1)


@main.command()
@click.option("--limit", default=50, show_default=True, help="Most recent studies to show.")
@pass_state
def studies(state: _State, limit: int) -> None:
    """Table of received studies and their series with instance counts."""
    from rich.table import Table

    from dicom_node.receive.store import open_store
    from storage.queries import study_summaries

    settings = state.settings()
    store = open_store(settings, clean_temp=False)  # a running node may be writing them
    rows = study_summaries(store.db, limit)
    table = Table(title=f"received studies ({len(rows)})")
    for col in (
        "study",
        "date",
        "description",
        "series",
        "mod",
        "series description",
        "from",
        "inst",
        "MB",
        "last received",
    ):
        table.add_column(col, overflow="fold")
    for study in rows:
        received = study.last_received_at
        first = True
        for series in study.series:
            table.add_row(
                _short_uid(study.study_instance_uid) if first else "",
                (study.study_date or "") if first else "",
                (study.study_description or "") if first else "",
                _short_uid(series.series_instance_uid),
                series.modality or "",
                series.series_description or "",
                series.calling_ae or "",
                str(series.instances),
                f"{series.bytes / 1e6:.1f}",
                received.strftime("%Y-%m-%d %H:%M:%S") if first and received else "",
            )
            first = False
    console.print(table)


def _short_uid(uid: str) -> str:
    return uid if len(uid) <= 16 else "…" + uid[-15:]


@main.group()
def db() -> None:
    """Database maintenance."""


@db.command("upgrade")
@pass_state
def db_upgrade(state: _State) -> None:
    """Create or upgrade the schema to the newest revision (Alembic)."""
    from storage.db import Database

    settings = state.settings()
    database = Database(settings.storage.database_url)
    before = database.current_revision()
    database.upgrade()
    console.print(f"database at revision {database.current_revision()} (was {before or 'empty'})")


if __name__ == "__main__":  # pragma: no cover
    main()
