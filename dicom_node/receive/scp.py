"""Storage and Verification SCP (PS3.4 Annex B and A.4) on a lean receive path.

One thread per association reads PDUs straight from its socket
(:mod:`dicom_node.protocol.upper_layer`), streams each C-STORE data set into a
temporary spool file as its fragments arrive, and answers each request with a
C-STORE-RSP (:mod:`dicom_node.protocol.dimse_command`).  Association negotiation
(A-ASSOCIATE-RQ decoding, presentation contexts, roles) uses pynetdicom's
codecs; every storage SOP class pynetdicom knows is accepted with every
transfer syntax, plus Verification.

A C-STORE is answered Success (0x0000) only after :class:`ReceivedStore` made
the file and its rows durable.  Each failure gets a status from
:mod:`dicom_node.protocol.status` with an Error Comment (0000,0902) and a log line;
nothing a peer sends takes the node down or touches other associations.

Sockets get ``TCP_NODELAY``, and ``TCP_QUICKACK`` is re-armed before each
read so that senders which leave Nagle on are not stalled by delayed ACKs.

What one peer can hold is bounded before it authenticates: connections in
total and per source address (each has one thread, so threads are bounded
too), the size of the A-ASSOCIATE-RQ and of each later PDU (near the
negotiated maximum), the command set, and time -- the ACSE phase has one
deadline (``acse_timeout``, PS3.8 9.1.6 ARTIM) and so does each DIMSE message
(``dimse_timeout``), besides the idle ``network_timeout``.  Whatever happens
to one connection, the accept loop goes on; :meth:`StorageSCP.listener_problem`
tells the health endpoint when it does not.

DICOM over TLS (PS3.15 B.9, :mod:`dicom_node.receive.tls`) is served on
``[node] tls_port`` beside the plain port (or alone, ``tls_only``); the
handshake runs in the association's thread under the ACSE deadline, and the
verified client certificate's subject is the association's TLS identity.
Established associations are bounded in total and per Calling AE Title
(``max_associations_per_ae``).

Audit (PS3.15 A.5): ``ASSOCIATION_ACCEPTED`` and ``ASSOCIATION_REJECTED`` per
association, and at its end one ``INSTANCES_STORED`` per study it stored
into -- nothing per instance.
"""

from __future__ import annotations

import ipaddress
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node import audit
from dicom_node.config import PeerSettings, Settings
from dicom_node.errors import StoreRejected
from dicom_node.protocol import status as st
from dicom_node.protocol.dimse_command import (
    C_ECHO_RQ,
    C_STORE_RQ,
    CommandSet,
    decode_command,
    encode_response,
)
from dicom_node.protocol.file_meta import encode_file_meta
from dicom_node.protocol.upper_layer import (
    A_ABORT,
    A_ASSOCIATE_RQ_TYPE,
    A_RELEASE_RQ,
    P_DATA_TF,
    AssociationRequest,
    DeadlineExceeded,
    PduError,
    PduReader,
    PduTooLarge,
    PeerClosed,
    abort_pdu,
    accept_pdu,
    ae_title_problem,
    iter_pdvs,
    p_data_pdu,
    raw_ae_titles,
    reject_pdu,
    release_rp_pdu,
)
from dicom_node.receive import tls as dicom_tls
from dicom_node.receive.header import DEFLATED_SYNTAXES
from dicom_node.receive.store_handler import (
    StoreRequest,
    check_command_uids,
    handle_store,
    log_refusal,
    status_for,
    watermark_reason,
)
from dicom_node.receive.uids import UidPolicy
from storage.received import InstanceRecord, ReceivedStore, StoreOutcome
from storage.spool import DataSetWriter

__all__ = ["AssociationStats", "StorageSCP", "supported_contexts"]

LOGGER = logging.getLogger(__name__)

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
_MAX_COMMAND_SET = 64 * 2**10
"""Longest command set (all its fragments); real ones have a few hundred bytes."""
_REFUSAL_LINGER_S = 2.0
"""How long a refused connection stays half-open so the peer reads the A-ASSOCIATE-RJ."""

# A-ASSOCIATE-RJ (result, source, reason), PS3.8 9.3.4 Table 9-21.
_RJ_LOCAL_LIMIT = (0x02, 0x03, 0x02)  # transient, presentation provider, local-limit-exceeded
_RJ_RQ_TOO_LONG = (0x01, 0x03, 0x02)  # permanent, presentation provider, local-limit-exceeded
_RJ_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service-user, calling-AE-title-not-recognized
_RJ_CALLED_AE = (0x01, 0x01, 0x07)  # permanent, service-user, called-AE-title-not-recognized
# A-ABORT reason (source 2, service provider), PS3.8 9.3.8 Table 9-26.
_ABORT_INVALID_PARAMETER = 0x06  # invalid-PDU-parameter value
_HEAD_BYTES = 256 * 2**10
"""How much of each data set is kept in memory to parse its header from; the
rest only goes to the spool file (headers longer than this are read back)."""


@dataclass
class StudyTally:
    """What one association stored into one study (its ``INSTANCES_STORED`` event)."""

    count: int = 0
    series: set[str] = field(default_factory=set)
    bytes: int = 0
    failed: int = 0


@dataclass
class AssociationStats:
    """Counters for one association, logged as a summary line at its end."""

    peer: str
    calling_ae: str = ""
    called_ae: str = ""
    started: float = field(default_factory=time.monotonic)
    instances: int = 0
    duplicates: int = 0
    failures: int = 0
    bytes: int = 0
    outcome: str = "open"
    tls: bool = False
    tls_version: str | None = None
    tls_identity: str | None = None
    studies: dict[str, StudyTally] = field(default_factory=dict)


# -- peers ---------------------------------------------------------------------------


def _peer_allowed(peers: list[PeerSettings], calling_ae: str, address: str) -> bool:
    for peer in peers:
        if peer.ae_title != calling_ae:
            continue
        if peer.host is None or _same_host(peer.host, address):
            return True
    return False


def _same_host(configured: str, address: str) -> bool:
    try:
        return ipaddress.ip_address(configured) == ipaddress.ip_address(address)
    except ValueError:
        try:
            infos = socket.getaddrinfo(configured, None)
        except OSError:
            return False
        return any(info[4][0] == address for info in infos)


class _Refusals:
    """Refused connections, kept half-open until the peer has read the A-ASSOCIATE-RJ.

    Closing a socket with the peer's A-ASSOCIATE-RQ still unread makes the
    kernel send a reset, which can destroy the rejection before the peer reads
    it; so the accept thread sends the RJ, shuts down its side, and closes
    the socket when the peer closes or after :data:`_REFUSAL_LINGER_S`.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parked: list[tuple[float, socket.socket]] = []

    def refuse(self, conn: socket.socket, rj: tuple[int, int, int]) -> None:
        """Send A-ASSOCIATE-RJ without blocking and park the socket."""
        try:
            conn.setblocking(False)
            conn.send(reject_pdu(*rj))
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            conn.close()
            return
        self._parked.append((time.monotonic() + _REFUSAL_LINGER_S, conn))
        while len(self._parked) > self.limit:
            self._parked.pop(0)[1].close()

    def reap(self) -> None:
        """Close the parked sockets whose peer closed or whose time is up."""
        now = time.monotonic()
        keep = []
        for deadline, conn in self._parked:
            if now < deadline and not _drained(conn):
                keep.append((deadline, conn))
            else:
                conn.close()
        self._parked = keep

    def close_all(self) -> None:
        for _deadline, conn in self._parked:
            conn.close()
        self._parked = []


def _drained(conn: socket.socket) -> bool:
    """Discard what the peer sent; True once it has closed (or the socket failed)."""
    try:
        while conn.recv(65536):
            pass
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


class _Throttled:
    """One log line per *interval_s* for a repeated event, with the count in between."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._last = 0.0
        self._suppressed = 0

    def warning(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += " (and %d more like it since the last such line)"
            args = (*args, self._suppressed)
        self._last, self._suppressed = now, 0
        LOGGER.warning(msg, *args)


def supported_contexts(*, deflated: bool = True) -> list[PresentationContext]:
    """Verification and every storage SOP class, each with every transfer syntax.

    ``deflated=False`` leaves out the Deflated syntaxes (PS3.5 A.5), so a
    context that proposes only those is rejected (PS3.8 7.1.1.13, result 4).
    """
    syntaxes = [ts for ts in ALL_TRANSFER_SYNTAXES if deflated or ts not in DEFLATED_SYNTAXES]
    contexts = [build_context(Verification, syntaxes)]
    contexts += [
        build_context(cx.abstract_syntax, syntaxes)  # type: ignore[arg-type]
        for cx in AllStoragePresentationContexts
    ]
    return contexts


# -- the listener ---------------------------------------------------------------------


class StorageSCP:
    """The node's DICOM listener: Verification + Storage SCP.

    Parameters
    ----------
    settings:
        The node's settings (``[node]`` and ``[[peers]]`` are used here).
    store:
        Where received instances become durable.
    on_stored:
        Optional callback ``(record, result)`` after each durable store, for
        embedding (the node's collector does not use it: it polls the
        database, so receivers in other processes feed it too); its
        exceptions are logged, never answered to the peer.
    listeners:
        Listening sockets bound by another process, ``(plain, TLS)`` with
        ``None`` for one not used: the receiver processes of
        :mod:`dicom_node.receive.receivers` accept from the node's own
        sockets, so a connection goes to whichever process is free to take it.
    """

    def __init__(
        self,
        settings: Settings,
        store: ReceivedStore,
        on_stored: Callable[[InstanceRecord, Any], None] | None = None,
        *,
        listeners: tuple[socket.socket | None, socket.socket | None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.on_stored = on_stored
        self.contexts = supported_contexts(deflated=settings.node.accept_deflated)
        # Built here so a bad certificate or key stops the start, not a client.
        self.tls_context: ssl.SSLContext | None = (
            dicom_tls.server_context(settings.node) if settings.node.tls_port else None
        )
        self._listener: socket.socket | None = None
        self._tls_listener: socket.socket | None = None
        self._inherited = listeners is not None
        if listeners is not None:
            self._listener, self._tls_listener = listeners
            for inherited in listeners:
                if inherited is not None:
                    inherited.setblocking(False)
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._associations: set[_Association] = set()
        self._refusals = _Refusals(settings.node.connection_limit)
        self._refusal_log = _Throttled()
        self._refusal_audit_at = 0.0
        self._refusal_audit_suppressed = 0

    # -- lifecycle ---------------------------------------------------------------
    def bind(self) -> tuple[socket.socket | None, socket.socket | None]:
        """Bind the configured ports (once); the ``(plain, TLS)`` sockets.

        The port answers once :meth:`start` -- here or in a receiver process
        the sockets were handed to -- listens and accepts.
        """
        node = self.settings.node
        if self._inherited or self._listener is not None or self._tls_listener is not None:
            return self._listener, self._tls_listener
        if not node.tls_only:
            self._listener = self._bind(node.port)
        if node.tls_port is not None:
            try:
                self._tls_listener = self._bind(node.tls_port)
            except OSError:
                if self._listener is not None:
                    self._listener.close()
                    self._listener = None
                raise
        return self._listener, self._tls_listener

    def start(self) -> None:
        """Listen on the configured address (non-blocking: accepts in a thread)."""
        node = self.settings.node
        if not self.settings.peers:
            LOGGER.warning(
                "no [[peers]] configured: accepting associations from any calling AE title"
            )
        for listener in self.bind():
            if listener is not None:
                listener.listen(128)  # again for sockets shared with other processes: harmless
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="dicom-accept", daemon=True
        )
        self._accept_thread.start()
        ports = [] if self._listener is None else [f"{node.host}:{self.port}"]
        if self._tls_listener is not None:
            ports.append(f"{node.host}:{self.tls_port} (TLS)")
        LOGGER.info(
            "listening as %s on %s (max PDU %d, max associations %d, "
            "max connections %d, %d per address)",
            node.ae_title,
            " and ".join(ports),
            node.max_pdu,
            node.max_associations,
            node.connection_limit,
            node.per_host_limit,
        )
        if self._tls_listener is not None:
            LOGGER.info(
                "DICOM TLS: TLS 1.2 or later, BCP 195 cipher suites, client certificate %s",
                "required"
                if node.tls_require_client_cert
                else ("verified when given" if node.tls_ca_file else "not asked for"),
            )

    def _bind(self, port: int) -> socket.socket:
        node = self.settings.node
        family = socket.AF_INET6 if ":" in node.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((node.host, port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    @property
    def port(self) -> int:
        """The plain port actually bound (useful with port 0)."""
        if self._listener is None:
            return self.settings.node.port
        return int(self._listener.getsockname()[1])

    @property
    def tls_port(self) -> int | None:
        """The TLS port bound (``None`` without TLS)."""
        if self._tls_listener is None:
            return self.settings.node.tls_port
        return int(self._tls_listener.getsockname()[1])

    def active_associations(self) -> int:
        """Established associations in progress."""
        with self._lock:
            return sum(1 for a in self._associations if a.established)

    def open_connections(self) -> int:
        """Connections being served, associated or not."""
        with self._lock:
            return len(self._associations)

    def listener_problem(self) -> str | None:
        """Why this listener cannot take associations now, or ``None`` if it can.

        The listening socket must be open and the accept thread alive (the
        web health endpoint reports this).
        """
        thread = self._accept_thread
        if thread is None:
            return "the DICOM listener has not started"
        node = self.settings.node
        if not node.tls_only and (self._listener is None or self._listener.fileno() == -1):
            return "the DICOM listening socket is closed"
        if node.tls_port is not None and (
            self._tls_listener is None or self._tls_listener.fileno() == -1
        ):
            return "the DICOM TLS listening socket is closed"
        if not thread.is_alive():
            return "the DICOM accept thread is not running"
        return None

    def stop_accepting(self) -> None:
        """Close the listening socket; associations in progress go on."""
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(5)
        for listener in (self._listener, self._tls_listener):
            if listener is not None:
                listener.close()
        self._listener = self._tls_listener = None

    def shutdown(self, grace_s: float | None = None) -> None:
        """Stop accepting, wait up to *grace_s* for associations, abort the rest."""
        grace = self.settings.node.shutdown_grace.total_seconds() if grace_s is None else grace_s
        self.stop_accepting()
        with self._lock:
            for assoc in self._associations:
                if not assoc.established:
                    assoc.close()  # never associated (e.g. a port probe)
        deadline = time.monotonic() + grace
        while self.active_associations() and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            remaining = list(self._associations)
        if remaining:
            LOGGER.warning(
                "aborting %d association(s) still open after %.0f s", len(remaining), grace
            )
            for assoc in remaining:
                assoc.abort()
            for assoc in remaining:
                assoc.thread.join(5)

    # -- accepting ----------------------------------------------------------------
    def _accept_loop(self) -> None:
        """Accept connections until stopped; nothing about one connection ends it."""
        listeners = [s for s in (self._listener, self._tls_listener) if s is not None]
        try:
            while not self._stopping.is_set():
                self._refusals.reap()
                if any(s.fileno() == -1 for s in listeners):
                    if not self._stopping.is_set():
                        LOGGER.error("DICOM listening socket closed: no more associations")
                    return
                try:
                    ready, _, _ = select.select(listeners, [], [], 0.2)
                except (OSError, ValueError):
                    continue  # a socket closed meanwhile: checked above
                for listener in ready:
                    self._accept_one(listener, tls=listener is self._tls_listener)
        finally:
            self._refusals.close_all()

    def _accept_one(self, listener: socket.socket, *, tls: bool) -> None:
        try:
            conn, addr = listener.accept()
        except (BlockingIOError, InterruptedError):
            return  # another receiver process took it
        except OSError as exc:
            if not self._stopping.is_set() and listener.fileno() != -1:
                self._refusal_log.warning("accept failed: %s", exc)  # e.g. out of descriptors
                time.sleep(0.1)
            return
        try:
            conn.setblocking(True)
            self._admit(conn, addr, tls=tls)
        except Exception:  # a bug for one connection must not stop the listener
            LOGGER.exception("could not hand over the connection from %s", addr)
            conn.close()

    def _admit(self, conn: socket.socket, addr: Any, *, tls: bool = False) -> None:
        """Start a thread for *conn*, or refuse it beyond the connection limits.

        A refused plain connection gets A-ASSOCIATE-RJ; a refused TLS one is
        closed (an RJ in clear text would mean nothing to a TLS client, and a
        handshake in this thread would let one client hold the accept loop).
        """
        assoc = _Association(self, conn, addr, tls=tls)
        with self._lock:
            over = self._over_limit(assoc.address)
            if over is None:
                self._associations.add(assoc)
        if over is None:
            try:
                assoc.thread.start()
                return
            except RuntimeError as exc:  # e.g. the process's thread or pid limit
                self._forget(assoc)
                over = (f"cannot start a thread ({exc})", "threads")
        reason, limit = over
        if tls:
            self._refusal_log.warning(
                "refused TLS connection from %s: %s (closed)", assoc.stats.peer, reason
            )
            conn.close()
        else:
            self._refusal_log.warning(
                "refused connection from %s: %s (A-ASSOCIATE-RJ transient, local limit exceeded)",
                assoc.stats.peer,
                reason,
            )
            self._refusals.refuse(conn, _RJ_LOCAL_LIMIT)
        # A flood of connections beyond the limits is audited once a second, with a count.
        now = time.monotonic()
        if now - self._refusal_audit_at < 1.0:
            self._refusal_audit_suppressed += 1
            return
        assoc.audit_rejected(reason, limit, suppressed=self._refusal_audit_suppressed or None)
        self._refusal_audit_at, self._refusal_audit_suppressed = now, 0

    def _over_limit(self, address: str) -> tuple[str, str] | None:
        """Why one more connection from *address* is too many, and the limit's name
        (call under the lock)."""
        node = self.settings.node
        if len(self._associations) >= node.connection_limit:
            return (
                f"{node.connection_limit} connections already open (max_connections)",
                "max_connections",
            )
        same = sum(1 for a in self._associations if a.address == address)
        if same >= node.per_host_limit:
            return (
                f"{same} connections already open from {address} (max_connections_per_host)",
                "max_connections_per_host",
            )
        return None

    def _forget(self, assoc: _Association) -> None:
        with self._lock:
            self._associations.discard(assoc)

    def _try_establish(self, assoc: _Association) -> tuple[str, str] | None:
        """Count *assoc* as established unless a limit is reached (atomically).

        Returns ``None`` when established, else why not and the limit's name:
        ``max_associations`` in all, ``max_associations_per_ae`` for its
        Calling AE Title.
        """
        node = self.settings.node
        calling = assoc.stats.calling_ae
        with self._lock:
            established = [a for a in self._associations if a.established]
            if len(established) >= node.max_associations:
                return (
                    f"{node.max_associations} associations already open (max_associations)",
                    "max_associations",
                )
            if node.max_associations_per_ae is not None:
                same = sum(1 for a in established if a.stats.calling_ae == calling)
                if same >= node.max_associations_per_ae:
                    return (
                        f"{same} associations already open from calling AE {calling!r} "
                        "(max_associations_per_ae)",
                        "max_associations_per_ae",
                    )
            assoc.established = True
            return None


def _ae_title_rejection(body: bytearray) -> tuple[tuple[int, int, int], str] | None:
    """A-ASSOCIATE-RJ for an invalid called or calling AE title (PS3.8 9.3.2, 9.3.4)."""
    called, calling = raw_ae_titles(body)
    problem = ae_title_problem(called)
    if problem is not None:
        return _RJ_CALLED_AE, f"invalid called AE title {called!r} ({problem})"
    problem = ae_title_problem(calling)
    if problem is not None:
        return _RJ_CALLING_AE, f"invalid calling AE title {calling!r} ({problem})"
    return None


class _Association:
    """One acceptor association: negotiation, then the DIMSE loop, in its own thread."""

    def __init__(
        self, scp: StorageSCP, conn: socket.socket, addr: Any, *, tls: bool = False
    ) -> None:
        self.scp = scp
        self.sock = conn
        self.address = str(addr[0])
        self.stats = AssociationStats(peer=f"{addr[0]}:{addr[1]}", tls=tls)
        self.established = False
        self.accepted: dict[int, PresentationContext] = {}
        self.thread = threading.Thread(
            target=self.run, name=f"assoc-{addr[0]}:{addr[1]}", daemon=True
        )
        self._closed = False
        self._send_lock = threading.Lock()
        self.reader = PduReader(conn, idle_s=scp.settings.node.network_timeout.total_seconds())
        # message being received
        self._command = bytearray()
        self._cmd: CommandSet | None = None
        self._context_id = 0
        self._writer: DataSetWriter | None = None
        self._head: list[bytes] = []
        self._head_size = 0
        self._data_size = 0
        self._meta = b""
        self._refusal: StoreRejected | None = None
        self._next_disk_check = 0
        self._uid_policy: UidPolicy | None = None
        self._uid_warned = False

    # -- socket helpers ----------------------------------------------------------
    def send(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()

    def abort(self, reason: int = 0x00) -> None:
        """A-ABORT (service provider, PS3.8 9.3.8) and close."""
        try:
            self.send(abort_pdu(0x02, reason))
        except OSError:
            pass
        self.stats.outcome = "aborted"
        self.close()

    def reject(self, rj: tuple[int, int, int], reason: str, limit: str | None = None) -> None:
        """A-ASSOCIATE-RJ (PS3.8 9.3.4) with one log line and an audit event; the
        connection closes after.  *limit* names the setting that was reached, if any."""
        LOGGER.warning(
            "rejected association from %s%s: %s", self.stats.peer, self._tls_note(), reason
        )
        self.audit_rejected(reason, limit)
        self.send(reject_pdu(*rj))

    def _tls_note(self) -> str:
        if not self.stats.tls:
            return ""
        return f" (TLS, {self.stats.tls_identity or 'no client certificate'})"

    # -- audit (PS3.15 A.5) --------------------------------------------------------
    def audit_rejected(
        self, reason: str, limit: str | None = None, *, suppressed: int | None = None
    ) -> None:
        """``ASSOCIATION_REJECTED``: the connection or association was refused.

        *suppressed* counts the like refusals not audited since the last one.
        """
        s = self.stats
        audit.auditor().record(
            audit.AuditEvent.ASSOCIATION_REJECTED,
            outcome=audit.Outcome.MINOR_FAILURE,
            actor=s.calling_ae or None,
            actor_kind="ae",
            address=self.address,
            reason=reason,
            limit=limit,
            called_ae=s.called_ae or None,
            tls=s.tls,
            tls_identity=s.tls_identity,
            tls_version=s.tls_version,
            similar_refusals_not_audited=suppressed,
        )

    def _audit_accepted(self) -> None:
        s = self.stats
        audit.auditor().record(
            audit.AuditEvent.ASSOCIATION_ACCEPTED,
            actor=s.calling_ae,
            actor_kind="ae",
            address=self.address,
            called_ae=s.called_ae,
            tls=s.tls,
            tls_identity=s.tls_identity,
            tls_version=s.tls_version,
        )

    def _audit_stored(self) -> None:
        """One ``INSTANCES_STORED`` per study this association stored into."""
        s = self.stats
        for study_uid, tally in s.studies.items():
            audit.auditor().record(
                audit.AuditEvent.INSTANCES_STORED,
                outcome=audit.Outcome.SUCCESS if not tally.failed else audit.Outcome.MINOR_FAILURE,
                actor=s.calling_ae,
                actor_kind="ae",
                address=self.address,
                study_instance_uid=study_uid,
                count=tally.count,
                series_instance_uids=sorted(tally.series),
                bytes=tally.bytes,
                failed=tally.failed,
                tls=s.tls,
                tls_identity=s.tls_identity,
            )

    # -- thread body -------------------------------------------------------------
    def run(self) -> None:
        node = self.scp.settings.node
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # ARTIM (PS3.8 9.1.6): the A-ASSOCIATE-RQ must arrive by then, counted
            # from the accept, whatever the pace of its bytes.
            self.reader.deadline = self.stats.started + node.acse_timeout.total_seconds()
            if self.stats.tls and not self._handshake(self.reader.deadline):
                return
            if self._negotiate():
                self.reader.deadline = None
                self.reader.phase_s = node.dimse_timeout.total_seconds()
                self._serve()
        except PeerClosed:
            if self.established and self.stats.outcome == "open":
                self.stats.outcome = "closed by peer"
        except DeadlineExceeded:
            self._on_deadline()
        except TimeoutError:
            LOGGER.warning(
                "association with %s idle for %.0f s (network_timeout); aborting",
                self.stats.peer,
                node.network_timeout.total_seconds(),
            )
            self.abort()
        except PduTooLarge as exc:
            self._on_too_large(exc)
        except PduError as exc:
            LOGGER.warning("invalid PDU from %s (%s); aborting", self.stats.peer, exc)
            if not self.established:
                self.audit_rejected(f"invalid PDU: {exc}")
            self.abort()
        except OSError as exc:
            if not self._closed:
                LOGGER.warning("connection with %s failed: %s", self.stats.peer, exc)
        except Exception:
            LOGGER.exception("association with %s failed; aborting", self.stats.peer)
            self.abort()
        finally:
            self._drop_partial()
            self.close()
            self.scp._forget(self)
            if self.established:
                self._log_summary()
                self._audit_stored()

    def _on_deadline(self) -> None:
        node = self.scp.settings.node
        if not self.established:
            # PS3.8 9.1.6: ARTIM expiry closes the transport connection, no A-ABORT.
            LOGGER.warning(
                "no association from %s within %.0f s (acse_timeout); closing",
                self.stats.peer,
                node.acse_timeout.total_seconds(),
            )
            self.close()
            return
        LOGGER.warning(
            "DIMSE message from %s not complete within %.0f s (dimse_timeout); aborting",
            self.stats.peer,
            node.dimse_timeout.total_seconds(),
        )
        self.abort()

    def _on_too_large(self, exc: PduTooLarge) -> None:
        if not self.established:
            self.reject(
                _RJ_RQ_TOO_LONG,
                f"first PDU (type 0x{exc.pdu_type:02X}) announces {exc.length} bytes, "
                f"more than max_associate_rq ({exc.limit})",
                "max_associate_rq",
            )
            self.close()
            return
        LOGGER.warning(
            "PDU of %d bytes from %s exceeds the negotiated maximum (%d); aborting",
            exc.length,
            self.stats.peer,
            exc.limit,
        )
        self.abort(_ABORT_INVALID_PARAMETER)

    def _handshake(self, deadline: float) -> bool:
        """The TLS handshake (PS3.15 B.9) within the ACSE deadline; False when it failed."""
        context = self.scp.tls_context
        assert context is not None
        try:
            tls_sock, session = dicom_tls.handshake(context, self.sock, deadline)
        except dicom_tls.ClosedBeforeHandshake:
            return False  # a port probe; a plain one is not logged either
        except dicom_tls.TlsFailure as exc:
            LOGGER.warning("refused TLS connection from %s: %s", self.stats.peer, exc)
            self.audit_rejected(str(exc), "tls")
            return False
        self.sock = tls_sock
        self.reader.sock = tls_sock
        self.stats.tls_version = session.version
        self.stats.tls_identity = session.identity
        LOGGER.info(
            "TLS from %s: %s, %s, client certificate %s",
            self.stats.peer,
            session.version,
            session.cipher,
            session.identity or "none",
        )
        return True

    def _negotiate(self) -> bool:
        """Read the A-ASSOCIATE-RQ and accept or reject it (PS3.8 7.1, 9.3.2-9.3.4)."""
        scp = self.scp
        node = scp.settings.node
        pdu_type, body = self.reader.read(node.max_associate_rq)
        if pdu_type != A_ASSOCIATE_RQ_TYPE:
            raise PduError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}")
        rejection = _ae_title_rejection(body)
        if rejection is not None:
            self.reject(*rejection)
            return False
        request = AssociationRequest.decode(body)
        calling, called = request.calling_ae_title, request.called_ae_title
        self.stats.calling_ae, self.stats.called_ae = calling, called
        if node.require_called_ae and called != node.ae_title:
            self.reject(
                _RJ_CALLED_AE,
                f"called AE title {called!r} is not {node.ae_title!r}",
                "require_called_ae",
            )
            return False
        if scp.settings.peers and not _peer_allowed(scp.settings.peers, calling, self.address):
            reason = f"unknown peer {calling!r} at {self.address} (not in [[peers]])"
            self.reject(_RJ_CALLING_AE, reason, "peers")
            return False
        over = scp._try_establish(self)
        if over is not None:
            self.reject(_RJ_LOCAL_LIMIT, *over)
            return False
        ac, self.accepted = accept_pdu(request, scp.contexts, node.max_pdu)
        self.send(ac)
        LOGGER.info(
            "association from %s at %s%s (%d presentation contexts accepted)",
            calling,
            self.stats.peer,
            self._tls_note(),
            len(self.accepted),
        )
        self._audit_accepted()
        return True

    def _serve(self) -> None:
        """The DIMSE loop: PDUs until release or abort (PS3.8 9.3.5-9.3.8).

        Each message (command and data set) must arrive within
        ``dimse_timeout`` of its first byte: the reader's deadline starts at
        the first byte of a PDU when none runs, and is cleared once no
        message is in progress.
        """
        # PS3.8 D.1: the peer must not exceed our Maximum Length Received; a little
        # slack for senders that count headers in it, an A-ABORT beyond
        # ([node] max_incoming_pdu, also the cap when max_pdu is 0).
        limit = self.scp.settings.node.incoming_pdu_limit
        sock = self.sock
        while True:
            if _QUICKACK is not None:
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            pdu_type, body = self.reader.read(limit)
            if pdu_type == P_DATA_TF:
                for context_id, mch, data in iter_pdvs(body):
                    self._on_pdv(context_id, mch, data)
                if self._cmd is None and not self._command:
                    self.reader.deadline = None  # no message in progress
            elif pdu_type == A_RELEASE_RQ:
                if self._cmd is not None:
                    LOGGER.warning(
                        "release requested in the middle of a message from %s", self.stats.peer
                    )
                # What this association stored is in the database once it is released.
                self.scp.store.flush_intake()
                self.send(release_rp_pdu())
                self.stats.outcome = "released"
                return
            elif pdu_type == A_ABORT:
                self.stats.outcome = "aborted by peer"
                return
            else:
                raise PduError(f"unexpected PDU type 0x{pdu_type:02X} after association")

    # -- DIMSE ---------------------------------------------------------------------
    def _on_pdv(self, context_id: int, mch: int, data: memoryview) -> None:
        if context_id not in self.accepted:
            raise PduError(f"PDV on presentation context {context_id}, which was not accepted")
        is_command, is_last = bool(mch & 0x01), bool(mch & 0x02)
        if is_command:
            if self._cmd is not None:
                raise PduError("command fragment while a data set was expected")
            if len(self._command) + len(data) > _MAX_COMMAND_SET:
                raise PduError(f"command set longer than {_MAX_COMMAND_SET} bytes")
            self._command += data
            if is_last:
                try:
                    cmd = decode_command(self._command)
                except ValueError as exc:
                    raise PduError(f"undecodable command set: {exc}") from exc
                self._command = bytearray()
                self._context_id = context_id
                if cmd.has_data_set:
                    self._cmd = cmd
                    self._begin_data(cmd, context_id)
                else:
                    self._dispatch(cmd, context_id)
            return
        if self._cmd is None or context_id != self._context_id:
            raise PduError("data fragment without a command on its presentation context")
        if self._writer is not None:
            self._write_fragment(data)
        if self._head_size < _HEAD_BYTES:
            chunk = bytes(data[: _HEAD_BYTES - self._head_size])
            self._head.append(chunk)
            self._head_size += len(chunk)
        self._data_size += len(data)
        if is_last:
            cmd, self._cmd = self._cmd, None
            self._dispatch(cmd, context_id)

    def _begin_data(self, cmd: CommandSet, context_id: int) -> None:
        self._head = []
        self._head_size = 0
        self._data_size = 0
        self._refusal = None
        self._next_disk_check = self.scp.settings.node.disk_check_mb * 2**20
        if cmd.command_field != C_STORE_RQ:
            self._writer = None  # a data set we do not keep (unexpected command)
            return
        cx = self.accepted[context_id]
        store = self.scp.store
        try:
            self._check_command_uids(cmd)
            if not store.spool.has_room_for(0):
                raise StoreRejected(st.OUT_OF_RESOURCES, watermark_reason(store))
        except StoreRejected as exc:
            # Read the data set to its end without keeping it; answer then.
            self._refusal = exc
            self._writer = None
            return
        self._meta = encode_file_meta(
            cmd.affected_sop_class_uid or str(cx.abstract_syntax),
            cmd.affected_sop_instance_uid or "0",
            str(cx.transfer_syntax[0]),
            self.stats.calling_ae,
        )
        try:
            memory = store.intake_memory_limit if store.intake is not None else 0
            self._writer = DataSetWriter(store.spool, memory)
            # The hash identifies the data set as sent; the meta we add is left out.
            self._writer.write(self._meta, hashed=False)
        except OSError as exc:
            LOGGER.error("cannot create a spool file: %s", exc)
            self._refuse_data(StoreRejected(st.OUT_OF_RESOURCES, "cannot write to the spool"))

    def _write_fragment(self, data: memoryview) -> None:
        """Append a data fragment to the spool file, within the size cap and the watermark.

        When either is exceeded (or the disk fails), the partial file is removed and
        the rest of the data set is read and dropped; the C-STORE is then answered
        0xA700 Out of Resources (PS3.4 B.2.3) and the association goes on.
        """
        assert self._writer is not None
        node = self.scp.settings.node
        spool = self.scp.store.spool
        size = self._data_size + len(data)
        if size > node.max_dataset_mb * 2**20:
            self._refuse_data(
                StoreRejected(
                    st.OUT_OF_RESOURCES,
                    f"data set larger than {node.max_dataset_mb} MB (max_dataset_mb)",
                )
            )
            return
        try:
            self._writer.write(data)
        except OSError as exc:
            LOGGER.error("cannot write to the spool: %s", exc)
            self._refuse_data(StoreRejected(st.OUT_OF_RESOURCES, "cannot write to the spool"))
            return
        if size >= self._next_disk_check:
            self._next_disk_check = size + node.disk_check_mb * 2**20
            if spool.free_bytes(max_age_s=0.0) < spool.min_free_bytes:
                self._refuse_data(
                    StoreRejected(st.OUT_OF_RESOURCES, watermark_reason(self.scp.store))
                )

    def _refuse_data(self, refusal: StoreRejected) -> None:
        """Drop the data set being received (its partial file too); answer *refusal*."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
            self.scp.store.spool.free_bytes(max_age_s=0.0)  # its space is free again
        if self._refusal is None:
            self._refusal = refusal

    def _peer_uid_policy(self) -> UidPolicy:
        """The UID policy for this association's peer (``[[peers]]`` entry, else ``[node]``)."""
        if self._uid_policy is None:
            settings = self.scp.settings
            policy = settings.node.uid_policy
            for peer in settings.peers:
                if peer.uid_policy is None or peer.ae_title != self.stats.calling_ae:
                    continue
                if peer.host is None or _same_host(peer.host, self.address):
                    policy = peer.uid_policy
                    break
            self._uid_policy = policy
        return self._uid_policy

    def _check_command_uids(self, cmd: CommandSet) -> None:
        """Refuse a C-STORE whose Affected UIDs are not UIDs, before its data set."""
        check_command_uids(
            cmd.affected_sop_class_uid, cmd.affected_sop_instance_uid, self._peer_uid_policy()
        )

    def _drop_partial(self) -> None:
        self._refusal = None
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    def _dispatch(self, cmd: CommandSet, context_id: int) -> None:
        if cmd.command_field == C_ECHO_RQ:
            self._respond(cmd, context_id, st.SUCCESS)
        elif cmd.command_field == C_STORE_RQ:
            status, comment = self._store(cmd, context_id)
            self._respond(cmd, context_id, status, comment)
        else:
            # PS3.7 C.4.2: Unrecognized operation.
            self._drop_partial()
            self._respond(cmd, context_id, 0x0211, "operation not supported by this node")

    def _respond(
        self, cmd: CommandSet, context_id: int, status: int, comment: str | None = None
    ) -> None:
        self.send(p_data_pdu(context_id, 0x03, encode_response(cmd, status, comment)))

    def _store(self, cmd: CommandSet, context_id: int) -> tuple[int, str | None]:
        """Hand the received data set to :func:`handle_store`; return its status."""
        writer, self._writer = self._writer, None
        head, self._head = self._head, []
        refusal, self._refusal = self._refusal, None
        if refusal is None and writer is None:
            refusal = StoreRejected(st.OUT_OF_RESOURCES, "cannot write to the spool")
        if refusal is not None:
            if writer is not None:
                writer.abort()
            self.stats.failures += 1
            log_refusal(self.stats.calling_ae, refusal)
            return refusal.status, refusal.reason[:64]
        assert writer is not None
        try:
            spooled = writer.finish()
        except OSError as exc:
            writer.abort()
            self.stats.failures += 1
            status, comment = status_for(exc)
            LOGGER.error("C-STORE from %s: spool file not closed: %s", self.stats.calling_ae, exc)
            return status, comment[:64]
        request = StoreRequest(
            affected_sop_class_uid=cmd.affected_sop_class_uid,
            affected_sop_instance_uid=cmd.affected_sop_instance_uid,
            transfer_syntax_uid=str(self.accepted[context_id].transfer_syntax[0]),
            spooled=spooled,
            meta_length=len(self._meta),
            head=b"".join(head),
            data_size=self._data_size,
            calling_ae=self.stats.calling_ae,
            called_ae=self.stats.called_ae,
            peer_address=self.address,
            uid_policy=self._peer_uid_policy(),
        )
        answer = handle_store(request, self.scp.store, on_stored=self.scp.on_stored)
        if answer.uid_warnings:
            # One WARNING per association; the rest at DEBUG (a legacy sender sends many).
            log = LOGGER.debug if self._uid_warned else LOGGER.warning
            self._uid_warned = True
            log(
                "C-STORE from %s accepted with invalid UID(s) (uid_policy = warn): %s",
                self.stats.calling_ae,
                answer.uid_warnings,
            )
        tally = None
        if answer.record is not None:
            study_uid = answer.record.study_instance_uid
            tally = self.stats.studies.get(study_uid)
            if tally is None:
                tally = self.stats.studies[study_uid] = StudyTally()
        if not answer.stored:
            self.stats.failures += 1
            if tally is not None:
                tally.failed += 1
            return answer.status, answer.comment
        self.stats.instances += 1
        self.stats.bytes += self._data_size
        if tally is not None and answer.record is not None:
            tally.count += 1
            tally.bytes += self._data_size
            tally.series.add(answer.record.series_instance_uid)
        if answer.outcome is not StoreOutcome.STORED:
            self.stats.duplicates += 1
        return answer.status, answer.comment

    def _log_summary(self) -> None:
        s = self.stats
        if s.outcome == "open":
            s.outcome = "closed"
        seconds = time.monotonic() - s.started
        LOGGER.info(
            "association %s from %s at %s: %d instance(s), %d duplicate(s), %d failure(s), "
            "%.1f MB in %.2f s",
            s.outcome,
            s.calling_ae,
            s.peer,
            s.instances,
            s.duplicates,
            s.failures,
            s.bytes / 1e6,
            seconds,
            extra={
                "calling_ae": s.calling_ae,
                "peer": s.peer,
                "instances": s.instances,
                "failures": s.failures,
                "bytes": s.bytes,
                "seconds": round(seconds, 3),
            },
        )
