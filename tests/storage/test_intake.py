"""The intake journal on real files, SQLite and PostgreSQL: append, replay, checkpoints.

An instance acknowledged through the journal must end up in the spool and the
database whatever happens after the acknowledgement: the writer applies it,
or the next start replays it; a torn entry (a crash in the middle of an
append, never acknowledged) is never applied.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select

from storage.db import Database
from storage.intake import (
    SEGMENT_BYTES,
    IntakeEntry,
    IntakeJournal,
    read_entries,
    write_checkpoint,
)
from storage.models import Instance, Series
from storage.received import InstanceRecord, ReceivedStore, StoreOutcome, StoreResult
from storage.spool import BufferedFile, Spool

META = b"M" * 40
"""Stands for the file meta a receiver writes before the data set (not hashed)."""


def record(sop: str, series: str = "1.2.3.2", study: str = "1.2.3.1") -> InstanceRecord:
    return InstanceRecord(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="CT",
        instance_number=int(sop.rsplit(".", 1)[1]),
        calling_ae="SCANNER",
        attributes={"SliceThickness": 1.0},
    )


def buffered(payload: bytes) -> BufferedFile:
    return BufferedFile(
        (META, payload[:7], payload[7:]),
        len(META) + len(payload),
        hashlib.sha256(payload).hexdigest(),
        len(META),
    )


def entry(n: int, payload: bytes) -> IntakeEntry:
    rec = record(f"1.2.3.3.{n}")
    fields = {k: v for k, v in vars(rec).items() if k != "attributes"}
    return IntakeEntry(
        path=f"1.2.3.1/1.2.3.2/1.2.3.3.{n}.dcm",
        record=fields,
        sha256=hashlib.sha256(payload).hexdigest(),
        size_bytes=len(META) + len(payload),
        meta_length=len(META),
        chunks=[META, payload],
    )


@pytest.fixture
def store(database: Database, tmp_path: Path) -> Iterator[ReceivedStore]:
    s = ReceivedStore(database, Spool(tmp_path / "spool"))
    s.start_intake(tmp_path / "spool" / ".intake" / "main", durable=True)
    yield s
    s.stop_intake()


def test_entries_read_back_in_order_and_past_the_checkpoint(tmp_path: Path) -> None:
    journal = IntakeJournal(tmp_path / "j")
    payloads = [os.urandom(100 + n) for n in range(5)]
    seqs = [journal.append(entry(n, p)) for n, p in enumerate(payloads)]
    assert seqs == [1, 2, 3, 4, 5]
    got = list(read_entries(tmp_path / "j"))
    assert [e.seq for e in got] == seqs
    assert [b"".join(e.chunks) for e in got] == [META + p for p in payloads]
    assert got[2].record["sop_instance_uid"] == "1.2.3.3.2"
    journal.applied([1, 2, 4])  # 3 not yet: the checkpoint stays at 2
    assert journal.checkpointed == 2
    assert [e.seq for e in read_entries(tmp_path / "j")] == [3, 4, 5]
    journal.applied([3, 5])
    assert journal.checkpointed == 5
    assert list(read_entries(tmp_path / "j")) == []
    journal.close()


def test_a_torn_or_corrupted_entry_is_never_applied(tmp_path: Path) -> None:
    journal = IntakeJournal(tmp_path / "j")
    for n in range(3):
        journal.append(entry(n, os.urandom(1000)))
    journal.close()
    segment = next((tmp_path / "j").glob("segment-*.log"))
    data = bytearray(segment.read_bytes())
    # Flip one byte in the data set of the second entry: its SHA-256 no longer
    # matches, and reading stops there (what follows was written after it).
    first = 4096 + data[4096:].index(b"DNJ1", 4)  # the second entry's header
    data[first + 200] ^= 0xFF
    segment.write_bytes(bytes(data))
    assert [e.seq for e in read_entries(tmp_path / "j")] == [1]


def test_segments_are_reused_and_stale_entries_ignored(tmp_path: Path) -> None:
    journal = IntakeJournal(tmp_path / "j")
    big = os.urandom(3 * 2**20)
    n = 0
    while len(list((tmp_path / "j").glob("segment-*.log"))) < 2 or n < 40:
        seq = journal.append(entry(n, big))
        journal.applied([seq])
        n += 1
    assert n * len(big) > 1.5 * SEGMENT_BYTES
    # Every entry was applied: the first segment was taken again, not a third made.
    assert len(list((tmp_path / "j").glob("segment-*.log"))) == 2
    assert list(read_entries(tmp_path / "j")) == []
    last = journal.append(entry(99, b"last one"))
    journal.close()
    assert [e.seq for e in read_entries(tmp_path / "j")] == [last]


def test_first_instance_direct_then_journaled_and_written_soon_after(
    store: ReceivedStore,
) -> None:
    first = store.store(record("1.2.3.3.1"), buffered(b"first instance"))
    assert first.outcome is StoreOutcome.STORED and first.instance_id is not None
    second = store.store(record("1.2.3.3.2"), buffered(b"second instance"))
    assert second.outcome is StoreOutcome.STORED and second.instance_id is None  # journaled
    assert store.intake is not None and store.intake.drain(10)
    assert store.spool.absolute(second.path).read_bytes() == META + b"second instance"
    with store.db.session() as s:
        rows = s.execute(select(Instance.sop_instance_uid, Instance.sha256, Instance.calling_ae))
        got = {r.sop_instance_uid: r for r in rows}
    assert got["1.2.3.3.2"].sha256 == hashlib.sha256(b"second instance").hexdigest()
    assert got["1.2.3.3.2"].calling_ae == "SCANNER"
    # Re-sent: the direct path finds the row the journal made.
    again = store.store(record("1.2.3.3.2"), buffered(b"second instance"))
    assert again.outcome is StoreOutcome.DUPLICATE_SAME


def test_concurrent_associations_share_journal_flushes(store: ReceivedStore) -> None:
    store.store(record("1.2.3.3.0"), buffered(b"opens the series"))
    errors: list[BaseException] = []

    def send(start: int) -> None:
        try:
            for n in range(start, start + 50):
                store.store(record(f"1.2.3.3.{n}"), buffered(f"payload {n}".encode()))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(1 + 50 * k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.intake is not None and store.intake.drain(10)
    with store.db.session() as s:
        assert s.scalar(select(func.count(Instance.id))) == 201
    assert store.journal is not None and store.journal.checkpointed == 200


def test_replay_after_a_crash_writes_files_and_rows_once(
    database: Database, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    store = ReceivedStore(database, spool)
    store.store(record("1.2.3.3.0"), spool.write_temp([b"direct"]))  # the series row
    # A process that journaled three instances and died before writing them.
    folder = tmp_path / "spool" / ".intake" / "main"
    journal = IntakeJournal(folder)
    payloads = {n: os.urandom(2000) for n in (1, 2, 3)}
    for n, p in payloads.items():
        journal.append(entry(n, p))
    journal.close()
    # One file half-written by the dead writer: replay writes it whole.
    half = spool.absolute("1.2.3.1/1.2.3.2/1.2.3.3.2.dcm")
    half.write_bytes(META + payloads[2][:100])

    restarted = ReceivedStore(database, Spool(tmp_path / "spool"))
    assert restarted.replay_intake([folder]) == 3
    for n, p in payloads.items():
        assert spool.absolute(f"1.2.3.1/1.2.3.2/1.2.3.3.{n}.dcm").read_bytes() == META + p
    with database.session() as s:
        assert s.scalar(select(func.count(Instance.id))) == 4
        assert s.scalar(select(func.count(Series.id))) == 1
    assert restarted.replay_intake([folder]) == 0  # checkpointed
    # Replaying an entry that was applied already changes nothing.
    write_checkpoint(folder, 0)
    assert restarted.replay_intake([folder]) == 3
    with database.session() as s:
        assert s.scalar(select(func.count(Instance.id))) == 4
        assert set(s.scalars(select(Instance.receive_count))) == {1, 2}


def test_an_instance_two_receiver_processes_take_at_once_is_stored_once(
    database: Database, tmp_path: Path
) -> None:
    """Receiver processes share the spool and the database, each with its own
    journal: an instance that another process stores directly while this one's
    writer applies its journaled copy -- after the writer looked for existing
    rows, before it inserts -- is a duplicate, its file untouched."""
    a = ReceivedStore(database, Spool(tmp_path / "spool"))
    b = ReceivedStore(database, Spool(tmp_path / "spool"))
    a.store(record("1.2.3.3.0"), buffered(b"opens the series"))
    payload = b"one instance, sent to both processes"
    journaled = entry(1, payload)  # in a's journal, its writer about to run
    direct: list[StoreResult] = []
    other = threading.Thread(
        target=lambda: direct.append(b.store(record("1.2.3.3.1"), buffered(payload)))
    )

    def other_process_first(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO INSTANCE") and not other.ident:
            other.start()  # b's insert goes first unless a holds a lock already
            other.join(2.0)

    event.listen(database.engine, "before_cursor_execute", other_process_first)
    try:
        a.apply_intake([journaled])  # no unique-key error whichever row came first
    finally:
        event.remove(database.engine, "before_cursor_execute", other_process_first)
    other.join(30)
    assert direct and direct[0].outcome in (StoreOutcome.STORED, StoreOutcome.DUPLICATE_SAME)
    with database.session() as s:
        row = s.execute(
            select(Instance.receive_count, Instance.path).where(
                Instance.sop_instance_uid == "1.2.3.3.1"
            )
        ).one()
    assert row.receive_count == 2
    assert a.spool.absolute(row.path).read_bytes() == META + payload
