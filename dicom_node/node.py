"""Assembling a running node from settings: database, spool, SCP, collector, job
executor (local worker pool or Celery), sender and the web server (dashboard,
REST API, /metrics).

``dicom-node serve`` is a thin wrapper around :class:`Node`.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from dicom_node import audit
from dicom_node.collect import Collector
from dicom_node.config import Settings
from dicom_node.deliver import Sender
from dicom_node.receive.receivers import ReceiverPool
from dicom_node.receive.scp import StorageSCP
from dicom_node.receive.store import open_store
from dicom_node.retention import RetentionLoop
from dicom_node.web import WebServer
from dicom_node.work.executor import JobExecutor, make_executor

__all__ = ["ROLES", "Node", "parse_roles"]

LOGGER = logging.getLogger(__name__)

ROLES = ("receiver", "collector", "worker", "sender", "web")
"""What one process may do; ``serve --role`` picks some (default: all).

``receiver``: the Storage SCP (and ``[node] receivers`` processes);
``collector``: completions, routing and job creation, and with ``[worker]
executor = "celery"`` publishing due jobs; ``worker``: the local worker
threads (``executor = "local"``; Celery's workers are ``dicom-node worker``);
``sender``: deliveries; ``web``: dashboard, REST API and ``/metrics``.  Every
role coordinates through the database only, so each can run in its own
processes on its own hosts, given one database and a shared spool and
results folder."""


def parse_roles(text: str, executor: str = "local") -> frozenset[str]:
    """The roles of ``serve --role`` (comma-separated names or ``all``).

    Raises
    ------
    ValueError
        An unknown role, none, or ``worker`` alone with the Celery executor.
    """
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("no role given")
    if "all" in names:
        return frozenset(ROLES)
    unknown = sorted(set(names) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown role {', '.join(unknown)}; roles: {', '.join(ROLES)} or all")
    roles = frozenset(names)
    if executor == "celery" and roles == {"worker"}:
        raise ValueError(
            'with [worker] executor = "celery" jobs run in `dicom-node worker` processes'
        )
    return roles


class Node:
    """The node's roles in one process (all of them by default).

    Parameters
    ----------
    settings:
        Validated settings.
    log_level, json_logs:
        How the CLI set up logging; extra receiver processes log the same way.
    roles:
        The :data:`ROLES` this process plays.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        log_level: str = "INFO",
        json_logs: bool = False,
        roles: frozenset[str] = frozenset(ROLES),
    ) -> None:
        self.settings = settings
        self.roles = roles
        # Only a receiver cleans its temporary files and reconciles the spool.
        self.store = open_store(
            settings,
            clean_temp="receiver" in roles,
            intake_name="main" if "receiver" in roles else None,
        )
        db = self.store.db
        self.auditor = audit.auditor_from_settings(settings.audit, db)
        audit.install(self.auditor)
        self._stop = threading.Event()
        self.scp: StorageSCP | None = None
        self.receivers: ReceiverPool | None = None
        if "receiver" in roles:
            self.scp = StorageSCP(settings, self.store)
            self.receivers = ReceiverPool(settings, log_level, json_logs)
        self.sender = Sender(settings, db) if "sender" in roles else None
        # The local pool runs jobs (worker role); the Celery executor hands them
        # out (collector role).
        local = settings.worker.executor == "local"
        self.workers: JobExecutor | None = None
        if ("worker" in roles) if local else ("collector" in roles):
            self.workers = make_executor(
                settings, db, on_idle=self.sender.wake if self.sender else None
            )
        self.collector: Collector | None = None
        if "collector" in roles:
            self.collector = Collector(
                db,
                settings,
                poll_s=settings.worker.poll_interval_s,
                on_jobs=self.workers.wake if self.workers else None,
            )
        self.retention = (
            RetentionLoop(settings, db)
            if "collector" in roles and settings.retention.enabled
            else None
        )
        self.web = (
            WebServer(settings, db, store=self.store)
            if settings.web.enabled and "web" in roles
            else None
        )
        if self.web is not None and self.scp is not None:
            # /api/health reports the DICOM listener's state
            self.web.app.state.dicom_listener = self.scp.listener_problem
            self.web.app.state.live_associations = self.scp.active_associations
        self._collector_stop = threading.Event()
        self._collector_thread = (
            threading.Thread(
                target=self.collector.run,
                args=(self._collector_stop,),
                name="collector",
                daemon=True,
            )
            if self.collector is not None
            else None
        )

    def start(self) -> None:
        """Start listening (non-blocking), with the extra receiver processes.

        The node binds its DICOM ports first; the extra receivers accept from
        those sockets and come up before this process, so the port answers
        once a receiver is ready.  The web server starts first, so a busy web
        port fails before any DICOM port opens.
        """
        LOGGER.info("roles: %s", ", ".join(r for r in ROLES if r in self.roles))
        self.auditor.record(
            audit.AuditEvent.NODE_STARTED,
            roles=sorted(self.roles),
            ae_title=self.settings.node.ae_title,
            port=(
                None
                if "receiver" not in self.roles or self.settings.node.tls_only
                else self.settings.node.port
            ),
            tls_port=self.settings.node.tls_port if "receiver" in self.roles else None,
        )
        if self.web is not None:
            self.web.start()
        if self.receivers is not None and self.scp is not None:
            self.receivers.start(self.scp.bind())
            self.scp.start()
        if self.workers is not None:
            self.workers.start()
        if self.sender is not None:
            self.sender.start()
        if self._collector_thread is not None:
            self._collector_thread.start()
        if self.retention is not None:
            self.retention.start()

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """Ask the node to stop (signal handler)."""
        if signum is not None:
            LOGGER.info("received %s: shutting down", signal.Signals(signum).name)
        self._stop.set()

    def run_forever(self) -> None:
        """Start, serve until SIGTERM/SIGINT, then shut down cleanly."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.start()
        try:
            while not self._stop.wait(0.5):
                pass
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop accepting, let associations finish (bounded), close the database."""
        if self.web is not None:
            self.web.stop()
        if self.receivers is not None and self.scp is not None:
            grace = self.settings.node.shutdown_grace.total_seconds()
            stopper = threading.Thread(target=self.receivers.stop, args=(grace + 5,))
            stopper.start()
            self.scp.shutdown()
            stopper.join()
        self.store.stop_intake()  # what was acknowledged, into the spool and the database
        if self._collector_thread is not None:
            self._collector_stop.set()
            self._collector_thread.join(timeout=10)
        if self.retention is not None:
            self.retention.stop()
        if self.workers is not None:
            self.workers.stop()
        if self.sender is not None:
            self.sender.stop()
        self.auditor.record(audit.AuditEvent.NODE_STOPPED, roles=sorted(self.roles))
        self.auditor.close()
        if audit.auditor() is self.auditor:
            audit.install(None)
        self.store.db.dispose()
        LOGGER.info("stopped")
