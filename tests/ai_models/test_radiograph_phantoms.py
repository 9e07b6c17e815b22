"""Synthetic radiograph phantoms: the variants of real images, and lateral chests.

* chest and mammogram phantoms are reproducible per seed, variants included;
  each variant turns up about as often as its stated probability; forcing
  variants on or off leaves a seed's anatomy, findings and masses alone;
* frontal chest phantoms with each variant forced on still pass the
  frontal-chest pixel check, and mammogram phantoms with labels and lead
  markers the breast check; labels and markers stay off the mass boxes;
* a **lateral** chest radiograph (not a training class) sent as a chest CR,
  with no View Position or with one that lies ("PA"), is skipped by
  ``cxr-findings`` with a reason, never answered with probabilities; the
  test counts which check refuses it (pixel check or OOD check).
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from ai_models.errors import PipelineNotApplicable
from ai_models.pipelines.cxr_findings import CxrFindingsPipeline, looks_like_chest, model_input
from ai_models.pipelines.mg_masses import model_input as mg_input
from ai_models.radiograph import breast_region, load_radiograph
from ai_models.training import cxr_phantoms, mammo_phantoms
from ai_models.training.cxr_phantoms import random_cxr_phantom, random_lateral_cxr
from ai_models.training.mammo_phantoms import random_mammo_phantom
from ai_models.types import Volume
from tests.support.radiographs import cxr_dataset

torch.set_num_threads(2)

CXR_OFF = dict.fromkeys(cxr_phantoms.VARIANT_PROBABILITY, False)
MG_OFF = dict.fromkeys(mammo_phantoms.VARIANT_PROBABILITY, False)

#: Lateral phantoms sent through the pipeline here.
N_LATERAL = 16


def test_cxr_phantoms_are_seeded_variants_included() -> None:
    a = random_cxr_phantom(np.random.default_rng(5), 200)
    b = random_cxr_phantom(np.random.default_rng(5), 200)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.variants == b.variants
    np.testing.assert_array_equal(
        random_lateral_cxr(np.random.default_rng(5), 200),
        random_lateral_cxr(np.random.default_rng(5), 200),
    )


def test_cxr_variant_frequencies() -> None:
    rng = np.random.default_rng(123)
    n = 120
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        ph = random_cxr_phantom(rng, 160)
        assert set(ph.variants) <= set(cxr_phantoms.VARIANT_PROBABILITY)
        seen.update(list(ph.variants))
        if "tilt" in ph.variants:
            assert abs(ph.variants["tilt"]) <= cxr_phantoms.MAX_TILT_DEG
    for name, p in cxr_phantoms.VARIANT_PROBABILITY.items():
        assert abs(seen[name] / n - p) < 0.15, (name, seen[name])


def test_cxr_variants_leave_the_findings_alone() -> None:
    for seed in range(6):
        on = random_cxr_phantom(
            np.random.default_rng(seed), 200, variants=dict.fromkeys(CXR_OFF, True)
        )
        off = random_cxr_phantom(np.random.default_rng(seed), 200, variants=CXR_OFF)
        assert off.variants == {}
        assert set(on.variants) == set(CXR_OFF)
        np.testing.assert_array_equal(on.labels, off.labels)
        assert on.ctr == off.ctr and on.sides == off.sides
        assert np.abs(on.image - off.image).mean() > 0.01


@pytest.mark.parametrize("variant", sorted(cxr_phantoms.VARIANT_PROBABILITY))
def test_frontal_phantoms_with_each_variant_pass_the_pixel_check(variant: str) -> None:
    rng = np.random.default_rng(2024_1205)
    results = []
    for _ in range(20):
        ph = random_cxr_phantom(rng, 320, variants={variant: True})
        results.append(looks_like_chest(*model_input(ph.image)))
    refused = [reason for ok, reason in results if not ok]
    assert len(refused) <= 1, refused


def test_axial_rotation_moves_the_mediastinum() -> None:
    """The middle of the chest (mediastinum and the medial lung borders) moves
    by the drawn shift: the lag that best aligns the central column profile
    of the lung band with and without the variant."""
    moved = []
    for seed in range(8):
        none = (False, False, False, False)
        on = random_cxr_phantom(
            np.random.default_rng(seed),
            240,
            variants={**CXR_OFF, "axial_rotation": True},
            labels=none,
        )
        off = random_cxr_phantom(np.random.default_rng(seed), 240, variants=CXR_OFF, labels=none)
        rows, cols = on.image.shape
        band = slice(int(0.25 * rows), int(0.55 * rows))
        mid = slice(int(0.3 * cols), int(0.7 * cols))
        a = np.median(on.image[band], axis=0)[mid]
        b = np.median(off.image[band], axis=0)[mid]
        a, b = a - a.mean(), b - b.mean()
        lags = list(range(-10, 11))
        lag = lags[int(np.argmax([np.dot(np.roll(b, k), a) for k in lags]))]
        shift_px = on.variants["axial_rotation"] * (cols - 1) / 2.0
        moved.append((lag, shift_px))
    assert all(abs(lag - s) <= 1.5 for lag, s in moved), moved


def test_mammo_phantoms_are_seeded_and_labels_are_not_masses() -> None:
    a = random_mammo_phantom(np.random.default_rng(9), 256)
    b = random_mammo_phantom(np.random.default_rng(9), 256)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.variants == b.variants
    rng = np.random.default_rng(77)
    for _ in range(20):
        ph = random_mammo_phantom(rng, 256, variants={"label": True, "lead_marker": True})
        for key in ("label_box", "lead_marker_box"):
            box = ph.variants[key]
            if box is None:
                continue
            x0, y0, x1, y1 = box
            for m in ph.boxes:
                overlap = max(0.0, min(x1, m[2]) - max(x0, m[0])) * max(
                    0.0, min(y1, m[3]) - max(y0, m[1])
                )
                assert overlap == 0.0, (key, box, m)
            # bright: a burned-in label or marker is drawn near white
            assert ph.image[y0:y1, x0:x1].max() > 0.75


def test_mammo_variants_leave_the_masses_alone() -> None:
    for seed in range(6):
        on = random_mammo_phantom(
            np.random.default_rng(seed), 256, variants=dict.fromkeys(MG_OFF, True)
        )
        off = random_mammo_phantom(np.random.default_rng(seed), 256, variants=MG_OFF)
        np.testing.assert_array_equal(on.boxes, off.boxes)
        np.testing.assert_array_equal(on.breast, off.breast)
        assert on.shapes == off.shapes and on.view == off.view


def test_labelled_mammogram_phantoms_pass_the_breast_check() -> None:
    rng = np.random.default_rng(31)
    refused = []
    for _ in range(30):
        ph = random_mammo_phantom(rng, 320, variants=dict.fromkeys(MG_OFF, True))
        ok, reason, _ = breast_region(mg_input(ph.image)[0])
        if not ok:
            refused.append(reason)
    assert len(refused) <= 1, refused


def _lateral_volume(image: np.ndarray, view: str | None) -> Volume:
    """A lateral phantom as a chest CR (Body Part Examined CHEST), View Position ``view``."""
    ds = cxr_dataset(size=320)
    top = 4095
    stored = np.round(np.clip(image, 0.0, 1.0) * top).astype(np.uint16)
    ds.Rows, ds.Columns = stored.shape
    spacing = 400.0 / max(stored.shape)
    ds.PixelSpacing = [spacing, spacing]
    ds.PixelData = stored.tobytes()
    ds.SeriesDescription = "synthetic chest"
    if view is None:
        del ds.ViewPosition
    else:
        ds.ViewPosition = view
    return load_radiograph([ds])


@pytest.mark.parametrize("view", [None, "PA"], ids=["no view position", "header says PA"])
def test_lateral_chest_is_skipped_with_a_reason(view: str | None) -> None:
    pipe = CxrFindingsPipeline(device="cpu")
    rng = np.random.default_rng(2024_1206)
    by: collections.Counter[str] = collections.Counter()
    for i in range(N_LATERAL):
        volume = _lateral_volume(random_lateral_cxr(rng, 400), view)
        with pytest.raises(PipelineNotApplicable) as err:
            pipe.run(volume) if i == 0 else pipe.check(volume)
        reason = str(err.value)
        assert reason.startswith("cxr-findings: ") and len(reason) > 40
        by["ood" if "training distribution" in reason else "pixel"] += 1
    print(f"lateral phantoms refused by: {dict(by)}")
    assert sum(by.values()) == N_LATERAL
