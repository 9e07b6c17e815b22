"""File Meta Information for received data sets (PS3.10 Section 7.1).

Encoded by hand: it is built once per received instance, and pydicom's
general-purpose writer costs more than the rest of the receive path.
"""

from __future__ import annotations

import struct

__all__ = ["IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION_NAME", "encode_file_meta"]

IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.9.3811.3.0.4"
IMPLEMENTATION_VERSION_NAME = "DICOM_NODE_01"

_PREAMBLE = b"\x00" * 128 + b"DICM"
_SHORT = struct.Struct("<HH2sH")


def _pad(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def _short(elem: int, vr: bytes, value: bytes) -> bytes:
    return _SHORT.pack(0x0002, elem, vr, len(value)) + value


def encode_file_meta(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    source_ae_title: str = "",
) -> bytes:
    """Preamble, ``DICM`` and the group 0002 elements, Explicit VR Little Endian."""
    elements = [
        # (0002,0001) File Meta Information Version: OB, 4-byte length form.
        struct.pack("<HH2s2sL", 0x0002, 0x0001, b"OB", b"\x00\x00", 2) + b"\x00\x01",
        _short(0x0002, b"UI", _pad(sop_class_uid.encode("ascii"), b"\x00")),
        _short(0x0003, b"UI", _pad(sop_instance_uid.encode("ascii"), b"\x00")),
        _short(0x0010, b"UI", _pad(transfer_syntax_uid.encode("ascii"), b"\x00")),
        _short(0x0012, b"UI", _pad(IMPLEMENTATION_CLASS_UID.encode("ascii"), b"\x00")),
        _short(0x0013, b"SH", _pad(IMPLEMENTATION_VERSION_NAME.encode("ascii"), b" ")),
    ]
    ae = source_ae_title.strip()[:16]
    if ae:
        elements.append(_short(0x0016, b"AE", _pad(ae.encode("ascii", "replace"), b" ")))
    body = b"".join(elements)
    group_length = _short(0x0000, b"UL", struct.pack("<L", len(body)))
    return _PREAMBLE + group_length + body
