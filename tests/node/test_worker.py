"""The job function run alone, as an executor other than the local pool would call it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from pydicom import dcmread
from sqlalchemy import select

from dicom_node.cli import main as cli_main
from dicom_node.collect import Collector
from dicom_node.config import Settings
from dicom_node.work.worker import run_job
from storage.db import Database
from storage.models import Job
from storage.received import InstanceRecord, ReceivedStore
from storage.spool import Spool
from tests.support.ct_series import SERIES_UID, stored_ct_series
from tests.support.peers import render_config


def test_run_job_claims_by_id_and_records_a_permanent_failure(tmp_path: Path) -> None:
    settings, db, _ = stored_ct_series(tmp_path, "no-such-model")
    (job_id,) = Collector(db, settings).complete(SERIES_UID).job_ids
    assert run_job(job_id, settings, db) == "failed"  # unknown pipeline: no retry helps
    with db.engine.connect() as conn:
        status, error, attempts = conn.execute(
            select(Job.status, Job.error, Job.attempts).where(Job.id == job_id)
        ).one()
    assert (status, attempts) == ("failed", 1)
    assert "no-such-model" in error
    assert run_job(job_id, settings, db) == "failed"  # not due: left alone
    db.dispose()


def test_a_refusal_inside_the_run_skips_the_job_with_its_reason(
    tmp_path: Path, dicom_data: Path
) -> None:
    """The real chest CR: the pixel checks take it, then the OOD check inside the
    pipeline's run refuses it; the job ends ``skipped`` with that reason, not
    ``failed``.  A Structured Report stored in the same series is not an input."""
    sections = {
        "storage": {
            "spool_dir": str(tmp_path / "spool"),
            "results_dir": str(tmp_path / "results"),
            "database_url": f"sqlite:///{tmp_path / 'node.db'}",
        },
        "rules": [{"name": "cxr", "match": {"Modality": "CR"}, "pipelines": ["cxr-findings"]}],
    }
    settings = Settings.model_validate(sections)
    config = tmp_path / "config.toml"
    config.write_text(render_config(sections))
    db = Database(settings.storage.database_url)
    db.upgrade()
    store = ReceivedStore(db, Spool(settings.storage.spool_dir))
    source = dicom_data / "nema_wg04/RG1_chest_CR/RG1_UNCR.dcm"
    ds = dcmread(source, stop_before_pixels=True)
    common = {
        "study_instance_uid": str(ds.StudyInstanceUID),
        "series_instance_uid": str(ds.SeriesInstanceUID),
        "modality": "CR",
        "attributes": {"Modality": "CR"},
    }
    store.store(
        InstanceRecord(
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            **common,
        ),
        store.spool.write_temp([source.read_bytes()]),
    )
    store.store(
        InstanceRecord(
            sop_instance_uid=str(ds.SOPInstanceUID) + ".99",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR: not read
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            **common,
        ),
        store.spool.write_temp([b"not an image"]),
    )
    (job_id,) = Collector(db, settings).complete(str(ds.SeriesInstanceUID)).job_ids
    assert run_job(job_id, settings, db) == "skipped"
    with db.engine.connect() as conn:
        status, error, timings = conn.execute(
            select(Job.status, Job.error, Job.timings).where(Job.id == job_id)
        ).one()
    assert status == "skipped"
    assert "out of the model's training distribution" in error, error
    assert "read" in timings, timings
    db.dispose()
    # `jobs show` says why it was skipped, labelled as such (not as an error).
    shown = CliRunner().invoke(cli_main, ["-c", str(config), "jobs", "show", str(job_id)])
    assert shown.exit_code == 0, shown.output
    assert "skipped: " in shown.output and "error: " not in shown.output, shown.output


def test_a_worker_that_cannot_see_the_spool_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker on a host whose spool folder is not the receivers' volume: the job
    fails, to be retried, with a message that names the cause (no traceback)."""
    settings, db, store = stored_ct_series(
        tmp_path, "ct-lungs", instances=2, worker={"retry_base_s": 60}
    )
    (job_id,) = Collector(db, settings).complete(SERIES_UID).job_ids
    # The worker's host sees another (empty) folder under the same path.
    for path in store.spool.iter_files():
        store.spool.absolute(path).unlink()
    assert run_job(job_id, settings, db) == "queued"  # retried later
    with db.engine.connect() as conn:
        status, error = conn.execute(select(Job.status, Job.error).where(Job.id == job_id)).one()
    assert status == "queued"
    assert error.startswith("2 of 2 file(s) of series 1.2.3.4 are not visible on this host")
    assert "must be the volume the receivers write to" in error
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)
    db.dispose()
