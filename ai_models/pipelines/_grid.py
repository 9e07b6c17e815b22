"""Grid helpers shared by the built-in pipelines and their training scripts.

* canonical orientation: permute/flip a ``(k, i, j)`` volume so that its
  axes run towards patient superior, posterior and left (LPS ``z, y, x``);
* working grid: resample to a coarse isotropic spacing with per-voxel mean
  *and* max (the max keeps thin dense structures and small nodules visible);
* label pooling (training) and nearest-neighbour index maps back to the
  source grid (inference).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

HU_MIN = -1024.0
"""Lower clip of Hounsfield units before resampling (padding values vanish)."""

HU_MAX = 3000.0
"""Upper clip of Hounsfield units before resampling (metal does not dominate)."""


@dataclass(frozen=True)
class Orientation:
    """How a ``(k, i, j)`` array maps onto the canonical ``(z, y, x)`` order.

    ``perm[c]`` is the source axis that becomes canonical axis ``c``;
    ``flip[c]`` tells whether that axis is reversed.
    """

    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]

    def to_canonical(self, arr: np.ndarray) -> np.ndarray:
        """Return a (possibly non-contiguous) canonical view of ``arr`` ``(k, i, j)``."""
        out = np.transpose(arr, self.perm)
        sl = tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)
        return out[sl]

    def from_canonical(self, arr: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_canonical`: canonical ``(z, y, x)`` -> ``(k, i, j)``."""
        sl = tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)
        arr = arr[sl]
        return np.transpose(arr, np.argsort(self.perm))

    def spacing(self, spacing_kij: np.ndarray) -> np.ndarray:
        """Spacing ``(3,)`` in canonical order."""
        return np.asarray(spacing_kij, dtype=float)[list(self.perm)]


def orientation_from_direction(direction: np.ndarray) -> Orientation:
    """Closest axis permutation/flip for a direction matrix.

    Parameters
    ----------
    direction:
        ``(3, 3)``; columns are the LPS unit vectors of the ``k, i, j`` axes.

    Returns
    -------
    Orientation
        The permutation maximising the alignment of array axes with LPS
        ``z, y, x`` (oblique volumes map to the nearest one).
    """
    d = np.asarray(direction, dtype=float)
    best, best_score = (0, 1, 2), -1.0
    lps_for_canon = (2, 1, 0)  # canonical axis c is LPS axis z, y, x
    for perm in itertools.permutations(range(3)):
        score = sum(abs(d[lps_for_canon[c], perm[c]]) for c in range(3))
        if score > best_score:
            best, best_score = perm, score  # type: ignore[assignment]
    flip = tuple(bool(d[lps_for_canon[c], best[c]] < 0) for c in range(3))
    return Orientation(perm=tuple(int(p) for p in best), flip=flip)  # type: ignore[arg-type]


def working_shape(
    shape: tuple[int, ...], spacing: np.ndarray, working_spacing: float
) -> tuple[int, int, int]:
    """Grid size at ``working_spacing`` covering the same extent as ``shape``."""
    return tuple(
        max(1, int(round(n * float(s) / working_spacing)))
        for n, s in zip(shape, spacing, strict=False)
    )  # type: ignore[return-value]


def hu_features(hu: np.ndarray, out_shape: tuple[int, int, int]) -> torch.Tensor:
    """Mean and max HU per working voxel, scaled to about ``[0, 4]``.

    Parameters
    ----------
    hu:
        ``(z, y, x)`` Hounsfield units at the source resolution (any strides).
    out_shape:
        ``(z', y', x')`` working grid size.

    Returns
    -------
    torch.Tensor
        ``(2, z', y', x')`` float32: channel 0 the mean, channel 1 the max,
        both as ``(HU + 1000) / 1000`` (air 0, water 1).
    """
    t = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))[None, None]
    t = t.clamp(HU_MIN, HU_MAX)
    mid = tuple(min(a, b) for a, b in zip(t.shape[2:], out_shape, strict=False))
    mean = F.adaptive_avg_pool3d(t, mid)  # type: ignore[arg-type]
    mx = F.adaptive_max_pool3d(t, mid)
    x = torch.cat([mean, mx], dim=1)
    if tuple(mid) != tuple(out_shape):
        x = F.interpolate(x, size=out_shape, mode="trilinear", align_corners=False)
    return ((x[0] + 1000.0) / 1000.0).contiguous()


def pool_labels(
    labels: np.ndarray,
    out_shape: tuple[int, int, int],
    n_classes: int,
    priority: dict[int, float] | None = None,
) -> np.ndarray:
    """Down-sample a label map by (weighted) majority per working voxel.

    Parameters
    ----------
    labels:
        ``(z, y, x)`` integer label map.
    out_shape:
        Working grid size.
    n_classes:
        Number of label values.
    priority:
        Optional weight per label applied to its voxel fraction (e.g. small
        nodules win a coarse voxel they only partly fill).

    Returns
    -------
    np.ndarray
        ``out_shape`` uint8 labels.
    """
    t = torch.from_numpy(labels.astype(np.int64))
    oh = F.one_hot(t, n_classes).permute(3, 0, 1, 2)[None].float()
    mid = tuple(min(a, b) for a, b in zip(oh.shape[2:], out_shape, strict=False))
    frac = F.adaptive_avg_pool3d(oh, mid)  # type: ignore[arg-type]
    if tuple(mid) != tuple(out_shape):
        frac = F.interpolate(frac, size=out_shape, mode="nearest")
    if priority:
        for lab, w in priority.items():
            frac[:, lab] *= w
    return frac[0].argmax(0).numpy().astype(np.uint8)


def nearest_index(n_src: int, n_work: int) -> np.ndarray:
    """For each source index, the working-grid index whose cell contains it.

    Both grids cover the same extent (cell-centred), so source voxel ``a``
    lies at ``(a + 0.5) * n_work / n_src - 0.5`` in working units.
    """
    pos = (np.arange(n_src) + 0.5) * (n_work / n_src) - 0.5
    return np.clip(np.rint(pos), 0, n_work - 1).astype(np.intp)


def upsample_nearest(work: np.ndarray, src_shape: tuple[int, int, int]) -> np.ndarray:
    """Nearest-neighbour ``work`` ``(z', y', x')`` -> ``src_shape`` ``(z, y, x)``."""
    iz, iy, ix = (nearest_index(n, m) for n, m in zip(src_shape, work.shape, strict=False))
    return work[iz][:, iy][:, :, ix]
