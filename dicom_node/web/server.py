"""Running the web application with uvicorn in a background thread of the node."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from dicom_node.config import Settings, WebSettings
from dicom_node.errors import DicomNodeError
from dicom_node.web.app import create_app
from dicom_node.web.hosts import HostAllowlist
from storage.db import Database, DatabaseError
from storage.received import ReceivedStore
from storage.users import UserStore

__all__ = ["WebServer", "WebServerError", "refuse_open_listener"]

LOGGER = logging.getLogger(__name__)


class WebServerError(DicomNodeError):
    """The web server could not start (address in use, not allowed, ...)."""


def _is_loopback(host: str) -> bool:
    """Whether *host* (a name or an address) only listens on loopback."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refuse_open_listener(web: WebSettings, users: int = 0) -> None:
    """Refuse to serve beyond loopback while the web surface would be open.

    It is open with no ``[web] token``, no ``[web] trusted_proxy_header`` and
    no enabled user (*users*, :meth:`storage.users.UserStore.count`): then
    the dashboard and API would show studies to, and take job retries from,
    whoever reaches the port.  Any one of the three closes it
    (:mod:`dicom_node.web.access`).

    Raises
    ------
    WebServerError
        ``web.host`` is not a loopback address or name and the surface is open.
    """
    closed = web.token is not None or bool(web.trusted_proxy_header) or users > 0
    if not closed and not _is_loopback(web.host):
        raise WebServerError(
            f"[web] host = {web.host!r} listens beyond loopback, and there is neither a user "
            "nor a [web] token: the dashboard and API would be open to whoever reaches the "
            "port. Add a user (dicom-node users add NAME --role operator), or set [web] token "
            "(at least 16 characters, e.g. in DICOM_NODE_WEB__TOKEN), or bind "
            '[web] host = "127.0.0.1"'
        )


def _listen(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A listening TCP socket on *host*:*port* (IPv4 or IPv6 as *host* resolves)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _canon, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


class WebServer:
    """The dashboard, REST API and ``/metrics`` served by uvicorn in a thread.

    The socket is bound in :meth:`start`, so a port in use fails there
    (:class:`WebServerError`) rather than in the background.  uvicorn does
    not configure logging (the CLI does) and writes no access log.

    Access (:mod:`dicom_node.web.access`): people log in as local users
    (``dicom-node users add``) or come through a trusted proxy's user header;
    machines send ``[web] token``.  With no user, no token and no proxy
    header the surface is open, as a node on its own machine has always
    been: the default bind address is loopback, and :meth:`start` refuses
    any other until a user exists or a token or proxy header is set
    (:func:`refuse_open_listener`), since beyond loopback an open console
    would show studies to, and take retries from, anybody on the network.
    Users added while the node runs take effect at once (the open surface
    closes with the first).  Requests must name an allowed host
    (:mod:`dicom_node.web.hosts`).

    Parameters
    ----------
    settings:
        ``settings.web.host`` / ``settings.web.port`` say where to listen.
    db:
        The node's database (not disposed by :meth:`stop`).
    store:
        The node's received store, for the study queries (optional).
    app:
        Serve this application instead of ``create_app(settings, db, store=store)``.
    shutdown_grace_s:
        How long :meth:`stop` lets requests in flight finish.
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        store: ReceivedStore | None = None,
        app: FastAPI | None = None,
        shutdown_grace_s: float = 5.0,
    ) -> None:
        self.web_settings = settings.web
        self.host = settings.web.host
        self.port = settings.web.port
        self.token_set = settings.web.token is not None
        self.db = db
        self.hosts = HostAllowlist.from_settings(settings.web)
        self.app = app if app is not None else create_app(settings, db, store=store)
        self.shutdown_grace_s = shutdown_grace_s
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the server, e.g. ``http://127.0.0.1:8080``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> None:
        """Listen and serve in a daemon thread; returns once requests are answered.

        Raises
        ------
        WebServerError
            The address is beyond loopback without ``[web] token``, cannot be
            bound, or uvicorn did not come up in *timeout* s.
        """
        if self._thread is not None:
            raise RuntimeError("web server already started")
        refuse_open_listener(self.web_settings, self._users())
        try:
            sock = _listen(self.host, self.port)
        except OSError as exc:
            raise WebServerError(
                f"web server cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from exc
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            log_config=None,  # the CLI configures logging, not a library
            log_level=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=max(1, round(self.shutdown_grace_s)),
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="web", daemon=True
        )
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise WebServerError(f"web server on {self.url} did not start")
            time.sleep(0.01)
        users = self._users()
        parts = [f"{users} user(s)"] if users else []
        if self.token_set:
            parts.append("token required")
        if self.web_settings.trusted_proxy_header:
            parts.append(f"proxy header {self.web_settings.trusted_proxy_header}")
        access = ", ".join(parts) if parts else "no authentication"
        LOGGER.info(
            "dashboard, REST API and /metrics on %s/ (%s; hosts: %s)",
            self.url,
            access,
            self.hosts.describe(),
        )
        if self.hosts.any_host and not self.token_set and not users:
            LOGGER.warning(
                "[web] allowed_hosts has '*' and there is no [web] token: pages on other "
                "sites can reach the node through the browsers of its users (DNS rebinding)"
            )

    def _users(self) -> int:
        """How many enabled users there are (0 when the database cannot say)."""
        try:
            return UserStore(self.db).count()
        except DatabaseError:
            return 0

    def stop(self, timeout: float = 10.0) -> None:
        """Stop listening, let requests in flight finish (bounded), join the thread.

        Idempotent.  The port is free when this returns.
        """
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            LOGGER.warning("web server did not stop in %.0f s; forcing it", timeout)
            server.force_exit = True
            thread.join(5)
        LOGGER.info("web server stopped")
