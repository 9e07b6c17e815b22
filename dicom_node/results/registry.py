"""The registered result kinds, in the order they are written.

Each kind is a :class:`~dicom_node.results.writer.ResultWriter`;
:data:`BUILT_IN_WRITERS` lists the built-in ones, one line each.  The SEG
comes first because the SR references its segments.  Everything that names
the kinds -- ``outputs`` in the configuration, the CLI, the order in which a
destination gets a job's objects, the kind of a written object found from
its SOP Class (PS3.4 Annex B) -- asks this module.
"""

from __future__ import annotations

import re

from dicom_node.results.common import check_uid
from dicom_node.results.gsps import GspsWriter
from dicom_node.results.sc import ScWriter
from dicom_node.results.seg import SegWriter
from dicom_node.results.sr import SrWriter
from dicom_node.results.writer import ResultWriter

__all__ = [
    "BUILT_IN_WRITERS",
    "kind_of_sop_class",
    "register_writer",
    "result_kinds",
    "unregister_writer",
    "writer_for",
    "writers",
]

#: The built-in result kinds, in write order: one line per kind.
BUILT_IN_WRITERS: tuple[ResultWriter, ...] = (
    SegWriter(),
    SrWriter(),
    GspsWriter(),
    ScWriter(),
)

_KIND_RE = re.compile(r"^[a-z][a-z0-9_-]{0,15}$")

_WRITERS: dict[str, ResultWriter] = {}


def register_writer(writer: ResultWriter) -> ResultWriter:
    """Add a result kind after those registered; returns it.

    Raises
    ------
    ValueError
        For a malformed kind name (lower case, at most 16 characters), a
        kind or SOP Class UID already registered, an invalid UID or Series
        Number.
    """
    kind = writer.kind
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise ValueError(f"result kind {kind!r}: use 1-16 lower-case letters, digits, - or _")
    if kind in _WRITERS:
        raise ValueError(f"result kind {kind!r} is already registered")
    check_uid(writer.sop_class_uid, f"{kind}.sop_class_uid")
    taken = kind_of_sop_class(writer.sop_class_uid)
    if taken is not None:
        raise ValueError(
            f"result kind {kind!r}: SOP Class {writer.sop_class_uid} is already the kind {taken!r}"
        )
    number = writer.series_number
    if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number < 2**31:
        raise ValueError(f"result kind {kind!r}: series_number {number!r} is out of range")
    _WRITERS[kind] = writer
    return writer


def unregister_writer(kind: str) -> ResultWriter:
    """Remove a registered result kind; returns its writer (``KeyError`` if unknown)."""
    return _WRITERS.pop(kind)


def writers() -> tuple[ResultWriter, ...]:
    """The registered writers, in write order."""
    return tuple(_WRITERS.values())


def result_kinds() -> tuple[str, ...]:
    """The registered kind names, in write order (``("seg", "sr", "gsps", "sc")`` built in)."""
    return tuple(_WRITERS)


def writer_for(kind: str) -> ResultWriter:
    """The writer of ``kind``.

    Raises
    ------
    ValueError
        For an unregistered kind, listing the known ones.
    """
    try:
        return _WRITERS[kind]
    except KeyError:
        raise ValueError(
            f"unknown result kind {kind!r}; choose from {', '.join(_WRITERS)}"
        ) from None


def kind_of_sop_class(sop_class_uid: str) -> str | None:
    """The registered kind that writes objects of this SOP Class, if any."""
    for writer in _WRITERS.values():
        if writer.sop_class_uid == sop_class_uid:
            return writer.kind
    return None


for _writer in BUILT_IN_WRITERS:
    register_writer(_writer)
