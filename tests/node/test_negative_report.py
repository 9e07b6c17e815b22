"""The worker path of a negative report: a rule's pipeline finds nothing.

The real 28-slice head CT is received into the spool and database, the
collector makes the job, and :func:`dicom_node.work.worker.run_job` runs it with a
pipeline registered here that reads the series and finds nothing.  With the
rule's ``negative_report`` on (the default) the job writes one SR that passes
dciodvfy and says "Clinical finding absent", and queues its delivery; with it
off the job succeeds with no result object and says why.  The option is
validated with the rest of the rule.

End to end: DCMTK ``storescu`` sends a synthetic mammogram with no mass to
``dicom-node serve``, whose mammography rule runs the real ``mg-masses``
(SR and GSPS outputs); the folder destination gets the negative report SR
and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydantic import ValidationError
from sqlalchemy import select

from ai_models.pipelines import register_pipeline, unregister_pipeline
from ai_models.pipelines.base import Pipeline, PipelineInfo
from ai_models.types import AlgorithmInfo, PipelineResult, Volume
from dicom_node.collect import Collector
from dicom_node.config import RuleSettings, Settings
from dicom_node.receive.header import header_record
from dicom_node.work.worker import run_job
from storage.db import Database
from storage.models import Delivery, Job, Result
from storage.received import ReceivedStore
from storage.spool import Spool
from tests.node.test_route_deliver import node_config, node_factory, wait_for  # noqa: F401
from tests.results.helpers import assert_valid
from tests.support.mammo import write_no_mass_mammogram
from tests.support.peers import NodeProcess, storescu

HEAD_CT = "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm"
PIPELINE = "finds-nothing-test"
RULE = "ct-finds-nothing"


class FindsNothing(Pipeline):
    """Reads a CT series into a volume, as every CT pipeline does, and finds nothing."""

    name = PIPELINE
    description = "test pipeline that finds nothing"
    modalities = ("CT",)
    version = "1.0"

    def run(self, volume: Volume) -> PipelineResult:
        return PipelineResult(
            pipeline=self.name,
            volume=volume,
            algorithm=AlgorithmInfo(name=self.name, version=self.version),
        )


@pytest.fixture
def finds_nothing() -> Iterator[str]:
    register_pipeline(
        PIPELINE,
        lambda **_: FindsNothing(),
        lambda: PipelineInfo(PIPELINE, FindsNothing.description, ("CT",), "1.0"),
    )
    try:
        yield PIPELINE
    finally:
        unregister_pipeline(PIPELINE)


def _settings(tmp_path: Path, rule: dict[str, Any]) -> Settings:
    return Settings.model_validate(
        {
            "storage": {
                "spool_dir": str(tmp_path / "spool"),
                "results_dir": str(tmp_path / "results"),
                "database_url": f"sqlite:///{tmp_path / 'node.db'}",
                "fsync": False,
            },
            "destinations": [{"name": "outbox", "type": "folder", "path": str(tmp_path / "out")}],
            "rules": [
                {
                    "name": RULE,
                    "match": {"Modality": "CT"},
                    "pipelines": [PIPELINE],
                    "destinations": ["outbox"],
                    "outputs": ["seg", "sr"],
                    **rule,
                }
            ],
        }
    )


def _receive(db: Database, settings: Settings, files: list[Path]) -> str:
    """Store the files as the receiver does; returns their series UID."""
    store = ReceivedStore(db, Spool(settings.storage.spool_dir))
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        record = header_record(ds, str(ds.file_meta.TransferSyntaxUID))
        store.store(record, store.spool.write_temp([path.read_bytes()]))
    return str(ds.SeriesInstanceUID)


@pytest.mark.parametrize("negative_report", [None, False], ids=["default", "off"])
def test_job_that_finds_nothing(
    finds_nothing: str, dicom_data: Path, tmp_path: Path, negative_report: bool | None
) -> None:
    rule = {} if negative_report is None else {"negative_report": negative_report}
    settings = _settings(tmp_path, rule)
    files = sorted((dicom_data / HEAD_CT).iterdir())
    db = Database(settings.storage.database_url)
    db.upgrade()
    try:
        series_uid = _receive(db, settings, files)
        (job_id,) = Collector(db, settings).complete(series_uid).job_ids
        assert run_job(job_id, settings, db) == "succeeded"
        with db.engine.connect() as conn:
            note = conn.execute(select(Job.error).where(Job.id == job_id)).scalar_one()
            results = conn.execute(select(Result.kind, Result.path, Result.id)).all()
            deliveries = conn.execute(select(Delivery.destination, Delivery.status)).all()
    finally:
        db.dispose()

    if negative_report is False:
        assert results == [] and deliveries == []
        assert note == f"{series_uid}: no findings; negative report disabled by rule {RULE}"
        return
    assert note is None
    ((kind, rel, _),) = results
    assert kind == "sr"
    assert deliveries == [("outbox", "pending")]
    path = settings.storage.results_dir / rel
    assert_valid(path)
    sr = pydicom.dcmread(path)
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesDescription.startswith(f"{PIPELINE} 1.0 SR no findings")
    items = [
        item
        for group in sr.ContentSequence[-1].ContentSequence  # Imaging Measurements
        for item in group.ContentSequence
    ]
    meanings = {i.ConceptCodeSequence[0].CodeMeaning for i in items if i.ValueType == "CODE"}
    assert "Clinical finding absent" in meanings
    referenced = {
        i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in items if i.ValueType == "IMAGE"
    }
    analysed = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert referenced and referenced <= analysed


def test_negative_report_is_a_validated_rule_option() -> None:
    assert RuleSettings(name="r").negative_report is True
    assert RuleSettings(name="r", negative_report=False).negative_report is False
    with pytest.raises(ValidationError, match="negative_report"):
        RuleSettings(name="r", negative_report="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="negative_reports"):
        RuleSettings(name="r", negative_reports=False)  # type: ignore[call-arg]


@pytest.mark.timeout(300)
def test_mammogram_without_mass_end_to_end(
    node_factory: Callable[..., NodeProcess],  # noqa: F811
    tmp_path: Path,
) -> None:
    source = write_no_mass_mammogram(tmp_path / "scanner")
    outbox = tmp_path / "outbox"
    config = node_config(None, quiet_s=1.0, folder=outbox)
    config["rules"] = [
        {
            "name": "mammography",
            "match": {"Modality": "MG"},
            "pipelines": ["mg-masses"],
            "destinations": ["outbox"],
            "quiet_period_s": 1.0,
            "outputs": ["sr", "gsps"],
        }
    ]
    node = node_factory(config)
    sent = storescu(node.port, [source], calling_ae="MAMMO")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    (path,) = wait_for(
        "the negative report in the outbox", lambda: list(outbox.rglob("*.dcm")), timeout_s=240
    )
    db = Database(node.db_url)
    try:
        (status,) = wait_for("the job to end", lambda: _job_states(db, "succeeded"))
    finally:
        db.dispose()
    assert status == "succeeded"
    assert len(list(outbox.rglob("*.dcm"))) == 1  # no GSPS: nothing to draw
    assert_valid(path)
    sr = pydicom.dcmread(path)
    mg = pydicom.dcmread(source, stop_before_pixels=True)
    assert sr.StudyInstanceUID == mg.StudyInstanceUID
    assert sr.SeriesDescription.startswith("mg-masses")
    assert "SR no findings" in sr.SeriesDescription
    assert "Clinical finding absent" in str(sr.ContentSequence)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == mg.SOPInstanceUID


def _job_states(db: Database, *states: str) -> list[str]:
    with db.engine.connect() as conn:
        return list(conn.execute(select(Job.status).where(Job.status.in_(states))).scalars())
