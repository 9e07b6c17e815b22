"""Pieces shared by the result writers (SEG, SR, SC).

* coded concepts of :mod:`ai_models.types` -> highdicom / pydicom codes;
* the algorithm as TID 4019 "Algorithm Identification" and as an item of the
  Contributing Equipment Sequence (PS3.3 C.7.5.1, Enhanced General Equipment);
* a Device UID derived from the weights' sha256, so that it changes whenever
  the weights change;
* series descriptions that say what made an object (and which revision);
* the UIDs and numbers of a result object, fixed by the caller, derived from
  a job's seed (:func:`derive_uid`, so a retried job repeats them) or
  generated at random.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

import dicom_node

if TYPE_CHECKING:
    from ai_models.types import AlgorithmInfo, CodedConcept, PipelineResult

logger = logging.getLogger(__name__)

__all__ = [
    "DEVICE_UID_PREFIX",
    "NOT_FOR_DIAGNOSIS",
    "OutputUIDs",
    "algorithm_identification",
    "algorithm_identification_sequence",
    "contributing_equipment",
    "derive_uid",
    "device_uid",
    "revision_parts",
    "revision_suffix",
    "seeded_uids",
    "series_description",
    "to_code",
    "default_procedure_reported",
    "MANUFACTURER_MODEL_NAME",
    "RADIOGRAPH_MODALITIES",
    "SOFTWARE_VERSION",
    "presentation_grey",
    "recorded_pixel_spacing",
]

#: Modalities whose grey levels follow the radiograph presentation pipeline.
RADIOGRAPH_MODALITIES = ("CR", "DX", "MG", "RG", "IO", "PX", "RF", "XA")

#: Prefix of the deterministic Device UIDs (pydicom's registered root for
#: generated UIDs; :func:`pydicom.uid.generate_uid` hashes the sources below it).
DEVICE_UID_PREFIX = "1.2.826.0.1.3680043.8.498."

#: Text appended to every series description and used in image comments.
NOT_FOR_DIAGNOSIS = "AI, not for diagnosis"

#: Manufacturer Model Name (0008,1090) of the objects this node writes.
MANUFACTURER_MODEL_NAME = "dicom-node"

#: Software Versions (0018,1020) of the objects this node writes.
SOFTWARE_VERSION = dicom_node.__version__

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def check_uid(value: str, name: str) -> str:
    """Return ``value`` when it is a valid UID (PS3.5 9.1), else raise.

    Raises
    ------
    TypeError
        When ``value`` is not a ``str``.
    ValueError
        When ``value`` is not a syntactically valid UID of at most 64 chars.
    """
    if not isinstance(value, str):
        raise TypeError(f'Argument "{name}" must be a str, got {type(value).__name__}.')
    if len(value) > 64 or not _UID_RE.match(value):
        raise ValueError(f'Argument "{name}" is not a valid UID: {value!r}.')
    return value


def to_code(concept: CodedConcept | hd.sr.CodedConcept) -> hd.sr.CodedConcept:
    """Convert an :class:`ai_models.types.CodedConcept` to a highdicom one.

    PS3.3 Section 8.8 (Code Sequence Macro).  highdicom concepts are returned
    unchanged.
    """
    if isinstance(concept, hd.sr.CodedConcept):
        return concept
    try:
        value = concept.value
        scheme = concept.scheme_designator
        meaning = concept.meaning
    except AttributeError as exc:
        raise TypeError(f"Expected a CodedConcept, got {type(concept).__name__}.") from exc
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def device_uid(algorithm: AlgorithmInfo) -> str:
    """A Device UID for the algorithm that changes when its weights change.

    Derived deterministically (a hash below :data:`DEVICE_UID_PREFIX`) from
    the algorithm name, version and ``weights_sha256``.  Used as the Device
    UID (0018,1002) of Contributing Equipment and as the Device Observer UID
    of the SR observer context (TID 1004).
    """
    sources = [
        "dicom-node-algorithm",
        algorithm.manufacturer,
        algorithm.name,
        algorithm.version,
        algorithm.weights_sha256.lower(),
    ]
    if not algorithm.weights_sha256:
        logger.debug(
            "algorithm %s has no weights sha256; Device UID from name/version", algorithm.name
        )
    return generate_uid(prefix=DEVICE_UID_PREFIX, entropy_srcs=sources)


def _algorithm_parameters(algorithm: AlgorithmInfo) -> list[str] | None:
    params = [str(p) for p in algorithm.parameters]
    if algorithm.weights_sha256:
        params.append(f"weights_sha256={algorithm.weights_sha256.lower()}")
    return params or None


def algorithm_identification(algorithm: AlgorithmInfo) -> hd.sr.AlgorithmIdentification:
    """TID 4019 "Algorithm Identification" content items for an SR.

    Family: (123110, DCM, "Artificial Intelligence") from CID 7162.
    """
    return hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=_algorithm_parameters(algorithm),
        family=codes.cid7162.ArtificialIntelligence,
        manufacturer=algorithm.manufacturer or None,
    )


def algorithm_identification_sequence(
    algorithm: AlgorithmInfo,
) -> hd.AlgorithmIdentificationSequence:
    """Segment Algorithm Identification (PS3.3 C.8.20.2, Table 10-19 macro)."""
    return hd.AlgorithmIdentificationSequence(
        name=algorithm.name,
        family=codes.cid7162.ArtificialIntelligence,
        version=algorithm.version,
        source=algorithm.manufacturer or None,
        parameters=_parameters_dict(_algorithm_parameters(algorithm) or []) or None,
    )


def _parameters_dict(params: list[str]) -> dict[str, str]:
    """``["a=1", "b"]`` -> ``{"a": "1", "p2": "b"}`` (Algorithm Parameters)."""
    out: dict[str, str] = {}
    for i, param in enumerate(params, 1):
        key, sep, value = param.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip()
        else:
            out[f"p{i}"] = param
    return out


def contributing_equipment(algorithm: AlgorithmInfo) -> hd.ContributingEquipment:
    """The algorithm as Contributing Equipment (PS3.3 C.12.1.1.5).

    Purpose of reference (109102, DCM, "Processing Equipment"); Manufacturer,
    Manufacturer's Model Name (the algorithm), Software Versions (its version)
    and Device UID from :func:`device_uid`.
    """
    item = hd.ContributingEquipment(
        manufacturer=algorithm.manufacturer or "unknown",
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        contribution_description=_clip(
            f"{algorithm.name} {algorithm.version} ({NOT_FOR_DIAGNOSIS})", 1024
        ),
    )
    item.DeviceUID = device_uid(algorithm)
    return item


def _clip(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1].rstrip() + "~"


def check_revision(revision: int) -> int:
    """Return ``revision`` when it is an int >= 0, else raise."""
    if isinstance(revision, bool) or not isinstance(revision, int):
        raise TypeError(f'Argument "revision" must be an int, got {revision!r}.')
    if not 0 <= revision < 2**31:
        raise ValueError(f'Argument "revision" must be >= 0, got {revision!r}.')
    return revision


def revision_suffix(revision: int) -> str:
    """``" (rev 2)"`` for a revision, ``""`` for the first version (0)."""
    return f" (rev {check_revision(revision)})" if revision else ""


def series_description(
    pipeline: str, algorithm: AlgorithmInfo, kind: str, revision: int = 0
) -> str:
    """SeriesDescription (LO, max 64 chars) that says what made the object.

    Example: ``"ct-lungs 0.1 SEG (AI, not for diagnosis)"``, and for a
    revision (a result that supersedes an earlier one of the same series)
    ``"ct-lungs 0.1 SEG (AI, not for diagnosis) (rev 2)"``.  When the text is
    too long the pipeline name is shortened first, then the version left
    out; never the disclaimer or the revision.
    """
    suffix = f" ({NOT_FOR_DIAGNOSIS}){revision_suffix(revision)}"
    tail = f" {algorithm.version} {kind}{suffix}"
    head = pipeline or algorithm.name
    room = 64 - len(tail)
    if room < 4:
        tail = f" {kind}{suffix}"
        room = 64 - len(tail)
        if room < 4:
            return _clip(f"{head}{tail}", 64)
    return _clip(head, room) + tail


#: Separates the parts hashed by :func:`derive_uid`; pydicom concatenates its
#: entropy sources, so without it ``("ab", "c")`` and ``("a", "bc")`` collide.
_PART_SEPARATOR = "\x1f"


def check_seed(seed: str) -> str:
    """Return ``seed`` when it is a non-empty ``str``, else raise."""
    if not isinstance(seed, str):
        raise TypeError(f'Argument "uid_seed" must be a str, got {type(seed).__name__}.')
    if not seed.strip():
        raise ValueError('Argument "uid_seed" must not be empty.')
    return seed


def derive_uid(seed: str, *parts: str) -> str:
    """A UID derived deterministically from a job's ``seed`` and ``parts``.

    ``pydicom.uid.generate_uid(entropy_srcs=[seed, *parts])`` (each part
    prefixed with a separator so that parts cannot run into each other): a
    SHA-512 hash below pydicom's UID root, at most 64 characters.  The same
    seed and parts always give the same UID, so a job retried after a crash
    writes objects with the UIDs of its first attempt.

    The result writers use ``(kind, role)`` and ``(kind, "sop", frame_key)``
    parts, e.g. ``derive_uid(seed, "seg", "series")``,
    ``derive_uid(seed, "sc", "sop", "1.2.3#4")``, followed by
    ``"revision N"`` for a revision N > 0 (see :func:`seeded_uids`).
    """
    check_seed(seed)
    sources = [seed, *(_PART_SEPARATOR + str(p) for p in parts)]
    return str(generate_uid(entropy_srcs=sources))


def default_procedure_reported(modality: str) -> hd.sr.CodedConcept:
    """Procedure Reported for TID 1500 when the pipeline gives none (CID 100)."""
    code = {
        "CT": codes.LN.CTUnspecifiedBodyRegion,
        "MR": codes.LN.MRIUnspecifiedBodyRegion,
        "PT": codes.cid100.PETUnspecifiedBodyRegion,
        "NM": codes.cid100.NMUnspecifiedBodyRegion,
        "CR": codes.cid100.XRUnspecifiedBodyRegion,
        "DX": codes.cid100.XRUnspecifiedBodyRegion,
    }.get((modality or "").upper(), codes.cid100.ImagingProcedure)
    return hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning)


@dataclass
class OutputUIDs:
    """UIDs and numbers of one result object, fixed by the caller or generated.

    The router stores the UIDs of a result in the database before sending so
    that a retried job produces the same objects; it passes them here.  Any
    value left ``None`` is generated (UIDs) or defaulted (numbers).

    Parameters
    ----------
    series_instance_uid:
        Series Instance UID (0020,000E) of the new series.
    sop_instance_uid:
        SOP Instance UID (0008,0018) of a single-instance object (SEG, SR).
    series_number:
        Series Number (0020,0011).
    instance_number:
        Instance Number (0020,0013) of the (first) instance.
    sop_instance_uids:
        Per-instance SOP Instance UIDs of a multi-instance series (SC overlay),
        keyed by the source SOP Instance UID (or source frame key
        ``"<uid>#<frame>"``) the instance was made from.
    """

    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    series_number: int | None = None
    instance_number: int | None = None
    sop_instance_uids: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("series_instance_uid", "sop_instance_uid"):
            value = getattr(self, name)
            if value is not None:
                check_uid(value, name)
        for name in ("series_number", "instance_number"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise TypeError(f'Argument "{name}" must be an int, got {value!r}.')
                if not 0 <= value < 2**31:
                    raise ValueError(f'Argument "{name}" is out of range: {value!r}.')
        for key, value in dict(self.sop_instance_uids).items():
            check_uid(value, f"sop_instance_uids[{key!r}]")

    def resolved(self, default_series_number: int) -> OutputUIDs:
        """A copy with every missing single-instance value filled in."""
        return OutputUIDs(
            series_instance_uid=self.series_instance_uid or hd.UID(),
            sop_instance_uid=self.sop_instance_uid or hd.UID(),
            series_number=(
                self.series_number if self.series_number is not None else default_series_number
            ),
            instance_number=self.instance_number if self.instance_number is not None else 1,
            sop_instance_uids=dict(self.sop_instance_uids),
        )


def revision_parts(revision: int) -> tuple[str, ...]:
    """Parts that :func:`derive_uid` adds for a revision N > 0: ``("revision N",)``."""
    return (f"revision {check_revision(revision)}",) if revision else ()


def seeded_uids(
    fixed: OutputUIDs,
    seed: str,
    kind: str,
    *,
    frame_keys: Iterable[str] = (),
    revision: int = 0,
) -> OutputUIDs:
    """``fixed`` with every UID it leaves open derived from ``seed``.

    Series Instance UID: ``derive_uid(seed, kind, "series")``; SOP Instance
    UID: ``derive_uid(seed, kind, "sop")``; for each of ``frame_keys`` (SC
    images, :func:`dicom_node.results.sc.frame_key`) not in
    ``fixed.sop_instance_uids``: ``derive_uid(seed, kind, "sop", key)``, so
    each image's UID depends on its source frame only, not on which or how
    many images are written.  A revision > 0 adds ``"revision N"`` to the
    parts, so that a seed reused by mistake for a revision never repeats the
    UIDs of the version it supersedes.  Numbers are left as they are.
    """
    check_seed(seed)
    extra = revision_parts(revision)
    per_image = dict(fixed.sop_instance_uids)
    for key in frame_keys:
        if key not in per_image:
            per_image[key] = derive_uid(seed, kind, "sop", key, *extra)
    return OutputUIDs(
        series_instance_uid=(
            fixed.series_instance_uid or derive_uid(seed, kind, "series", *extra)
        ),
        sop_instance_uid=fixed.sop_instance_uid or derive_uid(seed, kind, "sop", *extra),
        series_number=fixed.series_number,
        instance_number=fixed.instance_number,
        sop_instance_uids=per_image,
    )


#: Default Series Numbers of the result series, by kind (the router may fix
#: its own).  High numbers keep results after the acquired series in viewers.
DEFAULT_SERIES_NUMBERS = {"SEG": 9001, "SR": 9002, "SC": 9003}


def check_result(result: PipelineResult) -> None:
    """Cheap structural checks on a :class:`~ai_models.types.PipelineResult`.

    Raises
    ------
    ValueError
        When the volume has no source datasets, a mask does not match the
        volume grid, or segment numbers / tracking UIDs repeat.
    """
    volume = result.volume
    if not volume.source_datasets:
        raise ValueError("result.volume has no source_datasets to reference.")
    if len(volume.frames) != volume.shape[0]:
        raise ValueError(
            f"result.volume has {len(volume.frames)} frame references for {volume.shape[0]} slices."
        )
    numbers = [s.number for s in result.segments]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"Segment numbers repeat: {numbers}.")
    for seg in result.segments:
        if seg.mask.shape != volume.shape:
            raise ValueError(
                f"Mask of segment {seg.number} ({seg.label!r}) has shape "
                f"{seg.mask.shape}, the volume {volume.shape}."
            )
        check_uid(seg.tracking_uid, f"segment {seg.number} tracking_uid")
    for finding in result.findings:
        check_uid(finding.tracking_uid, f"finding {finding.tracking_id!r} tracking_uid")
        if finding.segment_number is not None and finding.segment_number not in numbers:
            raise ValueError(
                f"Finding {finding.tracking_id!r} refers to segment "
                f"{finding.segment_number}, which the result does not have."
            )


# Type 2 attributes of the Patient, General Study and Patient Study modules
# (PS3.3 C.7.1.1, C.7.2.1) that every derived object copies from its source.
# Real scanners omit some of them; the derived objects then carry them empty.
TYPE2_FROM_SOURCE = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def with_type2_attributes(ds: Dataset) -> Dataset:
    """*ds*, or a shallow copy of it with missing Type 2 patient/study attributes empty.

    The caller's dataset is never modified.
    """
    missing = [kw for kw in TYPE2_FROM_SOURCE if kw not in ds]
    if not missing:
        return ds
    copy = Dataset()
    copy.update(ds)  # new element dict; Dataset(ds) and copy.copy(ds) would share it
    if hasattr(ds, "file_meta"):
        copy.file_meta = ds.file_meta
    for kw in missing:
        setattr(copy, kw, "")
    return copy


def identity_kwargs(
    kind: str,
    algorithm: AlgorithmInfo,
    *,
    series_instance_uid: str | None,
    series_number: int | None,
    sop_instance_uid: str | None,
    instance_number: int | None,
) -> dict[str, object]:
    """Series/instance identity and manufacturer arguments shared by the writers.

    UIDs and numbers fixed by the caller are kept; the others are generated
    (UIDs) or defaulted (:data:`DEFAULT_SERIES_NUMBERS`, instance 1).
    """
    return {
        "series_instance_uid": series_instance_uid or hd.UID(),
        "series_number": (
            series_number if series_number is not None else DEFAULT_SERIES_NUMBERS[kind]
        ),
        "sop_instance_uid": sop_instance_uid or hd.UID(),
        "instance_number": instance_number if instance_number is not None else 1,
        "manufacturer": algorithm.manufacturer or "dicom-node",
    }


def presentation_grey(result: PipelineResult, k: int) -> np.ndarray | None:
    """Slice ``k`` of a radiograph as it is displayed, ``0..1``; ``None`` otherwise.

    PS3.3 C.11 (VOI LUT or window, then MONOCHROME1 inverted), through
    :func:`ai_models.radiograph.presentation_image`, for the modalities in
    :data:`RADIOGRAPH_MODALITIES` with one source instance per slice.  Other
    images have no single presentation; the writers choose a window.
    """
    volume = result.volume
    if (volume.modality or "").upper() not in RADIOGRAPH_MODALITIES:
        return None
    if len(volume.source_datasets) != volume.shape[0]:
        return None
    from ai_models.radiograph import presentation_image

    return np.asarray(presentation_image(volume.source_datasets[k], volume.array[k]))


def recorded_pixel_spacing(ds: Dataset) -> list[float] | None:
    """Pixel Spacing, else Imager Pixel Spacing (mm, row then column), when both
    values are > 0; ``None`` for an image with no recorded spacing (PS3.3 10.7.1)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            values = [float(v) for v in ds.get(keyword) or ()]
        except (TypeError, ValueError):
            continue
        if len(values) == 2 and min(values) > 0:
            return values
    return None
