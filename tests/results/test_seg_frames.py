"""The SEG frames built from the masks: highdicom's object, byte for byte, on real series."""

from __future__ import annotations

import dataclasses
import io
import pathlib

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset

from ai_models.types import PipelineResult, Volume
from dicom_node.results import save_datasets, write_results
from dicom_node.results.seg import write_seg
from dicom_node.results.seg_frames import applies
from tests.results.conftest import load
from tests.results.helpers import assert_valid, make_result

_UIDS = dict(
    series_instance_uid="1.2.826.0.1.3680043.10.9999.1",
    sop_instance_uid="1.2.826.0.1.3680043.10.9999.2",
    dimension_organization_uid="1.2.826.0.1.3680043.10.9999.3",
)


def _bytes(ds: Dataset) -> bytes:
    """The object as saved, with its creation times (the only values that
    differ between two writes) made equal."""
    for kw in ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime"):
        if kw in ds:
            setattr(ds, kw, "0")
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = "20000101"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _assert_as_highdicom(result: PipelineResult) -> hd.seg.Segmentation:
    reference = write_seg(result, fast_frames=False, **_UIDS)
    fast = write_seg(result, **_UIDS)
    assert int(fast.NumberOfFrames) == int(reference.NumberOfFrames)
    for a, b in zip(
        fast.PerFrameFunctionalGroupsSequence,
        reference.PerFrameFunctionalGroupsSequence,
        strict=True,
    ):
        assert a == b
    assert fast.PixelData == reference.PixelData
    assert _bytes(fast) == _bytes(reference)
    return fast


def _with_masks(result: PipelineResult, masks: list[np.ndarray]) -> PipelineResult:
    segments = [
        dataclasses.replace(seg, mask=mask)
        for seg, mask in zip(result.segments, masks, strict=False)
    ]
    return dataclasses.replace(result, segments=segments, findings=[])


SINGLE_FRAME = ["ct", "ct3", "mr"]


@pytest.mark.parametrize("name", SINGLE_FRAME)
def test_same_object_as_highdicom(dicom_data: pathlib.Path, name: str) -> None:
    """Overlapping segments (the organ covers the nodules), an empty one left out."""
    volume = load(dicom_data, name)
    assert applies(
        volume.source_datasets,
        *volume.shape[1:],
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        omit_empty_frames=True,
    )
    seg = _assert_as_highdicom(make_result(volume))
    assert seg.SegmentsOverlap == "YES"


@pytest.mark.parametrize("name", SINGLE_FRAME)
def test_same_object_one_segment_and_gaps(dicom_data: pathlib.Path, name: str) -> None:
    """One segment (identification in the shared groups, 3D organisation);
    planes with gaps (no regular grid); segments that do not overlap."""
    volume = load(dicom_data, name)
    result = make_result(volume)
    one = _assert_as_highdicom(_with_masks(result, [result.segments[0].mask]))
    assert "SegmentIdentificationSequence" in one.SharedFunctionalGroupsSequence[0]

    n = volume.shape[0]
    gaps = np.zeros(volume.shape, bool)
    for k in sorted({0, 1, n - 1}):
        gaps[k, 10 + k : 30 + k, 5:40] = True
    other = np.zeros(volume.shape, bool)
    other[n // 2, 100:140, 100:130] = True
    seg = _assert_as_highdicom(_with_masks(result, [gaps, other]))
    assert seg.SegmentsOverlap == "NO"
    _assert_as_highdicom(_with_masks(result, [gaps]))


def test_fast_seg_is_valid_and_read_back(ct_volume: Volume, tmp_path: pathlib.Path) -> None:
    result = make_result(ct_volume)
    paths = save_datasets(write_results(result, "seg", uid_seed="5eed" * 8), tmp_path)
    assert_valid(paths[0])
    back = hd.seg.segread(paths[0])
    uids = [f.sop_instance_uid for f in ct_volume.frames]
    arr = back.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        segment_numbers=[1, 2, 3],
        assert_missing_frames_are_empty=True,
    )
    for idx in range(3):
        np.testing.assert_array_equal(arr[..., idx].astype(bool), result.segments[idx].mask)


def test_in_memory_object_is_consistent(ct_volume: Volume) -> None:
    """highdicom's frame tables are rebuilt: the object answers as highdicom's does."""
    result = make_result(ct_volume)
    seg = write_seg(result)
    uids = [f.sop_instance_uid for f in ct_volume.frames]
    arr = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        segment_numbers=[1, 2, 3],
        assert_missing_frames_are_empty=True,
    )
    for idx in range(3):
        np.testing.assert_array_equal(arr[..., idx].astype(bool), result.segments[idx].mask)


def test_multiframe_sources_left_to_highdicom(dicom_data: pathlib.Path) -> None:
    volume = load(dicom_data, "enh_ct")
    assert not applies(
        volume.source_datasets,
        *volume.shape[1:],
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        omit_empty_frames=True,
    )
