"""DICOM Upper Layer PDUs for the acceptor side (PS3.8 Section 9.3).

The receive path reads PDUs straight from a blocking socket: a 6-byte header
(type, reserved, big-endian length) and the body.  Association negotiation
reuses pynetdicom's PDU codecs and presentation-context negotiation, so only
the hot path -- P-DATA-TF parsing (PS3.8 9.3.5) and the small fixed PDUs --
is written here.
"""

from __future__ import annotations

import socket
import struct
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
    "P_DATA_TF",
    "PduError",
    "PeerClosed",
    "abort_pdu",
    "accept_pdu",
    "iter_pdvs",
    "p_data_pdu",
    "read_pdu",
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


class PduError(Exception):
    """The peer sent something that is not a valid PDU here (PS3.8 9.3.1)."""


class PeerClosed(Exception):
    """The peer closed the TCP connection."""


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise PeerClosed(f"connection closed after {got} of {n} bytes")
        got += k
    return buf


def read_pdu(sock: socket.socket, max_length: int) -> tuple[int, bytearray]:
    """Read one PDU; returns ``(pdu_type, body)``.

    Raises
    ------
    PeerClosed
        The connection was closed (cleanly between PDUs or in the middle).
    PduError
        Unknown PDU type, or a body longer than *max_length*.
    socket.timeout
        Nothing arrived within the socket's timeout.
    """
    pdu_type, length = _HEADER.unpack(_recv_exact(sock, 6))
    if pdu_type not in (1, 2, 3, 4, 5, 6, 7):
        raise PduError(f"unknown PDU type 0x{pdu_type:02X}")
    if length > max_length:
        raise PduError(f"PDU of {length} bytes exceeds the limit of {max_length}")
    return pdu_type, _recv_exact(sock, length)


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


@dataclass
class AssociationRequest:
    """A decoded A-ASSOCIATE-RQ (PS3.8 9.3.2)."""

    primitive: A_ASSOCIATE

    @classmethod
    def decode(cls, body: bytes | bytearray) -> AssociationRequest:
        pdu = A_ASSOCIATE_RQ()
        try:
            pdu.decode(_HEADER.pack(A_ASSOCIATE_RQ_TYPE, len(body)) + bytes(body))
        except Exception as exc:
            raise PduError(f"malformed A-ASSOCIATE-RQ: {exc}") from exc
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
