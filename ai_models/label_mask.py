"""One label of a shared label map, used as a segment mask without a copy.

A multi-organ model (TotalSegmentator's 117 structures, say) returns one
label map; a boolean ``(slices, rows, columns)`` array per segment would
take 117 times the volume's voxels in memory (9 GB for 300 slices of
512x512).  :class:`LabelMask` keeps a reference to the label map, the value
and the bounding box of that value, and answers what the result writers ask
of a mask (``shape``, ``any``, per-slice presence and counts, one slice or a
few slices at a time) from the bounding box; only ``np.asarray(mask)``
builds the full boolean array.

Examples
--------
>>> import numpy as np
>>> lab = np.zeros((4, 8, 8), dtype=np.uint8); lab[1:3, 2:4, 2:5] = 7
>>> m = label_masks(lab, [7])[7]
>>> m.shape, m.any(), m.count(), m.any(axis=(1, 2)).tolist()
((4, 8, 8), True, 12, [False, True, True, False])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["LabelMask", "label_masks"]


class LabelMask:
    """The voxels of ``label_map`` equal to ``value``, as a read-only mask.

    Parameters
    ----------
    label_map:
        Integer ``(slices, rows, columns)`` array shared by every segment.
    value:
        The label value this mask selects.
    box:
        The bounding box of ``value`` in ``label_map`` (``None``: empty).
    count:
        The number of voxels equal to ``value`` (computed when omitted).
    """

    dtype = np.dtype(bool)

    def __init__(
        self,
        label_map: np.ndarray,
        value: int,
        box: tuple[slice, ...] | None,
        count: int | None = None,
    ) -> None:
        if label_map.ndim != 3:
            raise ValueError(f"a label map has 3 axes, got shape {label_map.shape}")
        self.label_map = label_map
        self.value = int(value)
        self.box = box
        self._count = count

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.label_map.shape)  # type: ignore[return-value]

    @property
    def ndim(self) -> int:
        return 3

    @property
    def size(self) -> int:
        return int(self.label_map.size)

    def _boxed(self) -> np.ndarray:
        assert self.box is not None
        return np.asarray(self.label_map[self.box] == self.value)

    def count(self) -> int:
        """Voxels in the mask."""
        if self._count is None:
            self._count = 0 if self.box is None else int(np.count_nonzero(self._boxed()))
        return self._count

    def count_per_slice(self) -> np.ndarray:
        """Voxels in the mask on each slice ``k`` (int64, one per slice)."""
        out = np.zeros(self.shape[0], dtype=np.int64)
        if self.box is not None:
            boxed = self._boxed()
            out[self.box[0]] = np.count_nonzero(boxed.reshape(boxed.shape[0], -1), axis=1)
        return out

    def any(self, axis: Any = None) -> Any:
        """``np.any`` of the mask: over everything, or per slice with ``axis=(1, 2)``."""
        if axis is None:
            return self.box is not None and self.count() > 0
        if tuple(axis) != (1, 2):
            return np.asarray(self).any(axis=axis)
        return self.count_per_slice() > 0

    def sum(self, axis: Any = None) -> Any:
        if axis is None:
            return self.count()
        return np.asarray(self).sum(axis=axis)

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(self.label_map[index] == self.value)

    def reshape(self, *shape: Any) -> np.ndarray:
        return np.asarray(self).reshape(*shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.zeros(self.shape, dtype=bool)
        if self.box is not None:
            out[self.box] = self._boxed()
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"LabelMask(value={self.value}, shape={self.shape}, box={self.box})"


def label_masks(label_map: np.ndarray, values: Iterable[int]) -> dict[int, LabelMask]:
    """One :class:`LabelMask` per value, with bounding boxes and counts found
    in one pass over the label map.

    Parameters
    ----------
    label_map:
        Integer ``(slices, rows, columns)`` array (values >= 0).
    values:
        The label values wanted (values absent from the map give empty masks).
    """
    lab = np.asarray(label_map)
    if lab.ndim != 3:
        raise ValueError(f"a label map has 3 axes, got shape {lab.shape}")
    if lab.size and int(lab.min()) < 0:
        raise ValueError("label values must not be negative")
    wanted = [int(v) for v in values]
    top = max(wanted, default=0)
    boxes = ndimage.find_objects(lab, max_label=top) if top > 0 else []
    counts = np.bincount(lab.reshape(-1), minlength=top + 1) if lab.size else np.zeros(top + 1)
    out: dict[int, LabelMask] = {}
    for v in wanted:
        box = boxes[v - 1] if 0 < v <= len(boxes) else None
        out[v] = LabelMask(lab, v, box, int(counts[v]) if v < len(counts) else 0)
    return out
