"""From a received data set's bytes to what the node records about it.

Only the header is parsed (reading stops before Pixel Data), with the
transfer syntax the association negotiated, and without the file meta the
receiver adds.  The routing attributes of a series are made only for the
first instance of the series (a second, full header parse).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from dicom_node import status as st
from dicom_node.errors import StoreRejected
from storage.received import InstanceRecord

__all__ = ["header_from_prefix", "header_record", "parse_header", "routing_attributes"]

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
    if ts == DeflatedExplicitVRLittleEndian:
        data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data)
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


def header_from_prefix(
    prefix: bytes, total_size: int, transfer_syntax_uid: str, *, record_only: bool = False
) -> Dataset | None:
    """Parse the header from the first bytes of a data set, when they hold all of it.

    The receiver keeps only a prefix of each data set in memory (the rest goes
    to the spool file).  The header is complete when the prefix is the whole
    data set or when parsing reached Pixel Data; otherwise ``None`` is
    returned and the caller reads the header from the file.

    Raises
    ------
    Exception
        As :func:`parse_header`, for a prefix that is the whole data set.
    """
    if len(prefix) >= total_size:
        return parse_header(prefix, transfer_syntax_uid, record_only=record_only)
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
        attributes=attributes or (lambda: routing_attributes(ds)),
    )
