"""Burned-in overlay series: Secondary Capture Image Storage (PS3.3 A.8.1).

For viewers that show neither SEG nor SR, this writer renders the source
slices with the segment outlines burned in: RGB, 8 bits, one single-frame
SC instance per slice, a new series in the source study.

Decisions
---------
* **Only slices with a segment** (``slices="mask"``, the default); ``"all"``
  renders every slice.  An RGB copy of a 300-slice CT is ~240 MB, and the
  series is a pointer to findings, not a replacement for the images.
* **Single-frame SC** (1.2.840.10008.5.1.4.1.1.7), the class every PACS
  viewer shows.  Its IOD has no Image Plane module, so ImagePositionPatient /
  ImageOrientationPatient are *not* written (they would make it a Standard
  Extended SOP Class).  What the IOD allows is kept: Pixel Spacing (SC Image
  module, Type 3), Patient Orientation from the direction cosines,
  Instance Number in slice order, and Source / Referenced Image Sequences
  pointing at the source frame each image was made from, so viewers can
  link each image to its slice.
* **Windowing:** radiographs (CR, DX, MG, ...) are shown as their own
  presentation pipeline shows them (VOI LUT or window, MONOCHROME1
  inverted; :func:`.common.presentation_grey`); CT uses the source's first
  WindowCenter/WindowWidth, else a soft-tissue window (40/400 HU); other
  modalities use the 0.5-99.5 percentiles of the volume.  An explicit
  ``window`` overrides all of these.  The result is baked in (no VOI LUT).
* **Labelling:** BurnedInAnnotation YES; ImageComments and
  SeriesDescription say "not for diagnostic use"; the top-left corner
  carries the same text and a legend of the segment colours.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from dicom_node.results._geometry import edges
from dicom_node.results.common import DEFAULT_SERIES_NUMBERS, presentation_grey
from dicom_node.results.gsps import with_box_segments
from dicom_node.results.heatmap import heatmap_key, write_heatmaps
from dicom_node.results.sc_image import (
    NOT_FOR_DIAGNOSTIC_USE,
    SECONDARY_CAPTURE_SOP_CLASS_UID,
    burned_in_image,
    checked_result,
    frame_key,
    sc_series,
)
from dicom_node.results.seg import segment_color

if TYPE_CHECKING:
    from ai_models.types import PipelineResult
    from dicom_node.results.writer import WriteContext

logger = logging.getLogger(__name__)

__all__ = [
    "NOT_FOR_DIAGNOSTIC_USE",
    "SECONDARY_CAPTURE_SOP_CLASS_UID",
    "ScWriter",
    "burned_in_image",
    "frame_key",
    "write_sc",
]

_SLICE_CHOICES = ("mask", "all")


def _window(result: PipelineResult) -> tuple[float, float]:
    volume = result.volume
    if (volume.modality or "").upper() == "CT":
        ds = volume.source_datasets[0]
        center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
        try:
            if center is not None and width is not None:
                c = float(center[0] if isinstance(center, Sequence) else center)
                w = float(width[0] if isinstance(width, Sequence) else width)
                if w > 1:
                    return c, w
        except (TypeError, ValueError, IndexError):
            pass
        return 40.0, 400.0
    lo, hi = np.percentile(volume.array[:: max(1, volume.shape[0] // 16)], [0.5, 99.5])
    return float(lo + hi) / 2.0, max(float(hi - lo), 1.0)


def _to_grey(slice_: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear VOI LUT (PS3.3 C.11.2.1.2.1) to 8 bits."""
    lo = center - width / 2.0
    scaled = (slice_.astype(np.float32) - lo) * (255.0 / width)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _banner(rgb: np.ndarray, labels: Sequence[tuple[str, tuple[int, int, int]]]) -> None:
    """Burn the disclaimer and a colour legend into the top-left corner."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:  # pragma: no cover - pillow comes with highdicom
        return
    if rgb.shape[0] < 64 or rgb.shape[1] < 128:
        return
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    draw.text((4, 2), NOT_FOR_DIAGNOSTIC_USE, fill=(255, 255, 0))
    y = 14
    for label, colour in labels:
        if y > rgb.shape[0] - 12:
            break
        draw.rectangle((4, y + 2, 12, y + 9), fill=colour)
        draw.text((16, y), label[:40], fill=colour)
        y += 11
    rgb[...] = np.asarray(img)


def write_sc(
    result: PipelineResult,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uids: Mapping[str, str] | None = None,
    series_number: int | None = None,
    instance_number: int | None = None,
    slices: str = "mask",
    window: tuple[float, float] | None = None,
    thickness: int | None = None,
    series_description_text: str | None = None,
    revision: int = 0,
) -> list[hd.sc.SCImage]:
    """Render the segment outlines onto the source slices as SC images.

    Parameters
    ----------
    result:
        The pipeline result (segments on the volume grid).
    series_instance_uid:
        Fixed by the caller, else generated.
    sop_instance_uids:
        Fixed SOP Instance UIDs keyed by :func:`frame_key` of the source frame;
        missing ones are generated.
    series_number, instance_number:
        Series Number (default 9003) and the Instance Number of the first
        image (default 1); images are numbered in slice order.
    slices:
        ``"mask"`` (slices with any segment, default) or ``"all"``.
    window:
        ``(center, width)`` to override the display window.
    thickness:
        Outline thickness in pixels (default 1, 2 from 384 columns up).
    series_description_text:
        Overrides the default SeriesDescription.
    revision:
        Revision number for the default SeriesDescription (``" (rev N)"``
        when > 0); 0 for a first version.

    Returns
    -------
    list of highdicom.sc.SCImage
        In slice order; empty when ``slices="mask"`` and no segment has pixels.

    Raises
    ------
    ValueError
        For an unknown ``slices`` value, a bad window or invalid UIDs.
    """
    result = checked_result(result)
    if slices not in _SLICE_CHOICES:
        raise ValueError(f'Argument "slices" must be one of {_SLICE_CHOICES}, got {slices!r}.')
    series = sc_series(
        result,
        "overlay",
        series_instance_uid=series_instance_uid,
        sop_instance_uids=sop_instance_uids,
        series_number=series_number,
        instance_number=instance_number,
        series_description_text=series_description_text,
        revision=revision,
    )
    if window is not None:
        center, width = (float(v) for v in window)
        if not width > 0:
            raise ValueError(f'Argument "window" needs a positive width, got {window!r}.')
    else:
        center, width = _window(result)

    volume = result.volume
    n, rows, cols = volume.shape
    segments = sorted(result.segments, key=lambda s: s.number)
    colours = [segment_color(s, i) for i, s in enumerate(segments)]
    if slices == "mask":
        any_k = np.zeros(n, dtype=bool)
        for seg in segments:
            any_k |= seg.mask.any(axis=(1, 2))
        ks = np.flatnonzero(any_k)
    else:
        ks = np.arange(n)
    if thickness is None:
        thickness = 2 if cols >= 384 else 1

    src = volume.source_datasets[0]
    out: list[hd.sc.SCImage] = []
    for t, k_ in enumerate(ks):
        k = int(k_)
        shown = presentation_grey(result, k) if window is None else None
        if shown is not None:
            grey = np.clip(np.rint(shown * 255.0), 0, 255).astype(np.uint8)
        else:
            grey = _to_grey(volume.array[k], center, width)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        present = []
        for seg, colour in zip(segments, colours, strict=True):
            m = seg.mask[k]
            if m.any():
                rgb[edges(m, thickness)] = colour
                present.append((seg.label, colour))
        _banner(rgb, present)
        shown_as = (
            "as presented (VOI, MONOCHROME1 inverted)"
            if shown is not None
            else f"(window {center:g}/{width:g})"
        )
        ref = volume.frames[k]
        sc = burned_in_image(
            result,
            rgb,
            src,
            ref,
            series_instance_uid=series.series_instance_uid,
            series_number=series.series_number,
            sop_instance_uid=series.fixed_uids.get(frame_key(ref)) or hd.UID(),
            instance_number=series.first_instance_number + t,
            pixel_spacing=(float(volume.spacing[1]), float(volume.spacing[2])),
            patient_orientation=series.patient_orientation,
            series_description=series.series_description,
            derivation=(
                f"Segment outlines of {result.pipeline} {result.algorithm.version} "
                f"burned into the source image {shown_as}"
            ),
        )
        out.append(sc)
    logger.debug("SC overlay: %d image(s)", len(out))
    return out


class ScWriter:
    """Result kind ``"sc"``: the opt-in Secondary Capture series (PS3.3 A.8.1).

    The outline overlays (detection boxes burned in as outlines too,
    :func:`~dicom_node.results.gsps.with_box_segments`), then the result's
    heat maps (:func:`~dicom_node.results.heatmap.write_heatmaps`) in the
    same series, numbered after them.  With a seed each image's SOP Instance
    UID is keyed by its source frame (:func:`frame_key`) or heat map
    (:func:`~dicom_node.results.heatmap.heatmap_key`).
    """

    kind = "sc"
    sop_class_uid = SECONDARY_CAPTURE_SOP_CLASS_UID
    series_number = DEFAULT_SERIES_NUMBERS["SC"]

    def applies(self, result: PipelineResult, context: WriteContext) -> bool:
        """Always: which slices have an outline is known once they are drawn."""
        return True

    def write(self, result: PipelineResult, context: WriteContext) -> list[Dataset]:
        """The overlay images, then the heat map images."""
        heatmaps = list(getattr(result, "heatmaps", None) or ())
        keys: list[str] = []
        if context.uid_seed is not None:
            keys = [frame_key(f) for f in result.volume.frames]
            keys += [heatmap_key(result, h) for h in heatmaps]
        u = context.uids_for(self.kind, keys)
        images = write_sc(
            with_box_segments(result),  # detection boxes burned in too
            series_instance_uid=u.series_instance_uid,
            sop_instance_uids=u.sop_instance_uids,
            series_number=u.series_number,
            instance_number=u.instance_number,
            slices=context.sc_slices,
            revision=context.revision,
        )
        if not images and not heatmaps:
            logger.info("no SC overlay written: no slice has a segment")
        out: list[Dataset] = list(images)
        if heatmaps:
            out.extend(
                write_heatmaps(
                    result,
                    series_instance_uid=(
                        images[0].SeriesInstanceUID if images else u.series_instance_uid
                    ),
                    sop_instance_uids=u.sop_instance_uids,
                    series_number=u.series_number,
                    instance_number=(u.instance_number if u.instance_number is not None else 1)
                    + len(images),
                    series_description_text=(
                        str(images[0].SeriesDescription) if images else None
                    ),
                    revision=context.revision,
                )
            )
        return out
