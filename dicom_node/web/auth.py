"""Access to the web surface: one shared token (``[web] token``).

Without a token (the default) the dashboard, API and ``/metrics`` are open to
whoever reaches the port, which is why the default bind address is loopback
and the node refuses any other without a token
(:func:`dicom_node.web.server.refuse_open_listener`); the ``Host`` allowlist
(:mod:`dicom_node.web.hosts`) keeps pages on other sites out of a loopback node.
With one, every request but ``GET /api/health`` (liveness probes) needs it,
either way HTTP clients send credentials (RFC 6750, RFC 7617):

* ``Authorization: Bearer <token>`` -- scripts, Prometheus
  (``authorization: {credentials: ...}`` in a scrape config);
* ``Authorization: Basic <base64(any-user:token)>`` -- browsers, which ask
  for it after the ``401`` with ``WWW-Authenticate: Basic``.

Tokens are compared in constant time (:func:`hmac.compare_digest`).  The
token travels in clear over plain HTTP: beyond loopback, put TLS in front
(a reverse proxy).
"""

from __future__ import annotations

import base64
import binascii
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["OPEN_PATHS", "TokenAuth", "token_matches"]

#: Paths answered without the token (GET only): the liveness probe.
OPEN_PATHS = frozenset({"/api/health"})

_CHALLENGE = [
    (b"www-authenticate", b'Basic realm="dicom-node", charset="UTF-8"'),
    (b"content-type", b"application/json"),
]


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (Bearer, or Basic's password)."""
    if not authorization or not token:
        return False
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        given = credentials
    elif scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        _user, sep, given = decoded.partition(":")
        if not sep:
            return False
    else:
        return False
    return hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


class TokenAuth:
    """ASGI middleware: ``401`` for a request without the token (module docstring)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        if not token:
            raise ValueError("TokenAuth needs a non-empty token")
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("method") == "GET" and scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        if token_matches(header, self.token):
            await self.app(scope, receive, send)
            return
        body = b'{"detail":"authentication required"}'
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [*_CHALLENGE, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
