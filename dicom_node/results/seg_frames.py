"""The frames of a BINARY SEG of single-frame images, built from the masks.

highdicom's :class:`~highdicom.seg.Segmentation` compares every plane with
every segment number, packs each frame separately and needs the masks as one
label map (or a stacked array) of the kept slices: about half a second for a
300-slice CT with five segments, most of it spent on planes a segment does
not touch.  For the common case -- single-frame source images in the patient
coordinate system, Explicit VR Little Endian, empty frames omitted, frames of
a whole number of bytes -- :func:`fill_frames` builds the multi-frame part of
the object (PS3.3 C.7.6.16 Multi-frame Functional Groups, C.7.6.17
Multi-frame Dimension, C.8.20.2 Segmentation Image: Segments Overlap, Pixel
Data packed 1 bit per pixel, PS3.5 8.1.1) from the masks directly: each
mask is packed once, only the planes it touches are frames, and the overlap
of two segments is the AND of their packed planes.

It fills an object highdicom made from the first plane only, so every other
attribute is highdicom's; the frames, their order, the per-frame items
(highdicom's own item builders), the Dimension Index Values, the Spacing
Between Slices and the Dimension Organization Type follow highdicom's rules
for the full series.  The tests compare the result, element by element and
byte by byte, with the object highdicom builds from the whole series; where
this module does not apply (:func:`applies`), highdicom builds it all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from highdicom.image import _Image
from highdicom.seg import Segmentation
from highdicom.spatial import (
    VOLUME_INDEX_CONVENTION,
    _get_slice_distances,
    get_normal_vector,
    get_volume_positions,
)
from highdicom.utils import get_plane_positions_of_series
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds

__all__ = ["applies", "fill_frames", "first_plane"]

#: Planes packed at a time (bounds the temporary copy of a mask's planes).
_CHUNK = 64


def applies(
    sources: Sequence[Dataset],
    rows: int,
    cols: int,
    *,
    transfer_syntax_uid: str,
    omit_empty_frames: bool,
) -> bool:
    """Whether :func:`fill_frames` builds the frames of this SEG exactly as highdicom would."""
    return (
        transfer_syntax_uid == ExplicitVRLittleEndian
        and omit_empty_frames
        and (rows * cols) % 8 == 0  # frames packed one by one (PS3.5 8.1.1)
        and len(sources) > 0
        and all(
            "ImageOrientationPatient" in ds
            and "ImagePositionPatient" in ds
            and int(ds.get("NumberOfFrames", 1) or 1) == 1
            and "PerFrameFunctionalGroupsSequence" not in ds
            for ds in sources
        )
        and all(
            hasattr(_Image, name)
            for name in ("_get_pffg_item", "_get_derivation_source_image_item")
        )
        and hasattr(Segmentation, "_build_luts")
    )


def first_plane(n_segments: int, rows: int, cols: int) -> np.ndarray:
    """A one-plane label map holding every segment number, for highdicom to
    build the object around (its frames are replaced)."""
    dtype = np.uint8 if n_segments < 256 else np.uint16
    plane = np.zeros((1, rows, cols), dtype=dtype)
    plane.reshape(-1)[:n_segments] = np.arange(1, n_segments + 1, dtype=dtype)
    return plane


def _packed(mask: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """The slices ``planes`` of ``mask``, 1 bit per pixel, little-endian bit
    order (PS3.5 8.1.1): one row of bytes per plane."""
    n_bytes = mask.shape[1] * mask.shape[2] // 8
    out = np.empty((len(planes), n_bytes), dtype=np.uint8)
    for start in range(0, len(planes), _CHUNK):
        block = mask[planes[start : start + _CHUNK]].reshape(-1, n_bytes * 8)
        out[start : start + _CHUNK] = np.packbits(block, axis=1, bitorder="little")
    return out


def _overlap(present: list[np.ndarray], packed: list[np.ndarray]) -> bool:
    """Whether a pixel belongs to two segments (Segments Overlap, PS3.3 C.8.20.2)."""
    rows = []
    for mask_present in present:
        index = np.full(len(mask_present), -1)
        index[mask_present] = np.arange(int(mask_present.sum()))
        rows.append(index)
    for i in range(len(present)):
        for j in range(i + 1, len(present)):
            common = np.flatnonzero(present[i] & present[j])
            if (
                common.size
                and np.bitwise_and(packed[i][rows[i][common]], packed[j][rows[j][common]]).any()
            ):
                return True
    return False


def fill_frames(
    seg: Segmentation,
    sources: Sequence[Dataset],
    masks: Sequence[np.ndarray],
    planes: np.ndarray,
) -> None:
    """Give ``seg`` (made by highdicom from ``sources[0]`` and :func:`first_plane`)
    the frames of ``masks`` on the source images ``sources``.

    Parameters
    ----------
    seg:
        The Segmentation highdicom built with ``source_images=[sources[0]]``
        and ``pixel_array=first_plane(len(masks), rows, cols)``.
    sources:
        The source image of each plane (``sources[p]`` shows slice
        ``planes[p]`` of the masks); each plane holds a pixel of some mask.
    masks:
        One boolean ``(slices, rows, columns)`` mask per segment, segment
        numbers 1..N in this order.
    planes:
        The slice of the masks each source image shows.
    """
    # Planes sorted along the normal, as highdicom sorts them (PS3.3 C.7.6.17).
    positions = get_plane_positions_of_series(sources)
    position_values = np.array([p[0].ImagePositionPatient for p in positions])
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    normal = get_normal_vector(orientation, index_convention=VOLUME_INDEX_CONVENTION)
    _, sort_index = np.unique(_get_slice_distances(position_values, normal), return_index=True)
    if len(sort_index) != len(positions):
        raise ValueError("Plane positions must not contain duplicates.")

    present = [np.asarray(mask.any(axis=(1, 2)))[planes] for mask in masks]
    packed = [_packed(mask, planes[p]) for mask, p in zip(masks, present, strict=True)]

    template = seg.PerFrameFunctionalGroupsSequence[0]
    derivation = template.DerivationImageSequence[0].DerivationCodeSequence[0]
    derivation_items: dict[int, list[Dataset]] = {}
    items: list[Dataset] = []
    frames: list[np.ndarray] = []
    for index, (mask_present, mask_packed) in enumerate(zip(present, packed, strict=True)):
        number = index + 1
        row_of = np.cumsum(mask_present) - 1
        for dim_index, plane in enumerate(sort_index, 1):
            if not mask_present[plane]:
                continue
            if plane not in derivation_items:
                derivation_items[plane] = [
                    _Image._get_derivation_source_image_item(
                        source_image=sources[plane], frame_number=None, locations_preserved=True
                    )
                ]
            item = _Image._get_pffg_item(
                dimension_index_values=[number, dim_index],
                plane_position=positions[plane],
                derivation_source_image_items=derivation_items[plane],
                coordinate_system=seg._coordinate_system,
                derivation=derivation,
            )
            if len(masks) > 1:  # one segment: in the shared groups (as highdicom)
                identification = Dataset()
                identification.add(DataElement(0x0062000B, "US", number))  # ReferencedSegmentNumber
                item.add(DataElement(0x0062000A, "SQ", [identification]))
            items.append(item)
            frames.append(mask_packed[row_of[plane]])

    pixel_data = np.concatenate(frames).tobytes() if frames else b""
    if len(pixel_data) % 2:
        pixel_data += b"0"  # highdicom's padding
    seg.PerFrameFunctionalGroupsSequence = items
    seg.NumberOfFrames = len(items)
    seg.PixelData = pixel_data
    seg.SegmentsOverlap = "YES" if _overlap(present, packed) else "NO"

    # Spacing Between Slices from every source position, unless the source
    # gives one (as highdicom).
    measures = shared.PixelMeasuresSequence[0]
    source_measures = seg._get_pixel_measures_sequence(
        source_image=sources[0], is_multiframe=False, coordinate_system=seg._coordinate_system
    )
    if source_measures is not None and "SpacingBetweenSlices" not in source_measures[0]:
        spacing, _ = get_volume_positions(
            image_positions=cast(Any, position_values), image_orientation=orientation
        )
        if spacing is not None:
            measures.SpacingBetweenSlices = format_number_as_ds(spacing)
        elif "SpacingBetweenSlices" in measures:
            del measures.SpacingBetweenSlices
    if "DimensionOrganizationType" in seg:
        del seg.DimensionOrganizationType
    # highdicom calls a SEG 3D only when its frames differ by position alone:
    # one segment, on more than one plane.
    if len(masks) == 1 and len(positions) > 1:
        spacing, _ = get_volume_positions(
            image_positions=cast(Any, position_values), image_orientation=orientation, sort=False
        )
        if spacing is not None and spacing > 0.0:
            seg.DimensionOrganizationType = "3D"
    seg._build_luts()
