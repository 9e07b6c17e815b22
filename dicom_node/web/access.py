"""Who is asking: sessions, the trusted proxy's user header, the machine token.

:class:`AccessControl` (ASGI middleware) names the principal of every
request before any route runs, trying in order:

1. ``Authorization: Bearer <[web] token>`` (RFC 6750; :mod:`.auth`): a
   machine (Prometheus, scripts) with operator rights and no CSRF token to
   show (browsers never add a Bearer header by themselves).  The token as
   the password of HTTP Basic (RFC 7617) works too, for a browser; since a
   browser resends Basic credentials to forged requests as well, such
   changes need a CSRF token (an HMAC under a key of the process, which the
   dashboard's forms carry);
2. the header ``[web] trusted_proxy_header`` (e.g. ``X-Remote-User``) when
   the request comes from an address of ``[web] trusted_proxies``: single
   sign-on in front of the node; the user's role is its local user's, else
   ``[web] proxy_default_role``; its CSRF token is an HMAC of its name under a
   key of the process (the HMAC-based token pattern), so it needs no session;
3. the session cookie set by ``/login`` (:mod:`.login`), looked up by the
   SHA-256 of its token (:class:`storage.users.UserStore`);
4. nobody: with no ``[web] token``, no enabled user and no proxy header
   configured, the node is open as it always was (on loopback only,
   :func:`dicom_node.web.server.refuse_open_listener`) and the principal is
   ``anonymous`` with operator rights; otherwise pages redirect to
   ``/login`` and the API answers ``401``.

What a principal may do is checked by the routes (:mod:`.guard`).  The
session cookie is ``HttpOnly``, ``SameSite=Strict``, and ``Secure`` when
the request came over HTTPS (directly, or per ``X-Forwarded-Proto`` from a
trusted proxy) or ``[web] cookie_secure`` says so (RFC 6265bis).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from http.cookies import SimpleCookie
from typing import Literal
from urllib.parse import quote

import anyio.to_thread
from starlette.types import ASGIApp, Receive, Scope, Send

from dicom_node import audit
from dicom_node.config import WebSettings
from dicom_node.web.auth import token_matches
from storage.db import Database, DatabaseError
from storage.users import UserStore

__all__ = [
    "OPEN_PATHS",
    "SESSION_COOKIE",
    "AccessControl",
    "Principal",
    "client_address",
    "is_open",
    "read_cookie",
    "cookie_attributes",
    "is_https",
    "principal_of",
]

LOGGER = logging.getLogger(__name__)

SESSION_COOKIE = "dicom_node_session"
#: Answered to anybody: the liveness probe and the icon (GET), the login page (GET, POST).
OPEN_PATHS = frozenset({"/api/health", "/login", "/favicon.ico"})


def is_open(method: str, path: str) -> bool:
    """Whether a request needs no principal (:data:`OPEN_PATHS`)."""
    if path == "/login":
        return method in ("GET", "HEAD", "POST")
    return path in OPEN_PATHS and method in ("GET", "HEAD")

Via = Literal["session", "proxy", "basic", "token", "open"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for.

    Attributes
    ----------
    name:
        The user name (``token`` for the machine token, ``anonymous`` when open).
    role:
        ``viewer`` or ``operator``.
    via:
        How it was recognised (module docstring).
    csrf_token:
        The session's synchronizer token (``session``; ``proxy``, ``basic``: an HMAC):
        state-changing requests must show it.
    """

    name: str
    role: str
    via: Via
    csrf_token: str | None = None

    @property
    def is_operator(self) -> bool:
        """May change things (retry, force completion)."""
        return self.role == "operator"

    @property
    def needs_csrf(self) -> bool:
        """Browsers (which resend cookies and Basic credentials) must show a CSRF token."""
        return self.via in ("session", "proxy", "basic")

    @property
    def actor_kind(self) -> str:
        """``actor_kind`` of the audit events it causes."""
        return "node" if self.via in ("token", "basic") else "user"


def _headers(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        headers.setdefault(raw_name.decode("latin-1").lower(), raw_value.decode("latin-1"))
    return headers


def _networks(entries: list[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def _in(address: str | None, networks: tuple[object, ...]) -> bool:
    if not address or not networks:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)  # type: ignore[operator]


def client_address(scope: Scope, web: WebSettings) -> str | None:
    """The address a request came from: the peer, or what a trusted proxy says it saw.

    A trusted proxy's ``X-Forwarded-For`` counts by its last entry (the one
    the proxy itself added); from anybody else the header is ignored.
    """
    client = scope.get("client")
    peer = client[0] if client else None
    if _in(peer, _networks(web.trusted_proxies)):
        forwarded = _headers(scope).get("x-forwarded-for")
        if forwarded:
            last = forwarded.split(",")[-1].strip()
            if last:
                return last[:64]
    return peer


def is_https(scope: Scope, web: WebSettings) -> bool:
    """Whether the browser reached the node over HTTPS (directly or via a trusted proxy)."""
    if scope.get("scheme") == "https":
        return True
    client = scope.get("client")
    if client and _in(client[0], _networks(web.trusted_proxies)):
        proto = _headers(scope).get("x-forwarded-proto", "")
        return proto.split(",")[0].strip().lower() == "https"
    return False


def cookie_attributes(scope: Scope, web: WebSettings) -> str:
    """The attributes of the node's cookies (module docstring)."""
    secure = web.cookie_secure or is_https(scope, web)
    return "; Path=/; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")


def principal_of(scope: Scope) -> Principal | None:
    """The principal :class:`AccessControl` found (``None`` on open paths without one)."""
    found = scope.get("state", {}).get("principal")
    return found if isinstance(found, Principal) else None


@dataclass(frozen=True)
class _Verdict:
    principal: Principal | None
    refused: str | None = None  # 403 with this reason
    users_exist: bool = True


class AccessControl:
    """ASGI middleware: find the principal (module docstring) or refuse the request.

    Parameters
    ----------
    app:
        The application behind it.
    web:
        ``[web]`` settings.
    db:
        The node's database (users and sessions).
    """

    def __init__(self, app: ASGIApp, web: WebSettings, db: Database) -> None:
        self.app = app
        self.web = web
        self.users = UserStore(db)
        self.token = web.token.get_secret_value() if web.token is not None else None
        self.proxies = _networks(web.trusted_proxies)
        self.idle = timedelta(minutes=web.session_idle_minutes)
        self._csrf_key = secrets.token_bytes(32)
        self._proxy_seen: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        verdict = await anyio.to_thread.run_sync(self._identify, scope)
        state = scope.setdefault("state", {})
        state["principal"] = verdict.principal
        path = scope.get("path", "")
        if verdict.refused is not None:
            await _answer(send, 403, b'{"detail":"%s"}' % verdict.refused.encode(), [])
            return
        if verdict.principal is None and not is_open(scope.get("method", ""), path):
            await self._challenge(scope, send, verdict.users_exist)
            return
        await self.app(scope, receive, send)

    # -- who ------------------------------------------------------------------------------
    def _identify(self, scope: Scope) -> _Verdict:
        headers = _headers(scope)
        authorization = headers.get("authorization")
        if self.token is not None and token_matches(authorization, self.token):
            if (authorization or "").strip().lower().startswith("basic"):
                # A browser resends Basic credentials to every request, forged ones too.
                csrf = hmac.new(self._csrf_key, b"basic", hashlib.sha256).hexdigest()
                return _Verdict(Principal("token", "operator", "basic", csrf))
            return _Verdict(Principal("token", "operator", "token"))
        cookie = read_cookie(headers.get("cookie"), SESSION_COOKIE)
        try:
            if self.web.trusted_proxy_header:
                client = scope.get("client")
                claimed = headers.get(self.web.trusted_proxy_header.strip().lower())
                if claimed and client and _in(client[0], self.proxies):
                    return self._proxy_user(scope, claimed.strip())
            if cookie:
                # The dashboard's own reload (?auto=1) does not count as the user's use.
                auto = b"auto=1" in scope.get("query_string", b"").split(b"&")
                found = self.users.session(cookie, idle=self.idle, touch=not auto)
                if found is not None:
                    return _Verdict(
                        Principal(found.username, found.role, "session", found.csrf_token)
                    )
            if self.token is None and not self.web.trusted_proxy_header:
                if self.users.count() == 0:
                    # Open on loopback only: beyond it, removing the last user closes it.
                    if _loopback_bind(self.web.host):
                        return _Verdict(Principal("anonymous", "operator", "open"),
                                        users_exist=False)
                    return _Verdict(None, users_exist=False)
                return _Verdict(None)
            return _Verdict(None, users_exist=self.users.count() > 0)
        except DatabaseError as exc:
            LOGGER.warning("web: cannot read users and sessions: %s", exc.__class__.__name__)
            if self.token is None and not self.web.trusted_proxy_header and _loopback_bind(
                self.web.host
            ):
                # Unmigrated or unreachable: nothing to show but the 503s, as before users.
                return _Verdict(Principal("anonymous", "operator", "open"), users_exist=False)
            return _Verdict(None)

    def _proxy_user(self, scope: Scope, name: str) -> _Verdict:
        """The user a trusted proxy names; its CSRF token is an HMAC of its name."""
        user = self.users.get(name)
        if user is not None and user.disabled:
            return _Verdict(None, refused="user disabled")
        role = user.role if user is not None else self.web.proxy_default_role
        if role is None:
            return _Verdict(None, refused="no local user of that name and no proxy_default_role")
        if name not in self._proxy_seen:  # one login event per user and process
            self._proxy_seen.add(name)
            audit.auditor().record(
                audit.AuditEvent.LOGIN, actor=name, actor_kind="user",
                address=client_address(scope, self.web), via="proxy", role=role,
            )
        csrf = hmac.new(self._csrf_key, f"proxy:{name}".encode(), hashlib.sha256).hexdigest()
        return _Verdict(Principal(name, role, "proxy", csrf))

    async def _challenge(self, scope: Scope, send: Send, users_exist: bool) -> None:
        path = scope.get("path", "")
        wants_page = (
            scope.get("method") in ("GET", "HEAD")
            and not path.startswith("/api/")
            and path != "/metrics"
        )
        if wants_page and (users_exist or self.token is None):
            query = scope.get("query_string", b"").decode("latin-1")
            target = path + (f"?{query}" if query else "")
            location = "/login?next=" + quote(target, safe="")
            await _answer(send, 303, b"", [(b"location", location.encode("latin-1"))])
            return
        extra = []
        if self.token is not None:
            extra.append((b"www-authenticate", b'Basic realm="dicom-node", charset="UTF-8"'))
        await _answer(send, 401, b'{"detail":"authentication required"}', extra)


def _loopback_bind(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_cookie(header: str | None, name: str) -> str | None:
    if not header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except Exception:  # a malformed Cookie header is no session
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None and morsel.value else None


async def _answer(send: Send, status: int, body: bytes,
                  headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def header_map(scope: Scope) -> Mapping[str, str]:
    """The request's headers, lower-case names, the first of each."""
    return _headers(scope)
