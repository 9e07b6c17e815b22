"""What every Secondary Capture image of this node shares (PS3.3 A.8.1).

The outline overlays (:mod:`.sc`) and the heat maps (:mod:`.heatmap`) are
both single-frame RGB SC images in the result's SC series: the same checks
of the caller's UIDs, the same series identity (Series Number, first
Instance Number, SeriesDescription, Patient Orientation) and the same
image header (:func:`burned_in_image`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from dicom_node.results.common import (
    DEFAULT_SERIES_NUMBERS,
    MANUFACTURER_MODEL_NAME,
    SOFTWARE_VERSION,
    check_result,
    check_revision,
    check_uid,
    contributing_equipment,
    series_description,
)
from dicom_node.results.source_header import clean_result

if TYPE_CHECKING:
    from ai_models.types import FrameRef, PipelineResult

__all__ = [
    "NOT_FOR_DIAGNOSTIC_USE",
    "SECONDARY_CAPTURE_SOP_CLASS_UID",
    "ScSeries",
    "burned_in_image",
    "checked_result",
    "frame_key",
    "orientation_letter",
    "sc_series",
]

#: Secondary Capture Image Storage (PS3.4 B.5).
SECONDARY_CAPTURE_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.7"

#: Text of ImageComments and of the burned-in banner.
NOT_FOR_DIAGNOSTIC_USE = "AI overlay - NOT FOR DIAGNOSTIC USE"


def frame_key(ref: FrameRef) -> str:
    """Key of a source frame in ``sop_instance_uids``: ``uid`` or ``uid#frame``."""
    if ref.frame_number is None:
        return ref.sop_instance_uid
    return f"{ref.sop_instance_uid}#{ref.frame_number}"


def orientation_letter(vector: np.ndarray) -> str:
    """Main LPS direction of a unit vector as a Patient Orientation letter (PS3.3 C.7.6.1.1.1)."""
    axis = int(np.argmax(np.abs(vector)))
    positive = vector[axis] >= 0
    return ("L", "P", "H")[axis] if positive else ("R", "A", "F")[axis]


def checked_result(result: PipelineResult) -> PipelineResult:
    """``result`` checked (:func:`.common.check_result`) and with its source header
    cleaned (:func:`.source_header.clean_result`): invalid source values never
    reach an image."""
    check_result(result)
    return clean_result(result)


@dataclass(frozen=True)
class ScSeries:
    """The identity shared by the images of one SC series."""

    series_instance_uid: str
    series_number: int
    first_instance_number: int
    series_description: str
    patient_orientation: tuple[str, str]
    fixed_uids: dict[str, str] = field(default_factory=dict)


def sc_series(
    result: PipelineResult,
    what: str,
    *,
    series_instance_uid: str | None,
    sop_instance_uids: Mapping[str, str] | None,
    series_number: int | None,
    instance_number: int | None,
    series_description_text: str | None,
    revision: int,
) -> ScSeries:
    """Check the caller's UIDs and resolve the series identity of SC images.

    UIDs left open are generated, the Series Number defaults to
    ``DEFAULT_SERIES_NUMBERS["SC"]``, the first Instance Number to 1, the
    SeriesDescription says ``what`` made the images; Patient Orientation
    (PS3.3 C.7.6.1.1.1) follows the volume's row and column directions.

    Raises
    ------
    ValueError, TypeError
        For an invalid UID or revision.
    """
    if series_instance_uid is not None:
        check_uid(series_instance_uid, "series_instance_uid")
    check_revision(revision)
    fixed = dict(sop_instance_uids or {})
    for key, uid in fixed.items():
        check_uid(uid, f"sop_instance_uids[{key!r}]")
    volume = result.volume
    return ScSeries(
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number if series_number is not None else DEFAULT_SERIES_NUMBERS["SC"],
        first_instance_number=instance_number if instance_number is not None else 1,
        series_description=series_description_text
        or series_description(result.pipeline, result.algorithm, what, revision),
        patient_orientation=(
            orientation_letter(volume.direction[:, 2]),  # along a row (j)
            orientation_letter(volume.direction[:, 1]),  # down a column (i)
        ),
        fixed_uids=fixed,
    )


def _laterality(src: Dataset) -> str:
    """Laterality ``R``/``L`` of a source, or ``""``.

    From Laterality, Image Laterality or the Frame Anatomy macro's Frame
    Laterality (PS3.3 C.7.6.16.2.8).
    """
    values = [src.get("Laterality"), src.get("ImageLaterality")]
    shared = src.get("SharedFunctionalGroupsSequence")
    if shared and "FrameAnatomySequence" in shared[0]:
        values.append(shared[0].FrameAnatomySequence[0].get("FrameLaterality"))
    for value in values:
        if value in ("R", "L"):
            return str(value)
    return ""


def burned_in_image(
    result: PipelineResult,
    rgb: np.ndarray,
    source: Dataset,
    ref: FrameRef,
    *,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    instance_number: int,
    pixel_spacing: tuple[float, float] | None,
    patient_orientation: tuple[str, str],
    series_description: str,
    derivation: str,
) -> hd.sc.SCImage:
    """One RGB Secondary Capture image (PS3.3 A.8.1) made from ``source``'s frame ``ref``.

    Patient and study from the source; Body Part Examined and Laterality
    (General Series, Type 2C) copied, Laterality empty (unknown) when the
    body part is not recorded; BurnedInAnnotation YES, "not for diagnostic
    use", ConversionType WSD, DERIVED\\SECONDARY; ``derivation`` as the
    Derivation Description; the source frame in Source and Referenced Image
    Sequences.  Shared by the outline overlays and the heat maps.
    """
    sc = hd.sc.SCImage(
        pixel_array=rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        study_instance_uid=source.StudyInstanceUID,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=result.algorithm.manufacturer or "dicom-node",
        patient_id=source.get("PatientID"),
        patient_name=source.get("PatientName"),
        patient_birth_date=source.get("PatientBirthDate"),
        patient_sex=source.get("PatientSex") or None,
        accession_number=source.get("AccessionNumber"),
        study_id=source.get("StudyID"),
        study_date=source.get("StudyDate"),
        study_time=source.get("StudyTime"),
        referring_physician_name=source.get("ReferringPhysicianName"),
        pixel_spacing=pixel_spacing,
        patient_orientation=patient_orientation,
        contributing_equipment=[contributing_equipment(result.algorithm)],
        series_description=series_description,
        manufacturer_model_name=MANUFACTURER_MODEL_NAME,
        software_versions=SOFTWARE_VERSION,
    )
    # General Series Laterality is Type 2C (paired body parts): copied
    # with Body Part Examined; empty (= unknown) when the body part is.
    if source.get("BodyPartExamined"):
        sc.BodyPartExamined = source.BodyPartExamined
    laterality = _laterality(source)
    if laterality:
        sc.Laterality = laterality
    elif not source.get("BodyPartExamined"):
        # Without a body part the validator cannot tell an unpaired
        # structure: an empty value says "unknown" (Type 2C).
        sc.Laterality = ""
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = NOT_FOR_DIAGNOSTIC_USE
    sc.ConversionType = "WSD"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = derivation[:1024]
    ref_item = Dataset()
    ref_item.ReferencedSOPClassUID = ref.sop_class_uid
    ref_item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    if ref.frame_number is not None:
        ref_item.ReferencedFrameNumber = ref.frame_number
    sc.SourceImageSequence = DicomSequence([ref_item])
    sc.ReferencedImageSequence = DicomSequence([_copy(ref_item)])
    return sc


def _copy(item: Dataset) -> Dataset:
    new = Dataset()
    for elem in item:
        new.add(elem)
    return new
