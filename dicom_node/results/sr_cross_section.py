"""A finding's largest cross-section as a TID 1410 group a web viewer can list.

PS3.16 TID 1410 "Planar ROI Measurements and Qualitative Evaluations", with
TID 1419 "ROI Measurements" of the outlined region:

    Measurement Group (TID 1410)
    ├── Tracking Identifier  = :data:`FREEHAND_ROI_TRACKING_IDENTIFIER`
    ├── Tracking Unique Identifier            -- the finding's
    ├── Finding (type), Finding Site          -- as the finding's
    ├── Image Region: closed POLYLINE SCOORD on the source image
    ├── NUM Area (SCT 42798000, mm2)          ─┐ each INFERRED FROM a copy of
    ├── NUM Mean, Maximum, Standard Deviation  │ the Image Region SCOORD
    │   (CT only: Hounsfield units)           ─┘ (TID 300 row 12, TID 320)
    ├── Algorithm Identification (TID 4019)
    └── TEXT Comment (DCM 121106): the finding's name and its own measurements

The region is the largest 8-connected region of the finding's mask on the
slice where the mask has the most pixels; its area is that region's pixel
count times the pixel spacing (PS3.3 C.7.6.2.1.1), and the statistics are
taken over the same pixels of the source image (modality LUT applied).

Why these choices (viewer compatibility)
----------------------------------------
OHIF v3 lists the findings of a TID 1500 SR in its measurement panel only
after "hydrating" measurement groups into Cornerstone annotations, and it
hydrates a group only when an adapter of ``@cornerstonejs/adapters`` claims it:

* a Tracking Identifier that starts with a Cornerstone tool's own identifier
  (``Cornerstone3DTools@^0.1.0:<Tool>``), or
* an SCOORD that is a POINT or a 4-5 point POLYLINE (probe, rectangle).

An outline has many points, so this group uses the freehand ROI's
identifier.  The adapter then reads the SCOORD *under the first NUM*
(hence the INFERRED FROM copies, which TID 300 allows), takes that NUM as the
area and reads Mean / Maximum / Standard Deviation by code meaning; the
viewer shows these values as written (it recomputes statistics only after a
user edits the outline) and uses the Comment as the row's label.

The group shares the finding's Tracking UID and comes before the finding's
own group (TID 1411, or TID 1501 without a SEG).  OHIF merges the groups of
one Tracking UID and takes the first Tracking Identifier it meets; and it
cannot show a Tracking UID that has no SCOORD at all (OHIF 3.12 stops with a
TypeError on such a group), so the volumetric group must not stand alone.
The price is that the two groups of a finding carry different Tracking
Identifiers: the finding's name on its own group, Cornerstone's tool name on
the cross-section.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

from dicom_node.results._geometry import largest_component, largest_cross_section, outline

if TYPE_CHECKING:
    from ai_models.types import Finding, PipelineResult, Segment

__all__ = [
    "FREEHAND_ROI_TRACKING_IDENTIFIER",
    "CrossSection",
    "cross_section",
    "cross_section_group",
    "finding_label",
]

#: Tracking Identifier of Cornerstone's freehand ROI tool, the one identifier by
#: which OHIF hydrates a many-point POLYLINE group (see the module docstring).
FREEHAND_ROI_TRACKING_IDENTIFIER = "Cornerstone3DTools@^0.1.0:PlanarFreehandROI"

#: Units of the intensity statistics, by modality; other modalities (MR, ...)
#: have no calibrated unit and get the area only.
_INTENSITY_UNITS = {"CT": codes.UCUM.HounsfieldUnit}


class CrossSection:
    """The outlined region of a segment on its largest slice, with its statistics."""

    def __init__(
        self, k: int, points: np.ndarray, region: np.ndarray, area_mm2: float, values: np.ndarray
    ) -> None:
        self.k = k
        """Slice index of the region."""
        self.points = points
        """Closed outline, ``(n, 2)`` image coordinates (column, row)."""
        self.region = region
        """Boolean ``(rows, columns)`` mask of the outlined region."""
        self.area_mm2 = area_mm2
        """Pixel count times row and column spacing."""
        self.values = values
        """Source pixel values (modality units) inside the region."""


def cross_section(result: PipelineResult, segment: Segment) -> CrossSection | None:
    """The largest region of ``segment`` on its largest slice; ``None`` when empty."""
    k = largest_cross_section(segment.mask)
    if k is None:
        return None
    points = outline(segment.mask[k])
    if points is None:
        return None
    region = largest_component(np.asarray(segment.mask[k], dtype=bool))
    spacing = np.asarray(result.volume.spacing, dtype=float)
    area = float(region.sum()) * float(spacing[1]) * float(spacing[2])
    values = np.asarray(result.volume.array[k], dtype=np.float64)[region]
    return CrossSection(k, points, region, area, values)


def _format(value: float) -> str:
    return f"{value:.2f}"


def finding_label(finding: Finding) -> str:
    """The finding's name with its own measurements, e.g. ``Left lung (Volume 2345.67 mm3)``."""
    parts = [
        f"{m.name.meaning} {_format(float(m.value))} {m.unit.value}" for m in finding.measurements
    ]
    return f"{finding.tracking_id} ({'; '.join(parts)})" if parts else finding.tracking_id


def _roi_measurements(
    section: CrossSection, modality: str, algo_id: hd.sr.AlgorithmIdentification
) -> list[hd.sr.Measurement]:
    """TID 1419 rows: Area first (the viewer reads the first NUM as the area)."""
    out = [
        hd.sr.Measurement(
            name=codes.SCT.Area,
            value=round(section.area_mm2, 3),
            unit=codes.UCUM.SquareMillimeter,
            algorithm_id=algo_id,
        )
    ]
    unit = _INTENSITY_UNITS.get(modality.upper())
    if unit is not None and section.values.size:
        for name, value in (
            (codes.SCT.Mean, section.values.mean()),
            (codes.SCT.Maximum, section.values.max()),
            (codes.SCT.StandardDeviation, section.values.std()),
        ):
            out.append(
                hd.sr.Measurement(
                    name=name, value=round(float(value), 3), unit=unit, algorithm_id=algo_id
                )
            )
    return out


def cross_section_group(
    result: PipelineResult,
    finding: Finding,
    section: CrossSection,
    source_image: hd.sr.SourceImageForRegion,
    algo_id: hd.sr.AlgorithmIdentification,
    finding_sites: Sequence[hd.sr.FindingSite] | None,
    finding_type: hd.sr.CodedConcept,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """The TID 1410 group of one finding's largest cross-section (module docstring)."""
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=section.points,
        source_image=source_image,
    )
    modality = result.volume.modality or str(result.volume.source_datasets[0].get("Modality", ""))
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=finding.tracking_uid,
            identifier=FREEHAND_ROI_TRACKING_IDENTIFIER,
        ),
        referenced_region=region,
        finding_type=finding_type,
        finding_sites=finding_sites,
        algorithm_id=algo_id,
        measurements=_roi_measurements(section, modality, algo_id),
    )
    content = group[0].ContentSequence
    (scoord,) = [item for item in content if item.ValueType == "SCOORD"]
    for item in content:
        if item.ValueType == "NUM":
            inferred = copy.deepcopy(scoord)
            inferred.RelationshipType = hd.sr.RelationshipTypeValues.INFERRED_FROM.value
            item.ContentSequence.append(inferred)
    content.append(
        hd.sr.TextContentItem(
            name=codes.DCM.Comment,
            value=finding_label(finding),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    return group

