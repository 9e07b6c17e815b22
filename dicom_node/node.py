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

from dicom_node.collect import Collector
from dicom_node.config import Settings
from dicom_node.deliver import Sender
from dicom_node.receive.receivers import ReceiverPool
from dicom_node.receive.scp import StorageSCP
from dicom_node.receive.store import open_store
from dicom_node.web import WebServer
from dicom_node.work.executor import make_executor

__all__ = ["Node"]

LOGGER = logging.getLogger(__name__)


class Node:
    """The whole node in one process.

    Parameters
    ----------
    settings:
        Validated settings.
    log_level, json_logs:
        How the CLI set up logging; extra receiver processes log the same way.
    """

    def __init__(
        self, settings: Settings, *, log_level: str = "INFO", json_logs: bool = False
    ) -> None:
        self.settings = settings
        self.store = open_store(settings)
        multi = settings.node.receivers > 1
        self.scp = StorageSCP(settings, self.store, reuse_port=multi)
        self.receivers = ReceiverPool(settings, log_level, json_logs)
        self._stop = threading.Event()
        self.sender = Sender(settings, self.store.db)
        self.workers = make_executor(settings, self.store.db, on_idle=self.sender.wake)
        self.collector = Collector(
            self.store.db,
            settings,
            poll_s=settings.worker.poll_interval_s,
            on_jobs=self.workers.wake,
        )
        self.web = (
            WebServer(settings, self.store.db, store=self.store) if settings.web.enabled else None
        )
        if self.web is not None:  # /api/health reports the DICOM listener's state
            self.web.app.state.dicom_listener = self.scp.listener_problem
        self._collector_stop = threading.Event()
        self._collector_thread = threading.Thread(
            target=self.collector.run, args=(self._collector_stop,), name="collector", daemon=True
        )

    def start(self) -> None:
        """Start listening (non-blocking), with the extra receiver processes.

        The extra receivers come up first, so that once the port answers
        every receiver is ready.  The web server starts first, so a busy web
        port fails before any DICOM port opens.
        """
        if self.web is not None:
            self.web.start()
        self.receivers.start()
        self.scp.start()
        self.workers.start()
        self.sender.start()
        self._collector_thread.start()

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
        grace = self.settings.node.shutdown_grace.total_seconds()
        stopper = threading.Thread(target=self.receivers.stop, args=(grace + 5,))
        stopper.start()
        self.scp.shutdown()
        stopper.join()
        self._collector_stop.set()
        self._collector_thread.join(timeout=10)
        self.workers.stop()
        self.sender.stop()
        self.store.db.dispose()
        LOGGER.info("stopped")
