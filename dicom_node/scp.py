"""Storage and Verification SCP (PS3.4 Annex B and A.4) on pynetdicom.

The C-STORE handler does only this: parse the header (no pixel decoding),
validate it, write the encoded bytes to a fsync'd temporary file, move it into
the spool and commit the rows (:class:`storage.received.ReceivedStore`), then
answer.  Success (0x0000) is returned only after both are durable.  Every
failure is answered with a status from :mod:`dicom_node.status` and an Error
Comment (0000,0902) that says why, and is logged; no handler error takes the
node down or touches other associations.

Network tuning (see the project's performance notes): accepted sockets get
``TCP_NODELAY``, and ``TCP_QUICKACK`` is re-armed before each read so senders
that do not disable Nagle are not stalled by delayed ACKs; PDUs are read with
large ``recv_into`` calls instead of pynetdicom's 4 KiB reads.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from io import BytesIO
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket

from dicom_node import status as st
from dicom_node.config import PeerSettings, Settings
from dicom_node.errors import StoreRejected
from storage.received import DuplicateAction, InstanceRecord, ReceivedStore, StoreOutcome

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.transport import ThreadedAssociationServer

__all__ = ["StorageSCP", "AssociationStats", "header_record"]

LOGGER = logging.getLogger(__name__)

_PREAMBLE = b"\x00" * 128 + b"DICM"

# Attributes kept as JSON on the series row, for routing rules on any keyword.
_SKIP_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN", "SQ", "PN"}
_KEEP_PATIENT = {0x00101010, 0x00100040, 0x00101020, 0x00101030}  # age, sex, size, weight


class _FastAssociationSocket(AssociationSocket):
    """AssociationSocket with large reads and TCP_QUICKACK before each read."""

    _quickack = getattr(socket, "TCP_QUICKACK", None)

    def recv(self, nr_bytes: int) -> bytearray:  # noqa: D102 - same contract as the base
        sock = self.socket
        assert sock is not None
        buf = bytearray(nr_bytes)
        view = memoryview(buf)
        nr_read = 0
        quickack = self._quickack
        while nr_read < nr_bytes:
            if quickack is not None:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
                except OSError:
                    quickack = None
            n = sock.recv_into(view[nr_read:], nr_bytes - nr_read)
            if not n:
                del view
                return buf[:nr_read]
            nr_read += n
        del view
        return buf


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


def _value(ds: Dataset, keyword: str) -> Any:
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed element: treat as absent
        return None
    if value is None or value == "":
        return None
    return value


def _text(ds: Dataset, keyword: str) -> str | None:
    value = _value(ds, keyword)
    return None if value is None else str(value).strip() or None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = _value(ds, keyword)
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _json_value(value: Any) -> Any:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_json_value(v) for v in value]
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        if isinstance(value, float) and value != value:  # NaN
            return None
        return value if not isinstance(value, str) else value.strip()
    if isinstance(value, bytes):
        return None
    try:
        number = float(value)
        return int(number) if number.is_integer() and "." not in str(value) else number
    except (TypeError, ValueError):
        return str(value).strip()


def routing_attributes(ds: Dataset) -> dict[str, Any]:
    """Non-pixel, non-sequence attributes of *ds* by keyword, as JSON values.

    Person names and patient identifiers other than age, sex, size and
    weight are left out (they stay in the study row only).
    """
    out: dict[str, Any] = {}
    for elem in ds:
        try:
            if elem.tag.group == 0x0010 and int(elem.tag) not in _KEEP_PATIENT:
                continue
            if elem.VR in _SKIP_VRS or not elem.keyword or elem.tag.is_private:
                continue
            value = elem.value
            if value is None or value == "":
                continue
            jv = _json_value(value)
            if isinstance(jv, str) and len(jv) > 256:
                continue
            out[elem.keyword] = jv
        except Exception:  # malformed value: skip it, never fail the store for it
            continue
    return out


def header_record(ds: Dataset, transfer_syntax_uid: str) -> InstanceRecord:
    """Build an :class:`InstanceRecord` from a parsed header.

    Raises
    ------
    StoreRejected
        ``MISSING_UID`` when Study, Series or SOP Instance UID (or SOP Class
        UID) is missing or empty.
    """
    uids = {
        kw: _text(ds, kw)
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
    }
    missing = [kw for kw, v in uids.items() if not v]
    if missing:
        raise StoreRejected(st.MISSING_UID, f"missing or empty {', '.join(missing)}")
    too_long = [kw for kw, v in uids.items() if v and len(v) > 64]
    if too_long:
        raise StoreRejected(st.MISSING_UID, f"{', '.join(too_long)} longer than 64 characters")
    patient_name = _value(ds, "PatientName")
    return InstanceRecord(
        study_instance_uid=uids["StudyInstanceUID"] or "",
        series_instance_uid=uids["SeriesInstanceUID"] or "",
        sop_instance_uid=uids["SOPInstanceUID"] or "",
        sop_class_uid=uids["SOPClassUID"] or "",
        transfer_syntax_uid=transfer_syntax_uid,
        instance_number=_int(ds, "InstanceNumber"),
        modality=_text(ds, "Modality"),
        body_part_examined=_text(ds, "BodyPartExamined"),
        series_description=_text(ds, "SeriesDescription"),
        series_number=_int(ds, "SeriesNumber"),
        manufacturer=_text(ds, "Manufacturer"),
        manufacturer_model_name=_text(ds, "ManufacturerModelName"),
        patient_id=_text(ds, "PatientID"),
        patient_name=None if patient_name is None else str(patient_name),
        study_date=_text(ds, "StudyDate"),
        accession_number=_text(ds, "AccessionNumber"),
        study_description=_text(ds, "StudyDescription"),
        attributes=routing_attributes(ds),
    )


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


class StorageSCP:
    """The node's DICOM listener: Verification + Storage SCP.

    Parameters
    ----------
    settings:
        The node's settings (``[node]`` and ``[[peers]]`` are used here).
    store:
        Where received instances become durable.
    on_stored:
        Optional callback ``(record, result)`` after each durable store
        (the collector hooks in here); its exceptions are logged, never
        answered to the peer.
    """

    def __init__(
        self,
        settings: Settings,
        store: ReceivedStore,
        on_stored: Callable[[InstanceRecord, Any], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.on_stored = on_stored
        self.store.duplicate_action = DuplicateAction(settings.node.duplicate_policy.value)
        self._stats: dict[int, AssociationStats] = {}
        self._stats_lock = threading.Lock()
        self._server: ThreadedAssociationServer | None = None
        self.ae = self._make_ae()

    # -- setup -------------------------------------------------------------
    def _make_ae(self) -> AE:
        node = self.settings.node
        ae = AE(ae_title=node.ae_title)
        ae.maximum_pdu_size = node.max_pdu
        ae.maximum_associations = node.max_associations
        ae.acse_timeout = node.acse_timeout.total_seconds()
        ae.dimse_timeout = node.dimse_timeout.total_seconds()
        ae.network_timeout = node.network_timeout.total_seconds()
        ae.require_called_aet = node.require_called_ae
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        return ae

    def handlers(self) -> list[tuple[Any, Callable[..., Any]]]:
        """The pynetdicom event bindings of the node."""
        return [
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]

    def start(self) -> ThreadedAssociationServer:
        """Listen on the configured address (non-blocking); returns the server."""
        node = self.settings.node
        if not self.settings.peers:
            LOGGER.warning(
                "no [[peers]] configured: accepting associations from any calling AE title"
            )
        self._server = self.ae.start_server(
            (node.host, node.port), block=False, evt_handlers=self.handlers()
        )
        LOGGER.info(
            "listening as %s on %s:%d (max PDU %d, max associations %d)",
            node.ae_title,
            node.host,
            node.port,
            node.max_pdu,
            node.max_associations,
        )
        return self._server

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        if self._server is None:
            return self.settings.node.port
        return int(self._server.server_address[1])

    def active_associations(self) -> int:
        """Associations in progress."""
        return len(self.ae.active_associations)

    def stop_accepting(self) -> None:
        """Close the listening socket; associations in progress go on."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def shutdown(self, grace_s: float | None = None) -> None:
        """Stop accepting, wait up to *grace_s* for associations, abort the rest."""
        grace = self.settings.node.shutdown_grace.total_seconds() if grace_s is None else grace_s
        self.stop_accepting()
        deadline = time.monotonic() + grace
        # Only established associations can have data in flight; connections that
        # never associated (port probes) are dropped at once.
        while time.monotonic() < deadline and any(
            a.is_established for a in self.ae.active_associations
        ):
            time.sleep(0.05)
        remaining = [a for a in self.ae.active_associations if a.is_established]
        if remaining:
            LOGGER.warning("aborting %d association(s) still open after %.0f s", len(remaining), grace)
            for assoc in remaining:
                assoc.abort()
        for assoc in self.ae.active_associations:
            if not assoc.is_established:
                assoc.kill()
        self.ae.shutdown()

    # -- association events ------------------------------------------------
    def _on_conn_open(self, event: evt.Event) -> None:
        assoc = event.assoc
        sock = assoc.dul.socket
        if sock is not None and sock.socket is not None:
            try:
                sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            sock.__class__ = _FastAssociationSocket
        peers = self.settings.peers
        if peers:
            self._install_peer_check(assoc, peers)

    def _install_peer_check(self, assoc: Association, peers: list[PeerSettings]) -> None:
        """Reject unknown (Calling AE, host) pairs at association time (PS3.8 7.1.1.9)."""
        acse = assoc.acse
        original = acse._negotiate_as_acceptor

        def negotiate() -> None:
            calling = assoc.requestor.primitive.calling_ae_title  # type: ignore[union-attr]
            address = assoc.requestor.address
            if not _peer_allowed(peers, calling, address):
                LOGGER.warning(
                    "rejected association from unknown peer %r at %s (not in [[peers]])",
                    calling,
                    address,
                )
                # rejected-permanent, service-user, calling-AE-title-not-recognized
                acse.send_reject(0x01, 0x01, 0x03)
                evt.trigger(assoc, evt.EVT_REJECTED, {})
                assoc.kill()
                return
            original()

        acse._negotiate_as_acceptor = negotiate  # type: ignore[method-assign]

    def _key(self, assoc: Association) -> int:
        return id(assoc)

    def _on_established(self, event: evt.Event) -> None:
        assoc = event.assoc
        stats = AssociationStats(
            peer=f"{assoc.requestor.address}:{assoc.requestor.port}",
            calling_ae=assoc.requestor.ae_title,
            called_ae=assoc.acceptor.ae_title,
        )
        with self._stats_lock:
            self._stats[self._key(assoc)] = stats
        LOGGER.info(
            "association from %s at %s (%d presentation contexts accepted)",
            stats.calling_ae,
            stats.peer,
            len(assoc.accepted_contexts),
        )

    def _on_rejected(self, event: evt.Event) -> None:
        assoc = event.assoc
        rq = assoc.requestor
        LOGGER.info(
            "association rejected: calling %r called %r from %s",
            getattr(rq.primitive, "calling_ae_title", "?"),
            getattr(rq.primitive, "called_ae_title", "?"),
            rq.address,
        )

    def _on_aborted(self, event: evt.Event) -> None:
        with self._stats_lock:
            stats = self._stats.get(self._key(event.assoc))
        if stats is not None:
            stats.outcome = "aborted"

    def _on_conn_close(self, event: evt.Event) -> None:
        with self._stats_lock:
            stats = self._stats.pop(self._key(event.assoc), None)
        if stats is None:
            return
        if stats.outcome == "open":
            stats.outcome = "released" if event.assoc.is_released else "closed"
        seconds = time.monotonic() - stats.started
        LOGGER.info(
            "association %s from %s at %s: %d instance(s), %d duplicate(s), %d failure(s), "
            "%.1f MB in %.2f s",
            stats.outcome,
            stats.calling_ae,
            stats.peer,
            stats.instances,
            stats.duplicates,
            stats.failures,
            stats.bytes / 1e6,
            seconds,
            extra={
                "calling_ae": stats.calling_ae,
                "peer": stats.peer,
                "instances": stats.instances,
                "failures": stats.failures,
                "bytes": stats.bytes,
                "seconds": round(seconds, 3),
            },
        )

    # -- DIMSE services ------------------------------------------------------
    def _on_echo(self, event: evt.Event) -> int:
        """C-ECHO (PS3.4 A.4): always Success."""
        return st.SUCCESS

    def _on_store(self, event: evt.Event) -> Dataset | int:
        """C-STORE (PS3.4 B.2): spool, record, then answer."""
        assoc = event.assoc
        with self._stats_lock:
            stats = self._stats.get(self._key(assoc))
        try:
            outcome = self._store(event)
        except StoreRejected as exc:
            if stats is not None:
                stats.failures += 1
            LOGGER.warning(
                "C-STORE from %s refused with 0x%04X (%s): %s",
                assoc.requestor.ae_title,
                exc.status,
                st.describe(exc.status),
                exc.reason,
            )
            rsp = Dataset()
            rsp.Status = exc.status
            rsp.ErrorComment = exc.reason[:64]
            return rsp
        except Exception:
            if stats is not None:
                stats.failures += 1
            LOGGER.exception("C-STORE from %s failed while storing", assoc.requestor.ae_title)
            rsp = Dataset()
            rsp.Status = st.STORAGE_FAILURE
            rsp.ErrorComment = "internal error while storing; retry later"
            return rsp
        if stats is not None:
            stats.instances += 1
            stats.bytes += outcome[1]
            if outcome[0] is not StoreOutcome.STORED:
                stats.duplicates += 1
        return st.SUCCESS

    def _store(self, event: evt.Event) -> tuple[StoreOutcome, int]:
        request = event.request
        assoc = event.assoc
        stream: bytes = request.DataSet.getvalue()  # type: ignore[union-attr]
        file_meta = event.file_meta
        ts_uid = str(file_meta.TransferSyntaxUID)

        meta_buf = BytesIO()
        meta_buf.write(_PREAMBLE)
        write_file_meta_info(meta_buf, file_meta, enforce_standard=True)  # type: ignore[arg-type]
        meta_bytes = meta_buf.getvalue()

        try:
            ds = dcmread(BytesIO(meta_bytes + stream), stop_before_pixels=True)
        except Exception as exc:
            raise StoreRejected(st.CANNOT_DECODE, f"cannot parse data set: {exc}") from exc
        record = header_record(ds, ts_uid)

        affected_uid = str(request.AffectedSOPInstanceUID or "").strip()
        if affected_uid and affected_uid != record.sop_instance_uid:
            raise StoreRejected(
                st.UID_MISMATCH,
                f"SOPInstanceUID {record.sop_instance_uid} differs from the command's "
                f"Affected SOP Instance UID {affected_uid}",
            )
        affected_class = str(request.AffectedSOPClassUID or "").strip()
        if affected_class and affected_class != record.sop_class_uid:
            raise StoreRejected(
                st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"SOPClassUID {record.sop_class_uid} differs from the command's "
                f"Affected SOP Class UID {affected_class}",
            )

        size = len(meta_bytes) + len(stream)
        spool = self.store.spool
        if not spool.has_room_for(size):
            raise StoreRejected(
                st.OUT_OF_RESOURCES,
                f"spool disk below the free-space watermark ({spool.min_free_bytes // 2**20} MB)",
            )

        record.calling_ae = assoc.requestor.ae_title
        record.called_ae = assoc.acceptor.ae_title
        record.peer_address = assoc.requestor.address
        spooled = spool.write_temp([meta_bytes, stream])
        result = self.store.store(record, spooled)
        if result.outcome is StoreOutcome.REJECTED:
            raise StoreRejected(
                st.DUPLICATE_DIFFERS,
                f"instance {record.sop_instance_uid} already stored with different content",
            )
        if result.outcome in (StoreOutcome.DUPLICATE_KEPT, StoreOutcome.REPLACED):
            LOGGER.warning(
                "instance re-sent with different content (%s): %s",
                result.outcome.value,
                record.sop_instance_uid,
            )
        if self.on_stored is not None:
            try:
                self.on_stored(record, result)
            except Exception:
                LOGGER.exception("on_stored callback failed (instance is stored)")
        return result.outcome, size


def storage_sop_classes() -> Iterable[str]:
    """The storage SOP class UIDs the node accepts."""
    return [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
