"""Single projection radiographs (CR, DX): reading and grey-scale conventions.

A radiograph pipeline takes one image, not a 3D stack.  :func:`load_radiograph`
reads the image of a series into a one-slice :class:`~ai_models.types.Volume`
and :func:`presentation_image` turns stored values into what a viewer shows,
following the grey-scale pipeline of PS3.3 C.11 / PS3.4 N.2:

1. **Modality LUT** (PS3.3 C.11.1): Rescale Slope/Intercept or a Modality LUT
   Sequence (:func:`pydicom.pixels.apply_modality_lut`).  ``Volume.array``
   holds these values (as for CT, where they are Hounsfield units).
2. **VOI LUT** (PS3.3 C.11.2): the first VOI LUT Sequence item or the first
   Window Center/Width pair, with its VOI LUT Function (LINEAR,
   LINEAR_EXACT, SIGMOID) (:func:`pydicom.pixels.apply_voi_lut`).  Without
   either, the 0.5-99.5 percentiles of the image are the window.
3. **Polarity**: MONOCHROME1 images (minimum = white, the usual CR
   convention) are inverted, as is a MONOCHROME2 image with Presentation LUT
   Shape INVERSE; Presentation LUT Shape INVERSE on a MONOCHROME1 image only
   restates that inversion (PS3.3 C.8.11.6.1.2) and is not applied twice.

The result is in ``0..1`` with dense tissue bright (MONOCHROME2 sense),
whatever the stored bit depth (8-16 bits) or polarity.

Geometry
--------
A radiograph has no Image Plane module.  The one-slice volume has origin 0,
spacing ``(1, row spacing, column spacing)`` from Pixel Spacing, else Imager
Pixel Spacing (at the detector), else 1 mm; and its ``direction`` columns
point along the Patient Orientation (0020,0020) letters of the rows and
columns (``L`` -> +x, ``P`` -> +y, ``H`` -> +z, LPS), defaulting to a PA chest
displayed conventionally (rows towards patient left ``L``, columns towards
the feet ``F``).  It is a labelling of directions for overlays, not a
position in space.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from ai_models.dicom_files import DicomFile, read_image_datasets
from ai_models.errors import VolumeError
from ai_models.types import FrameRef, Volume

logger = logging.getLogger(__name__)

__all__ = [
    "FRONTAL_VIEWS",
    "LATERAL_VIEWS",
    "RADIOGRAPH_MODALITIES",
    "body_part",
    "inverted",
    "load_radiograph",
    "pixel_spacing",
    "presentation_image",
    "view_position",
]

RADIOGRAPH_MODALITIES = ("CR", "DX")
"""Modalities of single projection radiographs read by :func:`load_radiograph`."""

FRONTAL_VIEWS = ("PA", "AP")
"""View Position (0018,5101) values of frontal views."""

LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL", "LLD", "RLD")
"""View Position values of lateral and lateral-decubitus views."""

# View Code Sequence (CID 4010 "DX View") codes, SCT, by View Position term.
_VIEW_CODES = {
    "272479007": "PA",  # postero-anterior
    "399348003": "AP",  # antero-posterior
    "399067008": "LAT",  # lateral
    "399173006": "LL",  # left lateral
    "399198007": "RL",  # right lateral
}

_ORIENTATION_AXES = {
    "L": (1.0, 0.0, 0.0),
    "R": (-1.0, 0.0, 0.0),
    "P": (0.0, 1.0, 0.0),
    "A": (0.0, -1.0, 0.0),
    "H": (0.0, 0.0, 1.0),
    "F": (0.0, 0.0, -1.0),
}

Source = str | os.PathLike[str] | DicomFile | Dataset


def _read(sources: Iterable[Source] | Source) -> list[Dataset]:
    if isinstance(sources, (str, os.PathLike, DicomFile, Dataset)):
        sources = [sources]
    out: list[Dataset] = []
    for src in sources:
        if isinstance(src, Dataset):
            out.append(src)
            continue
        path = src.path if isinstance(src, DicomFile) else pathlib.Path(src)
        if path.is_dir():
            found, _ = read_image_datasets(path)
            out.extend(found)
            continue
        try:
            out.append(pydicom.dcmread(path, force=True))
        except Exception as exc:  # noqa: BLE001 - translate any reader failure
            raise VolumeError(f"cannot read a source file as DICOM: {exc}") from exc
    if not out:
        raise VolumeError("no DICOM image instances given")
    return out


def view_position(ds: Dataset) -> str:
    """View Position (0018,5101), else the View Code Sequence as a term; ``""``.

    Returns upper-case terms such as ``"PA"``, ``"AP"``, ``"LL"``, ``"LAT"``.
    """
    value = str(ds.get("ViewPosition", "") or "").strip().upper()
    if value:
        return value
    seq = ds.get("ViewCodeSequence")
    if seq:
        code = str(seq[0].get("CodeValue", ""))
        if code in _VIEW_CODES:
            return _VIEW_CODES[code]
        meaning = str(seq[0].get("CodeMeaning", "")).lower()
        if "lateral" in meaning:
            return "LAT"
        if "postero-anterior" in meaning or "posteroanterior" in meaning:
            return "PA"
        if "antero-posterior" in meaning or "anteroposterior" in meaning:
            return "AP"
    return ""


def body_part(ds: Dataset) -> str:
    """Body Part Examined (0018,0015), upper case, ``""`` when absent."""
    return str(ds.get("BodyPartExamined", "") or "").strip().upper()


def _positive_pair(value: Any) -> tuple[float, float] | None:
    try:
        row, col = float(value[0]), float(value[1])
    except (TypeError, ValueError, IndexError):
        return None
    if not (np.isfinite(row) and np.isfinite(col) and row > 0 and col > 0):
        return None
    return row, col


def pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """``(row, column)`` spacing in mm, or ``None`` when not recorded (or zero).

    Pixel Spacing (0028,0030) first (calibrated at the patient), then Imager
    Pixel Spacing (0018,1164) (at the detector plane; it overstates sizes by
    the geometric magnification).
    """
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        pair = _positive_pair(ds.get(kw))
        if pair is not None:
            return pair
    return None


def _direction(ds: Dataset) -> np.ndarray:
    """Unit columns for (k, i, j): normal, down a column, along a row (LPS)."""
    po = ds.get("PatientOrientation")
    row_axis, col_axis = np.array(_ORIENTATION_AXES["L"]), np.array(_ORIENTATION_AXES["F"])
    try:
        letters = [str(v).strip().upper() for v in po] if po else []
    except TypeError:
        letters = []
    if len(letters) == 2 and all(v and v[0] in _ORIENTATION_AXES for v in letters):
        r, c = (
            np.array(_ORIENTATION_AXES[letters[0][0]]),
            np.array(_ORIENTATION_AXES[letters[1][0]]),
        )
        if abs(float(r @ c)) < 0.5:
            row_axis, col_axis = r, c
    normal = np.cross(row_axis, col_axis)
    return np.stack([normal, col_axis, row_axis], axis=1).astype(float)


def _pick(datasets: list[Dataset]) -> tuple[Dataset, list[str]]:
    """The image to analyse: a frontal view first, then the lowest instance number."""

    def key(ds: Dataset) -> tuple[int, int, str]:
        frontal = 0 if view_position(ds) in FRONTAL_VIEWS else 1
        try:
            number = int(ds.get("InstanceNumber") or 0)
        except (TypeError, ValueError):
            number = 0
        return frontal, number, str(ds.get("SOPInstanceUID", ""))

    ordered = sorted(datasets, key=key)
    notes = []
    if len(ordered) > 1:
        notes.append(
            f"{len(ordered)} images in the series; analysed the "
            f"{view_position(ordered[0]) or 'first'} image (instance "
            f"{ordered[0].get('InstanceNumber', '?')})"
        )
    return ordered[0], notes


def load_radiograph(sources: Iterable[Source] | Source) -> Volume:
    """Read the radiograph of one series into a one-slice :class:`Volume`.

    Parameters
    ----------
    sources:
        The series' files (:class:`~ai_models.dicom_files.DicomFile`, paths,
        a folder) or datasets.  Several images (e.g. PA and lateral in one
        series): the frontal one is taken, else the lowest Instance Number;
        the choice is logged.

    Returns
    -------
    Volume
        ``array`` ``(1, rows, columns)`` float32 after the Modality LUT;
        ``source_datasets`` the chosen image; geometry as in the module
        docstring.

    Raises
    ------
    VolumeError
        Unreadable files, no Pixel Data, colour or multi-frame images, or
        images of several series.
    """
    datasets = _read(sources)
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        raise VolumeError(f"sources belong to {len(series)} different series")
    ds, notes = _pick(datasets)
    for note in notes:
        logger.info("radiograph: %s", note)
    uid = str(ds.get("SOPInstanceUID", ""))
    if not uid:
        raise VolumeError("the image has no SOPInstanceUID")
    if "PixelData" not in ds:
        raise VolumeError(f"instance {uid} has no Pixel Data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise VolumeError(
            f"instance {uid} is a colour image ({ds.get('PhotometricInterpretation', '?')}); "
            "a radiograph must be MONOCHROME1 or MONOCHROME2"
        )
    if int(ds.get("NumberOfFrames") or 1) != 1:
        raise VolumeError(f"instance {uid} has {ds.NumberOfFrames} frames; one image is expected")
    try:
        stored = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoders raise many kinds
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise VolumeError(
            f"instance {uid}: pixel data cannot be decoded (transfer syntax {ts}): {exc}"
        ) from exc
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    spacing = pixel_spacing(ds) or (1.0, 1.0)
    return Volume(
        array=values[None],
        origin=np.zeros(3),
        spacing=np.array([1.0, spacing[0], spacing[1]]),
        direction=_direction(ds),
        frames=[FrameRef(uid, str(ds.get("SOPClassUID", "")), None)],
        source_datasets=[ds],
        modality=str(ds.get("Modality", "")),
        study_instance_uid=str(ds.get("StudyInstanceUID", "")),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
    )


def _voi_range(ds: Dataset) -> tuple[float, float] | None:
    """Output range of the VOI transform pydicom applies, or None without one."""
    if ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        try:
            bits = int(item.LUTDescriptor[2])
        except (AttributeError, IndexError, TypeError, ValueError):
            return None
        return 0.0, float(2**bits - 1)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
        if ds.get("ModalityLUTSequence"):
            bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
            lo, hi = 0.0, float(2**bits - 1)
        elif int(ds.get("PixelRepresentation", 0)) == 0:
            lo, hi = 0.0, float(2**bits - 1)
        else:
            lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
        slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        if slope is not None and intercept is not None:
            lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
        return min(lo, hi), max(lo, hi)
    return None


def _voi_usable(ds: Dataset) -> bool:
    """A VOI LUT Sequence item, or a window with a positive width."""
    if ds.get("VOILUTSequence"):
        return True
    width = ds.get("WindowWidth")
    if width is None or ds.get("WindowCenter") is None:
        return False
    try:
        w = float(width[0] if isinstance(width, Sequence) and not isinstance(width, str) else width)
    except (TypeError, ValueError, IndexError):
        return False
    return w >= 1.0


def inverted(ds: Dataset) -> bool:
    """Whether the stored polarity must be inverted to show dense tissue bright."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    if photometric == "MONOCHROME1":
        return True
    return shape == "INVERSE"


def presentation_image(ds: Dataset, values: np.ndarray | None = None) -> np.ndarray:
    """The image as displayed, ``0..1`` float32, dense tissue bright.

    Parameters
    ----------
    ds:
        The source image (its VOI attributes and polarity are used).
    values:
        Modality-LUT output ``(rows, columns)`` (e.g. ``volume.array[0]``);
        default: decoded from ``ds``.

    Notes
    -----
    See the module docstring for the steps.  The first VOI (window or LUT)
    is used; a window with width < 1 or an unusable VOI falls back to the
    0.5-99.5 percentiles.
    """
    if values is None:
        values = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float32)
    out: np.ndarray | None = None
    if _voi_usable(ds):
        rng = _voi_range(ds)
        try:
            # pydicom reads the VOI attributes only; a shallow copy keeps the caller's
            # dataset untouched (apply_windowing re-assigns some of them).
            copy = Dataset()
            copy.update(ds)
            voi = np.asarray(apply_voi_lut(values.astype(np.float64), copy), dtype=np.float64)
        except (ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
            logger.info("VOI not applied (%s); using percentiles", exc)
        else:
            if rng is not None and rng[1] > rng[0]:
                out = ((voi - rng[0]) / (rng[1] - rng[0])).astype(np.float32)
    if out is None:
        lo, hi = np.percentile(values, [0.5, 99.5])
        out = ((values - lo) / max(float(hi - lo), 1e-6)).astype(np.float32)
    out = np.clip(out, 0.0, 1.0)
    if inverted(ds):
        out = 1.0 - out
    return out
