"""A synthetic mammogram on which ``mg-masses`` finds nothing (negative report tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ai_models.training.mammo_phantoms import random_mammo_phantom
from tests.ai_models.test_mg_masses import _mg_dataset

#: A phantom of the mg-masses training family drawn with no mass, on which the
#: shipped weights find nothing (left breast, cranio-caudal view).
NO_MASS_SEED = 314_160


def write_no_mass_mammogram(folder: Path) -> Path:
    """Write the :data:`NO_MASS_SEED` phantom as an MG For Presentation image."""
    phantom = random_mammo_phantom(
        np.random.default_rng(NO_MASS_SEED), rows=1024, n_masses=0, laterality="L", view="CC"
    )
    ds = _mg_dataset(phantom.image, laterality="L", view_code=("399162004", "cranio-caudal"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mg.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path
