"""A multi-organ result (100+ structures of one label map) on a real CT series.

Models such as TotalSegmentator's give one label map with over a hundred
structures.  :func:`ai_models.pipelines.configured.label_map_result` turns it
into segments that share the map (:class:`ai_models.label_mask.LabelMask`),
the codes come from the shipped anatomy table
(:mod:`ai_models.label_codes`), and the SEG and SR writers must keep such a
result valid (dciodvfy), exact per frame, and within memory.
"""

from __future__ import annotations

import time
import tracemalloc

import highdicom as hd
import numpy as np
import pytest

from ai_models.label_codes import anatomy_codes, label_specs
from ai_models.label_mask import LabelMask, label_masks
from ai_models.pipelines.base import Pipeline
from ai_models.pipelines.configured import label_map_result
from ai_models.types import PipelineResult, Volume
from dicom_node.results import segment_number_map, write_seg
from dicom_node.results.sr import write_sr
from tests.results.helpers import assert_valid, frame_key_of

N_STRUCTURES = 110


class _MultiOrgan(Pipeline):
    name = "multi-organ-test"
    version = "1"


def _label_map(volume: Volume, n: int) -> np.ndarray:
    """``n`` labels in blocks tiling the slices (each label on 1-3 slices),
    plus label 1 as a large region through every slice."""
    k, rows, cols = volume.shape
    lab = np.zeros(volume.shape, dtype=np.uint8)
    lab[:, rows // 4 : rows // 2, cols // 4 : cols // 2] = 1
    side = 24
    per_row = (cols - 2 * side) // side
    for v in range(2, n + 1):
        t = v - 2
        kk = t % k
        r = side + (t // per_row) % ((rows // 2 - side) // side) * side + rows // 2
        c = side + (t % per_row) * side
        lab[kk : kk + 1 + t % 3, r : r + side - 4, c : c + side - 4] = v
    return lab


@pytest.fixture(scope="module")
def multi_organ(dicom_data) -> tuple[Volume, np.ndarray, PipelineResult]:  # type: ignore[no-untyped-def]
    from tests.results.conftest import load

    volume = load(dicom_data, "ct")
    names = sorted(anatomy_codes())[:N_STRUCTURES]
    labels = label_specs({v: name for v, name in enumerate(names, start=1)})
    lab = _label_map(volume, len(labels))
    result = label_map_result(_MultiOrgan(), volume, lab, labels, "cd" * 32)
    return volume, lab, result


def test_label_mask_answers_like_the_boolean_array() -> None:
    rng = np.random.default_rng(7)
    lab = rng.integers(0, 6, size=(9, 16, 24)).astype(np.uint8)
    lab[:, :, :3] = 0
    masks = label_masks(lab, [1, 3, 5, 9])
    for v, m in masks.items():
        full = lab == v
        assert isinstance(m, LabelMask)
        assert m.shape == full.shape and m.count() == int(full.sum())
        assert bool(m.any()) == bool(full.any())
        np.testing.assert_array_equal(m.any(axis=(1, 2)), full.any(axis=(1, 2)))
        np.testing.assert_array_equal(m.count_per_slice(), full.sum(axis=(1, 2)))
        np.testing.assert_array_equal(np.asarray(m), full)
        np.testing.assert_array_equal(m[4], full[4])
        np.testing.assert_array_equal(m[np.array([0, 2, 8])], full[[0, 2, 8]])
    assert masks[9].box is None and not masks[9].any() and masks[9].count() == 0
    with pytest.raises(ValueError, match="3 axes"):
        label_masks(lab[0], [1])


def test_result_has_every_structure_with_its_codes(multi_organ) -> None:  # type: ignore[no-untyped-def]
    volume, lab, result = multi_organ
    assert len(result.segments) == N_STRUCTURES
    assert len(result.findings) == N_STRUCTURES
    table = anatomy_codes()
    for seg, finding in zip(result.segments, result.findings, strict=True):
        codes = table[seg.label.lower()]
        assert seg.type == codes.type and seg.type_modifier == codes.type_modifier
        voxels = int(np.count_nonzero(np.asarray(seg.mask)))
        assert finding.measurements[0].value == pytest.approx(voxels * volume.voxel_volume_mm3)
    assert any(s.type_modifier is not None for s in result.segments)  # *_left / *_right


def test_multi_organ_seg_valid_exact_and_light(multi_organ, tmp_path) -> None:  # type: ignore[no-untyped-def]
    volume, lab, result = multi_organ
    tracemalloc.start()
    t0 = time.perf_counter()
    seg = write_seg(result)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"SEG of {N_STRUCTURES} segments on {volume.shape}: {seconds:.2f} s, "
          f"peak {peak / 2**20:.0f} MiB traced")
    # One boolean copy per structure would be N_STRUCTURES volumes; the
    # shared label map keeps the writer to a few.
    assert peak < 8 * lab.size, f"peak {peak} bytes for a {lab.size}-voxel map"

    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    assert_valid(path)
    back = hd.seg.segread(path)
    assert len(back.SegmentSequence) == N_STRUCTURES
    numbers = segment_number_map(result)
    by_seg_number = {numbers[s.number]: s for s in result.segments}
    for item in back.SegmentSequence:
        s = by_seg_number[item.SegmentNumber]
        type_item = item.SegmentedPropertyTypeCodeSequence[0]
        if s.type_modifier is None:
            assert "SegmentedPropertyTypeModifierCodeSequence" not in type_item
        else:
            mod = type_item.SegmentedPropertyTypeModifierCodeSequence[0]
            assert mod.CodeValue == s.type_modifier.value

    # Every frame equals its slice of the label map for its segment.
    k_of = {f.sop_instance_uid: k for k, f in enumerate(volume.frames)}
    pixels = back.pixel_array
    seen = 0
    for f, item in enumerate(back.PerFrameFunctionalGroupsSequence):
        uid, _ = frame_key_of(item)
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        value = by_seg_number[number].mask.value
        np.testing.assert_array_equal(pixels[f].astype(bool), lab[k_of[uid]] == value)
        seen += 1
    expected = sum(int(np.count_nonzero(s.mask.any(axis=(1, 2)))) for s in result.segments)
    assert seen == expected


def test_multi_organ_sr_valid(multi_organ, tmp_path) -> None:  # type: ignore[no-untyped-def]
    volume, lab, result = multi_organ
    seg = write_seg(result)
    t0 = time.perf_counter()
    sr = write_sr(result, segmentation=seg)
    print(f"SR of {N_STRUCTURES} findings: {time.perf_counter() - t0:.2f} s")
    path = tmp_path / "sr.dcm"
    sr.save_as(path)
    assert_valid(path)
    groups = [
        item for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "126010"  # Imaging Measurements
    ]
    assert groups
    tracked = {
        item.UID
        for group in groups[0].ContentSequence
        for item in group.get("ContentSequence", [])
        if item.ConceptNameCodeSequence[0].CodeValue == "112040"  # Tracking Unique Identifier
    }
    assert tracked == {s.tracking_uid for s in result.segments}
