"""Extra receiver processes that share the DICOM port (``[node] receivers``).

pynetdicom-style receiving is bound by Python's global interpreter lock near
one core per process.  With ``receivers = N`` the node runs N-1 additional
processes, each with its own :class:`~dicom_node.receive.scp.StorageSCP`
accepting from the node's own listening sockets (the plain port and the TLS
port, ``[node] tls_port``), handed over when the process starts.  Every
process waits on the same listen queue, so a new connection goes to a process
that is free to accept it: four associations land two and two on two
processes, where ``SO_REUSEPORT``'s hash of the address put three on one
process as often as not.  Each process installs its own auditor
(:mod:`dicom_node.audit`), so its associations are audited like the main
process's.  They share the spool and the database (SQLite in WAL mode copes
with several writer processes; PostgreSQL is made for it); each has its own
intake journal.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
import time
from multiprocessing.process import BaseProcess
from typing import Any

from dicom_node.config import Settings

__all__ = ["ReceiverPool"]

LOGGER = logging.getLogger(__name__)


def _receiver_main(
    settings: Settings,
    log_level: str,
    log_json: bool,
    index: int,
    ready: Any,
    listeners: tuple[socket.socket | None, socket.socket | None],
) -> None:
    """Entry point of one extra receiver process."""
    from dicom_node import audit
    from dicom_node.logs import configure_logging
    from dicom_node.receive.scp import StorageSCP
    from dicom_node.receive.store import open_store

    configure_logging(log_level, log_json, phi=settings.log.phi)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    store = open_store(
        settings, upgrade=False, clean_temp=False, intake_name=f"receiver-{index}"
    )
    auditor = audit.auditor_from_settings(settings.audit, store.db)
    audit.install(auditor)
    scp = StorageSCP(settings, store, listeners=listeners)
    scp.start()
    LOGGER.info("receiver process %d ready", index)
    ready.set()
    while not stop.wait(0.5):
        pass
    scp.shutdown()
    store.stop_intake()
    auditor.close()
    audit.install(None)
    store.db.dispose()


class ReceiverPool:
    """Starts and stops the extra receiver processes.

    Parameters
    ----------
    settings:
        The node's settings; ``settings.node.receivers - 1`` processes are run.
    """

    def __init__(self, settings: Settings, log_level: str = "INFO", log_json: bool = False) -> None:
        self.settings = settings
        self.log_level = log_level
        self.log_json = log_json
        self.processes: list[BaseProcess] = []

    def start(
        self,
        listeners: tuple[socket.socket | None, socket.socket | None],
        timeout_s: float = 120.0,
    ) -> None:
        """Start the processes on *listeners* (the node's bound ``(plain, TLS)``
        sockets, see :meth:`StorageSCP.bind`) and wait until each one accepts.

        Raises
        ------
        RuntimeError
            When a receiver exits or does not become ready in time.
        """
        ctx = multiprocessing.get_context("spawn")
        readies = []
        for index in range(1, self.settings.node.receivers):
            ready = ctx.Event()
            proc = ctx.Process(
                target=_receiver_main,
                args=(self.settings, self.log_level, self.log_json, index, ready, listeners),
                name=f"dicom-node-receiver-{index}",
                daemon=False,
            )
            proc.start()
            self.processes.append(proc)
            readies.append((proc, ready))
        deadline = time.monotonic() + timeout_s
        for proc, ready in readies:
            while not ready.wait(0.2):
                if not proc.is_alive() or time.monotonic() > deadline:
                    self.stop(5)
                    raise RuntimeError(f"receiver process {proc.name} failed to start")
        if self.processes:
            LOGGER.info("started %d extra receiver process(es)", len(self.processes))

    def stop(self, timeout_s: float) -> None:
        """SIGTERM every receiver, wait up to *timeout_s*, then kill what is left."""
        for proc in self.processes:
            if proc.is_alive() and proc.pid is not None:
                proc.terminate()
        for proc in self.processes:
            proc.join(timeout_s)
            if proc.is_alive():
                LOGGER.warning("receiver %s did not stop in time; killing it", proc.name)
                proc.kill()
                proc.join(5)
        self.processes = []
