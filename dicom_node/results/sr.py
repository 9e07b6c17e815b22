"""TID 1500 Measurement Report in a Comprehensive 3D SR (PS3.3 A.35.13).

Content tree (PS3.16 TID 1500)::

    Imaging Measurement Report
    ├── Language, observer context: device = the algorithm (TID 1004, its
    │   Device UID = the Contributing Equipment Device UID)
    ├── Procedure Reported (from the result, else a default per modality)
    ├── Image Library (TID 1600): the source images
    └── Imaging Measurements, per finding (one Tracking Identifier + UID):
        ├── Measurement Group (TID 1410), first: the finding drawn on its
        │   image, labelled with a Comment (:mod:`.sr_regions`; see "Viewer
        │   compatibility") -- a segment's largest cross-section with its
        │   area and (CT) HU statistics, a classification's explained region
        │   or image, a detection's box
        ├── Measurement Group (TID 1411) when there is a SEG segment:
        │   finding type / site, Referenced Segment (SEG SOP Instance UID +
        │   segment number), measurements (TID 300, UCUM units) and
        │   qualitative evaluations, algorithm identification (TID 4019)
        └── Measurement Group (TID 1501) otherwise: measurements and
            evaluations of the finding, on its source images (the slices its
            segment covers, or the classified images)

Classification findings (:class:`ai_models.types.ClassificationFinding`,
e.g. ``cxr-findings``) are TID 1501 groups whose first measurement is the
probability (:data:`PROBABILITY`, (122157, DCM, "Probability"), UCUM ``%``)
and whose first qualitative evaluation is the presence: the finding's own
code as concept name (e.g. (60046008, SCT, "Pleural effusion")) with the
value :data:`PRESENT` (52101004, SCT, "Present") or :data:`ABSENT`
(272519000, SCT, "Absent"), from probability >= threshold.  ((121071, DCM,
"Finding") is not used as that concept name: TID 1501 already uses it for
the finding type.)  Their source images are the classified image(s)
(``source_frames``).

Detection findings (:class:`ai_models.types.DetectionFinding`, e.g.
``mg-masses``) are TID 1410 planar ROI groups (next to a TID 1411 group when
they also have a SEG segment): the box as a closed POLYLINE of 5 points on its
source image, the score as (122157, DCM, "Probability") in UCUM ``1``
(:data:`UNITY`), and the laterality as the finding site's modifier.

Negative report
---------------
A result with nothing to report (:func:`nothing_to_report`: no finding, no
segment with a voxel) is still a result: the pipeline ran on the series and
found nothing, which the archive must be able to tell from "never ran".
:func:`write_negative_sr` writes it as the same TID 1500 document with one
statement in place of the findings::

    Imaging Measurements
    ├── Measurement Group (TID 1410): the middle analysed image as its
    │   region, labelled "<pipeline>: no findings" (OHIF needs an SCOORD,
    │   see "Viewer compatibility"; left out with ``planar_regions=False``)
    └── Measurement Group (TID 1501)
        ├── Tracking Identifier "<pipeline>: no findings" + Tracking UID
        │   (derived from the source series and the pipeline: a re-run
        │   keeps it)
        ├── Finding (121071, DCM) = (373572006, SCT, "Clinical finding absent")
        ├── Algorithm Identification (TID 4019)
        └── Source images: the analysed images (all of a series of up to 16,
            else its first, middle and last; the Current Requested Procedure
            Evidence Sequence lists every one)

Its SeriesDescription says ``"SR no findings"`` where a findings report says
``"SR"``, so the study browser tells the two apart.

A revision (the result of a re-run after a late instance) names the SR(s) it
supersedes in the Predecessor Documents Sequence (PS3.3 C.17.2, SR Document
General module): Study Instance UID > Referenced Series Sequence > Series
Instance UID > Referenced SOP Sequence > SOP Class / Instance UID.

Document flags: CompletionFlag PARTIAL, PreliminaryFlag PRELIMINARY,
VerificationFlag UNVERIFIED -- an AI result is never final or verified.

Viewer compatibility
--------------------
OHIF (``cornerstone-dicom-sr``) merges measurement groups that share a
Tracking Unique Identifier and draws a finding only when the merged group has
an SCOORD (OHIF 3.12 stops with a TypeError on a Tracking UID without one);
it lists findings in its measurement panel only for groups a Cornerstone
adapter can take.  TID 1411 allows exactly one ROI reference (segment,
regions or surface), so the outline goes in a TID 1410 group of its own with
the same Tracking UID, written so that OHIF can list it
(:mod:`dicom_node.results.sr_regions` explains each attribute).  The
outline is the closed polyline of the largest connected region on the slice
where the finding has its largest area (an outline reads better than a
bounding box and stays small after simplification).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from ai_models.types import ClassificationFinding, CodedConcept, DetectionFinding, Finding
from dicom_node.results.common import (
    DEFAULT_SERIES_NUMBERS,
    MANUFACTURER_MODEL_NAME,
    SOFTWARE_VERSION,
    algorithm_identification,
    check_result,
    check_revision,
    check_uid,
    contributing_equipment,
    default_procedure_reported,
    derive_uid,
    device_uid,
    identity_kwargs,
    series_description,
    to_code,
)
from dicom_node.results.source_header import clean_result
from dicom_node.results.sr_regions import (
    Region,
    add_label,
    classification_label,
    classification_region,
    cross_section,
    detection_label,
    finding_label,
    image_region,
    infer_from_region,
    region_group,
)
from dicom_node.results.sr_search import install as _install_fast_search

if TYPE_CHECKING:
    from ai_models.types import HeatMap, PipelineResult, Segment
    from dicom_node.results.writer import WriteContext

logger = logging.getLogger(__name__)

_install_fast_search()  # highdicom's TID 1500 templates search the tree per group

__all__ = [
    "ABSENT",
    "CLINICAL_FINDING_ABSENT",
    "COMPREHENSIVE_3D_SR_SOP_CLASS_UID",
    "PERCENT",
    "PRESENT",
    "PROBABILITY",
    "PreviousVersion",
    "SrWriter",
    "UNITY",
    "negative_finding",
    "nothing_to_report",
    "write_negative_sr",
    "write_sr",
]

#: Comprehensive 3D SR Storage (PS3.4 B.5).
COMPREHENSIVE_3D_SR_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.88.34"

#: Concept name of a classification finding's probability (NUM, TID 300).
PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")

#: Unit of :data:`PROBABILITY` (UCUM).
PERCENT = hd.sr.CodedConcept("%", "UCUM", "Percent")

#: Values of a classification finding's presence (CID 240 "Present-Absent"); the
#: concept name of that qualitative evaluation is the finding type itself.
PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
ABSENT = hd.sr.CodedConcept("272519000", "SCT", "Absent")

#: Unit of a detection finding's score (:data:`PROBABILITY`, ``0..1``): UCUM ``1``
#: (CID 7181 "Abstract Multi-dimensional Image Model Component Units").
UNITY = hd.sr.CodedConcept("1", "UCUM", "no units")

#: The Finding (121071, DCM) of a negative report's TID 1501 group: SNOMED CT
#: 373572006 "Clinical finding absent (situation)", under its preferred term.
CLINICAL_FINDING_ABSENT = hd.sr.CodedConcept("373572006", "SCT", "Clinical finding absent")


@dataclass(frozen=True)
class PreviousVersion:
    """An earlier SR that a new one supersedes (Predecessor Documents Sequence).

    The four UIDs the job runner keeps in its database for each SR it sent;
    the dataset itself is not needed.
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str

    def __post_init__(self) -> None:
        for name in (
            "study_instance_uid",
            "series_instance_uid",
            "sop_class_uid",
            "sop_instance_uid",
        ):
            check_uid(getattr(self, name), name)

    @classmethod
    def from_dataset(cls, ds: Dataset) -> PreviousVersion:
        """The UIDs of an SR dataset (e.g. one read back from the archive)."""
        try:
            return cls(
                study_instance_uid=str(ds.StudyInstanceUID),
                series_instance_uid=str(ds.SeriesInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
            )
        except AttributeError as exc:
            raise ValueError(f"Previous version lacks a UID: {exc}") from exc

    def as_dataset(self) -> Dataset:
        """A minimal dataset with the four UIDs (what highdicom reads)."""
        ds = Dataset()
        ds.StudyInstanceUID = self.study_instance_uid
        ds.SeriesInstanceUID = self.series_instance_uid
        ds.SOPClassUID = self.sop_class_uid
        ds.SOPInstanceUID = self.sop_instance_uid
        return ds


def previous_versions_of(
    items: Sequence[PreviousVersion | Dataset] | None,
) -> list[PreviousVersion]:
    """Normalise ``previous_versions`` (dataclasses or datasets), in order,
    without repeats."""
    out: list[PreviousVersion] = []
    if items is None:
        return out
    if isinstance(items, (str, Dataset, PreviousVersion)):
        raise TypeError('Argument "previous_versions" must be a sequence.')
    for item in items:
        if isinstance(item, Dataset):
            item = PreviousVersion.from_dataset(item)
        elif not isinstance(item, PreviousVersion):
            raise TypeError(
                "Items of previous_versions must be PreviousVersion or Dataset, "
                f"got {type(item).__name__}."
            )
        if item not in out:
            out.append(item)
    return out


_ImageItem = TypeVar(
    "_ImageItem",
    hd.sr.SourceImageForRegion,
    hd.sr.SourceImageForSegmentation,
    hd.sr.SourceImageForMeasurementGroup,
)

MeasurementGroup = (
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)


def _seg_segment_number(segmentation: Dataset, segment: Segment) -> int | None:
    """Number of ``segment`` in ``segmentation``, found by its tracking UID."""
    for item in segmentation.SegmentSequence:
        if item.get("TrackingUID") == segment.tracking_uid:
            return int(item.SegmentNumber)
    return None


def _observation_context(result: PipelineResult) -> hd.sr.ObservationContext:
    algorithm = result.algorithm
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid(algorithm),
        name=algorithm.name[:64],
        manufacturer_name=(algorithm.manufacturer or None),
        model_name=f"{algorithm.name} {algorithm.version}"[:64],
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=device,
        )
    )


def _measurements(
    finding: Finding, algo_id: hd.sr.AlgorithmIdentification
) -> list[hd.sr.Measurement]:
    out = _classification_measurements(finding, algo_id)
    out += _detection_measurements(finding, algo_id)
    for m in finding.measurements:
        if not np.isfinite(m.value):
            raise ValueError(
                f"Measurement {m.name.meaning!r} of finding {finding.tracking_id!r} "
                f"is not finite: {m.value!r}."
            )
        # The algorithm on each NUM gives it a content sequence, which OHIF
        # expects on measurements of groups without an SCOORD.
        out.append(
            hd.sr.Measurement(
                name=to_code(m.name),
                value=float(m.value),
                unit=to_code(m.unit),
                algorithm_id=algo_id,
            )
        )
    return out


def _evaluations(finding: Finding) -> list[hd.sr.QualitativeEvaluation]:
    return _classification_evaluations(finding) + [
        hd.sr.QualitativeEvaluation(name=to_code(q.name), value=to_code(q.value))
        for q in finding.qualitative_evaluations
    ]


def _classification_measurements(
    finding: Finding, algo_id: hd.sr.AlgorithmIdentification
) -> list[hd.sr.Measurement]:
    """The probability of a :class:`ClassificationFinding` as a NUM (UCUM %)."""
    if not isinstance(finding, ClassificationFinding):
        return []
    p = float(finding.probability)
    if not (np.isfinite(p) and 0.0 <= p <= 1.0):
        raise ValueError(
            f"Probability of finding {finding.tracking_id!r} must be in 0..1, got {p!r}."
        )
    return [
        hd.sr.Measurement(
            name=PROBABILITY, value=round(100.0 * p, 3), unit=PERCENT, algorithm_id=algo_id
        )
    ]


def _classification_evaluations(finding: Finding) -> list[hd.sr.QualitativeEvaluation]:
    """Presence of a :class:`ClassificationFinding`: <finding type> = Present / Absent."""
    if not isinstance(finding, ClassificationFinding):
        return []
    return [
        hd.sr.QualitativeEvaluation(
            name=to_code(finding.finding_type), value=PRESENT if finding.present else ABSENT
        )
    ]


def _detection_measurements(
    finding: Finding, algo_id: hd.sr.AlgorithmIdentification
) -> list[hd.sr.Measurement]:
    """The score of a :class:`DetectionFinding` as a NUM (0..1, UCUM ``1``)."""
    if not isinstance(finding, DetectionFinding):
        return []
    return [
        hd.sr.Measurement(
            name=PROBABILITY,
            value=round(float(finding.score), 4),
            unit=UNITY,
            algorithm_id=algo_id,
        )
    ]


def _finding_sites(finding: Finding) -> list[hd.sr.FindingSite] | None:
    """Finding site, with a detection finding's laterality as its modifier."""
    if finding.finding_site is None:
        return None
    laterality = finding.laterality if isinstance(finding, DetectionFinding) else None
    return [
        hd.sr.FindingSite(
            anatomic_location=to_code(finding.finding_site),
            laterality=to_code(laterality) if laterality is not None else None,
        )
    ]


def _box_region(result: PipelineResult, finding: DetectionFinding) -> hd.sr.ImageRegion:
    """A detection's box as a closed 5-point POLYLINE on its source image (TID 1410)."""
    n, rows, cols = result.volume.shape
    k = int(finding.frame_index)
    if not 0 <= k < n:
        raise ValueError(
            f"Finding {finding.tracking_id!r} lies on slice {k}; the volume has {n}."
        )
    x0, y0, x1, y1 = finding.box
    if x0 < 0 or y0 < 0 or x1 > cols or y1 > rows:
        raise ValueError(
            f"Box of finding {finding.tracking_id!r} {finding.box} is outside the "
            f"{cols}x{rows} image."
        )
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=finding.polyline(),
        source_image=_source_image_item(result, k, hd.sr.SourceImageForRegion),
    )


def _finding_slices(result: PipelineResult, finding: Finding) -> list[int]:
    """Slices whose source frames a TID 1501 group references.

    A classification finding's own ``source_frames`` (those in range), else
    :func:`_representative_slices`.
    """
    frames = finding.source_frames if isinstance(finding, ClassificationFinding) else ()
    n = result.volume.shape[0]
    chosen = sorted({int(k) for k in frames if 0 <= int(k) < n})
    if frames and not chosen:
        raise ValueError(
            f"Finding {finding.tracking_id!r} refers to slices {list(frames)} outside the volume."
        )
    return chosen or _representative_slices(result)


def _segment_slices(result: PipelineResult, segment: Segment) -> list[int]:
    """Slices a segment covers (TID 1501 source images of a finding without a SEG).

    Every such slice of a small segment (16 at most), else the first, middle
    and last of them: each is also an Image Library entry, which costs
    highdicom ~10 ms to describe.
    """
    slices = [int(k) for k in np.flatnonzero(segment.mask.any(axis=(1, 2)))]
    if len(slices) <= 16:
        return slices
    return sorted({slices[0], slices[len(slices) // 2], slices[-1]})


def _source_image_item(result: PipelineResult, k: int, cls: type[_ImageItem]) -> _ImageItem:
    ref = result.volume.frames[k]
    return cls(
        referenced_sop_class_uid=ref.sop_class_uid,
        referenced_sop_instance_uid=ref.sop_instance_uid,
        referenced_frame_numbers=[ref.frame_number] if ref.frame_number is not None else None,
    )


#: Above this many slices a Referenced Segment names the source series
#: instead of listing every source image (TID 1411 allows either).
MAX_SOURCE_IMAGES_PER_SEGMENT = 64


def _referenced_segment(
    result: PipelineResult, segmentation: Dataset, seg_number: int, segment: Segment
) -> hd.sr.ReferencedSegment:
    """Referenced Segment (TID 1411 row 8) with its source images or series."""
    slices = np.flatnonzero(segment.mask.any(axis=(1, 2)))
    if 0 < len(slices) <= MAX_SOURCE_IMAGES_PER_SEGMENT:
        images = [
            _source_image_item(result, int(k), hd.sr.SourceImageForSegmentation) for k in slices
        ]
        return hd.sr.ReferencedSegment(
            sop_class_uid=segmentation.SOPClassUID,
            sop_instance_uid=segmentation.SOPInstanceUID,
            segment_number=seg_number,
            source_images=images,
        )
    return hd.sr.ReferencedSegment(
        sop_class_uid=segmentation.SOPClassUID,
        sop_instance_uid=segmentation.SOPInstanceUID,
        segment_number=seg_number,
        source_series=hd.sr.SourceSeriesForSegmentation(
            result.volume.source_datasets[0].SeriesInstanceUID
        ),
    )


def _finding_groups(
    result: PipelineResult,
    finding: Finding,
    segmentation: Dataset | None,
    segments: dict[int, Segment],
    algo_id: hd.sr.AlgorithmIdentification,
    planar_regions: bool,
    heatmaps: Sequence[HeatMap],
) -> list[MeasurementGroup]:
    tracking = hd.sr.TrackingIdentifier(
        uid=finding.tracking_uid, identifier=finding.tracking_id[:64]
    )
    common: dict[str, Any] = dict(
        tracking_identifier=tracking,
        finding_type=to_code(finding.finding_type),
        algorithm_id=algo_id,
        finding_sites=_finding_sites(finding),
    )
    measurements = _measurements(finding, algo_id) or None
    evaluations = _evaluations(finding) or None
    segment = segments.get(finding.segment_number) if finding.segment_number is not None else None
    if segment is not None and not segment.mask.any():
        segment = None
    groups: list[MeasurementGroup] = []

    # The finding drawn on its image (sr_regions): first among its groups.
    region: Region | None = None
    label = finding.tracking_id
    if planar_regions and isinstance(finding, ClassificationFinding):
        region, label = classification_region(result, finding, heatmaps), classification_label(
            finding
        )
    elif planar_regions and segment is not None and not isinstance(finding, DetectionFinding):
        region, label = cross_section(result, segment, algo_id), finding_label(finding)
    elif planar_regions and _is_negative(finding):
        region = image_region(result, result.volume.shape[0] // 2)

    seg_number = (
        _seg_segment_number(segmentation, segment)
        if segment is not None and segmentation is not None
        else None
    )
    if seg_number is not None and segmentation is not None and segment is not None:
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                referenced_segment=_referenced_segment(result, segmentation, seg_number, segment),
                measurements=measurements,
                qualitative_evaluations=evaluations,
                **common,
            )
        )
        if planar_regions and isinstance(finding, DetectionFinding):
            box = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                referenced_region=_box_region(result, finding), **common
            )
            add_label(box, detection_label(finding))
            groups.insert(0, box)
    elif isinstance(finding, DetectionFinding):
        # A box on one image is the ROI (TID 1410).
        box = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            referenced_region=_box_region(result, finding),
            measurements=measurements,
            qualitative_evaluations=evaluations,
            **common,
        )
        infer_from_region(box)
        add_label(box, detection_label(finding))
        groups.append(box)
    else:
        # TID 1501: measurements of the finding as a whole, on its source images.
        slices = (
            _segment_slices(result, segment)
            if segment is not None
            else _finding_slices(result, finding)
        )
        sources = [
            _source_image_item(result, k, hd.sr.SourceImageForMeasurementGroup) for k in slices
        ]
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                measurements=measurements,
                qualitative_evaluations=evaluations,
                source_images=sources,
                **common,
            )
        )
    if region is not None:
        # First: OHIF takes the Tracking Identifier of a finding's first group.
        groups.insert(
            0,
            region_group(
                finding,
                region,
                _source_image_item(result, region.k, hd.sr.SourceImageForRegion),
                algo_id,
                common["finding_type"],
                common["finding_sites"],
                label,
            ),
        )
    return groups


# Source image for segmentation, Referenced Segment: reached through the SEG.
_NOT_IN_LIBRARY = {"121233", "121191"}


def _library_images(result: PipelineResult, groups: list[MeasurementGroup]) -> list[Dataset]:
    """Source images for the Image Library (TID 1600).

    The images the measurement groups point at (SCOORD sources, TID 1501
    source images), in slice order; the first source image when there are
    none.  Listing every slice of a 300-slice series would cost seconds and
    adds nothing a viewer needs (the evidence sequence lists them all).
    """
    wanted: set[str] = set()

    def walk(items: Sequence[Dataset]) -> None:
        for item in items:
            name = item.get("ConceptNameCodeSequence")
            if name and name[0].CodeValue in _NOT_IN_LIBRARY:
                continue
            for ref in item.get("ReferencedSOPSequence", []):
                wanted.add(ref.ReferencedSOPInstanceUID)
            walk(item.get("ContentSequence", []))

    for group in groups:
        walk(group)
    images = [ds for ds in result.volume.source_datasets if ds.SOPInstanceUID in wanted]
    return images or [result.volume.source_datasets[0]]


def _plain_image_library(
    result: PipelineResult, images: Sequence[Dataset]
) -> hd.sr.ContainerContentItem:
    """TID 1600 Image Library with one group of IMAGE items, no descriptors."""
    wanted = {ds.SOPInstanceUID for ds in images}
    frames: dict[str, list[int]] = {}
    for ref in result.volume.frames:
        if ref.sop_instance_uid in wanted and ref.frame_number is not None:
            frames.setdefault(ref.sop_instance_uid, []).append(ref.frame_number)
    entries = [
        hd.sr.ImageContentItem(
            name=hd.sr.CodedConcept("260753009", "SCT", "Source"),
            referenced_sop_class_uid=ds.SOPClassUID,
            referenced_sop_instance_uid=ds.SOPInstanceUID,
            referenced_frame_numbers=sorted(frames.get(ds.SOPInstanceUID, [])) or None,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        for ds in images
    ]
    group = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibraryGroup,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    group.ContentSequence = hd.sr.ContentSequence(entries)
    library = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibrary,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    library.ContentSequence = hd.sr.ContentSequence([group])
    return library


def _has_library_descriptors(ds: Dataset) -> bool:
    """Whether highdicom can describe ``ds`` in the Image Library (TID 1602)."""
    try:
        hd.sr.ImageLibraryEntryDescriptors(ds)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return False
    return True


def _representative_slices(result: PipelineResult) -> list[int]:
    """All slices of a small series; first, middle, last of a big one."""
    n = result.volume.shape[0]
    if n <= 16:
        return list(range(n))
    return sorted({0, n // 2, n - 1})


def nothing_to_report(result: PipelineResult) -> bool:
    """Whether ``result`` has no finding and no segment with a voxel.

    Such a result makes no SEG and no findings SR; its report is the
    negative one (:func:`write_negative_sr`).
    """
    return not result.findings and not any(s.mask.any() for s in result.segments)


def negative_finding(result: PipelineResult) -> Finding:
    """The statement of a negative report: Finding = Clinical finding absent.

    Its Tracking Identifier names the pipeline (``"mg-masses: no findings"``);
    its Tracking UID is derived from the source series and the pipeline, so
    every run of the pipeline on the series says it under the same UID.
    """
    volume = result.volume
    series_uid = volume.series_instance_uid or str(volume.source_datasets[0].SeriesInstanceUID)
    name = result.pipeline or result.algorithm.name
    return Finding(
        tracking_id=f"{name}: no findings"[:64],
        tracking_uid=derive_uid(series_uid, name, "no findings"),
        finding_type=CodedConcept(
            CLINICAL_FINDING_ABSENT.value,
            CLINICAL_FINDING_ABSENT.scheme_designator,
            CLINICAL_FINDING_ABSENT.meaning,
        ),
    )


def _is_negative(finding: Finding) -> bool:
    """Whether ``finding`` is the statement of a negative report."""
    return type(finding) is Finding and to_code(finding.finding_type) == CLINICAL_FINDING_ABSENT


def write_negative_sr(
    result: PipelineResult,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int | None = None,
    instance_number: int | None = None,
    planar_regions: bool = True,
    series_description_text: str | None = None,
    previous_versions: Sequence[PreviousVersion | Dataset] | None = None,
    revision: int = 0,
) -> hd.sr.Comprehensive3DSR:
    """Write that the pipeline ran on the series and found nothing (TID 1500).

    The findings report of :func:`write_sr` with the one statement of
    :func:`negative_finding` as its finding: a TID 1501 group with Finding
    (121071, DCM) = (373572006, SCT, "Clinical finding absent"), the
    algorithm (TID 4019) and the analysed source images; with
    ``planar_regions`` also its TID 1410 region (the middle analysed image)
    for viewers.  See "Negative report" in the module docstring.

    Parameters
    ----------
    result:
        The pipeline result; :func:`nothing_to_report` must hold.
    series_instance_uid, sop_instance_uid, series_number, instance_number:
        As for :func:`write_sr`.
    planar_regions, previous_versions, revision:
        As for :func:`write_sr`.
    series_description_text:
        Overrides the default SeriesDescription (``"<pipeline> <version> SR
        no findings (AI, not for diagnosis)"``).

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        Same study as the source, new series; PARTIAL / PRELIMINARY /
        UNVERIFIED.

    Raises
    ------
    ValueError
        When the result has a finding or a non-empty segment to report.
    """
    check_result(result)
    if not nothing_to_report(result):
        raise ValueError(
            "The result has findings or segments to report: write_sr (and write_seg), "
            "not a negative report."
        )
    return write_sr(
        dataclasses.replace(result, findings=[negative_finding(result)], segments=[]),
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        series_number=series_number,
        instance_number=instance_number,
        planar_regions=planar_regions,
        series_description_text=(
            series_description_text
            or series_description(result.pipeline, result.algorithm, "SR no findings", revision)
        ),
        previous_versions=previous_versions,
        revision=revision,
    )


def write_sr(
    result: PipelineResult,
    *,
    segmentation: Dataset | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int | None = None,
    instance_number: int | None = None,
    planar_regions: bool = True,
    series_description_text: str | None = None,
    previous_versions: Sequence[PreviousVersion | Dataset] | None = None,
    revision: int = 0,
) -> hd.sr.Comprehensive3DSR:
    """Write the findings of ``result`` as a TID 1500 Comprehensive 3D SR.

    Parameters
    ----------
    result:
        The pipeline result; at least one finding.
    segmentation:
        The SEG written for the same result (:func:`~.seg.write_seg`); findings
        with a segment reference it (SEG SOP Instance UID + segment number,
        found by tracking UID).  Without it such findings get a TID 1501 group
        on the slices their segment covers.  The SEG is recorded as evidence.
    series_instance_uid, sop_instance_uid:
        UIDs fixed by the caller; generated when ``None``.
    series_number, instance_number:
        Defaults 9002 and 1.
    planar_regions:
        Add the TID 1410 cross-section group of each finding with a segment
        (default; OHIF needs it to draw the finding and to list it).
    series_description_text:
        Overrides the default SeriesDescription.
    previous_versions:
        Earlier SR(s) this one supersedes (:class:`PreviousVersion`, or
        datasets with the four UIDs), listed in the Predecessor Documents
        Sequence (PS3.3 C.17.2).
    revision:
        Revision number for the default SeriesDescription (``" (rev N)"``
        when > 0); 0 for a first version.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        Same study as the source, new series; PARTIAL / PRELIMINARY /
        UNVERIFIED.

    Raises
    ------
    ValueError
        When the result has no findings or holds inconsistent references.
    TypeError
        When ``segmentation`` is not a Segmentation dataset.
    """
    check_result(result)
    result = clean_result(result)  # invalid source values never reach the object
    if not result.findings:
        raise ValueError(
            "The result has no findings: there is nothing to report (its negative report: "
            "write_negative_sr)."
        )
    if segmentation is not None:
        if not isinstance(segmentation, Dataset) or "SegmentSequence" not in segmentation:
            raise TypeError('Argument "segmentation" must be a Segmentation dataset.')
        if segmentation.StudyInstanceUID != result.volume.source_datasets[0].StudyInstanceUID:
            raise ValueError('Argument "segmentation" belongs to another study.')
    if series_instance_uid is not None:
        check_uid(series_instance_uid, "series_instance_uid")
    if sop_instance_uid is not None:
        check_uid(sop_instance_uid, "sop_instance_uid")
    check_revision(revision)
    predecessors = previous_versions_of(previous_versions)

    algorithm = result.algorithm
    algo_id = algorithm_identification(algorithm)
    segments = {s.number: s for s in result.segments}
    heatmaps = list(getattr(result, "heatmaps", None) or ())
    groups: list[MeasurementGroup] = []
    for finding in result.findings:
        groups.extend(
            _finding_groups(
                result, finding, segmentation, segments, algo_id, planar_regions, heatmaps
            )
        )

    procedure = (
        to_code(result.procedure_reported)
        if result.procedure_reported is not None
        else default_procedure_reported(
            result.volume.modality or result.volume.source_datasets[0].get("Modality", "")
        )
    )
    sources: Sequence[Dataset] = result.volume.source_datasets
    library = _library_images(result, groups)
    enhanced = any("PerFrameFunctionalGroupsSequence" in ds for ds in library)
    # Radiographs without the attributes of highdicom's TID 1603 descriptors
    # (Patient Orientation, Imager Pixel Spacing: optional in CR) are listed
    # the same way.
    enhanced = enhanced or any(not _has_library_descriptors(ds) for ds in library)
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(result),
        procedure_reported=procedure,
        imaging_measurements=groups,
        referenced_images=None if enhanced else library,
    )
    if enhanced:
        # highdicom's TID 1602 descriptors read Image Plane attributes at the
        # top level, which enhanced images keep in functional groups: list
        # the images without descriptors (TID 1601 makes them optional).
        root = report[0].ContentSequence
        root.insert(len(root) - 1, _plain_image_library(result, library))
    evidence = list(sources) + ([segmentation] if segmentation is not None else [])
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        **identity_kwargs(  # type: ignore[arg-type]
            "SR",
            algorithm,
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
        ),
        is_complete=False,
        is_final=False,
        is_verified=False,
        contributing_equipment=[contributing_equipment(algorithm)],
        series_description=(
            series_description_text
            or series_description(result.pipeline, algorithm, "SR", revision)
        ),
        manufacturer_model_name=MANUFACTURER_MODEL_NAME,
        software_versions=SOFTWARE_VERSION,
        previous_versions=[p.as_dataset() for p in predecessors] or None,
    )
    if any(p.sop_instance_uid == sr.SOPInstanceUID for p in predecessors):
        raise ValueError("The SR cannot supersede itself: a previous version has its SOP UID.")
    logger.debug(
        "SR %s: %d measurement group(s), %d predecessor(s)",
        sr.SOPInstanceUID,
        len(groups),
        len(predecessors),
    )
    return sr


class SrWriter:
    """Result kind ``"sr"``: the TID 1500 Measurement Report (PS3.3 A.35.13).

    The findings report, referencing the segments of the SEG written before
    it; for a result with nothing to report, the negative report
    (:func:`write_negative_sr`) unless the context turns it off; nothing for
    a result whose segments are all it has.  The superseded SR(s) go in the
    Predecessor Documents Sequence.
    """

    kind = "sr"
    sop_class_uid = COMPREHENSIVE_3D_SR_SOP_CLASS_UID
    series_number = DEFAULT_SERIES_NUMBERS["SR"]

    def applies(self, result: PipelineResult, context: WriteContext) -> bool:
        """Whether there are findings, or a negative report to write."""
        if result.findings:
            return True
        if not nothing_to_report(result):
            logger.info(
                "no SR written: the %s result has segments but no findings", result.pipeline
            )
            return False
        if not context.negative_report:
            logger.info(
                "no SR written: the %s result has no findings; negative report disabled",
                result.pipeline,
            )
            return False
        return True

    def write(self, result: PipelineResult, context: WriteContext) -> list[Dataset]:
        """The findings report or the negative report."""
        u = context.uids_for(self.kind)
        common: dict[str, Any] = dict(
            series_instance_uid=u.series_instance_uid,
            sop_instance_uid=u.sop_instance_uid,
            series_number=u.series_number,
            instance_number=u.instance_number,
            previous_versions=list(context.predecessors) or None,
            revision=context.revision,
        )
        if result.findings:
            segs = context.written.get("seg")
            return [write_sr(result, segmentation=segs[0] if segs else None, **common)]
        logger.info("negative report: the %s result has no findings", result.pipeline)
        return [write_negative_sr(result, **common)]
