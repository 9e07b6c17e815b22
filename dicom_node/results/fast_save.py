"""Save a result object as a DICOM file, encoding its sequences quickly.

pydicom encodes every element of every sequence item through its general
writer (ambiguous-VR correction on each item, one buffer per element), which
costs about half a millisecond per item: a SEG of a few hundred frames has a
Per-frame Functional Groups Sequence (PS3.3 C.7.6.16) of that many items,
each with five nested sequences, and an SR of a 300-image series lists every
image in its evidence and library.  :func:`save_as` encodes the root's
sequences here, in Explicit VR Little Endian (PS3.5 7.1.2, 7.5: items of
defined length, as pydicom writes them), and hands pydicom a copy of the
dataset whose sequences are already encoded, for the File Meta Information
(PS3.10 7.1) and the other elements.

The bytes are those ``dataset.save_as(path, enforce_file_format=True)``
writes (the tests compare them): values of the common VRs (SQ, UI, CS, DS,
IS, US, UL, and ASCII text of SH, LO, ST, LT, UT, UC) are encoded as
pydicom's writers encode them, sequences and items of undefined length
with their delimitation items, and every other element (a raw element kept
from a source file, PN, dates and times, a non-ASCII text, binary values)
goes through pydicom's own element writer.  A dataset this module does not
handle exactly -- another transfer syntax, an ambiguous VR (``US or SS``)
in an item -- is saved by pydicom as it is.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from typing import Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import AMBIGUOUS_VR, EXPLICIT_VR_LENGTH_32

__all__ = ["encode_sequence", "encoded_copy", "save_as"]

_ITEM = b"\xfe\xff\x00\xe0"
_ITEM_DELIMITER = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_UNDEFINED = 0xFFFFFFFF

#: VRs written by pydicom's ``write_string`` (ASCII, ``\\``-joined, padded).
_STRING_VRS = {"CS": b" ", "UI": b"\x00"}
#: VRs written by pydicom's ``write_text`` (encoded, padded with a space).
_TEXT_VRS = {"SH", "LO", "ST", "LT", "UT", "UC"}
_NUMBER_STRING_VRS = {"DS", "IS"}
_BINARY_VRS = {"US": "H", "UL": "L"}


class _NotHandled(Exception):
    """Something this module does not encode exactly as pydicom does."""


def _header(tag: int, vr: str, length: int) -> bytes:
    """Explicit VR Little Endian element header (PS3.5 7.1.2)."""
    if vr in EXPLICIT_VR_LENGTH_32:
        return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr.encode(), 0, length)
    if length > 0xFFFF:
        raise _NotHandled("a value too long for a 16-bit length")  # pydicom writes UN
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), length)


def _is_multi(value: Any) -> bool:
    return isinstance(value, (MultiValue, list, tuple))


def _ascii(value: Any) -> bytes:
    if not isinstance(value, str) or not value.isascii():
        raise _NotHandled("not an ASCII string")
    return value.encode("ascii")


def _value(elem: DataElement) -> bytes | None:
    """The encoded value of ``elem``; ``None`` when pydicom's writer must do it."""
    vr = elem.VR
    value = elem.value
    if vr in _STRING_VRS:
        if value is None:
            return b""
        text = b"\\".join(_ascii(v) for v in value) if _is_multi(value) else _ascii(value)
        return text + _STRING_VRS[vr] if len(text) % 2 else text
    if vr in _TEXT_VRS:
        if value is None:
            return b""
        text = b"\\".join(_ascii(v) for v in value) if _is_multi(value) else _ascii(value)
        return text + b" " if len(text) % 2 else text
    if vr in _NUMBER_STRING_VRS:
        items = value if _is_multi(value) else [value]
        digits = "\\".join(
            x.original_string if hasattr(x, "original_string") else str(x) for x in items
        )
        data = _ascii(digits)
        return data + b" " if len(data) % 2 else data
    if vr in _BINARY_VRS:
        if value is None or value == "":
            return b""
        fmt = _BINARY_VRS[vr]
        if isinstance(value, (MultiValue, list)):
            if not all(isinstance(v, int) for v in value):
                return None
            return struct.pack(f"<{len(value)}{fmt}", *value)
        if isinstance(value, int):
            return struct.pack(f"<{fmt}", value)
        return None
    return None


def _pydicom_element(elem: DataElement | RawDataElement, encodings: Any) -> bytes:
    """``elem`` as pydicom's own element writer encodes it."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_data_element(fp, elem, encodings)
    return fp.getvalue()


def _element(elem: DataElement | RawDataElement, encodings: Any) -> bytes:
    if isinstance(elem, RawDataElement):
        if elem.VR in AMBIGUOUS_VR or elem.VR is None:
            raise _NotHandled("a raw element of ambiguous or unknown VR")
        return _pydicom_element(elem, encodings)
    vr = elem.VR
    if vr in AMBIGUOUS_VR or vr is None or len(vr) != 2:
        raise _NotHandled("an ambiguous VR")
    if vr == "SQ":
        body = encode_sequence(elem.value, encodings)
        if elem.is_undefined_length:
            return _header(int(elem.tag), "SQ", _UNDEFINED) + body + _SEQUENCE_DELIMITER
        return _header(int(elem.tag), "SQ", len(body)) + body
    if elem.is_empty:
        return _header(int(elem.tag), vr, 0)  # pydicom writes no value
    try:
        value = _value(elem)
    except _NotHandled:
        value = None
    if value is None:
        return _pydicom_element(elem, encodings)
    return _header(int(elem.tag), vr, len(value)) + value


def _item(item: Dataset, parent_encodings: Any) -> bytes:
    """One sequence item (PS3.5 7.5.1) as pydicom's ``write_sequence_item`` writes it."""
    if item.original_encoding != (False, True) or (
        item.original_character_set != item._character_set
    ):
        # pydicom would run its ambiguous-VR correction and parse raw elements.
        elements = [item[tag] for tag in item.keys()]
    else:
        elements = [item.get_item(tag) for tag in item.keys()]
    encodings = item.get("SpecificCharacterSet", parent_encodings)
    parts = [
        _element(elem, encodings)
        for elem in sorted(elements, key=lambda e: int(e.tag))
        if not _is_group_length(elem.tag)
    ]
    body = b"".join(parts)
    if getattr(item, "is_undefined_length_sequence_item", False):
        return _ITEM + struct.pack("<L", _UNDEFINED) + body + _ITEM_DELIMITER
    return _ITEM + struct.pack("<L", len(body)) + body


def _is_group_length(tag: BaseTag) -> bool:
    """Retired Group Length elements, which pydicom does not write (PS3.5 7.2)."""
    return tag.element == 0 and tag.group > 6


def encode_sequence(items: Iterable[Dataset], encodings: Any = None) -> bytes:
    """The items of a sequence, encoded as pydicom encodes them in Explicit VR
    Little Endian (the value of the SQ element, without its header).

    Raises
    ------
    ValueError
        (Internally) when an item holds what is not encoded here exactly;
        :func:`save_as` then leaves the element to pydicom.
    """
    return b"".join(_item(item, encodings or ["iso8859"]) for item in items)


def save_as(dataset: Dataset, path: str | os.PathLike[str]) -> None:
    """``dataset.save_as(path, enforce_file_format=True)``, with the root's
    sequences encoded here (see the module docstring)."""
    encoded = encoded_copy(dataset)
    if encoded is None:
        dataset.save_as(path, enforce_file_format=True)
    else:
        encoded.save_as(path, enforce_file_format=True)


def encoded_copy(dataset: Dataset) -> Dataset | None:
    """A shallow copy of ``dataset`` whose root sequences are encoded already
    (raw elements pydicom writes as they are), or ``None`` when the dataset is
    one pydicom must write itself (see the module docstring)."""
    meta = getattr(dataset, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if ts != ExplicitVRLittleEndian:
        return None
    encodings = dataset.get("SpecificCharacterSet", "iso8859")
    # As pydicom's write_dataset: elements are parsed (and re-encoded) unless
    # the dataset was read in this very encoding.
    parse = dataset.original_encoding != (False, True) or (
        dataset.original_character_set != dataset._character_set
    )
    copy = Dataset()
    try:
        for tag in dataset.keys():
            elem: DataElement | RawDataElement = dataset[tag] if parse else dataset.get_item(tag)
            if elem.VR in AMBIGUOUS_VR:
                if not parse:  # pydicom writes it as it is (or refuses)
                    raise _NotHandled("an ambiguous VR in a dataset read in this encoding")
                # e.g. Pixel Data, OB or OW: corrected as pydicom corrects it
                elem = correct_ambiguous_vr_element(elem, dataset, True)
            if elem.VR == "SQ" and isinstance(elem, DataElement):
                body = encode_sequence(elem.value, encodings)
                # pydicom writes a raw value as it is, then the Sequence
                # Delimitation Item when the length is undefined (PS3.5 7.5.2).
                length = _UNDEFINED if elem.is_undefined_length else len(body)
                copy[tag] = RawDataElement(BaseTag(tag), "SQ", length, body, 0, False, True)
            else:
                copy[tag] = elem
    except _NotHandled:
        return None
    copy.file_meta = meta  # type: ignore[assignment]
    copy.preamble = getattr(dataset, "preamble", None)
    # Already in the file's encoding: pydicom writes the elements as they are.
    copy.set_original_encoding(False, True, copy._character_set)
    return copy
