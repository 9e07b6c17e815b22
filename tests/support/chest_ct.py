"""A synthetic chest CT written as a DICOM series, for tests that need ``ct-lungs`` results.

The shared real data holds no chest CT (its CTs are heads and a 3-slice
abdomen), and ``ct-lungs`` rightly refuses a head.  Tests of the whole path
(receive, route, run, deliver, view) therefore send a chest phantom of the
family the demonstration model was trained on, written as a CT Image Storage
series with real headers (``bench.synthetic.write_volume_series``): 28 axial
slices of 256 x 256 pixels, 8 mm apart, lungs fully covered.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.synthetic import write_volume_series

__all__ = ["CHEST_SLICES", "chest_phantom_volume", "write_chest_ct"]

CHEST_SLICES = 28
"""Slices in :func:`write_chest_ct`'s series."""

_SPACING = np.array([8.0, 1.5, 1.5], np.float32)
_FOV_MM = (CHEST_SLICES * 8.0, 384.0, 384.0)


def chest_phantom_volume(seed: int = 0):  # noqa: ANN201 - a Volume (imported lazily)
    """The phantom as a :class:`~ai_models.types.Volume`.

    Seed 0 covers both lungs from apex to base; seeds 1 and 3 cut the apices
    (partial coverage).
    """
    from ai_models.training.phantoms import phantom_volume, random_phantom

    ph = random_phantom(
        np.random.default_rng(seed), spacing=_SPACING, fov_mm=_FOV_MM, head_fraction=0.0,
        n_nodules=0,
    )  # fmt: skip
    return phantom_volume(ph, series_instance_uid=f"1.2.826.0.1.3680043.10.11.{seed + 1}")


def write_chest_ct(folder: Path, seed: int = 0, body_part: str | None = "CHEST") -> list[Path]:
    """Write the chest phantom of ``seed`` as a DICOM series into ``folder`` (new UIDs)."""
    return write_volume_series(
        chest_phantom_volume(seed), folder, description="synthetic chest CT", body_part=body_part
    )
