"""ReceivedStore on real SQLite and PostgreSQL: rows, files, duplicates, concurrency."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select

from storage.db import Database
from storage.models import Instance, Series, Study
from storage.received import DuplicateAction, InstanceRecord, ReceivedStore, StoreOutcome
from storage.spool import Spool, SpoolConflict, safe_component


def record(
    sop: str, series: str = "1.2.3.2", study: str = "1.2.3.1", **kw: object
) -> InstanceRecord:
    return InstanceRecord(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="CT",
        attributes={"ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"], "SliceThickness": 1.25},
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def store(database: Database, tmp_path: Path) -> ReceivedStore:
    return ReceivedStore(database, Spool(tmp_path / "spool"))


def test_migrations_reach_head(database: Database) -> None:
    assert database.current_revision() == database.head_revision()
    database.upgrade()  # idempotent
    assert database.current_revision() == database.head_revision()


def test_store_writes_file_and_rows(store: ReceivedStore) -> None:
    payload = b"DICOM bytes " * 100
    spooled = store.spool.write_temp([payload[:10], payload[10:]])
    assert spooled.sha256 == hashlib.sha256(payload).hexdigest()
    result = store.store(record("1.2.3.3", instance_number=7), spooled)
    assert result.outcome is StoreOutcome.STORED
    assert result.path == "1.2.3.1/1.2.3.2/1.2.3.3.dcm"
    assert store.spool.absolute(result.path).read_bytes() == payload
    assert not spooled.temp_path.exists()
    with store.db.session() as s:
        inst = s.scalars(select(Instance)).one()
        assert inst.size_bytes == len(payload)
        assert inst.instance_number == 7
        series = s.scalars(select(Series)).one()
        assert series.modality == "CT"
        assert series.attributes["ImageType"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert s.scalar(select(func.count(Study.id))) == 1


@pytest.mark.parametrize(
    ("policy", "outcome", "kept"),
    [
        (DuplicateAction.KEEP_FIRST, StoreOutcome.DUPLICATE_KEPT, b"first"),
        (DuplicateAction.REPLACE, StoreOutcome.REPLACED, b"second"),
        (DuplicateAction.REJECT, StoreOutcome.REJECTED, b"first"),
    ],
)
def test_duplicates(
    store: ReceivedStore, policy: DuplicateAction, outcome: StoreOutcome, kept: bytes
) -> None:
    store.duplicate_action = policy
    first = store.store(record("9.9"), store.spool.write_temp(b"first"))
    same = store.store(record("9.9"), store.spool.write_temp(b"first"))
    assert same.outcome is StoreOutcome.DUPLICATE_SAME
    other = store.store(record("9.9"), store.spool.write_temp(b"second"))
    assert other.outcome is outcome
    assert store.spool.absolute(first.path).read_bytes() == kept
    with store.db.session() as s:
        inst = s.scalars(select(Instance)).one()
        assert inst.sha256 == hashlib.sha256(kept).hexdigest()
        assert inst.receive_count == (2 if policy is DuplicateAction.REJECT else 3)
    assert list(store.spool.tmp_dir.iterdir()) == []


def test_concurrent_stores_of_one_series(store: ReceivedStore) -> None:
    """Eight threads store overlapping instances of one new series: each is stored once."""
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for n in range(offset, offset + 30):
                store.store(record(f"1.2.3.4.{n}"), store.spool.write_temp(f"i{n}".encode()))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k * 10,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    with store.db.session() as s:
        assert s.scalar(select(func.count(Instance.id))) == 100
        assert s.scalar(select(func.count(Series.id))) == 1
        assert s.scalar(select(func.sum(Instance.receive_count))) == 240


def test_unsafe_uids_get_safe_stable_names(store: ReceivedStore) -> None:
    bad = "1.2.3/../../etc"
    assert safe_component(bad) == safe_component(bad)
    assert "/" not in safe_component(bad) and safe_component(bad).startswith("@")
    result = store.store(record(bad), store.spool.write_temp(b"x"))
    assert store.spool.absolute(result.path).resolve().is_relative_to(store.spool.root.resolve())


def test_watermark(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", min_free_bytes=10**18)
    assert not spool.has_room_for(1)
    assert Spool(tmp_path / "t", min_free_bytes=0).has_room_for(1)


def test_clean_temp(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    (spool.tmp_dir / "left.part").write_bytes(b"x")
    assert spool.clean_temp() == 1


def test_lost_file_is_repaired_by_a_resend(store: ReceivedStore) -> None:
    """A row whose file did not survive a crash is repaired when the sender retries."""
    first = store.store(record("7.7"), store.spool.write_temp(b"payload"))
    store.spool.absolute(first.path).unlink()
    again = store.store(record("7.7"), store.spool.write_temp(b"payload"))
    assert again.outcome is StoreOutcome.REPAIRED
    assert store.spool.absolute(first.path).read_bytes() == b"payload"


def test_hashed_names_cannot_be_taken_by_another_uid(store: ReceivedStore) -> None:
    """A UID that spells another UID's hashed name (old ``x<sha1>`` or new ``@<sha1>``)
    gets its own file; the first instance's file is never overwritten."""
    unsafe = "1.2.3/4"
    digest = hashlib.sha1(unsafe.encode()).hexdigest()
    results = [
        store.store(record(uid), store.spool.write_temp(uid.encode()))
        for uid in (unsafe, "x" + digest, "@" + digest)
    ]
    assert [r.outcome for r in results] == [StoreOutcome.STORED] * 3
    assert len({r.path for r in results}) == 3
    for uid, result in zip((unsafe, "x" + digest, "@" + digest), results, strict=True):
        assert store.spool.absolute(result.path).read_bytes() == uid.encode()
    assert safe_component("1.2.840.10008") == "1.2.840.10008"
    assert safe_component("1.2.A") != "1.2.A"  # one name on case-insensitive disks too


def test_a_new_instance_never_replaces_a_file(store: ReceivedStore) -> None:
    """A file already at a new instance's path (no row of its own) is kept; the store fails."""
    rel = store.spool.relative_path("1.2.3.1", "1.2.3.2", "9.9")
    store.spool.absolute(rel).parent.mkdir(parents=True)
    store.spool.absolute(rel).write_bytes(b"first")
    spooled = store.spool.write_temp(b"second")
    with pytest.raises(SpoolConflict):
        store.store(record("9.9"), spooled)
    assert store.spool.absolute(rel).read_bytes() == b"first"
    assert not spooled.temp_path.exists()
    with store.db.session() as s:
        assert s.scalar(select(func.count(Instance.id))) == 0


def test_iter_adopt_and_quarantine(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    (spool.root / "1/2").mkdir(parents=True)
    (spool.root / "1/2/3.dcm").write_bytes(b"META" + b"data")
    (spool.tmp_dir / "t.part").write_bytes(b"x")
    assert list(spool.iter_files()) == ["1/2/3.dcm"]
    adopted = spool.adopt("1/2/3.dcm", unhashed_bytes=4)
    assert adopted.sha256 == hashlib.sha256(b"data").hexdigest() and adopted.size_bytes == 8
    assert not (spool.root / "1/2/3.dcm").exists()
    target = spool.quarantine(adopted.temp_path, "1/2/3.dcm")
    assert target == spool.root / ".quarantine/1/2/3.dcm" and target.read_bytes() == b"METAdata"
    assert list(spool.iter_files()) == []
