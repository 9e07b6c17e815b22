"""A new pipeline, result kind, destination type and executor, each one file and one registration.

The toys of :mod:`tests.support.toy_plugins` are registered for a test,
go through the configuration, ``write_results``, ``save_datasets`` and
``deliver_batch`` as the built-in ones do, and are unregistered after.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator

import pydicom
import pytest
from pydantic import ValidationError

from ai_models.pipelines import list_pipelines, register_pipeline, unregister_pipeline
from dicom_node.config import RuleSettings, Settings, load_settings
from dicom_node.deliver import deliver_batch
from dicom_node.deliver.destinations import (
    destination_types,
    open_destination,
    register_destination_type,
    unregister_destination_type,
)
from dicom_node.deliver.destinations.folder import FolderDestination, folder_file
from dicom_node.errors import ConfigError
from dicom_node.results import (
    COMPREHENSIVE_3D_SR_SOP_CLASS_UID,
    kind_of,
    parse_outputs,
    register_writer,
    result_kinds,
    save_datasets,
    unregister_writer,
    write_results,
)
from dicom_node.work.analyze import SeriesStatus, analyze_paths
from storage.jobs import ClaimedDelivery
from tests.results.conftest import load
from tests.results.helpers import make_result
from tests.support.toy_plugins import (
    BASIC_TEXT_SR_SOP_CLASS_UID,
    FindingCountWriter,
    InlineExecutor,
    MemoryDestination,
    MemoryDestinationSettings,
)


@pytest.fixture
def count_kind() -> Iterator[FindingCountWriter]:
    writer = FindingCountWriter()
    register_writer(writer)
    try:
        yield writer
    finally:
        unregister_writer(writer.kind)


@pytest.fixture
def dense_pipeline() -> Iterator[str]:
    register_pipeline("toy-dense", "tests.support.toy_plugins:DenseVoxelsPipeline")
    try:
        yield "toy-dense"
    finally:
        unregister_pipeline("toy-dense")


def test_a_new_pipeline_runs_like_a_built_in_one(
    dense_pipeline: str,
    count_kind: FindingCountWriter,
    dicom_data: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    """Registered by its class path: listed without being built, run by ``analyze``
    on a real CT (and skipped on an MR by its modality), with a new result kind."""
    (info,) = [p for p in list_pipelines() if p.name == dense_pipeline]
    assert (info.modalities, info.version, info.source) == (("CT",), "0.1", "built-in")
    report = analyze_paths(
        [
            dicom_data / "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm",
            dicom_data / "dcmqi/qin-prostate-01-0001_adc",
        ],
        dense_pipeline,
        tmp_path,
        outputs="seg,count",
    )
    by_modality = {s.modality: s for s in report.series}
    assert by_modality["CT"].status == SeriesStatus.DONE
    assert by_modality["MR"].status == SeriesStatus.SKIPPED
    assert "modality MR" in by_modality["MR"].reason
    names = sorted(p.name.split("_")[0] for p in report.files)
    assert names == ["count", "seg"]
    count = pydicom.dcmread(next(p for p in report.files if p.name.startswith("count_")))
    assert count.ContentSequence[0].TextValue == "1 finding(s) by toy-dense"


@pytest.fixture
def memory_type() -> Iterator[type[MemoryDestination]]:
    register_destination_type(MemoryDestination)
    MemoryDestination.boxes.clear()
    try:
        yield MemoryDestination
    finally:
        unregister_destination_type(MemoryDestination.type_name)
        MemoryDestination.boxes.clear()
        MemoryDestination.refused_kinds.clear()


def test_a_new_result_kind_is_written_after_the_built_in_ones(
    count_kind: FindingCountWriter, dicom_data: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    assert result_kinds() == ("seg", "sr", "gsps", "sc", "count")
    assert parse_outputs("count, seg") == ("seg", "count")
    assert RuleSettings(name="r", outputs=["seg", "count"]).outputs == ["seg", "count"]

    result = make_result(load(dicom_data, "ct3"))
    datasets = write_results(result, "count,sr,seg", uid_seed="ab" * 16)
    assert [kind_of(ds) for ds in datasets] == ["seg", "sr", "count"]
    count = datasets[-1]
    assert count.SOPClassUID == BASIC_TEXT_SR_SOP_CLASS_UID and count.SeriesNumber == 9099
    assert count.StudyInstanceUID == result.volume.source_datasets[0].StudyInstanceUID
    # Its UIDs come from the job's seed like every kind's: a retry repeats them.
    (again,) = write_results(result, "count", uid_seed="ab" * 16)
    assert again.SOPInstanceUID == count.SOPInstanceUID
    assert again.SeriesInstanceUID == count.SeriesInstanceUID

    paths = save_datasets(datasets, tmp_path)
    assert paths[-1].name == f"count_{count.SOPInstanceUID}.dcm"
    text = pydicom.dcmread(paths[-1]).ContentSequence[0].TextValue
    assert text == f"{len(result.findings)} finding(s) by test-pipeline"


def test_an_unregistered_kind_is_unknown_everywhere() -> None:
    assert "count" not in result_kinds()
    with pytest.raises(ValueError, match="Unknown output kind"):
        parse_outputs("count")
    with pytest.raises(ValidationError, match="unknown result kind 'count'"):
        RuleSettings(name="r", outputs=["count"])


def test_the_registries_refuse_clashes(count_kind: FindingCountWriter) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_writer(FindingCountWriter())

    class SecondSr(FindingCountWriter):
        kind = "sr2"
        sop_class_uid = COMPREHENSIVE_3D_SR_SOP_CLASS_UID

    with pytest.raises(ValueError, match="already the kind 'sr'"):
        register_writer(SecondSr())
    with pytest.raises(ValueError, match="already registered"):
        register_destination_type(FolderDestination)


def _claimed(
    results_dir: pathlib.Path, destination: str, paths: list[pathlib.Path]
) -> list[ClaimedDelivery]:
    out = []
    for i, path in enumerate(paths, 1):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out.append(
            ClaimedDelivery(
                id=i,
                result_id=i,
                destination=destination,
                path=str(path.relative_to(results_dir)),
                kind=kind_of(ds),
                sop_instance_uid=str(ds.SOPInstanceUID),
                attempts=0,
            )
        )
    return out


def test_a_new_destination_type_is_configured_and_delivered_to(
    count_kind: FindingCountWriter,
    memory_type: type[MemoryDestination],
    dicom_data: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    results_dir = tmp_path / "results"
    settings = Settings.model_validate(
        {
            "storage": {"results_dir": str(results_dir)},
            "destinations": [
                {"name": "mem", "type": "memory", "box": "a", "outputs": ["sr", "count"]},
                {"name": "out", "type": "folder", "path": str(tmp_path / "outbox")},
            ],
        }
    )
    mem, out = settings.destinations
    assert isinstance(mem, MemoryDestinationSettings) and mem.outputs == ["sr", "count"]
    assert "memory" in destination_types()
    assert open_destination(mem, calling_ae="NODE").echo() == 0.0

    datasets = write_results(make_result(load(dicom_data, "ct3")), "seg,sr,count")
    paths = save_datasets(datasets, results_dir / "job-1")
    items = _claimed(results_dir, "mem", paths)
    MemoryDestination.refused_kinds.add("sr")
    outcomes = deliver_batch(settings, items)
    assert [(o.delivery_id, o.sent, o.retry) for o in outcomes] == [
        (1, True, True),
        (2, False, False),
        (3, True, True),
    ]
    assert outcomes[1].error == "sr refused"
    assert MemoryDestination.boxes["a"] == [paths[0].read_bytes(), paths[2].read_bytes()]

    # The built-in folder type, through the same path.
    to_folder = [dataclasses.replace(i, destination="out") for i in items]
    assert all(o.sent for o in deliver_batch(settings, to_folder))
    for ds, path in zip(datasets, paths, strict=True):
        written = folder_file(
            tmp_path / "outbox", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        )
        assert written.read_bytes() == path.read_bytes()
    assert open_destination(out, calling_ae="NODE").echo() >= 0.0


def test_an_unknown_destination_type_is_a_config_error(tmp_path: pathlib.Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[[destinations]]\nname = "m"\ntype = "memory"\nbox = "a"\n')
    with pytest.raises(ConfigError, match="unknown destination type 'memory'"):
        load_settings(cfg)


def test_a_new_destination_type_reports_missing_keys(
    memory_type: type[MemoryDestination], tmp_path: pathlib.Path
) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[[destinations]]\nname = "m"\ntype = "memory"\n')
    with pytest.raises(ConfigError, match="of type 'memory' needs box"):
        load_settings(cfg)
    cfg.write_text('[[destinations]]\nname = "m"\ntype = "memory"\nbox = "a"\nport = 1\n')
    with pytest.raises(ConfigError, match="port: unknown key"):
        load_settings(cfg)


def test_a_new_executor_runs_the_collectors_jobs(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from dicom_node.collect import Collector
    from dicom_node.work.executor import EXECUTORS, make_executor
    from tests.support.ct_series import SERIES_UID, stored_ct_series

    with pytest.raises(ValidationError, match="unknown executor 'inline'"):
        Settings.model_validate({"worker": {"executor": "inline"}})
    monkeypatch.setitem(EXECUTORS, "inline", "tests.support.toy_plugins:InlineExecutor")
    settings, db, _ = stored_ct_series(tmp_path, "no-such-model", worker={"executor": "inline"})
    executor = make_executor(settings, db)
    assert isinstance(executor, InlineExecutor)
    executor.start()
    try:
        (job_id,) = Collector(db, settings, on_jobs=executor.wake).complete(SERIES_UID).job_ids
        deadline = time.monotonic() + 30
        while not executor.ran and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        executor.stop()
        db.dispose()
    assert executor.ran == [(job_id, "failed")]  # claimed and run once: no such pipeline
