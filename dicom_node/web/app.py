"""The FastAPI application: REST API under ``/api/``, ``/metrics``, dashboard at ``/``,
the console's pages (:mod:`.console`) and actions (:mod:`.console_actions`).

Who may see and change what: :mod:`.access` (sessions from ``/login``,
:mod:`.login`; a trusted proxy's user header; ``[web] token`` for machines)
and :mod:`.guard` (roles, CSRF, audit).  Open only with no user, no token
and a loopback bind address (:class:`~dicom_node.web.server.WebServer`);
TLS belongs in front beyond loopback.  Requests for a ``Host`` outside
``[web] allowed_hosts`` and the loopback names, and browser POSTs from other
sites, are refused before any route runs (:mod:`.hosts`).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client.exposition import choose_encoder

from dicom_node import __version__
from dicom_node.collect import Collector
from dicom_node.config import Settings
from dicom_node.web.access import AccessControl
from dicom_node.web.api import audit_trail, completion, health, jobs, studies
from dicom_node.web.console import console
from dicom_node.web.console_actions import actions
from dicom_node.web.dashboard import dashboard
from dicom_node.web.deps import Context, WebContext
from dicom_node.web.hosts import HostAllowlist, HostCheck
from dicom_node.web.login import login
from dicom_node.web.metrics import metrics_registry
from storage.db import Database, DatabaseUnavailable
from storage.received import ReceivedStore
from storage.spool import Spool

__all__ = ["create_app"]

LOGGER = logging.getLogger(__name__)


def create_app(settings: Settings, db: Database, *, store: ReceivedStore | None = None) -> FastAPI:
    """Build the web application of a node.

    Parameters
    ----------
    settings:
        The node's settings (rules for forced completion, destinations for
        the metrics).
    db:
        The node's database, schema upgraded; shared, not disposed here.
    store:
        The node's :class:`~storage.received.ReceivedStore`; by default one
        over ``settings.storage.spool_dir`` (only its queries are used).
    """
    if store is None:
        store = ReceivedStore(db, Spool(settings.storage.spool_dir, fsync=False))
    app = FastAPI(
        title="dicom-node",
        version=__version__,
        description=(
            "REST API of a dicom-node. Machines send [web] token as "
            "'Authorization: Bearer <token>' (operator rights); browsers log in "
            "at /login and send the session's CSRF token as 'X-CSRF-Token' with "
            "changes. GET /api/health stays open."
        ),
        openapi_url="/api/openapi.json",
        docs_url=None,  # Swagger UI and ReDoc load assets from a CDN; the node works offline
        redoc_url=None,
    )
    app.state.web = WebContext(
        settings=settings,
        db=db,
        store=store,
        collector=Collector(db, settings),
        registry=metrics_registry(db, destinations=[d.name for d in settings.destinations]),
        schema_head=db.head_revision(),
        hosts=HostAllowlist.from_settings(settings.web),
    )
    for router in (health, studies, jobs, completion, audit_trail, dashboard, console, actions,
                   login):
        app.include_router(router)
    app.add_middleware(AccessControl, web=settings.web, db=db)
    # Added last, so outermost: a foreign Host is refused before anything else.
    app.add_middleware(HostCheck, allowlist=app.state.web.hosts)

    @app.get("/metrics", include_in_schema=False)
    def metrics(ctx: Context, request: Request) -> Response:
        """Prometheus metrics, read from the database now (see :mod:`dicom_node.web.metrics`)."""
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(ctx.registry), media_type=content_type)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("path", "query"))
            problems.append(f"{where}: {err.get('msg', 'invalid')}" if where else err["msg"])
        return JSONResponse({"detail": "; ".join(problems) or "invalid request"}, 422)

    @app.exception_handler(DatabaseUnavailable)
    async def database_down(_request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        LOGGER.warning("web: database error: %s", exc.__class__.__name__)
        LOGGER.debug("web: database error", exc_info=exc)
        return JSONResponse({"detail": "database unavailable; try again"}, 503)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, _exc: Exception) -> JSONResponse:
        # Starlette logs the exception (with traceback) after this answer.
        return JSONResponse({"detail": "internal error (see the node's log)"}, 500)

    return app
