"""2D mask geometry for the writers: largest cross-section, outlines, edges.

Image coordinates follow PS3.3 C.18.6.1.1 (SCOORD): ``(column, row)`` in
pixels, ``(0, 0)`` at the top left corner of the top left pixel, so the
centre of pixel ``[r, c]`` is ``(c + 0.5, r + 0.5)``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["largest_component", "largest_cross_section", "outline", "edges"]

# Moore neighbourhood, clockwise on screen (rows grow downwards), from west.
_NEIGHBOURS = ((0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1))
_INDEX = {d: i for i, d in enumerate(_NEIGHBOURS)}


def largest_cross_section(mask: np.ndarray) -> int | None:
    """Index ``k`` of the slice of a ``(k, i, j)`` mask with the most pixels."""
    per_slice = getattr(mask, "count_per_slice", None)  # a LabelMask: from its box
    if per_slice is not None:
        areas = per_slice()
    else:
        areas = np.count_nonzero(mask.reshape(mask.shape[0], -1), axis=1)
    if not areas.any():
        return None
    return int(np.argmax(areas))


def largest_component(mask2d: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of a 2D boolean mask (the one :func:`outline` traces)."""
    labels, n = ndimage.label(mask2d, structure=np.ones((3, 3), dtype=bool))
    if n <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _trace(pad: np.ndarray) -> list[tuple[int, int]]:
    """Moore-neighbour tracing of the outer boundary of one 8-connected
    component in a zero-padded boolean image; returns pixel ``(row, col)``."""
    rows, cols = np.nonzero(pad)
    start = (int(rows[0]), int(cols[0]))  # top-most, then left-most pixel
    contour = [start]
    cur = start
    back = 0  # the west neighbour of the start pixel is background
    first_step: tuple[int, int] | None = None
    limit = 4 * int(pad.sum()) + 8
    for _ in range(limit):
        for t in range(8):
            d = (back + t) % 8
            nxt = (cur[0] + _NEIGHBOURS[d][0], cur[1] + _NEIGHBOURS[d][1])
            if pad[nxt]:
                break
        else:
            return contour  # a single isolated pixel
        bg_dir = _NEIGHBOURS[(d - 1) % 8]
        bg = (cur[0] + bg_dir[0], cur[1] + bg_dir[1])
        back = _INDEX[(bg[0] - nxt[0], bg[1] - nxt[1])]
        if cur == start:
            if first_step is None:
                first_step = nxt
            elif nxt == first_step:
                break  # the first edge repeats: the contour is closed
        if nxt != start or first_step is None:
            contour.append(nxt)
        cur = nxt
    return contour


def _simplify(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Ramer-Douglas-Peucker simplification of an open polyline."""
    if len(points) < 3:
        return points
    keep = np.zeros(len(points), dtype=bool)
    keep[0] = keep[-1] = True
    stack = [(0, len(points) - 1)]
    while stack:
        a, b = stack.pop()
        if b <= a + 1:
            continue
        seg = points[b] - points[a]
        rel = points[a + 1 : b] - points[a]
        norm = float(np.hypot(*seg))
        if norm == 0.0:
            dist = np.hypot(rel[:, 0], rel[:, 1])
        else:
            dist = np.abs(seg[0] * rel[:, 1] - seg[1] * rel[:, 0]) / norm
        i = int(np.argmax(dist))
        if dist[i] > tolerance:
            m = a + 1 + i
            keep[m] = True
            stack.extend(((a, m), (m, b)))
    return points[keep]


def outline(mask2d: np.ndarray, tolerance: float = 0.75) -> np.ndarray | None:
    """Closed outline of the largest connected region of a 2D mask.

    Returns
    -------
    numpy.ndarray | None
        ``(n, 2)`` float32 ``(column, row)`` image coordinates of pixel centres
        on the outer boundary, first point repeated last (a closed POLYLINE,
        PS3.3 C.18.6.1.2); ``None`` for an empty mask.  A one-pixel region
        gives the pixel's square outline.
    """
    mask2d = np.asarray(mask2d, dtype=bool)
    if not mask2d.any():
        return None
    comp = largest_component(mask2d)
    pad = np.pad(comp, 1)
    rc = np.asarray(_trace(pad), dtype=np.float64) - 1.0  # undo the padding
    if len(rc) < 3:
        r, c = rc[0]
        sq = np.array([[c, r], [c + 1, r], [c + 1, r + 1], [c, r + 1], [c, r]], dtype=np.float32)
        return sq
    pts = np.stack([rc[:, 1] + 0.5, rc[:, 0] + 0.5], axis=1)
    pts = np.concatenate([pts, pts[:1]], axis=0)
    pts = _simplify(pts, tolerance)
    if len(pts) < 4:  # keep a closed polygon with at least three corners
        pts = np.concatenate([np.stack([rc[:, 1] + 0.5, rc[:, 0] + 0.5], 1), pts[:1]], 0)
    return pts.astype(np.float32)


def edges(mask2d: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Boolean image of the inner boundary pixels of a 2D mask."""
    mask2d = np.asarray(mask2d, dtype=bool)
    eroded = ndimage.binary_erosion(mask2d, iterations=max(1, int(thickness)), border_value=0)
    return mask2d & ~eroded
