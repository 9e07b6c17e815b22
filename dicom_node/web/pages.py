"""Rendering the HTML pages: Jinja2 templates with autoescape, under a strict CSP.

Every value is escaped by Jinja2 (``autoescape`` on for every template):
DICOM attributes come from scanners and are untrusted.  The pages run no
script at all; their one stylesheet is inline and allowed by a nonce made
for each response (CSP Level 3), so ``script-src`` stays ``'none'``.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from dicom_node import __version__
from storage.jobs import as_utc

__all__ = ["SECURITY_HEADERS", "TEMPLATES", "render", "security_headers"]

TEMPLATES = Path(__file__).resolve().parent / "templates"

_ENV = Environment(
    loader=FileSystemLoader(str(TEMPLATES)),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(value: datetime | None) -> str:
    value = as_utc(value)
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _short(uid: str | None) -> str:
    if not uid:
        return ""
    return uid if len(uid) <= 28 else "\u2026" + uid[-27:]


_ENV.filters["when"] = _when
_ENV.filters["short"] = _short
_ENV.globals["version"] = __version__

#: Headers of every page, less the nonce'd CSP (:func:`security_headers`).
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # not "no-referrer": browsers then send "Origin: null" with the forms
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


def security_headers(nonce: str) -> dict[str, str]:
    """The page headers with ``Content-Security-Policy`` allowing the style of *nonce*."""
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; script-src 'none'; style-src 'nonce-{nonce}'; "
            "img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
        ),
        **SECURITY_HEADERS,
    }


def render(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """The page *template* filled with *context* (escaped), with the security headers."""
    nonce = secrets.token_urlsafe(16)
    context.setdefault("notice", None)
    html = _ENV.get_template(template).render(nonce=nonce, **context)
    return HTMLResponse(html, status_code=status_code, headers=security_headers(nonce))
