"""A synthetic chest CT written as a DICOM series, for tests that need ``ct-lungs`` results.

The shared real data holds no chest CT (its CTs are heads and a 3-slice
abdomen), and ``ct-lungs`` rightly refuses a head.  Tests of the whole path
(receive, route, run, deliver, view) therefore send a chest phantom of the
family the demonstration model was trained on, written as a CT Image Storage
series with real headers (``bench.synthetic.write_volume_series``): 40 axial
slices of 256 x 256 pixels, 8 mm apart, adult lungs fully covered; with
``slices=PARTIAL_SLICES`` the field of view is shorter than the lungs
(partial coverage).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.synthetic import write_volume_series

__all__ = [
    "CHEST_SEED",
    "CHEST_SLICES",
    "PARTIAL_SLICES",
    "chest_phantom_volume",
    "write_chest_ct",
]

CHEST_SLICES = 40
"""Slices in :func:`write_chest_ct`'s series: 320 mm, more than adult lungs."""
PARTIAL_SLICES = 24
"""192 mm: shorter than any phantom's lungs (200-270 mm), so apices and bases are cut."""
CHEST_SEED = 2
"""A phantom with about 3.2 L of lung."""

_SPACING = np.array([8.0, 1.5, 1.5], np.float32)


def chest_phantom_volume(seed: int = CHEST_SEED, slices: int = CHEST_SLICES):  # noqa: ANN201
    """The phantom as a :class:`~ai_models.types.Volume` (imported lazily).

    With :data:`CHEST_SLICES` both lungs are covered from apex to base; with
    :data:`PARTIAL_SLICES` they are cut at both ends (partial coverage).
    """
    from ai_models.training.phantoms import phantom_volume, random_phantom

    ph = random_phantom(
        np.random.default_rng(seed), spacing=_SPACING, fov_mm=(slices * 8.0, 384.0, 384.0),
        head_fraction=0.0, n_nodules=0,
    )  # fmt: skip
    return phantom_volume(ph, series_instance_uid=f"1.2.826.0.1.3680043.10.11.{seed + 1}")


def write_chest_ct(
    folder: Path,
    seed: int = CHEST_SEED,
    body_part: str | None = "CHEST",
    slices: int = CHEST_SLICES,
) -> list[Path]:
    """Write the chest phantom of ``seed`` as a DICOM series into ``folder`` (new UIDs)."""
    return write_volume_series(
        chest_phantom_volume(seed, slices),
        folder,
        description="synthetic chest CT",
        body_part=body_part,
    )
