"""Grayscale Softcopy Presentation State writer and detection findings in the SR.

* a detection (box + score) on a real radiograph becomes a GSPS whose
  POLYLINE is exactly the box, with the "Mass 1 (0.87)" label near it, the
  Tracking ID / UID of the finding, the source image referenced, the
  polarity kept (MONOCHROME1 -> Presentation LUT INVERSE) and Laterality
  copied; dciodvfy accepts it;
* the same finding in the TID 1500 SR: a planar ROI group with the box as a
  closed 5-point POLYLINE, the score as Probability in UCUM "1", the
  laterality as the finding site's modifier;
* segment findings on a CT are drawn as outlines on their largest
  cross-section; only those slices (frames) are referenced, on classic and
  enhanced multi-frame series (per-frame rescale and windows) alike;
* ``write_results(..., "gsps")``: seeded UIDs repeat, kind "gsps", nothing
  drawn -> no GSPS; a source without a window gets one.
"""

from __future__ import annotations

import copy
import dataclasses
import pathlib

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from ai_models.radiograph import load_radiograph
from ai_models.types import (
    CodedConcept,
    DetectionFinding,
    Finding,
    PipelineResult,
    Volume,
)
from dicom_node.results import (
    GRAYSCALE_SOFTCOPY_PRESENTATION_STATE_SOP_CLASS_UID,
    OUTPUT_KINDS,
    kind_of,
    parse_outputs,
    save_datasets,
    write_gsps,
    write_results,
)
from dicom_node.results.gsps import (
    DEFAULT_SERIES_NUMBER,
    GRAPHIC_LAYER,
    marks_of,
    with_box_segments,
)
from dicom_node.results.sr_regions import detection_label
from tests.results.helpers import algorithm, assert_valid, dciodvfy, make_result, unexplained

CHEST = "nema_wg04/RG1_chest_CR/RG1_UNCR.dcm"

MASS = CodedConcept("4147007", "SCT", "Mass")
LUNG = CodedConcept("39607008", "SCT", "Lung")
LEFT = CodedConcept("7771000", "SCT", "Left")

#: RG1's single-component Referring Physician's Name, copied from the source.
SOURCE_WARNING = "Referring Physician's Name"


def _valid(path: pathlib.Path) -> None:
    errors, warnings = dciodvfy(path)
    assert errors == [], "\n".join(errors)
    assert [w for w in unexplained(warnings) if SOURCE_WARNING not in w] == []


@pytest.fixture(scope="module")
def chest(dicom_data: pathlib.Path) -> Volume:
    return load_radiograph(dicom_data / CHEST)


def _detections(volume: Volume) -> PipelineResult:
    _, rows, cols = volume.shape
    boxes = [
        (0.30 * cols, 0.40 * rows, 0.45 * cols, 0.52 * rows, 0.87),
        (3.5, 1.25, 0.10 * cols, 0.08 * rows, 0.51),  # at the top: label below
    ]
    findings = [
        DetectionFinding(
            tracking_id=f"Mass {i}",
            tracking_uid=hd.UID(),
            finding_type=MASS,
            finding_site=LUNG,
            box=(x0, y0, x1, y1),
            score=s,
            label=f"Mass {i}",
            laterality=LEFT,
        )
        for i, (x0, y0, x1, y1, s) in enumerate(boxes, 1)
    ]
    return PipelineResult("test-detector", volume, algorithm(), findings=list(findings))


def test_detection_finding_validation() -> None:
    f = DetectionFinding("m", "1.2.3", MASS, box=(1, 2, 3, 4), score=0.5)
    assert f.display_label == "m (0.50)"
    assert f.polyline().tolist() == [[1, 2], [3, 2], [3, 4], [1, 4], [1, 2]]
    with pytest.raises(ValueError, match="score"):
        DetectionFinding("m", "1.2.3", MASS, box=(1, 2, 3, 4), score=1.5)
    with pytest.raises(ValueError, match="x0 < x1"):
        DetectionFinding("m", "1.2.3", MASS, box=(3, 2, 1, 4), score=0.5)
    with pytest.raises(ValueError, match="finite"):
        DetectionFinding("m", "1.2.3", MASS, box=(1, 2, np.nan, 4), score=0.5)


def test_gsps_of_detections_on_a_radiograph(chest: Volume, tmp_path: pathlib.Path) -> None:
    result = _detections(chest)
    src = chest.source_datasets[0]
    gsps = write_gsps(result, series_instance_uid=hd.UID(), instance_number=3)
    (path,) = save_datasets([gsps], tmp_path)
    _valid(path)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == GRAYSCALE_SOFTCOPY_PRESENTATION_STATE_SOP_CLASS_UID
    assert kind_of(ds) == "gsps" and path.name.startswith("gsps_")
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.Modality == "PR"
    assert ds.SeriesNumber == DEFAULT_SERIES_NUMBER and ds.InstanceNumber == 3
    assert "not for diagnosis" in ds.SeriesDescription
    # MONOCHROME1 source: shown with its usual polarity; its window is used.
    assert src.PhotometricInterpretation == "MONOCHROME1"
    assert ds.PresentationLUTShape == "INVERSE"
    assert float(ds.SoftcopyVOILUTSequence[0].WindowCenter) == float(src.WindowCenter)
    assert ds.BodyPartExamined == "CHEST"
    refs = ds.ReferencedSeriesSequence[0].ReferencedImageSequence
    assert [r.ReferencedSOPInstanceUID for r in refs] == [src.SOPInstanceUID]
    (ann,) = ds.GraphicAnnotationSequence
    assert ann.GraphicLayer == GRAPHIC_LAYER
    assert ann.ReferencedImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    for go, to, f in zip(
        ann.GraphicObjectSequence, ann.TextObjectSequence, result.findings, strict=True
    ):
        assert isinstance(f, DetectionFinding)
        assert go.GraphicType == "POLYLINE" and go.GraphicAnnotationUnits == "PIXEL"
        assert int(go.NumberOfGraphicPoints) == 5
        np.testing.assert_allclose(
            np.asarray(go.GraphicData, dtype=float).reshape(-1, 2), f.polyline(), atol=1e-3
        )
        assert go.TrackingUID == f.tracking_uid and go.TrackingID == f.tracking_id
        assert to.UnformattedTextValue == f.display_label == f"{f.label} ({f.score:.2f})"
        assert to.TrackingUID == f.tracking_uid
        tl, br = to.BoundingBoxTopLeftHandCorner, to.BoundingBoxBottomRightHandCorner
        x0, y0, x1, y1 = f.box
        assert 0 <= tl[0] < br[0] <= chest.shape[2] and 0 <= tl[1] < br[1] <= chest.shape[1]
        assert abs(tl[0] - x0) < 1.0  # left-aligned with the box
        if y0 > 200:
            assert br[1] <= y0  # above the box
        else:
            assert tl[1] >= y1  # no room above: below it


def test_gsps_laterality_and_window(chest: Volume, tmp_path: pathlib.Path) -> None:
    """A breast-like source: Laterality from Image Laterality; no window in
    the source -> one from the percentiles; MONOCHROME2 -> IDENTITY."""
    ds = copy.deepcopy(chest.source_datasets[0])
    ds.BodyPartExamined = "BREAST"
    ds.ImageLaterality = "R"
    ds.PhotometricInterpretation = "MONOCHROME2"
    del ds.WindowCenter, ds.WindowWidth
    volume = dataclasses.replace(chest, source_datasets=[ds])
    gsps = write_gsps(_detections(volume))
    (path,) = save_datasets([gsps], tmp_path)
    _valid(path)
    out = pydicom.dcmread(path)
    assert out.Laterality == "R" and out.BodyPartExamined == "BREAST"
    assert out.PresentationLUTShape == "IDENTITY"
    lo, hi = np.percentile(chest.array[0][::4, ::4], [0.5, 99.5])
    voi = out.SoftcopyVOILUTSequence[0]
    assert float(voi.WindowCenter) == pytest.approx((lo + hi) / 2, rel=1e-3)
    assert float(voi.WindowWidth) == pytest.approx(hi - lo, rel=1e-3)


def test_sr_of_detections(chest: Volume, tmp_path: pathlib.Path) -> None:
    result = _detections(chest)
    (sr,) = write_results(result, "sr")
    (path,) = save_datasets([sr], tmp_path)
    _valid(path)
    doc = hd.sr.srread(path)
    groups = doc.content.get_planar_roi_measurement_groups()
    assert len(groups) == len(result.findings)
    for g, f in zip(groups, result.findings, strict=True):
        assert isinstance(f, DetectionFinding)
        assert g.tracking_uid == f.tracking_uid and g.tracking_identifier == f.tracking_id
        assert g.finding_type.value == "4147007"
        region = g.roi
        assert region is not None and region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        np.testing.assert_allclose(region.value, f.polyline(), atol=1e-3)
        (image,) = region.ContentSequence  # SELECTED FROM the source image
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
            chest.source_datasets[0].SOPInstanceUID
        )
        (score,) = g.get_measurements()
        assert score.name.value == "122157" and score.unit.value == "1"
        # The score is INFERRED FROM the box (where Cornerstone's adapters look for it).
        (num,) = [i for i in g[0].ContentSequence if i.ValueType == "NUM"]
        (inferred,) = [i for i in num.ContentSequence if i.ValueType == "SCOORD"]
        assert inferred.RelationshipType == "INFERRED FROM"
        np.testing.assert_allclose(
            np.asarray(inferred.GraphicData, float).reshape(-1, 2), f.polyline(), atol=1e-3
        )
        assert score.value == pytest.approx(f.score, abs=1e-4)
        (site,) = g.finding_sites
        assert site.value.value == "39607008"
        assert site.laterality is not None and site.laterality.value == "7771000"
        # The label viewers show (OHIF's measurement panel): name and score.
        (comment,) = [i for i in g[0].ContentSequence if i.name == codes.DCM.Comment]
        assert comment.value == detection_label(f) == (
            f"{f.tracking_id} (Probability {f.score:.2f})"
        )
    # a box outside the image is refused
    bad = _detections(chest)
    f0 = bad.findings[0]
    assert isinstance(f0, DetectionFinding)
    f0.box = (0.0, 0.0, chest.shape[2] + 5.0, 10.0)
    with pytest.raises(ValueError, match="outside"):
        write_results(bad, "sr")


def test_gsps_outlines_of_segments(ct_volume: Volume, tmp_path: pathlib.Path) -> None:
    result = make_result(ct_volume)
    marks = marks_of(result)
    # every finding with a non-empty segment is drawn, nothing else
    drawn = {m.tracking_uid for m in marks}
    expected = {
        f.tracking_uid
        for f in result.findings
        if f.segment_number is not None
        and next(s for s in result.segments if s.number == f.segment_number).mask.any()
    }
    assert drawn == expected and len(drawn) == 3
    gsps = write_gsps(result)
    (path,) = save_datasets([gsps], tmp_path)
    assert_valid(path)
    ds = pydicom.dcmread(path)
    annotated = {
        a.ReferencedImageSequence[0].ReferencedSOPInstanceUID
        for a in ds.GraphicAnnotationSequence
    }
    referenced = {
        r.ReferencedSOPInstanceUID for r in ds.ReferencedSeriesSequence[0].ReferencedImageSequence
    }
    slices = {ct_volume.frames[m.frame_index].sop_instance_uid for m in marks}
    assert annotated == referenced == slices
    assert "Laterality" not in ds  # head phantom: no body part, no laterality
    for ann in ds.GraphicAnnotationSequence:
        for go in ann.GraphicObjectSequence:
            pts = np.asarray(go.GraphicData, dtype=float).reshape(-1, 2)
            assert (pts[0] == pts[-1]).all() and len(pts) >= 4  # closed outline


def test_box_segments_for_the_sc_overlay(chest: Volume) -> None:
    result = _detections(chest)
    boxed = with_box_segments(result)
    assert result.segments == [] and boxed.findings == result.findings
    assert [s.tracking_uid for s in boxed.segments] == [f.tracking_uid for f in result.findings]
    for seg, f in zip(boxed.segments, result.findings, strict=True):
        assert isinstance(f, DetectionFinding)
        assert seg.label == f.display_label
        rows, cols = np.nonzero(seg.mask[0])
        x0, y0, x1, y1 = f.box
        # pixels whose centres lie inside the box
        assert rows.min() + 0.5 >= y0 and rows.max() + 0.5 <= y1
        assert cols.min() + 0.5 >= x0 and cols.max() + 0.5 <= x1
        assert rows.min() - 0.5 < y0 and cols.max() + 1.5 > x1
    # no detections: the same object back
    plain = PipelineResult("p", chest, algorithm(), findings=[Finding("f", hd.UID(), MASS)])
    assert with_box_segments(plain) is plain
    images = write_results(result, "seg,sc")
    assert [kind_of(d) for d in images] == ["sc"]  # no SEG of boxes, one SC image


def test_write_results_gsps(ct_volume: Volume) -> None:
    assert OUTPUT_KINDS == ("seg", "sr", "gsps", "sc")
    assert parse_outputs("sc,gsps,sr") == ("sr", "gsps", "sc")
    result = make_result(ct_volume)
    first = write_results(result, "seg,sr,gsps", uid_seed="gsps-seed")
    assert [kind_of(d) for d in first] == ["seg", "sr", "gsps"]
    again = write_results(result, "gsps", uid_seed="gsps-seed")
    assert again[0].SOPInstanceUID == first[2].SOPInstanceUID
    assert again[0].SeriesInstanceUID == first[2].SeriesInstanceUID
    rev = write_results(result, "gsps", uid_seed="gsps-seed", revision=1)
    assert rev[0].SOPInstanceUID != first[2].SOPInstanceUID
    assert rev[0].SeriesDescription.endswith("(rev 1)")
    # nothing to draw: no GSPS (and write_gsps says why)
    plain = PipelineResult(
        "p", ct_volume, algorithm(),
        findings=[Finding("f", hd.UID(), MASS)],
    )
    assert write_results(plain, "gsps") == []
    with pytest.raises(ValueError, match="nothing|no finding"):
        write_gsps(plain)


def test_gsps_valid_on_every_series(any_volume: Volume, tmp_path: pathlib.Path) -> None:
    """Classic and enhanced (multi-frame, per-frame rescale and windows) sources."""
    result = make_result(any_volume)
    (gsps,) = write_results(result, "gsps", uid_seed="every-series")
    (path,) = save_datasets([gsps], tmp_path)
    assert_valid(path)
    ds = pydicom.dcmread(path)
    frames = {
        (
            a.ReferencedImageSequence[0].ReferencedSOPInstanceUID,
            a.ReferencedImageSequence[0].get("ReferencedFrameNumber"),
        )
        for a in ds.GraphicAnnotationSequence
    }
    expected = {
        (
            any_volume.frames[m.frame_index].sop_instance_uid,
            any_volume.frames[m.frame_index].frame_number,
        )
        for m in marks_of(result)
    }
    assert {(u, int(f) if f is not None else None) for u, f in frames} == expected
