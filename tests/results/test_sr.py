"""TID 1500 SR writer: validity, SEG references, tracking, values, viewer needs."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from pydicom.sr.codedict import codes

from ai_models.types import Volume
from dicom_node.results import segment_number_map, write_seg, write_sr
from dicom_node.results._geometry import largest_component
from dicom_node.results.common import device_uid
from dicom_node.results.sr_regions import (
    FREEHAND_ROI_TRACKING_IDENTIFIER,
    finding_label,
)
from tests.results.helpers import assert_valid, make_result

TRACKING_UID = "112040"
TRACKING_ID = "112039"


def _groups(sr: hd.sr.Comprehensive3DSR) -> list:
    root = sr.ContentSequence
    imaging = next(i for i in root if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    return [
        g for g in imaging.ContentSequence if g.ConceptNameCodeSequence[0].CodeValue == "125007"
    ]


def _child(group, code: str):  # type: ignore[no-untyped-def]
    return [c for c in group.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == code]


def _check_cross_section(planar, finding, segment, volume: Volume) -> None:  # type: ignore[no-untyped-def]
    """The TID 1410 cross-section group: outline, ROI measurements, label for viewers."""
    assert planar.ContentTemplateSequence[0].TemplateIdentifier == "1410"
    # OHIF hydrates a many-point outline only under Cornerstone's freehand identifier.
    assert _child(planar, TRACKING_ID)[0].TextValue == FREEHAND_ROI_TRACKING_IDENTIFIER
    assert _child(planar, "121071")[0].ConceptCodeSequence[0].CodeValue == (
        finding.finding_type.value
    )
    (scoord,) = [c for c in planar.ContentSequence if c.ValueType == "SCOORD"]
    assert scoord.GraphicType == "POLYLINE"
    pts = np.asarray(scoord.GraphicData, float).reshape(-1, 2)
    np.testing.assert_array_equal(pts[0], pts[-1])  # closed
    img = scoord.ContentSequence[0].ReferencedSOPSequence[0]
    k = int(np.argmax(segment.mask.sum(axis=(1, 2))))
    assert img.ReferencedSOPInstanceUID == volume.frames[k].sop_instance_uid
    # The outline lies on the mask (pixel centres of its boundary).
    cols = np.clip(pts[:, 0].astype(int), 0, volume.shape[2] - 1)
    rows = np.clip(pts[:, 1].astype(int), 0, volume.shape[1] - 1)
    assert segment.mask[k][rows, cols].all()

    nums = [c for c in planar.ContentSequence if c.ValueType == "NUM"]
    # The first NUM is the area (the viewer reads it as such), of the outlined region.
    assert nums[0].ConceptNameCodeSequence[0].CodeValue == "42798000"
    area = nums[0].MeasuredValueSequence[0]
    assert area.MeasurementUnitsCodeSequence[0].CodeValue == "mm2"
    region = largest_component(segment.mask[k])
    expected = region.sum() * volume.spacing[1] * volume.spacing[2]
    assert float(area.NumericValue) == pytest.approx(expected, rel=1e-4)
    # Every NUM is INFERRED FROM the outline (where the viewer looks for it).
    for num in nums:
        inferred = [c for c in num.ContentSequence if c.ValueType == "SCOORD"]
        assert len(inferred) == 1 and inferred[0].RelationshipType == "INFERRED FROM"
        assert list(inferred[0].GraphicData) == list(scoord.GraphicData)
    by_meaning = {
        n.ConceptNameCodeSequence[0].CodeMeaning: float(n.MeasuredValueSequence[0].NumericValue)
        for n in nums
    }
    if volume.modality == "CT":
        values = volume.array[k][region]
        assert by_meaning["Mean"] == pytest.approx(values.mean(), abs=1e-3)
        assert by_meaning["Maximum"] == pytest.approx(values.max(), abs=1e-3)
        assert by_meaning["Standard Deviation"] == pytest.approx(values.std(), abs=1e-3)
        assert nums[1].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == (
            "[hnsf'U]"
        )
    else:
        assert set(by_meaning) == {"Area"}
    # The label the viewer shows: the finding's name with its own measurements.
    (comment,) = _child(planar, "121106")
    assert comment.TextValue == finding_label(finding)
    assert comment.TextValue.startswith(finding.tracking_id)
    for m in finding.measurements:
        assert f"{m.name.meaning} {m.value:.2f} {m.unit.value}" in comment.TextValue


def test_sr_valid_and_references_seg(any_volume: Volume, tmp_path) -> None:
    result = make_result(any_volume)
    seg = write_seg(result)
    sr = write_sr(result, segmentation=seg)
    path = tmp_path / "sr.dcm"
    sr.save_as(path)
    assert_valid(path)

    back = hd.sr.srread(path)
    src = any_volume.source_datasets[0]
    assert back.StudyInstanceUID == src.StudyInstanceUID
    assert back.SeriesInstanceUID not in (src.SeriesInstanceUID, seg.SeriesInstanceUID)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    assert (back.CompletionFlag, back.VerificationFlag, back.PreliminaryFlag) == (
        "PARTIAL", "UNVERIFIED", "PRELIMINARY"
    )
    assert "SR" in back.SeriesDescription
    # The SEG is evidence.
    evidence = {
        i.ReferencedSOPInstanceUID
        for s in back.CurrentRequestedProcedureEvidenceSequence
        for r in s.ReferencedSeriesSequence
        for i in r.ReferencedSOPSequence
    }
    assert seg.SOPInstanceUID in evidence
    assert {d.SOPInstanceUID for d in any_volume.source_datasets} <= evidence

    report = back.content
    # Observer: the device, with the Device UID of the contributing equipment.
    device = [
        i for i in back.ContentSequence
        if i.ConceptNameCodeSequence[0].CodeValue == "121012"  # Device Observer UID
    ]
    assert device and device[0].UID == device_uid(result.algorithm)
    procedure = [
        i for i in back.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121058"
    ]
    assert procedure[0].ConceptCodeSequence[0].CodeValue in {"25045-6", "25056-3"}
    assert report is not None

    numbers = segment_number_map(result)
    groups = _groups(back)
    by_tracking: dict[str, list] = {}
    for g in groups:
        uid = _child(g, TRACKING_UID)
        assert uid, "every measurement group needs a Tracking Unique Identifier"
        by_tracking.setdefault(uid[0].UID, []).append(g)
    assert set(by_tracking) == {f.tracking_uid for f in result.findings}

    for finding in result.findings:
        gs = by_tracking[finding.tracking_uid]
        for g in gs:
            assert _child(g, "121071")[0].ConceptCodeSequence[0].CodeValue == (
                finding.finding_type.value
            )
        if finding.segment_number in numbers:
            # The cross-section (TID 1410) first, then TID 1411 with the SEG segment.
            planar, vol = gs
            assert _child(vol, TRACKING_ID)[0].TextValue == finding.tracking_id
            assert vol.ContentTemplateSequence[0].TemplateIdentifier == "1411"
            ref = _child(vol, "121191")[0]  # Referenced Segment
            sop = ref.ReferencedSOPSequence[0]
            assert sop.ReferencedSOPInstanceUID == seg.SOPInstanceUID
            assert sop.ReferencedSegmentNumber == numbers[finding.segment_number]
            seg_item = next(
                s for s in seg.SegmentSequence
                if s.SegmentNumber == numbers[finding.segment_number]
            )
            assert seg_item.TrackingUID == finding.tracking_uid
            nums = {
                c.ConceptNameCodeSequence[0].CodeValue: c
                for c in vol.ContentSequence if c.ValueType == "NUM"
            }
            for m in finding.measurements:
                num = nums[m.name.value]
                mv = num.MeasuredValueSequence[0]
                assert float(mv.NumericValue) == pytest.approx(m.value, rel=1e-6)
                assert mv.MeasurementUnitsCodeSequence[0].CodeValue == m.unit.value
                assert "ContentSequence" in num  # OHIF reads it
            seg_in = next(s for s in result.segments if s.number == finding.segment_number)
            _check_cross_section(planar, finding, seg_in, any_volume)
        else:
            # No segment pixels: a TID 1501 group pointing at source images.
            assert len(gs) == 1
            assert _child(gs[0], TRACKING_ID)[0].TextValue == finding.tracking_id
            assert gs[0].ContentTemplateSequence[0].TemplateIdentifier == "1501"
            if finding.qualitative_evaluations:
                codes_ = [c for c in gs[0].ContentSequence if c.ValueType == "CODE"]
                assert any(
                    c.ConceptCodeSequence[0].CodeValue == "RID28472" for c in codes_
                )

    # Image library exists with the images the SCOORDs point at (OHIF needs it).
    library = next(
        i for i in back.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111028"
    )
    assert library.ContentSequence[0].ConceptNameCodeSequence[0].CodeValue == "126200"


def test_sr_algorithm_identification_and_equipment(ct_volume: Volume) -> None:
    result = make_result(ct_volume)
    sr = write_sr(result, segmentation=write_seg(result))
    found = hd.sr.utils.find_content_items(
        sr.ContentSequence[-1], name=codes.DCM.AlgorithmName, recursive=True
    )
    assert found and found[0].TextValue == "test-pipeline"
    family = hd.sr.utils.find_content_items(
        sr.ContentSequence[-1], name=codes.DCM.AlgorithmFamily, recursive=True
    )
    assert family[0].ConceptCodeSequence[0].CodeValue == "123110"
    eq = [
        e for e in sr.ContributingEquipmentSequence
        if e.get("ManufacturerModelName") == "test-pipeline"
    ]
    assert eq and eq[0].DeviceUID == device_uid(result.algorithm)


def test_sr_without_seg_measures_findings_on_their_source_images(
    ct_volume: Volume, tmp_path
) -> None:
    result = make_result(ct_volume)
    sr = write_sr(result)  # no SEG written
    path = tmp_path / "sr.dcm"
    sr.save_as(path)
    assert_valid(path)
    groups = _groups(sr)
    templates = [g.ContentTemplateSequence[0].TemplateIdentifier for g in groups]
    assert "1411" not in templates
    segmented = [
        f for f in result.findings
        if f.segment_number is not None
        and any(s.number == f.segment_number and s.mask.any() for s in result.segments)
    ]
    assert len(segmented) == 3  # the three non-empty segments
    # Each: the cross-section group, then a TID 1501 group with its measurements on
    # the slices it covers (same Tracking UID).
    assert templates.count("1410") == 3
    for finding in segmented:
        planar, own = [
            g for g in groups if _child(g, TRACKING_UID)[0].UID == finding.tracking_uid
        ]
        assert own.ContentTemplateSequence[0].TemplateIdentifier == "1501"
        assert _child(own, TRACKING_ID)[0].TextValue == finding.tracking_id
        segment = next(s for s in result.segments if s.number == finding.segment_number)
        covered = {
            ct_volume.frames[int(k)].sop_instance_uid
            for k in np.flatnonzero(segment.mask.any(axis=(1, 2)))
        }
        sources = {
            c.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            for c in own.ContentSequence
            if c.ValueType == "IMAGE"
        }
        assert sources and sources <= covered
        _check_cross_section(planar, finding, segment, ct_volume)


def test_sr_without_planar_regions_has_no_cross_sections(ct_volume: Volume) -> None:
    result = make_result(ct_volume)
    sr = write_sr(result, segmentation=write_seg(result), planar_regions=False)
    identifiers = {_child(g, TRACKING_ID)[0].TextValue for g in _groups(sr)}
    assert identifiers == {f.tracking_id for f in result.findings}


def test_sr_fixed_uids_and_errors(ct_volume: Volume) -> None:
    result = make_result(ct_volume)
    sr = write_sr(result, series_instance_uid="1.2.3.9", sop_instance_uid="1.2.3.10",
                  series_number=5, instance_number=2)
    assert (sr.SeriesInstanceUID, sr.SOPInstanceUID, sr.SeriesNumber, sr.InstanceNumber) == (
        "1.2.3.9", "1.2.3.10", 5, 2
    )
    result.findings.clear()
    with pytest.raises(ValueError, match="no findings"):
        write_sr(result)
    with pytest.raises(TypeError, match="segmentation"):
        write_sr(make_result(ct_volume), segmentation=ct_volume.source_datasets[0])
