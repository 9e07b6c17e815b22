"""Classification results (no segments): TID 1501 groups and heat-map overlays.

Written for one real radiograph (NEMA WG-04 RG1 chest CR) and for a CT
volume, independent of any model: the results are made here.
"""

from __future__ import annotations

import pathlib
import re

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from ai_models.radiograph import load_radiograph
from ai_models.types import (
    ClassificationFinding,
    CodedConcept,
    Finding,
    HeatMap,
    PipelineResult,
    QualitativeEvaluation,
    Volume,
)
from dicom_node.results import (
    OutputUIDs,
    heatmap_key,
    save_datasets,
    write_heatmaps,
    write_results,
    write_sr,
)
from dicom_node.results.common import to_code
from dicom_node.results.sr import ABSENT, PERCENT, PRESENT, PROBABILITY
from dicom_node.results.sr_regions import (
    EXPLANATION_LEVEL,
    classification_label,
)
from tests.results.helpers import LUNG, algorithm, assert_valid, dciodvfy, make_result, unexplained

CHEST = "nema_wg04/RG1_chest_CR/RG1_UNCR.dcm"
EFFUSION = CodedConcept("60046008", "SCT", "Pleural effusion")
PNEUMOTHORAX = CodedConcept("36118008", "SCT", "Pneumothorax")

#: RG1's Referring Physician's Name "ward" (one component) is copied as it is.
_RG1_PN = re.compile(r"\(0x0008,0x0090\) PN Referring Physician's Name .*Retired")


def _valid(path: pathlib.Path) -> None:
    errors, warnings = dciodvfy(path)
    assert errors == [], "\n".join(errors)
    assert [w for w in unexplained(warnings) if not _RG1_PN.search(w)] == []


@pytest.fixture(scope="module")
def cr(dicom_data: pathlib.Path) -> Volume:
    return load_radiograph(dicom_data / CHEST)


def _evaluations(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> list:
    """Qualitative evaluations less TID 4019's Algorithm Family (highdicom lists it too)."""
    return [q for q in group.get_qualitative_evaluations() if q.name.value != "111000"]


def _result(volume: Volume, with_map: bool = True) -> PipelineResult:
    uid_e, uid_p = hd.UID(), hd.UID()
    findings = [
        ClassificationFinding(
            "Pleural effusion", uid_e, EFFUSION, probability=0.82, threshold=0.4, source_frames=(0,)
        ),
        ClassificationFinding(
            "Pneumothorax", uid_p, PNEUMOTHORAX, finding_site=LUNG, probability=0.1, threshold=0.4
        ),
    ]
    _, rows, cols = volume.shape
    yy, xx = np.mgrid[0:rows, 0:cols]
    blob = np.exp(-(((yy - 0.7 * rows) ** 2 + (xx - 0.25 * cols) ** 2) / (2 * (0.1 * rows) ** 2)))
    maps = (
        [
            HeatMap(
                "Pleural effusion",
                "Pleural effusion",
                uid_e,
                0,
                blob.astype(np.float32),
                probability=0.82,
                present=True,
            )
        ]
        if with_map
        else []
    )
    return PipelineResult("test-cxr", volume, algorithm(), findings=list(findings), heatmaps=maps)


def test_classification_finding_validates() -> None:
    with pytest.raises(ValueError, match="probability"):
        ClassificationFinding("x", hd.UID(), EFFUSION, probability=1.5)
    with pytest.raises(ValueError, match="threshold"):
        ClassificationFinding("x", hd.UID(), EFFUSION, probability=0.5, threshold=-0.1)
    f = ClassificationFinding("x", hd.UID(), EFFUSION, probability=0.5, threshold=0.5)
    assert f.present and f.segment_number is None


def _written(result: PipelineResult, tmp_path: pathlib.Path) -> hd.sr.Comprehensive3DSR:
    """The result's SR, saved, validated with dciodvfy and read back."""
    path = tmp_path / "sr.dcm"
    write_sr(result).save_as(path)
    _valid(path)
    return hd.sr.srread(path)


def test_sr_groups_for_classification(cr: Volume, tmp_path: pathlib.Path) -> None:
    result = _result(cr)
    back = _written(result, tmp_path)
    groups = back.content.get_image_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["Pleural effusion", "Pneumothorax"]
    src = cr.source_datasets[0]
    for g, f in zip(groups, result.findings, strict=True):
        assert isinstance(f, ClassificationFinding)
        assert g.tracking_uid == f.tracking_uid
        assert g.finding_type.value == f.finding_type.value
        (m,) = g.get_measurements(name=PROBABILITY)
        assert m.unit == PERCENT and m.value == pytest.approx(100 * f.probability)
        (q,) = g.get_qualitative_evaluations(name=to_code(f.finding_type))
        assert q.value == (PRESENT if f.present else ABSENT)
        assert [s.referenced_sop_instance_uid for s in g.source_images] == [src.SOPInstanceUID]
    assert groups[1].finding_sites[0].value.value == LUNG.value
    # The radiograph has no Imager Pixel Spacing: the library lists it without
    # TID 1603 descriptors, but lists it.
    assert src.SOPInstanceUID in {
        i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for c in back.ContentSequence
        if c.ValueType == "CONTAINER"
        for g in c.get("ContentSequence", [])
        if g.ValueType == "CONTAINER"
        for i in g.get("ContentSequence", [])
        if i.ValueType == "IMAGE"
    }


def test_each_classification_finding_is_drawn_first_for_viewers(
    cr: Volume, tmp_path: pathlib.Path
) -> None:
    """A TID 1410 region group precedes each TID 1501 group under its Tracking UID
    (OHIF cannot show a Tracking UID without an SCOORD): the explained finding
    boxes its heat map's high region, the other one frames the classified image."""
    result = _result(cr)
    back = _written(result, tmp_path)
    planar = back.content.get_planar_roi_measurement_groups()
    whole = back.content.get_image_measurement_groups()
    assert [g.tracking_uid for g in planar] == [f.tracking_uid for f in result.findings]
    order = [
        str(next(i.UID for i in g.ContentSequence if i.ValueType == "UIDREF"))
        for c in back.ContentSequence
        if c.ConceptNameCodeSequence[0].CodeValue == "126010"
        for g in c.ContentSequence
    ]
    effusion, pneumothorax = result.findings
    assert order == [effusion.tracking_uid] * 2 + [pneumothorax.tracking_uid] * 2
    assert len(whole) == 2
    _, rows, cols = cr.shape
    for group, finding in zip(planar, result.findings, strict=True):
        assert isinstance(finding, ClassificationFinding)
        (comment,) = [i for i in group[0].ContentSequence if i.name == codes.DCM.Comment]
        assert comment.value == classification_label(finding)
        region = group.roi
        assert region is not None and region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        points = region.value
        np.testing.assert_array_equal(points[0], points[-1])
        assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
            cr.frames[0].sop_instance_uid
        )
    assert comment_of(planar[0]).startswith("Pleural effusion: Present (Probability 82.00 %)")
    assert comment_of(planar[1]) == "Pneumothorax: Absent (Probability 10.00 %)"
    # The explained finding: the box around its heat map's high region.
    heat = result.heatmaps[0].map
    r, c = np.nonzero(heat >= EXPLANATION_LEVEL * heat.max())
    np.testing.assert_array_equal(
        planar[0].roi.value,
        [
            [c.min(), r.min()], [c.max() + 1, r.min()], [c.max() + 1, r.max() + 1],
            [c.min(), r.max() + 1], [c.min(), r.min()],
        ],
    )  # fmt: skip
    # The unexplained one: the image's edges.
    np.testing.assert_array_equal(
        planar[1].roi.value, [[0, 0], [cols, 0], [cols, rows], [0, rows], [0, 0]]
    )
    # Rectangles: OHIF takes them by their shape, under the finding's own name.
    assert [g.tracking_identifier for g in planar] == ["Pleural effusion", "Pneumothorax"]


def comment_of(group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations) -> str:
    (comment,) = [i for i in group[0].ContentSequence if i.name == codes.DCM.Comment]
    return str(comment.value)


def test_plain_findings_unchanged(ct_volume: Volume) -> None:
    """A plain Finding gets no probability or presence rows."""
    result = make_result(ct_volume)
    sr = hd.sr.Comprehensive3DSR.from_dataset(write_sr(result))
    groups = sr.content.get_image_measurement_groups()
    cls = next(g for g in groups if g.tracking_identifier == "classification")
    assert cls.get_measurements() == []
    assert [q.value.value for q in _evaluations(cls)] == ["RID28472"]


def test_write_results_heatmaps_seeded(cr: Volume, tmp_path: pathlib.Path) -> None:
    result = _result(cr)
    ds = write_results(result, "seg,sr,sc", uid_seed="seed-1")
    kinds = [d.Modality for d in ds]
    assert kinds == ["SR", "OT"]  # no SEG (no segments); SR; one heat-map SC
    paths = save_datasets(ds, tmp_path)
    for p in paths:
        _valid(p)
    sc = pydicom.dcmread(paths[1])
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert "heat map" in sc.SeriesDescription and sc.InstanceNumber == 1
    assert (
        sc.SourceImageSequence[0].ReferencedSOPInstanceUID == cr.source_datasets[0].SOPInstanceUID
    )
    assert (sc.Rows, sc.Columns) == (1024, 964)
    rgb = sc.pixel_array.astype(int)
    # Coloured where the map is high, grey where it is low.
    r, c = int(0.7 * sc.Rows), int(0.25 * sc.Columns)
    assert np.ptp(rgb[r, c]) > 40 and np.ptp(rgb[int(0.2 * sc.Rows), int(0.8 * sc.Columns)]) < 3
    again = write_results(result, "seg,sr,sc", uid_seed="seed-1")
    assert [d.SOPInstanceUID for d in again] == [d.SOPInstanceUID for d in ds]
    other = write_results(result, "sr,sc", uid_seed="seed-2")
    assert {d.SOPInstanceUID for d in other}.isdisjoint({d.SOPInstanceUID for d in ds})
    # Caller-fixed UIDs by heat-map key.
    fixed = OutputUIDs(
        series_instance_uid=hd.UID(),
        series_number=42,
        sop_instance_uids={heatmap_key(result, result.heatmaps[0]): hd.UID()},
    )
    (img,) = write_results(result, "sc", {"sc": fixed})
    assert img.SeriesInstanceUID == fixed.series_instance_uid and img.SeriesNumber == 42
    assert img.SOPInstanceUID == next(iter(fixed.sop_instance_uids.values()))


def test_no_heatmaps_no_sc(cr: Volume) -> None:
    assert write_results(_result(cr, with_map=False), "sc") == []


def test_heatmaps_join_outline_series(ct_volume: Volume, tmp_path: pathlib.Path) -> None:
    """With segments and heat maps, both go into one SC series, numbered in order."""
    result = make_result(ct_volume)
    k = ct_volume.shape[0] // 2
    result.heatmaps = [
        HeatMap(
            "Organ",
            "organ",
            result.segments[2].tracking_uid,
            k,
            np.ones(ct_volume.shape[1:], np.float32) * 0.9,
        )
    ]
    ds = write_results(result, "sc", uid_seed="s")
    assert len({d.SeriesInstanceUID for d in ds}) == 1
    assert len({str(d.SeriesDescription) for d in ds}) == 1
    assert [int(d.InstanceNumber) for d in ds] == list(range(1, len(ds) + 1))
    path = save_datasets(ds[-1:], tmp_path)[0]
    assert_valid(path)


def test_heatmap_errors(cr: Volume) -> None:
    result = _result(cr)
    result.heatmaps[0].frame_index = 3
    with pytest.raises(ValueError, match="slice 3"):
        write_heatmaps(result)
    result = _result(cr)
    result.heatmaps.append(result.heatmaps[0])
    with pytest.raises(ValueError, match="Two heat maps"):
        write_heatmaps(result)
    result = _result(cr)
    with pytest.raises(ValueError, match="alpha"):
        write_heatmaps(result, alpha=0.0)


def test_classification_with_extra_evaluations(cr: Volume) -> None:
    """Measurements and evaluations given by the pipeline follow the generated ones."""
    extra = QualitativeEvaluation(
        CodedConcept("272741003", "SCT", "Laterality"), CodedConcept("7771000", "SCT", "Left")
    )
    f = ClassificationFinding(
        "Pleural effusion", hd.UID(), EFFUSION, probability=0.3, qualitative_evaluations=[extra]
    )
    result = PipelineResult("t", cr, algorithm(), findings=[f, Finding("n", hd.UID(), EFFUSION)])
    sr = hd.sr.Comprehensive3DSR.from_dataset(write_sr(result))
    (g, plain) = sr.content.get_image_measurement_groups()
    assert [q.value.value for q in _evaluations(g)] == [ABSENT.value, "7771000"]
    assert _evaluations(plain) == [] and plain.get_measurements() == []
