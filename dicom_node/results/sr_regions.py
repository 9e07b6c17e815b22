"""TID 1410 region groups: each finding drawn on its image, in a form web viewers list.

PS3.16 TID 1410 "Planar ROI Measurements and Qualitative Evaluations".  Every
finding of the SR gets one such group, first among the groups of its Tracking
UID (its own TID 1411 or TID 1501 group follows):

    Measurement Group (TID 1410)
    ├── Tracking Identifier: the finding's name, or for an outline of more
    │   than 5 points :data:`FREEHAND_ROI_TRACKING_IDENTIFIER`
    ├── Tracking Unique Identifier            -- the finding's
    ├── Finding (type), Finding Site          -- the finding's
    ├── Image Region: closed POLYLINE SCOORD on the source image
    ├── NUM ... (TID 1419 ROI Measurements)   each INFERRED FROM a copy of the
    │                                         Image Region (TID 300 row 12)
    ├── Algorithm Identification (TID 4019)
    └── TEXT Comment (DCM 121106): the label, the finding's name and values

The regions (:class:`Region`):

* a segmented finding: its **largest cross-section**, the largest
  8-connected region of its mask on the slice where the mask has the most
  pixels, with its Area (SCT 42798000; pixel count times PixelSpacing,
  PS3.3 C.7.6.2.1.1) and, for CT, the Mean, Maximum and Standard Deviation
  of the source pixels in it (Hounsfield units, modality LUT applied); on a
  radiograph with no recorded spacing, the box around that region instead
  (no area can be stated);
* a classification finding: the box around the region its **explanation
  map** marks (heat map >= :data:`EXPLANATION_LEVEL` of its maximum, largest
  region) when the pipeline explained it, else the **classified image**
  itself (a rectangle along its edges): the ROI of a whole-image
  classification is the image.  No NUM: the probability stays in the
  finding's TID 1501 group.  (A rectangle, not an outline: Cornerstone's
  freehand adapter needs a NUM to read as the area; its rectangle adapter
  does not.)
* a report of no findings (:func:`dicom_node.results.sr.write_negative_sr`):
  the middle analysed image itself, likewise (:func:`image_region`).

Why (viewer compatibility)
--------------------------
OHIF v3 merges the groups of one Tracking UID, takes the first Tracking
Identifier it meets, and cannot show a Tracking UID without an SCOORD at all
(OHIF 3.12 stops with a TypeError and blanks the viewer); a TID 1411 or
TID 1501 group alone therefore needs this companion group.

OHIF lists a finding in its measurement panel only after "hydrating" its
groups into Cornerstone annotations, and hydrates a group only when an
adapter of ``@cornerstonejs/adapters`` claims it: by a Tracking Identifier
that starts with a Cornerstone tool's own (``Cornerstone3DTools@^0.1.0:
<Tool>``), or by an SCOORD that is a POINT or a 4-5 point POLYLINE (probe,
rectangle).  An outline has more points, so its group uses the freehand ROI
tool's identifier (the finding's name is then in the Comment and in its
TID 1411/1501 group).  The adapter reads the SCOORD under the *first NUM* (or
the group's own when there is no NUM), takes that NUM as the area, reads
Mean / Maximum / Standard Deviation by code meaning, and labels the row with
the Comment.  OHIF recomputes a row's statistics from the pixels once it
draws the outline.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

from dicom_node.results._geometry import largest_component, largest_cross_section, outline
from dicom_node.results.common import RADIOGRAPH_MODALITIES, recorded_pixel_spacing

if TYPE_CHECKING:
    from ai_models.types import (
        ClassificationFinding,
        DetectionFinding,
        Finding,
        HeatMap,
        PipelineResult,
        Segment,
    )

__all__ = [
    "EXPLANATION_LEVEL",
    "FREEHAND_ROI_TRACKING_IDENTIFIER",
    "Region",
    "add_label",
    "classification_label",
    "classification_region",
    "cross_section",
    "detection_label",
    "finding_label",
    "image_region",
    "infer_from_region",
    "region_group",
]

#: Tracking Identifier of Cornerstone's freehand ROI tool, the one identifier by
#: which OHIF hydrates a POLYLINE of more than 5 points (module docstring).
FREEHAND_ROI_TRACKING_IDENTIFIER = "Cornerstone3DTools@^0.1.0:PlanarFreehandROI"

#: Level (fraction of its maximum) above which an explanation map marks the region.
EXPLANATION_LEVEL = 0.5

#: Units of the intensity statistics, by modality; other modalities (MR, ...)
#: have no calibrated unit and get the area only.
_INTENSITY_UNITS = {"CT": codes.UCUM.HounsfieldUnit}


@dataclass
class Region:
    """A closed outline on one slice, with the ROI measurements of what it encloses."""

    k: int
    """Slice index (the volume's ``k``)."""
    points: np.ndarray
    """Closed outline, ``(n, 2)`` image coordinates (column, row), first point last."""
    measurements: list[hd.sr.Measurement] = field(default_factory=list)
    """TID 1419 rows, the area first."""


def _format(value: float) -> str:
    return f"{value:.2f}"


def finding_label(finding: Finding) -> str:
    """The finding's name with its own measurements and evaluations.

    E.g. ``Left lung (Volume 2345.67 mm3)``, or ``Left lung (Finding: Anatomy
    coverage incomplete)`` for lungs cut by the first or last slice.
    """
    parts = [
        f"{m.name.meaning} {_format(float(m.value))} {m.unit.value}" for m in finding.measurements
    ] + [f"{q.name.meaning}: {q.value.meaning}" for q in finding.qualitative_evaluations]
    return f"{finding.tracking_id} ({'; '.join(parts)})" if parts else finding.tracking_id


def classification_label(finding: ClassificationFinding) -> str:
    """E.g. ``Pleural effusion: Present (Probability 87.30 %)``."""
    presence = "Present" if finding.present else "Absent"
    return f"{finding.tracking_id}: {presence} (Probability {_format(100 * finding.probability)} %)"


def detection_label(finding: DetectionFinding) -> str:
    """E.g. ``Mass 1 (Probability 0.87)``."""
    return f"{finding.tracking_id} (Probability {_format(float(finding.score))})"


def cross_section(
    result: PipelineResult, segment: Segment, algo_id: hd.sr.AlgorithmIdentification
) -> Region | None:
    """The largest region of ``segment`` on its largest slice; ``None`` when empty."""
    k = largest_cross_section(segment.mask)
    if k is None:
        return None
    points = outline(segment.mask[k])
    if points is None:
        return None
    region = largest_component(np.asarray(segment.mask[k], dtype=bool))
    if not _calibrated(result):
        # No recorded spacing (a radiograph without Pixel Spacing): no area to
        # state, and the freehand adapter needs one; the region's box instead.
        r, c = np.nonzero(region)
        return Region(k, _rectangle(c.min(), r.min(), c.max() + 1, r.max() + 1))
    spacing = np.asarray(result.volume.spacing, dtype=float)
    area = float(region.sum()) * float(spacing[1]) * float(spacing[2])
    measurements = [
        hd.sr.Measurement(
            name=codes.SCT.Area,
            value=round(area, 3),
            unit=codes.UCUM.SquareMillimeter,
            algorithm_id=algo_id,
        )
    ]
    unit = _INTENSITY_UNITS.get(_modality(result).upper())
    values = np.asarray(result.volume.array[k], dtype=np.float64)[region]
    if unit is not None and values.size:
        for name, value in (
            (codes.SCT.Mean, values.mean()),
            (codes.SCT.Maximum, values.max()),
            (codes.SCT.StandardDeviation, values.std()),
        ):
            measurements.append(
                hd.sr.Measurement(
                    name=name, value=round(float(value), 3), unit=unit, algorithm_id=algo_id
                )
            )
    return Region(k, points, measurements)


def _rectangle(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """A closed 5-point POLYLINE along the edges of ``[x0, x1] x [y0, y1]``."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def classification_region(
    result: PipelineResult, finding: ClassificationFinding, heatmaps: Sequence[HeatMap]
) -> Region:
    """The box around where the finding's explanation map is high, else the image."""
    n, rows, cols = result.volume.shape
    for heatmap in heatmaps:
        if heatmap.tracking_uid != finding.tracking_uid or not 0 <= heatmap.frame_index < n:
            continue
        level = np.asarray(heatmap.map, dtype=np.float32)
        if level.shape != (rows, cols) or not np.isfinite(level).all() or level.max() <= 0:
            continue
        marked = largest_component(level >= EXPLANATION_LEVEL * float(level.max()))
        r, c = np.nonzero(marked)
        box = _rectangle(c.min(), r.min(), c.max() + 1, r.max() + 1)
        return Region(int(heatmap.frame_index), box)
    frames = [int(k) for k in finding.source_frames if 0 <= int(k) < n] or [0]
    return image_region(result, frames[0])


def image_region(result: PipelineResult, k: int) -> Region:
    """Slice ``k`` itself as the region: a rectangle along its edges, no NUM.

    The ROI of a statement about the whole image (a classification without
    an explanation map, a report of no findings).
    """
    _, rows, cols = result.volume.shape
    return Region(k, _rectangle(0, 0, cols, rows))


def region_group(
    finding: Finding,
    region: Region,
    source_image: hd.sr.SourceImageForRegion,
    algo_id: hd.sr.AlgorithmIdentification,
    finding_type: hd.sr.CodedConcept,
    finding_sites: Sequence[hd.sr.FindingSite] | None,
    label: str,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """The TID 1410 group of ``region`` for ``finding`` (module docstring)."""
    identifier = (
        FREEHAND_ROI_TRACKING_IDENTIFIER if len(region.points) > 5 else finding.tracking_id[:64]
    )
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=finding.tracking_uid, identifier=identifier
        ),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=region.points,
            source_image=source_image,
        ),
        finding_type=finding_type,
        finding_sites=finding_sites,
        algorithm_id=algo_id,
        measurements=region.measurements or None,
    )
    infer_from_region(group)
    add_label(group, label)
    return group


def infer_from_region(group: hd.sr.templates.Template) -> None:
    """Give every NUM of a TID 1410 group an INFERRED FROM copy of its Image Region.

    TID 300 row 12 allows it; Cornerstone's adapters look for the SCOORD
    there (under the first NUM) and skip the group without it.
    """
    content = group[0].ContentSequence
    (scoord,) = [item for item in content if item.ValueType == "SCOORD"]
    for item in content:
        if item.ValueType == "NUM":
            inferred = copy.deepcopy(scoord)
            inferred.RelationshipType = hd.sr.RelationshipTypeValues.INFERRED_FROM.value
            item.ContentSequence.append(inferred)


def add_label(group: hd.sr.templates.Template, label: str) -> None:
    """Append the Comment (DCM 121106) that viewers show as the group's label."""
    group[0].ContentSequence.append(
        hd.sr.TextContentItem(
            name=codes.DCM.Comment,
            value=label,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )


def _modality(result: PipelineResult) -> str:
    return result.volume.modality or str(result.volume.source_datasets[0].get("Modality", ""))


def _calibrated(result: PipelineResult) -> bool:
    """Whether the volume's pixel spacing is recorded (radiographs may have none)."""
    if _modality(result).upper() not in RADIOGRAPH_MODALITIES:
        return True
    return recorded_pixel_spacing(result.volume.source_datasets[0]) is not None
