"""The job function run alone, as an executor other than the local pool would call it."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from dicom_node.collect import Collector
from dicom_node.config import Settings
from dicom_node.worker import run_job
from storage.db import Database
from storage.models import Job
from storage.received import InstanceRecord, ReceivedStore
from storage.spool import Spool


def test_run_job_claims_by_id_and_records_a_permanent_failure(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {
            "storage": {
                "spool_dir": str(tmp_path / "spool"),
                "results_dir": str(tmp_path / "results"),
                "database_url": f"sqlite:///{tmp_path / 'node.db'}",
            },
            "rules": [{"name": "r", "match": {"Modality": "CT"}, "pipelines": ["no-such-model"]}],
        }
    )
    db = Database(settings.storage.database_url)
    db.upgrade()
    store = ReceivedStore(db, Spool(settings.storage.spool_dir))
    store.store(
        InstanceRecord(
            study_instance_uid="1.2.3",
            series_instance_uid="1.2.3.4",
            sop_instance_uid="1.2.3.4.5",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            modality="CT",
            attributes={"Modality": "CT"},
        ),
        store.spool.write_temp([b"x"]),
    )
    (job_id,) = Collector(db, settings).complete("1.2.3.4").job_ids
    assert run_job(job_id, settings, db) == "failed"  # unknown pipeline: no retry helps
    with db.engine.connect() as conn:
        status, error, attempts = conn.execute(
            select(Job.status, Job.error, Job.attempts).where(Job.id == job_id)
        ).one()
    assert (status, attempts) == ("failed", 1)
    assert "no-such-model" in error
    assert run_job(job_id, settings, db) == "failed"  # not due: left alone
    db.dispose()
