"""DICOM Segmentation (SEG) writer: PS3.3 A.51 Segmentation IOD, C.8.20.

One BINARY Segmentation instance per :class:`~ai_models.types.PipelineResult`:

* pixel-aligned with the source (each SEG frame references the source frame
  it was drawn on through the Derivation Image Sequence, Spatial Locations
  Preserved YES);
* one segment per non-empty :class:`~ai_models.types.Segment`, with its
  SNOMED CT category/type, anatomic region, tracking ID/UID, recommended
  display colour (CIELab) and Segment Algorithm Identification (AUTOMATIC,
  family "Artificial Intelligence");
* uncompressed (Explicit VR Little Endian) by default; empty frames omitted;
* the algorithm in the Contributing Equipment Sequence with a Device UID
  derived from the weights' sha256 (see :mod:`dicom_node.results.common`).

Segments are renumbered 1..N in the order of their ``number`` (the standard
requires consecutive numbers from 1 for BINARY); segments whose mask is empty
are left out with a log line, since a segment with no frames cannot be shown
or referenced.  :func:`segment_number_map` gives the mapping.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from ai_models.label_mask import LabelMask
from dicom_node.results import seg_frames
from dicom_node.results.common import (
    DEFAULT_SERIES_NUMBERS,
    MANUFACTURER_MODEL_NAME,
    NOT_FOR_DIAGNOSIS,
    SOFTWARE_VERSION,
    algorithm_identification_sequence,
    check_result,
    check_revision,
    check_uid,
    contributing_equipment,
    identity_kwargs,
    recorded_pixel_spacing,
    series_description,
    to_code,
)
from dicom_node.results.source_header import clean_result

if TYPE_CHECKING:
    from ai_models.types import PipelineResult, Segment
    from dicom_node.results.writer import WriteContext

logger = logging.getLogger(__name__)

__all__ = [
    "SEGMENTATION_SOP_CLASS_UID",
    "SEGMENT_PALETTE",
    "SegWriter",
    "default_color",
    "segment_number_map",
    "write_seg",
]

#: Segmentation Storage (PS3.4 B.5).
SEGMENTATION_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"

_SUPPORTED_TRANSFER_SYNTAXES = {ExplicitVRLittleEndian, JPEG2000Lossless}

#: Colours for segments that bring none (distinct, readable on grey).
SEGMENT_PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
)


def default_color(index: int) -> tuple[int, int, int]:
    """A distinct RGB colour for the ``index``-th segment (0-based)."""
    return SEGMENT_PALETTE[index % len(SEGMENT_PALETTE)]


def segment_color(segment: Segment, index: int) -> tuple[int, int, int]:
    """The segment's RGB colour, or a palette colour when it has none."""
    if segment.color_rgb is not None:
        rgb = tuple(int(c) for c in segment.color_rgb)
        if len(rgb) != 3 or any(not 0 <= c <= 255 for c in rgb):
            raise ValueError(f"Segment {segment.number} has an invalid color_rgb {rgb!r}.")
        return rgb  # type: ignore[return-value]
    return default_color(index)


def segment_number_map(result: PipelineResult) -> dict[int, int]:
    """Map result segment numbers to SEG segment numbers (1..N).

    Segments with an empty mask are not in the map (they are not written).
    """
    out: dict[int, int] = {}
    for seg in sorted(result.segments, key=lambda s: s.number):
        if seg.mask.any():
            out[seg.number] = len(out) + 1
    return out


def _content_label(pipeline: str) -> str:
    # CS: upper case letters, digits, space and underscore, max 16 chars.
    label = "".join(c if c.isalnum() else "_" for c in pipeline.upper())[:16]
    return label or "AI_SEG"


def _segment_description(
    segment: Segment,
    seg_number: int,
    index: int,
    algorithm_id: hd.AlgorithmIdentificationSequence,
) -> hd.seg.SegmentDescription:
    """Segment Description Macro (PS3.3 C.8.20.4 / Table 10-26)."""
    anatomic = [to_code(segment.anatomic_region)] if segment.anatomic_region else None
    r, g, b = segment_color(segment, index)
    desc = hd.seg.SegmentDescription(
        segment_number=seg_number,
        segment_label=segment.label[:64],
        segmented_property_category=to_code(segment.category),
        segmented_property_type=to_code(segment.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_id,
        tracking_uid=segment.tracking_uid,
        tracking_id=segment.tracking_id[:64],
        anatomic_regions=anatomic,
        display_color=hd.color.CIELabColor.from_rgb(r, g, b),
    )
    if segment.type_modifier is not None:
        # Segmented Property Type Modifier Code Sequence sits inside the type
        # item (PS3.3 Table 10-26 "Segment Description Macro").
        desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            to_code(segment.type_modifier)
        ]
    if segment.anatomic_region is not None and segment.anatomic_region_modifier is not None:
        # Anatomic Region Modifier Sequence sits inside the region item
        # (PS3.3 Table 10-5 "General Anatomy Mandatory Macro").
        desc.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [
            to_code(segment.anatomic_region_modifier)
        ]
    return desc


def _is_multiframe(ds: Dataset) -> bool:
    return int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds


def _frame_position(ds: Dataset, frame_number: int) -> list[float]:
    """ImagePositionPatient of a frame of an enhanced multi-frame image."""
    pffg = ds.PerFrameFunctionalGroupsSequence[frame_number - 1]
    if "PlanePositionSequence" in pffg:
        return [float(v) for v in pffg.PlanePositionSequence[0].ImagePositionPatient]
    sffg = ds.SharedFunctionalGroupsSequence[0]
    return [float(v) for v in sffg.PlanePositionSequence[0].ImagePositionPatient]


def _header_view(ds: Dataset) -> Dataset:
    """A new dataset sharing ``ds``'s elements (not its Pixel Data), so that
    replacing an attribute of the view leaves ``ds`` as it is."""
    view = Dataset()
    for elem in ds:
        if elem.tag != 0x7FE00010:
            view.add(elem)
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta
    return view


def _with_shared_geometry(ds: Dataset, frame_number: int) -> Dataset:
    """A header view of an enhanced image with Pixel Measures and Plane
    Orientation in the Shared Functional Groups (PS3.3 C.7.6.16).

    highdicom reads both from the shared groups only; some scanners (e.g.
    Philips) put them per frame.  The volume loader has already checked that
    the frames of the volume share orientation and spacing, so the values of
    one of its frames stand for all.  The caller's dataset is not modified.
    """
    shared = ds.SharedFunctionalGroupsSequence[0]
    needed = [
        kw for kw in ("PixelMeasuresSequence", "PlaneOrientationSequence") if kw not in shared
    ]
    if not needed:
        return ds
    per_frame = ds.PerFrameFunctionalGroupsSequence[frame_number - 1]
    new_shared = Dataset()
    for elem in shared:
        new_shared.add(elem)
    for kw in needed:
        if kw not in per_frame:
            raise ValueError(f"Source image has no {kw} for frame {frame_number}.")
        setattr(new_shared, kw, per_frame[kw].value)
    view = _header_view(ds)
    view.SharedFunctionalGroupsSequence = [new_shared]
    return view


def _same_orientation(datasets: Sequence[Dataset]) -> dict[str, Dataset]:
    """Header views of single-frame images with one ImageOrientationPatient.

    highdicom compares the orientation strings of the sources exactly; real
    series differ in the last digits (e.g. ``0.99999`` vs ``1``).  The volume
    loader has checked that they are the same plane within tolerance, so the
    first image's value is given to the others (copies; the caller's
    datasets are not modified).
    """
    if any("ImageOrientationPatient" not in ds for ds in datasets):
        # Images without a patient coordinate system (e.g. CR, DX): highdicom
        # writes the SEG without Plane Orientation / Position (PS3.3 C.8.20.2).
        return {ds.SOPInstanceUID: ds for ds in datasets}
    iop = list(datasets[0].ImageOrientationPatient)
    out: dict[str, Dataset] = {}
    for ds in datasets:
        if list(ds.ImageOrientationPatient) != iop:
            if not np.allclose(np.asarray(ds.ImageOrientationPatient, float), iop, atol=1e-3):
                raise ValueError("Source images do not share one ImageOrientationPatient.")
            ds = _header_view(ds)
            ds.ImageOrientationPatient = iop
        out[ds.SOPInstanceUID] = ds
    return out


def _without_patient_geometry(seg: Dataset, source: Dataset) -> None:
    """A SEG of images without a patient coordinate system (CR, DX, ...).

    General Image Patient Orientation (Type 2C, PS3.3 C.7.6.1) is required
    without Image Orientation (Patient): copied from the source, empty
    (unknown) when it has none.  Pixel Measures (C.7.6.16.2.1) carries the
    source's Pixel Spacing or Imager Pixel Spacing; without either it is
    left out, rather than claiming a spacing of zero.
    """
    if "PatientOrientation" not in seg:
        seg.PatientOrientation = source.get("PatientOrientation") or ""
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "PixelMeasuresSequence" not in shared:
        return
    spacing = recorded_pixel_spacing(source)
    if spacing is None:
        del shared.PixelMeasuresSequence
    else:
        shared.PixelMeasuresSequence[0].PixelSpacing = spacing


def _reference_all_sources(seg: Dataset, datasets: Sequence[Dataset]) -> None:
    """Source Image Sequence (C.7.6.1) and Referenced Series Sequence
    (C.12.2, Common Instance Reference) listing every source image in slice
    order, not only those with segment frames, so that viewers resolve the
    whole referenced series."""
    items = []
    series: dict[str, list[Dataset]] = {}
    for ds in datasets:
        ref = Dataset()
        ref.ReferencedSOPClassUID = ds.SOPClassUID
        ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        items.append(ref)
        other = Dataset()
        other.ReferencedSOPClassUID = ds.SOPClassUID
        other.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        series.setdefault(ds.SeriesInstanceUID, []).append(other)
    seg.SourceImageSequence = items
    ref_series = []
    for uid, refs in series.items():
        item = Dataset()
        item.SeriesInstanceUID = uid
        item.ReferencedInstanceSequence = refs
        ref_series.append(item)
    seg.ReferencedSeriesSequence = ref_series


def _pixel_array(masks: list[np.ndarray], keep: np.ndarray) -> np.ndarray:
    """Label map ``(n, rows, cols)`` when the masks do not overlap, else a
    stacked ``(n, rows, cols, n_segments)`` array, for the slices ``keep``.

    The label map avoids highdicom's stacked-array overlap check, which costs
    8 bytes per voxel on big series.
    """
    count = np.zeros((len(keep),) + masks[0].shape[1:], dtype=np.uint8)
    for mask in masks:
        count += mask[keep]
    if count.max(initial=0) <= 1:
        dtype = np.uint8 if len(masks) < 256 else np.uint16
        labels = np.zeros(count.shape, dtype=dtype)
        for number, mask in enumerate(masks, 1):
            labels[mask[keep]] = number
        return labels
    stacked = np.zeros(count.shape + (len(masks),), dtype=np.uint8)
    for idx, mask in enumerate(masks):
        stacked[..., idx] = mask[keep]
    return stacked


def _set_dimension_organization_uid(seg: Dataset, uid: str) -> None:
    """Replace highdicom's Dimension Organization UID (a random one) in the
    Dimension Organization and Dimension Index Sequences."""
    old = {str(item.DimensionOrganizationUID) for item in seg.DimensionOrganizationSequence}
    for item in seg.DimensionOrganizationSequence:
        item.DimensionOrganizationUID = uid
    for item in seg.get("DimensionIndexSequence", []):
        if str(item.get("DimensionOrganizationUID", "")) in old:
            item.DimensionOrganizationUID = uid


def write_seg(
    result: PipelineResult,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int | None = None,
    instance_number: int | None = None,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
    omit_empty_frames: bool = True,
    series_description_text: str | None = None,
    dimension_organization_uid: str | None = None,
    revision: int = 0,
    fast_frames: bool = True,
) -> hd.seg.Segmentation:
    """Write the segments of ``result`` as a BINARY DICOM Segmentation.

    Parameters
    ----------
    result:
        The pipeline result; its ``volume.frames`` / ``volume.source_datasets``
        say which source frame each mask slice belongs to.  Masks are on the
        volume grid ``(k, i, j)``, i.e. pixel-aligned with the source frames.
    series_instance_uid, sop_instance_uid:
        UIDs fixed by the caller (the router stores them before sending);
        generated when ``None``.
    series_number, instance_number:
        Defaults 9001 and 1.
    transfer_syntax_uid:
        Explicit VR Little Endian (default) or JPEG 2000 Lossless (needs an
        encoder plug-in).  BINARY segmentations cannot use RLE (PS3.5 8.2).
    omit_empty_frames:
        Leave frames without any segment pixel out (default).
    series_description_text:
        Overrides the default SeriesDescription (e.g. "ct-lungs 0.1 SEG (AI,
        not for diagnosis)").
    dimension_organization_uid:
        Dimension Organization UID (PS3.3 C.7.6.17) in place of the random
        one highdicom generates, so that a retried job writes the same SEG.
    revision:
        Revision number for the default SeriesDescription (``" (rev N)"``
        when > 0); 0 for a first version.
    fast_frames:
        Build the frames from the masks (:mod:`~dicom_node.results.seg_frames`)
        where that gives highdicom's object for single-frame sources (the
        default); ``False``: highdicom builds every frame itself.

    Returns
    -------
    highdicom.seg.Segmentation
        In the source study (same StudyInstanceUID, FrameOfReferenceUID), new
        series, Modality SEG.

    Raises
    ------
    ValueError
        When the result has no non-empty segment, masks do not match the
        volume, the source frames cannot be found among the source datasets,
        or an argument has an invalid value.
    TypeError
        When an argument has the wrong type.
    """
    check_result(result)
    result = clean_result(result)  # invalid source values never reach the object
    if transfer_syntax_uid not in _SUPPORTED_TRANSFER_SYNTAXES:
        raise ValueError(
            f'Argument "transfer_syntax_uid" must be one of '
            f"{sorted(_SUPPORTED_TRANSFER_SYNTAXES)}, got {transfer_syntax_uid!r}."
        )
    if series_instance_uid is not None:
        check_uid(series_instance_uid, "series_instance_uid")
    if sop_instance_uid is not None:
        check_uid(sop_instance_uid, "sop_instance_uid")
    if dimension_organization_uid is not None:
        check_uid(dimension_organization_uid, "dimension_organization_uid")
    check_revision(revision)
    volume = result.volume

    number_map = segment_number_map(result)
    segments = [
        s for s in sorted(result.segments, key=lambda s: s.number) if s.number in number_map
    ]
    for seg in result.segments:
        if seg.number not in number_map:
            logger.warning(
                "segment %d (%s) is empty: not written to the SEG", seg.number, seg.label
            )
    if not segments:
        raise ValueError("The result has no non-empty segment: there is nothing to write.")

    # A LabelMask (one label of a shared label map) answers per-slice
    # questions from its bounding box; only plain masks are converted.
    masks = [s.mask if isinstance(s.mask, LabelMask) else np.asarray(s.mask, dtype=bool)
             for s in segments]
    n_slices = volume.shape[0]
    rows, cols = volume.shape[1], volume.shape[2]

    # Slices to encode.
    if omit_empty_frames:
        any_k = np.zeros(n_slices, dtype=bool)
        for mask in masks:
            any_k |= mask.any(axis=(1, 2))
        keep = np.flatnonzero(any_k)
    else:
        keep = np.arange(n_slices)

    by_uid = {ds.SOPInstanceUID: ds for ds in volume.source_datasets}
    refs = volume.frames
    missing = {f.sop_instance_uid for f in refs} - by_uid.keys()
    if missing:
        raise ValueError(
            f"{len(missing)} frame reference(s) of the volume are not among its source datasets."
        )
    multiframe = [_is_multiframe(ds) for ds in volume.source_datasets]
    if any(multiframe) and not all(multiframe):
        raise ValueError("Source datasets mix single-frame and multi-frame images.")
    for ds in volume.source_datasets:
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise ValueError(
                f"Source image is {ds.Rows}x{ds.Columns}, the volume slices {rows}x{cols}: "
                "masks must be on the source pixel grid."
            )

    algo_id = algorithm_identification_sequence(result.algorithm)
    descriptions = [
        _segment_description(seg, number_map[seg.number], idx, algo_id)
        for idx, seg in enumerate(segments)
    ]
    kwargs: dict[str, Any] = {}
    fast = (
        fast_frames
        and not any(multiframe)
        and seg_frames.applies(
            volume.source_datasets,
            rows,
            cols,
            transfer_syntax_uid=transfer_syntax_uid,
            omit_empty_frames=omit_empty_frames,
        )
    )
    if fast:
        # The first kept plane only: seg_frames gives the object its frames.
        pixel_array = seg_frames.first_plane(len(masks), rows, cols)
    else:
        pixel_array = _pixel_array(masks, keep)
    if not any(multiframe):
        # Single-frame series: mask slice t <-> source_images[t]; positions are
        # copied from the sources, so every SEG frame references its source
        # instance exactly.  The other slices are still recorded as sources.
        by_uid = _same_orientation(volume.source_datasets)
        keep_uids = [refs[k].sop_instance_uid for k in keep]
        source_images: Sequence[Dataset] = [by_uid[u] for u in keep_uids]
        kept_sources = source_images
        if fast:
            source_images = source_images[:1]
        # The other slices are recorded as sources after construction
        # (highdicom's further_source_images costs ~5 ms per image).
    else:
        # Enhanced multi-frame: one main source (the instance holding most of
        # the volume's frames); explicit plane positions per mask slice, which
        # highdicom matches to source frames (also in further sources).
        counts: dict[str, int] = {}
        for ref in refs:
            counts[ref.sop_instance_uid] = counts.get(ref.sop_instance_uid, 0) + 1
        main_uid = max(counts, key=lambda u: counts[u])
        first_frame = next(r.frame_number for r in refs if r.sop_instance_uid == main_uid)
        source_images = [_with_shared_geometry(by_uid[main_uid], first_frame or 1)]
        further = [
            _with_shared_geometry(ds, 1)
            for ds in volume.source_datasets
            if ds.SOPInstanceUID != main_uid
        ]
        if further:
            kwargs["further_source_images"] = further
        positions = []
        for k in keep:
            ref = refs[int(k)]
            ds = by_uid[ref.sop_instance_uid]
            if ref.frame_number is None:
                raise ValueError(f"Slice {int(k)} of a multi-frame volume has no frame number.")
            positions.append(
                hd.PlanePositionSequence(
                    coordinate_system=hd.CoordinateSystemNames.PATIENT,
                    image_position=_frame_position(ds, ref.frame_number),
                )
            )
        kwargs["plane_positions"] = positions

    algorithm = result.algorithm
    out = hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        **identity_kwargs(  # type: ignore[arg-type]
            "SEG",
            algorithm,
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
        ),
        manufacturer_model_name=MANUFACTURER_MODEL_NAME,
        software_versions=SOFTWARE_VERSION,
        device_serial_number=(algorithm.weights_sha256[:16] or algorithm.version)[:64],
        content_description=f"{algorithm.name} {algorithm.version} ({NOT_FOR_DIAGNOSIS})"[:64],
        content_label=_content_label(result.pipeline),
        transfer_syntax_uid=transfer_syntax_uid,
        omit_empty_frames=omit_empty_frames,
        contributing_equipment=[contributing_equipment(algorithm)],
        series_description=(
            series_description_text
            or series_description(result.pipeline, algorithm, "SEG", revision)
        ),
        **kwargs,
    )
    if fast:
        seg_frames.fill_frames(out, kept_sources, masks, keep)
    if not any(multiframe):
        _reference_all_sources(out, volume.source_datasets)
    if "ImageOrientationPatient" not in volume.source_datasets[0] and not any(multiframe):
        _without_patient_geometry(out, volume.source_datasets[0])
    if dimension_organization_uid is not None:
        _set_dimension_organization_uid(out, dimension_organization_uid)
    logger.debug(
        "SEG %s: %d segment(s), %d frame(s)",
        out.SOPInstanceUID,
        len(descriptions),
        int(out.NumberOfFrames),
    )
    return out


class SegWriter:
    """Result kind ``"seg"``: one BINARY Segmentation (PS3.3 A.51) per result.

    Nothing is written when every segment is empty.  With a seed, the
    Dimension Organization UID is derived too.
    """

    kind = "seg"
    sop_class_uid = SEGMENTATION_SOP_CLASS_UID
    series_number = DEFAULT_SERIES_NUMBERS["SEG"]

    def applies(self, result: PipelineResult, context: WriteContext) -> bool:
        """Whether any segment has a pixel."""
        if segment_number_map(result):
            return True
        logger.info("no SEG written: every segment of the %s result is empty", result.pipeline)
        return False

    def write(self, result: PipelineResult, context: WriteContext) -> list[Dataset]:
        """The SEG of ``result``."""
        u = context.uids_for(self.kind)
        return [
            write_seg(
                result,
                series_instance_uid=u.series_instance_uid,
                sop_instance_uid=u.sop_instance_uid,
                series_number=u.series_number,
                instance_number=u.instance_number,
                dimension_organization_uid=context.derived_uid(self.kind, "dimension-organization"),
                revision=context.revision,
            )
        ]
