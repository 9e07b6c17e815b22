"""A job's preview for the web console: source slices with its findings drawn, as one PNG.

Rendered on the server, so the console shows what a job found without a
DICOM viewer.  Pure rendering: the caller reads the job's files from the
database (:class:`PreviewSource`) and serves the bytes of
:func:`render_preview`.

What one preview shows
----------------------
Up to ``slices`` tiles side by side, each ``size`` x ``size`` pixels with a
caption line under it (slice number / instance number, then the names of
what is drawn, each after a swatch of its colour):

* **Source slices**, in slice order: those with the most finding (pixels of
  SEG segments plus the areas of SR / presentation-state regions on them),
  else, when nothing was drawn on the series, the middle slice (and slices
  spread evenly around it).  Grey levels as a viewer shows them
  (:func:`display_grey`): Modality LUT (PS3.3 C.11.1; per frame for enhanced
  images, C.7.6.16.2.9), VOI LUT or window (PS3.3 C.11.2; per frame,
  C.7.6.16.2.10), MONOCHROME1 inverted (C.7.6.3.1.2); colour images as
  they are.
* **Over them**: SEG segments (PS3.3 C.8.20) as one-pixel outlines (the mask
  minus its erosion, :func:`outline`) in each segment's Recommended Display
  CIELab Value, else a palette colour; SR planar regions (TID 1500 /
  PS3.3 C.18.6 SCOORD: POINT, MULTIPOINT, POLYLINE, CIRCLE, ELLIPSE on a
  referenced image; C.18.9 SCOORD3D mapped back to the slice it lies on
  through the image geometry) and presentation-state graphics (PS3.3
  C.10.5 Graphic Annotation) as lines in :data:`SR_COLOUR` and the graphic
  layer's colour.  SEG frames are matched to source slices by the Referenced
  SOP Instance UID (and frame) of their Derivation Image Sequence, else by
  their Image Position (Patient).
* **Heat maps**: a job that wrote explanation maps as Secondary Capture
  images (result kind ``"sc"``, :mod:`dicom_node.results.heatmap`) has those
  images shown as tiles themselves, after the source slices (at least one
  source slice stays when ``slices`` > 1).  The burned-in outline images of
  the same kind are shown only when no SEG, SR or presentation state gives
  anything to draw.

Speed: the headers of the source files are read without their pixels, and
only the slices drawn are decoded; a BINARY SEG is counted per frame on its
packed bits.  Compressed sources decode through pydicom's plug-ins
(pylibjpeg, or GDCM when installed).  Drawing and PNG encoding need Pillow.

Nothing to show -- no source file left (removed by retention), none an
image, none decodable -- raises :class:`PreviewUnavailable` with a reason a
person can read.
"""

from __future__ import annotations

import io
import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, iter_pixels
from pydicom.pixels import pixel_array as decode_pixels
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_node.results.seg import SEGMENT_PALETTE

if TYPE_CHECKING:
    from PIL import Image as PILImage

logger = logging.getLogger(__name__)

__all__ = [
    "GSPS_COLOUR",
    "MAX_SIZE",
    "MAX_SLICES",
    "PALETTE",
    "SR_COLOUR",
    "PreviewSlice",
    "PreviewSource",
    "PreviewUnavailable",
    "TilePlacement",
    "caption_height",
    "display_grey",
    "modality_values",
    "outline",
    "preview_slices",
    "render_preview",
    "tile_placement",
]

RGB = tuple[int, int, int]

MAX_SLICES = 16
"""Most tiles one preview may have."""
MAX_SIZE = 2048
"""Largest tile side in pixels."""

SR_COLOUR: RGB = (0, 200, 255)
"""Colour of SR regions (SCOORD / SCOORD3D)."""
GSPS_COLOUR: RGB = (255, 160, 0)
"""Colour of presentation-state graphics whose layer recommends none."""
PALETTE: tuple[RGB, ...] = SEGMENT_PALETTE
"""Segment colours when a SEG recommends none (the SEG writer's palette)."""

_BACKGROUND: RGB = (0, 0, 0)
_CAPTION_BACKGROUND: RGB = (32, 32, 32)
_CAPTION_TEXT: RGB = (230, 230, 230)

_SEG_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
        "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation Storage
    }
)
_SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
_PR_CLASSES = frozenset(  # presentation states with the Graphic Annotation module
    {f"1.2.840.10008.5.1.4.1.1.11.{n}" for n in (1, 2, 3, 4)}
)
_SC_CLASSES = frozenset(
    {"1.2.840.10008.5.1.4.1.1.7", *(f"1.2.840.10008.5.1.4.1.1.7.{n}" for n in (1, 2, 3, 4))}
)
_NOT_SOURCE_CLASSES = _SEG_CLASSES | _PR_CLASSES
_TRACKING_IDENTIFIER = "112039"  # (112039, DCM, "Tracking Identifier")
_TRACKING_UID = "112040"  # (112040, DCM, "Tracking Unique Identifier")
_COMMENT = "121106"  # (121106, DCM, "Comment")
_CORNERSTONE_TOOL = "Cornerstone3DTools"
_HEATMAP_RE = re.compile(r"explanation map of (['\"])(?P<label>.*?)\1", re.IGNORECASE)
_DEFER_SIZE = 1 << 16
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


@dataclass(frozen=True)
class PreviewSource:
    """What a job's preview is made from, as read from the database.

    Attributes
    ----------
    source_paths:
        The source series' instance files, in any order (missing files are
        skipped: retention may have removed them).
    result_paths:
        ``(kind, path)`` of the job's result files (``"seg"``, ``"sr"``,
        ``"gsps"``, ``"sc"``, ... see :mod:`dicom_node.results.registry`).
        Each file is recognised by its SOP Class; others are ignored.
    """

    source_paths: Sequence[Path]
    result_paths: Sequence[tuple[str, Path]]


class PreviewUnavailable(Exception):
    """Nothing can be rendered; :attr:`reason` says why, for a person to read."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PreviewSlice:
    """One source slice (frame) a preview shows."""

    index: int
    """0-based position in the series' slice order (by position along the normal)."""
    total: int
    """Slices (frames) in the series."""
    path: Path
    sop_instance_uid: str
    frame_number: int | None
    """1-based frame of a multi-frame instance; ``None`` for a single-frame one."""
    instance_number: int | None
    finding: float
    """Amount drawn on it: SEG pixels plus region areas (source pixels); 0 for none."""


@dataclass(frozen=True)
class TilePlacement:
    """Where an image of ``rows`` x ``columns`` pixels lies in a square tile.

    The image keeps its physical aspect (Pixel Spacing) and is centred:
    ``width`` x ``height`` tile pixels from ``(left, top)``.
    """

    rows: int
    columns: int
    width: int
    height: int
    left: int
    top: int

    def to_tile(self, points: np.ndarray) -> np.ndarray:
        """Image coordinates ``(n, 2)`` (column, row; ``(0, 0)`` the top left corner
        of the top left pixel, PS3.3 C.18.6.1.1) -> continuous tile coordinates."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return np.column_stack(
            (
                self.left + pts[:, 0] * (self.width / self.columns),
                self.top + pts[:, 1] * (self.height / self.rows),
            )
        )

    def source_rows(self) -> np.ndarray:
        """For each tile row of the image, the source row whose area holds its centre."""
        return _nearest(self.height, self.rows)

    def source_columns(self) -> np.ndarray:
        """For each tile column of the image, the source column (nearest neighbour)."""
        return _nearest(self.width, self.columns)

    def scaled_mask(self, mask: np.ndarray) -> np.ndarray:
        """A ``(rows, columns)`` mask resampled to ``(height, width)`` (nearest neighbour)."""
        return np.asarray(mask, dtype=bool)[np.ix_(self.source_rows(), self.source_columns())]


def _nearest(n_out: int, n_in: int) -> np.ndarray:
    idx = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.intp)
    return np.clip(idx, 0, n_in - 1)


def tile_placement(
    rows: int, columns: int, pixel_spacing: tuple[float, float] | None, size: int
) -> TilePlacement:
    """Fit an image into a ``size`` x ``size`` tile, keeping its physical aspect.

    ``pixel_spacing`` is (row spacing, column spacing) in mm (PS3.3 10.7.1.3);
    ``None`` means square pixels.  The longer physical side fills the tile.
    """
    row_mm, col_mm = pixel_spacing if pixel_spacing else (1.0, 1.0)
    height_mm, width_mm = rows * row_mm, columns * col_mm
    scale = size / max(height_mm, width_mm)
    width = int(np.clip(round(width_mm * scale), 1, size))
    height = int(np.clip(round(height_mm * scale), 1, size))
    return TilePlacement(rows, columns, width, height, (size - width) // 2, (size - height) // 2)


def caption_height(size: int) -> int:
    """Height in pixels of the caption line under a tile of ``size``."""
    return max(14, size // 20)


def outline(mask: np.ndarray) -> np.ndarray:
    """The boundary of a 2D mask: the mask XOR its erosion (4-neighbourhood).

    Pixels on the image border count as boundary (outside is background).
    """
    m = np.asarray(mask, dtype=bool)
    inner = np.zeros_like(m)
    if m.shape[0] > 2 and m.shape[1] > 2:
        inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m & ~inner


# --------------------------------------------------------------------------- source frames


@dataclass
class _Frame:
    path: Path
    header: Dataset
    uid: str
    frame: int | None
    instance_number: int | None
    rows: int
    cols: int
    position: np.ndarray | None
    row_dir: np.ndarray | None
    col_dir: np.ndarray | None
    spacing: tuple[float, float] | None
    frame_of_reference: str

    @property
    def normal(self) -> np.ndarray | None:
        if self.row_dir is None or self.col_dir is None:
            return None
        return np.cross(self.row_dir, self.col_dir)


def _floats(value: Any, n: int) -> np.ndarray | None:
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) and np.all(np.isfinite(out)) else None


def _numbers(ds: Dataset, keyword: str, n: int) -> np.ndarray | None:
    """The ``n`` values of a decimal string attribute (PS3.5 6.2 DS), from its raw
    bytes while pydicom has not converted it (its per-value DS validation costs
    more than reading the header)."""
    elem = ds.get_item(keyword)
    if elem is None:
        return None
    value = elem.value
    if isinstance(value, bytes) and elem.VR in (None, "DS", "IS"):
        return _floats(value.decode("ascii", "replace").strip("\x00 ").split("\\"), n)
    return _floats(ds.get(keyword), n)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _group_item(ds: Dataset, frame: int | None, sequence: str) -> Dataset | None:
    """The first item of a functional group macro for a frame: per-frame, else shared
    (PS3.3 C.7.6.16, Multi-frame Functional Groups)."""
    holders: list[Dataset] = []
    if frame is not None:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
        if 0 < frame <= len(per_frame):
            holders.append(per_frame[frame - 1])
    holders.extend(ds.get("SharedFunctionalGroupsSequence") or [])
    for holder in holders:
        items = holder.get(sequence)
        if items:
            return items[0]  # type: ignore[no-any-return]
    return None


def _frames_of(path: Path, ds: Dataset) -> list[_Frame]:
    """The frames of one source instance, with their geometry (PS3.3 C.7.6.2)."""
    rows, cols = _int(ds.get("Rows")), _int(ds.get("Columns"))
    uid = str(ds.get("SOPInstanceUID", "") or "")
    if not rows or not cols or not uid:
        return []
    n = _int(ds.get("NumberOfFrames")) or 1
    enhanced = "PerFrameFunctionalGroupsSequence" in ds
    numbers: list[int | None] = list(range(1, n + 1)) if n > 1 or enhanced else [None]
    out = []
    for f in numbers:
        position = _numbers(ds, "ImagePositionPatient", 3)
        orientation = _numbers(ds, "ImageOrientationPatient", 6)
        spacing = _numbers(ds, "PixelSpacing", 2)
        if f is not None or "SharedFunctionalGroupsSequence" in ds:
            item = _group_item(ds, f, "PlanePositionSequence")
            if item is not None:
                position = _numbers(item, "ImagePositionPatient", 3)
            item = _group_item(ds, f, "PlaneOrientationSequence")
            if item is not None:
                orientation = _numbers(item, "ImageOrientationPatient", 6)
            item = _group_item(ds, f, "PixelMeasuresSequence")
            if item is not None:
                spacing = _numbers(item, "PixelSpacing", 2)
        if spacing is None:
            spacing = _numbers(ds, "ImagerPixelSpacing", 2)
        if spacing is not None and spacing.min() <= 0:
            spacing = None
        row_dir = col_dir = None
        if orientation is not None:
            row_dir, col_dir = orientation[:3], orientation[3:]
            if not (0.9 < np.linalg.norm(row_dir) < 1.1 and 0.9 < np.linalg.norm(col_dir) < 1.1):
                row_dir = col_dir = None
        out.append(
            _Frame(
                path=path,
                header=ds,
                uid=uid,
                frame=f,
                instance_number=_int(ds.get("InstanceNumber")),
                rows=rows,
                cols=cols,
                position=position,
                row_dir=row_dir,
                col_dir=col_dir,
                spacing=(float(spacing[0]), float(spacing[1])) if spacing is not None else None,
                frame_of_reference=str(ds.get("FrameOfReferenceUID", "") or ""),
            )
        )
    return out


def _read_header(path: Path, *, pixels: bool = False) -> Dataset | None:
    """The data set without Pixel Data; with ``pixels``, whole but with its large
    values (Pixel Data) read from the file only when used."""
    try:
        if pixels:
            return pydicom.dcmread(path, defer_size=_DEFER_SIZE)
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - a damaged file raises many kinds
        logger.info("preview: %s is not readable DICOM (%s)", path.name, type(exc).__name__)
        return None


def _slice_order(frames: list[_Frame]) -> list[_Frame]:
    """Frames sorted along the common normal when all share an orientation,
    else by Instance Number and frame number."""
    normals = [f.normal for f in frames]
    first = normals[0] if normals else None
    if first is not None and all(
        n is not None and f.position is not None and abs(float(np.dot(n, first))) > 0.99
        for n, f in zip(normals, frames, strict=True)
    ):
        return sorted(
            frames,
            key=lambda f: (float(np.dot(f.position, first)), f.instance_number or 0, f.frame or 0),  # type: ignore[arg-type]
        )
    return sorted(
        frames,
        key=lambda f: (
            f.instance_number if f.instance_number is not None else 1 << 31,
            f.frame or 0,
            str(f.path),
        ),
    )


class _Series:
    """The source frames in slice order, found by SOP Instance UID and frame."""

    def __init__(self, frames: list[_Frame]) -> None:
        self.frames = frames
        self._by_uid: dict[str, list[int]] = {}
        for i, f in enumerate(frames):
            self._by_uid.setdefault(f.uid, []).append(i)
        self._geometry: tuple[np.ndarray, ...] | None = None

    def __len__(self) -> int:
        return len(self.frames)

    def resolve(self, uid: str, frame_numbers: Sequence[int] | None) -> list[int]:
        """Indices of the frames an image reference points at (all frames of a
        multi-frame instance when the reference names none)."""
        found = self._by_uid.get(uid, [])
        if not frame_numbers:
            return list(found)
        wanted = {int(n) for n in frame_numbers}
        return [i for i in found if (self.frames[i].frame or 1) in wanted]

    def _planes(self) -> tuple[np.ndarray, ...]:
        if self._geometry is None:
            ok = [
                i for i, f in enumerate(self.frames)
                if f.position is not None and f.normal is not None and f.spacing is not None
            ]  # fmt: skip
            idx = np.array(ok, dtype=np.intp)
            pos = np.array([self.frames[i].position for i in ok]).reshape(-1, 3)
            nor = np.array([self.frames[i].normal for i in ok]).reshape(-1, 3)
            offsets = np.sort(np.einsum("ij,ij->i", pos, nor)) if len(ok) else np.zeros(0)
            gaps = np.diff(offsets)
            gaps = gaps[gaps > 1e-3]
            tol = 1.0
            if gaps.size:
                tol = 0.5 * float(np.median(gaps))
            elif ok:
                thickness = _first(self.frames[ok[0]].header.get("SliceThickness"))
                tol = 0.5 * thickness if thickness and thickness > 0 else 1.0
            self._geometry = (idx, pos, nor, np.array([tol]))
        return self._geometry

    def project(self, points: np.ndarray, frame_of_reference: str) -> tuple[int, np.ndarray] | None:
        """The frame a set of 3D patient points (mm, PS3.3 C.18.9) lies on, and the
        points as image coordinates there; ``None`` when no frame is within half a
        slice gap of their centre."""
        idx, pos, nor, tol = self._planes()
        if not idx.size:
            return None
        keep = np.array(
            [
                not frame_of_reference
                or not self.frames[i].frame_of_reference
                or self.frames[i].frame_of_reference == frame_of_reference
                for i in idx
            ]
        )
        if not keep.any():
            return None
        centre = points.mean(axis=0)
        dist = np.abs(np.einsum("ij,ij->i", centre[None] - pos, nor))
        dist[~keep] = np.inf
        best = int(np.argmin(dist))
        if not dist[best] <= tol[0]:
            return None
        frame = self.frames[int(idx[best])]
        assert frame.row_dir is not None and frame.col_dir is not None
        assert frame.position is not None and frame.spacing is not None
        rel = points - frame.position
        x = rel @ frame.row_dir / frame.spacing[1] + 0.5
        y = rel @ frame.col_dir / frame.spacing[0] + 0.5
        return int(idx[best]), np.column_stack((x, y))

    def at_position(self, position: np.ndarray, rows: int, cols: int) -> int | None:
        """The frame whose Image Position (Patient) is ``position`` (within half a
        pixel), for a SEG frame without a usable source reference."""
        idx, pos, _nor, _tol = self._planes()
        if not idx.size:
            return None
        dist = np.linalg.norm(pos - position[None], axis=1)
        best = int(np.argmin(dist))
        frame = self.frames[int(idx[best])]
        assert frame.spacing is not None
        if dist[best] > 0.5 * min(frame.spacing) or (frame.rows, frame.cols) != (rows, cols):
            return None
        return int(idx[best])


def _source_series(paths: Sequence[Path]) -> _Series:
    existing = [Path(p) for p in paths if Path(p).is_file()]
    if not existing:
        raise PreviewUnavailable(
            "The source images of this job are no longer stored on the node "
            "(they may have been removed by the retention policy)."
        )
    frames: list[_Frame] = []
    seen: set[tuple[str, int | None]] = set()
    for path in existing:
        ds = _read_header(path)
        if ds is None or str(ds.get("SOPClassUID", "")) in _NOT_SOURCE_CLASSES:
            continue
        for f in _frames_of(path, ds):
            if (f.uid, f.frame) not in seen:
                seen.add((f.uid, f.frame))
                frames.append(f)
    if not frames:
        raise PreviewUnavailable(
            f"None of the {len(existing)} stored source file(s) holds an image to show."
        )
    return _Series(_slice_order(frames))


# --------------------------------------------------------------------------- grey levels


def modality_values(stored: np.ndarray, header: Dataset, frame: int | None = None) -> np.ndarray:
    """Stored values -> Modality LUT output (PS3.3 C.11.1), float32.

    An enhanced image's frame uses its Pixel Value Transformation (PS3.3
    C.7.6.16.2.9, per-frame or shared); other images Rescale Slope /
    Intercept or the Modality LUT Sequence (pydicom's ``apply_modality_lut``).
    """
    item = _group_item(header, frame, "PixelValueTransformationSequence")
    if item is not None and "RescaleSlope" in item:
        slope = float(item.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(item.get("RescaleIntercept", 0.0) or 0.0)
        return (stored.astype(np.float32) * slope + intercept).astype(np.float32)
    try:
        return np.asarray(apply_modality_lut(stored, header), dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - a bad Modality LUT: show stored values
        logger.info("preview: Modality LUT not applied (%s)", type(exc).__name__)
        return stored.astype(np.float32)


def _first(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray | None:
    """A VOI window to ``0..1`` (PS3.3 C.11.2.1.2.1 LINEAR, C.11.2.1.3.2 LINEAR_EXACT,
    C.11.2.1.3.1 SIGMOID); ``None`` for an unusable width."""
    function = (function or "LINEAR").strip().upper()
    if function == "SIGMOID" and width > 0:
        return (1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))).astype(np.float32)
    if function == "LINEAR_EXACT" and width > 0:
        return np.clip((values - center) / width + 0.5, 0.0, 1.0).astype(np.float32)
    if width < 1.0:
        return None
    if width == 1.0:
        return (values >= center - 0.5).astype(np.float32)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0).astype(np.float32)


def _inverted(header: Dataset) -> bool:
    """MONOCHROME1 (minimum shown white, PS3.3 C.7.6.3.1.2), or Presentation LUT
    Shape INVERSE on a MONOCHROME2 image (C.11.6.1.2)."""
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "MONOCHROME1":
        return True
    return str(header.get("PresentationLUTShape", "") or "").strip().upper() == "INVERSE"


def display_grey(values: np.ndarray, header: Dataset, frame: int | None = None) -> np.ndarray:
    """Modality LUT output -> grey levels as shown, ``0..1`` float32, dense bright.

    The VOI of the frame (an enhanced image's Frame VOI LUT, PS3.3
    C.7.6.16.2.10), else the image's first VOI LUT Sequence item (PS3.3
    C.11.2.1.1, pydicom's ``apply_voi_lut``; its output scaled by the LUT's
    range) or first Window Center / Width with its VOI LUT Function
    (C.11.2.1.2); without a usable one, the 0.5-99.5 percentiles.
    MONOCHROME1 is inverted.
    """
    values = np.asarray(values, dtype=np.float32)
    out: np.ndarray | None = None
    item = _group_item(header, frame, "FrameVOILUTSequence") if frame is not None else None
    holders = [h for h in (item, header) if h is not None]
    for holder in holders:
        center, width = _first(holder.get("WindowCenter")), _first(holder.get("WindowWidth"))
        if holder is header and header.get("VOILUTSequence"):
            try:
                lut = header.VOILUTSequence[0]
                data = np.asarray(lut.LUTData, dtype=np.float64).ravel()
                lo, hi = float(data.min()), float(data.max())
                if hi > lo:
                    mapped = apply_voi_lut(values, header, index=0, prefer_lut=True)
                    out = ((np.asarray(mapped, np.float64) - lo) / (hi - lo)).astype(np.float32)
                    break
            except Exception as exc:  # noqa: BLE001 - a malformed LUT: try the window
                logger.info("preview: VOI LUT not applied (%s)", type(exc).__name__)
        if center is not None and width is not None:
            out = _window(values, center, width, str(holder.get("VOILUTFunction", "") or ""))
            if out is not None:
                break
    if out is None:
        sample = values[:: max(1, values.shape[0] // 256), :: max(1, values.shape[1] // 256)]
        lo, hi = np.percentile(sample, [0.5, 99.5])
        out = np.clip((values - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0).astype(np.float32)
    if _inverted(header):
        out = 1.0 - out
    return out


# --------------------------------------------------------------------------- what is drawn


@dataclass
class _Graphic:
    """A line drawing or points on one frame, in image coordinates (PS3.3 C.18.6.1.1)."""

    points: np.ndarray
    closed: bool
    markers: bool
    colour: RGB
    label: str
    tracking_uid: str = ""

    @property
    def area(self) -> float:
        """Enclosed area in source pixels (shoelace), at least 1."""
        p = self.points
        if not self.closed or len(p) < 3:
            return 1.0
        x, y = p[:, 0], p[:, 1]
        return max(1.0, 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))))


def _ellipse(centre: np.ndarray, a: np.ndarray, b: np.ndarray, n: int = 64) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n + 1)
    return centre[None] + np.cos(t)[:, None] * a[None] + np.sin(t)[:, None] * b[None]


def _shape(graphic_type: str, points: np.ndarray) -> tuple[np.ndarray, bool, bool] | None:
    """``(points, closed, markers)`` of an SCOORD / SCOORD3D / graphic object
    (PS3.3 C.18.6.1.2, C.18.9.1.2, C.10.5.1.2); ``None`` when malformed."""
    kind = graphic_type.strip().upper()
    if len(points) == 0:
        return None
    if kind in ("POINT", "MULTIPOINT"):
        return points, False, True
    if kind in ("POLYLINE", "INTERPOLATED"):
        if len(points) < 2:
            return points, False, True
        return points, bool(np.allclose(points[0], points[-1])), False
    if kind == "POLYGON":
        return np.vstack((points, points[:1])), True, False
    if kind == "CIRCLE" and len(points) >= 2:
        r = float(np.linalg.norm(points[1] - points[0]))
        dim = points.shape[1]
        a = np.zeros(dim)
        b = np.zeros(dim)
        a[0], b[1] = r, r
        return _ellipse(points[0], a, b), True, False
    if kind in ("ELLIPSE", "ELLIPSOID") and len(points) >= 4:
        centre = (points[0] + points[1]) / 2.0
        return _ellipse(centre, points[1] - centre, (points[3] - points[2]) / 2.0), True, False
    return None


def _colour_of_lab(value: Any) -> RGB | None:
    """A DICOM CIELab triplet (PS3.3 C.10.7.1.1) as sRGB, via highdicom."""
    try:
        triple = [int(v) for v in value]
        from highdicom.color import CIELabColor

        r, g, b = CIELabColor.from_dicom_value(triple).to_rgb(clip=True)
    except Exception:  # noqa: BLE001 - absent or malformed: the caller's default
        return None
    return int(round(r)), int(round(g)), int(round(b))


def _code_value(item: Dataset) -> str:
    names = item.get("ConceptNameCodeSequence") or []
    return str(names[0].get("CodeValue", "")) if names else ""


def _group_identity(items: Sequence[Dataset]) -> tuple[str, str]:
    """A measurement group's name and Tracking UID (TID 1500 / TID 1410).

    The name is its Tracking Identifier, else its Comment up to the values in
    brackets (the node's groups of outlines carry a viewer tool's identifier).
    """
    tracking = comment = uid = ""
    for item in items:
        code = _code_value(item)
        if item.get("ValueType") == "UIDREF" and code == _TRACKING_UID:
            uid = str(item.get("UID", "") or "")
        if item.get("ValueType") != "TEXT":
            continue
        if code == _TRACKING_IDENTIFIER:
            tracking = str(item.get("TextValue", "") or "")
        elif code == _COMMENT:
            comment = str(item.get("TextValue", "") or "")
    if tracking and not tracking.startswith(_CORNERSTONE_TOOL):
        return tracking, uid
    return comment.split(" (")[0].strip(), uid


def _image_refs(items: Sequence[Dataset]) -> list[tuple[str, list[int] | None]]:
    out: list[tuple[str, list[int] | None]] = []
    for item in items:
        if item.get("ValueType") != "IMAGE":
            continue
        for ref in item.get("ReferencedSOPSequence") or []:
            out.append((str(ref.get("ReferencedSOPInstanceUID", "")), _frame_numbers(ref)))
    return out


def _frame_numbers(ref: Dataset) -> list[int] | None:
    value = ref.get("ReferencedFrameNumber")
    if value is None or value == "":
        return None
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    out = [n for n in (_int(v) for v in values) if n is not None]
    return out or None


def _sr_graphics(ds: Dataset, series: _Series) -> Iterator[tuple[int, _Graphic]]:
    """The planar regions of an SR (TID 1500; PS3.3 C.18.6 SCOORD on its referenced
    image, C.18.9 SCOORD3D projected onto the slice it lies on), by frame index."""

    def walk(items: Sequence[Dataset], group: tuple[str, str]) -> Iterator[tuple[int, _Graphic]]:
        label, uid = group
        for item in items:
            children = item.get("ContentSequence") or []
            value_type = item.get("ValueType")
            if value_type == "CONTAINER":
                inner = _group_identity(children)
                yield from walk(children, (inner[0] or label, inner[1] or uid))
                continue
            if value_type == "SCOORD":
                data = np.asarray(item.get("GraphicData") or [], dtype=np.float64)
                shape = _shape(str(item.get("GraphicType", "")), data.reshape(-1, 2))
                if shape is not None:
                    for image, frames in _image_refs(children):
                        for k in series.resolve(image, frames):
                            yield k, _Graphic(*shape, SR_COLOUR, label, uid)
            elif value_type == "SCOORD3D":
                data = np.asarray(item.get("GraphicData") or [], dtype=np.float64)
                shape = _shape(str(item.get("GraphicType", "")), data.reshape(-1, 3))
                if shape is not None:
                    frame_of_reference = str(item.get("ReferencedFrameOfReferenceUID", "") or "")
                    found = series.project(shape[0], frame_of_reference)
                    if found is not None:
                        k, pts = found
                        yield k, _Graphic(pts, shape[1], shape[2], SR_COLOUR, label, uid)
            yield from walk(children, group)

    yield from walk(ds.get("ContentSequence") or [], ("", ""))


def _gsps_graphics(ds: Dataset, series: _Series) -> Iterator[tuple[int, _Graphic]]:
    """The graphic objects of a presentation state (PS3.3 C.10.5 Graphic Annotation),
    by frame index, in their layer's recommended colour (C.10.7).

    DISPLAY units are taken as fractions of the whole image (no Displayed Area
    Selection is applied); text objects give the caption labels.
    """
    colours: dict[str, RGB] = {}
    for layer in ds.get("GraphicLayerSequence") or []:
        colour = _colour_of_lab(layer.get("GraphicLayerRecommendedDisplayCIELabValue"))
        if colour is not None:
            colours[str(layer.get("GraphicLayer", ""))] = colour
    every_image: list[tuple[str, list[int] | None]] = [
        (str(ref.get("ReferencedSOPInstanceUID", "")), _frame_numbers(ref))
        for series_item in ds.get("ReferencedSeriesSequence") or []
        for ref in series_item.get("ReferencedImageSequence") or []
    ]
    for ann in ds.get("GraphicAnnotationSequence") or []:
        refs = [
            (str(ref.get("ReferencedSOPInstanceUID", "")), _frame_numbers(ref))
            for ref in ann.get("ReferencedImageSequence") or []
        ] or every_image
        targets = [k for uid, frames in refs for k in series.resolve(uid, frames)]
        layer_colour = colours.get(str(ann.get("GraphicLayer", "")), GSPS_COLOUR)
        texts = [
            str(t.get("UnformattedTextValue", "") or "")
            for t in ann.get("TextObjectSequence") or []
        ]
        for i, go in enumerate(ann.get("GraphicObjectSequence") or []):
            data = np.asarray(go.get("GraphicData") or [], dtype=np.float64).reshape(-1, 2)
            shape = _shape(str(go.get("GraphicType", "")), data)
            if shape is None:
                continue
            colour = layer_colour
            style = go.get("LineStyleSequence")
            if style:
                colour = _colour_of_lab(style[0].get("PatternOnColorCIELabValue")) or colour
            label = texts[i] if i < len(texts) else str(go.get("TrackingID", "") or "")
            display = str(go.get("GraphicAnnotationUnits", "PIXEL")).upper() == "DISPLAY"
            for k in targets:
                pts = shape[0]
                if display:
                    f = series.frames[k]
                    pts = pts * np.array([f.cols, f.rows], dtype=np.float64)
                uid = str(go.get("TrackingUID", "") or "")
                yield k, _Graphic(pts, shape[1], shape[2], colour, label, uid)


@dataclass
class _SegFrameRef:
    seg_frame: int
    source: int
    segment: int | None  # None: a label map frame (pixel value = segment number)


@dataclass
class _Segmentation:
    """A SEG (PS3.3 C.8.20) read once; its frames decoded for the chosen slices only."""

    ds: Dataset
    segments: dict[int, tuple[str, RGB]]
    refs: list[_SegFrameRef]
    counts: np.ndarray
    kind: str
    threshold: float
    tracking_uids: frozenset[str]

    def masks(self, source: int) -> Iterator[tuple[np.ndarray, RGB, str]]:
        for ref in self.refs:
            if ref.source != source or not self.counts[ref.seg_frame]:
                continue
            try:
                frame = decode_pixels(self.ds, index=ref.seg_frame)
            except Exception as exc:  # noqa: BLE001 - decoders raise many kinds
                logger.info("preview: SEG frame %d not decoded (%s)", ref.seg_frame + 1, exc)
                continue
            if ref.segment is None:
                for number, (label, colour) in self.segments.items():
                    mask = frame == number
                    if mask.any():
                        yield mask, colour, label
            elif ref.segment in self.segments:
                label, colour = self.segments[ref.segment]
                yield frame >= self.threshold, colour, label


def _frame_counts(ds: Dataset, n: int, rows: int, cols: int, threshold: float) -> np.ndarray:
    """Pixels set in each SEG frame: on the packed bits of an uncompressed BINARY
    SEG (PS3.5 8.1.1, Bits Allocated 1), else frame by frame."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if (
        int(ds.get("BitsAllocated", 0)) == 1
        and syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        and "PixelData" in ds
    ):
        data = np.frombuffer(ds.PixelData, dtype=np.uint8)
        bits = rows * cols
        if bits % 8 == 0 and data.size >= n * bits // 8:
            per = data[: n * bits // 8].reshape(n, bits // 8)
            return _POPCOUNT[per].sum(axis=1, dtype=np.int64)
        if data.size * 8 >= n * bits:
            unpacked = np.unpackbits(data, bitorder="little")[: n * bits]
            return unpacked.reshape(n, bits).sum(axis=1, dtype=np.int64)
    counts = np.zeros(n, dtype=np.int64)
    for i, frame in enumerate(iter_pixels(ds)):
        if i >= n:
            break
        counts[i] = int(np.count_nonzero(frame >= threshold))
    return counts


def _read_segmentation(ds: Dataset, series: _Series) -> _Segmentation | None:
    """Segments, colours and frame references of a SEG (PS3.3 C.8.20.2, C.8.20.3)."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    n = _int(ds.get("NumberOfFrames")) or 1
    kind = str(ds.get("SegmentationType", "BINARY")).upper()
    threshold = 1.0
    if kind == "FRACTIONAL":
        threshold = max(1.0, float(ds.get("MaximumFractionalValue", 255)) / 2.0)
    segments: dict[int, tuple[str, RGB]] = {}
    for i, item in enumerate(ds.get("SegmentSequence") or []):
        number = _int(item.get("SegmentNumber"))
        if number is None:
            continue
        colour = (
            _colour_of_lab(item.get("RecommendedDisplayCIELabValue")) or PALETTE[i % len(PALETTE)]
        )
        segments[number] = (str(item.get("SegmentLabel", "") or f"Segment {number}"), colour)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    refs: list[_SegFrameRef] = []
    for f in range(n):
        item = per_frame[f] if f < len(per_frame) else Dataset()
        ident = item.get("SegmentIdentificationSequence") or shared.get(
            "SegmentIdentificationSequence"
        )
        segment = _int(ident[0].get("ReferencedSegmentNumber")) if ident else None
        if kind != "LABELMAP" and segment is None:
            continue
        targets: list[int] = []
        for derivation in item.get("DerivationImageSequence") or []:
            for src in derivation.get("SourceImageSequence") or []:
                targets += series.resolve(
                    str(src.get("ReferencedSOPInstanceUID", "")), _frame_numbers(src)
                )
        if not targets:
            plane = item.get("PlanePositionSequence") or shared.get("PlanePositionSequence")
            position = _numbers(plane[0], "ImagePositionPatient", 3) if plane else None
            k = series.at_position(position, rows, cols) if position is not None else None
            targets = [k] if k is not None else []
        for k in dict.fromkeys(targets):
            if (series.frames[k].rows, series.frames[k].cols) == (rows, cols):
                refs.append(_SegFrameRef(f, k, None if kind == "LABELMAP" else segment))
    if not refs:
        logger.info("preview: SEG %s references none of the source images", ds.SOPInstanceUID)
        return None
    counts = _frame_counts(ds, n, rows, cols, threshold)
    uids = frozenset(
        str(item.get("TrackingUID", "")) for item in ds.get("SegmentSequence") or []
    ) - {""}
    return _Segmentation(ds, segments, refs, counts, kind, threshold, uids)


# --------------------------------------------------------------------------- plan


@dataclass
class _Plan:
    series: _Series
    weights: np.ndarray
    graphics: dict[int, list[_Graphic]] = field(default_factory=dict)
    segmentations: list[_Segmentation] = field(default_factory=list)
    heatmaps: list[tuple[Path, Dataset]] = field(default_factory=list)
    overlays: list[tuple[Path, Dataset]] = field(default_factory=list)

    def add(self, k: int, graphic: _Graphic) -> None:
        drawn = self.graphics.setdefault(k, [])
        for other in drawn:  # an SR repeats a region under each of its NUMs
            if other.points.shape == graphic.points.shape and np.allclose(
                other.points, graphic.points
            ):
                return
        drawn.append(graphic)

    def weigh(self) -> None:
        """Add the regions' areas to the SEG pixels of their slices, except regions of
        a finding a SEG segment already counts (same Tracking UID, e.g. the SR's
        outline of a segment's largest cross-section)."""
        counted = frozenset().union(*(s.tracking_uids for s in self.segmentations))
        for k, graphics in self.graphics.items():
            for g in graphics:
                if not g.tracking_uid or g.tracking_uid not in counted:
                    self.weights[k] += g.area


def _plan(source: PreviewSource) -> _Plan:
    series = _source_series(source.source_paths)
    plan = _Plan(series, np.zeros(len(series), dtype=np.float64))
    for kind, raw_path in source.result_paths:
        path = Path(raw_path)
        if not path.is_file():
            logger.info("preview: %s result %s is not stored", kind, path.name)
            continue
        header = _read_header(path, pixels=True)
        if header is None:
            continue
        sop_class = str(header.get("SOPClassUID", ""))
        try:
            if sop_class in _SEG_CLASSES:
                seg = _read_segmentation(header, series)
                if seg is not None:
                    plan.segmentations.append(seg)
                    for ref in seg.refs:
                        plan.weights[ref.source] += float(seg.counts[ref.seg_frame])
            elif sop_class.startswith(_SR_CLASS_PREFIX):
                for k, graphic in _sr_graphics(header, series):
                    plan.add(k, graphic)
            elif sop_class in _PR_CLASSES:
                for k, graphic in _gsps_graphics(header, series):
                    plan.add(k, graphic)
            elif sop_class in _SC_CLASSES:
                text = str(header.get("DerivationDescription", "") or "")
                target = plan.heatmaps if _HEATMAP_RE.search(text) else plan.overlays
                target.append((path, header))
        except Exception as exc:  # noqa: BLE001 - one bad result must not hide the others
            logger.warning(
                "preview: %s result %s not drawn (%s: %s)", kind, path.name,
                type(exc).__name__, exc,
            )  # fmt: skip
    plan.weigh()
    return plan


def _choose(weights: np.ndarray, n: int) -> list[int]:
    """The ``n`` frames with the most finding, in slice order; with none, the middle
    frame and frames spread evenly around it."""
    total = len(weights)
    n = max(0, min(n, total))
    found = [int(k) for k in np.flatnonzero(weights > 0)]
    if found:
        ranked = sorted(found, key=lambda k: (-float(weights[k]), k))
        return sorted(ranked[:n])
    if n == 1:
        return [(total - 1) // 2]
    return sorted({min(total - 1, (i + 1) * total // (n + 1)) for i in range(n)})


def _slice_of(plan: _Plan, k: int) -> PreviewSlice:
    f = plan.series.frames[k]
    return PreviewSlice(
        index=k,
        total=len(plan.series),
        path=f.path,
        sop_instance_uid=f.uid,
        frame_number=f.frame,
        instance_number=f.instance_number,
        finding=float(plan.weights[k]),
    )


def preview_slices(source: PreviewSource, *, slices: int = 3) -> list[PreviewSlice]:
    """The source slices :func:`render_preview` would show (before any heat map takes
    a tile), in slice order.

    Raises
    ------
    PreviewUnavailable
        No source file left, or none an image.
    """
    plan = _plan(source)
    return [_slice_of(plan, k) for k in _choose(plan.weights, max(1, int(slices)))]


# --------------------------------------------------------------------------- drawing


def _font(px: int):  # type: ignore[no-untyped-def]  # noqa: ANN202
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=px)
    except (TypeError, OSError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def _to_rgb8(pixels: np.ndarray, header: Dataset) -> np.ndarray:
    """A colour frame as 8-bit RGB (PALETTE COLOR through its LUT, PS3.3 C.7.6.3.1.5)."""
    palette = str(header.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR"
    arr = np.asarray(apply_color_lut(pixels, header) if palette else pixels)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.dtype != np.uint8:
        top = 65535.0 if palette else float(2 ** int(header.get("BitsStored", 8) or 8) - 1)
        arr = np.clip(arr.astype(np.float32) * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
    return arr[..., :3]


def _frame_image(frame: _Frame) -> np.ndarray:
    """The frame as shown: ``(rows, cols)`` float ``0..1`` or ``(rows, cols, 3)`` uint8."""
    index = frame.frame - 1 if frame.frame is not None else None
    stored = decode_pixels(frame.path, index=index)
    if stored.ndim == 3 and int(frame.header.get("SamplesPerPixel", 1)) == 1:
        stored = stored[0]
    photometric = str(frame.header.get("PhotometricInterpretation", "")).upper()
    if int(frame.header.get("SamplesPerPixel", 1)) != 1 or photometric == "PALETTE COLOR":
        return _to_rgb8(stored, frame.header)
    values = modality_values(stored, frame.header, frame.frame)
    return display_grey(values, frame.header, frame.frame)


def _fitted(image: np.ndarray, place: TilePlacement) -> PILImage.Image:
    """The shown image resized to its place in the tile (area average when shrinking)."""
    from PIL import Image

    shrink = place.width <= place.columns and place.height <= place.rows
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    size = (place.width, place.height)
    if image.ndim == 2:
        grey = Image.fromarray(np.asarray(image, dtype=np.float32) * 255.0)
        grey = grey.resize(size, method) if grey.size != size else grey
        arr = np.clip(np.asarray(grey) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    rgb = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    return rgb.resize(size, method) if rgb.size != size else rgb


def _draw_graphics(
    tile: PILImage.Image, place: TilePlacement, graphics: list[_Graphic], size: int
) -> None:
    from PIL import ImageDraw

    draw = ImageDraw.Draw(tile)
    width = max(1, round(size / 256))
    marker = max(3, size // 96)
    for g in graphics:
        # PIL draws the pixel at a rounded coordinate: shift by half a pixel so
        # that a continuous coordinate lands on the pixel that contains it.
        pts = [(float(x) - 0.5, float(y) - 0.5) for x, y in place.to_tile(g.points)]
        if g.markers:
            for x, y in pts:
                draw.line([(x - marker, y), (x + marker, y)], fill=g.colour, width=width)
                draw.line([(x, y - marker), (x, y + marker)], fill=g.colour, width=width)
        elif len(pts) >= 2:
            draw.line(pts, fill=g.colour, width=width, joint="curve" if width > 1 else None)


def _draw_outlines(
    tile: PILImage.Image, place: TilePlacement, masks: list[tuple[np.ndarray, RGB]]
) -> PILImage.Image:
    from PIL import Image

    arr = np.array(tile)
    view = arr[place.top : place.top + place.height, place.left : place.left + place.width]
    for mask, colour in masks:
        if mask.shape != (place.rows, place.columns):
            continue
        view[outline(place.scaled_mask(mask))] = colour
    return Image.fromarray(arr)


def _caption(
    canvas: PILImage.Image, x0: int, size: int, text: str, labels: list[tuple[str, RGB]]
) -> None:
    from PIL import ImageDraw

    h = caption_height(size)
    draw = ImageDraw.Draw(canvas)
    top = size
    draw.rectangle([x0, top, x0 + size - 1, top + h - 1], fill=_CAPTION_BACKGROUND)
    font = _font(max(9, h - 5))
    x, limit = x0 + 4, x0 + size - 4
    y = top + 2

    def fits(s: str, at: float) -> bool:
        return at + draw.textlength(s, font=font) <= limit

    if not fits(text, x):
        while text and not fits(text + "...", x):
            text = text[:-1]
        text += "..."
    draw.text((x, y), text, fill=_CAPTION_TEXT, font=font)
    x += int(draw.textlength(text, font=font)) + 8
    swatch = max(4, h - 8)
    for label, colour in labels:
        if x + swatch + 4 > limit or not label:
            break
        draw.rectangle(
            [x, top + (h - swatch) // 2, x + swatch - 1, top + (h + swatch) // 2 - 1], fill=colour
        )
        x += swatch + 3
        shown = label
        if not fits(shown, x):
            while shown and not fits(shown + "...", x):
                shown = shown[:-1]
            draw.text((x, y), shown + "...", fill=_CAPTION_TEXT, font=font)
            break
        draw.text((x, y), shown, fill=_CAPTION_TEXT, font=font)
        x += int(draw.textlength(shown, font=font)) + 8


@dataclass
class _Tile:
    image: PILImage.Image
    text: str
    labels: list[tuple[str, RGB]]


def _source_tile(plan: _Plan, k: int, size: int) -> _Tile:
    from PIL import Image

    frame = plan.series.frames[k]
    shown = _frame_image(frame)
    rows, cols = shown.shape[:2]
    place = tile_placement(rows, cols, frame.spacing, size)
    tile = Image.new("RGB", (size, size), _BACKGROUND)
    tile.paste(_fitted(shown, place), (place.left, place.top))
    labels: list[tuple[str, RGB]] = []
    graphics = plan.graphics.get(k, [])
    _draw_graphics(tile, place, graphics, size)
    masks: list[tuple[np.ndarray, RGB]] = []
    for seg in plan.segmentations:
        for mask, colour, label in seg.masks(k):
            masks.append((mask, colour))
            labels.append((label, colour))
    if masks:
        tile = _draw_outlines(tile, place, masks)
    labels += [(g.label, g.colour) for g in graphics]
    total = len(plan.series)
    parts = [f"slice {k + 1}/{total}"] if total > 1 else []
    if frame.instance_number is not None:
        parts.append(f"image {frame.instance_number}")
    if frame.frame is not None:
        parts.append(f"frame {frame.frame}")
    unique: dict[str, tuple[str, RGB]] = {}
    for label, colour in labels:  # an SR names a segment's finding again
        unique.setdefault(label.strip().lower(), (label.strip(), colour))
    unique.pop("", None)
    return _Tile(tile, " | ".join(parts) or "image", list(unique.values()))


def _sc_tile(path: Path, header: Dataset, size: int, heatmap: bool) -> _Tile:
    """A Secondary Capture image (a heat map or burned-in outlines) as a tile."""
    from PIL import Image

    pixels = decode_pixels(path)
    if int(header.get("SamplesPerPixel", 1)) == 1:
        values = modality_values(pixels, header)
        shown: np.ndarray = display_grey(values, header)
    else:
        shown = _to_rgb8(pixels, header)
    rows, cols = shown.shape[:2]
    spacing = _numbers(header, "PixelSpacing", 2)
    pair = None
    if spacing is not None and spacing.min() > 0:
        pair = (float(spacing[0]), float(spacing[1]))
    place = tile_placement(rows, cols, pair, size)
    tile = Image.new("RGB", (size, size), _BACKGROUND)
    tile.paste(_fitted(shown, place), (place.left, place.top))
    match = _HEATMAP_RE.search(str(header.get("DerivationDescription", "") or ""))
    number = _int(header.get("InstanceNumber"))
    if heatmap:
        text = "heat map" + (f": {match.group('label')}" if match else "")
    else:
        text = "burned-in overlay" + (f" | image {number}" if number is not None else "")
    return _Tile(tile, text, [])


def _reason(path: Path, header: Dataset, exc: Exception) -> str:
    """Why an image was not shown, for a person (no server paths)."""
    syntax = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", None)
    name = getattr(syntax, "name", None) or str(syntax or "unknown transfer syntax")
    text = str(exc).replace(str(path), path.name)[:160]
    return f"pixel data ({name}) cannot be decoded: {type(exc).__name__}: {text}"


def _by_instance_number(images: list[tuple[Path, Dataset]]) -> list[tuple[Path, Dataset]]:
    return sorted(images, key=lambda item: (_int(item[1].get("InstanceNumber")) or 0, str(item[0])))


def render_preview(source: PreviewSource, *, slices: int = 3, size: int = 384) -> bytes:
    """A PNG of up to ``slices`` tiles side by side, ``size`` pixels square each, with a
    caption line under each (module docstring: what is chosen and drawn).

    The image is ``n * size`` pixels wide and ``size + caption_height(size)``
    high, for ``n`` tiles: source slices first (slice order), then heat maps.

    Raises
    ------
    PreviewUnavailable
        No source file left (e.g. removed by retention), none an image, no
        pixels that decode, or Pillow missing.
    ValueError
        ``slices`` not in ``1..MAX_SLICES`` or ``size`` not in ``32..MAX_SIZE``.
    """
    if not 1 <= int(slices) <= MAX_SLICES:
        raise ValueError(f"slices must be 1 to {MAX_SLICES}, got {slices!r}")
    if not 32 <= int(size) <= MAX_SIZE:
        raise ValueError(f"size must be 32 to {MAX_SIZE} pixels, got {size!r}")
    slices, size = int(slices), int(size)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with the node's stack
        raise PreviewUnavailable("The node cannot draw images: Pillow is not installed.") from None

    plan = _plan(source)
    heatmap = bool(plan.heatmaps)
    if heatmap:  # alongside at least one source slice
        extra = _by_instance_number(plan.heatmaps)
        quota = min(len(extra), slices - 1 if slices > 1 else 1)
    elif not (plan.segmentations or plan.graphics) and plan.overlays:
        # Burned-in outlines are all this job drew: they are the preview.
        overlays = _by_instance_number(plan.overlays)
        quota = min(len(overlays), slices)
        extra = [overlays[i] for i in _choose(np.zeros(len(overlays)), quota)]
    else:
        extra, quota = [], 0
    chosen = _choose(plan.weights, slices - quota)
    # Decode in order of preference; a slice that fails is replaced by the next one.
    ranked = chosen + [
        k for k in np.argsort(-plan.weights, kind="stable").tolist() if k not in chosen
    ]
    tiles: dict[int, _Tile] = {}
    failures: list[str] = []
    for k in ranked:
        if len(tiles) == len(chosen) or len(failures) > len(chosen) + 3:
            break
        try:
            tiles[k] = _source_tile(plan, k, size)
        except Exception as exc:  # noqa: BLE001 - decoders raise many kinds
            frame = plan.series.frames[k]
            failures.append(_reason(frame.path, frame.header, exc))
            logger.info("preview: slice %d not shown: %s", k + 1, failures[-1])
    shown = [tiles[k] for k in sorted(tiles)]
    for path, header in extra[: max(quota, slices - len(shown))]:
        try:
            shown.append(_sc_tile(path, header, size, heatmap))
        except Exception as exc:  # noqa: BLE001 - decoders raise many kinds
            failures.append(_reason(path, header, exc))
            logger.info("preview: %s not shown (%s)", path.name, failures[-1])
    if not shown:
        raise PreviewUnavailable(
            "The source images cannot be shown: " + (failures[0] if failures else "no pixels")
        )

    h = caption_height(size)
    canvas = Image.new("RGB", (len(shown) * size, size + h), _BACKGROUND)
    for i, tile in enumerate(shown):
        canvas.paste(tile.image, (i * size, 0))
        _caption(canvas, i * size, size, tile.text, tile.labels)
    out = io.BytesIO()
    canvas.save(out, format="PNG", optimize=False, compress_level=6)
    return out.getvalue()
