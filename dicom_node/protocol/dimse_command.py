"""DIMSE command sets (PS3.7 Section 9.3 and Annex E): decode requests, encode responses.

Command sets are always Implicit VR Little Endian (PS3.7 6.3.1).  Only the
elements the Storage and Verification SCP need are read; responses carry
Command Group Length first (PS3.7 E.1).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "C_ECHO_RQ",
    "C_STORE_RQ",
    "CommandSet",
    "NO_DATA_SET",
    "decode_command",
    "encode_response",
]

C_STORE_RQ = 0x0001
C_ECHO_RQ = 0x0030
NO_DATA_SET = 0x0101
"""Command Data Set Type value meaning "no data set follows" (PS3.7 E.1)."""

_ELEMENT = struct.Struct("<HHL")
_US = struct.Struct("<H")


@dataclass
class CommandSet:
    """The request elements the SCP uses (PS3.7 Table 9.1-1, 9.3-1)."""

    command_field: int = 0
    message_id: int = 0
    affected_sop_class_uid: str = ""
    affected_sop_instance_uid: str = ""
    priority: int = 0
    data_set_type: int = NO_DATA_SET
    move_originator_ae: str = ""

    @property
    def has_data_set(self) -> bool:
        return self.data_set_type != NO_DATA_SET


def _text(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", "replace").strip()


def decode_command(data: bytes | bytearray | memoryview) -> CommandSet:
    """Decode an Implicit VR Little Endian command set.

    Raises
    ------
    ValueError
        When the bytes are not a well-formed command set.
    """
    buf = bytes(data)
    cmd = CommandSet()
    offset, end = 0, len(buf)
    while offset < end:
        if end - offset < 8:
            raise ValueError("truncated command element")
        group, elem, length = _ELEMENT.unpack_from(buf, offset)
        offset += 8
        if group != 0x0000 or length == 0xFFFFFFFF or offset + length > end:
            raise ValueError(f"invalid command element ({group:04X},{elem:04X})")
        value = buf[offset : offset + length]
        offset += length
        if elem == 0x0100 and length == 2:
            cmd.command_field = _US.unpack(value)[0]
        elif elem == 0x0110 and length == 2:
            cmd.message_id = _US.unpack(value)[0]
        elif elem == 0x0002:
            cmd.affected_sop_class_uid = _text(value)
        elif elem == 0x1000:
            cmd.affected_sop_instance_uid = _text(value)
        elif elem == 0x0700 and length == 2:
            cmd.priority = _US.unpack(value)[0]
        elif elem == 0x0800 and length == 2:
            cmd.data_set_type = _US.unpack(value)[0]
        elif elem == 0x1030:
            cmd.move_originator_ae = _text(value)
    if not cmd.command_field:
        raise ValueError("command set without Command Field (0000,0100)")
    return cmd


def _element(elem: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0x0000, elem, len(value)) + value


def _ui(value: str) -> bytes:
    # A request's UID may hold bytes that are not ASCII (decoded as U+FFFD): echo
    # them as '?' rather than fail to answer (the C-STORE is refused for it).
    raw = value.encode("ascii", "replace")
    return raw + b"\x00" if len(raw) % 2 else raw


def _lo(value: str) -> bytes:
    raw = value.encode("ascii", "replace")[:64]
    return raw + b" " if len(raw) % 2 else raw


def encode_response(
    request: CommandSet,
    status: int,
    error_comment: str | None = None,
) -> bytes:
    """Encode the response to *request* (C-STORE-RSP PS3.7 9.3.1.2, C-ECHO-RSP 9.3.5.2)."""
    parts = []
    if request.affected_sop_class_uid:
        parts.append(_element(0x0002, _ui(request.affected_sop_class_uid)))
    parts.append(_element(0x0100, _US.pack(request.command_field | 0x8000)))
    parts.append(_element(0x0120, _US.pack(request.message_id)))
    parts.append(_element(0x0800, _US.pack(NO_DATA_SET)))
    parts.append(_element(0x0900, _US.pack(status)))
    if error_comment:
        parts.append(_element(0x0902, _lo(error_comment)))
    if request.affected_sop_instance_uid:
        parts.append(_element(0x1000, _ui(request.affected_sop_instance_uid)))
    body = b"".join(parts)
    return _element(0x0000, struct.pack("<L", len(body))) + body
