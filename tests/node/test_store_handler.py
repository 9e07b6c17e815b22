"""``handle_store``: where a C-STORE becomes durable data, tested without a socket.

Each request carries a real data set from the shared files, written to the
spool's temporary area the way the association writes it (the node's file
meta, then the data set exactly as sent).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_node.errors import StoreRejected
from dicom_node.protocol import status as st
from dicom_node.protocol.file_meta import encode_file_meta
from dicom_node.receive.store_handler import (
    INTERNAL_ERROR,
    StoreRequest,
    check_command_uids,
    handle_store,
    status_for,
)
from dicom_node.receive.uids import UidPolicy
from storage.db import Database
from storage.received import DuplicateAction, ReceivedStore, StoreOutcome
from storage.spool import Spool, SpoolConflict

CT_FILE = "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm/I10"


def dataset_bytes(path: Path) -> bytes:
    """The data set of a Part 10 file, without preamble and file meta."""
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM"
    (group_length,) = struct.unpack("<L", raw[140:144])  # (0002,0000) UL
    return raw[144 + group_length :]


def request_for(
    store: ReceivedStore,
    path: Path,
    *,
    affected_instance: str | None = None,
    data: bytes | None = None,
    policy: UidPolicy = UidPolicy.STRICT,
) -> StoreRequest:
    ds = dcmread(path, stop_before_pixels=True)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    instance = affected_instance or str(ds.SOPInstanceUID)
    body = data if data is not None else dataset_bytes(path)
    meta = encode_file_meta(str(ds.SOPClassUID), instance, syntax, "SCANNER")
    writer = store.spool.open_temp()
    writer.write(meta, hashed=False)
    writer.write(body)
    return StoreRequest(
        affected_sop_class_uid=str(ds.SOPClassUID),
        affected_sop_instance_uid=instance,
        transfer_syntax_uid=syntax,
        spooled=writer.finish(),
        meta_length=len(meta),
        head=body[: 256 * 1024],
        data_size=len(body),
        calling_ae="SCANNER",
        called_ae="DICOM_NODE",
        peer_address="127.0.0.1",
        uid_policy=policy,
    )


@pytest.fixture
def store(tmp_path: Path) -> ReceivedStore:
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    db.upgrade()
    yield ReceivedStore(db, Spool(tmp_path / "spool"))
    db.dispose()


def temp_files(store: ReceivedStore) -> list[Path]:
    return sorted(store.spool.tmp_dir.iterdir())


def test_a_real_instance_is_stored_then_recognised_as_resent(
    store: ReceivedStore, dicom_data: Path
) -> None:
    path = dicom_data / CT_FILE
    answer = handle_store(request_for(store, path), store)
    assert (answer.status, answer.comment, answer.outcome) == (
        st.SUCCESS,
        None,
        StoreOutcome.STORED,
    )
    assert answer.record is not None and answer.record.calling_ae == "SCANNER"
    stored = store.spool.root / store.spool.relative_path(
        answer.record.study_instance_uid,
        answer.record.series_instance_uid,
        answer.record.sop_instance_uid,
    )
    assert dataset_bytes(stored) == dataset_bytes(path)
    again = handle_store(request_for(store, path), store)
    assert (again.status, again.outcome) == (st.SUCCESS, StoreOutcome.DUPLICATE_SAME)
    assert temp_files(store) == []


def test_refusals_answer_their_status_and_leave_no_file(
    store: ReceivedStore, dicom_data: Path
) -> None:
    path = dicom_data / CT_FILE
    mismatch = handle_store(request_for(store, path, affected_instance="1.2.3.4"), store)
    assert mismatch.status == st.UID_MISMATCH and not mismatch.stored
    # The Error Comment (0000,0902) is LO: at most 64 characters of the reason.
    assert (mismatch.comment or "").startswith("SOPInstanceUID 1.3.46.")
    assert len(mismatch.comment or "") == 64
    garbage = handle_store(request_for(store, path, data=b"\xff" * 8), store)
    assert garbage.status == st.CANNOT_DECODE
    no_uids = handle_store(request_for(store, path, data=b"\x10\x00\x10\x00PN\x04\x00Doe^"), store)
    assert no_uids.status == st.MISSING_UID
    assert temp_files(store) == []
    assert not any(p.is_file() for p in store.spool.root.rglob("*") if ".tmp" not in p.parts)


def test_a_changed_resend_under_the_reject_policy_is_0xC003(
    store: ReceivedStore, dicom_data: Path
) -> None:
    path = dicom_data / CT_FILE
    strict = ReceivedStore(store.db, store.spool, DuplicateAction.REJECT)
    assert handle_store(request_for(strict, path), strict).status == st.SUCCESS
    changed = dataset_bytes(path) + b""  # same data set, but one private byte appended
    changed = changed[:-1] + bytes([changed[-1] ^ 1])
    answer = handle_store(request_for(strict, path, data=changed), strict)
    assert answer.status == st.DUPLICATE_DIFFERS and not answer.stored
    assert temp_files(strict) == []


def test_a_database_failure_is_a_retryable_storage_failure(
    store: ReceivedStore, dicom_data: Path
) -> None:
    request = request_for(store, dicom_data / CT_FILE)
    with store.db.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE instance")
    answer = handle_store(request, store)
    assert answer.status == st.OUT_OF_RESOURCES and not answer.stored  # senders retry 0xA7xx
    assert answer.comment == "database error while storing; retry later"
    assert temp_files(store) == []


def test_command_uids_are_checked_before_the_data_set() -> None:
    check_command_uids("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", UidPolicy.STRICT)
    with pytest.raises(StoreRejected) as refused:
        check_command_uids("1.2.840.10008.5.1.4.1.1.2", "1.2.03.4", UidPolicy.STRICT)
    assert refused.value.status == st.INVALID_UID
    check_command_uids("1.2.840.10008.5.1.4.1.1.2", "1.2.03.4", UidPolicy.WARN)
    with pytest.raises(StoreRejected):
        check_command_uids("1.2.840.10008.5.1.4.1.1.2", "1.2.é.4", UidPolicy.WARN)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (StoreRejected(st.OUT_OF_RESOURCES, "disk full"), (st.OUT_OF_RESOURCES, "disk full")),
        (SpoolConflict("taken"), (st.STORAGE_FAILURE, "spool path taken by another file")),
        (
            OSError(28, "No space left"),
            (st.OUT_OF_RESOURCES, "file system error while storing; retry later"),
        ),
        (KeyError("x"), INTERNAL_ERROR),
    ],
)
def test_status_for_each_kind_of_exception(exc: BaseException, expected: tuple[int, str]) -> None:
    assert status_for(exc) == expected


def test_success_or_warning() -> None:
    assert st.is_success_or_warning(st.SUCCESS)
    assert st.is_success_or_warning(0xB000) and st.is_success_or_warning(0xB007)
    assert not st.is_success_or_warning(st.OUT_OF_RESOURCES)
    assert not st.is_success_or_warning(st.CANNOT_UNDERSTAND)
