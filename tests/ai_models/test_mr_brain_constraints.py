"""Anatomical constraints of ``mr-brain-lesion``: plausible or silent.

Brain, lesions and edema lie inside the intracranial space (the head mask
eroded by the scalp and skull, above the neck); an implausible brain volume
says "Value out of range", a brain cut by the field of view "Anatomy coverage
incomplete", and neither gives a volume.  On real data only: synthetic heads
rendered by :mod:`ai_models.training.brain_phantoms` and the shared real MR.
"""

from __future__ import annotations

import copy
import pathlib

import numpy as np
import pytest

from ai_models.anatomy import SCALP_SKULL_MM, mr_intracranial
from ai_models.dicom_files import discover_series
from ai_models.pipelines import CODES, MR_BRAIN_LESION, get_pipeline
from ai_models.pipelines._grid import orientation_from_direction
from ai_models.pipelines.mr_brain_lesion import (
    BACKGROUND,
    BRAIN,
    EDEMA,
    MrBrainLesionPipeline,
    constrain_to_intracranial,
    drop_implausible,
)
from ai_models.plausibility import RANGES, VALUE_OUT_OF_RANGE
from ai_models.training.brain_phantoms import (
    BrainPhantom,
    phantom_volume,
    random_acquisition,
    random_anatomy,
    random_contrast,
    render,
)
from ai_models.training.evaluate_mr_brain_lesion import reference_masks
from ai_models.types import Volume

PHILIPS = "dcm_qa_enh/Philips_Achieva_enhanced"
SEEDS = (4_242_001, 4_242_002)
PLANES = ("axial", "sagittal")


def _whole_head(seed: int, plane: str) -> BrainPhantom:
    """A synthetic head covered completely (neck below, air around)."""
    rng = np.random.default_rng(seed)
    anat = random_anatomy(rng, n_lesions=1)
    acq = random_acquisition(
        rng, plane=plane, pixel_mm=(1.3, 1.6), slice_mm=(2.0, 4.0), coverage=(1.1, 1.1)
    )
    return render(anat, acq, random_contrast(rng), rng, max_sub=1)


@pytest.fixture(scope="module")
def pipeline() -> MrBrainLesionPipeline:
    return get_pipeline(MR_BRAIN_LESION, device="cpu")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def heads(pipeline):
    """(phantom, volume, result) for each seed and plane."""
    out = []
    for i, seed in enumerate(SEEDS):
        for j, plane in enumerate(PLANES):
            ph = _whole_head(seed, plane)
            vol = phantom_volume(ph, series_instance_uid=f"1.2.826.0.1.3680043.10.9.{i}.{j}")
            out.append((ph, vol, pipeline.run(vol)))
    return out


def _intracranial(volume: Volume) -> np.ndarray:
    """The intracranial mask on the volume's own ``(k, i, j)`` grid."""
    orient = orientation_from_direction(volume.direction)
    shape_c = tuple(int(volume.shape[p]) for p in orient.perm)
    return orient.from_canonical(mr_intracranial(volume).intracranial_on(shape_c))


def _brain_finding(result):
    return next(f for f in result.findings if f.tracking_id == "Brain")


def _scaled(volume: Volume, factor: float) -> Volume:
    """The same voxels with ``factor`` times the spacing (a head of another size)."""
    out = copy.copy(volume)
    out.spacing = np.asarray(volume.spacing, float) * factor
    return out


def test_segments_inside_the_intracranial_space(heads):
    for ph, vol, res in heads:
        inside = _intracranial(vol)
        assert res.segments
        for s in res.segments:
            assert not (s.mask & ~inside).any(), (ph.acquisition.plane, s.label)
        # what the constraint costs the true brain: almost nothing
        ref = reference_masks(ph)["brain"]
        assert (ref & ~inside).sum() / ref.sum() < 0.005


def test_whole_heads_report_a_plausible_brain_volume(heads):
    rng = RANGES["brain"]
    for ph, vol, res in heads:
        f = _brain_finding(res)
        assert f.measurements and not f.qualitative_evaluations, res.notes
        ml = f.measurements[0].value / 1000.0
        ref_ml = reference_masks(ph)["brain"].sum() * vol.voxel_volume_mm3 / 1000.0
        assert rng.low <= ml <= rng.high and ml == pytest.approx(ref_ml, rel=0.2)


def test_real_mr_segments_inside_the_intracranial_space(pipeline, dicom_data):
    """The shared real MR volume (a QA cylinder labelled BRAIN, analysed past the
    applicability check): its "brain" stays inside the intracranial space and,
    at 2,000 mL, is out of range: no volume."""
    (files,) = discover_series([pathlib.Path(dicom_data / PHILIPS)]).values()
    vol = pipeline.read_series(files)
    res = pipeline._analyse(vol)
    inside = _intracranial(vol)
    for s in res.segments:
        assert not (s.mask & ~inside).any(), s.label
    f = _brain_finding(res)
    assert not f.measurements
    assert [q.value for q in f.qualitative_evaluations] == [VALUE_OUT_OF_RANGE]
    assert any("outside the plausible 900-1,900 mL" in n for n in res.notes), res.notes


@pytest.mark.parametrize("factor", [0.7, 1.3])
def test_implausibly_sized_brain_is_out_of_range(pipeline, heads, factor):
    _, vol, _ = heads[0]
    res = pipeline._analyse(_scaled(vol, factor))
    f = _brain_finding(res)
    assert not f.measurements
    assert [q.value for q in f.qualitative_evaluations] == [VALUE_OUT_OF_RANGE]
    assert f.qualitative_evaluations[0].name == CODES.FINDING
    assert any("brain" in n and "outside the plausible" in n for n in res.notes), res.notes
    brain = next(s for s in res.segments if s.label == "Brain")
    assert brain.mask.any()  # the segment stays


@pytest.mark.parametrize("index", [0, 1])
def test_truncated_head_is_coverage_incomplete(pipeline, heads, index):
    """Half the head (axial: the inferior or superior half; sagittal: one side)."""
    _, vol, _ = heads[index]
    n = vol.shape[0]
    cut = copy.copy(vol)
    cut.array = vol.array[: n // 2]
    cut.frames = vol.frames[: n // 2]
    res = pipeline.run(cut)
    f = _brain_finding(res)
    assert not f.measurements
    assert [q.value for q in f.qualitative_evaluations] == [CODES.ANATOMY_COVERAGE_INCOMPLETE]
    assert any("brain coverage partial" in n for n in res.notes), res.notes
    assert not any("outside the plausible" in n for n in res.notes)  # no range check


def test_brain_spilling_into_scalp_and_neck_is_cut_back(heads):
    """A "brain" that is the whole head (scalp, skull, face and neck included),
    as a failing network may give, keeps only the intracranial space."""
    for ph, vol, _ in heads:
        space = mr_intracranial(vol)
        orient = orientation_from_direction(vol.direction)
        shape_c = tuple(int(vol.shape[p]) for p in orient.perm)
        inside = space.intracranial_on(shape_c)
        labels = np.where(orient.to_canonical(vol.array) > 0.08 * vol.array.max(), BRAIN, 0)
        labels = labels.astype(np.uint8)
        before = int((labels > 0).sum())
        notes = constrain_to_intracranial(labels, space, vol.voxel_volume_mm3 / 1000.0)
        assert not (labels[~inside] != BACKGROUND).any()
        assert (labels > 0).sum() < 0.8 * before
        assert any(f"skin depth under {SCALP_SKULL_MM:g} mm" in n for n in notes), notes
        if ph.acquisition.plane == "axial":  # the neck is in these volumes
            assert space.inferior_limit is not None
            assert not labels[: (space.inferior_limit + 1) * space.steps[0]].any()


def test_implausible_lesion_and_edema_are_dropped(heads):
    ph, vol, _ = heads[0]
    ref = reference_masks(ph)
    brain = ref["brain"]
    ml = vol.voxel_volume_mm3 / 1000.0
    # edema over 60 % of the brain, one lesion the whole brain, one real lesion
    edema = brain.copy()
    edema[: int(0.4 * brain.shape[0])] = False
    lesions, kept_edema, notes = drop_implausible(brain, [brain, ref["lesion"]], edema, ml)
    assert len(lesions) == 1 and lesions[0] is ref["lesion"]
    if edema.sum() > 0.5 * brain.sum():
        assert not kept_edema.any() and any(n.startswith("edema of") for n in notes)
    assert any(n.startswith("lesion of") and "dropped" in n for n in notes)
    # plausible sizes pass unchanged
    lesions, kept_edema, notes = drop_implausible(brain, [ref["lesion"]], ref["edema"], ml)
    assert len(lesions) == 1 and (kept_edema == ref["edema"]).all() and notes == []
    assert EDEMA == 3
