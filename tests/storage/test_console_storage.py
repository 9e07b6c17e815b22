"""What the console reads and changes, on real SQLite and PostgreSQL: routing kept per
series, pauses of rules and destinations, cancel and re-run, study search, job timeline.

Time is passed in explicitly (``now=``) where the collector needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from dicom_node.collect import Collector
from storage import console as q
from storage.db import Database
from storage.job_actions import cancel_job, rerun_job
from storage.jobs import (
    DeliveryOutcome,
    DeliveryQueue,
    JobPurged,
    JobQueue,
    JobStatus,
    LeaseLost,
)
from storage.models import Delivery, Job, Series, Study
from storage.pauses import PauseStore
from storage.received import InstanceRecord, ReceivedStore
from storage.spool import Spool
from tests.storage.test_jobs import CT, MR, STUDY, jobs, later, receive, result, settings


@pytest.fixture
def store(database: Database, tmp_path: Path) -> ReceivedStore:
    return ReceivedStore(database, Spool(tmp_path / "spool"))


def routing_of(db: Database, series_uid: str) -> Any:
    with db.engine.connect() as conn:
        return conn.execute(
            select(Series.routing).where(Series.series_instance_uid == series_uid)
        ).scalar_one()


# -- routing kept with the series -------------------------------------------------------
def test_collector_keeps_why_each_rule_did_or_did_not_match(store: ReceivedStore) -> None:
    db = store.db
    receive(store, f"{CT}.1")
    receive(store, f"{MR}.1", series=MR, modality="MR")
    rules = [
        *settings().rules,
        {"name": "mr-brain", "match": {"Modality": "MR", "BodyPartExamined": "HEAD"},
         "pipelines": ["mr-brain"], "quiet_period_s": 30},
        {"name": "catch-all", "match": {}, "fallback": True, "pipelines": ["ct-other"]},
    ]
    collector = Collector(db, settings(rules=rules))
    assert routing_of(db, MR) is None  # not judged before its quiet period
    collector.tick(now=later(60))
    ct = {r["rule"]: r for r in routing_of(db, CT)["rules"]}
    assert ct["ct-chest"]["matched"] and ct["ct-chest"]["pipelines"] == ["ct-lungs", "ct-other"]
    assert not ct["catch-all"]["matched"]
    assert ct["catch-all"]["note"] == "fallback rule: another rule matched"
    mr = {r["rule"]: r for r in routing_of(db, MR)["rules"]}
    # The MR matched no regular rule: the fallback applies, and each miss says why.
    assert mr["catch-all"]["matched"]
    assert not mr["mr-brain"]["matched"]
    failed = [c for c in mr["mr-brain"]["conditions"] if not c["ok"]]
    assert [c["path"] for c in failed] == ["match.BodyPartExamined"]
    assert "missing" in failed[0]["reason"] or "absent" in failed[0]["reason"]
    miss = [c for c in mr["ct-chest"]["conditions"] if not c["ok"]]
    assert miss and "CT" in miss[0]["reason"]
    # The study search finds studies with a series no regular rule ... only truly unrouted ones.
    assert q.search_studies(db, q.StudyFilter(state="unrouted")).total == 0


def test_unrouted_study_is_found(store: ReceivedStore) -> None:
    db = store.db
    receive(store, f"{MR}.1", series=MR, modality="MR")
    Collector(db, settings()).tick(now=later(60))
    page = q.search_studies(db, q.StudyFilter(state="unrouted"))
    assert [r.study_instance_uid for r in page.rows] == [STUDY]
    assert page.rows[0].modalities == ("MR",)
    rules = routing_of(db, MR)["rules"]
    assert [r["matched"] for r in rules] == [False]


# -- pauses ------------------------------------------------------------------------------
def test_paused_rule_holds_the_series_until_resumed(store: ReceivedStore) -> None:
    db = store.db
    pauses = PauseStore(db)
    assert pauses.pause("rule", "ct-chest", by="olga", reason="model check")
    assert not pauses.pause("rule", "ct-chest", by="other")  # the first pause is kept
    assert [(p.name, p.paused_by) for p in pauses.records()] == [("ct-chest", "olga")]
    receive(store, f"{CT}.1")
    collector = Collector(db, settings())
    assert collector.tick(now=later(60)).job_ids == []
    forced = collector.complete(CT, now=later(61))
    assert forced.job_ids == [] and "paused" in forced.unchanged[0]
    assert jobs(db) == []
    rules = routing_of(db, CT)["rules"]
    assert rules[0]["paused"] and "paused" in rules[0]["note"]
    assert pauses.resume("rule", "ct-chest") and not pauses.resume("rule", "ct-chest")
    made = collector.tick(now=later(62)).job_ids
    assert len(made) == 2  # nothing was lost: the series completes once resumed
    with pytest.raises(ValueError, match="only rule, destination"):
        pauses.pause("pipeline", "x")  # type: ignore[arg-type]


def test_paused_destination_is_sent_nothing(store: ReceivedStore) -> None:
    db = store.db
    receive(store, f"{CT}.1")
    ids = Collector(db, settings()).complete(CT).job_ids
    queue = JobQueue(db)
    job = queue.claim("host:1:a", job_id=ids[0])
    assert job is not None
    queue.complete(job, [result(job.id, "seg"), result(job.id, "sc")], {})
    PauseStore(db).pause("destination", "pacs")
    PauseStore(db).pause("destination", "viewer")
    deliveries = DeliveryQueue(db)
    assert deliveries.claim_batch("host:1:s") == []
    assert deliveries.next_due_in() is None  # a sender does not spin on what it may not send
    PauseStore(db).resume("destination", "viewer")
    batch = deliveries.claim_batch("host:1:s")
    assert {d.destination for d in batch} == {"viewer"}
    PauseStore(db).resume("destination", "pacs")
    assert {d.destination for d in deliveries.claim_batch("host:1:s2")} == {"pacs"}


# -- cancel and re-run -------------------------------------------------------------------
def test_cancel_a_queued_job_and_a_running_one(store: ReceivedStore) -> None:
    db = store.db
    receive(store, f"{CT}.1")
    queued, running = Collector(db, settings()).complete(CT).job_ids
    queue = JobQueue(db)
    claimed = queue.claim("host:1:a", job_id=running)
    assert claimed is not None
    assert cancel_job(db, queued) == q_outcome(queued, True, 0)
    assert queue.claim("host:1:b", job_id=queued) is None
    assert cancel_job(db, running).job_cancelled
    assert not queue.heartbeat(running, "host:1:a")
    with pytest.raises(LeaseLost):  # the worker's results are not written
        queue.complete(claimed, [result(running, "seg")], {})
    statuses = {j.id: (j.status, j.error) for j in jobs(db)}
    assert statuses[queued] == ("cancelled", "cancelled by an operator")
    assert statuses[running][0] == JobStatus.CANCELLED.value
    with pytest.raises(ValueError, match="nothing|no pending"):
        cancel_job(db, queued)
    with pytest.raises(LookupError):
        cancel_job(db, 9999)


def q_outcome(job_id: int, job: bool, n: int) -> Any:
    from storage.job_actions import CancelOutcome

    return CancelOutcome(job_id, job, n)


def test_cancel_stops_the_pending_deliveries_of_a_finished_job(store: ReceivedStore) -> None:
    db = store.db
    receive(store, f"{CT}.1")
    ids = Collector(db, settings()).complete(CT).job_ids
    queue = JobQueue(db)
    job = queue.claim("host:1:a", job_id=ids[0])
    assert job is not None
    queue.complete(job, [result(job.id, "seg"), result(job.id, "sc")], {})
    deliveries = DeliveryQueue(db)
    first = deliveries.claim_batch("host:1:s", destination="viewer")
    deliveries.record("host:1:s", [DeliveryOutcome(first[0].id, True, 0)],
                      max_attempts=3, retry_base_s=1, retry_max_s=1)
    done = cancel_job(db, job.id)
    assert not done.job_cancelled and done.deliveries_cancelled == 2  # pacs: seg and sc
    with db.engine.connect() as conn:
        rows = conn.execute(select(Delivery.destination, Delivery.status)).all()
    assert sorted(rows) == [("pacs", "cancelled"), ("pacs", "cancelled"), ("viewer", "sent")]
    assert deliveries.claim_batch("host:1:s") == []


def test_rerun_is_a_new_revision_once_the_completion_is_idle(store: ReceivedStore) -> None:
    db = store.db
    receive(store, f"{CT}.1")
    first, other = Collector(db, settings()).complete(CT).job_ids
    with pytest.raises(ValueError, match="still queued or running"):
        rerun_job(db, first)  # it would supersede job `other` half-way
    queue = JobQueue(db)
    for job_id in (first, other):
        job = queue.claim("host:1:a", job_id=job_id)
        assert job is not None
        queue.complete(job, [], {})
    again = rerun_job(db, first, "ct-other")
    rows = {j.id: j for j in jobs(db)}
    assert rows[again].status == "queued" and rows[again].pipeline == "ct-other"
    assert rows[again].revision == rows[first].revision + 1  # its results supersede
    assert rows[again].series_ids == rows[first].series_ids
    assert rows[again].destinations == rows[first].destinations
    assert rows[again].uid_seed != rows[first].uid_seed  # new result UIDs
    job = queue.claim("host:1:a", job_id=again)
    assert job is not None
    assert queue.complete(job, [], {}).status is JobStatus.SUCCEEDED
    same = rerun_job(db, first)  # by default through the job's own pipeline
    assert {j.id: j.pipeline for j in jobs(db)}[same] == "ct-lungs"
    job = queue.claim("host:1:a", job_id=same)
    assert job is not None
    queue.complete(job, [], {})
    with db.engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == first).values(purged_at=later(0)))
    with pytest.raises(JobPurged):
        rerun_job(db, first)
    with pytest.raises(LookupError):
        rerun_job(db, 9999)


# -- study search and the job timeline ------------------------------------------------------
def _study(store: ReceivedStore, n: int, modality: str, **fields: Any) -> str:
    study = f"2.25.77{n}"
    record = InstanceRecord(
        study_instance_uid=study,
        series_instance_uid=f"{study}.1",
        sop_instance_uid=f"{study}.1.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality=modality,
        attributes={"Modality": modality},
        calling_ae="SCANNER",
        **fields,
    )
    store.store(record, store.spool.write_temp([study.encode()]))
    return study


def test_search_studies_filters_and_pages(store: ReceivedStore) -> None:
    db = store.db
    made = [
        _study(store, i, "CT" if i % 2 else "MR", patient_id=f"PID{i}",
               accession_number=f"ACC{i}", patient_name=f"Doe^Jane{i}",
               study_date=f"2026120{i}", study_description=f"Chest {i}")
        for i in range(1, 8)
    ]

    def uids(where: q.StudyFilter, **page: int) -> list[str]:
        return [r.study_instance_uid for r in q.search_studies(db, where, **page).rows]

    assert uids(q.StudyFilter()) == made[::-1]  # most recently received first
    assert q.search_studies(db, q.StudyFilter(), limit=3, offset=3).total == 7
    assert uids(q.StudyFilter(), limit=3, offset=3) == made[::-1][3:6]
    # Patient identifiers are searched only for roles that see them.
    assert uids(q.StudyFilter(text="PID3", patient_fields=True)) == [made[2]]
    assert uids(q.StudyFilter(text="PID3")) == []
    assert uids(q.StudyFilter(text="ACC4", patient_fields=True)) == [made[3]]
    assert uids(q.StudyFilter(text="jane5", patient_fields=True)) == [made[4]]
    assert uids(q.StudyFilter(text=made[5])) == [made[5]]
    assert uids(q.StudyFilter(text="chest 6")) == [made[5]]
    assert uids(q.StudyFilter(text="50%_")) == []  # LIKE wildcards are literal
    assert uids(q.StudyFilter(modality="mr")) == [made[5], made[3], made[1]]
    assert uids(q.StudyFilter(date_from="20261203", date_to="20261205")) == made[2:5][::-1]
    receive(store, f"{CT}.1")
    Collector(db, settings()).complete(CT)
    assert uids(q.StudyFilter(state="queued")) == [STUDY]
    assert uids(q.StudyFilter(state="failed")) == []
    row = q.search_studies(db, q.StudyFilter(state="queued")).rows[0]
    assert row.jobs == {"queued": 2} and row.series == 1 and row.instances == 1


def test_job_timeline_and_detail(store: ReceivedStore) -> None:
    db = store.db
    receive(store, f"{CT}.1")
    receive(store, f"{CT}.2")
    ids = Collector(db, settings()).complete(CT).job_ids
    queue = JobQueue(db)
    job = queue.claim("host:1:a", job_id=ids[0])
    assert job is not None
    queue.complete(job, [result(job.id, "seg"), result(job.id, "sc")], {"read": 0.5, "infer": 2})
    deliveries = DeliveryQueue(db)
    batch = deliveries.claim_batch("host:1:s", destination="pacs")
    deliveries.record("host:1:s", [DeliveryOutcome(d.id, True, 0) for d in batch],
                      max_attempts=3, retry_base_s=1, retry_max_s=1)
    timeline = q.job_timeline(db, job.id)
    assert timeline is not None
    steps = [e.what for e in timeline.events]
    assert steps[:3] == ["first instance received", "last instance received", "complete"]
    for step in ("queued", "started", "results written", "finished: succeeded", "sent to pacs"):
        assert step in steps
    assert steps.index("queued") < steps.index("started") < steps.index("finished: succeeded")
    times = [e.at for e in timeline.events]
    assert times == sorted(t for t in times if t is not None)
    complete = timeline.events[steps.index("complete")]
    assert complete.detail == "2 instance(s), forced by an operator"
    assert timeline.stages == {"read": 0.5, "infer": 2}
    assert q.job_timeline(db, 9999) is None
    detail = q.study_detail(db, STUDY)
    assert detail is not None and [s.series_instance_uid for s in detail.series] == [CT]
    assert detail.series[0].instances == 2 and detail.series[0].completions == ("ct-chest",)
    assert sorted(detail.job_ids) == sorted(ids)
    files = q.job_files(db, job.id)
    assert files is not None and len(files.source_paths) == 2
    assert [k for k, _ in files.result_paths] == ["seg", "sc"]
    assert q.study_of(db, CT) == STUDY == q.study_of(db, STUDY)
    assert q.study_of(db, "1.2.3") is None
    queues = {p.pipeline: (p.queued, p.running) for p in q.pipeline_queues(db)}
    assert queues == {"ct-other": (1, 0)}
    states = q.destination_states(db, ["pacs", "viewer", "unused"])
    assert states["pacs"].by_status == {"sent": 2}
    assert states["viewer"].by_status == {"pending": 1}
    assert states["unused"].by_status == {} and states["pacs"].last_sent_at is not None
    activity = q.pipeline_activity(db)
    assert activity["ct-lungs"].last_status == "succeeded"
    assert activity["ct-lungs"].result_path == f"job-{job.id}/seg_0.dcm"
    assert q.instances_since(db, later(-60)) == 2 and q.instances_since(db, later(60)) == 0
    with db.engine.connect() as conn:
        assert conn.execute(select(Study.study_instance_uid)).scalar_one() == STUDY
