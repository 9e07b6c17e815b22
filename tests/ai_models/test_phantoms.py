"""Synthetic CT phantoms: Hounsfield physics, anatomy sides, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from ai_models.pipelines._grid import (
    hu_features,
    orientation_from_direction,
    pool_labels,
    upsample_nearest,
    working_shape,
)
from ai_models.training.phantoms import (
    BONE,
    LEFT_LUNG,
    NODULE,
    RIGHT_LUNG,
    make_chest_phantom,
    make_head_phantom,
    phantom_volume,
)

SPACING = np.array([3.0, 2.5, 2.5], np.float32)
SHAPE = (70, 150, 150)


@pytest.fixture(scope="module")
def chest():
    return make_chest_phantom(np.random.default_rng(3), SHAPE, SPACING, n_nodules=3)


def test_labels_and_hounsfield_units(chest):
    img, lab = chest.image, chest.labels
    assert img.shape == lab.shape == SHAPE and img.dtype == np.float32
    for v in (RIGHT_LUNG, LEFT_LUNG, BONE):
        assert (lab == v).sum() > 1000
    lung = (lab == RIGHT_LUNG) | (lab == LEFT_LUNG)
    assert -900 < np.median(img[lung]) < -700
    assert np.median(img[lab == BONE]) > 250
    assert img.min() < -900 and img.max() > 400
    assert np.median(img[lab == 0]) < -500 or np.median(img[lab == 0]) > -200  # air or tissue


def test_patient_left_is_plus_x(chest):
    # canonical (z, y, x): x (patient left) increases with the last index
    xs = np.arange(SHAPE[2])
    right_x = xs[np.any(chest.labels == RIGHT_LUNG, axis=(0, 1))].mean()
    left_x = xs[np.any(chest.labels == LEFT_LUNG, axis=(0, 1))].mean()
    assert right_x < SHAPE[2] / 2 < left_x


def test_nodules_sizes_and_placement(chest):
    assert 1 <= len(chest.nodules) <= 3
    for n in chest.nodules:
        assert 3.0 <= n.diameter_mm <= 30.0
    assert (chest.labels == NODULE).any()


def test_seeded_reproducible():
    a = make_chest_phantom(np.random.default_rng(7), (30, 60, 60), SPACING * 2)
    b = make_chest_phantom(np.random.default_rng(7), (30, 60, 60), SPACING * 2)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_head_phantom_has_bone_but_no_lung():
    h = make_head_phantom(np.random.default_rng(1), (50, 90, 90), SPACING)
    assert (h.labels == BONE).sum() > 500
    assert not np.isin(h.labels, [RIGHT_LUNG, LEFT_LUNG, NODULE]).any()
    assert (h.image < -800).any()  # air sinuses and outside air, labelled background


def test_phantom_volume_geometry_and_grid_round_trip(chest):
    vol = phantom_volume(chest)
    o = orientation_from_direction(vol.direction)
    assert o.perm == (0, 1, 2) and o.flip == (False, False, False)
    # voxel of the left lung lies at positive LPS x
    k, i, j = np.argwhere(chest.labels == LEFT_LUNG)[0]
    assert vol.index_to_lps(np.array([k, i, j]))[0] > 0
    ws = working_shape(vol.shape, vol.spacing, 6.0)
    feats = hu_features(vol.array, ws)
    assert tuple(feats.shape) == (2, *ws)
    assert (feats[1] >= feats[0] - 1e-5).all()  # max >= mean
    labs = pool_labels(chest.labels, ws, 5)
    back = upsample_nearest(labs, vol.shape)
    assert back.shape == vol.shape
    assert (back == chest.labels).mean() > 0.9
