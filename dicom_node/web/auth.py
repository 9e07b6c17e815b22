"""The machine token, ``[web] token``: recognising it in an ``Authorization`` header.

Machines (Prometheus, scripts) send it as ``Authorization: Bearer <token>``
(RFC 6750; Prometheus: ``authorization: {credentials: ...}`` in a scrape
config); a browser may send it as the password of HTTP Basic (RFC 7617, any
user name).  :class:`dicom_node.web.access.AccessControl` makes either an
operator principal (Basic with a CSRF token for changes, since browsers
resend Basic credentials by themselves).  Tokens are compared in constant
time (:func:`hmac.compare_digest`).  The token travels in clear over plain
HTTP: beyond loopback, put TLS in front (a reverse proxy).
"""

from __future__ import annotations

import base64
import binascii
import hmac

__all__ = ["token_matches"]


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
