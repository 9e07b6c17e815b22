"""The names the web surface answers to: the ``Host`` allowlist, and the origin of changes.

Without ``[web] token`` the dashboard and API are guarded by the loopback
bind address alone, and a page on any site defeats that in an operator's
browser by DNS rebinding: its own name, re-resolved to ``127.0.0.1``, makes
the browser send requests to the node under the page's origin, so the
same-origin policy lets the page read the answers (patient IDs) and post
changes.  Those requests carry the page's name in ``Host``.  Answering only
the names of :class:`HostAllowlist` -- the loopback names, the bind address
when it is not a wildcard, and ``[web] allowed_hosts`` -- stops them before
any handler runs (:class:`HostCheck`, ``400``).

Changes (``POST`` and the other unsafe methods) from a browser also need its
``Origin`` (without one, its ``Referer``) to name an allowed host, so that a
form on another site cannot make a visitor's browser retry jobs or force
completions (cross-site request forgery, ``403``).  Clients that send neither
header (curl, scripts) are not browsers and pass.

An entry ``name`` allows that name with any port, ``name:port`` only with that
port; names are compared in lower case, without a trailing dot, IPv6
addresses in brackets (``[::1]``).  ``"*"`` allows any ``Host``, for a
reverse proxy that checks it; origins must then name the request's own host.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from dicom_node.config import WebSettings

__all__ = [
    "LOOPBACK_HOSTS",
    "SAFE_METHODS",
    "HostAllowlist",
    "HostCheck",
    "split_host",
]

LOGGER = logging.getLogger(__name__)

#: Always allowed, with any port: the names a browser on the node's machine uses.
LOOPBACK_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "[::1]")
#: Bind addresses that are not a name anybody connects to.
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})
#: Methods that change nothing (RFC 9110 section 9.2.1); the others need a good origin.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_HOST = re.compile(r"(?P<name>\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::(?P<port>\d{1,5}))?")
_HOST_REFUSED = b"Host not allowed (see [web] allowed_hosts)\n"
_ORIGIN_REFUSED = b'{"detail":"cross-site request refused"}'
_REPORTED_MAX = 64


def _bracketed_ipv6(text: str) -> str | None:
    """``[compressed]`` of an IPv6 address given with or without brackets; ``None`` if not one."""
    try:
        return f"[{ipaddress.IPv6Address(text.strip('[]')).compressed}]"
    except ValueError:
        return None


def split_host(value: str) -> tuple[str, int | None] | None:
    """``(name, port)`` of a ``Host`` value or an allowlist entry; ``None`` when malformed.

    The name comes back in lower case without a trailing dot, an IPv6
    address in brackets and compressed; the port is ``None`` when absent.
    A bare IPv6 address (``::1``, as an entry or a bind address) is taken
    as an address without a port.
    """
    text = value.strip().lower()
    if text.count(":") > 1 and not text.startswith("["):
        bracketed = _bracketed_ipv6(text)
        return None if bracketed is None else (bracketed, None)
    match = _HOST.fullmatch(text)
    if match is None:
        return None
    name: str | None = match["name"]
    if name is not None and name.startswith("["):
        name = _bracketed_ipv6(name)
    elif name is not None:
        name = name.removesuffix(".")
    port = int(match["port"]) if match["port"] else None
    if not name or (port is not None and not 0 < port < 65536):
        return None
    return name, port


@dataclass(frozen=True)
class HostAllowlist:
    """The hosts requests may name (module docstring).

    Attributes
    ----------
    entries:
        ``(name, port)`` pairs as :func:`split_host` gives them; a ``None``
        port allows any.
    any_host:
        ``"*"`` was listed: every ``Host`` is allowed.
    """

    entries: tuple[tuple[str, int | None], ...]
    any_host: bool = False

    @classmethod
    def of(cls, names: Iterable[str]) -> HostAllowlist:
        """The allowlist of *names* (``"*"``, ``name``, ``name:port``).

        Raises
        ------
        ValueError
            A name that is not a host name or address with an optional port.
        """
        entries: list[tuple[str, int | None]] = []
        any_host = False
        for name in names:
            if name.strip() == "*":
                any_host = True
                continue
            parsed = split_host(name)
            if parsed is None:
                raise ValueError(f"not a host name or address: {name!r}")
            entries.append(parsed)
        return cls(tuple(dict.fromkeys(entries)), any_host)

    @classmethod
    def from_settings(cls, web: WebSettings) -> HostAllowlist:
        """Loopback names, ``web.host`` unless a wildcard, and ``web.allowed_hosts``."""
        names = [*LOOPBACK_HOSTS, *web.allowed_hosts]
        if web.host.strip().lower() not in WILDCARD_BINDS:
            names.append(web.host)
        return cls.of(names)

    def describe(self) -> str:
        """The entries for a log line, e.g. ``localhost, 127.0.0.1, [::1]``."""
        names = [name if port is None else f"{name}:{port}" for name, port in self.entries]
        return ", ".join([*names, *(["*"] if self.any_host else [])])

    def _matches(self, name: str, port: int | None) -> bool:
        return any(n == name and (p is None or p == port) for n, p in self.entries)

    def allows_host(self, host: str | None) -> bool:
        """Whether a request's ``Host`` header value names an allowed host."""
        if self.any_host:
            return True
        parsed = split_host(host) if host else None
        return parsed is not None and self._matches(*parsed)

    def allows_origin(self, origin: str, host: str | None = None) -> bool:
        """Whether a browser's ``Origin`` (or ``Referer``) URL names an allowed host.

        ``Origin: null`` (sandboxed frames, ``file:``) and non-HTTP schemes
        are refused.  With ``"*"``, an origin naming the request's own
        *host* is allowed too (any port).
        """
        parts = urlsplit(origin.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False
        parsed = split_host(parts.netloc)
        if parsed is None:
            return False
        if self._matches(*parsed):
            return True
        own = split_host(host) if self.any_host and host else None
        return own is not None and own[0] == parsed[0]

    def allows_change(self, headers: Mapping[str, str]) -> bool:
        """Whether a state-changing request may proceed, judged by its browser headers.

        *headers* maps lower-case names to values.  ``Origin`` is judged,
        else ``Referer``; a request with neither is not a browser's.
        """
        claimed = headers.get("origin", headers.get("referer"))
        if claimed is None:
            return True
        return self.allows_origin(claimed, headers.get("host"))


def _request_headers(scope: Scope) -> tuple[dict[str, str], int]:
    """The request's headers (the first of each name, lower case) and how many ``Host`` it has."""
    headers: dict[str, str] = {}
    hosts = 0
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        if name == "host":
            hosts += 1
        headers.setdefault(name, raw_value.decode("latin-1"))
    return headers, hosts


async def _answer(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    """Send a whole short response."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class HostCheck:
    """ASGI middleware: ``400`` for a ``Host`` not allowed, ``403`` for a change from another site.

    Parameters
    ----------
    app:
        The application behind it.
    allowlist:
        The allowed hosts (:meth:`HostAllowlist.from_settings`).
    """

    def __init__(self, app: ASGIApp, allowlist: HostAllowlist) -> None:
        self.app = app
        self.allowlist = allowlist
        self._reported: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers, hosts = _request_headers(scope)
        if hosts != 1 or not self.allowlist.allows_host(headers.get("host")):
            self._report(headers.get("host"))
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await _answer(send, 400, _HOST_REFUSED, b"text/plain; charset=utf-8")
            return
        if scope["type"] == "http" and scope.get("method") not in SAFE_METHODS:
            if not self.allowlist.allows_change(headers):
                await _answer(send, 403, _ORIGIN_REFUSED, b"application/json")
                return
        await self.app(scope, receive, send)

    def _report(self, host: str | None) -> None:
        """Log a refused host: WARNING the first time (for a few), DEBUG after."""
        shown = (host or "")[:100]
        first = shown not in self._reported and len(self._reported) < _REPORTED_MAX
        if first:
            self._reported.add(shown)
        LOGGER.log(
            logging.WARNING if first else logging.DEBUG,
            "web: refused a request for Host %r (not in [web] allowed_hosts)",
            shown,
        )
