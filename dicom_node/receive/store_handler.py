"""Where a C-STORE becomes durable data: :func:`handle_store` (PS3.4 B.2.2, B.2.3).

The association (:mod:`dicom_node.receive.scp`) streams a C-STORE's data set into a
temporary spool file and then hands it here as a :class:`StoreRequest`; this
module parses the header, checks the UIDs against the command and PS3.5 9.1,
checks the watermark, records the instance (:class:`storage.received.ReceivedStore`)
and answers with the status to send (:class:`StoreAnswer`).  It never raises:
every exception becomes a status through :func:`status_for`.
No socket is involved, so it is tested directly with files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dicom_node.errors import StoreRejected
from dicom_node.logs import patient
from dicom_node.protocol import status as st
from dicom_node.receive.header import (
    MAX_INFLATED_HEADER,
    fast_record,
    header_from_file,
    header_from_prefix,
    header_record,
    parse_header,
    routing_attributes,
)
from dicom_node.receive.uids import UidCheck, UidPolicy, check_uids
from storage.db import DatabaseError
from storage.received import InstanceRecord, ReceivedStore, StoreOutcome, StoreResult
from storage.spool import BufferedFile, SpoolConflict, SpooledFile

__all__ = [
    "StoreAnswer",
    "StoreRequest",
    "check_command_uids",
    "handle_store",
    "log_refusal",
    "status_for",
]

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreRequest:
    """One C-STORE whose data set is in a temporary spool file.

    Attributes
    ----------
    spooled:
        The temporary file, or the file held in memory: the file meta the
        receiver wrote (``meta_length`` bytes), then the data set exactly as sent.
    head:
        The first bytes of the data set (the header is parsed from them when
        it fits; otherwise from the file).
    data_size:
        Length of the data set in bytes.
    """

    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    transfer_syntax_uid: str
    spooled: SpooledFile | BufferedFile
    meta_length: int
    head: bytes
    data_size: int
    calling_ae: str = ""
    called_ae: str = ""
    peer_address: str = ""
    uid_policy: UidPolicy = UidPolicy.STRICT


@dataclass(frozen=True)
class StoreAnswer:
    """The C-STORE response to send, and what was done.

    ``outcome`` is ``None`` when the instance was refused (``record`` is then
    set when its header was read, so the refusal can be counted for its
    study); ``uid_warnings``
    describes UIDs accepted under ``uid_policy = "warn"`` (the caller logs
    them once per association).
    """

    status: int
    comment: str | None = None
    outcome: StoreOutcome | None = None
    record: InstanceRecord | None = None
    uid_warnings: str | None = None

    @property
    def stored(self) -> bool:
        return self.outcome is not None


STATUS_FOR_EXCEPTION: tuple[tuple[type[BaseException], int, str], ...] = (
    (SpoolConflict, st.STORAGE_FAILURE, "spool path taken by another file"),
    (DatabaseError, st.OUT_OF_RESOURCES, "database error while storing; retry later"),
    (OSError, st.OUT_OF_RESOURCES, "file system error while storing; retry later"),
)
"""Exceptions other than :class:`~dicom_node.errors.StoreRejected`, in order:
the first whose type matches gives the status and the Error Comment.  A
failure that may pass (the database or a disk, for a moment) is Refused: Out
of Resources (0xA7xx), which senders retry; 0xCxxx (Cannot understand) makes
most of them give up on the instance for good (PS3.4 B.2.3)."""

EXPECTED_STORE_FAILURES: tuple[type[BaseException], ...] = (SpoolConflict,)
"""Failures logged in one line (no traceback): their message says it all."""

INTERNAL_ERROR = (st.OUT_OF_RESOURCES, "internal error while storing; retry later")
"""The answer to any other exception (the sender may retry)."""


def status_for(exc: BaseException) -> tuple[int, str]:
    """The C-STORE status and Error Comment (0000,0902) that answer *exc*."""
    if isinstance(exc, StoreRejected):
        return exc.status, exc.reason
    for kind, status, comment in STATUS_FOR_EXCEPTION:
        if isinstance(exc, kind):
            return status, comment
    return INTERNAL_ERROR


def log_refusal(calling_ae: str, refusal: StoreRejected) -> None:
    """One WARNING line for a refused C-STORE: the peer, the status and the reason."""
    LOGGER.warning(
        "C-STORE from %s refused with 0x%04X (%s): %s",
        calling_ae,
        refusal.status,
        st.describe(refusal.status),
        refusal.reason,
    )


def check_command_uids(
    affected_sop_class_uid: str, affected_sop_instance_uid: str, policy: UidPolicy
) -> None:
    """Refuse (0xC005) a command whose Affected SOP Class/Instance UID is not a UID.

    Under ``uid_policy = "warn"`` only values no UID may have (non-ASCII,
    control characters, over-long) are refused; the data set's own UIDs are
    checked in :func:`handle_store`.
    """
    uids = {
        "Affected SOP Class UID": affected_sop_class_uid,
        "Affected SOP Instance UID": affected_sop_instance_uid,
    }
    check = check_uids({k: v for k, v in uids.items() if v}, policy)
    if check.refused:
        raise StoreRejected(st.INVALID_UID, check.describe(check.refused))


def handle_store(
    request: StoreRequest,
    store: ReceivedStore,
    *,
    on_stored: Callable[[InstanceRecord, StoreResult], None] | None = None,
) -> StoreAnswer:
    """Make *request*'s data set durable; return the status to answer (PS3.4 B.2.3).

    The temporary file is always consumed: moved into place, or removed.
    """
    record: InstanceRecord | None = None  # known once the header is read (for the audit)
    try:
        record, warnings = _checked_record(request, store)
        result = store.store(record, request.spooled)
        if result.outcome is StoreOutcome.REJECTED:
            raise StoreRejected(
                st.DUPLICATE_DIFFERS,
                f"instance {record.sop_instance_uid} already stored with different content",
            )
    except Exception as exc:  # noqa: BLE001 - every failure is answered with a status
        store.spool.discard(request.spooled)
        status, comment = status_for(exc)
        if isinstance(exc, StoreRejected):
            log_refusal(request.calling_ae, exc)
        else:
            LOGGER.error(
                "C-STORE from %s failed while storing (0x%04X): %s",
                request.calling_ae,
                status,
                comment,
                exc_info=not isinstance(exc, EXPECTED_STORE_FAILURES),
            )
        return StoreAnswer(status, comment[:64], record=record)
    if result.outcome in (StoreOutcome.DUPLICATE_KEPT, StoreOutcome.REPLACED):
        LOGGER.warning(
            "instance re-sent with different content (%s): %s",
            result.outcome.value,
            record.sop_instance_uid,
        )
    if LOGGER.isEnabledFor(logging.DEBUG):  # names the patient only with [log] phi
        LOGGER.debug(
            "stored %s (%s) from %s: patient %s, patient id %s, accession %s",
            record.sop_instance_uid,
            result.outcome.value,
            request.calling_ae,
            patient(record.patient_name),
            patient(record.patient_id),
            patient(record.accession_number),
        )
    if on_stored is not None:
        try:
            on_stored(record, result)
        except Exception:
            LOGGER.exception("on_stored callback failed (the instance is stored)")
    return StoreAnswer(st.SUCCESS, None, result.outcome, record, warnings)


def _checked_record(
    request: StoreRequest, store: ReceivedStore
) -> tuple[InstanceRecord, str | None]:
    """The instance's record, after every check that may refuse it."""
    ts_uid = request.transfer_syntax_uid
    prefix = request.head
    try:
        record = fast_record(prefix, ts_uid, complete=len(prefix) >= request.data_size)
    except StoreRejected:
        raise
    except Exception:  # noqa: BLE001 - pydicom's parse below decides
        record = None
    if record is not None:
        record.attributes = lambda: _series_attributes(request)
        return _checked(record, request, store)
    try:
        parsed = header_from_prefix(prefix, request.data_size, ts_uid, record_only=True)
        if parsed is None and isinstance(request.spooled, BufferedFile):
            prefix = b"".join(request.spooled.chunks)[request.meta_length :]
            parsed = header_from_prefix(prefix, request.data_size, ts_uid, record_only=True)
        elif parsed is None and isinstance(request.spooled, SpooledFile):
            # A header longer than the kept prefix: read it from the file.
            parsed = header_from_file(
                request.spooled.temp_path, request.meta_length, ts_uid, record_only=True
            )
            prefix = b""
    except Exception as exc:
        raise StoreRejected(st.CANNOT_DECODE, f"cannot parse data set: {exc}") from exc
    if parsed is None:
        raise StoreRejected(
            st.CANNOT_DECODE,
            f"header longer than {MAX_INFLATED_HEADER // 2**20} MiB inflated (Deflated)",
        )
    ds = parsed

    def attributes() -> dict[str, Any]:
        # Only for the first instance of a series: a full header parse of the
        # prefix; what cannot be read is left out, never failing the store.
        if prefix:
            try:
                return routing_attributes(parse_header(prefix, ts_uid))
            except Exception as exc:
                LOGGER.warning(
                    "header of a series' first instance only partly readable (%s); "
                    "routing attributes from the record's elements",
                    type(exc).__name__,
                )
        return routing_attributes(ds)

    return _checked(header_record(ds, ts_uid, attributes), request, store)


def _series_attributes(request: StoreRequest) -> dict[str, Any]:
    """The routing attributes of a series' first instance, from a full header parse."""
    spooled = request.spooled
    ts_uid = request.transfer_syntax_uid
    try:
        if isinstance(spooled, BufferedFile):
            data = b"".join(spooled.chunks)[request.meta_length :]
            return routing_attributes(parse_header(data, ts_uid))
        ds = header_from_file(spooled.temp_path, request.meta_length, ts_uid)
        return {} if ds is None else routing_attributes(ds)
    except Exception as exc:
        LOGGER.warning(
            "header of a series' first instance not readable in full (%s); "
            "no routing attributes beyond the record's",
            type(exc).__name__,
        )
        return {}


def _checked(
    record: InstanceRecord, request: StoreRequest, store: ReceivedStore
) -> tuple[InstanceRecord, str | None]:
    """*record* after the checks of the UIDs and the disk space that may refuse it."""
    check = _dataset_uids(record, request.uid_policy)
    if check.refused:
        raise StoreRejected(st.INVALID_UID, check.describe(check.refused))
    affected_instance = request.affected_sop_instance_uid
    if affected_instance and affected_instance != record.sop_instance_uid:
        raise StoreRejected(
            st.UID_MISMATCH,
            f"SOPInstanceUID {record.sop_instance_uid} differs from the command's "
            f"Affected SOP Instance UID {affected_instance}",
        )
    affected_class = request.affected_sop_class_uid
    if affected_class and affected_class != record.sop_class_uid:
        raise StoreRejected(
            st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"SOPClassUID {record.sop_class_uid} differs from the command's "
            f"Affected SOP Class UID {affected_class}",
        )
    if not store.spool.has_room_for(0):  # the file is written: its space is taken
        raise StoreRejected(st.OUT_OF_RESOURCES, watermark_reason(store))
    record.calling_ae = request.calling_ae
    record.called_ae = request.called_ae
    record.peer_address = request.peer_address
    warnings = check.describe(check.warnings) if check.warnings else None
    return record, warnings


def _dataset_uids(record: InstanceRecord, policy: UidPolicy) -> UidCheck:
    """The data set's UIDs against PS3.5 9.1 under *policy*."""
    return check_uids(
        {
            "StudyInstanceUID": record.study_instance_uid,
            "SeriesInstanceUID": record.series_instance_uid,
            "SOPInstanceUID": record.sop_instance_uid,
            "SOPClassUID": record.sop_class_uid,
        },
        policy,
    )


def watermark_reason(store: ReceivedStore) -> str:
    """The Error Comment of a refusal for lack of disk space."""
    return f"spool disk below the free-space watermark ({store.spool.min_free_bytes // 2**20} MB)"
