"""``dicom-node users add|remove|list|set-password|set-role|disable|enable``: local web users.

The users log in to the web console (:mod:`dicom_node.web.auth`); a
``viewer`` reads, an ``operator`` also retries jobs and forces completions.
Passwords are read from a prompt (typed twice) or, for scripts, from
standard input with ``--password-stdin``; never from the command line,
where other users of the machine would see them.  The database keeps only
their argon2id hashes (:mod:`storage.users`).

Every change is audited as ``user-changed`` with the operating-system user
who ran the command; never with the password or its hash.  The commands
work on the database directly, so they act on a running node too (a role
change counts from the user's next request, a new password or a disabled
user ends its sessions).
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from dicom_node.cli_lazy import LazyChoice

if TYPE_CHECKING:
    from storage.users import UserStore

__all__ = ["users"]

console = Console()
err_console = Console(stderr=True)


@contextmanager
def _store(ctx: click.Context) -> Iterator[UserStore]:
    """The users of the configured database, with an auditor installed for the command."""
    from dicom_node import audit
    from storage.db import Database
    from storage.users import UserError, UserStore

    settings = ctx.obj.settings()
    db = Database(settings.storage.database_url)
    db.upgrade()
    auditor = audit.auditor_from_settings(settings.audit, db)
    previous = audit.install(auditor)
    try:
        yield UserStore(db)
    except UserError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(1)
    finally:
        auditor.close()
        audit.install(previous if previous is not auditor else None)
        db.dispose()


def _os_user() -> str:
    """The operating-system user running the command (its uid where it has no name,
    as in some containers)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _changed(username: str, change: str, **detail: Any) -> None:
    """Audit one change of *username* made by the operating-system user."""
    from dicom_node import audit

    audit.auditor().record(
        audit.AuditEvent.USER_CHANGED,
        actor=_os_user(),
        actor_kind="user",
        via="cli",
        target_user=username,
        change=change,
        **detail,
    )


def _read_password(from_stdin: bool) -> str:
    """The new password: the first line of standard input, or typed twice at a prompt."""
    if from_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    password: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


_password_stdin = click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of standard input (for scripts).",
)
def _roles() -> tuple[str, ...]:
    from storage.users import ROLES

    return tuple(ROLES)


_role = click.option(
    "--role",
    type=LazyChoice(_roles),
    required=True,
    help="viewer: reads; operator: also retries jobs and forces completions.",
)


@click.group("users")
def users() -> None:
    """Local users of the web console and API (viewer or operator)."""


@users.command("add")
@click.argument("name")
@_role
@_password_stdin
@click.pass_context
def add(ctx: click.Context, name: str, role: str, password_stdin: bool) -> None:
    """Create user NAME with a password (prompted, or from standard input)."""
    from storage.users import UserError

    with _store(ctx) as store:
        if store.get(name) is not None:  # before the prompt: no password typed for nothing
            raise UserError(f"user {name!r} exists")
        password = _read_password(password_stdin)
        store.add(name, password, role)
        _changed(name, "created", role=role)
    console.print(f"user {name} added ({role})", markup=False)


@users.command("remove")
@click.argument("name")
@click.pass_context
def remove(ctx: click.Context, name: str) -> None:
    """Delete user NAME (its sessions end)."""
    with _store(ctx) as store:
        store.remove(name)
        _changed(name, "removed")
    console.print(f"user {name} removed", markup=False)


@users.command("list")
@click.pass_context
def list_users(ctx: click.Context) -> None:
    """The users: name, role, disabled, created, last login (UTC)."""
    from storage.db import Database
    from storage.users import UserStore

    settings = ctx.obj.settings()
    db = Database(settings.storage.database_url)
    db.upgrade()
    try:
        rows = UserStore(db).list()
    finally:
        db.dispose()
    table = Table(title=f"{len(rows)} user(s)")
    for column in ("name", "role", "disabled", "created (UTC)", "last login (UTC)"):
        table.add_column(column)
    for user in rows:
        table.add_row(
            user.username,
            user.role,
            "yes" if user.disabled else "no",
            user.created_at.strftime("%Y-%m-%d %H:%M:%S") if user.created_at else "",
            user.last_login_at.strftime("%Y-%m-%d %H:%M:%S") if user.last_login_at else "never",
        )
    console.print(table)


@users.command("set-password")
@click.argument("name")
@_password_stdin
@click.pass_context
def set_password(ctx: click.Context, name: str, password_stdin: bool) -> None:
    """Give user NAME a new password (its sessions end)."""
    from storage.users import UserError

    with _store(ctx) as store:
        if store.get(name) is None:
            raise UserError(f"no user {name!r}")
        store.set_password(name, _read_password(password_stdin))
        _changed(name, "password")
    console.print(f"password of {name} changed", markup=False)


@users.command("set-role")
@click.argument("name")
@_role
@click.pass_context
def set_role(ctx: click.Context, name: str, role: str) -> None:
    """Give user NAME another role (from its next request)."""
    with _store(ctx) as store:
        old = store.set_role(name, role)
        _changed(name, "role", old_role=old, role=role)
    console.print(f"user {name}: {old} -> {role}", markup=False)


@users.command("disable")
@click.argument("name")
@click.pass_context
def disable(ctx: click.Context, name: str) -> None:
    """Refuse user NAME's logins (its sessions end) without deleting it."""
    with _store(ctx) as store:
        store.set_disabled(name, True)
        _changed(name, "disabled")
    console.print(f"user {name} disabled", markup=False)


@users.command("enable")
@click.argument("name")
@click.pass_context
def enable(ctx: click.Context, name: str) -> None:
    """Let a disabled user NAME log in again."""
    with _store(ctx) as store:
        store.set_disabled(name, False)
        _changed(name, "enabled")
    console.print(f"user {name} enabled", markup=False)
