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
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from scipy import ndimage

from ai_models.dicom_files import DicomFile, deflate_bomb_reason, read_image_datasets
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
        bomb = deflate_bomb_reason(path)
        if bomb:
            raise VolumeError(f"cannot read a source file: {bomb}")
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
    try:
        values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - a bad Rescale Slope/Intercept or Modality LUT
        raise VolumeError(
            f"instance {uid}: the Modality LUT (Rescale Slope/Intercept or Modality LUT "
            f"Sequence, PS3.3 C.11.1) cannot be applied: {type(exc).__name__}"
        ) from exc
    if not np.all(np.isfinite(values)):
        raise VolumeError(f"instance {uid}: the Modality LUT gives values that are not finite")
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


# --------------------------------------------------------------------------- applicability


def thumbnail(ds: Dataset, values: np.ndarray, long_side: int = 512) -> np.ndarray:
    """A small presentation image for the applicability checks, ``0..1`` dense bright.

    The Modality-LUT values are block-averaged by the integer factor that
    brings the longer side to at most about ``long_side`` pixels, then
    :func:`presentation_image` applies the VOI and polarity to the small
    copy.  Averaging before the (monotonic, clipping) VOI changes grey levels
    a little at sharp edges only; the checks measure coarse regions, and the
    full-resolution grey-scale pipeline on a 4664 x 3064 mammogram would take
    most of a second.
    """
    rows, cols = values.shape
    k = max(1, max(rows, cols) // long_side)
    if k > 1:
        r, c = rows // k * k, cols // k * k
        small = values[:r, :c].reshape(r // k, k, c // k, k).mean(axis=(1, 3), dtype=np.float64)
    else:
        small = np.asarray(values, dtype=np.float64)
    return presentation_image(ds, small.astype(np.float32))


OPEN_FIELD = 0.1
"""Grey level (``0..1``, after the contrast stretch of the working image) at or
below which a region touching the image border is open-field background."""

#: Imaged field of a frontal adult chest radiograph, mm (when the pixel size
#: is known): the longer side at least / at most, the shorter side at least.
CHEST_FIELD_MM = (280.0, 500.0, 200.0)

#: Limits of the frontal-chest check (values measured in ai_models/README.md,
#: "Applicability checks"): a chest fills the image (little open background,
#: the midline column is body from the neck to the abdomen, the body spans the
#: width at lung level, no large white open field), two lung fields are darker
#: than the mediastinum on both sides and lie symmetric about it, the
#: mediastinum lies near the middle and stands out between the apices too
#: (not so on a lateral view), and the image is not bright on one side and
#: open background on the other.
MAX_CHEST_BACKGROUND = 0.30
MIN_MIDLINE_BODY = 0.93
MIN_BODY_WIDTH = 0.60
MAX_WHITE_FIELD = 0.25
MIN_MEDIASTINUM_CONTRAST = 0.12
MAX_MEDIASTINUM_OFFSET = 0.12
MIN_UPPER_MEDIASTINUM = 0.20
MIN_LUNG_DEPTH_RATIO = 0.30
MAX_LUNG_ASYMMETRY = 0.20
MAX_SIDE_IMBALANCE = 0.55
MIN_BELOW_LUNGS = 0.30


def _background(img: np.ndarray, level: float = OPEN_FIELD) -> np.ndarray:
    """Dark regions (``<= level``) connected to the image border: open field."""
    lab, _ = ndimage.label(img <= level)
    edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    return np.isin(lab, edge[edge > 0])


def _lung_fields(
    sm: np.ndarray, bg: np.ndarray, top: float, bottom: float
) -> tuple[int, int, int, float, float, float] | None:
    """Mediastinum and lung-field columns in a band of rows; ``None`` without body.

    The median column profile of rows ``top``-``bottom`` (fractions of the
    height), background excluded: the brightest column at 35-65 % of the
    width (mediastinum) and the darkest at 5-47 % and 53-95 % (the lungs).
    Returns their columns and grey levels ``(mi, li, ri, middle, left, right)``.
    """
    h, w = sm.shape
    y0, y1 = int(top * h), max(int(bottom * h), int(top * h) + 1)
    band_bg = bg[y0:y1]
    body_rows = np.sum(~band_bg, axis=0)
    prof = np.full(w, np.nan)
    ok = body_rows >= 0.5 * (y1 - y0)
    if ok.any():
        masked = np.where(band_bg[:, ok], np.nan, sm[y0:y1, ok])
        prof[ok] = np.nanmedian(masked, axis=0)

    def pick(lo: float, hi: float, darkest: bool) -> int | None:
        a, b = int(lo * w), max(int(hi * w), int(lo * w) + 1)
        seg = prof[a:b]
        if seg.size == 0 or np.all(np.isnan(seg)):
            return None
        return a + int(np.nanargmin(seg) if darkest else np.nanargmax(seg))

    mi, li, ri = pick(0.35, 0.65, False), pick(0.05, 0.47, True), pick(0.53, 0.95, True)
    if mi is None or li is None or ri is None:
        return None
    return mi, li, ri, float(prof[mi]), float(prof[li]), float(prof[ri])


class _Features:
    """Measured features of an image check; all fields are numbers."""

    def as_dict(self) -> dict[str, float]:
        """The features, rounded to 3 decimals (for logs and the model card)."""
        return {k: round(float(v), 3) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class ChestFeatures(_Features):
    """What :func:`chest_features` measured on a working image (see there)."""

    background: float
    midline_body: float
    body_width: float
    white_field: float
    side_imbalance: float
    mediastinum: float
    lung_depth_ratio: float
    lung_asymmetry: float
    mediastinum_offset: float
    upper_mediastinum: float
    lung_level: float
    below_lungs: float


def chest_features(img: np.ndarray) -> ChestFeatures:
    """Measure how much a working image looks like a frontal chest radiograph.

    Parameters
    ----------
    img:
        The image as the network sees it before standardisation (``0..1``,
        dense bright, contrast stretched), about 192 pixels on the long side,
        letterbox padding removed.

    Returns
    -------
    ChestFeatures
        ``background`` -- fraction of the image that is open field (dark,
        connected to the border): a CT/MR cross-section or a small part
        leaves much of it, a chest film little.  ``midline_body`` -- fraction
        of the rows whose central fifth (40-60 % of the width) is body, not
        background: neck, mediastinum and abdomen run through a chest film
        from top to bottom; an axial slice has air above and below the body.
        ``body_width`` -- fraction of the columns, in the lung band (30-60 %
        of the height), that are neither background nor white (>= 0.97): a
        trunk spans the film, a limb does not.  ``white_field`` -- fraction of
        the image at >= 0.97 (an open field displayed white).
        ``side_imbalance`` -- difference of the mean grey level of the outer
        quarters of the lung band: a mammogram or a limb against one edge is
        bright on one side and background on the other.  ``mediastinum`` --
        in the median column profile of the lung band (background excluded),
        the brightest column at 35-65 % of the width minus the darker of the
        two darkest columns at 5-47 % and 53-95 % (the lung fields);
        ``lung_depth_ratio`` -- the smaller of the two lung contrasts over
        the larger; ``lung_asymmetry`` -- distance of the midpoint of the two
        lung fields from the mediastinum, in image widths (a lateral view has
        one lung field and no bright midline between two dark ones; a rotated
        view puts them off centre); ``mediastinum_offset`` -- distance of that
        brightest column from the middle of the image, in image widths: the
        mediastinum of a frontal film lies near the middle, while on a
        lateral view the brightness rises towards the heart or the spine and
        the brightest column sits at the edge of the 35-65 % window
        (offset 0.15); ``upper_mediastinum`` -- the same contrast as
        ``mediastinum`` in the band at 10-30 % of the height: on a frontal
        film the upper mediastinum (trachea, spine, great vessels) stands
        bright between the two dark apices, on a lateral view the single
        lung field with the dark trachea and the shoulders does not;
        ``lung_level`` -- the darker lung's grey level.  The image is smoothed
        (sigma = height / 48) first, which blurs ribs and noise into the fields
        they cross, and columns within two sigma of the background are left out
        of the profiles (the smoothed body edge is dark but is not lung).  The
        mediastinum contrast is the smallest of three bands (30-60 %, 25-45 %,
        45-65 % of the height): it must stand between the lungs at every height.
        ``below_lungs`` -- median grey level of the middle half of the
        columns at 80-95 % of the height (diaphragm and abdomen, bright on a
        frontal film) minus ``lung_level``.
    """
    h, w = img.shape
    sigma = max(1.0, h / 48.0)
    sm = ndimage.gaussian_filter(np.asarray(img, dtype=np.float32), sigma)
    bg = _background(sm)
    y0, y1 = int(0.30 * h), max(int(0.60 * h), int(0.30 * h) + 1)
    band = sm[y0:y1]
    col_median = np.median(band, axis=0)
    q = max(1, w // 4)
    # smoothing blends the body's edge with the background: keep clear of it
    near_bg = ndimage.binary_dilation(bg, iterations=int(np.ceil(2 * sigma)))
    fields = _lung_fields(sm, near_bg, 0.30, 0.60)
    if fields is None:
        mediastinum, ratio, asym, level, offset = 0.0, 0.0, 1.0, 0.0, 0.5
    else:
        mi, li, ri, middle, lv, rv = fields
        dl, dr = middle - lv, middle - rv
        mediastinum = min(dl, dr)
        ratio = max(0.0, min(dl, dr)) / max(dl, dr, 1e-6)
        asym = abs((li + ri) / 2.0 - mi) / w
        offset = abs(mi - (w - 1) / 2.0) / w
        level = min(lv, rv)
        # the mediastinum must stand between the lungs at both heights
        for lo, hi in ((0.25, 0.45), (0.45, 0.65)):
            sub = _lung_fields(sm, near_bg, lo, hi)
            sub_contrast = 0.0 if sub is None else min(sub[3] - sub[4], sub[3] - sub[5])
            mediastinum = min(mediastinum, sub_contrast)
    upper = _lung_fields(sm, near_bg, 0.10, 0.30)
    upper_contrast = 0.0 if upper is None else min(upper[3] - upper[4], upper[3] - upper[5])
    # below the lungs: the abdomen (bright) across the middle of the image
    rows = slice(int(0.80 * h), max(int(0.95 * h), int(0.80 * h) + 1))
    cols = slice(int(0.25 * w), int(0.75 * w) + 1)
    low, low_bg = sm[rows, cols], bg[rows, cols]
    base = float(np.median(low[~low_bg])) if (~low_bg).any() else 0.0
    return ChestFeatures(
        background=float(bg.mean()),
        midline_body=float(np.mean(np.mean(bg[:, int(0.4 * w) : int(0.6 * w) + 1], axis=1) < 0.5)),
        body_width=float(np.mean((col_median > OPEN_FIELD) & (col_median < 0.97))),
        white_field=float(np.mean(sm >= 0.97)),
        side_imbalance=float(abs(band[:, :q].mean() - band[:, -q:].mean())),
        mediastinum=float(mediastinum),
        lung_depth_ratio=float(ratio),
        lung_asymmetry=float(asym),
        mediastinum_offset=float(offset),
        upper_mediastinum=float(upper_contrast),
        lung_level=float(level),
        below_lungs=float(base - level),
    )


def frontal_chest(
    img: np.ndarray, field_mm: tuple[float, float] | None = None
) -> tuple[bool, str, ChestFeatures]:
    """Whether a working image shows a frontal chest radiograph; ``(ok, reason, features)``.

    Parameters
    ----------
    img:
        See :func:`chest_features`.
    field_mm:
        ``(height, width)`` of the imaged field in mm when the pixel size is
        recorded (Pixel Spacing or Imager Pixel Spacing times the matrix);
        an adult chest film is about 30-45 cm, so a field outside
        :data:`CHEST_FIELD_MM` (a limb cassette, a small animal, a CT
        reconstruction of a small field, a mosaic) is refused.

    Returns
    -------
    (ok, reason, features)
        ``reason`` is a readable sentence (empty when ``ok``) naming the
        measured value and its limit.
    """
    f = chest_features(img)
    if field_mm is not None:
        long_, short = max(field_mm), min(field_mm)
        lo, hi, short_lo = CHEST_FIELD_MM
        if not (lo <= long_ <= hi and short >= short_lo):
            return (
                False,
                (
                    f"the imaged field is {field_mm[0] / 10:.1f} x {field_mm[1] / 10:.1f} cm; an "
                    f"adult chest radiograph shows {lo / 10:.0f}-{hi / 10:.0f} cm (at least "
                    f"{short_lo / 10:.0f} cm across)"
                ),
                f,
            )
    checks = (
        (
            f.background > MAX_CHEST_BACKGROUND,
            f"{f.background:.0%} of the image is open background around the object "
            f"(at most {MAX_CHEST_BACKGROUND:.0%} on a chest radiograph): a cross-section "
            "or a small body part",
        ),
        (
            f.midline_body < MIN_MIDLINE_BODY,
            f"the midline is body over only {f.midline_body:.0%} of the height (a chest "
            f"radiograph runs from neck to abdomen, at least {MIN_MIDLINE_BODY:.0%})",
        ),
        (
            f.white_field > MAX_WHITE_FIELD,
            f"{f.white_field:.0%} of the image is a uniform white field (at most "
            f"{MAX_WHITE_FIELD:.0%}): a limb or small part in an open field",
        ),
        (
            f.body_width < MIN_BODY_WIDTH,
            f"the body spans only {f.body_width:.0%} of the width at lung level (a chest "
            f"at least {MIN_BODY_WIDTH:.0%}): a limb or other narrow part",
        ),
        (
            f.side_imbalance > MAX_SIDE_IMBALANCE,
            f"one side of the image is bright tissue and the other open background "
            f"(difference {f.side_imbalance:.2f}, at most {MAX_SIDE_IMBALANCE:.2f}): a "
            "mammogram or a part against one edge",
        ),
        (
            f.mediastinum < MIN_MEDIASTINUM_CONTRAST,
            f"the image does not show two lung fields darker than a bright mediastinum "
            f"(contrast {f.mediastinum:.2f}, at least {MIN_MEDIASTINUM_CONTRAST:.2f})",
        ),
        (
            f.mediastinum_offset > MAX_MEDIASTINUM_OFFSET,
            f"the brightest column between the lung fields lies {f.mediastinum_offset:.2f} of "
            f"the width from the middle (at most {MAX_MEDIASTINUM_OFFSET:.2f}): no mediastinum "
            "in the middle of the chest, as in a lateral view",
        ),
        (
            f.upper_mediastinum < MIN_UPPER_MEDIASTINUM,
            f"the upper mediastinum does not stand out between two lung apices (contrast "
            f"{f.upper_mediastinum:.2f} at 10-30 % of the height, at least "
            f"{MIN_UPPER_MEDIASTINUM:.2f}): one lung field, as in a lateral view",
        ),
        (
            f.lung_depth_ratio < MIN_LUNG_DEPTH_RATIO or f.lung_asymmetry > MAX_LUNG_ASYMMETRY,
            f"the image does not show two lung fields symmetric about the midline "
            f"(darkness ratio {f.lung_depth_ratio:.2f}, at least {MIN_LUNG_DEPTH_RATIO:.2f}; "
            f"offset {f.lung_asymmetry:.2f} of the width, at most {MAX_LUNG_ASYMMETRY:.2f}): "
            "a lateral or strongly rotated view",
        ),
        (
            f.below_lungs < MIN_BELOW_LUNGS,
            f"the middle of the image below the lung band is not brighter than the lungs "
            f"(difference {f.below_lungs:.2f}, at least {MIN_BELOW_LUNGS:.2f}): no diaphragm "
            "and abdomen below two lung fields, as in a rotated or lateral view",
        ),
    )
    for failed, reason in checks:
        if failed:
            return False, reason, f
    return True, "", f


#: Limits of the breast check (values measured in ai_models/README.md,
#: "Applicability checks"): one bright region attached to one side edge over
#: much of the height, not touching the opposite edge, open background on the
#: opposite side, narrowing towards at least one end (the skin line curving
#: back to the chest wall).
MIN_WALL_CONTACT = 0.30
MAX_OPPOSITE_CONTACT = 0.30
MIN_OPPOSITE_BACKGROUND = 0.40
MAX_END_WIDTH = 0.70


def _otsu(values: np.ndarray, bins: int = 64) -> float:
    """Otsu's threshold of values in ``0..1`` (the between-class variance maximum)."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    p = hist / max(int(hist.sum()), 1)
    w0 = np.cumsum(p)
    mu = np.cumsum(p * (edges[:-1] + edges[1:]) / 2.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * w0 - mu) ** 2 / (w0 * (1.0 - w0))
    between[~np.isfinite(between)] = 0.0
    return float(edges[int(np.argmax(between)) + 1])


@dataclass(frozen=True)
class BreastFeatures(_Features):
    """What :func:`breast_features` measured on a working image (see there)."""

    threshold: float
    area: float
    wall_contact: float
    opposite_contact: float
    opposite_background: float
    end_width: float


def breast_features(img: np.ndarray) -> BreastFeatures:
    """Measure how much a working image looks like a mammogram.

    Parameters
    ----------
    img:
        The working image of ``mg-masses`` (``0..1``, dense bright, about 256
        pixels on the long side).

    Returns
    -------
    BreastFeatures
        A frame of 2 % is cut off first (film edges and scanner borders of
        digitised films).  The breast is the largest connected region above
        ``threshold`` (half of Otsu's threshold of the smoothed image, within
        0.06-0.3: below the fatty tissue at the skin, above the open
        background), holes filled.  ``area`` -- its fraction of the image.
        ``wall_contact`` -- fraction of the rows in which it touches the side
        edge it touches most (the chest wall); ``opposite_contact`` -- the
        same for the other side edge (a chest, a CT slice filling the field
        or an animal touch both; a mammogram only one).
        ``opposite_background`` -- fraction of the outer tenth of the image on
        the side away from the chest wall that is below the threshold (the
        open background beyond the nipple).  ``end_width`` -- the breast's
        width in the first and last twentieth of the rows, the narrower of
        the two, over its largest width: the skin line curves back towards the
        chest wall at the inframammary fold or, on a CC view, at both ends; a
        limb or a uniform field against one edge keeps its width.
    """
    c = max(2, int(round(0.02 * max(img.shape))))
    x = np.asarray(img, dtype=np.float32)[c:-c, c:-c]
    h, w = x.shape
    sm = ndimage.gaussian_filter(x, max(1.0, max(h, w) / 170.0))
    t = float(np.clip(0.5 * _otsu(sm), 0.06, 0.3))
    lab, n = ndimage.label(sm > t)
    if n == 0:
        return BreastFeatures(t, 0.0, 0.0, 0.0, 0.0, 1.0)
    region = ndimage.binary_fill_holes(lab == int(np.argmax(np.bincount(lab.ravel())[1:])) + 1)
    m = max(1, w // 100)
    left = float(np.mean(region[:, :m].any(axis=1)))
    right = float(np.mean(region[:, -m:].any(axis=1)))
    on_left = left >= right
    width = region.sum(axis=1) / float(w)
    e = max(1, h // 20)
    end = min(float(width[:e].mean()), float(width[-e:].mean())) / max(float(width.max()), 1e-6)
    outer = sm[:, int(0.9 * w) :] if on_left else sm[:, : w - int(0.9 * w)]
    return BreastFeatures(
        threshold=t,
        area=float(region.mean()),
        wall_contact=max(left, right),
        opposite_contact=min(left, right),
        opposite_background=float(np.mean(outer <= t)),
        end_width=end,
    )


def breast_region(img: np.ndarray) -> tuple[bool, str, BreastFeatures]:
    """Whether a working image shows one breast against the chest wall; ``(ok, reason, features)``.

    See :func:`breast_features`; ``reason`` is a readable sentence naming the
    measured value and its limit (empty when ``ok``).
    """
    f = breast_features(img)
    checks = (
        (
            f.wall_contact < MIN_WALL_CONTACT,
            f"no bright region is attached to a side edge (contact over {f.wall_contact:.0%} "
            f"of the height, at least {MIN_WALL_CONTACT:.0%}): the image does not show a breast "
            "against the chest wall",
        ),
        (
            f.opposite_contact > MAX_OPPOSITE_CONTACT,
            f"the imaged body touches both side edges ({f.wall_contact:.0%} and "
            f"{f.opposite_contact:.0%} of the height, at most {MAX_OPPOSITE_CONTACT:.0%} on "
            "the side away from the chest wall): a trunk or other body part, not a breast",
        ),
        (
            f.opposite_background < MIN_OPPOSITE_BACKGROUND,
            f"the side away from the chest wall is not open background ({f.opposite_background:.0%}"
            f", at least {MIN_OPPOSITE_BACKGROUND:.0%}): the image does not show a breast",
        ),
        (
            f.end_width > MAX_END_WIDTH,
            f"the region against the edge does not narrow towards its ends (end width "
            f"{f.end_width:.2f} of its largest, at most {MAX_END_WIDTH:.2f}): no curved skin line "
            "of a breast",
        ),
    )
    for failed, reason in checks:
        if failed:
            return False, reason, f
    return True, "", f
