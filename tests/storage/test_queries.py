"""The read models of storage.queries on real SQLite and PostgreSQL.

Jobs, results and deliveries are made through the public storage API
(received store, collector, job and delivery queues), then read back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from dicom_node.collect import Collector
from dicom_node.config import Settings
from storage import queries
from storage.db import Database
from storage.jobs import (
    DeliveryOutcome,
    DeliveryQueue,
    JobQueue,
    NewJob,
    NewResult,
)
from storage.models import Completion, Series, Study, utcnow
from storage.queries import (
    DeliveryRecord,
    FailedDelivery,
    JobSummary,
    ResultRecord,
    SeriesSummary,
    StudySummary,
)
from storage.received import InstanceRecord, ReceivedStore
from storage.spool import Spool

STUDY = "1.2.826.0.1.3680043.8.498.30"
CT = f"{STUDY}.1"
MR = f"{STUDY}.2"
CT_LATER = f"{STUDY}.3"
OTHER_STUDY = "1.2.826.0.1.3680043.8.498.31"
OTHER_CT = f"{OTHER_STUDY}.1"


def settings() -> Settings:
    return Settings.model_validate(
        {
            "destinations": [
                {
                    "name": "pacs",
                    "type": "dicom",
                    "ae_title": "PACS",
                    "host": "127.0.0.1",
                    "port": 4242,
                },
                {"name": "viewer", "type": "folder", "path": "/tmp/unused", "outputs": ["sr"]},
            ],
            "rules": [
                {
                    "name": "ct",
                    "match": {"Modality": "CT"},
                    "pipelines": ["ct-lungs", "ct-other"],
                    "destinations": ["pacs", "viewer"],
                    "outputs": ["seg", "sr"],
                }
            ],
        }
    )


@pytest.fixture
def store(database: Database, tmp_path: Path) -> ReceivedStore:
    return ReceivedStore(database, Spool(tmp_path / "spool"))


def receive(
    store: ReceivedStore,
    sop: str,
    series: str,
    *,
    study: str = STUDY,
    modality: str = "CT",
    number: int = 1,
    payload: bytes = b"abc",
) -> None:
    record = InstanceRecord(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality=modality,
        series_number=number,
        series_description=f"{modality} {number}",
        study_description="CHEST",
        study_date="20240102",
        patient_id="PAT-9",
        calling_ae="SCANNER",
        attributes={"Modality": modality},
    )
    store.store(record, store.spool.write_temp([payload]))


def new_result(job_id: int, kind: str) -> NewResult:
    return NewResult(
        kind=kind,
        source_series_uid=CT,
        study_instance_uid=STUDY,
        series_instance_uid=f"2.25.{job_id}9{len(kind)}",
        sop_instance_uid=f"2.25.{job_id}1{('seg', 'sr').index(kind)}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
        path=f"job-{job_id}/{kind}.dcm",
        size_bytes=100,
    )


@dataclasses.dataclass
class Made:
    db: Database
    succeeded: int
    failed: int
    queued: int
    study_level: int


@pytest.fixture
def made(store: ReceivedStore) -> Made:
    """A succeeded job (SEG refused by pacs; SR pending to pacs and to the viewer),
    a failed one, and three queued: two of another CT series, and one study-level
    job on the first CT and the MR series (listed in reverse)."""
    db = store.db
    receive(store, f"{CT}.1", CT, number=2, payload=b"abcd")
    receive(store, f"{CT}.2", CT, number=2, payload=b"ef")
    receive(store, f"{MR}.1", MR, modality="MR", number=1)
    succeeded, failed = Collector(db, settings()).complete(CT).job_ids
    queue = JobQueue(db)
    job = queue.claim("host:1:w", job_id=succeeded)
    assert job is not None
    queue.complete(job, [new_result(job.id, "seg"), new_result(job.id, "sr")], {"infer": 1.5})
    bad = queue.claim("host:1:w", job_id=failed)
    assert bad is not None
    queue.fail(bad, "RuntimeError: boom", {"read": 0.1}, retryable=False)
    sender = DeliveryQueue(db)
    pacs = {d.kind: d for d in sender.claim_batch("host:1:s")}
    assert set(pacs) == {"seg", "sr"} and {d.destination for d in pacs.values()} == {"pacs"}
    sender.record(
        "host:1:s",
        [
            DeliveryOutcome(pacs["seg"].id, False, 0xA900, "refused", retry=False),
            DeliveryOutcome(pacs["sr"].id, False, None, "peer down", retry=True),
        ],
        max_attempts=3,
        retry_base_s=60,
        retry_max_s=60,
    )
    receive(store, f"{CT_LATER}.1", CT_LATER, number=3)
    queued = Collector(db, settings()).complete(CT_LATER).job_ids[0]
    ct_id, mr_id = _series_ids(db)
    study_level = queue.enqueue(
        NewJob(
            completion_id=_completion_id(db),
            revision=0,
            rule="whole",
            pipeline="study-p",
            level="study",
            study_id=_study_id(db),
            series_ids=[mr_id, ct_id],
            outputs=["sr"],
            destinations={"pacs": ["sr"]},
            priority=0,
            max_attempts=2,
            uid_seed="seed",
            created_at=utcnow(),
        )
    )
    return Made(db, succeeded, failed, queued, study_level)


def _series_ids(db: Database) -> tuple[int, int]:
    """The ids of the CT and the MR series."""
    with db.engine.connect() as conn:
        ids = dict(conn.execute(select(Series.series_instance_uid, Series.id)).all())
    return ids[CT], ids[MR]


def _study_id(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(select(Study.id)).scalar_one())


def _completion_id(db: Database) -> int:
    """The first CT series' completion."""
    with db.engine.connect() as conn:
        return int(conn.execute(select(Completion.id).where(Completion.uid == CT)).scalar_one())


# -- jobs --------------------------------------------------------------------------------
def test_job_summaries_newest_first_with_what_they_wrote(made: Made) -> None:
    rows = queries.job_summaries(made.db)
    assert all(isinstance(r, JobSummary) for r in rows)
    ids = [r.id for r in rows]
    assert ids == sorted(ids, reverse=True)
    assert ids[0] == made.study_level and made.succeeded in ids and made.failed in ids
    by_id = {r.id: r for r in rows}

    ok = by_id[made.succeeded]
    assert (ok.status, ok.rule, ok.pipeline, ok.level, ok.revision) == (
        "succeeded",
        "ct",
        "ct-lungs",
        "series",
        0,
    )
    assert (ok.attempts, ok.max_attempts) == (1, 3)
    assert ok.study_instance_uid == STUDY
    assert ok.series_instance_uids == (CT,)
    assert ok.timings == {"infer": 1.5}
    assert ok.results == 2
    # pacs: SEG failed, SR pending; viewer (SR only): pending; statuses in order
    assert ok.deliveries == {"failed": 1, "pending": 2}
    assert list(ok.deliveries) == ["failed", "pending"]
    assert ok.error is None
    times = [ok.created_at, ok.started_at, ok.finished_at]
    assert all(t is not None and t.utcoffset() == timedelta(0) for t in times)
    assert times == sorted(times)  # type: ignore[type-var]

    bad = by_id[made.failed]
    assert (bad.status, bad.error, bad.results, bad.deliveries) == (
        "failed",
        "RuntimeError: boom",
        0,
        {},
    )
    later = by_id[made.queued]
    assert (later.status, later.series_instance_uids, later.started_at, later.timings) == (
        "queued",
        (CT_LATER,),
        None,
        {},
    )
    # A job's series in the order they were received, whatever the job lists.
    assert by_id[made.study_level].series_instance_uids == (CT, MR)
    assert by_id[made.study_level].level == "study"

    with pytest.raises(dataclasses.FrozenInstanceError):
        ok.status = "failed"  # type: ignore[misc]
    record = dataclasses.asdict(ok)
    assert list(record) == [
        "id", "status", "rule", "pipeline", "level", "revision", "attempts", "max_attempts",
        "study_instance_uid", "series_instance_uids", "created_at", "started_at",
        "finished_at", "error", "timings", "results", "deliveries",
    ]  # fmt: skip


def test_job_summaries_filters_and_limit(made: Made) -> None:
    failed = queries.job_summaries(made.db, status="failed")
    assert [r.id for r in failed] == [made.failed]
    assert [r.id for r in queries.job_summaries(made.db, status="running")] == []
    assert [r.id for r in queries.job_summaries(made.db, limit=2)] == sorted(
        (r.id for r in queries.job_summaries(made.db)), reverse=True
    )[:2]
    chosen = queries.job_summaries(made.db, job_ids=[made.succeeded, made.failed])
    assert [r.id for r in chosen] == [made.failed, made.succeeded]
    assert queries.job_summaries(made.db, status="queued", job_ids=[made.failed]) == []
    one = queries.job_summary(made.db, made.succeeded)
    assert one is not None and one == queries.job_summaries(made.db, job_ids=[made.succeeded])[0]
    assert queries.job_summary(made.db, 999_999) is None


def test_job_results_with_their_deliveries(made: Made) -> None:
    assert queries.job_results(made.db, made.failed) == []  # wrote nothing
    assert queries.job_results(made.db, 999_999) == []
    objects = queries.job_results(made.db, made.succeeded)
    assert all(isinstance(o, ResultRecord) for o in objects)
    assert [(o.kind, o.path) for o in objects] == [
        ("seg", f"job-{made.succeeded}/seg.dcm"),
        ("sr", f"job-{made.succeeded}/sr.dcm"),
    ]
    seg, sr = objects
    expected = new_result(made.succeeded, "seg")
    assert (seg.sop_instance_uid, seg.sop_class_uid, seg.size_bytes) == (
        expected.sop_instance_uid,
        expected.sop_class_uid,
        100,
    )
    assert (seg.study_instance_uid, seg.series_instance_uid) == (
        STUDY,
        expected.series_instance_uid,
    )
    assert seg.created_at is not None and seg.created_at.tzinfo is not None
    assert all(isinstance(d, DeliveryRecord) for o in objects for d in o.deliveries)
    assert [
        (d.destination, d.status, d.attempts, d.last_status, d.last_status_hex, d.error)
        for d in seg.deliveries
    ] == [("pacs", "failed", 1, 0xA900, "0xA900", "refused")]
    assert [
        (d.destination, d.status, d.attempts, d.last_status, d.error) for d in sr.deliveries
    ] == [("pacs", "pending", 1, None, "peer down"), ("viewer", "pending", 0, None, None)]
    pending = sr.deliveries[0]
    assert pending.sent_at is None and pending.last_status_hex is None
    assert pending.next_attempt_at is not None and pending.next_attempt_at.tzinfo is not None
    assert list(dataclasses.asdict(seg)) == [
        "id", "kind", "sop_instance_uid", "sop_class_uid", "study_instance_uid",
        "series_instance_uid", "path", "size_bytes", "created_at", "deliveries",
    ]  # fmt: skip


def test_failed_deliveries_newest_first(made: Made) -> None:
    (failed,) = queries.failed_deliveries(made.db)
    assert isinstance(failed, FailedDelivery)
    assert (failed.job_id, failed.pipeline, failed.destination, failed.kind) == (
        made.succeeded,
        "ct-lungs",
        "pacs",
        "seg",
    )
    assert failed.sop_instance_uid == new_result(made.succeeded, "seg").sop_instance_uid
    assert (failed.attempts, failed.last_status_hex, failed.error) == (1, "0xA900", "refused")
    assert failed.created_at is not None and failed.created_at.tzinfo is not None
    assert queries.failed_deliveries(made.db, limit=0) == []
    # Still importable where it was defined before.
    from storage.jobs import FailedDelivery as Moved

    assert Moved is FailedDelivery


def test_status_counts(made: Made) -> None:
    counts = queries.status_counts(made.db)
    assert counts.jobs == {"succeeded": 1, "failed": 1, "queued": 3}
    assert counts.deliveries == {"failed": 1, "pending": 2}


def test_job_summaries_read_in_a_fixed_number_of_statements(made: Made) -> None:
    """Four statements for any number of jobs, not a few per job."""
    queue, sender = JobQueue(made.db), DeliveryQueue(made.db)
    for n in range(24):
        job_id = queue.enqueue(
            NewJob(
                completion_id=_completion_id(made.db),
                revision=0,
                rule="ct",
                pipeline=f"extra-{n}",
                level="series",
                study_id=_study_id(made.db),
                series_ids=list(_series_ids(made.db)),
                outputs=["seg", "sr"],
                destinations={"pacs": ["seg", "sr"]},
                priority=0,
                max_attempts=1,
                uid_seed=f"seed-{n}",
                created_at=utcnow(),
            )
        )
        job = queue.claim("host:1:w", job_id=job_id)
        assert job is not None
        queue.complete(job, [new_result(job_id, "seg"), new_result(job_id, "sr")], {})
    while batch := sender.claim_batch("host:1:s"):
        sender.record(
            "host:1:s",
            [DeliveryOutcome(d.id, True, 0) for d in batch],
            max_attempts=3,
            retry_base_s=1,
            retry_max_s=1,
        )

    few, few_statements = _counted(made.db, lambda: queries.job_summaries(made.db, limit=3))
    many, many_statements = _counted(made.db, lambda: queries.job_summaries(made.db, limit=100))
    assert len(few) == 3 and len(many) == 29
    assert few_statements == many_statements <= 4, (few_statements, many_statements)
    extra = [r for r in many if r.pipeline.startswith("extra-")]
    assert len(extra) == 24
    assert all(r.results == 2 and r.deliveries == {"sent": 2} for r in extra)
    assert all(r.series_instance_uids == (CT, MR) for r in extra)
    assert all(r.study_instance_uid == STUDY for r in many)
    sent = [d for o in queries.job_results(made.db, extra[0].id) for d in o.deliveries]
    assert [(d.status, d.last_status_hex) for d in sent] == [("sent", "0x0000")] * 2
    assert all(d.sent_at is not None and d.sent_at.tzinfo is not None for d in sent)
    _, none_statements = _counted(made.db, lambda: queries.job_summaries(made.db, status="x"))
    assert none_statements == 1


def _counted(db: Database, read: Any) -> tuple[Any, int]:
    """What *read()* returns, and how many SQL statements it sent."""
    read()  # connections made and pooled
    with _statements(db) as statements:
        value = read()
    return value, len(statements)


@contextmanager
def _statements(db: Database) -> Iterator[list[str]]:
    sent: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        yield sent
    finally:
        event.remove(db.engine, "before_cursor_execute", count)


# -- received studies ------------------------------------------------------------------
def test_study_summaries(store: ReceivedStore) -> None:
    receive(store, f"{CT}.1", CT, number=2, payload=b"abcd")
    receive(store, f"{CT}.2", CT, number=2, payload=b"ef")
    receive(store, f"{MR}.1", MR, modality="MR", number=1)
    receive(store, f"{OTHER_CT}.1", OTHER_CT, study=OTHER_STUDY)
    studies = queries.study_summaries(store.db)
    assert all(isinstance(s, StudySummary) for s in studies)
    assert [s.study_instance_uid for s in studies] == [OTHER_STUDY, STUDY]  # newest first
    study = studies[1]
    assert (study.patient_id, study.study_date, study.study_description) == (
        "PAT-9",
        "20240102",
        "CHEST",
    )
    assert study.last_received_at is not None
    assert study.last_received_at.tzinfo is not None
    assert study.last_received_at.astimezone(timezone.utc) <= utcnow()
    assert study.series == (  # by series number
        SeriesSummary(MR, "MR", "MR 1", "SCANNER", instances=1, bytes=3),
        SeriesSummary(CT, "CT", "CT 2", "SCANNER", instances=2, bytes=6),
    )
    assert [s.study_instance_uid for s in queries.study_summaries(store.db, limit=1)] == [
        OTHER_STUDY
    ]
