"""Plain data types shared by the AI side and the result writers.

These are the contract between :mod:`ai_models` (which produces them) and
``dicom_node.results`` (which turns them into DICOM SEG / SR / SC objects).
They hold numpy arrays and strings only; no highdicom or pynetdicom types.

Coordinate conventions
----------------------
All patient coordinates are DICOM **LPS** millimetres (PS3.3 C.7.6.2.1.1).
A :class:`Volume` array is indexed ``[k, i, j]``:

* ``k`` -- slice index, ascending along the slice normal
  (``row_direction x column_direction``), i.e. sorted by the projection of
  ImagePositionPatient on the normal;
* ``i`` -- image row (moves along the *column* direction cosines, the second
  triplet of ImageOrientationPatient);
* ``j`` -- image column (moves along the *row* direction cosines, the first
  triplet of ImageOrientationPatient).

The position of the centre of voxel ``(k, i, j)`` is::

    origin + direction @ (spacing * [k, i, j])

``direction`` has the unit vectors of the three array axes as its columns,
in the same ``(k, i, j)`` order as ``spacing``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CodedConcept:
    """A coded concept: (code value, coding scheme designator, code meaning).

    PS3.3 Section 8.8 "Standard Attribute Sets for Code Sequence Attributes".
    """

    value: str
    scheme_designator: str
    meaning: str


@dataclass(frozen=True)
class FrameRef:
    """One source frame that a volume slice came from.

    ``frame_number`` is the 1-based frame of a multi-frame instance, ``None``
    for a single-frame instance.
    """

    sop_instance_uid: str
    sop_class_uid: str
    frame_number: int | None = None


@dataclass
class Volume:
    """A 3D image with its geometry in LPS (see the module docstring).

    Attributes
    ----------
    array:
        ``(n_slices, rows, columns)`` float32; modality LUT applied
        (Hounsfield units for CT).
    origin:
        ``(3,)`` LPS mm of the centre of voxel ``(0, 0, 0)``
        (the ImagePositionPatient of slice 0).
    spacing:
        ``(3,)`` mm between voxel centres along ``(k, i, j)``: slice spacing,
        PixelSpacing[0] (row spacing), PixelSpacing[1] (column spacing).
    direction:
        ``(3, 3)`` unit column vectors of the ``k``, ``i`` and ``j`` axes.
    frames:
        One :class:`FrameRef` per slice ``k``: where that slice came from.
    source_datasets:
        The source instances (pydicom ``Dataset``), in slice order, one per
        SOP instance (a multi-frame instance appears once).
    modality, study_instance_uid, series_instance_uid, frame_of_reference_uid:
        Copied from the source.
    """

    array: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray
    frames: list[FrameRef]
    source_datasets: list[Any]
    modality: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    frame_of_reference_uid: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(n_slices, rows, columns)``."""
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix mapping ``(k, i, j, 1)`` to LPS ``(x, y, z, 1)``."""
        a = np.eye(4)
        a[:3, :3] = self.direction * np.asarray(self.spacing, dtype=float)[None, :]
        a[:3, 3] = self.origin
        return a

    def index_to_lps(self, kij: np.ndarray) -> np.ndarray:
        """Map ``(..., 3)`` voxel indices ``(k, i, j)`` to LPS mm."""
        kij = np.asarray(kij, dtype=float)
        return kij @ (self.direction * np.asarray(self.spacing)[None, :]).T + self.origin

    def lps_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """Map ``(..., 3)`` LPS mm to (fractional) voxel indices ``(k, i, j)``."""
        m = self.direction * np.asarray(self.spacing)[None, :]
        return (np.asarray(xyz, dtype=float) - self.origin) @ np.linalg.inv(m).T

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm^3."""
        return float(np.prod(self.spacing))


@dataclass
class Segment:
    """One segment of a segmentation result, on the volume's grid.

    PS3.3 C.8.20.4 "Segment Description Macro".  ``mask`` is a boolean
    ``(n_slices, rows, columns)`` array aligned with :attr:`Volume.array`.
    Each finding (e.g. each nodule) is its own segment with its own tracking
    identifier and UID.
    """

    number: int
    label: str
    category: CodedConcept
    type: CodedConcept
    mask: np.ndarray
    tracking_id: str
    tracking_uid: str
    anatomic_region: CodedConcept | None = None
    anatomic_region_modifier: CodedConcept | None = None
    color_rgb: tuple[int, int, int] | None = None
    type_modifier: CodedConcept | None = None
    """Segmented Property Type Modifier (e.g. laterality, SCT 7771000 Left)."""


@dataclass
class Measurement:
    """A numeric measurement (TID 300): concept name, value, UCUM unit."""

    name: CodedConcept
    value: float
    unit: CodedConcept


@dataclass
class QualitativeEvaluation:
    """A coded evaluation (TID 1500 row "Qualitative Evaluation")."""

    name: CodedConcept
    value: CodedConcept


@dataclass
class Finding:
    """One finding to report in a TID 1500 measurement group (TID 1411/1410).

    ``segment_number`` refers to a :class:`Segment` of the same result (the SR
    then references that SEG segment); ``None`` for a finding with no
    segmentation (e.g. a classification).
    """

    tracking_id: str
    tracking_uid: str
    finding_type: CodedConcept
    finding_site: CodedConcept | None = None
    segment_number: int | None = None
    measurements: list[Measurement] = field(default_factory=list)
    qualitative_evaluations: list[QualitativeEvaluation] = field(default_factory=list)


@dataclass
class ClassificationFinding(Finding):
    """An image-level classification: presence and probability of a finding.

    Reported as a TID 1500 measurement group without a segment (TID 1501):
    the writer adds the probability as a measurement (UCUM ``%``) and the
    presence (probability >= ``threshold``) as a qualitative evaluation, to
    any ``measurements`` and ``qualitative_evaluations`` given, and
    references the classified image(s) as the group's source images.

    Attributes
    ----------
    probability:
        The classifier's output for the finding, ``0..1``.
    threshold:
        Operating point: the finding is reported present when
        ``probability >= threshold``.
    source_frames:
        Volume slices ``k`` the classification was made on (the writer
        references their source frames); empty: the writer's default
        (all slices of a small series).
    """

    probability: float = 0.0
    threshold: float = 0.5
    source_frames: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        p, t = float(self.probability), float(self.threshold)
        if not (np.isfinite(p) and 0.0 <= p <= 1.0):
            raise ValueError(f"probability of {self.tracking_id!r} must be in 0..1, got {p!r}")
        if not (np.isfinite(t) and 0.0 <= t <= 1.0):
            raise ValueError(f"threshold of {self.tracking_id!r} must be in 0..1, got {t!r}")

    @property
    def present(self) -> bool:
        """``probability >= threshold``."""
        return float(self.probability) >= float(self.threshold)


@dataclass
class DetectionFinding(Finding):
    """A finding located by a box on one source image (object detection).

    Reported as a TID 1500 planar ROI group (TID 1410) whose region is the
    box as a closed POLYLINE of 5 points on the source image, with the score
    as a measurement (122157, DCM, "Probability"), UCUM ``1``; drawn by the
    presentation state writer (GSPS) as the box with a text label
    (:attr:`display_label`).

    Attributes
    ----------
    frame_index:
        The volume slice ``k`` the box lies on.
    box:
        ``(x0, y0, x1, y1)`` image coordinates on that slice (PS3.3
        C.18.6.1.1: column, row; ``(0, 0)`` is the top left corner of the top
        left pixel, ``(columns, rows)`` the bottom right corner of the bottom
        right pixel), ``x0 < x1``, ``y0 < y1``.
    score:
        The detector's confidence, ``0..1``.
    label:
        Display name, e.g. ``"Mass 1"`` (default: the tracking identifier).
    laterality:
        Modifier of the finding site (CID 244 "Laterality"), e.g.
        (7771000, SCT, "Left"); ``None`` when unknown.
    """

    frame_index: int = 0
    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    score: float = 0.0
    label: str = ""
    laterality: CodedConcept | None = None

    def __post_init__(self) -> None:
        s = float(self.score)
        if not (np.isfinite(s) and 0.0 <= s <= 1.0):
            raise ValueError(f"score of {self.tracking_id!r} must be in 0..1, got {s!r}")
        box = tuple(float(v) for v in self.box)
        if len(box) != 4 or not all(np.isfinite(box)):
            raise ValueError(f"box of {self.tracking_id!r} must be 4 finite numbers, got {box!r}")
        if not (box[0] < box[2] and box[1] < box[3]):
            raise ValueError(f"box of {self.tracking_id!r} must have x0 < x1 and y0 < y1: {box!r}")
        if int(self.frame_index) < 0:
            raise ValueError(f"frame_index of {self.tracking_id!r} must be >= 0")
        self.box = box  # type: ignore[assignment]

    @property
    def display_label(self) -> str:
        """``"Mass 1 (0.87)"``: label (or tracking identifier) and score."""
        return f"{self.label or self.tracking_id} ({float(self.score):.2f})"

    def polyline(self) -> np.ndarray:
        """``(5, 2)`` float32 ``(column, row)``: the box as a closed polyline,
        clockwise on screen from the top left corner."""
        x0, y0, x1, y1 = self.box
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


@dataclass
class HeatMap:
    """An explanation map (e.g. Grad-CAM) of one finding on one source slice.

    Turned into an opt-in overlay (Secondary Capture with the map blended
    over the image) by ``dicom_node.results.heatmap``.

    Attributes
    ----------
    label:
        Human-readable finding name, e.g. ``"Pleural effusion"``.
    tracking_id, tracking_uid:
        Those of the finding it explains (same as its :class:`Finding`).
    frame_index:
        The volume slice ``k`` it lies on.
    map:
        ``(rows, columns)`` float32 in ``0..1`` on that slice's grid
        (1 = most relevant to the finding's score).
    probability:
        The finding's probability, for the overlay's caption (``None``: not
        shown).
    present:
        Whether the finding was reported present (``None``: not shown).
    method:
        How the map was made, e.g. ``"Grad-CAM"``.
    """

    label: str
    tracking_id: str
    tracking_uid: str
    frame_index: int
    map: np.ndarray
    probability: float | None = None
    present: bool | None = None
    method: str = "Grad-CAM"


@dataclass(frozen=True)
class AlgorithmInfo:
    """Who made the result (TID 4019 "Algorithm Identification").

    ``weights_sha256`` identifies the exact weights; the writers derive the
    Device UID of Contributing Equipment from it, so it changes whenever the
    weights change.
    """

    name: str
    version: str
    manufacturer: str = "dicom-node"
    weights_sha256: str = ""
    parameters: tuple[str, ...] = ()


@dataclass
class PipelineResult:
    """Everything a pipeline produced for one series."""

    pipeline: str
    volume: Volume
    algorithm: AlgorithmInfo
    segments: list[Segment] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    procedure_reported: CodedConcept | None = None
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    heatmaps: list[HeatMap] = field(default_factory=list)
    """Explanation maps (opt-in Secondary Capture overlays, output kind ``"sc"``)."""
