"""Logging setup for the CLI: readable lines by default, JSON lines on request.

Only the CLI calls :func:`configure_logging`; library modules just use
``logging.getLogger(__name__)``.  Values passed through ``extra=`` (ids,
counts) appear as ``key=value`` in text mode and as fields in JSON mode.

Patient data (PS3.15 E.1, the attributes that identify a patient:
PatientName, PatientID, PatientBirthDate, AccessionNumber) never appears in a
line at INFO or above; UIDs say what a line is about.  Code that wants to
name a patient in a DEBUG line wraps the value in :func:`patient`; the
handler's :class:`PatientDataFilter` shows it only in DEBUG lines and only
with ``[log] phi = true``, and writes :data:`HIDDEN` everywhere else.  The
same filter is a safety net for what a library puts into a line:

* a pydicom :class:`~pydicom.dataset.Dataset`, :class:`~pydicom.valuerep.PersonName`
  or patient :class:`~pydicom.dataelem.DataElement` passed as an argument;
* values pydicom quotes in its warnings and errors
  (``Invalid value for VR DA: '19610203'``), in the message and in a
  traceback;
* ``extra=`` fields named after a patient attribute.

Python warnings (pydicom, highdicom, NumPy) become log records
(:func:`logging.captureWarnings`), so they pass the same filter and keep the
JSON format; pydicom's, which its own logger already wrote, are not repeated.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Mapping
from datetime import datetime, timezone

__all__ = [
    "HIDDEN",
    "PATIENT_KEYWORDS",
    "JsonFormatter",
    "PatientDataFilter",
    "PatientValue",
    "TextFormatter",
    "configure_logging",
    "patient",
    "redact_quoted_values",
]

HIDDEN = "[hidden]"
"""What a log line shows instead of a patient's data."""

PATIENT_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber")
"""The attributes a log line at INFO or above never carries (PS3.15 E.1)."""

_PATIENT_TAGS = frozenset({0x00100010, 0x00100020, 0x00100030, 0x00080050})
_PATIENT_EXTRAS = frozenset(
    {"patient_name", "patient_id", "patient_birth_date", "birth_date", "accession_number"}
    | {k.lower() for k in PATIENT_KEYWORDS}
)

# pydicom's messages that quote a value (pydicom.valuerep): the value goes, the VR stays.
_QUOTED = r"b?(?:'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\")"
_PYDICOM_VALUE = (
    re.compile(r"(Invalid value for VR \w+: )" + _QUOTED),
    re.compile(r"(Unable to convert (?:non-conformant value )?)" + _QUOTED + r"( to '\w+' object)"),
    re.compile(r"(Value )" + _QUOTED + r"( is not valid)"),
)
_PYDICOM_SOURCE = f"{os.sep}pydicom{os.sep}"

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class PatientValue:
    """A patient's data as a log argument: shown only where :class:`PatientDataFilter` allows.

    Formatted without the filter (a handler of someone else's), it shows
    :data:`HIDDEN`.
    """

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return HIDDEN

    __repr__ = __str__


def patient(value: object) -> PatientValue:
    """Wrap a patient attribute's value for a DEBUG log line (shown with ``[log] phi``)."""
    return PatientValue(value)


def redact_quoted_values(text: str) -> str:
    """*text* without the values pydicom quotes in its validation messages."""
    for pattern in _PYDICOM_VALUE:
        text = pattern.sub(
            lambda m: m.group(1) + HIDDEN + (m.group(2) if m.lastindex == 2 else ""), text
        )
    return text


def _safe_arg(arg: object, shown: bool) -> object:
    """*arg* as a log line may show it."""
    if isinstance(arg, PatientValue):
        return arg.value if shown else HIDDEN
    if shown:
        return arg
    module = type(arg).__module__
    if not module.startswith("pydicom"):
        return arg
    name = type(arg).__name__
    if name == "PersonName":
        return HIDDEN
    if name in ("Dataset", "FileDataset"):
        uid = getattr(arg, "SOPInstanceUID", None)
        return f"<data set {uid}>" if uid else "<data set>"
    if name in ("DataElement", "RawDataElement"):
        tag = int(getattr(arg, "tag", 0))
        if tag in _PATIENT_TAGS or tag >> 16 == 0x0010:
            return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {HIDDEN}"
    return arg


class PatientDataFilter(logging.Filter):
    """Keeps patient data out of log lines (see the module docstring).

    *phi*: ``[log] phi``; when true, DEBUG lines show what :func:`patient`
    wraps, pydicom objects and quoted values as they are.  Lines at INFO and
    above never do.  Attached to the handler, so it sees the records of
    every logger.
    """

    def __init__(self, phi: bool = False) -> None:
        super().__init__()
        self.phi = phi

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "py.warnings" and _PYDICOM_SOURCE in str(record.args or record.msg):
            return False  # pydicom logged it already (pydicom.misc.warn_and_log)
        shown = self.phi and record.levelno <= logging.DEBUG
        if record.args:
            if isinstance(record.args, Mapping):
                record.args = {k: _safe_arg(v, shown) for k, v in record.args.items()}
            else:
                record.args = tuple(_safe_arg(a, shown) for a in record.args)
        if shown:
            return True
        for key in list(vars(record)):
            if key.lower() in _PATIENT_EXTRAS and key not in _STANDARD:
                setattr(record, key, HIDDEN)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad log call: the handler reports it, not us
            return True
        cleaned = redact_quoted_values(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = redact_quoted_values(
                "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            )
        return True


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """``2026-11-22 12:00:00,123 INFO  dicom_node.receive.scp: message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the extras."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update(_extras(record))
        if record.exc_info:
            payload["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(level: str = "INFO", json_format: bool = False, phi: bool = False) -> None:
    """Send logs to stderr, as text lines or JSON lines, without patient data.

    *phi* (``[log] phi``): DEBUG lines may show patient data (never lines at
    INFO or above).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_format else TextFormatter())
    handler.addFilter(PatientDataFilter(phi))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    # pynetdicom logs every PDU at INFO/DEBUG; keep it at WARNING unless debugging.
    quiet = "DEBUG" if level == "DEBUG" else "WARNING"
    for noisy in ("pynetdicom", "alembic", "highdicom"):
        logging.getLogger(noisy).setLevel(quiet)
