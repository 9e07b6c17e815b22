"""From a received data set's bytes to what the node records about it.

Only the header is parsed (reading stops before Pixel Data), with the
transfer syntax the association negotiated, and without the file meta the
receiver adds.  The routing attributes of a series are made only for the
first instance of the series (a second, full header parse).

A Deflated data set (PS3.5 A.5) is never inflated whole: at most
:data:`MAX_INFLATED_HEADER` bytes are inflated (``zlib`` with
``max_length``), which is enough for any real header; a 1 MB deflate bomb
that would inflate to gigabytes costs no more than that.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from dicom_node.errors import StoreRejected
from dicom_node.protocol import status as st
from storage.received import InstanceRecord

__all__ = [
    "DEFLATED_SYNTAXES",
    "MAX_INFLATED_HEADER",
    "fast_record",
    "header_from_file",
    "header_from_prefix",
    "header_record",
    "inflate_prefix",
    "parse_header",
    "routing_attributes",
]

LOGGER = logging.getLogger(__name__)

_JPIP_REFERENCED_DEFLATE = "1.2.840.10008.1.2.4.95"
DEFLATED_SYNTAXES = frozenset({str(DeflatedExplicitVRLittleEndian), _JPIP_REFERENCED_DEFLATE})
"""Transfer syntaxes whose whole data set is a raw deflate stream (PS3.5 A.5, A.7)."""

MAX_INFLATED_HEADER = 8 * 2**20
"""The most bytes of a Deflated data set the receiver inflates to read its header."""

_READ_CHUNK = 64 * 2**10

_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}
"""Float, Double Float and (plain) Pixel Data: the header ends before them."""

# Attributes kept as JSON on the series row, for routing rules on any keyword.
_SKIP_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN", "SQ", "PN"}
_KEEP_PATIENT = {0x00101010, 0x00100040, 0x00101020, 0x00101030}  # age, sex, size, weight


def _before_pixels(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return int(tag) in _PIXEL_TAGS


HEADER_KEYWORDS = (
    "SpecificCharacterSet",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "InstanceNumber",
    "Modality",
    "BodyPartExamined",
    "SeriesDescription",
    "SeriesNumber",
    "Manufacturer",
    "ManufacturerModelName",
    "PatientID",
    "PatientName",
    "StudyDate",
    "AccessionNumber",
    "StudyDescription",
)
"""What :func:`header_record` reads: parsing only these is several times faster."""

_HEADER_TAGS: list[BaseTag | int] = [BaseTag(tag_for_keyword(kw) or 0) for kw in HEADER_KEYWORDS]


def parse_header(
    data: bytes,
    transfer_syntax_uid: str,
    *,
    record_only: bool = False,
    stop_when: Callable[[BaseTag, str | None, int], bool] = _before_pixels,
) -> Dataset:
    """Parse the header of an encoded data set (no file meta) up to Pixel Data.

    ``record_only`` keeps just :data:`HEADER_KEYWORDS` (enough for
    :func:`header_record`).

    Raises
    ------
    Exception
        Whatever pydicom or zlib raise for bytes that are not a data set in
        that transfer syntax; the caller answers ``CANNOT_DECODE``.
    """
    ts = UID(transfer_syntax_uid)
    if str(ts) in DEFLATED_SYNTAXES:
        data, _ = inflate_prefix(data)
        ts = UID("1.2.840.10008.1.2.1")  # what was deflated: Explicit VR Little Endian
    try:
        implicit, little = ts.is_implicit_VR, ts.is_little_endian
    except ValueError:  # a private transfer syntax: let pydicom guess
        return dcmread(BytesIO(data), force=True, stop_before_pixels=True)
    return read_dataset(
        BytesIO(data),
        implicit,
        little,
        stop_when=stop_when,
        specific_tags=_HEADER_TAGS if record_only else None,
    )


def inflate_prefix(data: bytes, limit: int = MAX_INFLATED_HEADER) -> tuple[bytes, bool]:
    """Inflate at most *limit* bytes of a raw deflate stream (PS3.5 A.5).

    Returns the inflated bytes and whether the stream ended within them (the
    data set is then complete).  Never allocates more than *limit* bytes,
    whatever the compression ratio.

    Raises
    ------
    zlib.error
        For bytes that are not a deflate stream.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = inflater.decompress(data, limit)
    return out, inflater.eof


def header_from_prefix(
    prefix: bytes, total_size: int, transfer_syntax_uid: str, *, record_only: bool = False
) -> Dataset | None:
    """Parse the header from the first bytes of a data set, when they hold all of it.

    The receiver keeps only a prefix of each data set in memory (the rest goes
    to the spool file).  The header is complete when the prefix is the whole
    data set or when parsing reached Pixel Data; otherwise ``None`` is
    returned and the caller reads the header from the file
    (:func:`header_from_file`).  A Deflated prefix is inflated up to
    :data:`MAX_INFLATED_HEADER` bytes only.

    Raises
    ------
    Exception
        As :func:`parse_header`, for a prefix that is the whole data set.
    """
    if transfer_syntax_uid in DEFLATED_SYNTAXES:
        inflated, ended = inflate_prefix(prefix)
        return _header_from_bytes(
            inflated, ended and len(prefix) >= total_size, "1.2.840.10008.1.2.1", record_only
        )
    return _header_from_bytes(prefix, len(prefix) >= total_size, transfer_syntax_uid, record_only)


def header_from_file(
    path: Path, offset: int, transfer_syntax_uid: str, *, record_only: bool = False
) -> Dataset | None:
    """Parse the header of the data set stored in *path* from byte *offset* on.

    For a Deflated data set at most :data:`MAX_INFLATED_HEADER` bytes are
    inflated, read in chunks from the file; ``None`` when its header (up to
    Pixel Data) is longer than that.  Other data sets are read with pydicom,
    stopping before Pixel Data and leaving values over 1 MB on disk.

    Raises
    ------
    Exception
        Whatever pydicom or zlib raise for bytes that are not a data set.
    """
    if transfer_syntax_uid not in DEFLATED_SYNTAXES:
        return dcmread(path, stop_before_pixels=True, defer_size="1 MB", force=True)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    parts: list[bytes] = []
    room = MAX_INFLATED_HEADER
    with path.open("rb") as fh:
        fh.seek(offset)
        while room > 0 and not inflater.eof:
            chunk = inflater.unconsumed_tail or fh.read(_READ_CHUNK)
            if not chunk:
                break
            out = inflater.decompress(chunk, room)
            parts.append(out)
            room -= len(out)
    return _header_from_bytes(b"".join(parts), inflater.eof, "1.2.840.10008.1.2.1", record_only)


def _header_from_bytes(
    data: bytes, complete: bool, transfer_syntax_uid: str, record_only: bool
) -> Dataset | None:
    """The header in *data* (not deflated), or ``None`` when *data* is only a part of
    the data set that ends before Pixel Data."""
    if complete:
        return parse_header(data, transfer_syntax_uid, record_only=record_only)
    prefix = data
    reached: list[bool] = []

    def stop(tag: BaseTag, vr: str | None, length: int) -> bool:
        if _before_pixels(tag, vr, length):
            reached.append(True)
            return True
        return False

    try:
        ds = parse_header(prefix, transfer_syntax_uid, record_only=record_only, stop_when=stop)
    except Exception:  # cut in the middle of an element: not enough bytes
        return None
    return ds if reached else None


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
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float, str)):
        if isinstance(value, float) and value != value:  # NaN
            return None
        return value.strip() if isinstance(value, str) else value
    if isinstance(value, bytes):
        return None
    try:
        number = float(value)
        return int(number) if number.is_integer() and "." not in str(value) else number
    except (TypeError, ValueError):
        return str(value).strip()


def _raw_vr(ds: Dataset, tag: BaseTag) -> str:
    try:
        return str(ds.get_item(tag).VR)
    except Exception:
        return "?"


def routing_attributes(ds: Dataset) -> dict[str, Any]:
    """Non-pixel, non-sequence attributes of *ds* by keyword, as JSON values.

    Person names and patient identifiers other than age, sex, size and
    weight are left out (they stay in the study row only).
    """
    out: dict[str, Any] = {}
    unreadable: list[str] = []
    for tag in list(ds.keys()):
        try:
            if tag.group == 0x0010 and int(tag) not in _KEEP_PATIENT:
                continue
            if tag.is_private:
                continue
            # Converting the raw element is where an unknown VR (e.g. 'Da') raises.
            elem = ds[tag]
            if elem.VR in _SKIP_VRS or not elem.keyword:
                continue
            value = elem.value
            if value is None or value == "":
                continue
            jv = _json_value(value)
            if isinstance(jv, str) and len(jv) > 256:
                continue
            out[elem.keyword] = jv
        except Exception as exc:  # malformed element: skip it, never fail the store for it
            # Tag, VR and exception type only: a value may hold patient data.
            unreadable.append(f"{tag} VR {_raw_vr(ds, tag)!r} ({type(exc).__name__})")
    if unreadable:
        LOGGER.warning(
            "skipped %d element(s) that cannot be read, left out of the routing attributes: %s",
            len(unreadable),
            "; ".join(unreadable[:5]),
        )
    return out


def header_record(
    ds: Dataset,
    transfer_syntax_uid: str,
    attributes: Callable[[], dict[str, Any]] | None = None,
) -> InstanceRecord:
    """Build an :class:`InstanceRecord` from a parsed header.

    ``attributes`` makes the series' routing attributes when needed (default:
    :func:`routing_attributes` of *ds*).

    Raises
    ------
    StoreRejected
        ``MISSING_UID`` when Study, Series, SOP Instance or SOP Class UID is
        missing, empty or longer than 64 characters (PS3.5 9.1).
    """
    patient_name = _value(ds, "PatientName")
    values: dict[str, Any] = {kw: _text(ds, kw) for kw in _TEXT_KEYWORDS}
    values.update({kw: _int(ds, kw) for kw in ("InstanceNumber", "SeriesNumber")})
    values["PatientName"] = None if patient_name is None else str(patient_name)
    record = _record(values, transfer_syntax_uid)
    record.attributes = attributes or (lambda: routing_attributes(ds))
    return record


_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
_TEXT_KEYWORDS = (
    *_UID_KEYWORDS,
    "Modality",
    "BodyPartExamined",
    "SeriesDescription",
    "Manufacturer",
    "ManufacturerModelName",
    "PatientID",
    "StudyDate",
    "AccessionNumber",
    "StudyDescription",
)


def _record(values: dict[str, Any], transfer_syntax_uid: str) -> InstanceRecord:
    """The :class:`InstanceRecord` of the header *values* (by keyword), after the
    check of its identifying UIDs (:func:`_check_uids`)."""
    uids = {kw: values[kw] for kw in _UID_KEYWORDS}
    _check_uids(uids)
    return InstanceRecord(
        study_instance_uid=uids["StudyInstanceUID"] or "",
        series_instance_uid=uids["SeriesInstanceUID"] or "",
        sop_instance_uid=uids["SOPInstanceUID"] or "",
        sop_class_uid=uids["SOPClassUID"] or "",
        transfer_syntax_uid=transfer_syntax_uid,
        instance_number=values["InstanceNumber"],
        modality=values["Modality"],
        body_part_examined=values["BodyPartExamined"],
        series_description=values["SeriesDescription"],
        series_number=values["SeriesNumber"],
        manufacturer=values["Manufacturer"],
        manufacturer_model_name=values["ManufacturerModelName"],
        patient_id=values["PatientID"],
        patient_name=values["PatientName"],
        study_date=values["StudyDate"],
        accession_number=values["AccessionNumber"],
        study_description=values["StudyDescription"],
    )


# -- the fast path: the record's elements read straight from the bytes ------------------

_RECORD_TAGS: dict[int, str] = {
    int(tag): kw for tag, kw in zip(_HEADER_TAGS, HEADER_KEYWORDS, strict=True)
}
"""Tags of :data:`HEADER_KEYWORDS`; the last one ends the scan."""
_LAST_RECORD_TAG = max(_RECORD_TAGS)
_LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
"""Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2)."""
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_U16 = struct.Struct("<H")
_U16X2 = struct.Struct("<HH")
_U32 = struct.Struct("<I")
_IMPLICIT_LE = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"


class _NotSimple(Exception):
    """The bytes need pydicom (a value not plain ASCII, a malformed element, ...)."""


def fast_record(
    data: bytes | memoryview, transfer_syntax_uid: str, *, complete: bool
) -> InstanceRecord | None:
    """The :class:`InstanceRecord` of a data set read straight from its bytes, or ``None``.

    Walks the top-level elements (PS3.5 7.1: explicit or implicit VR, little
    endian; sequences of undefined length skipped item by item, PS3.5 7.5)
    up to Instance Number (0020,0013) and decodes only the record's values.
    *data* may be a prefix of the data set (``complete`` false): the record
    is made only when the walk passed (0020,0013) within it.
    Whenever the result could differ from :func:`header_record` of a pydicom
    parse -- a value with a byte outside ASCII or a backslash, a character
    set other than the default, a malformed element, a Deflated or big-endian
    data set -- it returns ``None`` and the caller parses with pydicom.

    Raises
    ------
    StoreRejected
        As :func:`header_record`, for missing or over-long UIDs.
    """
    if transfer_syntax_uid in DEFLATED_SYNTAXES or transfer_syntax_uid == _BIG_ENDIAN:
        return None
    explicit = transfer_syntax_uid != _IMPLICIT_LE
    try:
        raw = _scan(memoryview(data), explicit, complete)
        values: dict[str, Any] = {kw: _decode(raw.get(tag)) for tag, kw in _RECORD_TAGS.items()}
    except (_NotSimple, IndexError, struct.error):
        return None
    charset = values.pop("SpecificCharacterSet")
    if charset not in (None, "ISO_IR 6", "ISO_IR 100", "ISO_IR 192"):
        return None
    for kw in ("InstanceNumber", "SeriesNumber"):
        text = values[kw]
        try:
            values[kw] = None if text is None else int(text)
        except ValueError:
            return None
    return _record(values, transfer_syntax_uid)


def _decode(value: bytes | None) -> str | None:
    """A plain ASCII value without padding (NUL or space), ``None`` when empty."""
    if value is None:
        return None
    if not value.isascii() or b"\\" in value or b"\x1b" in value:
        raise _NotSimple
    text = value.decode("ascii").strip(" \x00")
    if any(c < " " for c in text):
        raise _NotSimple
    return text or None


def _scan(data: memoryview, explicit: bool, complete: bool) -> dict[int, bytes]:
    """The values of the record's tags among the top-level elements of *data*."""
    found: dict[int, bytes] = {}
    offset, end = 0, len(data)
    while offset < end:
        tag, vr, length, offset = _element_header(data, offset, explicit)
        if tag > _LAST_RECORD_TAG or tag in _PIXEL_TAGS:
            return found
        if length == _UNDEFINED:
            if vr not in (b"SQ", b"UN", None):
                raise _NotSimple
            offset = _skip_undefined(data, offset, explicit)
            continue
        if offset + length > end:
            raise _NotSimple  # cut short: the caller has only a prefix
        if tag in _RECORD_TAGS:
            if vr == b"SQ":
                raise _NotSimple
            found[tag] = bytes(data[offset : offset + length])
        offset += length
    if not complete:
        raise _NotSimple  # the prefix ended before the last tag: more may follow
    return found


def _element_header(
    data: memoryview, offset: int, explicit: bool
) -> tuple[int, bytes | None, int, int]:
    group, element = _U16X2.unpack_from(data, offset)
    tag = group << 16 | element
    if group == 0xFFFE:  # item and delimiters: always implicit-style (PS3.5 7.5)
        return tag, None, _U32.unpack_from(data, offset + 4)[0], offset + 8
    if not explicit:
        return tag, None, _U32.unpack_from(data, offset + 4)[0], offset + 8
    vr = bytes(data[offset + 4 : offset + 6])
    if not (vr.isalpha() and vr.isupper()):
        raise _NotSimple
    if vr in _LONG_LENGTH_VRS:
        return tag, vr, _U32.unpack_from(data, offset + 8)[0], offset + 12
    return tag, vr, _U16.unpack_from(data, offset + 6)[0], offset + 8


def _skip_undefined(data: memoryview, offset: int, explicit: bool) -> int:
    """Past a sequence (or UN) of undefined length: items until its delimiter."""
    end = len(data)
    while offset < end:
        tag, _vr, length, offset = _element_header(data, offset, explicit)
        if tag == _SEQUENCE_END:
            return offset
        if tag != _ITEM:
            raise _NotSimple
        if length != _UNDEFINED:
            offset += length
            continue
        while True:  # an item of undefined length: its elements until the item delimiter
            tag, vr, length, offset = _element_header(data, offset, explicit)
            if tag == _ITEM_END:
                break
            if length == _UNDEFINED:
                offset = _skip_undefined(data, offset, explicit)
            else:
                offset += length
            if offset > end:
                raise _NotSimple
    raise _NotSimple


def _check_uids(uids: dict[str, str | None]) -> None:
    """Refuse a data set whose identifying UIDs are missing, empty or longer than
    64 characters (PS3.5 9.1) with ``MISSING_UID``."""
    missing = [kw for kw, v in uids.items() if not v]
    if missing:
        raise StoreRejected(st.MISSING_UID, f"missing or empty {', '.join(missing)}")
    too_long = [kw for kw, v in uids.items() if v and len(v) > 64]
    if too_long:
        raise StoreRejected(st.MISSING_UID, f"{', '.join(too_long)} longer than 64 characters")
