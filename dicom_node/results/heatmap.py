"""Explanation overlays: heat maps blended over the source image, as Secondary Capture.

An opt-in companion of the TID 1500 SR for classification results: for each
:class:`~ai_models.types.HeatMap` of a result (e.g. a Grad-CAM map of one
finding), one Secondary Capture image (PS3.3 A.8.1) showing the source
image in grey with the map blended over it in colour, a caption that names
the finding, its probability and the method, a colour bar, and the
disclaimer.  The images join the result's SC series (output kind ``"sc"``).

Decisions
---------
* **Same conventions as the outline overlay** (:mod:`.sc`): single-frame
  SC Image Storage, RGB 8 bits, no Image Plane module; Patient Orientation
  from the source's row/column directions; Source / Referenced Image
  Sequence point at the source frame; BurnedInAnnotation YES; ImageComments
  and SeriesDescription say "not for diagnostic use"; the algorithm in
  Contributing Equipment.
* **Grey levels as the viewer shows them:** radiographs (CR, DX, ...) go
  through :func:`ai_models.radiograph.presentation_image` (VOI LUT or
  window, MONOCHROME1 inverted); other images use the 0.5-99.5 percentiles.
* **Size:** the longer side is reduced to ``max_size`` (1024) pixels by
  area averaging (a 1955 x 1841 CR would otherwise give an 11 MB RGB
  image); Pixel Spacing is scaled accordingly and left out when the source
  has none (or records zero).
* **Blending:** a perceptual "turbo"-like colour map; opacity grows with
  the map value from 0 at :data:`MAP_FLOOR` to ``alpha`` at 1, so low
  relevance leaves the image untouched.
* **One UID per map:** the SOP Instance UID is keyed by
  :func:`heatmap_key` (source frame + tracking UID), so seeded retries repeat
  it and maps of different findings on the same image never collide.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np

from dicom_node.results.common import RADIOGRAPH_MODALITIES, check_uid, presentation_grey
from dicom_node.results.sc_image import (
    NOT_FOR_DIAGNOSTIC_USE,
    burned_in_image,
    checked_result,
    frame_key,
    sc_series,
)

if TYPE_CHECKING:
    from ai_models.types import HeatMap, PipelineResult

logger = logging.getLogger(__name__)

__all__ = ["MAP_FLOOR", "RADIOGRAPH_MODALITIES", "colorize", "heatmap_key", "write_heatmaps"]

#: Map values at or below this are not coloured.
MAP_FLOOR = 0.2

# Anchor colours of a turbo-like map (value, r, g, b).
_ANCHORS = np.array(
    [
        (0.00, 48, 18, 59),
        (0.15, 70, 107, 227),
        (0.35, 27, 207, 212),
        (0.50, 97, 252, 108),
        (0.65, 210, 233, 53),
        (0.80, 254, 155, 45),
        (1.00, 180, 4, 38),
    ],
    dtype=float,
)


def heatmap_key(result: PipelineResult, heatmap: HeatMap) -> str:
    """Key of a heat map's image in ``sop_instance_uids``.

    ``"<frame key>#heatmap:<tracking UID>"`` (see :func:`.sc_image.frame_key`).
    """
    k = int(heatmap.frame_index)
    if not 0 <= k < len(result.volume.frames):
        raise ValueError(
            f"Heat map {heatmap.label!r} lies on slice {k}; the volume has "
            f"{len(result.volume.frames)}."
        )
    return f"{frame_key(result.volume.frames[k])}#heatmap:{heatmap.tracking_uid}"


def colorize(values: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 colours of ``values`` in ``0..1`` (turbo-like)."""
    v = np.clip(np.asarray(values, dtype=float), 0.0, 1.0)
    rgb = [np.interp(v, _ANCHORS[:, 0], _ANCHORS[:, i]) for i in (1, 2, 3)]
    return np.stack(rgb, axis=-1).round().astype(np.uint8)


def _grey(result: PipelineResult, k: int) -> np.ndarray:
    """The source slice as displayed, ``0..1``."""
    shown = presentation_grey(result, k)
    if shown is not None:
        return shown
    volume = result.volume
    lo, hi = np.percentile(volume.array[k], [0.5, 99.5])
    return np.clip((volume.array[k] - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)


def _resize(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area-average (or bilinear, when growing) a 2D float image to ``shape``."""
    if img.shape == shape:
        return img.astype(np.float32)
    from PIL import Image

    pil = Image.fromarray(np.asarray(img, dtype=np.float32), mode="F")
    grow = shape[0] > img.shape[0]
    out = pil.resize(
        (shape[1], shape[0]), Image.Resampling.BILINEAR if grow else Image.Resampling.BOX
    )
    return np.asarray(out, dtype=np.float32)


def _font(size: int):  # type: ignore[no-untyped-def]
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def _caption(rgb: np.ndarray, lines: Sequence[str]) -> None:
    """Burn the caption lines and a colour bar into the top-left corner."""
    from PIL import Image, ImageDraw

    rows, cols = rgb.shape[:2]
    if rows < 64 or cols < 128:
        return
    size = max(10, min(rows, cols) // 48)
    font = _font(size)
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    y = 4
    for i, line in enumerate(lines):
        colour = (255, 255, 0) if i == 0 else (255, 255, 255)
        draw.text((6, y), line[:80], fill=colour, font=font, stroke_width=1, stroke_fill=(0, 0, 0))
        y += size + 4
    # colour bar: low .. high
    bar_w, bar_h = min(cols // 4, 256), max(6, size // 2)
    ramp = colorize(np.linspace(0.0, 1.0, bar_w))[None].repeat(bar_h, axis=0)
    if y + bar_h + size + 8 < rows:
        arr = np.asarray(img).copy()
        arr[y + 2 : y + 2 + bar_h, 6 : 6 + bar_w] = ramp
        img = Image.fromarray(arr)
        draw = ImageDraw.Draw(img)
        draw.text((6, y + bar_h + 4), "low", fill=(255, 255, 255), font=font)
        draw.text((6 + bar_w - 4 * size, y + bar_h + 4), "high", fill=(255, 255, 255), font=font)
    rgb[...] = np.asarray(img)


def _caption_lines(result: PipelineResult, hm: HeatMap) -> list[str]:
    head = hm.label
    if hm.probability is not None:
        head += f": {100.0 * float(hm.probability):.0f}%"
    if hm.present is not None:
        head += " (present)" if hm.present else " (absent)"
    return [
        NOT_FOR_DIAGNOSTIC_USE,
        head,
        f"{hm.method} of {result.pipeline} {result.algorithm.version}",
    ]


def _check(result: PipelineResult, heatmaps: Sequence[HeatMap]) -> None:
    n, rows, cols = result.volume.shape
    keys = set()
    for hm in heatmaps:
        if not 0 <= int(hm.frame_index) < n:
            raise ValueError(
                f"Heat map {hm.label!r} lies on slice {hm.frame_index}; the volume has {n}."
            )
        m = np.asarray(hm.map)
        if m.ndim != 2:
            raise ValueError(f"Heat map {hm.label!r} must be 2D, got shape {m.shape}.")
        if not np.isfinite(m).all():
            raise ValueError(f"Heat map {hm.label!r} has non-finite values.")
        check_uid(hm.tracking_uid, f"heat map {hm.label!r} tracking_uid")
        key = (int(hm.frame_index), hm.tracking_uid)
        if key in keys:
            raise ValueError(f"Two heat maps for tracking UID {hm.tracking_uid} on one slice.")
        keys.add(key)


def write_heatmaps(
    result: PipelineResult,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uids: Mapping[str, str] | None = None,
    series_number: int | None = None,
    instance_number: int | None = None,
    max_size: int = 1024,
    alpha: float = 0.55,
    series_description_text: str | None = None,
    revision: int = 0,
) -> list[hd.sc.SCImage]:
    """Render each heat map of ``result`` over its source image as an SC image.

    Parameters
    ----------
    result:
        The pipeline result; its ``heatmaps`` are rendered (none: ``[]``).
    series_instance_uid:
        Fixed by the caller (e.g. the SC series of the outline overlays),
        else generated.
    sop_instance_uids:
        Fixed SOP Instance UIDs keyed by :func:`heatmap_key`; missing ones are
        generated.
    series_number, instance_number:
        Series Number (default 9003) and the Instance Number of the first
        image (default 1); images are numbered in the order of the maps.
    max_size:
        Longest side of the output images in pixels (at least 64).
    alpha:
        Opacity of the colour where the map is 1 (``0 < alpha <= 1``).
    series_description_text:
        Overrides the default SeriesDescription.
    revision:
        Revision number for the default SeriesDescription.

    Returns
    -------
    list of highdicom.sc.SCImage

    Raises
    ------
    ValueError
        For maps that do not fit the volume, repeated maps, bad UIDs or
        arguments.
    """
    result = checked_result(result)
    heatmaps = list(getattr(result, "heatmaps", ()) or ())
    _check(result, heatmaps)
    series = sc_series(
        result,
        "heat map",
        series_instance_uid=series_instance_uid,
        sop_instance_uids=sop_instance_uids,
        series_number=series_number,
        instance_number=instance_number,
        series_description_text=series_description_text,
        revision=revision,
    )
    if not 0.0 < float(alpha) <= 1.0:
        raise ValueError(f'Argument "alpha" must be in (0, 1], got {alpha!r}.')
    if int(max_size) < 64:
        raise ValueError(f'Argument "max_size" must be at least 64, got {max_size!r}.')
    if not heatmaps:
        return []

    volume = result.volume
    _, rows, cols = volume.shape
    scale = min(1.0, float(max_size) / max(rows, cols))
    out_shape = (max(1, int(round(rows * scale))), max(1, int(round(cols * scale))))
    src0 = volume.source_datasets[0]
    if (volume.modality or "").upper() in RADIOGRAPH_MODALITIES:
        # Only a calibrated Pixel Spacing; Imager Pixel Spacing is at the detector.
        spacing = _positive_pair(src0.get("PixelSpacing"))
    else:
        spacing = _positive_pair(volume.spacing[1:])
    pixel_spacing = (
        (spacing[0] * rows / out_shape[0], spacing[1] * cols / out_shape[1])
        if spacing is not None
        else None
    )
    images: list[hd.sc.SCImage] = []
    for t, hm in enumerate(heatmaps):
        k = int(hm.frame_index)
        grey = _resize(_grey(result, k), out_shape)
        heat = np.clip(_resize(np.asarray(hm.map, dtype=np.float32), out_shape), 0.0, 1.0)
        a = float(alpha) * np.clip((heat - MAP_FLOOR) / (1.0 - MAP_FLOOR), 0.0, 1.0)[..., None]
        base = np.repeat(grey[..., None] * 255.0, 3, axis=2)
        rgb = (base * (1.0 - a) + colorize(heat).astype(float) * a).round()
        rgb = np.clip(rgb, 0, 255).astype(np.uint8)
        _caption(rgb, _caption_lines(result, hm))
        ref = volume.frames[k]
        src = volume.source_datasets[min(k, len(volume.source_datasets) - 1)]
        sc = burned_in_image(
            result,
            rgb,
            src,
            ref,
            series_instance_uid=series.series_instance_uid,
            series_number=series.series_number,
            sop_instance_uid=series.fixed_uids.get(heatmap_key(result, hm)) or hd.UID(),
            instance_number=series.first_instance_number + t,
            pixel_spacing=pixel_spacing,
            patient_orientation=series.patient_orientation,
            series_description=series.series_description,
            derivation=(
                f"{hm.method} explanation map of {hm.label!r} from {result.pipeline} "
                f"{result.algorithm.version}, blended over the source image"
            ),
        )
        images.append(sc)
    logger.debug("heat map overlay: %d image(s)", len(images))
    return images


def _positive_pair(value: object) -> tuple[float, float] | None:
    """``(row, column)`` floats when both are finite and > 0, else None."""
    try:
        row, col = (float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    if row > 0 and col > 0 and np.isfinite(row) and np.isfinite(col):
        return row, col
    return None
