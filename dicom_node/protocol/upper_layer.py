"""DICOM Upper Layer PDUs for the acceptor side (PS3.8 Section 9.3).

The receive path reads PDUs straight from a blocking socket: a 6-byte header
(type, reserved, big-endian length) and the body.  Association negotiation
reuses pynetdicom's PDU codecs and presentation-context negotiation, so only
the hot path -- P-DATA-TF parsing (PS3.8 9.3.5) and the small fixed PDUs --
is written here.

A peer is not trusted with memory or time: :class:`PduReader` refuses a PDU
longer than the caller's limit as soon as its header arrives, grows the body
buffer only as bytes really arrive (a header announcing 64 MiB costs nothing
until 64 MiB are sent), and bounds every read by an idle timeout and by the
deadline of the phase in progress (PS3.8 9.1.6, ARTIM).  Every length
inside a PDU is checked against what holds it before it is used: the
A-ASSOCIATE-RQ's items and sub-items (:func:`check_item_lengths`), PDV items
(:func:`iter_pdvs`), and the command set's elements
(:func:`~dicom_node.protocol.dimse_command.decode_command`), so what a peer
announces never sizes an allocation.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

__all__ = [
    "A_ABORT",
    "A_ASSOCIATE_RQ_TYPE",
    "A_RELEASE_RQ",
    "AssociationRequest",
    "DeadlineExceeded",
    "P_DATA_TF",
    "PduError",
    "PduReader",
    "PduTooLarge",
    "PeerClosed",
    "abort_pdu",
    "accept_pdu",
    "ae_title_problem",
    "check_item_lengths",
    "iter_pdvs",
    "p_data_pdu",
    "raw_ae_titles",
    "reject_pdu",
    "release_rp_pdu",
]

A_ASSOCIATE_RQ_TYPE = 0x01
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_ABORT = 0x07

APPLICATION_CONTEXT_NAME = UID("1.2.840.10008.3.1.1.1")
"""PS3.7 Annex A.2.1: the DICOM Application Context Name."""

IMPLEMENTATION_CLASS_UID = PYNETDICOM_IMPLEMENTATION_UID
IMPLEMENTATION_VERSION_NAME = "DICOM_NODE_01"

_HEADER = struct.Struct(">BxL")
_PDV_HEADER = struct.Struct(">LBB")


_FIRST_ALLOCATION = 256 * 2**10
"""A PDU body buffer starts at most this large (the default maximum PDU fits)
and then grows only as fast as bytes arrive, never to the announced length."""


class PduError(Exception):
    """The peer sent something that is not a valid PDU here (PS3.8 9.3.1)."""


class PduTooLarge(PduError):
    """A PDU header announced more than the limit of the current phase."""

    def __init__(self, pdu_type: int, length: int, limit: int) -> None:
        super().__init__(f"PDU type 0x{pdu_type:02X} of {length} bytes exceeds {limit}")
        self.pdu_type = pdu_type
        self.length = length
        self.limit = limit


class PeerClosed(Exception):
    """The peer closed the TCP connection."""


class DeadlineExceeded(TimeoutError):
    """The phase in progress did not end by its deadline (PS3.8 9.1.6)."""


class PduReader:
    """Reads whole PDUs from one blocking socket within timeouts (PS3.8 9.3.1).

    Parameters
    ----------
    sock:
        The connection.
    idle_s:
        Longest wait for any single read to return bytes (the network
        timeout); ``None`` waits as long as :attr:`deadline` allows.

    Attributes
    ----------
    deadline:
        ``time.monotonic()`` value by which the phase in progress must end
        (the ACSE phase, or one DIMSE message); ``None`` for none.  A read
        that would end after it raises :class:`DeadlineExceeded`.
    phase_s:
        When set and :attr:`deadline` is ``None``, the first byte of the next
        PDU starts a deadline this many seconds later (a DIMSE message's).
    started:
        When the first byte of the last PDU read arrived (monotonic), so a
        caller can start a deadline at a message's first byte.
    """

    def __init__(self, sock: socket.socket, *, idle_s: float | None) -> None:
        self.sock = sock
        self.idle_s = idle_s
        self.deadline: float | None = None
        self.phase_s: float | None = None
        self.started = 0.0

    def read(self, max_length: int) -> tuple[int, bytearray]:
        """Read one PDU; returns ``(pdu_type, body)``.

        Raises
        ------
        PeerClosed
            The connection was closed (cleanly between PDUs or in the middle).
        PduTooLarge
            The header announced a body longer than *max_length*; nothing of
            the body has been read.
        PduError
            Unknown PDU type.
        DeadlineExceeded
            :attr:`deadline` passed before the PDU was complete.
        TimeoutError
            No byte arrived within :attr:`idle_s`.
        """
        header = self._recv_exact(6, first=True)
        pdu_type, length = _HEADER.unpack(header)
        if pdu_type not in (1, 2, 3, 4, 5, 6, 7):
            raise PduError(f"unknown PDU type 0x{pdu_type:02X}")
        if length > max_length:
            raise PduTooLarge(pdu_type, length, max_length)
        return pdu_type, self._recv_exact(length)

    def _recv_exact(self, n: int, *, first: bool = False) -> bytearray:
        """*n* bytes, the buffer growing with what has arrived (at most doubling)."""
        buf = bytearray(min(n, _FIRST_ALLOCATION))
        got = 0
        while got < n:
            if got == len(buf):
                buf.extend(bytes(min(n - got, got)))
            with memoryview(buf) as view:
                k = self._recv_into(view[got:])
            if k == 0:
                raise PeerClosed(f"connection closed after {got} of {n} bytes")
            if first and got == 0:
                self._first_byte()
            got += k
        return buf

    def _first_byte(self) -> None:
        self.started = time.monotonic()
        if self.deadline is None and self.phase_s is not None:
            self.deadline = self.started + self.phase_s

    def _recv_into(self, view: memoryview) -> int:
        self.sock.settimeout(self._timeout())
        try:
            return self.sock.recv_into(view)
        except TimeoutError:
            if self.deadline is not None and time.monotonic() >= self.deadline - 0.01:
                raise DeadlineExceeded("deadline passed in the middle of a PDU") from None
            raise TimeoutError(f"no data for {self.idle_s} s") from None

    def _timeout(self) -> float | None:
        if self.deadline is None:
            return self.idle_s
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("deadline passed")
        return remaining if self.idle_s is None else min(remaining, self.idle_s)


def iter_pdvs(body: bytearray) -> Iterator[tuple[int, int, memoryview]]:
    """Presentation Data Value items of a P-DATA-TF body (PS3.8 9.3.5.1).

    Yields ``(context_id, message_control_header, data)``; bit 0 of the
    header is set for command fragments, bit 1 for the last fragment.
    """
    view = memoryview(body)
    offset, end = 0, len(body)
    while offset < end:
        if end - offset < 6:
            raise PduError("truncated PDV item")
        item_length, context_id, mch = _PDV_HEADER.unpack_from(view, offset)
        if item_length < 2 or offset + 4 + item_length > end:
            raise PduError(f"invalid PDV item length {item_length}")
        yield context_id, mch, view[offset + 6 : offset + 4 + item_length]
        offset += 4 + item_length


def p_data_pdu(context_id: int, mch: int, data: bytes) -> bytes:
    """A P-DATA-TF PDU with a single PDV item."""
    return b"".join(
        (
            _HEADER.pack(P_DATA_TF, len(data) + 6),
            _PDV_HEADER.pack(len(data) + 2, context_id, mch),
            data,
        )
    )


def release_rp_pdu() -> bytes:
    """A-RELEASE-RP (PS3.8 9.3.7)."""
    return b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"


def abort_pdu(source: int = 0x02, reason: int = 0x00) -> bytes:
    """A-ABORT (PS3.8 9.3.8); source 0 = service user, 2 = service provider."""
    return b"\x07\x00\x00\x00\x00\x04\x00\x00" + bytes((source, reason))


def reject_pdu(result: int, source: int, reason: int) -> bytes:
    """A-ASSOCIATE-RJ (PS3.8 9.3.4).

    ``result`` 1 = permanent, 2 = transient; ``source`` 1 = service user,
    2 = ACSE provider, 3 = presentation provider; ``reason`` per Table 9-21
    (e.g. 3 = calling AE title not recognised, 7 = called AE title not
    recognised, with source 3: 2 = local limit exceeded).
    """
    return b"\x03\x00\x00\x00\x00\x04\x00" + bytes((result, source, reason))


def raw_ae_titles(body: bytes | bytearray) -> tuple[bytes, bytes]:
    """``(called, calling)`` AE title fields of an A-ASSOCIATE-RQ body (PS3.8 9.3.2).

    Bytes 5-20 and 21-36 of the PDU, i.e. offsets 4 and 20 of its body.
    """
    if len(body) < 68:
        raise PduError(f"A-ASSOCIATE-RQ of {len(body)} bytes is shorter than its fixed fields")
    return bytes(body[4:20]), bytes(body[20:36])


def ae_title_problem(raw: bytes) -> str | None:
    """Why *raw* is not a valid AE title field, or ``None`` (PS3.8 9.3.2, PS3.5 6.2).

    The field holds ISO 646 characters without backslash or control
    characters; leading and trailing spaces are not significant (trailing
    NULs, which some senders pad with, are tolerated), and a value of only
    spaces is not allowed.
    """
    value = raw.rstrip(b"\x00").strip(b" ")
    if not value:
        return "empty"
    bad = [b for b in value if b < 0x20 or b > 0x7E or b == 0x5C]
    if bad:
        return f"byte 0x{bad[0]:02X} is not allowed"
    return None


_ITEM_HEADER = struct.Struct(">BxH")
_CONTAINER_ITEMS = {0x20: 4, 0x50: 0}
"""Items whose value is itself a list of sub-items, and how many fixed bytes
come before those: the presentation context item (context ID, 3 reserved;
PS3.8 9.3.2.2) and the user information item (PS3.8 9.3.2.3)."""


def check_item_lengths(body: bytes | bytearray) -> None:
    """Every variable item and sub-item of an A-ASSOCIATE-RQ lies inside its parent
    (PS3.8 9.3.2, Table 9-11; each item: type, reserved, 16-bit length).

    A peer cannot make the decoder read or allocate past what it sent.

    Raises
    ------
    PduError
        With the offending item's type, offset and announced length.
    """
    if len(body) < 68:
        raise PduError(f"A-ASSOCIATE-RQ of {len(body)} bytes is shorter than its fixed fields")
    _check_items(body, 68, len(body), "item")


def _check_items(body: bytes | bytearray, offset: int, end: int, what: str) -> None:
    while offset < end:
        if end - offset < 4:
            raise PduError(f"A-ASSOCIATE-RQ {what} at offset {offset + 6} is truncated")
        item_type, length = _ITEM_HEADER.unpack_from(body, offset)
        start, stop = offset + 4, offset + 4 + length
        if stop > end:
            raise PduError(
                f"A-ASSOCIATE-RQ {what} 0x{item_type:02X} at offset {offset + 6} announces "
                f"{length} bytes, only {end - start} left"
            )
        if what == "item" and item_type in _CONTAINER_ITEMS:
            fixed = _CONTAINER_ITEMS[item_type]
            if length < fixed:
                raise PduError(f"A-ASSOCIATE-RQ item 0x{item_type:02X} of {length} bytes")
            _check_items(body, start + fixed, stop, "sub-item")
        offset = stop


@dataclass
class AssociationRequest:
    """A decoded A-ASSOCIATE-RQ (PS3.8 9.3.2)."""

    primitive: A_ASSOCIATE

    @classmethod
    def decode(cls, body: bytes | bytearray) -> AssociationRequest:
        """Decode an A-ASSOCIATE-RQ body, its item lengths checked first.

        Raises
        ------
        PduError
            An item announces more bytes than the PDU holds, or pynetdicom
            cannot decode the request.
        """
        check_item_lengths(body)
        pdu = A_ASSOCIATE_RQ()
        try:
            pdu.decode(_HEADER.pack(A_ASSOCIATE_RQ_TYPE, len(body)) + bytes(body))
        except Exception as exc:
            raise PduError(f"malformed A-ASSOCIATE-RQ: {exc!r}") from exc
        return cls(pdu.to_primitive())

    @property
    def calling_ae_title(self) -> str:
        return str(self.primitive.calling_ae_title).strip()

    @property
    def called_ae_title(self) -> str:
        return str(self.primitive.called_ae_title).strip()

    @property
    def peer_max_pdu(self) -> int:
        """The largest PDU the requestor accepts (0 = unlimited)."""
        return int(self.primitive.maximum_length_received or 0)


def accept_pdu(
    request: AssociationRequest, supported: list[PresentationContext], max_pdu: int
) -> tuple[bytes, dict[int, PresentationContext]]:
    """Negotiate presentation contexts and encode the A-ASSOCIATE-AC.

    Returns the PDU and the accepted contexts by context ID
    (PS3.8 9.3.3, PS3.7 D.3.3).
    """
    rq = request.primitive
    rq_roles = {
        UID(uid): (item.scu_role, item.scp_role) for uid, item in _role_items(rq).items()
    }
    results, ac_roles = negotiate_as_acceptor(
        rq.presentation_context_definition_list, supported, rq_roles
    )
    ac = A_ASSOCIATE()
    ac.application_context_name = APPLICATION_CONTEXT_NAME
    ac.calling_ae_title = rq.calling_ae_title
    ac.called_ae_title = rq.called_ae_title
    ac.result = 0x00
    ac.result_source = 0x01
    ac.presentation_context_definition_results_list = results
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    impl_uid = ImplementationClassUIDNotification()
    impl_uid.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    impl_version = ImplementationVersionNameNotification()
    impl_version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ac.user_information = [max_length, impl_uid, impl_version, *ac_roles]
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(ac)
    accepted = {int(cx.context_id): cx for cx in results if cx.result == 0x00}  # type: ignore[arg-type]
    return pdu.encode(), accepted


def _role_items(rq: A_ASSOCIATE) -> dict[str, SCP_SCU_RoleSelectionNegotiation]:
    return {
        str(item.sop_class_uid): item
        for item in (rq.user_information or [])
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation)
    }
