"""Pixel checks of anatomy (``ai_models.anatomy``) on phantoms and the shared real series.

The thresholds in ``ai_models/anatomy.py`` were set from these measurements
(ai_models/README.md, "Applicability checks"); the tests make sure each side
of every threshold is where it was measured to be.
"""

from __future__ import annotations

import copy
import pathlib

import numpy as np
import pytest

from ai_models.anatomy import (
    MIN_HEAD_AP_TO_LR,
    MIN_LUNG_AREA_CM2,
    MIN_PARENCHYMA_HU,
    ct_lung_fields,
    mr_head,
)
from ai_models.dicom_files import discover_series
from ai_models.pipelines import get_pipeline
from ai_models.training.brain_phantoms import phantom_volume as brain_volume
from ai_models.training.evaluate_mr_brain_lesion import heldout_phantom
from ai_models.training.phantoms import (
    make_chest_phantom,
    make_head_phantom,
    make_shell_phantom,
    phantom_volume,
    random_phantom,
)
from ai_models.volume import load_series

HEAD_CT = "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm"
ABDOMEN_CT = "dcmqi/ct-3slice"
PROSTATE_MR = "dcmqi/qin-prostate-01-0001_adc"
QA_PHANTOM_MR = "dcm_qa_enh/Philips_Achieva_enhanced"
SEED = 20_261_204  # not a training or evaluation stream


def _mr(data: pathlib.Path, rel: str):  # noqa: ANN202
    (files,) = discover_series([data / rel]).values()
    return get_pipeline("mr-brain-lesion", device="cpu").read_series(files)


@pytest.mark.slow
def test_chest_phantoms_show_lung_fields() -> None:
    rng = np.random.default_rng(SEED)
    for _ in range(20):
        fields = ct_lung_fields(phantom_volume(random_phantom(rng, head_fraction=0.0)))
        assert fields.reasons() == [], fields
        assert fields.median_hu > MIN_PARENCHYMA_HU + 50
        assert fields.max_area_cm2 >= 2 * MIN_LUNG_AREA_CM2


@pytest.mark.parametrize("kind", ["head", "shell"])
def test_heads_and_phantom_shells_show_none(kind: str) -> None:
    rng = np.random.default_rng(SEED + 1)
    make = make_head_phantom if kind == "head" else make_shell_phantom
    for _ in range(8):
        spacing = np.array([2.5, 2.0, 2.0], np.float32)
        fields = ct_lung_fields(phantom_volume(make(rng, (80, 128, 128), spacing)))
        assert fields.reasons(), fields


def test_air_filled_shell_is_not_lung() -> None:
    """An air-filled object: lots of enclosed air, but pure air, not parenchyma."""
    shape, spacing = (60, 128, 128), np.array([3.0, 2.5, 2.5], np.float32)
    y, x = np.ogrid[: shape[1], : shape[2]]
    r = np.hypot((y - 64) * 2.5, (x - 64) * 2.5)  # mm from the axis
    img = np.full(shape, -1000.0, np.float32)
    img[:, r < 140] = -1000.0 + np.random.default_rng(0).normal(0, 8, (60, int((r < 140).sum())))
    img[:, (r >= 140) & (r < 160)] = 120.0  # the shell
    ph = make_chest_phantom(np.random.default_rng(1), shape, spacing)
    ph.image = img
    reasons = " ".join(ct_lung_fields(phantom_volume(ph)).reasons())
    assert "uniform" in reasons and "air-filled object" in reasons


def test_air_outside_the_body_is_never_lung() -> None:
    """A chest phantom's lungs emptied to soft tissue: the air around the body
    (beside the arms, under the table) counts for nothing."""
    rng = np.random.default_rng(SEED + 2)
    ph = random_phantom(rng, head_fraction=0.0)
    vol = phantom_volume(ph)
    assert ct_lung_fields(vol).reasons() == []
    solid = copy.copy(vol)
    enclosed_air = _inside(vol.array) & (vol.array < -400)
    solid.array = np.where(enclosed_air, 40.0, vol.array).astype(np.float32)
    assert (solid.array < -400).mean() > 0.2  # the air around the body is still there
    fields = ct_lung_fields(solid)
    assert fields.max_area_cm2 < MIN_LUNG_AREA_CM2 and fields.reasons()


def _inside(hu: np.ndarray) -> np.ndarray:
    """Voxels enclosed by the body contour in their slice."""
    from scipy import ndimage

    body = hu > -500
    return np.stack([ndimage.binary_fill_holes(s) for s in body])


def test_partial_coverage_names_the_cut_end() -> None:
    from tests.support.chest_ct import chest_phantom_volume

    vol = chest_phantom_volume()
    whole = ct_lung_fields(vol)
    assert not whole.partial and whole.coverage() == "complete"
    n = vol.shape[0]
    no_apex = copy.copy(vol)  # the top 12 slices (96 mm) left out: the apices are cut
    no_apex.array, no_apex.frames = vol.array[: n - 12], vol.frames[: n - 12]
    cut = ct_lung_fields(no_apex)
    assert cut.cut_superior and not cut.cut_inferior
    assert cut.coverage() == "partial (the apices are cut off)"
    k = vol.shape[0] // 2
    lower = copy.copy(vol)  # the lower half only: lungs cut at the top (superior end)
    lower.array, lower.frames = vol.array[:k], vol.frames[:k]
    assert ct_lung_fields(lower).cut_superior


def test_real_head_ct_shows_no_lung_fields(dicom_data: pathlib.Path) -> None:
    fields = ct_lung_fields(load_series(dicom_data / HEAD_CT))
    assert fields.max_area_cm2 < MIN_LUNG_AREA_CM2 / 2
    assert "no lung fields" in fields.reasons()[0]


def test_real_abdominal_ct_lung_bases_are_parenchyma(dicom_data: pathlib.Path) -> None:
    """Three slices of an abdomen with the lung bases: parenchyma, cut at both ends."""
    fields = ct_lung_fields(load_series(dicom_data / ABDOMEN_CT))
    assert fields.median_hu > MIN_PARENCHYMA_HU + 100
    assert fields.trunk_area_cm2 > 500
    assert fields.cut_superior and fields.cut_inferior
    assert [r for r in fields.reasons() if "superior-inferior" in r]  # too short to analyse


@pytest.mark.slow
def test_brain_phantoms_are_heads() -> None:
    rng = np.random.default_rng(SEED + 3)
    planes, contrasts = ("axial", "sagittal", "coronal", "oblique"), ("T1", "T2", "FLAIR")
    for i in range(8):  # 60 were measured for the threshold (ai_models/README.md)
        ph = heldout_phantom(rng, planes[i % 4], contrasts[i % 3], n_lesions=1)
        head = mr_head(brain_volume(ph))
        assert head.reasons() == [], (planes[i % 4], head)


def test_real_prostate_mr_is_not_a_head(dicom_data: pathlib.Path) -> None:
    head = mr_head(_mr(dicom_data, PROSTATE_MR))
    assert head.ap_to_lr < MIN_HEAD_AP_TO_LR - 0.2
    assert "not a head's" in " ".join(head.reasons())


def test_real_cylinder_phantom_is_not_a_head(dicom_data: pathlib.Path) -> None:
    head = mr_head(_mr(dicom_data, QA_PHANTOM_MR))
    assert 0.9 < head.ap_to_lr < MIN_HEAD_AP_TO_LR
    assert head.reasons()


def test_a_trunk_cut_by_the_field_of_view_is_not_a_head() -> None:
    """An ellipse wider than the image (a trunk on a small field of view)."""
    rng = np.random.default_rng(SEED + 4)
    vol = brain_volume(heldout_phantom(rng, "axial", "T2", n_lesions=0))
    n, rows, cols = vol.shape
    i, j = np.ogrid[:rows, :cols]
    trunk = (((i - rows / 2) / (0.4 * rows)) ** 2 + ((j - cols / 2) / (0.9 * cols)) ** 2) < 1
    wide = copy.copy(vol)
    wide.array = np.broadcast_to(np.where(trunk, 100.0, 0.0), vol.shape).astype(np.float32)
    reasons = " ".join(mr_head(wide).reasons())
    assert "image border" in reasons
