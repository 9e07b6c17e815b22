"""Offline analysis glue and the analyze / pipelines commands."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Iterator

import highdicom as hd
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from ai_models.pipelines import (
    SHIPPED_PIPELINES,
    Pipeline,
    PipelineInfo,
    list_pipelines,
    register_pipeline,
    unregister_pipeline,
)
from ai_models.types import Finding, Measurement, PipelineResult, Segment, Volume
from dicom_node.cli_analyze import analyze, pipelines
from dicom_node.work.analyze import SeriesStatus, analyze_paths
from tests.results.helpers import ANATOMY, BONE, MM3, VOLUME, algorithm, assert_valid

CT = "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm"
MR = "dcmqi/qin-prostate-01-0001_adc"
LOCALIZER = "dcm_qa_table/GE_SIGNA_Premier_3plane_localizer"


class _Threshold(Pipeline):
    """A tiny pipeline: everything above the 95th percentile is "bone"."""

    name = "test-threshold"
    description = "test: percentile threshold"
    modalities = ("CT",)
    version = "0.1"

    def run(self, volume: Volume) -> PipelineResult:
        t0 = time.perf_counter()
        mask = volume.array > np.percentile(volume.array, 95)
        uid = hd.UID()
        seg = Segment(1, "Bright", ANATOMY, BONE, mask, "bright", uid)
        finding = Finding("bright", uid, BONE, None, 1,
                          [Measurement(VOLUME, float(mask.sum() * volume.voxel_volume_mm3), MM3)])
        return PipelineResult(self.name, volume, algorithm(), [seg], [finding],
                              timings={"infer": time.perf_counter() - t0})


class _AnyModality(_Threshold):
    name = "test-any"
    modalities = ()


@pytest.fixture(autouse=True, scope="module")
def _test_pipelines() -> Iterator[None]:
    """Register the two test pipelines for this module only."""
    for cls in (_Threshold, _AnyModality):
        register_pipeline(
            cls.name, lambda _c=cls, **_o: _c(),
            lambda _c=cls: PipelineInfo(_c.name, _c.description, _c.modalities, _c.version),
        )
    yield
    for cls in (_Threshold, _AnyModality):
        unregister_pipeline(cls.name)


def test_shipped_pipelines_cannot_be_unregistered() -> None:
    assert SHIPPED_PIPELINES == {"ct-lungs", "cxr-findings", "mg-masses", "mr-brain-lesion"}
    for name in sorted(SHIPPED_PIPELINES):
        with pytest.raises(ValueError, match="built in"):
            unregister_pipeline(name)
    assert {p.name for p in list_pipelines()} >= SHIPPED_PIPELINES


def test_analyze_paths_writes_and_skips(dicom_data: pathlib.Path, tmp_path) -> None:
    out = tmp_path / "out"
    report = analyze_paths(
        [dicom_data / CT, dicom_data / MR], "test-threshold", out, outputs="seg,sr"
    )
    by_modality = {s.modality: s for s in report.series}
    ct, mr = by_modality["CT"], by_modality["MR"]
    assert mr.status == SeriesStatus.SKIPPED and "modality MR" in mr.reason
    assert ct.status == SeriesStatus.DONE, ct.reason
    assert list(ct.timings)[0] == "read" and list(ct.timings)[-1] == "write"
    assert "infer" in ct.timings and all(v >= 0 for v in ct.timings.values())
    assert report.ok
    names = sorted(p.name for p in ct.files)
    assert len(names) == 2 and names[0].startswith("seg_") and names[1].startswith("sr_")
    seg_path = next(p for p in ct.files if p.name.startswith("seg_"))
    sr_path = next(p for p in ct.files if p.name.startswith("sr_"))
    seg = hd.seg.segread(seg_path)
    assert seg_path.name == f"seg_{seg.SOPInstanceUID}.dcm"
    assert_valid(seg_path)
    assert_valid(sr_path)
    sr = hd.sr.srread(sr_path)
    assert sr.StudyInstanceUID == seg.StudyInstanceUID


def test_analyze_skips_a_series_that_is_not_one_volume(dicom_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    report = analyze_paths([dicom_data / LOCALIZER], "test-any", tmp_path, outputs=["sr"])
    (entry,) = report.series
    assert entry.status == SeriesStatus.SKIPPED
    assert "not one volume" in entry.reason
    assert not report.ok and report.files == []


def test_cli_analyze(dicom_data: pathlib.Path, tmp_path) -> None:
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        analyze,
        [str(dicom_data / CT), "--pipeline", "test-threshold", "--out", str(out),
         "--outputs", "seg,sr,sc", "--device", "cpu"],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    assert "write" in result.output and "read" in result.output
    files = sorted(out.iterdir())
    kinds = {f.name.split("_")[0] for f in files}
    assert kinds == {"seg", "sr", "sc"}
    assert f"{len(files)} file(s) written" in result.output
    sc = pydicom.dcmread(next(f for f in files if f.name.startswith("sc_")))
    assert sc.BurnedInAnnotation == "YES"


def test_cli_analyze_bad_arguments(dicom_data: pathlib.Path, tmp_path) -> None:
    runner = CliRunner()
    bad_kind = runner.invoke(analyze, [str(dicom_data / CT), "--pipeline", "test-threshold",
                                       "--out", str(tmp_path), "--outputs", "seg,pdf"])
    assert bad_kind.exit_code == 2 and "pdf" in bad_kind.output
    unknown = runner.invoke(analyze, [str(dicom_data / CT), "--pipeline", "ct-lung",
                                      "--out", str(tmp_path)])
    assert unknown.exit_code == 2 and "ct-lungs" in unknown.output
    nothing = runner.invoke(analyze, [str(dicom_data / MR), "--pipeline", "test-threshold",
                                      "--out", str(tmp_path)])
    assert nothing.exit_code == 1 and "skipped" in nothing.output


def test_cli_pipelines() -> None:
    result = CliRunner().invoke(pipelines, [])
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    ct_lungs = next(line for line in lines if line.startswith("ct-lungs\t"))
    name, modalities, description = ct_lungs.split("\t")
    assert modalities == "CT" and description
    assert any(line.startswith("test-threshold\tCT\t") for line in lines)


def test_ct_lungs_end_to_end(dicom_data: pathlib.Path, tmp_path) -> None:
    """ct-lungs writes valid objects for a chest CT, and skips the real head CT
    with the reason (its pixels show no lung fields)."""
    from ai_models.pipelines.ct_lungs import DEFAULT_WEIGHTS
    from tests.support.chest_ct import write_chest_ct

    if not pathlib.Path(DEFAULT_WEIGHTS).is_file():
        pytest.skip("ct-lungs weights not built yet")
    chest = tmp_path / "chest"
    write_chest_ct(chest)
    report = analyze_paths([chest, dicom_data / CT], "ct-lungs", tmp_path / "out",
                           outputs="seg,sr,sc", device="cpu")  # fmt: skip
    assert len(report.series) == 2
    done = [e for e in report.series if e.status == SeriesStatus.DONE]
    skipped = [e for e in report.series if e.status == SeriesStatus.SKIPPED]
    assert len(done) == 1 and len(skipped) == 1, report.series
    assert "not a chest CT: no lung fields" in (skipped[0].reason or "")
    assert not skipped[0].files
    for path in done[0].files:
        if not path.name.startswith("sc_"):
            assert_valid(path)
