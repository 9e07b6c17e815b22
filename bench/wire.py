"""A raw DICOM upper-layer peer for the fuzz harness (PS3.8 9, PS3.7 9.3.1).

A DICOM toolkit will not send a truncated PDU or a command that names a UID
with ``../`` in it, so the fuzz harness speaks the upper layer itself: it
builds the A-ASSOCIATE-RQ with pynetdicom's PDU classes, writes C-STORE-RQ
command sets by hand (Implicit VR Little Endian, PS3.7 6.3.1) and sends data
sets as the exact bytes it is given.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

A_ASSOCIATE_RQ_TYPE = 0x01
A_ASSOCIATE_AC_TYPE = 0x02
A_ASSOCIATE_RJ_TYPE = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
RLE = "1.2.840.10008.1.2.5"

_HEADER = struct.Struct(">BxL")


def associate_rq(
    contexts: list[tuple[int, str, list[str]]],
    *,
    calling: str = "FUZZ",
    called: str = "DICOM_NODE",
    max_pdu: int = 65536,
) -> bytes:
    """An A-ASSOCIATE-RQ (PS3.8 9.3.2) proposing ``(context id, abstract syntax,
    transfer syntaxes)`` for each of *contexts*."""
    prim = A_ASSOCIATE()
    prim.application_context_name = "1.2.840.10008.3.1.1.1"
    prim.calling_ae_title = calling
    prim.called_ae_title = called
    items = []
    for cid, abstract, syntaxes in contexts:
        cx = build_context(abstract, syntaxes)
        cx.context_id = cid
        items.append(cx)
    prim.presentation_context_definition_list = items
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    prim.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(prim)
    return bytes(pdu.encode())


def pdu(pdu_type: int, body: bytes) -> bytes:
    """Any PDU: type, reserved byte, 4-byte big-endian length, body (PS3.8 9.3.1)."""
    return _HEADER.pack(pdu_type, len(body)) + body


def p_data(pdvs: list[tuple[int, int, bytes]]) -> bytes:
    """A P-DATA-TF PDU (PS3.8 9.3.5) holding ``(context id, control header, data)`` PDVs."""
    body = b"".join(struct.pack(">LBB", len(d) + 2, cid, mch) + d for cid, mch, d in pdvs)
    return pdu(P_DATA_TF, body)


def abort() -> bytes:
    """A-ABORT from the service user (PS3.8 9.3.8)."""
    return pdu(A_ABORT, b"\x00\x00\x00\x00")


def release_rq() -> bytes:
    """A-RELEASE-RQ (PS3.8 9.3.6)."""
    return pdu(A_RELEASE_RQ, b"\x00\x00\x00\x00")


def _command_element(elem: int, value: bytes) -> bytes:
    return struct.pack("<HHL", 0x0000, elem, len(value)) + value


def _even(raw: bytes, pad: bytes = b"\x00") -> bytes:
    return raw + pad if len(raw) % 2 else raw


def c_store_rq(sop_class: bytes, sop_instance: bytes, message_id: int) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1), UIDs written byte for byte."""
    body = b"".join(
        (
            _command_element(0x0002, _even(sop_class)),
            _command_element(0x0100, struct.pack("<H", 0x0001)),
            _command_element(0x0110, struct.pack("<H", message_id & 0xFFFF)),
            _command_element(0x0700, struct.pack("<H", 0)),
            _command_element(0x0800, struct.pack("<H", 0x0000)),
            _command_element(0x1000, _even(sop_instance)),
        )
    )
    return _command_element(0x0000, struct.pack("<L", len(body))) + body


def c_echo_rq(message_id: int) -> bytes:
    """A C-ECHO-RQ command set (PS3.7 9.3.5.1)."""
    body = b"".join(
        (
            _command_element(0x0002, _even(VERIFICATION.encode())),
            _command_element(0x0100, struct.pack("<H", 0x0030)),
            _command_element(0x0110, struct.pack("<H", message_id & 0xFFFF)),
            _command_element(0x0800, struct.pack("<H", 0x0101)),
        )
    )
    return _command_element(0x0000, struct.pack("<L", len(body))) + body


def response_status(command: bytes) -> int | None:
    """Status (0000,0900) of a DIMSE response command set, ``None`` when absent."""
    offset = 0
    while offset + 8 <= len(command):
        _, elem, length = struct.unpack_from("<HHL", command, offset)
        offset += 8
        if elem == 0x0900 and length == 2 and offset + 2 <= len(command):
            return int(struct.unpack_from("<H", command, offset)[0])
        offset += length
    return None


def fragments(data: bytes, size: int) -> list[bytes]:
    """*data* cut into PDV payloads of at most *size* bytes (at least one, maybe empty)."""
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def connect(port: int, timeout_s: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_pdu(sock: socket.socket, timeout_s: float = 10.0) -> tuple[int, bytes] | None:
    """The next PDU from the peer, ``None`` when it closed, reset or went quiet."""
    sock.settimeout(timeout_s)
    try:
        head = _recv_exact(sock, 6)
        if head is None:
            return None
        pdu_type, length = _HEADER.unpack(head)
        if length > 2**24:
            return (pdu_type, b"")
        body = _recv_exact(sock, length)
        if body is None:
            return None
    except (OSError, TimeoutError):
        return None
    return pdu_type, body


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def dimse_response(sock: socket.socket, timeout_s: float = 30.0) -> tuple[str, int | None]:
    """Read PDUs until a whole response command set arrived: ``("status", status)``, or
    ``("abort" | "closed" | "rejected" | "pdu-<type>", None)`` when something else came."""
    command = b""
    while True:
        got = recv_pdu(sock, timeout_s)
        if got is None:
            return "closed", None
        pdu_type, body = got
        if pdu_type == A_ABORT:
            return "abort", None
        if pdu_type != P_DATA_TF:
            return f"pdu-{pdu_type:02x}", None
        offset = 0
        while offset + 6 <= len(body):
            length, _, mch = struct.unpack_from(">LBB", body, offset)
            command += body[offset + 6 : offset + 4 + length]
            offset += 4 + length
            if mch & 0x03 == 0x03:
                return "status", response_status(command)


@dataclass
class Association:
    """An association opened over a raw socket: the contexts the node accepted."""

    sock: socket.socket
    accepted: dict[int, str] = field(default_factory=dict)
    """context id -> accepted transfer syntax UID"""
    max_pdu: int = 16384
    message_id: int = 0

    @classmethod
    def open(
        cls,
        port: int,
        contexts: list[tuple[int, str, list[str]]],
        *,
        calling: str = "FUZZ",
        timeout_s: float = 30.0,
    ) -> Association:
        sock = connect(port, timeout_s)
        try:
            sock.sendall(associate_rq(contexts, calling=calling))
            got = recv_pdu(sock, timeout_s)
            if got is None or got[0] != A_ASSOCIATE_AC_TYPE:
                raise ConnectionError(f"association not accepted: {got!r:.120}")
            ac = A_ASSOCIATE_AC()
            ac.decode(pdu(A_ASSOCIATE_AC_TYPE, got[1]))
        except BaseException:
            sock.close()
            raise
        assoc = cls(sock)
        for item in ac.presentation_context:
            if item.result == 0 and item.transfer_syntax and item.context_id is not None:
                assoc.accepted[item.context_id] = str(item.transfer_syntax)
        max_pdu = 0
        user_info = getattr(ac, "user_information", None)
        for item in getattr(user_info, "user_data", None) or []:
            max_pdu = getattr(item, "maximum_length_received", None) or max_pdu
        assoc.max_pdu = max_pdu if max_pdu > 0 else 65536
        return assoc

    def next_id(self) -> int:
        self.message_id = (self.message_id + 1) % 0xFFFF
        return self.message_id or 1

    def store(
        self,
        context_id: int,
        sop_class: bytes,
        sop_instance: bytes,
        data: bytes,
        timeout_s: float = 60.0,
    ) -> tuple[str, int | None]:
        """One C-STORE of *data* as it is; returns :func:`dimse_response`'s answer."""
        command = c_store_rq(sop_class, sop_instance, self.next_id())
        size = max(self.max_pdu - 12, 256)
        out = [p_data([(context_id, 0x03, command)])]
        chunks = fragments(data, size)
        for n, chunk in enumerate(chunks):
            out.append(p_data([(context_id, 0x02 if n == len(chunks) - 1 else 0x00, chunk)]))
        try:
            self.sock.sendall(b"".join(out))
        except OSError:
            return "closed", None
        return dimse_response(self.sock, timeout_s)

    def echo(self, context_id: int, timeout_s: float = 30.0) -> tuple[str, int | None]:
        try:
            self.sock.sendall(p_data([(context_id, 0x03, c_echo_rq(self.next_id()))]))
        except OSError:
            return "closed", None
        return dimse_response(self.sock, timeout_s)

    def release(self) -> None:
        try:
            self.sock.sendall(release_rq())
            recv_pdu(self.sock, 5.0)
        except OSError:
            pass
        finally:
            self.sock.close()

    def close(self) -> None:
        self.sock.close()
