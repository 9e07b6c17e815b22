"""An independent body mask, to check that ``ct-lungs`` never calls air outside the patient lung.

The check is deliberately simple and shares no code with the pipeline: the
body is the 3D connected components of voxels above -500 HU that are at least
5 % the size of the largest (the trunk, and arms lying apart from it), with
their holes filled slice by slice on the slices most nearly axial (the lungs are
holes in the body's cross-section there).  Air beside the arms, in front of
the chest and under the table is connected to the air around the patient and
stays outside.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["body_mask", "segments_outside_body"]

CHECKED_LABELS = ("Right lung", "Left lung", "Bone")
"""The ct-lungs segments that must lie inside the body."""


def body_mask(array: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """``array``-shaped boolean body mask (see the module docstring).

    ``direction`` holds the patient (LPS) direction of the array's ``k``,
    ``i``, ``j`` axes in its columns, as :class:`ai_models.types.Volume` does.
    """
    lab, n = ndimage.label(array > -500)
    if n == 0:
        return np.zeros(array.shape, bool)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    body = np.isin(lab, np.flatnonzero(sizes >= 0.05 * sizes.max()))
    axial_axis = int(np.argmax(np.abs(np.asarray(direction, float)[2, :])))
    moved = np.moveaxis(body, axial_axis, 0)
    filled = np.stack([ndimage.binary_fill_holes(s) for s in moved])
    return np.moveaxis(filled, 0, axial_axis)


def segments_outside_body(volume, result) -> dict[str, int]:  # noqa: ANN001
    """Voxels of each lung/bone segment of ``result`` that lie outside the body of ``volume``."""
    body = body_mask(np.asarray(volume.array), volume.direction)
    out: dict[str, int] = {}
    for seg in result.segments:
        if seg.label in CHECKED_LABELS and seg.mask.shape == body.shape:
            out[seg.label] = int(np.count_nonzero(seg.mask & ~body))
    return out
