"""File Meta Information for received data sets (PS3.10 Section 7.1).

Encoded by hand: it is built once per received instance, and pydicom's
general-purpose writer costs more than the rest of the receive path.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom.filereader import read_dataset

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "FileMeta",
    "encode_file_meta",
    "read_file_meta",
]

IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.9.3811.3.0.4"
IMPLEMENTATION_VERSION_NAME = "DICOM_NODE_01"

_PREAMBLE = b"\x00" * 128 + b"DICM"
_SHORT = struct.Struct("<HH2sH")
_MAX_META = 2**16
"""A File Meta group longer than this is not one the receiver wrote."""


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


@dataclass(frozen=True)
class FileMeta:
    """What the node needs from a spool file's meta (PS3.10 7.1)."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    source_ae_title: str
    data_offset: int
    """Where the data set starts: preamble, ``DICM`` and the group 0002 elements."""


def read_file_meta(path: Path) -> FileMeta:
    """Read the File Meta Information of a Part 10 file that starts with a Group Length.

    Raises
    ------
    ValueError
        When the file has no preamble and ``DICM``, or no (0002,0000) UL first.
    """
    with path.open("rb") as fh:
        head = fh.read(len(_PREAMBLE) + 12)
        if len(head) < len(_PREAMBLE) + 12 or head[: len(_PREAMBLE)][-4:] != b"DICM":
            raise ValueError("not a DICOM Part 10 file (no DICM prefix)")
        group, elem, vr, length = _SHORT.unpack_from(head, len(_PREAMBLE))
        if (group, elem, vr, length) != (0x0002, 0x0000, b"UL", 4):
            raise ValueError("file meta does not start with (0002,0000) Group Length")
        (group_length,) = struct.unpack_from("<L", head, len(_PREAMBLE) + 8)
        if group_length > _MAX_META:
            raise ValueError(f"file meta group length {group_length} is implausible")
        body = fh.read(group_length)
    if len(body) != group_length:
        raise ValueError("file meta is truncated")
    meta = read_dataset(BytesIO(body), False, True)

    def text(keyword: str) -> str:
        value = meta.get(keyword)
        return "" if value is None else str(value).strip()

    return FileMeta(
        sop_class_uid=text("MediaStorageSOPClassUID"),
        sop_instance_uid=text("MediaStorageSOPInstanceUID"),
        transfer_syntax_uid=text("TransferSyntaxUID"),
        source_ae_title=text("SourceApplicationEntityTitle"),
        data_offset=len(_PREAMBLE) + 12 + group_length,
    )
