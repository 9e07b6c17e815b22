"""What the routes depend on: the node's context, and the same-origin check of POSTs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from prometheus_client import CollectorRegistry

from dicom_node.collect import Collector
from dicom_node.config import Settings
from storage.db import Database
from storage.received import ReceivedStore

__all__ = ["Context", "WebContext", "same_origin", "web_context"]


@dataclass(frozen=True)
class WebContext:
    """Everything the routes use, built once by :func:`dicom_node.web.create_app`."""

    settings: Settings
    db: Database
    store: ReceivedStore
    collector: Collector
    registry: CollectorRegistry
    schema_head: str | None


def web_context(request: Request) -> WebContext:
    """The context stored on the application."""
    ctx = request.app.state.web
    if not isinstance(ctx, WebContext):  # pragma: no cover - only create_app builds apps
        raise RuntimeError("application was not built by create_app")
    return ctx


Context = Annotated[WebContext, Depends(web_context)]


def same_origin(request: Request) -> None:
    """Refuse (403) a POST that a browser sent from another site.

    Without ``[web] token`` there is no authentication, and with it a
    browser re-sends its Basic credentials to any page's requests, so a page
    on another site must not be able to make a visitor's browser retry jobs
    or force completions (cross-site request forgery).  Browsers send ``Origin`` with
    every POST; it must name this server (``Host``, or ``X-Forwarded-Host``
    behind a reverse proxy, a header a cross-site form cannot set).  Clients
    that send no ``Origin`` (curl, scripts) are not browsers and pass.
    """
    origin = request.headers.get("origin")
    if origin is None:
        return
    netloc = urlsplit(origin).netloc.lower()
    hosts = {
        h.strip().lower()
        for h in (request.headers.get("host"), request.headers.get("x-forwarded-host"))
        if h
    }
    if not netloc or netloc not in hosts:
        raise HTTPException(status_code=403, detail="cross-site request refused")
