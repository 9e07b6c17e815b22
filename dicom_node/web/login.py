"""``/login`` and ``/logout``: password logins of local users, throttled and audited.

``GET /login`` shows the form; ``POST /login`` takes it (``username``,
``password``, ``next``, ``csrf_token``).  A good password opens a session
(:class:`storage.users.UserStore`): the answer sets the session cookie
(:data:`dicom_node.web.access.SESSION_COOKIE`, attributes from
:func:`dicom_node.web.access.cookie_attributes`) and goes on to ``next``
(a path of this site only, :func:`safe_next`).  A wrong one is answered
after ``[web] login_failure_delay_s`` with the same words whatever was
wrong, and audited as ``login-failed`` with the reason (unknown user,
disabled, wrong password; never the password).  :class:`LoginThrottle`
refuses (``429``) further tries of a name, or from an address, with
``[web] login_max_failures`` failures within ``[web] login_lockout_s``
(OWASP Authentication Cheat Sheet, "Protect against automated attacks");
it counts per process.

There is no session before the login, so the form's CSRF token is a
double-submit one (OWASP CSRF Prevention Cheat Sheet): a random value in a
short-lived ``HttpOnly``, ``SameSite=Strict`` cookie that the form must
repeat; with the ``Origin`` check of :mod:`dicom_node.web.hosts` it keeps
other sites from logging a browser in to an account of theirs.
``POST /logout`` needs the session's CSRF token like every other change.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import threading
import time
from collections import deque
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from dicom_node import audit
from dicom_node.web.access import (
    SESSION_COOKIE,
    client_address,
    cookie_attributes,
    principal_of,
    read_cookie,
)
from dicom_node.web.deps import Context
from dicom_node.web.guard import CSRF_FIELD, check_csrf, form_fields
from dicom_node.web.pages import render
from storage.users import UserStore

__all__ = ["LOGIN_COOKIE", "LoginThrottle", "login", "safe_next"]

LOGGER = logging.getLogger(__name__)

LOGIN_COOKIE = "dicom_node_login"
"""The double-submit cookie of the login form."""

_REFUSED = "Wrong user name or password."


class LoginThrottle:
    """Failed logins per user name and per address within a sliding window.

    Parameters
    ----------
    max_failures:
        Failures of one key that block it.
    window_s:
        How long a failure counts (and so how long a block lasts at most).
    """

    def __init__(self, max_failures: int, window_s: float) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and now - times[0] > self.window_s:
            times.popleft()
        return times

    def blocked_for(self, *keys: str) -> float:
        """Seconds until every key of *keys* may try again (0: may try now)."""
        now = time.monotonic()
        wait = 0.0
        with self._lock:
            for key in keys:
                times = self._recent(key, now)
                if len(times) >= self.max_failures:
                    wait = max(wait, self.window_s - (now - times[-self.max_failures]))
        return wait

    def failed(self, *keys: str) -> None:
        """Count one failure for each of *keys*."""
        now = time.monotonic()
        with self._lock:
            if len(self._failures) > 10_000:  # bounded memory under a spray of names
                self._failures = {k: v for k, v in self._failures.items() if self._recent(k, now)}
            for key in keys:
                self._recent(key, now).append(now)

    def succeeded(self, username: str) -> None:
        """Forget the name's failures (not the address's)."""
        with self._lock:
            self._failures.pop(f"user:{username}", None)


def safe_next(value: str | None) -> str:
    """*value* when it is a path of this site (``/...``, not ``//host``), else ``/``."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value) or value.startswith("/login"):
        return "/"
    return value


def _throttle(request: Request, ctx: Context) -> LoginThrottle:
    """The application's throttle (made on first use)."""
    state = request.app.state
    found = getattr(state, "login_throttle", None)
    if not isinstance(found, LoginThrottle):
        web = ctx.settings.web
        found = LoginThrottle(web.login_max_failures, web.login_lockout_s)
        state.login_throttle = found
    return found


login = APIRouter(tags=["login"])


def _form(
    request: Request,
    ctx: Context,
    *,
    next_path: str,
    username: str = "",
    message: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    """The login page with a fresh double-submit token (cookie and hidden field)."""
    token = secrets.token_urlsafe(32)
    response = render(
        "login.html",
        status_code=status,
        next=next_path,
        username=username,
        message=message,
        login_csrf=token,
    )
    attributes = cookie_attributes(request.scope, ctx.settings.web)
    response.headers.append("set-cookie", f"{LOGIN_COOKIE}={token}{attributes}; Max-Age=3600")
    return response


@login.get("/login", response_class=HTMLResponse, include_in_schema=False)
def get_login(
    ctx: Context,
    request: Request,
    next: Annotated[str | None, Query()] = None,  # noqa: A002 - the parameter's name in URLs
) -> Response:
    """The login form (a logged-in user goes on to ``next``)."""
    token = read_cookie(request.headers.get("cookie"), SESSION_COOKIE)
    idle = ctx.settings.web.session_idle
    if token and UserStore(ctx.db).session(token, idle=idle, touch=False) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return _form(request, ctx, next_path=safe_next(next))


@login.post("/login", response_class=HTMLResponse, include_in_schema=False)
async def post_login(ctx: Context, request: Request) -> Response:
    """Check the form's password; open a session, or say no (module docstring)."""
    web = ctx.settings.web
    address = client_address(request.scope, web)
    form = await form_fields(request)
    username = form.get("username", "").strip()[:64]
    password = form.get("password", "")
    next_path = safe_next(form.get("next"))
    expected = read_cookie(request.headers.get("cookie"), LOGIN_COOKIE) or ""
    given = form.get(CSRF_FIELD, "")
    if not expected or not given or not hmac.compare_digest(given.encode(), expected.encode()):
        audit.auditor().record(
            audit.AuditEvent.LOGIN_FAILED, outcome=audit.Outcome.MINOR_FAILURE,
            actor=username or None, actor_kind="user", address=address, via="password",
            reason="missing or wrong login form token",
        )
        return _form(
            request, ctx, next_path=next_path, username=username, status=403,
            message="The login form expired; please log in again.",
        )
    throttle = _throttle(request, ctx)
    keys = (f"user:{username}", f"address:{address}")
    wait = throttle.blocked_for(*keys)
    if wait > 0:
        audit.auditor().record(
            audit.AuditEvent.LOGIN_FAILED, outcome=audit.Outcome.MINOR_FAILURE,
            actor=username or None, actor_kind="user", address=address, via="password",
            reason="too many failed logins",
        )
        response = _form(
            request, ctx, next_path=next_path, username=username, status=429,
            message=f"Too many failed logins; try again in {int(wait) + 1} s.",
        )
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    users = UserStore(ctx.db)
    if not username or not password:
        user, reason = None, "empty user name or password"
    else:
        user, reason = await run_in_threadpool(users.check_login, username, password)
    if user is None:
        throttle.failed(*keys)
        audit.auditor().record(
            audit.AuditEvent.LOGIN_FAILED, outcome=audit.Outcome.MINOR_FAILURE,
            actor=username or None, actor_kind="user", address=address, via="password",
            reason=reason,
        )
        LOGGER.info("web: failed login from %s (%s)", address, reason)
        await asyncio.sleep(web.login_failure_delay_s)
        return _form(
            request, ctx, next_path=next_path, username=username, message=_REFUSED, status=401
        )
    throttle.succeeded(username)

    def open_session() -> tuple[str, Any]:
        users.expire_sessions(idle=web.session_idle)  # housekeeping: sessions nobody ended
        return users.create_session(user.username, lifetime=web.session_lifetime, address=address)

    token, info = await run_in_threadpool(open_session)
    audit.auditor().record(
        audit.AuditEvent.LOGIN, actor=user.username, actor_kind="user", address=address,
        via="password", role=info.role,
    )
    LOGGER.info("web: %s (%s) logged in from %s", user.username, info.role, address)
    attributes = cookie_attributes(request.scope, web)
    done = RedirectResponse(next_path, status_code=303)
    done.headers.append("set-cookie", f"{SESSION_COOKIE}={token}{attributes}")
    done.headers.append("set-cookie", f"{LOGIN_COOKIE}={attributes}; Max-Age=0")
    return done


@login.post("/logout", include_in_schema=False, dependencies=[Depends(check_csrf)])
def post_logout(ctx: Context, request: Request) -> Response:
    """End the session (after the CSRF check) and go to the login page."""
    who = principal_of(request.scope)
    token = read_cookie(request.headers.get("cookie"), SESSION_COOKIE)
    if token:
        UserStore(ctx.db).end_session(token)
    if who is not None and who.via == "session":
        audit.auditor().record(
            audit.AuditEvent.LOGOUT, actor=who.name, actor_kind="user",
            address=client_address(request.scope, ctx.settings.web), via="password",
        )
    response = RedirectResponse("/login", status_code=303)
    attributes = cookie_attributes(request.scope, ctx.settings.web)
    response.headers.append("set-cookie", f"{SESSION_COOKIE}={attributes}; Max-Age=0")
    return response
