"""DIMSE status codes the node answers (PS3.4 Annex B.2.3, PS3.7 Annex C).

One table, so every failure the Storage SCP can give is documented in one
place (which exception answers which status:
:func:`dicom_node.receive.store_handler.status_for`).
"""

from __future__ import annotations

SUCCESS = 0x0000
"""Success."""

OUT_OF_RESOURCES = 0xA700
"""Refused: Out of Resources (PS3.4 B.2.3) -- disk below the free-space watermark, or
the spool, the file system or the database failed for a moment: the sender retries."""

DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
"""Error: Data Set does not match SOP Class (PS3.4 B.2.3)."""

CANNOT_UNDERSTAND = 0xC000
"""Error: Cannot understand (PS3.4 B.2.3, range C000-CFFF) -- generic."""

MISSING_UID = 0xC001
"""Cannot understand: Study, Series or SOP Instance UID missing or empty."""

UID_MISMATCH = 0xC002
"""Cannot understand: SOP Instance/Class UID differs from the command's Affected UID."""

DUPLICATE_DIFFERS = 0xC003
"""Cannot understand: instance already stored with different content (policy 'reject')."""

STORAGE_FAILURE = 0xC004
"""Cannot understand: the instance's spool path is taken by another file (a retry would
meet the same file); passing failures are :data:`OUT_OF_RESOURCES`."""

INVALID_UID = 0xC005
"""Cannot understand: a Study, Series, SOP Instance or SOP Class UID (in the data set
or the command) breaks PS3.5 9.1 (digits and dots, no leading zeros, at most 64), or
holds characters that no UID may have.  With ``uid_policy = "warn"`` only the latter."""

CANNOT_DECODE = 0xC210
"""Cannot understand: the data set could not be parsed (pynetdicom's code); also a
Deflated data set whose header does not fit the bounded inflate (PS3.5 A.5)."""

DESCRIPTIONS: dict[int, str] = {
    SUCCESS: "Success",
    OUT_OF_RESOURCES: "Out of Resources",
    DATASET_DOES_NOT_MATCH_SOP_CLASS: "Data Set does not match SOP Class",
    CANNOT_UNDERSTAND: "Cannot understand",
    MISSING_UID: "Missing UID",
    UID_MISMATCH: "UID does not match command",
    DUPLICATE_DIFFERS: "Duplicate with different content",
    STORAGE_FAILURE: "Could not store durably",
    INVALID_UID: "Invalid UID",
    CANNOT_DECODE: "Cannot decode data set",
}


def is_success_or_warning(status: int) -> bool:
    """True for Success (0000) and the Warning statuses (Bxxx) of PS3.7 C.1."""
    return status == SUCCESS or status & 0xF000 == 0xB000


def describe(status: int) -> str:
    """A short human description of a status code."""
    if status in DESCRIPTIONS:
        return DESCRIPTIONS[status]
    if status & 0xF000 == 0xB000:
        return "Warning"
    if status & 0xF000 in (0xA000, 0xC000):
        return "Failure"
    return "Unknown status"
