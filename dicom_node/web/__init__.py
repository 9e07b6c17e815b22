"""The node's web surface: a REST API under ``/api/``, Prometheus metrics under
``/metrics``, an HTML dashboard at ``/`` and the audit trail at ``/audit``.

Who may see and change what: :mod:`.access` (users' sessions from
``/login``, :mod:`.login`; a trusted proxy's user header; ``[web] token`` for
machines, :mod:`.auth`) and :mod:`.guard` (roles, CSRF, audit events).  With
no user, no token and no proxy header it is open, on loopback only.
Requests must name an allowed host (:mod:`.hosts`, ``[web] allowed_hosts``).

The node runs it with::

    web = WebServer(settings, store.db, store=store)
    web.start()
    ...
    web.stop()
"""

from dicom_node.web.app import create_app
from dicom_node.web.metrics import DatabaseCollector, metrics_registry
from dicom_node.web.server import WebServer, WebServerError

__all__ = [
    "DatabaseCollector",
    "WebServer",
    "WebServerError",
    "create_app",
    "metrics_registry",
]
