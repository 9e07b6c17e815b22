"""DICOM series -> oriented volume, and masks back onto the source frames.

Geometry follows the Image Plane Module (PS3.3 C.7.6.2) for single-frame
images and the Multi-frame Functional Groups (PS3.3 C.7.6.16: Plane Position
(Patient), Plane Orientation (Patient), Pixel Measures and Pixel Value
Transformation macros) for enhanced multi-frame images.  All coordinates are
DICOM **LPS** millimetres; array axes are ``(k, i, j)`` = (slice along the
normal, row, column), see :mod:`ai_models.types`.

How a volume is built
---------------------
1. Every frame gets its ImagePositionPatient, ImageOrientationPatient,
   PixelSpacing and rescale (from per-frame, then shared functional groups,
   then the top-level Image Plane attributes).
2. Frames are grouped by orientation.  More than one orientation is a
   :class:`~ai_models.errors.MixedOrientationError` (e.g. a 3-plane
   localizer): it is not one volume.  :func:`load_volumes` returns one volume
   per plane instead.
3. Frames at the same position are split into stacks by the first attribute
   that separates them into equal stacks without repeated positions (frame
   type / ImageType, temporal position, echo time, b-value, StackID,
   AcquisitionNumber, SeriesNumber, and the instance for multi-frame
   objects).  A series that needs splitting is a
   :class:`~ai_models.errors.DuplicateSlicesError` for :func:`load_series`
   (the message lists the stacks); :func:`load_volumes` returns each stack.
   Repeated positions that nothing separates are a DuplicateSlicesError
   naming both instances.
4. Slices are sorted by the projection of ImagePositionPatient on the normal
   ``row_direction x column_direction``.  The positions must lie on a regular
   grid along that normal, within ``tolerance`` (default: a tenth of the
   smallest voxel edge):

   * a gap that is a whole multiple of the regular spacing is a
     :class:`~ai_models.errors.MissingSlicesError` (a slice missing at either
     end of the stack leaves no trace in the positions and cannot be seen);
   * slices whose in-plane position drifts along the stack (a gantry tilt:
     the stack is sheared) or whose spacing is uneven in any other way is an
     :class:`~ai_models.errors.IrregularSpacingError`.

Decision on gantry tilt and uneven spacing: **refuse, do not resample.**
A :class:`~ai_models.types.Volume` maps every slice ``k`` to exactly one source
frame (``Volume.frames[k]``), and the result writers put the mask of slice
``k`` on that frame.  Resampling a sheared or unevenly spaced stack onto a
regular grid would break that one-to-one mapping: every output mask would
have to be resampled again onto the source planes, mixing neighbouring
slices, and a finding could move between frames.  A tilted CT also usually
mixes reconstructions (the GE head in the test data has 4 mm and 7 mm
slices).  The error says which instances, the tilt angle and the spacings, so
the admin can route such series elsewhere (or ask the scanner for a
non-tilted reconstruction).  :func:`volume_to_sitk` remains available for
pipelines that want to resample a valid volume internally and come back with
:func:`resample_to_volume`.

Single images (CR, DX, MG, one CT slice) become a one-slice volume: slice
spacing from SpacingBetweenSlices, else SliceThickness, else 1.0 mm; the
direction from ImageOrientationPatient.  Projection radiographs have no
ImageOrientationPatient (and no ImagePositionPatient); they get this
default geometry: row direction ``(1, 0, 0)``, column direction
``(0, 1, 0)``, normal ``(0, 0, 1)``, origin ``(0, 0, 0)``, pixel spacing from
PixelSpacing, else ImagerPixelSpacing, else 1.0 mm.  Such a volume is a pixel
grid, not a position in the patient.  Pixel values are the modality values:
MONOCHROME1 images are not inverted here (display is the pipeline's concern).

Public functions
----------------
:func:`load_series`, :func:`load_volumes`, :func:`mask_to_frames`,
:func:`mask_to_source_array`, :func:`volume_to_sitk`,
:func:`resample_to_volume`, :func:`sitk_to_volume_array`; discovery lives in
:mod:`ai_models.dicom_files` (:func:`discover_series`).
"""

from __future__ import annotations

import logging
import math
import os
import pathlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from ai_models.dicom_files import (
    DicomFile,
    deflate_bomb_reason,
    discover_series,
    one_line,
    read_image_datasets,
    scan_paths,
)
from ai_models.errors import (
    AIModelsError,
    DuplicateSlicesError,
    IrregularSpacingError,
    MissingSlicesError,
    MixedOrientationError,
    VolumeError,
)
from ai_models.types import FrameRef, Volume

if TYPE_CHECKING:
    import SimpleITK as sitk

__all__ = [
    "FrameMask",
    "Source",
    "discover_series",
    "load_series",
    "load_volumes",
    "mask_to_frames",
    "mask_to_source_array",
    "resample_to_volume",
    "scan_paths",
    "sitk_to_volume_array",
    "volume_to_sitk",
]

logger = logging.getLogger(__name__)

#: What :func:`load_series` accepts as one source: a path, a :class:`DicomFile`
#: from discovery, or an already read pydicom Dataset (with Pixel Data).
Source = Union[str, "os.PathLike[str]", DicomFile, Dataset]

#: Largest |cos| between the row and column direction cosines accepted.
_ORTHOGONALITY_TOL = 1e-3
#: Two orientations are the same plane when their direction cosines differ by
#: less than this (about 0.06 degrees).
_ORIENTATION_TOL = 1e-3

#: Uncompressed transfer syntaxes whose Pixel Data numpy can view directly.
_NATIVE_LE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}


@dataclass(frozen=True)
class FrameMask:
    """The 2D mask of one source frame (see :func:`mask_to_frames`).

    ``mask`` has the frame's ``(Rows, Columns)`` and is boolean.
    """

    frame: FrameRef
    mask: np.ndarray


@dataclass
class _Frame:
    """One source frame with its geometry (internal)."""

    instance: int  # index into the list of instances
    frame_number: int | None  # 1-based in a multi-frame instance, else None
    position: np.ndarray | None  # ImagePositionPatient (3,)
    row_dir: np.ndarray | None  # first IOP triplet (direction of increasing column)
    col_dir: np.ndarray | None  # second IOP triplet (direction of increasing row)
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing)
    slope: float
    intercept: float
    thickness: float | None
    spacing_between: float | None
    keys: dict[str, str]  # attributes that can tell stacks apart

    def describe(self, instances: Sequence[_Instance]) -> str:
        inst = instances[self.instance]
        text = f"instance {inst.sop_instance_uid}"
        if inst.instance_number is not None:
            text += f" (InstanceNumber {inst.instance_number})"
        if self.frame_number is not None:
            text += f" frame {self.frame_number}"
        return text


@dataclass
class _Instance:
    """One SOP instance with its (lazily decoded) pixels (internal)."""

    ds: Dataset
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    n_frames: int
    owned: bool  # read here (may drop Pixel Data) or handed in by the caller
    _pixels: np.ndarray | None = None

    def pixels(self) -> np.ndarray:
        """``(n_frames, rows, cols)`` stored values (before rescale)."""
        if self._pixels is None:
            self._pixels = _decode(self.ds, self.n_frames)
        return self._pixels


# --------------------------------------------------------------------------- reading


def _read_sources(sources: Iterable[Source] | Source) -> list[_Instance]:
    if isinstance(sources, (str, os.PathLike, DicomFile, Dataset)):
        sources = [sources]
    paths: list[pathlib.Path] = []
    datasets: list[tuple[Dataset, bool]] = []
    for src in sources:
        if isinstance(src, Dataset):
            datasets.append((src, False))
        elif isinstance(src, DicomFile):
            paths.append(src.path)
        else:
            p = pathlib.Path(src)
            if p.is_dir():
                found, _ = read_image_datasets(p)  # skipped files are logged there
                datasets.extend((ds, True) for ds in found)
            else:
                paths.append(p)
    for p in paths:
        bomb = deflate_bomb_reason(p)
        if bomb:
            raise VolumeError(f"cannot read a source file: {bomb}")
        try:
            read = pydicom.dcmread(p, force=True)
        except Exception as exc:  # noqa: BLE001 - translate any reader failure
            raise VolumeError(f"cannot read a source file as DICOM: {exc}") from exc
        datasets.append((read, True))
    if not datasets:
        raise VolumeError("no DICOM image instances given")

    instances: list[_Instance] = []
    seen: dict[str, int] = {}
    for ds, owned in datasets:
        try:
            uid = str(ds.get("SOPInstanceUID", ""))
        except Exception as exc:  # noqa: BLE001 - an unreadable element value
            raise VolumeError(f"a source has an unreadable SOPInstanceUID: {exc}") from exc
        if not uid:
            raise VolumeError("a source has no SOPInstanceUID (not a DICOM image instance)")
        if uid in seen:
            logger.warning("instance %s given twice; keeping the first copy", uid)
            continue
        if not any(kw in ds for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            raise VolumeError(f"instance {uid} has no Pixel Data (not an image)")
        try:
            n_frames = int(ds.get("NumberOfFrames") or 1)
        except (TypeError, ValueError) as exc:
            raise VolumeError(f"instance {uid} has an invalid NumberOfFrames: {exc}") from exc
        if n_frames < 1:
            raise VolumeError(f"instance {uid} has NumberOfFrames {n_frames}: no frames")
        seen[uid] = len(instances)
        instances.append(
            _Instance(
                ds=ds,
                sop_instance_uid=uid,
                sop_class_uid=str(ds.get("SOPClassUID", "")),
                instance_number=_instance_number(ds),
                n_frames=n_frames,
                owned=owned,
            )
        )
    series = {str(i.ds.get("SeriesInstanceUID", "")) for i in instances}
    if len(series) > 1:
        raise VolumeError(
            f"sources belong to {len(series)} different series; "
            "group them first with discover_series()"
        )
    return instances


def _instance_number(ds: Dataset) -> int | None:
    """InstanceNumber, or None when absent or unreadable (it only names instances)."""
    try:
        inum = ds.get("InstanceNumber")
        return int(inum) if inum not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _int_attr(ds: Dataset, keyword: str, default: int | None, where: str) -> int:
    """A numeric image attribute (Rows, BitsAllocated, ...) as an int, else VolumeError."""
    try:
        value = ds.get(keyword, default)
        if value is None or value == "":
            raise ValueError("absent")
        return int(value)
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{where}: {keyword} is missing or not a number ({exc})") from exc


def _decode(ds: Dataset, n_frames: int) -> np.ndarray:
    """Stored pixel values as ``(n_frames, rows, cols)``.

    Uncompressed little-endian data is viewed with ``np.frombuffer`` (no copy
    through the pixel handlers); everything else goes through pydicom's
    decoders (pylibjpeg for JPEG, JPEG-LS and JPEG 2000).
    """
    uid = ds.get("SOPInstanceUID", "?")
    where = f"instance {uid}"
    rows, cols = _image_size(ds, where)
    spp = _int_attr(ds, "SamplesPerPixel", 1, where)
    if spp != 1:
        raise VolumeError(
            f"instance {uid} has {spp} samples per pixel "
            f"({ds.get('PhotometricInterpretation', '?')}); only grayscale images make volumes"
        )
    ts = str(getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID", ""))
    bits_alloc = _int_attr(ds, "BitsAllocated", 16, where)
    bits_stored = _int_attr(ds, "BitsStored", bits_alloc, where)
    signed = _int_attr(ds, "PixelRepresentation", 0, where) == 1
    arr: np.ndarray | None = None
    if (
        ts in _NATIVE_LE
        and "PixelData" in ds
        and bits_alloc in (8, 16, 32)
        and not ds["PixelData"].is_undefined_length
    ):
        if not 1 <= bits_stored <= bits_alloc:
            raise VolumeError(
                f"{where}: BitsStored {bits_stored} does not fit BitsAllocated {bits_alloc}"
            )
        dtype = np.dtype(f"<{'i' if signed else 'u'}{bits_alloc // 8}")
        buf = ds.PixelData
        n = rows * cols * n_frames
        if len(buf) >= n * dtype.itemsize:
            arr = np.frombuffer(buf, dtype=dtype, count=n).reshape(n_frames, rows, cols)
            if bits_stored < bits_alloc:
                # PS3.5 8.1.1: bits above BitsStored are not pixel data.
                shift = bits_alloc - bits_stored
                if signed:
                    arr = (arr << shift) >> shift
                else:
                    arr = arr & np.array((1 << bits_stored) - 1, dtype=dtype)
    if arr is None:
        try:
            arr = ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - decoders raise many kinds
            reason = (
                f"{where}: pixel data cannot be decoded "
                f"(transfer syntax {ts or 'unknown'}): {one_line(exc)}"
            )
            # One line, no traceback: the decoders' own tracebacks are at DEBUG
            # (see ai_models.dicom_files).
            logger.warning("%s", reason)
            raise VolumeError(reason) from exc
        arr = np.asarray(arr)
        if arr.size != n_frames * rows * cols:
            raise VolumeError(
                f"{where}: decoded pixel data has shape {arr.shape}, not {n_frames} frame(s) "
                f"of {rows}x{cols}"
            )
        arr = arr.reshape(n_frames, rows, cols)
    return arr


def _image_size(ds: Dataset, where: str) -> tuple[int, int]:
    """(Rows, Columns), both positive, else VolumeError."""
    rows = _int_attr(ds, "Rows", None, where)
    cols = _int_attr(ds, "Columns", None, where)
    if rows < 1 or cols < 1:
        raise VolumeError(f"{where} is {rows}x{cols} pixels: no image")
    return rows, cols


# --------------------------------------------------------------------------- geometry


def _floats(value: Any, n: int, what: str, where: str) -> np.ndarray | None:
    if value is None or value == "":
        return None
    try:
        out = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{where}: {what} is not numeric: {value!r}") from exc
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise VolumeError(f"{where}: {what} must be {n} finite numbers, got {value!r}")
    return out


def _spacing(value: Any, what: str, where: str) -> np.ndarray | None:
    """A PixelSpacing-like pair, or None when absent or not positive (e.g. ``0\\0``)."""
    ps = _floats(value, 2, what, where)
    if ps is None or np.any(ps <= 0):
        return None
    return ps


def _opt_float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _items(owner: Dataset | None, seq: str) -> list[Dataset]:
    """The items of sequence ``seq`` in ``owner`` ([] when absent), else VolumeError."""
    if owner is None or seq not in owner:
        return []
    value = owner[seq].value
    if value is None or value == "":
        return []
    if not isinstance(value, (DicomSequence, list, tuple)) or not all(
        isinstance(i, Dataset) for i in value
    ):
        raise VolumeError(f"{seq} is not a sequence of items (VR {owner[seq].VR})")
    return list(value)


def _first(seq_owner: Dataset | None, seq: str) -> Dataset | None:
    s = _items(seq_owner, seq)
    return s[0] if s else None


def _frame_type(group: Dataset | None) -> str | None:
    if group is None:
        return None
    for elem in group:
        if elem.VR == "SQ" and elem.keyword.endswith("FrameTypeSequence") and elem.value:
            ft = elem.value[0].get("FrameType")
            if ft:
                return "\\".join(str(v) for v in ft)
    return None


def _frames_of(inst: _Instance, index: int) -> list[_Frame]:
    ds = inst.ds
    where = f"instance {inst.sop_instance_uid}"
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        return _enhanced_frames(inst, index)
    if inst.n_frames != 1:
        raise VolumeError(
            f"{where} has {inst.n_frames} frames but no functional groups "
            "(PS3.3 C.7.6.16); multi-frame objects without per-frame geometry are not supported"
        )
    ps = _spacing(ds.get("PixelSpacing"), "PixelSpacing", where)
    if ps is None:
        ps = _spacing(ds.get("ImagerPixelSpacing"), "ImagerPixelSpacing", where)
    iop = _floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", where)
    ipp = _floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", where)
    if ps is None and iop is not None:
        raise VolumeError(f"{where} has ImageOrientationPatient but no usable PixelSpacing")
    if ps is None:
        logger.info("an image has no usable pixel spacing; using 1.0 mm (projection image)")
    slope = _opt_float(ds.get("RescaleSlope"))
    intercept = _opt_float(ds.get("RescaleIntercept"))
    keys = {
        "ImageType": "\\".join(str(v) for v in ds.get("ImageType") or []),
        "TemporalPositionIdentifier": str(ds.get("TemporalPositionIdentifier", "")),
        "EchoTime": str(ds.get("EchoTime", "")),
        "EchoNumbers": str(ds.get("EchoNumbers", "")),
        "DiffusionBValue": str(ds.get("DiffusionBValue", "")),
        "AcquisitionNumber": str(ds.get("AcquisitionNumber", "")),
        "SeriesNumber": str(ds.get("SeriesNumber", "")),
    }
    return [
        _Frame(
            instance=index,
            frame_number=None,
            position=ipp,
            row_dir=iop[:3] if iop is not None else None,
            col_dir=iop[3:] if iop is not None else None,
            pixel_spacing=(float(ps[0]), float(ps[1])) if ps is not None else (1.0, 1.0),
            slope=1.0 if slope is None else slope,
            intercept=0.0 if intercept is None else intercept,
            thickness=_opt_float(ds.get("SliceThickness")),
            spacing_between=_opt_float(ds.get("SpacingBetweenSlices")),
            keys=keys,
        )
    ]


def _enhanced_frames(inst: _Instance, index: int) -> list[_Frame]:
    """Frames of an enhanced multi-frame instance (PS3.3 C.7.6.16)."""
    ds = inst.ds
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    per_frame = _items(ds, "PerFrameFunctionalGroupsSequence")
    if per_frame and len(per_frame) != inst.n_frames:
        raise VolumeError(
            f"instance {inst.sop_instance_uid}: {len(per_frame)} per-frame functional "
            f"groups for {inst.n_frames} frames"
        )
    frames = []
    for f in range(inst.n_frames):
        pf = per_frame[f] if per_frame else None
        where = f"instance {inst.sop_instance_uid} frame {f + 1}"

        def item(seq: str, pf: Dataset | None = pf) -> Dataset | None:
            # PS3.3 C.7.6.16: a macro is either per-frame or shared.
            got = _first(pf, seq)
            return got if got is not None else _first(shared, seq)

        pos = item("PlanePositionSequence")
        ori = item("PlaneOrientationSequence")
        pm = item("PixelMeasuresSequence")
        pvt = item("PixelValueTransformationSequence")
        content = item("FrameContentSequence")
        ipp = _floats(
            pos.get("ImagePositionPatient") if pos else None, 3, "ImagePositionPatient", where
        )
        iop = _floats(
            ori.get("ImageOrientationPatient") if ori else None, 6, "ImageOrientationPatient", where
        )
        if ipp is None:
            ipp = _floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", where)
        if iop is None:
            iop = _floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", where)
        ps = _spacing(pm.get("PixelSpacing") if pm else None, "PixelSpacing", where)
        if ps is None:
            ps = _spacing(ds.get("PixelSpacing"), "PixelSpacing", where)
        if ps is None and iop is not None:
            raise VolumeError(f"{where} has an orientation but no usable PixelSpacing")
        slope = _opt_float(pvt.get("RescaleSlope")) if pvt else None
        intercept = _opt_float(pvt.get("RescaleIntercept")) if pvt else None
        if slope is None:
            slope = _opt_float(ds.get("RescaleSlope"))
        if intercept is None:
            intercept = _opt_float(ds.get("RescaleIntercept"))
        echo = item("MREchoSequence")
        diff = item("MRDiffusionSequence")
        keys = {
            "FrameType": _frame_type(pf) or _frame_type(shared) or "",
            "TemporalPositionIndex": (
                str(content.get("TemporalPositionIndex", "")) if content else ""
            ),
            "EffectiveEchoTime": str(echo.get("EffectiveEchoTime", "")) if echo else "",
            "DiffusionBValue": str(diff.get("DiffusionBValue", "")) if diff else "",
            "StackID": str(content.get("StackID", "")) if content else "",
            "AcquisitionNumber": str(ds.get("AcquisitionNumber", "")),
            "SeriesNumber": str(ds.get("SeriesNumber", "")),
            "SOPInstanceUID": inst.sop_instance_uid,
        }
        frames.append(
            _Frame(
                instance=index,
                frame_number=f + 1,
                position=ipp,
                row_dir=iop[:3] if iop is not None else None,
                col_dir=iop[3:] if iop is not None else None,
                pixel_spacing=(float(ps[0]), float(ps[1])) if ps is not None else (1.0, 1.0),
                slope=1.0 if slope is None else slope,
                intercept=0.0 if intercept is None else intercept,
                thickness=_opt_float(pm.get("SliceThickness")) if pm else None,
                spacing_between=_opt_float(pm.get("SpacingBetweenSlices")) if pm else None,
                keys=keys,
            )
        )
    return frames


def _unit_axes(fr: _Frame, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row_dir, col_dir, normal) as unit vectors; checks PS3.3 C.7.6.2.1.1."""
    assert fr.row_dir is not None and fr.col_dir is not None
    norms = (float(np.linalg.norm(fr.row_dir)), float(np.linalg.norm(fr.col_dir)))
    if not all(math.isfinite(v) and v > 1e-6 for v in norms):
        raise VolumeError(
            f"{where}: ImageOrientationPatient has a zero-length vector "
            f"{_fmt(np.concatenate([fr.row_dir, fr.col_dir]))}"
        )
    r = fr.row_dir / norms[0]
    c = fr.col_dir / norms[1]
    if abs(float(r @ c)) > _ORTHOGONALITY_TOL:
        raise VolumeError(
            f"{where}: ImageOrientationPatient row and column directions are not "
            f"orthogonal (cos = {float(r @ c):.4f})"
        )
    n = np.cross(r, c)
    return r, c, n / float(np.linalg.norm(n))


def _fmt(v: np.ndarray) -> str:
    return "[" + ", ".join(f"{x:.4g}" for x in v) + "]"


def _group_by_orientation(frames: list[_Frame]) -> list[list[_Frame]]:
    groups: list[tuple[np.ndarray, list[_Frame]]] = []
    for fr in frames:
        iop = np.concatenate([fr.row_dir, fr.col_dir])  # type: ignore[list-item]
        for ref, members in groups:
            if np.max(np.abs(ref - iop)) <= _ORIENTATION_TOL:
                members.append(fr)
                break
        else:
            groups.append((iop, [fr]))
    return [m for _, m in groups]


_SPLIT_KEYS = (
    "FrameType",
    "ImageType",
    "TemporalPositionIndex",
    "TemporalPositionIdentifier",
    "EffectiveEchoTime",
    "EchoTime",
    "EchoNumbers",
    "DiffusionBValue",
    "StackID",
    "AcquisitionNumber",
    "SeriesNumber",
    "SOPInstanceUID",
)


def _has_duplicates(frames: list[_Frame], normal: np.ndarray, tol: float) -> bool:
    d = np.sort(np.array([float(fr.position @ normal) for fr in frames]))  # type: ignore[operator]
    return bool(np.any(np.diff(d) <= tol))


def _split_stacks(
    frames: list[_Frame], normal: np.ndarray, tol: float
) -> list[tuple[str, list[_Frame]]]:
    """Split frames that repeat positions into stacks; ``[("", frames)]`` if none do."""
    if not _has_duplicates(frames, normal, tol):
        return [("", frames)]
    for key in _SPLIT_KEYS:
        values: dict[str, list[_Frame]] = {}
        for fr in frames:
            values.setdefault(fr.keys.get(key, ""), []).append(fr)
        if len(values) < 2:
            continue
        sizes = {len(m) for m in values.values()}
        if len(sizes) != 1:
            continue  # stacks of a series have the same length; else it is not a split
        if sizes == {1} and len(_split_positions(frames, normal, tol)) > 1:
            continue  # one slice per "stack" only makes sense when all share one position
        if all(not _has_duplicates(m, normal, tol) for m in values.values()):
            return [(f"{key}={v}", m) for v, m in values.items()]
    return []


def _split_positions(frames: list[_Frame], normal: np.ndarray, tol: float) -> list[float]:
    """The distinct positions along the normal (within ``tol``)."""
    d = np.sort(np.array([float(fr.position @ normal) for fr in frames]))  # type: ignore[operator]
    out = [float(d[0])]
    for x in d[1:]:
        if x - out[-1] > tol:
            out.append(float(x))
    return out


# --------------------------------------------------------------------------- assembly


def _default_tolerance(pixel_spacing: tuple[float, float], slice_spacing: float) -> float:
    """A tenth of the smallest voxel edge (mm)."""
    slice_part = slice_spacing if slice_spacing > 0 else math.inf
    return 0.1 * min(pixel_spacing[0], pixel_spacing[1], slice_part)


def _check_regular(
    frames: list[_Frame],
    instances: Sequence[_Instance],
    r: np.ndarray,
    c: np.ndarray,
    n: np.ndarray,
    tolerance: float | None,
) -> tuple[float, float]:
    """Check sorted frames lie on a regular grid; return (spacing, tolerance used)."""
    pos = np.array([fr.position for fr in frames], dtype=float)
    with np.errstate(over="ignore", invalid="ignore"):
        d = pos @ n
        steps = np.diff(d)
    if not (np.all(np.isfinite(d)) and np.all(np.isfinite(steps))):
        raise IrregularSpacingError(
            "slice positions are too far apart to compute a spacing "
            f"(from {frames[0].describe(instances)} to {frames[-1].describe(instances)})"
        )
    # Nominal spacing: the most common step (rounded to 1 %), smallest on ties.
    rounded = np.round(steps / max(float(np.median(steps)), 1e-6), 2)
    vals, counts = np.unique(rounded, return_counts=True)
    nominal_ratio = vals[counts == counts.max()].min()
    spacing = float(np.median(steps[rounded == nominal_ratio]))
    tol = (
        tolerance if tolerance is not None else _default_tolerance(frames[0].pixel_spacing, spacing)
    )

    # Gantry tilt / shear: the in-plane position must not move along the stack.
    rel = pos - pos[0]
    inplane = np.stack([rel @ r, rel @ c], axis=1)
    drift = np.linalg.norm(inplane, axis=1)
    if float(drift.max()) > tol:
        kmax = int(np.argmax(drift))
        along = abs(float(d[kmax] - d[0]))
        angle = math.degrees(math.atan2(float(drift[kmax]), along)) if along > 0 else 90.0
        tilt = instances[frames[0].instance].ds.get("GantryDetectorTilt")
        msg = (
            f"slices are sheared: the in-plane position drifts by {drift[kmax]:.2f} mm over "
            f"{along:.2f} mm along the normal (stack tilted {angle:.1f} degrees from the image "
            f"normal) between {frames[0].describe(instances)} and "
            f"{frames[kmax].describe(instances)}"
        )
        if tilt not in (None, "") and _opt_float(tilt):
            msg += f"; GantryDetectorTilt is {float(tilt):g} degrees"
        if steps.size and float(steps.max() - steps.min()) > tol:
            msg += f"; slice spacing also varies from {steps.min():.2f} to {steps.max():.2f} mm"
        raise IrregularSpacingError(
            msg + ". Tilted or sheared stacks are refused, not resampled: the mask of each "
            "slice must land on exactly its source frame"
        )

    # Uneven spacing and gaps along the normal.
    for k, step in enumerate(steps):
        if abs(step - spacing) <= tol:
            continue
        a, b = frames[k].describe(instances), frames[k + 1].describe(instances)
        ratio = step / spacing
        if round(ratio) >= 2 and abs(step - round(ratio) * spacing) <= tol * round(ratio):
            missing = int(round(ratio)) - 1
            raise MissingSlicesError(
                f"gap of {step:.3f} mm between {a} and {b} where the series has a regular "
                f"spacing of {spacing:.3f} mm: {missing} slice(s) missing "
                f"(slices {k} and {k + 1} of {len(frames)} sorted along the normal)"
            )
        raise IrregularSpacingError(
            f"uneven slice spacing: {step:.3f} mm between {a} and {b}, where the series "
            f"has a regular spacing of {spacing:.3f} mm (tolerance {tol:.3f} mm; spacings "
            f"range {steps.min():.3f} to {steps.max():.3f} mm)"
        )
    # Cumulative drift against the fitted grid (catches slowly creeping spacing).
    if len(frames) > 2:
        spacing = float((d[-1] - d[0]) / (len(frames) - 1))
        dev = d - (d[0] + spacing * np.arange(len(frames)))
        if float(np.abs(dev).max()) > tol:
            k = int(np.argmax(np.abs(dev)))
            raise IrregularSpacingError(
                f"slice positions deviate from a regular {spacing:.3f} mm grid by "
                f"{dev[k]:.3f} mm at {frames[k].describe(instances)} (tolerance {tol:.3f} mm)"
            )
    return spacing, tol


def _assemble(
    frames: list[_Frame],
    instances: list[_Instance],
    tolerance: float | None,
    keep_pixel_data: bool,
) -> Volume:
    """Sort, check and stack one group of frames that share an orientation."""
    first = frames[0]
    rows, cols = _image_size(instances[first.instance].ds, first.describe(instances))
    for fr in frames:
        ds = instances[fr.instance].ds
        size = _image_size(ds, fr.describe(instances))
        if size != (rows, cols):
            raise VolumeError(
                f"{fr.describe(instances)} is {size[0]}x{size[1]}, "
                f"{first.describe(instances)} is {rows}x{cols}: not one volume"
            )
        if np.max(np.abs(np.subtract(fr.pixel_spacing, first.pixel_spacing))) > 1e-3 * max(
            first.pixel_spacing
        ):
            raise VolumeError(
                f"{fr.describe(instances)} has PixelSpacing {list(fr.pixel_spacing)}, "
                f"{first.describe(instances)} has {list(first.pixel_spacing)}: not one volume"
            )

    if first.row_dir is None:
        if len(frames) > 1:
            raise VolumeError(
                f"{len(frames)} frames without ImageOrientationPatient/ImagePositionPatient "
                f"(e.g. {first.describe(instances)}): cannot order them into a volume"
            )
        r, c, n = np.eye(3)
        origin = np.zeros(3)
    else:
        r, c, n = _unit_axes(first, first.describe(instances))
        origin = None
    missing_pos = [fr for fr in frames if fr.position is None]
    if first.row_dir is not None and missing_pos:
        raise VolumeError(f"{missing_pos[0].describe(instances)} has no ImagePositionPatient")

    if len(frames) == 1:
        spacing_k = next(
            (v for v in (first.spacing_between, first.thickness) if v is not None and v > 0), 1.0
        )
        if origin is None:
            origin = np.asarray(first.position, dtype=float)
        ordered = frames
    else:
        ordered = sorted(frames, key=lambda fr: float(fr.position @ n))  # type: ignore[operator]
        probe = (
            _default_tolerance(first.pixel_spacing, math.inf) if tolerance is None else tolerance
        )
        d = np.array([float(fr.position @ n) for fr in ordered])  # type: ignore[operator]
        dup = np.nonzero(np.diff(d) <= probe)[0]
        if dup.size:
            k = int(dup[0])
            raise DuplicateSlicesError(
                f"{ordered[k].describe(instances)} and {ordered[k + 1].describe(instances)} "
                f"lie at the same position ({d[k]:.3f} and {d[k + 1]:.3f} mm along the normal)"
            )
        spacing_k, _ = _check_regular(ordered, instances, r, c, n, tolerance)
        origin = np.asarray(ordered[0].position, dtype=float)

    n_slices = len(ordered)
    array = np.empty((n_slices, rows, cols), dtype=np.float32)
    for k, fr in enumerate(ordered):
        stored = instances[fr.instance].pixels()[(fr.frame_number or 1) - 1]
        if fr.slope == 1.0 and fr.intercept == 0.0:
            array[k] = stored
        else:
            np.multiply(stored, np.float32(fr.slope), out=array[k], casting="unsafe")
            array[k] += np.float32(fr.intercept)

    order: list[int] = []
    for fr in ordered:
        if fr.instance not in order:
            order.append(fr.instance)
    source = []
    for idx in order:
        inst = instances[idx]
        ds = inst.ds
        if inst.owned:
            if not keep_pixel_data:
                for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
                    if kw in ds:
                        del ds[kw]
            # An empty SpecificCharacterSet means the default repertoire, exactly as an
            # absent one (PS3.3 C.12.1.1.2); highdicom refuses to copy the empty value.
            if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
                del ds.SpecificCharacterSet
        source.append(ds)

    ds0 = instances[ordered[0].instance].ds
    return Volume(
        array=array,
        origin=origin,
        spacing=np.array([spacing_k, first.pixel_spacing[0], first.pixel_spacing[1]], dtype=float),
        direction=np.stack([n, c, r], axis=1),
        frames=[
            FrameRef(
                sop_instance_uid=instances[fr.instance].sop_instance_uid,
                sop_class_uid=instances[fr.instance].sop_class_uid,
                frame_number=fr.frame_number,
            )
            for fr in ordered
        ],
        source_datasets=source,
        modality=str(ds0.get("Modality", "")),
        study_instance_uid=str(ds0.get("StudyInstanceUID", "")),
        series_instance_uid=str(ds0.get("SeriesInstanceUID", "")),
        frame_of_reference_uid=str(ds0.get("FrameOfReferenceUID", "")),
    )


def _collect(instances: list[_Instance]) -> list[_Frame]:
    frames: list[_Frame] = []
    for idx, inst in enumerate(instances):
        frames.extend(_frames_of(inst, idx))
    with_iop = [fr for fr in frames if fr.row_dir is not None]
    if with_iop and len(with_iop) != len(frames):
        bad = next(fr for fr in frames if fr.row_dir is None)
        raise VolumeError(
            f"{bad.describe(instances)} has no ImageOrientationPatient while other frames do"
        )
    if with_iop:
        # Stacking and sorting project the positions on the normal: a frame with an
        # orientation but no position cannot be placed (PS3.3 C.7.6.2: both Type 1).
        no_pos = [fr for fr in frames if fr.position is None]
        if no_pos:
            raise VolumeError(
                f"{no_pos[0].describe(instances)} has ImageOrientationPatient but no "
                f"ImagePositionPatient ({len(no_pos)} of {len(frames)} frame(s) without one): "
                "the slices cannot be placed along the normal"
            )
    return frames


def _stacks(
    instances: list[_Instance], frames: list[_Frame], tolerance: float | None
) -> tuple[list[list[_Frame]], list[tuple[str, list[_Frame]]]]:
    """Orientation groups, then stacks within each; labels say how they were split."""
    if frames[0].row_dir is None:
        return [frames], [("", frames)]
    groups = _group_by_orientation(frames)
    stacks: list[tuple[str, list[_Frame]]] = []
    for g in groups:
        _, _, n = _unit_axes(g[0], g[0].describe(instances))
        probe = _default_tolerance(g[0].pixel_spacing, math.inf) if tolerance is None else tolerance
        split = _split_stacks(g, n, probe)
        if not split:
            split = [("", g)]  # duplicates that nothing separates: reported on assembly
        label_o = ""
        if len(groups) > 1:
            iop = np.concatenate([g[0].row_dir, g[0].col_dir])  # type: ignore[list-item]
            label_o = "ImageOrientationPatient=" + _fmt(iop)
        for label, members in split:
            stacks.append(("; ".join(x for x in (label_o, label) if x), members))
    return groups, stacks


@contextmanager
def _refusals() -> Iterator[None]:
    """Anything but an AIModelsError raised while building volumes becomes a VolumeError.

    The checks above refuse odd series with a precise reason; this is the net
    under them, so that a caller only ever sees a Volume or a VolumeError
    (numpy shape errors, unreadable element values, ...).  The traceback is
    logged at DEBUG.
    """
    try:
        yield
    except (AIModelsError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - the boundary: translate, never leak
        logger.debug("series refused on an unexpected %s", type(exc).__name__, exc_info=True)
        raise VolumeError(
            f"the series cannot be read as a volume ({type(exc).__name__}: {one_line(exc)})"
        ) from exc


def load_series(
    sources: Iterable[Source] | Source,
    *,
    tolerance: float | None = None,
    keep_pixel_data: bool = False,
) -> Volume:
    """Build the volume of one series (PS3.3 C.7.6.2, C.7.6.16).

    Parameters
    ----------
    sources:
        The instances of one series: file paths, :class:`DicomFile` records,
        pydicom Datasets (with Pixel Data), or a folder (all image files in it,
        which must be one series).  Order does not matter.
    tolerance:
        Largest accepted deviation in mm of a slice position from the regular
        grid (in-plane drift and along the normal).  Default: a tenth of the
        smallest voxel edge.
    keep_pixel_data:
        Keep Pixel Data in :attr:`Volume.source_datasets` for files read
        here.  By default it is dropped after decoding to halve the memory;
        highdicom's Segmentation and Comprehensive3DSR constructors need only
        the headers.  An empty SpecificCharacterSet is removed from them (it
        means the default repertoire, as an absent one does, and highdicom
        rejects the empty value).  Datasets handed in by the caller are never
        modified.

    Returns
    -------
    Volume
        float32 ``(n_slices, rows, columns)`` with the modality LUT applied
        (RescaleSlope/Intercept; Hounsfield units for CT), slices ascending
        along the normal, geometry in LPS.

    Raises
    ------
    MixedOrientationError
        Frames lie in more than one plane (e.g. a 3-plane localizer).
    DuplicateSlicesError
        Frames repeat positions (several stacks, e.g. magnitude and phase,
        time points); the message says how :func:`load_volumes` splits them.
    MissingSlicesError
        A gap of whole slices in the positions.
    IrregularSpacingError
        Uneven spacing or a sheared stack (gantry tilt): refused, see the
        module docstring.
    VolumeError
        Anything else that prevents one sound volume (undecodable pixels,
        differing matrix sizes, colour images, sources of several series,
        missing or degenerate geometry).  No other exception leaves this
        function: whatever else goes wrong reading a series is a VolumeError
        with the reason.
    """
    with _refusals():
        return _load_series(sources, tolerance, keep_pixel_data)


def _load_series(
    sources: Iterable[Source] | Source, tolerance: float | None, keep_pixel_data: bool
) -> Volume:
    instances = _read_sources(sources)
    frames = _collect(instances)
    groups, stacks = _stacks(instances, frames, tolerance)
    if len(groups) > 1:
        desc = []
        for g in groups:
            iop = np.concatenate([g[0].row_dir, g[0].col_dir])  # type: ignore[list-item]
            desc.append(
                f"{len(g)} frame(s) with ImageOrientationPatient {_fmt(iop)} "
                f"(e.g. {g[0].describe(instances)})"
            )
        raise MixedOrientationError(
            f"the series has frames in {len(groups)} different orientations, so it is not one "
            "volume (a localizer?): " + "; ".join(desc)
        )
    if len(stacks) > 1:
        desc = [f"{label} ({len(m)} frames)" for label, m in stacks]
        raise DuplicateSlicesError(
            f"{len(frames)} frames repeat slice positions; they form {len(stacks)} stacks: "
            + ", ".join(desc)
            + ". Use load_volumes() to get one volume per stack"
        )
    volume = _assemble(frames, instances, tolerance, keep_pixel_data)
    logger.info(
        "loaded a %s volume of %d x %d x %d, spacing %s mm",
        volume.modality or "?",
        *volume.shape,
        _fmt(volume.spacing),
    )
    return volume


def load_volumes(
    sources: Iterable[Source] | Source,
    *,
    tolerance: float | None = None,
    keep_pixel_data: bool = False,
) -> dict[str, Volume]:
    """Build one volume per plane and stack of a series.

    A series that is one volume gives ``{"": volume}``.  A 3-plane localizer
    gives one volume per orientation, an enhanced object with magnitude and
    field-map frames one per frame type, and so on; the keys say how the
    frames were split (e.g. ``"FrameType=ORIGINAL\\PRIMARY\\T1\\M"``).
    Each stack is checked like :func:`load_series` does (missing slices,
    uneven spacing, tilt) and a failing stack raises.

    Parameters and exceptions are those of :func:`load_series`, except that
    :class:`MixedOrientationError` is never raised.
    """
    with _refusals():
        return _load_volumes(sources, tolerance, keep_pixel_data)


def _load_volumes(
    sources: Iterable[Source] | Source, tolerance: float | None, keep_pixel_data: bool
) -> dict[str, Volume]:
    instances = _read_sources(sources)
    frames = _collect(instances)
    _, stacks = _stacks(instances, frames, tolerance)
    out: dict[str, Volume] = {}
    for label, members in stacks:
        out[label] = _assemble(members, instances, tolerance, keep_pixel_data)
    return out


# --------------------------------------------------------------------------- back to frames


def _check_mask(volume: Volume, mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != volume.shape:
        raise ValueError(f"mask shape {mask.shape} does not match the volume {volume.shape}")
    if mask.dtype != bool:
        raise TypeError(f"mask must be boolean, got {mask.dtype}")
    return mask


def _source_frame_order(volume: Volume) -> list[tuple[str, int | None]]:
    """Every frame of the source instances, in instance then frame-number order."""
    order: list[tuple[str, int | None]] = []
    for ds in volume.source_datasets:
        uid = str(ds.SOPInstanceUID)
        n = int(ds.get("NumberOfFrames") or 1)
        if "PerFrameFunctionalGroupsSequence" in ds or n > 1:
            order.extend((uid, f) for f in range(1, n + 1))
        else:
            order.append((uid, None))
    return order


def mask_to_frames(volume: Volume, mask: np.ndarray) -> list[FrameMask]:
    """Map a mask on the volume grid back onto the source frames.

    Parameters
    ----------
    volume:
        The volume the mask was computed on (from :func:`load_series`).
    mask:
        Boolean ``(n_slices, rows, columns)`` on the volume grid.

    Returns
    -------
    list of FrameMask
        One per slice, each the ``(Rows, Columns)`` mask of exactly the source
        frame that slice came from, listed in source order: the order of
        :attr:`Volume.source_datasets`, then by frame number within a
        multi-frame instance.  This is the order in which highdicom's
        Segmentation expects the frames of ``source_images``.  The masks are
        read-only views into ``mask`` (no copy).
    """
    mask = _check_mask(volume, mask)
    by_ref = {(f.sop_instance_uid, f.frame_number): k for k, f in enumerate(volume.frames)}
    out = []
    for key in _source_frame_order(volume):
        k = by_ref.get(key)
        if k is not None:
            view = mask[k].view()
            view.flags.writeable = False
            out.append(FrameMask(frame=volume.frames[k], mask=view))
    if len(out) != len(volume.frames):
        raise VolumeError("volume frames do not match its source datasets")
    return out


def mask_to_source_array(volume: Volume, mask: np.ndarray) -> np.ndarray:
    """The mask as a boolean ``(n_source_frames, rows, columns)`` array in source order.

    Frames of the source instances that are not in the volume (another stack
    of the same multi-frame object) are all False.  For single-frame sources
    this is ``pixel_array`` for ``highdicom.seg.Segmentation(source_images=
    volume.source_datasets, ...)``; for one multi-frame source it has that
    object's NumberOfFrames frames.
    """
    mask = _check_mask(volume, mask)
    order = _source_frame_order(volume)
    by_ref = {(f.sop_instance_uid, f.frame_number): k for k, f in enumerate(volume.frames)}
    out = np.zeros((len(order),) + mask.shape[1:], dtype=bool)
    for s, key in enumerate(order):
        k = by_ref.get(key)
        if k is not None:
            out[s] = mask[k]
    return out


# --------------------------------------------------------------------------- SimpleITK


def volume_to_sitk(volume: Volume, array: np.ndarray | None = None) -> sitk.Image:
    """A SimpleITK image with the volume's geometry (both LPS).

    ITK indexes ``(x, y, z)`` = ``(j, i, k)``; the numpy view of the image is
    ``(k, i, j)`` as in :class:`Volume`.  ``array`` (same shape as the
    volume, any dtype) replaces the intensities, e.g. to resample a mask.
    """
    import SimpleITK as sitk

    data = volume.array if array is None else np.asarray(array)
    if data.shape != volume.shape:
        raise ValueError(f"array shape {data.shape} does not match the volume {volume.shape}")
    if data.dtype == bool:
        data = data.astype(np.uint8)
    img = sitk.GetImageFromArray(data)
    sp = np.asarray(volume.spacing, dtype=float)
    img.SetSpacing((float(sp[2]), float(sp[1]), float(sp[0])))
    img.SetOrigin(tuple(float(v) for v in volume.origin))
    d = np.asarray(volume.direction, dtype=float)
    itk_dir = np.stack([d[:, 2], d[:, 1], d[:, 0]], axis=1)  # columns x, y, z
    img.SetDirection(tuple(float(v) for v in itk_dir.ravel()))
    return img


def resample_to_volume(
    image: sitk.Image, volume: Volume, *, nearest: bool = True, default: float = 0.0
) -> np.ndarray:
    """Resample a SimpleITK image onto the volume's grid; returns ``(k, i, j)``.

    Use it to bring a mask computed at another resolution (or on a resampled
    copy made with :func:`volume_to_sitk`) back to the source grid, before
    :func:`mask_to_frames`.  ``nearest`` picks nearest-neighbour
    interpolation (labels), else linear.
    """
    import SimpleITK as sitk

    ref = volume_to_sitk(volume, np.zeros(volume.shape, dtype=np.uint8))
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    out = sitk.Resample(image, ref, sitk.Transform(), interp, default, image.GetPixelID())
    return sitk.GetArrayFromImage(out)


def sitk_to_volume_array(image: sitk.Image, volume: Volume) -> np.ndarray:
    """The ``(k, i, j)`` array of an image already on the volume's grid.

    Raises ValueError when the image geometry differs from the volume's
    (use :func:`resample_to_volume` then).
    """
    ref = volume_to_sitk(volume, np.zeros(volume.shape, dtype=np.uint8))
    same = (
        image.GetSize() == ref.GetSize()
        and np.allclose(image.GetSpacing(), ref.GetSpacing(), atol=1e-4)
        and np.allclose(image.GetOrigin(), ref.GetOrigin(), atol=1e-3)
        and np.allclose(image.GetDirection(), ref.GetDirection(), atol=1e-5)
    )
    if not same:
        raise ValueError("image is not on the volume grid; use resample_to_volume()")
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image)
