"""Collector, job queue and delivery queue on real SQLite and PostgreSQL.

Time is passed in explicitly (``now=``), so quiet periods, leases and
backoffs are tested without sleeping.
"""

from __future__ import annotations

import hashlib
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from dicom_node.collect import Collector
from dicom_node.config import Settings
from storage.db import Database
from storage.jobs import (
    DeliveryOutcome,
    DeliveryQueue,
    JobQueue,
    JobStatus,
    LeaseLost,
    NewJob,
    NewResult,
    as_utc,
    backoff_s,
)
from storage.models import Completion, Delivery, Job, utcnow
from storage.received import InstanceRecord, ReceivedStore
from storage.spool import Spool

STUDY = "1.2.826.0.1.3680043.8.498.1"
CT = "1.2.826.0.1.3680043.8.498.1.1"
MR = "1.2.826.0.1.3680043.8.498.1.2"


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "destinations": [
            {
                "name": "pacs",
                "type": "dicom",
                "ae_title": "PACS",
                "host": "127.0.0.1",
                "port": 4242,
            },
            {"name": "viewer", "type": "folder", "path": "/tmp/unused", "outputs": ["sc"]},
        ],
        "rules": [
            {
                "name": "ct-chest",
                "match": {"Modality": "CT", "ImageType": {"contains": "AXIAL"}},
                "pipelines": ["ct-lungs", "ct-other"],
                "destinations": ["pacs", "viewer"],
                "quiet_period_s": 30,
                "outputs": ["seg", "sr", "sc"],
            },
        ],
    }
    base.update(overrides)
    return Settings.model_validate(base)


@pytest.fixture
def store(database: Database, tmp_path: Path) -> ReceivedStore:
    return ReceivedStore(database, Spool(tmp_path / "spool"))


def receive(store: ReceivedStore, sop: str, series: str = CT, modality: str = "CT") -> None:
    data = sop.encode()
    spooled = store.spool.write_temp([data])
    record = InstanceRecord(
        study_instance_uid=STUDY,
        series_instance_uid=series,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality=modality,
        attributes={"Modality": modality, "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"]},
        calling_ae="CT_SCANNER_1",
    )
    assert hashlib.sha256(data).hexdigest() == spooled.sha256
    store.store(record, spooled)


def later(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)


def jobs(db: Database) -> list[Any]:
    with db.engine.connect() as conn:
        return list(conn.execute(select(Job.__table__).order_by(Job.id)).all())


# -- collector ------------------------------------------------------------------------
def test_quiet_period_then_one_job_per_pipeline(store: ReceivedStore) -> None:
    for i in range(3):
        receive(store, f"{CT}.{i}")
    collector = Collector(store.db, settings())
    assert collector.tick(now=later(5)).job_ids == []  # still within the quiet period
    report = collector.tick(now=later(31))
    assert len(report.job_ids) == 2
    rows = jobs(store.db)
    assert [r.pipeline for r in rows] == ["ct-lungs", "ct-other"]
    assert all(r.status == "queued" and r.revision == 0 for r in rows)
    # SC only to the viewer folder (its outputs narrow the rule's)
    assert rows[0].destinations == {"pacs": ["seg", "sr", "sc"], "viewer": ["sc"]}
    assert rows[0].uid_seed != rows[1].uid_seed
    with store.db.engine.connect() as conn:
        comp = conn.execute(select(Completion.__table__)).one()
    assert comp.instance_count == 3 and comp.level == "series" and comp.uid == CT
    # Nothing new on later passes.
    assert collector.tick(now=later(60)).job_ids == []
    assert len(jobs(store.db)) == 2


def test_series_matching_no_rule_makes_no_job(store: ReceivedStore) -> None:
    receive(store, f"{MR}.1", series=MR, modality="MR")
    collector = Collector(store.db, settings())
    assert collector.tick(now=later(100)).job_ids == []
    assert jobs(store.db) == []


def test_late_instance_makes_a_revision_and_supersedes_queued_jobs(store: ReceivedStore) -> None:
    receive(store, f"{CT}.1")
    collector = Collector(store.db, settings())
    first = collector.tick(now=later(31)).job_ids
    # The late instance: recorded with its own receive time.
    with store.db.engine.begin() as conn:  # let the per-second throttle pass
        pass
    store._touched.clear()
    receive(store, f"{CT}.2")
    report = collector.tick(now=later(62))
    assert len(report.job_ids) == 2
    rows = {r.id: r for r in jobs(store.db)}
    assert all(rows[i].status == "superseded" for i in first)
    assert all(rows[i].revision == 1 and rows[i].status == "queued" for i in report.job_ids)
    with store.db.engine.connect() as conn:
        comp = conn.execute(select(Completion.__table__)).one()
    assert comp.revision == 1 and comp.instance_count == 2


def test_forced_completion_skips_the_quiet_period(store: ReceivedStore) -> None:
    receive(store, f"{CT}.1")
    collector = Collector(store.db, settings())
    report = collector.complete(CT)
    assert len(report.job_ids) == 2
    assert collector.complete(CT).unchanged  # same instances: nothing new
    assert collector.tick(now=later(100)).job_ids == []  # and the quiet pass agrees
    with pytest.raises(LookupError):
        collector.complete("1.2.3.4.5.6.7")


def test_study_level_rule_runs_once_on_its_matching_series(store: ReceivedStore) -> None:
    receive(store, f"{CT}.1")
    receive(store, f"{MR}.1", series=MR, modality="MR")
    s = settings(
        rules=[
            {
                "name": "whole-study",
                "match": {"Modality": ["CT", "MR"]},
                "pipelines": ["p"],
                "trigger": "study",
                "quiet_period_s": 10,
            }
        ]
    )
    collector = Collector(store.db, s)
    assert collector.tick(now=later(3)).job_ids == []
    report = collector.tick(now=later(11))
    assert len(report.job_ids) == 1
    (row,) = jobs(store.db)
    assert row.level == "study" and len(row.series_ids) == 2


def test_fallback_rule_only_when_nothing_else_matched(store: ReceivedStore) -> None:
    receive(store, f"{CT}.1")
    receive(store, f"{MR}.1", series=MR, modality="MR")
    s = settings(
        rules=[
            {"name": "ct", "match": {"Modality": "CT"}, "pipelines": ["ct-lungs"]},
            {"name": "other", "match": {}, "pipelines": ["triage"], "fallback": True},
        ]
    )
    Collector(store.db, s).tick(now=later(100))
    by_rule = sorted((r.rule, r.pipeline) for r in jobs(store.db))
    assert by_rule == [("ct", "ct-lungs"), ("other", "triage")]


# -- job queue --------------------------------------------------------------------------
@pytest.fixture
def queued(store: ReceivedStore) -> tuple[JobQueue, list[int]]:
    receive(store, f"{CT}.1")
    ids = Collector(store.db, settings()).complete(CT).job_ids
    return JobQueue(store.db, lease_s=60, retry_base_s=10, retry_max_s=100), ids


def test_claims_are_exclusive_under_concurrency(queued: tuple[JobQueue, list[int]]) -> None:
    queue, ids = queued
    won: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (job := queue.claim(name)) is not None:
            with lock:
                won.append(job.id)

    threads = [threading.Thread(target=worker, args=(f"host:1:w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(won) == sorted(ids)  # each job exactly once


def test_expired_lease_is_taken_over(queued: tuple[JobQueue, list[int]]) -> None:
    queue, ids = queued
    a = queue.claim("host:1:a", job_id=ids[0])
    assert a is not None and a.attempts == 1
    assert queue.claim("host:1:b", job_id=ids[0]) is None  # lease held
    b = queue.claim("host:1:b", now=later(61), job_id=ids[0])
    assert b is not None and b.attempts == 2
    assert not queue.heartbeat(a.id, a.owner)
    with pytest.raises(LeaseLost):
        queue.complete(a, [], {})
    assert queue.heartbeat(b.id, b.owner)
    assert queue.complete(b, [], {"infer": 1.0}).status is JobStatus.SUCCEEDED


def test_failed_attempts_back_off_then_fail(queued: tuple[JobQueue, list[int]]) -> None:
    queue, ids = queued
    job = queue.claim("host:1:a", job_id=ids[0])
    assert job is not None
    assert queue.fail(job, "RuntimeError: boom", {}) is JobStatus.QUEUED
    assert queue.claim("host:1:a", job_id=ids[0]) is None  # backing off
    for n in (2, 3):
        job = queue.claim("host:1:a", now=later(10_000 * n), job_id=ids[0])
        assert job is not None and job.attempts == n
        status = queue.fail(job, "RuntimeError: boom", {}, now=later(10_000 * n))
    assert status is JobStatus.FAILED
    assert queue.retry(ids[0]) == ("job", 1)
    job = queue.claim("host:1:a", job_id=ids[0])
    assert job is not None and job.attempts == 1
    with pytest.raises(ValueError):
        queue.retry(ids[0])  # running


def test_worker_dying_on_the_last_attempt_fails_the_job(
    queued: tuple[JobQueue, list[int]],
) -> None:
    queue, ids = queued
    t = 0.0
    for _ in range(3):
        t += 61
        assert queue.claim("host:1:a", now=later(t), job_id=ids[0]) is not None
    assert queue.claim("host:1:b", now=later(t + 61), job_id=ids[0]) is None
    with queue.db.engine.connect() as conn:
        row = conn.execute(select(Job.status, Job.error).where(Job.id == ids[0])).one()
    assert row.status == "failed" and "heart-beating" in row.error


def test_release_dead_frees_leases_of_gone_processes(
    queued: tuple[JobQueue, list[int]],
) -> None:
    import socket
    import subprocess

    queue, ids = queued
    gone = subprocess.Popen(["true"])
    gone.wait()
    owner = f"{socket.gethostname()}:{gone.pid}:worker:x"
    assert queue.claim(owner, job_id=ids[0]) is not None
    assert queue.claim("host:1:b", job_id=ids[0]) is None
    assert queue.release_dead() == 1
    assert queue.claim("host:1:b", job_id=ids[0]) is not None


def result(job_id: int, kind: str, n: int = 0) -> NewResult:
    return NewResult(
        kind=kind,
        source_series_uid=CT,
        study_instance_uid=STUDY,
        series_instance_uid=f"2.25.{job_id}{n}9",
        sop_instance_uid=f"2.25.{job_id}{n}{('seg', 'sr', 'sc').index(kind) + 1}1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
        path=f"job-{job_id}/{kind}_{n}.dcm",
        size_bytes=10,
    )


def test_results_and_deliveries_are_written_with_the_job(
    queued: tuple[JobQueue, list[int]],
) -> None:
    queue, ids = queued
    job = queue.claim("host:1:a", job_id=ids[0])
    assert job is not None
    finish = queue.complete(
        job, [result(job.id, "sc"), result(job.id, "sr"), result(job.id, "seg")], {}
    )
    assert finish.status is JobStatus.SUCCEEDED
    assert finish.deliveries == 4  # pacs: seg, sr, sc; viewer: sc only
    deliveries = DeliveryQueue(queue.db, kind_order=("seg", "sr", "gsps", "sc"))
    batch = deliveries.claim_batch("host:1:s")
    assert {d.destination for d in batch} in ({"pacs"}, {"viewer"})
    if batch[0].destination == "pacs":
        assert [d.kind for d in batch] == ["seg", "sr", "sc"]
    # A delivery carries the UIDs it sends (the sender does not read them from the file).
    assert all(d.sop_class_uid == "1.2.840.10008.5.1.4.1.1.66.4" for d in batch)
    assert all(d.sop_instance_uid.startswith(f"2.25.{job.id}0") for d in batch)
    assert deliveries.claim_batch("host:1:s2")[0].destination != batch[0].destination


def test_delivery_outcomes_backoff_and_retry_command(
    queued: tuple[JobQueue, list[int]],
) -> None:
    queue, ids = queued
    job = queue.claim("host:1:a", job_id=ids[0])
    assert job is not None
    queue.complete(job, [result(job.id, "seg"), result(job.id, "sr")], {})
    dq = DeliveryQueue(queue.db)
    batch = dq.claim_batch("host:1:s")
    assert len(batch) == 2
    counts = dq.record(
        "host:1:s",
        [
            DeliveryOutcome(batch[0].id, False, None, "peer down", retry=True),
            DeliveryOutcome(batch[1].id, False, 0xA900, "bad data set", retry=False),
        ],
        max_attempts=3,
        retry_base_s=5,
        retry_max_s=60,
    )
    assert counts == {"pending": 1, "failed": 1}
    assert dq.claim_batch("host:1:s") == []  # backing off
    assert 4 < (dq.next_due_in() or 0) <= 5
    again = dq.claim_batch("host:1:s", now=later(6))
    assert [d.id for d in again] == [batch[0].id]
    dq.record(
        "host:1:s",
        [DeliveryOutcome(batch[0].id, True, 0)],
        max_attempts=3,
        retry_base_s=5,
        retry_max_s=60,
    )
    with queue.db.engine.connect() as conn:
        rows = dict(conn.execute(select(Delivery.id, Delivery.status)).all())
    assert rows == {batch[0].id: "sent", batch[1].id: "failed"}
    assert queue.retry(job.id) == ("deliveries", 1)
    assert [d.id for d in dq.claim_batch("host:1:s")] == [batch[1].id]


def test_a_job_finishing_after_a_revision_is_superseded(
    store: ReceivedStore, queued: tuple[JobQueue, list[int]]
) -> None:
    queue, ids = queued
    job = queue.claim("host:1:a", job_id=ids[0])
    assert job is not None
    with store.db.engine.begin() as conn:
        conn.execute(update(Completion).values(revision=1))
    finish = queue.complete(job, [result(job.id, "seg")], {})
    assert finish.status is JobStatus.SUPERSEDED and finish.deliveries == 0


def test_backoff_schedule() -> None:
    assert [backoff_s(n, 5, 60) for n in range(1, 6)] == [5, 10, 20, 40, 60]
    assert as_utc(datetime(2026, 1, 1)).tzinfo is not None  # type: ignore[union-attr]


def test_enqueue_outside_the_collector_is_claimable(store: ReceivedStore) -> None:
    """``JobQueue.enqueue``: a job for an existing completion, due at once, by priority."""
    receive(store, f"{CT}.1")
    Collector(store.db, settings()).complete(CT)
    queue = JobQueue(store.db)
    first = jobs(store.db)[0]
    now = utcnow()
    job_id = queue.enqueue(
        NewJob(
            completion_id=first.completion_id,
            revision=first.revision,
            rule="manual",
            pipeline="ct-third",
            level="series",
            study_id=first.study_id,
            series_ids=list(first.series_ids),
            outputs=["sr"],
            destinations={"pacs": ["sr"]},
            priority=9,
            max_attempts=2,
            uid_seed="ab" * 16,
            created_at=now,
        )
    )
    claimed = queue.claim("test-worker", now=now)
    assert claimed is not None and claimed.id == job_id
    assert (claimed.pipeline, claimed.outputs, claimed.max_attempts) == ("ct-third", ["sr"], 2)
    assert claimed.destinations == {"pacs": ["sr"]} and claimed.uid_seed == "ab" * 16
