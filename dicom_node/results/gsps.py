"""Findings as graphics over the source images: Grayscale Softcopy Presentation State.

A GSPS (PS3.3 A.33.1) tells a viewer how to show images it references and
which graphics to draw over them; the pixels stay untouched.  For viewers
that show neither SEG nor TID 1500 SR this is the lightest way to point at a
finding, and PACS viewers have shown presentation states for decades.

What is drawn (one graphic layer, :data:`GRAPHIC_LAYER`):

* each :class:`~ai_models.types.DetectionFinding`: its box as a closed
  POLYLINE of 5 points and a text label such as ``"Mass 1 (0.87)"`` (label
  and score) just above the box (below it when there is no room);
* each finding with a segment: the closed outline of the segment's largest
  cross-section on that slice (as in the SR's TID 1410 group) and the
  segment's label.

Graphic and text objects carry the finding's Tracking ID / UID (PS3.3
C.10.5), the same as in the SR.  Coordinates are PIXEL units: ``(column,
row)`` with ``(0, 0)`` at the top left corner of the top left pixel (PS3.3
C.10.5.1.2), as in the SR's SCOORDs.

Decisions
---------
* **Referenced images**: only the images (frames) that carry a graphic; one
  Graphic Annotation item per image (per frame of a multi-frame image).
* **Grey levels**: the source's VOI (window or VOI LUT) is copied by
  highdicom; a source without one gets a window from the 0.5-99.5
  percentiles of the referenced slices, so the viewer does not fall back to
  the full stored range.  The Presentation LUT is INVERSE for a MONOCHROME1
  source (or one with Presentation LUT Shape INVERSE) so it keeps its usual
  polarity (PS3.3 C.11.6.1.1), IDENTITY otherwise.
* **General Series**: Body Part Examined is copied from the source, and
  Laterality (Type 2C, required for paired body parts such as the breast,
  :data:`PAIRED_BODY_PARTS`) is the source's Image Laterality / Laterality
  when all referenced images agree, empty (unknown) otherwise; it is left
  out for an unpaired body part and kept (maybe empty) without a body part,
  as in the SC overlay.
* **Identity**: same study as the source, new series (default Series Number
  :data:`DEFAULT_SERIES_NUMBER`), Content Label from the pipeline name, the
  algorithm in Contributing Equipment, "AI, not for diagnosis" in the
  Series Description and Content Description.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from ai_models.types import CodedConcept, DetectionFinding, Segment
from dicom_node.results._geometry import largest_cross_section, outline
from dicom_node.results.common import (
    MANUFACTURER_MODEL_NAME,
    NOT_FOR_DIAGNOSIS,
    SOFTWARE_VERSION,
    check_result,
    check_revision,
    check_uid,
    contributing_equipment,
    series_description,
    with_type2_attributes,
)
from dicom_node.results.source_header import clean_result

if TYPE_CHECKING:
    from ai_models.types import PipelineResult
    from dicom_node.results.writer import WriteContext

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SERIES_NUMBER",
    "GRAPHIC_LAYER",
    "GRAYSCALE_SOFTCOPY_PRESENTATION_STATE_SOP_CLASS_UID",
    "BOX_COLOUR",
    "GspsWriter",
    "Mark",
    "PAIRED_BODY_PARTS",
    "marks_of",
    "with_box_segments",
    "write_gsps",
]

#: Grayscale Softcopy Presentation State Storage (PS3.4 B.5).
GRAYSCALE_SOFTCOPY_PRESENTATION_STATE_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.11.1"

#: Default Series Number of the presentation state series (after SEG 9001,
#: SR 9002, SC 9003).
DEFAULT_SERIES_NUMBER = 9004

#: Name of the graphic layer the findings are drawn on (CS, at most 16 chars).
GRAPHIC_LAYER = "AI FINDINGS"

#: Body Part Examined values of paired structures: the GSPS then carries
#: Laterality (General Series, Type 2C), empty when the source does not say.
PAIRED_BODY_PARTS = frozenset(
    {
        "BREAST", "EXTREMITY", "ARM", "LEG", "HAND", "FOOT", "KNEE", "HIP", "SHOULDER",
        "ELBOW", "WRIST", "ANKLE", "FOREARM", "FEMUR", "TIBIA", "FIBULA", "HUMERUS",
        "RADIUS", "ULNA", "CLAVICLE", "SCAPULA", "HEEL", "TOE", "FINGER", "THUMB",
        "EYE", "EAR", "ORBIT", "KIDNEY", "LUNG", "TMJ", "UPRLIMB", "LOWRLIMB",
    }
)

# Recommended display colour of the layer: yellow, CIE L*a*b*.
_LAYER_COLOUR = (97.0, -21.0, 94.0)


@dataclass(frozen=True)
class Mark:
    """One finding drawn on one slice.

    Attributes
    ----------
    frame_index:
        Volume slice ``k``.
    points:
        ``(n, 2)`` ``(column, row)`` closed polyline (first point repeated last).
    text:
        The label drawn next to it.
    tracking_id, tracking_uid:
        The finding's.
    """

    frame_index: int
    points: np.ndarray
    text: str
    tracking_id: str
    tracking_uid: str


def marks_of(result: PipelineResult) -> list[Mark]:
    """What :func:`write_gsps` draws for ``result``, in finding order.

    Detection findings give their box (5 points); findings with a non-empty
    segment the outline of its largest cross-section; other findings nothing.
    """
    segments = {s.number: s for s in result.segments}
    out: list[Mark] = []
    for finding in result.findings:
        if isinstance(finding, DetectionFinding):
            out.append(
                Mark(
                    int(finding.frame_index),
                    finding.polyline(),
                    finding.display_label,
                    finding.tracking_id,
                    finding.tracking_uid,
                )
            )
            continue
        segment = segments.get(finding.segment_number) if finding.segment_number else None
        if segment is None:
            continue
        k = largest_cross_section(segment.mask)
        if k is None:
            continue
        points = outline(segment.mask[k])
        if points is None:
            continue
        out.append(
            Mark(k, points, segment.label, finding.tracking_id, finding.tracking_uid)
        )
    return out


#: Colour of the box segments of :func:`with_box_segments` (SC overlay).
BOX_COLOUR = (255, 64, 64)

# Segment category of a box (CID 7150).
_ABNORMAL = CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure")


def with_box_segments(result: PipelineResult) -> PipelineResult:
    """``result`` with one segment per detection box, for the burned-in SC overlay.

    Each :class:`~ai_models.types.DetectionFinding` without a segment gets a
    segment whose mask is its box (the pixels whose centres lie inside it)
    on its slice, labelled with :attr:`~ai_models.types.DetectionFinding.display_label`
    (the SC legend), so :func:`~dicom_node.results.sc.write_sc` burns the box
    outline in.  The findings are not changed (the SR and GSPS keep drawing
    the exact boxes) and nothing is added when there is no detection; the
    caller's result is never modified.  The SEG writer never sees these
    segments.
    """
    detections = [
        f for f in result.findings
        if isinstance(f, DetectionFinding) and f.segment_number is None
    ]
    if not detections:
        return result
    n, rows, cols = result.volume.shape
    number = max((s.number for s in result.segments), default=0)
    added = []
    for f in detections:
        k = int(f.frame_index)
        if not 0 <= k < n:
            raise ValueError(f"Finding {f.tracking_id!r} lies on slice {k}; the volume has {n}.")
        x0, y0, x1, y1 = f.box
        c0, c1 = int(np.clip(np.ceil(x0 - 0.5), 0, cols)), int(np.clip(np.ceil(x1 - 0.5), 0, cols))
        r0, r1 = int(np.clip(np.ceil(y0 - 0.5), 0, rows)), int(np.clip(np.ceil(y1 - 0.5), 0, rows))
        mask = np.zeros(result.volume.shape, dtype=bool)
        mask[k, r0 : max(r1, r0 + 1), c0 : max(c1, c0 + 1)] = True
        number += 1
        added.append(
            Segment(
                number=number,
                label=f.display_label,
                category=_ABNORMAL,
                type=f.finding_type,
                mask=mask,
                tracking_id=f.tracking_id,
                tracking_uid=f.tracking_uid,
                color_rgb=BOX_COLOUR,
            )
        )
    return dataclasses.replace(result, segments=[*result.segments, *added])


def _clean_cs(text: str, length: int = 16) -> str:
    """An upper-case Code String (PS3.5 6.2 CS) made from ``text``."""
    cs = re.sub(r"[^A-Z0-9_ ]", "_", text.upper()).strip()
    return (cs or "AI_FINDINGS")[:length]


def _text_box(
    points: np.ndarray, text: str, rows: int, cols: int
) -> tuple[float, float, float, float]:
    """Bounding box ``(x0, y0, x1, y1)`` for a label next to ``points``."""
    h = float(np.clip(0.025 * rows, 10.0, 80.0))
    w = min(float(cols), 0.62 * h * max(len(text), 1))
    gap = max(2.0, 0.2 * h)
    left, top = float(points[:, 0].min()), float(points[:, 1].min())
    bottom = float(points[:, 1].max())
    if top - gap - h >= 0.0:
        y0 = top - gap - h
    elif bottom + gap + h <= rows:
        y0 = bottom + gap
    else:
        y0 = max(0.0, min(top, rows - h))
    x0 = float(np.clip(left, 0.0, max(0.0, cols - w)))
    return (x0, y0, min(float(cols), x0 + w), min(float(rows), y0 + h))


def _laterality(datasets: Sequence[Dataset]) -> str:
    values = set()
    for ds in datasets:
        v = ""
        for kw in ("ImageLaterality", "Laterality"):
            v = str(ds.get(kw, "") or "").strip().upper()
            if v:
                break
        values.add(v if v in ("R", "L") else "")
    return values.pop() if len(values) == 1 else ""


def _window(result: PipelineResult, ks: Sequence[int]) -> tuple[float, float]:
    values = np.concatenate([result.volume.array[k][::4, ::4].ravel() for k in ks])
    lo, hi = np.percentile(values, [0.5, 99.5])
    return float(lo + hi) / 2.0, max(float(hi - lo), 1.0)


def _has_voi(ds: Dataset) -> bool:
    """A VOI LUT or window, top level or in the functional groups (Frame VOI LUT)."""
    if ds.get("VOILUTSequence") or ("WindowCenter" in ds and "WindowWidth" in ds):
        return True
    groups = list(ds.get("SharedFunctionalGroupsSequence", None) or [])
    groups += list(ds.get("PerFrameFunctionalGroupsSequence", None) or [])
    return any("FrameVOILUTSequence" in g for g in groups)


def _frame_modality_lut(
    result: PipelineResult, ks: Sequence[int]
) -> hd.ModalityLUTTransformation | None:
    """The rescale of the referenced frames of an enhanced (multi-frame) image.

    highdicom reads a Modality LUT at the top level only and refuses one in
    the Per-Frame Functional Groups; the Pixel Value Transformation of the
    referenced frames (PS3.3 C.7.6.16.2.9) is used instead.  Frames that
    disagree (rare) get the first one's, which is logged.
    """
    by_uid = {str(ds.SOPInstanceUID): ds for ds in result.volume.source_datasets}
    found: list[tuple[float, float, str]] = []
    for k in ks:
        ref = result.volume.frames[k]
        ds = by_uid[ref.sop_instance_uid]
        if ref.frame_number is None or "PerFrameFunctionalGroupsSequence" not in ds:
            return None
        items = [ds.PerFrameFunctionalGroupsSequence[ref.frame_number - 1]]
        items += list(ds.get("SharedFunctionalGroupsSequence", None) or [])
        for item in items:
            if "PixelValueTransformationSequence" in item:
                pvt = item.PixelValueTransformationSequence[0]
                found.append(
                    (
                        float(pvt.get("RescaleSlope", 1.0)),
                        float(pvt.get("RescaleIntercept", 0.0)),
                        str(pvt.get("RescaleType", "") or "US"),
                    )
                )
                break
    if not found:
        return None
    if len(set(found)) > 1:
        logger.info("referenced frames rescale differently; the GSPS uses the first frame's")
    slope, intercept, kind = found[0]
    try:
        rescale_type: hd.RescaleTypeValues | str = hd.RescaleTypeValues(kind)
    except ValueError:
        rescale_type = hd.RescaleTypeValues.US
    return hd.ModalityLUTTransformation(
        rescale_intercept=intercept, rescale_slope=slope, rescale_type=rescale_type
    )


def write_gsps(
    result: PipelineResult,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int | None = None,
    instance_number: int | None = None,
    series_description_text: str | None = None,
    revision: int = 0,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """Draw the findings of ``result`` over its source images as a GSPS.

    Parameters
    ----------
    result:
        The pipeline result; at least one finding that can be drawn (see
        :func:`marks_of`).
    series_instance_uid, sop_instance_uid:
        UIDs fixed by the caller; generated when ``None``.
    series_number, instance_number:
        Defaults :data:`DEFAULT_SERIES_NUMBER` and 1.
    series_description_text:
        Overrides the default SeriesDescription.
    revision:
        Revision number for the default SeriesDescription (``" (rev N)"``
        when > 0); 0 for a first version.

    Returns
    -------
    highdicom.pr.GrayscaleSoftcopyPresentationState

    Raises
    ------
    ValueError
        Nothing to draw, a finding outside the volume, invalid UIDs.
    """
    check_result(result)
    result = clean_result(result)  # invalid source values never reach the object
    if series_instance_uid is not None:
        check_uid(series_instance_uid, "series_instance_uid")
    if sop_instance_uid is not None:
        check_uid(sop_instance_uid, "sop_instance_uid")
    check_revision(revision)
    marks = marks_of(result)
    if not marks:
        raise ValueError("The result has no finding with a box or a segment to draw.")

    volume = result.volume
    n, rows, cols = volume.shape
    by_uid = {str(ds.SOPInstanceUID): ds for ds in volume.source_datasets}
    per_frame: dict[int, list[Mark]] = {}
    for mark in marks:
        if not 0 <= mark.frame_index < n:
            raise ValueError(
                f"Finding {mark.tracking_id!r} lies on slice {mark.frame_index}; "
                f"the volume has {n}."
            )
        per_frame.setdefault(mark.frame_index, []).append(mark)
    ks = sorted(per_frame)

    referenced: list[Dataset] = []
    for k in ks:
        ds = with_type2_attributes(by_uid[volume.frames[k].sop_instance_uid])
        if all(r.SOPInstanceUID != ds.SOPInstanceUID for r in referenced):
            referenced.append(ds)

    layer = hd.pr.GraphicLayer(
        layer_name=GRAPHIC_LAYER,
        order=1,
        description=f"{result.pipeline} {result.algorithm.version} ({NOT_FOR_DIAGNOSIS})"[:64],
        display_color=hd.color.CIELabColor(*_LAYER_COLOUR),
    )
    annotations = []
    for k in ks:
        ref = volume.frames[k]
        ds = next(r for r in referenced if r.SOPInstanceUID == ref.sop_instance_uid)
        graphics = []
        texts = []
        for mark in per_frame[k]:
            graphics.append(
                hd.pr.GraphicObject(
                    graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                    graphic_data=np.asarray(mark.points, dtype=np.float64),
                    units=hd.pr.AnnotationUnitsValues.PIXEL,
                    tracking_id=mark.tracking_id[:64],
                    tracking_uid=mark.tracking_uid,
                )
            )
            texts.append(
                hd.pr.TextObject(
                    text_value=mark.text[:1024],
                    units=hd.pr.AnnotationUnitsValues.PIXEL,
                    bounding_box=_text_box(mark.points, mark.text, rows, cols),
                    text_justification=hd.pr.TextJustificationValues.LEFT,
                    tracking_id=mark.tracking_id[:64],
                    tracking_uid=mark.tracking_uid,
                )
            )
        annotations.append(
            hd.pr.GraphicAnnotation(
                referenced_images=[ds],
                graphic_layer=layer,
                referenced_frame_number=ref.frame_number,
                graphic_objects=graphics,
                text_objects=texts,
            )
        )

    first = referenced[0]
    voi = None
    if not any(_has_voi(ds) for ds in referenced):
        center, width = _window(result, ks)
        voi = [hd.pr.SoftcopyVOILUTTransformation(window_center=center, window_width=width)]
    from ai_models.radiograph import inverted

    shape = (
        hd.PresentationLUTShapeValues.INVERSE
        if inverted(first)
        else hd.PresentationLUTShapeValues.IDENTITY
    )
    algorithm = result.algorithm
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=referenced,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number if series_number is not None else DEFAULT_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=instance_number if instance_number is not None else 1,
        manufacturer=algorithm.manufacturer or "dicom-node",
        manufacturer_model_name=MANUFACTURER_MODEL_NAME,
        software_versions=SOFTWARE_VERSION,
        device_serial_number=(algorithm.weights_sha256[:16] or "0"),
        content_label=_clean_cs(result.pipeline or algorithm.name),
        content_description=(
            f"{result.pipeline} {algorithm.version} findings ({NOT_FOR_DIAGNOSIS})"[:64]
        ),
        graphic_annotations=annotations,
        graphic_layers=[layer],
        modality_lut_transformation=_frame_modality_lut(result, ks),
        voi_lut_transformations=voi,
        presentation_lut_transformation=hd.PresentationLUTTransformation(
            presentation_lut_shape=shape
        ),
        contributing_equipment=[contributing_equipment(algorithm)],
        series_description=(
            series_description_text
            or series_description(result.pipeline, algorithm, "GSPS", revision)
        ),
    )
    part = str(first.get("BodyPartExamined", "") or "").strip().upper()
    if part:
        gsps.BodyPartExamined = part
    laterality = _laterality(referenced)
    if part in PAIRED_BODY_PARTS or not part:
        # General Series Laterality, Type 2C: required for a paired body part
        # (and, without a body part, nobody can tell); empty means unknown.
        gsps.Laterality = laterality
    logger.debug(
        "GSPS %s: %d graphic(s) on %d image(s)", gsps.SOPInstanceUID, len(marks), len(ks)
    )
    return gsps


class GspsWriter:
    """Result kind ``"gsps"``: the findings drawn in a Grayscale Softcopy
    Presentation State (PS3.3 A.33.1), when there is a box or segment to draw."""

    kind = "gsps"
    sop_class_uid = GRAYSCALE_SOFTCOPY_PRESENTATION_STATE_SOP_CLASS_UID
    series_number = DEFAULT_SERIES_NUMBER

    def applies(self, result: PipelineResult, context: WriteContext) -> bool:
        """Whether a finding can be drawn (:func:`marks_of`)."""
        if marks_of(result):
            return True
        logger.info("no GSPS written: no finding of the %s result can be drawn", result.pipeline)
        return False

    def write(self, result: PipelineResult, context: WriteContext) -> list[Dataset]:
        """The presentation state of ``result``."""
        u = context.uids_for(self.kind)
        return [
            write_gsps(
                result,
                series_instance_uid=u.series_instance_uid,
                sop_instance_uid=u.sop_instance_uid,
                series_number=u.series_number,
                instance_number=u.instance_number,
                revision=context.revision,
            )
        ]
