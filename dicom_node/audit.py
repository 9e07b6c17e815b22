"""The audit trail: what the node did, and for whom (DICOM PS3.15 A.5, IHE ATNA).

Every part of the node records its events through one :class:`Auditor`::

    auditor.record(AuditEvent.ASSOCIATION_ACCEPTED, actor="CT01", actor_kind="ae",
                   address="10.0.0.7", tls_identity="CN=ct01.example.org")

Each process has one auditor, set with :func:`install` where the process is
assembled (``serve``, ``dicom-node worker``, CLI commands that change state)
and read with :func:`auditor` wherever an event happens; until one is
installed, :func:`auditor` returns one with no sinks, which records nothing.

An :class:`Auditor` never raises and never blocks its caller on a database
round trip: events go to a bounded queue that a background thread writes in
batches to each configured sink (the database table by default, and
optionally JSON lines and syslog, ``[audit]`` in ``config.toml``).  While the
database is unreachable the events wait (up to :data:`QUEUE_LIMIT`) and are
written when it is back.  :meth:`Auditor.flush` waits until everything
recorded so far is written; :meth:`Auditor.close` flushes and stops.

The event names are the node's; each maps to the DICOM audit message it
corresponds to (PS3.15 A.5.3, its EventID code from CID 400 and its
EventActionCode), so a site can translate the trail into ATNA messages.
No patient names, IDs or birth dates go into an event: studies are named by
their Study Instance UID.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from dicom_node.config import AuditSettings
from storage.audit import AuditEntry, AuditStore
from storage.db import Database

__all__ = [
    "AUDIT_SINKS",
    "AuditEvent",
    "AuditSink",
    "Auditor",
    "DatabaseSink",
    "JsonLinesSink",
    "Outcome",
    "SyslogSink",
    "auditor",
    "auditor_from_settings",
    "install",
]

LOGGER = logging.getLogger(__name__)

QUEUE_LIMIT = 10_000
"""Events kept in memory while a sink cannot be written; beyond it the oldest are
dropped (and the drop is logged)."""


class Outcome(int, Enum):
    """EventOutcomeIndicator (PS3.15 A.5.3.1, RFC 3881)."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


class AuditEvent(str, Enum):
    """The events the node audits (the value is the stored ``event`` name)."""

    NODE_STARTED = "node-started"
    NODE_STOPPED = "node-stopped"
    ASSOCIATION_ACCEPTED = "association-accepted"
    ASSOCIATION_REJECTED = "association-rejected"
    INSTANCES_STORED = "instances-stored"
    JOB_RUN = "job-run"
    RESULT_SENT = "result-sent"
    LOGIN = "login"
    LOGIN_FAILED = "login-failed"
    LOGOUT = "logout"
    ADMIN_ACTION = "admin-action"
    USER_CHANGED = "user-changed"
    ACCESS_DENIED = "access-denied"
    RETENTION_PURGE = "retention-purge"
    AUDIT_READ = "audit-read"

    @property
    def dicom_event(self) -> tuple[str, str]:
        """(EventID code value, code meaning) of PS3.16 CID 400 (scheme DCM)."""
        return _DICOM_EVENT[self][0]

    @property
    def action(self) -> str:
        """EventActionCode: C(reate), R(ead), U(pdate), D(elete) or E(xecute)."""
        return _DICOM_EVENT[self][1]


_DICOM_EVENT: dict[AuditEvent, tuple[tuple[str, str], str]] = {
    AuditEvent.NODE_STARTED: (("110100", "Application Activity"), "E"),
    AuditEvent.NODE_STOPPED: (("110100", "Application Activity"), "E"),
    AuditEvent.ASSOCIATION_ACCEPTED: (("110114", "User Authentication"), "E"),
    AuditEvent.ASSOCIATION_REJECTED: (("110113", "Security Alert"), "E"),
    AuditEvent.INSTANCES_STORED: (("110104", "DICOM Instances Transferred"), "C"),
    AuditEvent.JOB_RUN: (("110103", "DICOM Instances Accessed"), "E"),
    AuditEvent.RESULT_SENT: (("110104", "DICOM Instances Transferred"), "R"),
    AuditEvent.LOGIN: (("110114", "User Authentication"), "E"),
    AuditEvent.LOGIN_FAILED: (("110114", "User Authentication"), "E"),
    AuditEvent.LOGOUT: (("110114", "User Authentication"), "E"),
    AuditEvent.ADMIN_ACTION: (("110113", "Security Alert"), "E"),
    AuditEvent.USER_CHANGED: (("110113", "Security Alert"), "U"),
    AuditEvent.ACCESS_DENIED: (("110113", "Security Alert"), "E"),
    AuditEvent.RETENTION_PURGE: (("110105", "DICOM Study Deleted"), "D"),
    AuditEvent.AUDIT_READ: (("110101", "Audit Log Used"), "R"),
}


class AuditSink(Protocol):
    """Where audit events go; :meth:`write` may raise (the :class:`Auditor` retries)."""

    name: str

    def write(self, entries: Sequence[AuditEntry]) -> None:
        """Write *entries*, all or none."""

    def close(self) -> None:
        """Release what the sink holds."""


class DatabaseSink:
    """The ``audit_event`` table (:class:`storage.audit.AuditStore`)."""

    name = "database"

    def __init__(self, db: Database) -> None:
        self.store = AuditStore(db)

    def write(self, entries: Sequence[AuditEntry]) -> None:
        self.store.append(entries)

    def close(self) -> None:
        pass


def _json_line(entry: AuditEntry) -> str:
    payload = entry.as_dict()
    payload.pop("id", None)
    code, meaning = AuditEvent(entry.event).dicom_event
    payload["dicom_event_id"] = {"code": code, "scheme": "DCM", "meaning": meaning}
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str)


class JsonLinesSink:
    """Appends one JSON object a line to a file (fsync'd per batch)."""

    name = "jsonl"

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, entries: Sequence[AuditEntry]) -> None:
        text = "".join(_json_line(e) + "\n" for e in entries)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    def close(self) -> None:
        pass


class SyslogSink:
    """RFC 5424 messages with a JSON body to a syslog collector (UDP, TCP or a local socket)."""

    name = "syslog"

    def __init__(self, address: str, facility: str = "authpriv") -> None:
        target: str | tuple[str, int]
        kind = socket.SOCK_DGRAM
        if address.startswith("/"):
            target = address
        else:
            scheme, _, rest = address.partition("://")
            host, _, port = rest.rpartition(":")
            target = (host.strip("[]"), int(port))
            kind = socket.SOCK_STREAM if scheme == "tcp" else socket.SOCK_DGRAM
        self.handler = logging.handlers.SysLogHandler(
            address=target,
            facility=logging.handlers.SysLogHandler.facility_names[facility],
            socktype=kind,
        )
        self.handler.ident = f"1 - {socket.gethostname()} dicom-node {os.getpid()} audit - "
        self.handler.append_nul = False

    def write(self, entries: Sequence[AuditEntry]) -> None:
        for entry in entries:
            level = logging.INFO if entry.outcome == 0 else logging.WARNING
            line = _json_line(entry)
            record = logging.LogRecord("dicom_node.audit", level, "", 0, line, (), None)
            self.handler.emit(record)

    def close(self) -> None:
        self.handler.close()


AUDIT_SINKS: dict[str, Callable[[AuditSettings, Database], AuditSink | None]] = {
    "database": lambda s, db: DatabaseSink(db) if s.database else None,
    "jsonl": lambda s, db: JsonLinesSink(s.jsonl_file) if s.jsonl_file else None,
    "syslog": lambda s, db: SyslogSink(s.syslog, s.syslog_facility) if s.syslog else None,
}
"""Sink types by name: each makes its sink from ``[audit]``, or ``None`` when not configured."""


class Auditor:
    """Records audit events to its sinks from a background thread (module docstring).

    Parameters
    ----------
    sinks:
        Where events go; each gets every event.
    node:
        The recording process's name (``host:pid`` by default).
    """

    def __init__(self, sinks: Sequence[AuditSink], *, node: str | None = None) -> None:
        self.sinks = list(sinks)
        self.node = node or f"{socket.gethostname()}:{os.getpid()}"
        self._queue: queue.Queue[AuditEntry | None] = queue.Queue()
        self._backlog: list[list[AuditEntry]] = [[] for _ in self.sinks]
        self._dropped = 0
        self._written = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def record(
        self,
        event: AuditEvent,
        *,
        outcome: Outcome | int = Outcome.SUCCESS,
        actor: str | None = None,
        actor_kind: str = "node",
        address: str | None = None,
        study_instance_uid: str | None = None,
        **detail: Any,
    ) -> None:
        """Queue one event; never raises, never waits on a sink."""
        if not self.sinks or self._closed:
            return
        try:
            kind = AuditEvent(event)
            entry = AuditEntry(
                event=kind.value,
                action=kind.action,
                outcome=int(outcome),
                actor=actor,
                actor_kind=actor_kind,
                address=address,
                node=self.node,
                study_instance_uid=study_instance_uid,
                detail={k: v for k, v in detail.items() if v is not None},
            )
        except ValueError:
            LOGGER.exception("not an audit event: %r", event)
            return
        self._start()
        self._queue.put(entry)

    def _busy(self) -> bool:
        return self._queue.unfinished_tasks > 0 or any(self._backlog)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every event recorded so far is written; False when time ran out."""
        deadline = time.monotonic() + timeout_s
        with self._written:
            while self._busy():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._written.wait(min(left, 0.2))
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush (bounded by *timeout_s*), stop the thread and close the sinks."""
        if self._closed:
            return
        self.flush(timeout_s)
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout_s)
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:  # noqa: BLE001 - closing must not fail the caller
                LOGGER.warning("audit sink %s did not close cleanly", sink.name, exc_info=True)

    # -- the writer thread ---------------------------------------------------
    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self._thread.start()

    def _take(self, timeout: float | None) -> tuple[list[AuditEntry], int, bool]:
        """The events now queued (waiting up to *timeout* for the first), how many
        queue items were taken, and whether to stop."""
        batch: list[AuditEntry] = []
        taken = 0
        stop = False
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return batch, taken, stop
        while True:
            taken += 1
            if item is None:
                stop = True
            else:
                batch.append(item)
            if len(batch) >= 500:
                break
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        return batch, taken, stop

    def _run(self) -> None:
        delay = 0.2
        while True:
            batch, taken, stop = self._take(delay if any(self._backlog) else None)
            for backlog in self._backlog:
                backlog.extend(batch)
            for _ in range(taken):
                self._queue.task_done()
            delay = 0.2 if self._write_backlogs() else min(delay * 2, 10.0)
            with self._written:
                self._written.notify_all()
            if stop:
                return

    def _write_backlogs(self) -> bool:
        """Write each sink's backlog; False when one of them could not be written."""
        ok = True
        for sink, backlog in zip(self.sinks, self._backlog, strict=True):
            if not backlog:
                continue
            try:
                sink.write(backlog)
            except Exception as exc:  # noqa: BLE001 - a sink must not stop the trail
                ok = False
                LOGGER.warning(
                    "audit sink %s cannot be written (%s: %s); %d event(s) wait",
                    sink.name, exc.__class__.__name__, exc, len(backlog),
                )
                if len(backlog) > QUEUE_LIMIT:
                    over = len(backlog) - QUEUE_LIMIT
                    del backlog[:over]
                    self._dropped += over
                    LOGGER.error(
                        "audit sink %s: over %d events wait, %d oldest dropped so far",
                        sink.name, QUEUE_LIMIT, self._dropped,
                    )
                continue
            backlog.clear()
        return ok



def auditor_from_settings(settings: AuditSettings, db: Database) -> Auditor:
    """The :class:`Auditor` of a node process, with every sink ``[audit]`` configures."""
    sinks = [s for make in AUDIT_SINKS.values() if (s := make(settings, db)) is not None]
    return Auditor(sinks)


_NULL = Auditor([])
_installed: Auditor = _NULL


def install(new: Auditor | None) -> Auditor:
    """Make *new* this process's auditor (``None``: none); returns the one it replaces."""
    global _installed
    old, _installed = _installed, (new if new is not None else _NULL)
    if new is not None:
        # What is still queued when the process exits is written first (bounded).
        atexit.register(new.close, 5.0)
    return old


def auditor() -> Auditor:
    """This process's auditor (one that records nothing until :func:`install`)."""
    return _installed
