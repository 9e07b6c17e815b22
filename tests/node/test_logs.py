"""Log lines carry no patient data (dicom_node.logs), in text and in JSON format.

The node's own logging set-up (:func:`configure_logging`) writes to stderr;
each test reads what it wrote.  Values are a made-up patient's; pydicom's
messages are provoked with real pydicom calls.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import PersonName, validate_value
from sqlalchemy import select

from ai_models.pipelines import Pipeline, register_pipeline, unregister_pipeline
from ai_models.types import PipelineResult, Volume
from dicom_node.collect import Collector
from dicom_node.config import Settings
from dicom_node.logs import HIDDEN, configure_logging, patient
from dicom_node.work.worker import run_job
from storage.db import Database
from storage.models import Job
from storage.received import InstanceRecord, ReceivedStore
from storage.spool import Spool

NAME = "Quaestor^Philomena"
PATIENT_ID = "PHI-5519-QX"
BIRTH_DATE = "1961-02-03"  # not a DA (YYYYMMDD): pydicom quotes it in its messages
ACCESSION = "ACC5519QX"
LOG = logging.getLogger("dicom_node.tests.logs")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def _lines(err: str, json_format: bool) -> list[str]:
    lines = [line for line in err.splitlines() if line.strip()]
    if json_format:
        for line in lines:  # every line is a JSON record, warnings included
            json.loads(line)
    return lines


def _dataset_with_bad_birth_date() -> bytes:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.11.99.1"
    with pydicom_config.disable_value_validation():
        ds.PatientName = NAME
        ds.PatientID = PATIENT_ID
        ds.PatientBirthDate = BIRTH_DATE
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = BytesIO()
    with pydicom_config.disable_value_validation():
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("json_format", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("phi", [False, True], ids=["phi-off", "phi-on"])
def test_patient_values_only_in_debug_lines_with_phi(
    capsys: pytest.CaptureFixture[str], json_format: bool, phi: bool
) -> None:
    configure_logging("DEBUG", json_format, phi=phi)
    LOG.debug("debug: patient %s, accession %s", patient(NAME), patient(ACCESSION))
    LOG.info("info: patient %s", patient(NAME))
    LOG.warning("warning: patient id %s", patient(PATIENT_ID))
    LOG.error("error: %(who)s", {"who": patient(NAME)})
    lines = _lines(capsys.readouterr().err, json_format)
    assert len(lines) == 4, lines
    debug, info, warning, error = lines
    assert (NAME in debug and ACCESSION in debug) is phi
    assert HIDDEN in debug or phi
    for line in (info, warning, error):
        assert HIDDEN in line
        assert NAME not in line and PATIENT_ID not in line


@pytest.mark.parametrize("json_format", [False, True], ids=["text", "json"])
def test_pydicom_objects_as_arguments_show_no_patient(
    capsys: pytest.CaptureFixture[str], json_format: bool
) -> None:
    configure_logging("INFO", json_format, phi=True)
    ds = pydicom.dcmread(BytesIO(_dataset_with_bad_birth_date()))
    LOG.warning("data set %s", ds)
    LOG.warning("name %s, element %s", PersonName(NAME), ds["PatientID"])
    LOG.info("extra fields", extra={"patient_id": PATIENT_ID, "accession_number": ACCESSION})
    err = capsys.readouterr().err
    lines = _lines(err, json_format)
    assert len(lines) == 3, lines
    assert "<data set 1.2.826.0.1.3680043.10.11.99.1>" in lines[0]
    assert "(0010,0020)" in lines[1]
    for value in (NAME, "Quaestor", PATIENT_ID, ACCESSION, BIRTH_DATE):
        assert value not in err
    if json_format:
        assert json.loads(lines[2])["patient_id"] == HIDDEN


@pytest.mark.parametrize("json_format", [False, True], ids=["text", "json"])
def test_values_pydicom_quotes_are_hidden(
    capsys: pytest.CaptureFixture[str], json_format: bool
) -> None:
    """pydicom's warning (its logger and the Python warning) and its error in a traceback."""
    configure_logging("INFO", json_format, phi=True)
    ds = pydicom.dcmread(BytesIO(_dataset_with_bad_birth_date()))
    with warnings.catch_warnings(), _writing_mode(pydicom_config.WARN):
        warnings.simplefilter("always")
        Dataset().PatientBirthDate = ds.PatientBirthDate  # copied, as a result writer does
    try:
        validate_value("DA", BIRTH_DATE, pydicom_config.RAISE)
    except ValueError as exc:
        assert BIRTH_DATE in str(exc)  # what pydicom says
        LOG.exception("writing the result failed: %s", exc)
    err = capsys.readouterr().err
    lines = _lines(err, json_format)
    assert BIRTH_DATE not in err, err
    said = [line for line in lines if "Invalid value for VR DA: [hidden]" in line]
    assert len(said) == (2 if json_format else 3), lines  # warning, error (+ traceback line)
    assert any("pydicom" in line and "WARNING" in line for line in said)
    assert "Traceback" in err
    # The Python warning pydicom raised beside its log line is not written again.
    assert "py.warnings" not in err and "UserWarning" not in err


class _writing_mode:
    """pydicom's writing validation mode for a while."""

    def __init__(self, mode: int) -> None:
        self.mode = mode
        self.old = pydicom_config.settings.writing_validation_mode

    def __enter__(self) -> None:
        pydicom_config.settings.writing_validation_mode = self.mode

    def __exit__(self, *exc: object) -> None:
        pydicom_config.settings.writing_validation_mode = self.old


HEAD_CT = "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm"


class StrictCopyPipeline(Pipeline):
    """``toy-strict-copy``: validates the source's birth date as a strict writer would
    (pydicom raises, quoting the value)."""

    name = "toy-strict-copy"
    description = "toy: copies the patient's birth date strictly"
    modalities = ("CT",)
    version = "0.1"

    def run(self, volume: Volume) -> PipelineResult:
        birth_date = str(volume.source_datasets[0].PatientBirthDate)
        validate_value("DA", birth_date, pydicom_config.RAISE)
        raise AssertionError("the birth date was expected to be invalid")


def test_a_job_failure_stores_and_logs_no_quoted_patient_value(
    tmp_path: Path, dicom_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """pydicom's error inside a job (real CT slices with an invalid birth date): the job's
    error (database, ``jobs show``, API, audit) and its log lines keep the VR, not the value."""
    register_pipeline(StrictCopyPipeline.name, f"{__name__}:StrictCopyPipeline")
    try:
        settings = Settings.model_validate(
            {
                "storage": {
                    "spool_dir": str(tmp_path / "spool"),
                    "results_dir": str(tmp_path / "results"),
                    "database_url": f"sqlite:///{tmp_path / 'node.db'}",
                },
                "rules": [
                    {
                        "name": "ct",
                        "match": {"Modality": "CT"},
                        "pipelines": [StrictCopyPipeline.name],
                    }
                ],
            }
        )
        db = Database(settings.storage.database_url)
        db.upgrade()
        store = ReceivedStore(db, Spool(settings.storage.spool_dir))
        series_uid = ""
        for path in sorted((dicom_data / HEAD_CT).iterdir()):
            ds = pydicom.dcmread(path)
            with pydicom_config.disable_value_validation():
                ds.PatientBirthDate = BIRTH_DATE
            out = BytesIO()
            with pydicom_config.disable_value_validation():
                ds.save_as(out, enforce_file_format=True)
            series_uid = str(ds.SeriesInstanceUID)
            store.store(
                InstanceRecord(
                    study_instance_uid=str(ds.StudyInstanceUID),
                    series_instance_uid=series_uid,
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    sop_class_uid=str(ds.SOPClassUID),
                    transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                    modality="CT",
                    attributes={"Modality": "CT"},
                ),
                store.spool.write_temp([out.getvalue()[128 + 4 :]]),
            )
        (job_id,) = Collector(db, settings).complete(series_uid).job_ids
        configure_logging("INFO", json_format=True, phi=True)
        status = run_job(job_id, settings, db)
        with db.engine.connect() as conn:
            error = conn.execute(select(Job.error).where(Job.id == job_id)).scalar_one()
        db.dispose()
    finally:
        unregister_pipeline(StrictCopyPipeline.name)
    assert status == "queued"  # a ValueError: tried again later
    assert error == f"ValueError: Invalid value for VR DA: {HIDDEN}.", error
    written = capsys.readouterr().err
    assert '"level": "ERROR"' in written and "Traceback" in written
    assert written.count(f"Invalid value for VR DA: {HIDDEN}") == 2  # traceback, warning
    assert BIRTH_DATE not in written, written


def test_a_bad_log_call_is_still_only_reported(capsys: pytest.CaptureFixture[str]) -> None:
    """The filter never turns a log call with wrong arguments into an exception."""
    configure_logging("INFO", json_format=False)
    LOG.warning("two values %s %s", patient(NAME))
    LOG.warning("still logging")
    err = capsys.readouterr().err
    assert "--- Logging error ---" in err and "still logging" in err
    assert NAME not in err
