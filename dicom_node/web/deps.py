"""What the routes depend on: the node's context, and the origin check of POSTs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from prometheus_client import CollectorRegistry

from dicom_node.collect import Collector
from dicom_node.config import Settings
from dicom_node.web.hosts import HostAllowlist
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
    hosts: HostAllowlist


def web_context(request: Request) -> WebContext:
    """The context stored on the application."""
    ctx = request.app.state.web
    if not isinstance(ctx, WebContext):  # pragma: no cover - only create_app builds apps
        raise RuntimeError("application was not built by create_app")
    return ctx


Context = Annotated[WebContext, Depends(web_context)]


def same_origin(request: Request, ctx: Context) -> None:
    """Refuse (403) a POST that a browser sent from another site.

    A browser re-sends its cookies and Basic credentials to any page's
    requests, and an open node on loopback has none to check, so a page on
    another site must not be able to make a visitor's browser retry jobs or
    force completions (cross-site request forgery; the CSRF token of
    :mod:`dicom_node.web.guard` is the other half).  Browsers send
    ``Origin`` with every POST (else a ``Referer``); it must name a host of
    the allowlist (:mod:`dicom_node.web.hosts`), not merely the request's
    own ``Host``, which a DNS-rebinding page controls.  Clients that send
    neither (curl, scripts) are not browsers and pass.  The
    :class:`~dicom_node.web.hosts.HostCheck` middleware checks the same
    before any route; this keeps the rule on the routes themselves.
    """
    headers = {name: request.headers[name] for name in ("origin", "referer", "host")
               if name in request.headers}
    if not ctx.hosts.allows_change(headers):
        raise HTTPException(status_code=403, detail="cross-site request refused")
