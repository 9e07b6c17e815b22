"""The node's web surface: a REST API under ``/api/``, Prometheus metrics under
``/metrics`` and a small read-only HTML dashboard at ``/``.

Open unless ``[web] token`` is set (:mod:`.auth`); it listens on loopback
by default (``[web] host = "127.0.0.1"``), and beyond only with a token.
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
