"""Checking the UIDs a sender gives (PS3.5 Section 9.1, UID Encoding Rules).

A UID is at most 64 characters of digits and ``.``; its components are
separated by ``.``, none is empty, and none has a leading zero (a component
is ``0`` or starts with ``1``-``9``).  Senders that break these rules exist
(leading zeros, letters, hyphens), so :class:`UidPolicy` lets a site accept
them with a warning; values that could never be a UID in any encoding
(empty, longer than 64 characters, characters outside printable ASCII or a
backslash) are refused in every policy, because they cannot be written
into the file meta, the database and the objects sent on.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "MAX_UID_LENGTH",
    "UidCheck",
    "UidPolicy",
    "check_uids",
    "uid_problem",
    "unusable_uid",
]

MAX_UID_LENGTH = 64
"""PS3.5 9.1: a UID is at most 64 characters (the VR UI maximum, PS3.5 6.2)."""

_UID_RE = re.compile(r"^(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*$")
_PRINTABLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]*$")
"""Printable ASCII without backslash: the most a UI value may ever hold."""


class UidPolicy(str, enum.Enum):
    """What the Storage SCP does with a UID that breaks PS3.5 9.1."""

    STRICT = "strict"
    """Refuse the instance (C-STORE status ``INVALID_UID``, PS3.4 B.2.3)."""
    WARN = "warn"
    """Accept it and log a warning (for legacy senders); unusable values are
    still refused (see :func:`unusable_uid`)."""


def unusable_uid(value: str) -> str | None:
    """Why *value* cannot be kept as a UID under any policy, or ``None``.

    Empty, longer than 64 characters, or holding characters outside
    printable ASCII (control characters, non-ASCII such as right-to-left
    marks) or a backslash (the value delimiter, PS3.5 6.4).
    """
    if not value:
        return "is empty"
    if len(value) > MAX_UID_LENGTH:
        return f"is longer than {MAX_UID_LENGTH} characters"
    if not _PRINTABLE_RE.fullmatch(value):
        return "has characters outside printable ASCII"
    return None


def uid_problem(value: str) -> str | None:
    """Why *value* is not a valid UID under PS3.5 9.1, or ``None`` when it is."""
    unusable = unusable_uid(value)
    if unusable is not None:
        return unusable
    if _UID_RE.fullmatch(value):
        return None
    if re.search(r"[^0-9.]", value):
        return "has characters other than digits and '.'"
    if any(part == "" for part in value.split(".")):
        return "has an empty component"
    return "has a component with a leading zero"


@dataclass
class UidCheck:
    """The result of :func:`check_uids`.

    ``refused`` names the UIDs that make the instance refused (with the
    reason); ``warnings`` those accepted only because the policy is ``warn``.
    """

    refused: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)

    def describe(self, which: dict[str, str]) -> str:
        """One sentence for the log or an Error Comment (each reason quotes the
        value with ``ascii()``, so control characters and bidi marks cannot hide)."""
        return "; ".join(f"{name} {reason}" for name, reason in which.items())


def check_uids(uids: Mapping[str, str], policy: UidPolicy) -> UidCheck:
    """Check named UIDs (e.g. ``{"SOPInstanceUID": "1.2.3"}``) under *policy*.

    Parameters
    ----------
    uids:
        Name (DICOM keyword) -> value as received.
    policy:
        :attr:`UidPolicy.STRICT` refuses every invalid UID;
        :attr:`UidPolicy.WARN` refuses only unusable ones.
    """
    result = UidCheck()
    for name, value in uids.items():
        problem = uid_problem(value)
        if problem is None:
            continue
        reason = f"{ascii(value)[:72]} {problem} (PS3.5 9.1)"
        if policy is UidPolicy.STRICT or unusable_uid(value) is not None:
            result.refused[name] = reason
        else:
            result.warnings[name] = reason
    return result
