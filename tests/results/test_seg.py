"""SEG writer on real series: validity, references and pixels per source frame."""

from __future__ import annotations

import copy
import time

import highdicom as hd
import numpy as np
import pydicom
import pytest

from ai_models.types import Finding, FrameRef, PipelineResult, Segment, Volume
from dicom_node.results import segment_number_map, write_seg
from dicom_node.results.common import device_uid
from tests.results.helpers import (
    ANATOMY,
    BONE,
    LUNG,
    algorithm,
    assert_valid,
    frame_key_of,
    make_result,
    sphere,
)


def source_ipp(volume: Volume, k: int) -> np.ndarray:
    """ImagePositionPatient of the source frame of slice ``k``."""
    ref = volume.frames[k]
    ds = next(d for d in volume.source_datasets if d.SOPInstanceUID == ref.sop_instance_uid)
    if ref.frame_number is None:
        return np.asarray(ds.ImagePositionPatient, float)
    item = ds.PerFrameFunctionalGroupsSequence[ref.frame_number - 1]
    return np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)


def _written(result: PipelineResult, tmp_path, **kwargs) -> tuple[hd.seg.Segmentation, object]:
    seg = write_seg(result, **kwargs)
    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    return seg, path


def test_seg_valid_and_pixels_match_masks(any_volume: Volume, tmp_path) -> None:
    result = make_result(any_volume)
    seg, path = _written(result, tmp_path)
    assert_valid(path)

    back = hd.seg.segread(path)
    src = any_volume.source_datasets[0]
    assert back.StudyInstanceUID == src.StudyInstanceUID
    assert back.SeriesInstanceUID != src.SeriesInstanceUID
    assert back.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert back.SegmentationType == "BINARY"
    assert back.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert "SEG" in back.SeriesDescription and "not for diagnosis" in back.SeriesDescription

    # Segments: the empty one is dropped, the rest renumbered 1..N.
    numbers = segment_number_map(result)
    assert sorted(numbers.values()) == list(range(1, len(numbers) + 1))
    assert 4 not in numbers
    by_number = {s.number: s for s in result.segments}
    for item in back.SegmentSequence:
        seg_in = next(s for s in result.segments if numbers.get(s.number) == item.SegmentNumber)
        assert item.TrackingUID == seg_in.tracking_uid
        assert item.TrackingID == seg_in.tracking_id
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == seg_in.type.value
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == seg_in.category.value
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algo = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmName == "test-pipeline"
        assert algo.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # Artificial Intelligence
        assert len(item.RecommendedDisplayCIELabValue) == 3
        if seg_in.anatomic_region is not None:
            region = item.AnatomicRegionSequence[0]
            assert region.CodeValue == seg_in.anatomic_region.value
            if seg_in.anatomic_region_modifier is not None:
                assert region.AnatomicRegionModifierSequence[0].CodeValue == "24028007"

    # Every SEG frame: its source frame and segment -> the mask that made it.
    k_of = {(f.sop_instance_uid, f.frame_number): k for k, f in enumerate(any_volume.frames)}
    multiframe = any_volume.frames[0].frame_number is not None
    inverse = {v: k for k, v in numbers.items()}
    pixels = back.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    seen = set()
    for f, item in enumerate(back.PerFrameFunctionalGroupsSequence):
        uid, frame = frame_key_of(item)
        if not multiframe:
            frame = None
        k = k_of[(uid, frame)]
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        expected = by_number[inverse[number]].mask[k]
        np.testing.assert_array_equal(pixels[f].astype(bool), expected, err_msg=f"frame {f + 1}")
        # Plane position is the source frame's.
        ipp = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        np.testing.assert_allclose(ipp, source_ipp(any_volume, k), atol=1e-4)
        seen.add((k, number))
    expected_frames = {
        (int(k), numbers[s.number])
        for s in result.segments if s.number in numbers
        for k in np.flatnonzero(s.mask.any(axis=(1, 2)))
    }
    assert seen == expected_frames  # omit_empty_frames: exactly the non-empty ones


def test_seg_highdicom_lookup_by_source(ct_volume: Volume, tmp_path) -> None:
    result = make_result(ct_volume)
    _, path = _written(result, tmp_path)
    back = hd.seg.segread(path)
    uids = [f.sop_instance_uid for f in ct_volume.frames]
    arr = back.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        segment_numbers=[1, 2, 3],
        assert_missing_frames_are_empty=True,
    )
    for idx in range(3):
        np.testing.assert_array_equal(arr[..., idx].astype(bool), result.segments[idx].mask)
    # References resolve: every source instance is listed.
    refs = {
        i.ReferencedSOPInstanceUID
        for s in back.ReferencedSeriesSequence
        for i in s.ReferencedInstanceSequence
    }
    assert refs == set(uids)


def test_fixed_uids_and_numbers(ct_volume: Volume) -> None:
    result = make_result(ct_volume)
    seg = write_seg(
        result,
        series_instance_uid="1.2.3.4.5",
        sop_instance_uid="1.2.3.4.6",
        series_number=77,
        instance_number=3,
    )
    assert (seg.SeriesInstanceUID, seg.SOPInstanceUID) == ("1.2.3.4.5", "1.2.3.4.6")
    assert (seg.SeriesNumber, seg.InstanceNumber) == (77, 3)
    generated = write_seg(result)
    assert generated.SOPInstanceUID != seg.SOPInstanceUID
    with pytest.raises(ValueError, match="not a valid UID"):
        write_seg(result, sop_instance_uid="1.2.abc")
    with pytest.raises(ValueError, match="transfer_syntax_uid"):
        write_seg(result, transfer_syntax_uid=pydicom.uid.RLELossless)


def test_contributing_equipment_device_uid_follows_weights(ct_volume: Volume) -> None:
    a = write_seg(make_result(ct_volume, sha="ab" * 32))
    b = write_seg(make_result(ct_volume, sha="ab" * 32))
    c = write_seg(make_result(ct_volume, sha="cd" * 32))

    def equipment(ds):  # type: ignore[no-untyped-def]
        return next(
            e for e in ds.ContributingEquipmentSequence
            if e.get("ManufacturerModelName") == "test-pipeline"
        )

    ea, eb, ec = equipment(a), equipment(b), equipment(c)
    assert ea.DeviceUID == eb.DeviceUID == device_uid(algorithm("ab" * 32))
    assert ea.DeviceUID != ec.DeviceUID
    assert ea.SoftwareVersions == "0.1"
    assert ea.Manufacturer == "dicom-node"
    assert ea.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"


def test_no_nonempty_segment_is_an_error(ct_volume: Volume) -> None:
    empty = Segment(1, "x", ANATOMY, BONE, np.zeros(ct_volume.shape, bool), "x", hd.UID())
    result = PipelineResult("p", ct_volume, algorithm(), segments=[empty])
    with pytest.raises(ValueError, match="no non-empty segment"):
        write_seg(result)


def test_mask_shape_mismatch_is_an_error(ct_volume: Volume) -> None:
    bad = Segment(1, "x", ANATOMY, BONE, np.ones((2, 2, 2), bool), "x", hd.UID())
    with pytest.raises(ValueError, match="shape"):
        write_seg(PipelineResult("p", ct_volume, algorithm(), segments=[bad]))


def _big_volume(template: Volume, n: int) -> Volume:
    """A 300-slice volume with real CT headers (positions and UIDs renewed)."""
    base = template.source_datasets[0]
    datasets, frames = [], []
    origin = np.asarray(base.ImagePositionPatient, float)
    for k in range(n):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = hd.UID()
        ds.ImagePositionPatient = [float(origin[0]), float(origin[1]), float(origin[2] + k)]
        ds.InstanceNumber = k + 1
        datasets.append(ds)
        frames.append(FrameRef(ds.SOPInstanceUID, ds.SOPClassUID))
    return Volume(
        array=np.zeros((n, base.Rows, base.Columns), np.float32),
        origin=origin, spacing=np.array([1.0, *map(float, base.PixelSpacing)]),
        direction=template.direction, frames=frames, source_datasets=datasets,
        modality="CT", study_instance_uid=base.StudyInstanceUID,
        series_instance_uid=base.SeriesInstanceUID,
        frame_of_reference_uid=base.FrameOfReferenceUID,
    )


def test_big_series_seg_is_fast(ct_volume: Volume) -> None:
    volume = _big_volume(ct_volume, 300)
    ball = sphere(volume, (150, 256, 256), 20.0)  # 41 slices at 1 mm
    lesion = sphere(volume, (150, 270, 260), 5.0)  # inside the ball
    segs = [
        Segment(1, "Organ", ANATOMY, BONE, ball, "organ", hd.UID()),
        Segment(2, "Lesion", ANATOMY, BONE, lesion, "lesion", hd.UID()),
    ]
    result = PipelineResult("p", volume, algorithm(), segments=segs)
    write_seg(result)  # warm-up: highdicom loads its standard tables once
    t0 = time.perf_counter()
    seg = write_seg(result)
    elapsed = time.perf_counter() - t0
    assert int(seg.NumberOfFrames) == 41 + 11
    assert seg.SegmentsOverlap == "YES"
    print(f"SEG 512x512x300, {seg.NumberOfFrames} frames: {elapsed:.2f} s")
    assert elapsed < 5.0  # ~0.3-0.6 s here; generous for shared CI runners


def test_seg_and_sr_of_a_radiograph_without_patient_geometry(dicom_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The chest CR has no Image Orientation (Patient), no Frame of Reference and no
    recorded pixel spacing: the SEG is written without plane geometry or Pixel
    Measures (rather than a zero spacing), and the SR outlines the segment with
    its box (no area can be stated)."""
    from ai_models.radiograph import load_radiograph
    from dicom_node.results import save_datasets, write_sr

    volume = load_radiograph(dicom_data / "nema_wg04/RG1_chest_CR")
    src = volume.source_datasets[0]
    assert "ImageOrientationPatient" not in src
    assert [float(v) for v in src.PixelSpacing] == [0.0, 0.0]  # recorded as unknown
    mask = np.zeros(volume.shape, dtype=bool)
    mask[0, 600:900, 500:800] = True
    segment = Segment(1, "Box", ANATOMY, LUNG, mask, "Box", hd.UID())
    result = PipelineResult("test-cr", volume, algorithm(), segments=[segment], findings=[
        Finding("Box", segment.tracking_uid, ANATOMY, segment_number=1),
    ])  # fmt: skip
    seg = write_seg(result)
    sr = write_sr(result, segmentation=seg)
    seg_path, sr_path = save_datasets([seg, sr], tmp_path)
    assert_valid(seg_path)
    assert_valid(sr_path)
    back = pydicom.dcmread(seg_path)
    assert "PixelMeasuresSequence" not in back.SharedFunctionalGroupsSequence[0]
    assert "PatientOrientation" in back
    np.testing.assert_array_equal(back.pixel_array.astype(bool), mask[0])
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    groups = hd.sr.srread(sr_path).content.get_planar_roi_measurement_groups()
    (box,) = groups
    np.testing.assert_array_equal(
        box.roi.value, [[500, 600], [800, 600], [800, 900], [500, 900], [500, 600]]
    )
    assert box.tracking_identifier == "Box" and not box.get_measurements()
