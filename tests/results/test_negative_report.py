"""Negative results are results: the SR that says a pipeline ran and found nothing.

* ``mg-masses`` on a synthetic mammogram of its training family with no mass
  (the real pipeline and weights): nothing found, so ``write_results`` writes
  one TID 1500 SR -- and no GSPS or SC -- that passes dciodvfy, says Finding =
  "Clinical finding absent" (373572006, SCT) in a TID 1501 group with the
  algorithm (TID 4019) and the mammogram as source image, with a TID 1410
  region for viewers; seeded UIDs repeat; ``negative_report=False`` writes
  nothing;
* an empty result on the real 28-slice CT: first, middle and last slices in
  the TID 1501 group, every slice in the evidence, a revision's description
  and predecessor, no region group without ``planar_regions``;
* what is not a negative report: a result with a finding or a non-empty
  segment.
"""

from __future__ import annotations

import dataclasses
import pathlib

import highdicom as hd
import numpy as np
import pydicom
import pytest

from ai_models.dicom_files import discover_series
from ai_models.pipelines.mg_masses import MgMassesPipeline
from ai_models.types import PipelineResult, Volume
from dicom_node.results import (
    PreviousVersion,
    nothing_to_report,
    save_datasets,
    write_negative_sr,
    write_results,
    write_sr,
)
from dicom_node.results.sr import CLINICAL_FINDING_ABSENT
from tests.results.helpers import algorithm, assert_valid, make_result
from tests.support.mammo import write_no_mass_mammogram

MEASUREMENT_GROUP = "125007"
IMAGING_MEASUREMENTS = "126010"
TRACKING_ID = "112039"
TRACKING_UID = "112040"
FINDING = "121071"
ALGORITHM_NAME = "111001"


def _groups(ds: pydicom.Dataset) -> list[pydicom.Dataset]:
    imaging = next(
        i
        for i in ds.ContentSequence
        if i.ConceptNameCodeSequence[0].CodeValue == IMAGING_MEASUREMENTS
    )
    return [
        g
        for g in imaging.ContentSequence
        if g.ConceptNameCodeSequence[0].CodeValue == MEASUREMENT_GROUP
    ]


def _children(group: pydicom.Dataset, code: str) -> list[pydicom.Dataset]:
    return [c for c in group.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == code]


def _template(group: pydicom.Dataset) -> str:
    return str(group.ContentTemplateSequence[0].TemplateIdentifier)


def _images(group: pydicom.Dataset) -> list[str]:
    return [
        c.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for c in group.ContentSequence
        if c.ValueType == "IMAGE"
    ]


def _evidence(ds: pydicom.Dataset) -> set[str]:
    return {
        sop.ReferencedSOPInstanceUID
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }


def _statement(ds: pydicom.Dataset) -> pydicom.Dataset:
    """The one TID 1501 group of a negative report, checked for what it must say."""
    (group,) = [g for g in _groups(ds) if _template(g) == "1501"]
    (finding,) = _children(group, FINDING)
    code = finding.ConceptCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
        "373572006",
        "SCT",
        "Clinical finding absent",
    )
    assert _children(group, TRACKING_UID)
    return group


@pytest.fixture(scope="module")
def mg_negative(tmp_path_factory: pytest.TempPathFactory) -> PipelineResult:
    """``mg-masses`` on a phantom with no mass: a real result with nothing found."""
    path = write_no_mass_mammogram(tmp_path_factory.mktemp("mg-negative"))
    pipeline = MgMassesPipeline(device="cpu")
    ((_, files),) = discover_series(path).items()
    volume = pipeline.read_series(files)
    pipeline.check(volume)
    result = pipeline.run(volume)
    assert not result.findings, [f.tracking_id for f in result.findings]
    return result


def test_mg_masses_finding_nothing_writes_a_negative_report(
    mg_negative: PipelineResult, tmp_path: pathlib.Path
) -> None:
    result = mg_negative
    source = result.volume.source_datasets[0]
    assert nothing_to_report(result)
    datasets = write_results(result, "seg,sr,gsps,sc", uid_seed="negative")
    assert [d.Modality for d in datasets] == ["SR"]  # no SEG, GSPS or SC: nothing to draw
    (path,) = save_datasets(datasets, tmp_path)
    assert_valid(path)

    ds = pydicom.dcmread(path)
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert "SR no findings" in ds.SeriesDescription
    assert (ds.CompletionFlag, ds.VerificationFlag) == ("PARTIAL", "UNVERIFIED")
    assert _evidence(ds) == {source.SOPInstanceUID}

    statement = _statement(ds)
    (identifier,) = _children(statement, TRACKING_ID)
    assert identifier.TextValue == "mg-masses: no findings"
    assert _images(statement) == [source.SOPInstanceUID]
    (name,) = _children(statement, ALGORITHM_NAME)
    assert name.TextValue == result.algorithm.name

    # Its region for viewers: same Tracking UID, the mammogram's edges.
    (region,) = [g for g in _groups(ds) if _template(g) == "1410"]
    assert _children(region, TRACKING_UID)[0].UID == _children(statement, TRACKING_UID)[0].UID
    (scoord,) = [c for c in region.ContentSequence if c.ValueType == "SCOORD"]
    _, rows, cols = result.volume.shape
    corners = np.asarray(scoord.GraphicData, dtype=float).reshape(-1, 2)
    np.testing.assert_allclose(corners[[0, 2]], [[0, 0], [cols, rows]])
    assert scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        source.SOPInstanceUID
    )

    # highdicom reads it back the same way.
    sr = hd.sr.srread(path)
    (group,) = sr.content.get_image_measurement_groups()  # the TID 1501 ones
    assert group.finding_type == CLINICAL_FINDING_ABSENT
    assert group.finding_type.meaning == "Clinical finding absent"
    assert group.tracking_identifier == "mg-masses: no findings"
    assert [i.referenced_sop_instance_uid for i in group.source_images] == [source.SOPInstanceUID]

    again = write_results(result, "sr", uid_seed="negative")
    assert [d.SOPInstanceUID for d in again] == [ds.SOPInstanceUID]
    assert _children(_statement(again[0]), TRACKING_UID)[0].UID == (
        _children(statement, TRACKING_UID)[0].UID
    )


def test_negative_report_off_writes_nothing(mg_negative: PipelineResult) -> None:
    assert write_results(mg_negative, "seg,sr,gsps,sc", negative_report=False) == []


def test_negative_report_of_a_ct_series(ct_volume: Volume, tmp_path: pathlib.Path) -> None:
    result = PipelineResult(pipeline="test-pipeline", volume=ct_volume, algorithm=algorithm())
    earlier = PreviousVersion(
        str(ct_volume.source_datasets[0].StudyInstanceUID),
        "1.2.3.1",
        "1.2.840.10008.5.1.4.1.1.88.34",
        "1.2.3.2",
    )
    sr = write_negative_sr(result, planar_regions=False, previous_versions=[earlier], revision=1)
    (path,) = save_datasets([sr], tmp_path)
    assert_valid(path)
    ds = pydicom.dcmread(path)
    assert ds.SeriesDescription.endswith("SR no findings (AI, not for diagnosis) (rev 1)")
    assert ds.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].SeriesInstanceUID == (
        "1.2.3.1"
    )
    (group,) = _groups(ds)  # no region group without planar_regions
    statement = _statement(ds)
    assert _template(group) == "1501"
    n = ct_volume.shape[0]
    assert n > 16
    assert _images(statement) == [ct_volume.frames[k].sop_instance_uid for k in (0, n // 2, n - 1)]
    assert _evidence(ds) == {f.sop_instance_uid for f in ct_volume.frames}


def test_what_is_not_a_negative_report(ct_volume: Volume) -> None:
    with_findings = make_result(ct_volume)
    assert not nothing_to_report(with_findings)
    with pytest.raises(ValueError, match="findings or segments"):
        write_negative_sr(with_findings)
    # Segments without findings: the SEG says it all, no SR of either kind.
    segments_only = dataclasses.replace(with_findings, findings=[])
    assert not nothing_to_report(segments_only)
    assert [d.Modality for d in write_results(segments_only, "seg,sr")] == ["SEG"]
    # Empty segments are nothing to report.
    empty = dataclasses.replace(
        segments_only,
        segments=[
            dataclasses.replace(s, mask=np.zeros_like(s.mask)) for s in segments_only.segments
        ],
    )
    assert nothing_to_report(empty)
    (sr,) = write_results(empty, "seg,sr")
    _statement(sr)
    with pytest.raises(ValueError, match="write_negative_sr"):
        write_sr(empty)
