"""Retention on real SQLite and PostgreSQL, with real DICOM files in the spool.

A CT series (dcmqi ct-3slice, three real slices) is received, collected,
run and delivered step by step; at each step a pass by age (time passed in
as ``now=``) or by watermark (an injected disk-usage function) must purge
only what the node has finished with.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select, update

from dicom_node import audit
from dicom_node.collect import Collector
from dicom_node.config import Settings
from dicom_node.retention import Retention
from storage.audit import AuditFilter, AuditStore
from storage.db import Database
from storage.jobs import (
    DeliveryOutcome,
    DeliveryQueue,
    JobPurged,
    JobQueue,
    NewResult,
)
from storage.models import Instance, Job, Result, Series, utcnow
from storage.queries import job_summaries
from storage.received import InstanceRecord, ReceivedStore, StoreOutcome
from storage.retention import RetentionStore
from storage.spool import Spool
from tests.conftest import DICOM_DATA

CT_DIR = DICOM_DATA / "dcmqi" / "ct-3slice"


def ct_files() -> list[Path]:
    """The three real CT slices (the shared data is required: a missing one fails)."""
    files = sorted(p for p in CT_DIR.iterdir() if p.is_file()) if CT_DIR.is_dir() else []
    if len(files) != 3:
        pytest.fail(f"shared test data missing or changed: {CT_DIR}")
    return files


def settings(tmp_path: Path, url: str, **retention: Any) -> Settings:
    return Settings.model_validate(
        {
            "storage": {
                "spool_dir": str(tmp_path / "spool"),
                "results_dir": str(tmp_path / "results"),
                "database_url": url,
            },
            "retention": retention or {"keep_days": 30},
            "audit": {"database": True},
            "destinations": [
                {
                    "name": "pacs",
                    "type": "dicom",
                    "ae_title": "PACS",
                    "host": "127.0.0.1",
                    "port": 4242,
                },
            ],
            "rules": [
                {
                    "name": "ct",
                    "match": {"Modality": "CT"},
                    "pipelines": ["ct-lungs"],
                    "destinations": ["pacs"],
                    "quiet_period_s": 30,
                    "outputs": ["seg"],
                },
            ],
        }
    )


class Site:
    """A database, spool and results folder with the node's queues on them."""

    def __init__(self, db: Database, tmp_path: Path) -> None:
        self.db = db
        self.tmp = tmp_path
        self.cfg = settings(tmp_path, db.url)
        self.store = ReceivedStore(db, Spool(tmp_path / "spool"))
        self.jobs = JobQueue(db)
        self.deliveries = DeliveryQueue(db)
        self.results = tmp_path / "results"

    def receive(
        self,
        path: Path,
        *,
        series_uid: str | None = None,
        sop_uid: str | None = None,
        study_uid: str | None = None,
    ) -> StoreOutcome:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        data = path.read_bytes()
        spooled = self.store.spool.write_temp([data])
        record = InstanceRecord(
            study_instance_uid=study_uid or str(ds.StudyInstanceUID),
            series_instance_uid=series_uid or str(ds.SeriesInstanceUID),
            sop_instance_uid=sop_uid or str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            transfer_syntax_uid="1.2.840.10008.1.2",
            modality="CT",
            attributes={"Modality": "CT"},
        )
        return self.store.store(record, spooled).outcome

    def collect(self, now: datetime) -> list[int]:
        return Collector(self.db, self.cfg).tick(now=now).job_ids

    def run_job(self, job_id: int, series_uid: str) -> int:
        claimed = self.jobs.claim("w", utcnow() + timedelta(minutes=5), job_id=job_id)
        assert claimed is not None
        rel = f"{job_id}/seg.dcm"
        (self.results / str(job_id)).mkdir(parents=True, exist_ok=True)
        (self.results / rel).write_bytes(b"x" * 1000)
        finish = self.jobs.complete(
            claimed,
            [
                NewResult(
                    kind="seg",
                    source_series_uid=series_uid,
                    study_instance_uid="1.2.3",
                    series_instance_uid=f"1.2.3.{job_id}",
                    sop_instance_uid=f"1.2.3.{job_id}.1",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
                    path=rel,
                    size_bytes=1000,
                )
            ],
            {},
        )
        return finish.deliveries

    def deliver(self, *, sent: bool, retry: bool = True) -> None:
        batch = self.deliveries.claim_batch("s")
        assert batch
        self.deliveries.record(
            "s",
            [
                DeliveryOutcome(d.id, sent=sent, retry=retry, error=None if sent else "down")
                for d in batch
            ],
            max_attempts=1 if not retry else 5,
            retry_base_s=1,
            retry_max_s=1,
        )

    def retention(
        self, usage: Callable[[], tuple[int, int]] | None = None, **cfg: Any
    ) -> Retention:
        s = settings(self.tmp, self.db.url, **cfg) if cfg else self.cfg
        return Retention(s, self.db, usage=usage)

    def spool_files(self) -> list[Path]:
        return sorted(p for p in (self.tmp / "spool").rglob("*.dcm") if ".tmp" not in p.parts)


@pytest.fixture
def site(database: Database, tmp_path: Path) -> Iterator[Site]:
    auditor = audit.auditor_from_settings(settings(tmp_path, database.url).audit, database)
    audit.install(auditor)
    yield Site(database, tmp_path)
    auditor.close()
    audit.install(None)


def days(n: float) -> datetime:
    return utcnow() + timedelta(days=n)


def series_uid_of(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def test_only_finished_work_is_purged_by_age(site: Site) -> None:
    files = ct_files()
    uid = series_uid_of(files)
    for f in files:
        assert site.receive(f) is StoreOutcome.STORED
    ret = site.retention()
    # Not collected yet (completion pending): kept, however old.
    assert ret.run(now=days(60)).series == 0
    [job_id] = site.collect(now=utcnow() + timedelta(seconds=31))
    # Job queued: kept.
    assert ret.run(now=days(60)).series == 0
    assert site.run_job(job_id, uid) == 1
    # Delivery pending: kept.
    assert ret.run(now=days(60)).series == 0
    assert len(site.spool_files()) == len(files)
    site.deliver(sent=True)
    # Younger than keep_days: kept.
    assert ret.run(now=days(29)).series == 0
    dry = ret.run(dry_run=True, now=days(31))
    assert dry.by_reason["age"].instances == len(files)
    assert dry.by_reason["age"].bytes == sum(f.stat().st_size for f in files) + 1000
    assert len(site.spool_files()) == len(files)  # a dry run deletes nothing
    report = ret.run(now=days(31))
    assert report.by_reason["age"].series == 1
    assert report.files_deleted == len(files) + 1
    assert site.spool_files() == []
    assert not (site.results / f"{job_id}/seg.dcm").exists()
    with site.db.engine.connect() as conn:
        assert all(conn.execute(select(Instance.purged_at)).scalars())
        assert conn.execute(select(Series.purged_at)).scalar_one() is not None
        assert conn.execute(select(Job.purged_at)).scalar_one() is not None
        assert conn.execute(select(Result.purged_at)).scalar_one() is not None
    # Rows stay: the job is still listed; a retry says why it cannot run.
    assert [j.id for j in job_summaries(site.db)] == [job_id]
    with pytest.raises(JobPurged, match="retention deleted"):
        site.jobs.retry(job_id)
    # Audited once for the study, with its series, counts and reason.
    audit.auditor().flush()
    [entry] = AuditStore(site.db).query(AuditFilter(events=["retention-purge"]), limit=10)
    assert entry.detail["series"] == [uid]
    assert entry.detail["instances"] == len(files)
    assert entry.detail["reason"] == "age"
    assert entry.detail["bytes"] == report.by_reason["age"].bytes
    # Nothing left: the next pass purges nothing.
    assert ret.run(now=days(90)).series == 0


def test_failed_for_good_delivery_is_final(site: Site) -> None:
    files = ct_files()
    uid = series_uid_of(files)
    for f in files:
        site.receive(f)
    [job_id] = site.collect(now=utcnow() + timedelta(seconds=31))
    site.run_job(job_id, uid)
    site.deliver(sent=False, retry=True)  # a retryable failure: still pending
    assert site.retention().run(now=days(60)).series == 0
    # The next attempt gives up for good (refused): final, purgeable by age.
    batch = site.deliveries.claim_batch("s2", now=utcnow() + timedelta(hours=1))
    assert len(batch) == 1
    site.deliveries.record(
        "s2",
        [DeliveryOutcome(d.id, sent=False, retry=False, error="refused") for d in batch],
        max_attempts=5,
        retry_base_s=1,
        retry_max_s=1,
    )
    assert site.retention().run(now=days(60)).series == 1
    with pytest.raises(JobPurged):
        site.jobs.retry(job_id)


def _two_series(site: Site) -> tuple[str, str]:
    """The same three real slices received as two studies (an old one, a new one)."""
    files = ct_files()
    uids = []
    for k, f in enumerate(files):
        site.receive(
            f,
            study_uid="1.2.826.0.1.3680043.8.498.71",
            series_uid="1.2.826.0.1.3680043.8.498.71.1",
            sop_uid=f"1.2.826.0.1.3680043.8.498.71.1.{k}",
        )
    uids.append("1.2.826.0.1.3680043.8.498.71.1")
    with site.db.engine.begin() as conn:  # the first study arrived two days ago
        conn.execute(update(Series).values(last_received_at=utcnow() - timedelta(days=2)))
    for k, f in enumerate(files):
        site.receive(
            f,
            study_uid="1.2.826.0.1.3680043.8.498.72",
            series_uid="1.2.826.0.1.3680043.8.498.72.1",
            sop_uid=f"1.2.826.0.1.3680043.8.498.72.1.{k}",
        )
    uids.append("1.2.826.0.1.3680043.8.498.72.1")
    for job_id in site.collect(now=utcnow() + timedelta(seconds=31)):
        with site.db.engine.connect() as conn:
            sid = conn.execute(select(Job.series_ids).where(Job.id == job_id)).scalar_one()[0]
            suid = conn.execute(
                select(Series.series_instance_uid).where(Series.id == sid)
            ).scalar_one()
        site.run_job(job_id, suid)
        site.deliver(sent=True)
    return uids[0], uids[1]


def test_watermark_purges_oldest_first_down_to_the_low_mark(site: Site) -> None:
    old, new = _two_series(site)
    per_series = sum(f.stat().st_size for f in ct_files()) + 1000

    def usage() -> tuple[int, int]:
        """A disk of 10 series' worth, holding 7 series' worth besides the node's files."""
        kept = sum(p.stat().st_size for p in site.spool_files())
        kept += sum(p.stat().st_size for p in site.results.rglob("*.dcm"))
        return 7 * per_series + kept, 10 * per_series

    # 7 + 2 = 9 series' worth of 10 used (90%): above an 85% mark.  Down to 75%
    # takes both series (8, then 7 of 10); down to 80% the oldest alone.
    ret = site.retention(usage, disk_high_watermark_percent=85, disk_low_watermark_percent=75)
    dry = ret.run(dry_run=True)
    assert dry.by_reason["watermark"].series == 2
    assert dry.usage_before == pytest.approx(90.0)
    ret = site.retention(usage, disk_high_watermark_percent=85, disk_low_watermark_percent=80)
    assert ret.run(dry_run=True).by_reason["watermark"].series == 1
    # A dry run counts what the age rule frees before the watermark: the old
    # series goes by age (2 days > 1), which leaves 80%, under the high mark.
    both = site.retention(
        usage, keep_days=1, disk_high_watermark_percent=85, disk_low_watermark_percent=75
    ).run(dry_run=True)
    assert both.by_reason["age"].series == 1 and "watermark" not in both.by_reason
    assert both.usage_before == pytest.approx(80.0)
    # A keep_days far away does not protect from the watermark.
    report = site.retention(
        usage, keep_days=365, disk_high_watermark_percent=85, disk_low_watermark_percent=80
    ).run()
    assert "age" not in report.by_reason
    assert report.by_reason["watermark"].series == 1
    with site.db.engine.connect() as conn:
        purged = dict(conn.execute(select(Series.series_instance_uid, Series.purged_at)).all())
    assert purged[old] is not None and purged[new] is None
    assert report.usage_after == pytest.approx(80.0)
    # Under the high mark now: nothing more.
    assert ret.run().series == 0


def test_late_instance_reopens_a_purged_series(site: Site) -> None:
    files = ct_files()
    uid = series_uid_of(files)
    for f in files[:-1]:
        site.receive(f)
    [job_id] = site.collect(now=utcnow() + timedelta(seconds=31))
    site.run_job(job_id, uid)
    site.deliver(sent=True)
    assert site.retention().run(now=days(31)).series == 1
    assert site.spool_files() == []
    # A late new instance of the purged series: kept, and the series is collected again.
    time.sleep(1.1)  # the receiver refreshes a series' last arrival at most once a second
    assert site.receive(files[-1]) is StoreOutcome.STORED
    assert len(site.spool_files()) == 1
    with site.db.engine.connect() as conn:
        series_id = conn.execute(select(Series.id)).scalar_one()
    stored = site.jobs.series_instances(series_id)
    assert len(stored.instances) == 1
    assert all((site.tmp / "spool" / i.path).is_file() for i in stored.instances)
    # An instance purged earlier, sent again: restored, its mark cleared.
    assert site.receive(files[0]) is StoreOutcome.REPAIRED
    assert len(site.spool_files()) == 2
    assert len(site.jobs.series_instances(series_id).instances) == 2
    # Not collected yet: nothing is purged, however old.
    assert site.retention().run(now=days(60)).series == 0
    new_jobs = site.collect(now=utcnow() + timedelta(seconds=62))
    assert len(new_jobs) == 1 and new_jobs[0] != job_id
    assert site.retention().run(now=days(60)).series == 0  # its job is queued
    site.run_job(new_jobs[0], uid)
    site.deliver(sent=True)
    assert site.retention().run(now=days(60)).series == 1
    assert site.spool_files() == []


def test_interrupted_purge_is_finished_by_the_sweep(site: Site) -> None:
    files = ct_files()
    uid = series_uid_of(files)
    for f in files:
        site.receive(f)
    [job_id] = site.collect(now=utcnow() + timedelta(seconds=31))
    site.run_job(job_id, uid)
    site.deliver(sent=True)
    store = RetentionStore(site.db, site.tmp / "spool", site.results)
    cands = store.candidates(older_than=days(31))
    assert len(cands) == 1
    store.mark(cands)  # ... and the process dies before deleting
    assert len(site.spool_files()) == len(files)
    # Nothing reads a marked instance any more.
    assert site.jobs.series_instances(cands[0].series_id).instances == []
    assert store.candidates(older_than=days(31)) == []
    assert store.sweep() == len(files) + 1
    assert site.spool_files() == []
