"""The radiograph pipelines decide from the pixels whether their anatomy is there.

Headers lie or are empty, so ``cxr-findings`` and ``mg-masses`` run their
image checks (:func:`ai_models.radiograph.frontal_chest`,
:func:`ai_models.radiograph.breast_region`) whatever Body Part Examined,
Modality or View Position say:

* real data with headers as they are, and with headers that lie (Body Part
  Examined CHEST / BREAST, Modality CR / MG, View Position PA, or these
  deleted): the ankle CR, the mammogram, the animal DX and single CT/MR
  slices are skipped by ``cxr-findings`` with a reason naming the pipeline;
  the chest CR, the ankle and the CT/MR slices by ``mg-masses``;
* the chest CR (both files) passes ``cxr-findings``' header and pixel
  checks and the mammogram ``mg-masses``', and both are then refused by the
  OOD check (``tests/ai_models/test_ood.py``); phantoms of the training
  families written as DICOM run with results;
* synthetic training phantoms pass (at least 98 % of 50 each), synthetic
  off-anatomy images (a lateral-like chest, lateral chest phantoms of
  :func:`~ai_models.training.cxr_phantoms.random_lateral_cxr`, a limb on a dark and on a white
  open field, a frontal phantom turned on its side, the other pipeline's
  phantoms) are refused;
* each check takes well under a second on the 4664 x 3064 mammogram.
"""

from __future__ import annotations

import copy
import dataclasses
import pathlib
import time
from collections.abc import Callable

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset
from scipy import ndimage

from ai_models.errors import PipelineNotApplicable
from ai_models.pipelines.cxr_findings import CxrFindingsPipeline, looks_like_chest
from ai_models.pipelines.cxr_findings import model_input as cxr_input
from ai_models.pipelines.mg_masses import MgMassesPipeline
from ai_models.pipelines.mg_masses import model_input as mg_input
from ai_models.radiograph import breast_region, frontal_chest, load_radiograph
from ai_models.training.cxr_phantoms import random_cxr_phantom, random_lateral_cxr
from ai_models.training.mammo_phantoms import random_mammo_phantom
from ai_models.types import Volume
from tests.support.radiographs import cxr_dataset, mammo_dataset

torch.set_num_threads(2)

CHEST_FILES = ("nema_wg04/RG1_chest_CR/RG1_UNCR.dcm", "nema_wg04/RG1_chest_CR/RG1_J2KI.dcm")
ANKLE = "nema_wg04/RG3_ankle_CR/RG3_J2KR.dcm"
MAMMO = "nema_wg04/MG1_mammo/MG1_J2KI.dcm"
ANIMAL_DX = "highdicom/dx/dx_image.dcm"
SLICES = (
    "dcm_qa_ct/GE_HiSpeedDual_head_tilted/14.dcm",  # head CT
    "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm/I150",  # head phantom CT
    "dcmqi/ct-3slice/02.dcm",  # abdominal CT
    "pydicom_data/bad/bad_sequence.dcm",  # small-field CT (spine, back muscles)
    "dcmqi/qin-prostate-01-0001_adc/000010.dcm",  # prostate MR (ADC)
    "dcm_qa_ts/siemens_trio_ax_asc_35sl/1.dcm",  # brain MR mosaic
)

#: Header lies: (Body Part Examined, Modality, View Position); None deletes.
CXR_LIES = (("CHEST", "CR", "PA"), (None, "DX", None))
MG_LIES = (("BREAST", "MG", "MLO"), (None, "MG", None))


def _read(dicom_data: pathlib.Path, rel: str) -> Dataset:
    path = dicom_data / rel
    if not path.is_file():
        pytest.skip(f"{rel} not in the shared data")
    return pydicom.dcmread(path)


def _lying(ds: Dataset, part: str | None, modality: str, view: str | None) -> Volume:
    """The image as a one-slice volume with its header changed in memory."""
    out = copy.deepcopy(ds)
    for kw, value in (("BodyPartExamined", part), ("ViewPosition", view)):
        if value is None:
            if kw in out:
                delattr(out, kw)
        else:
            setattr(out, kw, value)
    out.Modality = modality
    if part is None:
        for kw in ("StudyDescription", "SeriesDescription", "ProtocolName"):
            if kw in out:
                delattr(out, kw)
    return load_radiograph(out)


@pytest.fixture(scope="module")
def cxr() -> CxrFindingsPipeline:
    return CxrFindingsPipeline(device="cpu")


@pytest.fixture(scope="module")
def mg() -> MgMassesPipeline:
    return MgMassesPipeline(device="cpu")


# --------------------------------------------------------------------------- real data


@pytest.mark.parametrize("rel", (ANKLE, MAMMO, ANIMAL_DX, *SLICES))
def test_cxr_skips_non_chest(cxr: CxrFindingsPipeline, dicom_data: pathlib.Path, rel: str) -> None:
    ds = _read(dicom_data, rel)
    volumes = [load_radiograph(ds)] + [_lying(ds, *lie) for lie in CXR_LIES]
    for vol in volumes:
        with pytest.raises(PipelineNotApplicable, match=r"^cxr-findings: .{20,}") as err:
            cxr.check(vol)
        print(rel, vol.modality, "->", err.value)


@pytest.mark.parametrize("rel", (CHEST_FILES[0], ANKLE, *SLICES))
def test_mg_skips_non_breast(mg: MgMassesPipeline, dicom_data: pathlib.Path, rel: str) -> None:
    ds = _read(dicom_data, rel)
    volumes = [load_radiograph(ds)] + [_lying(ds, *lie) for lie in MG_LIES]
    for vol in volumes:
        with pytest.raises(PipelineNotApplicable, match=r"^mg-masses: .{20,}") as err:
            mg.check(vol)
        print(rel, vol.modality, "->", err.value)


def test_lying_headers_skip_on_the_pixels(
    cxr: CxrFindingsPipeline, mg: MgMassesPipeline, dicom_data: pathlib.Path
) -> None:
    """With a header that says exactly what each pipeline wants, the reason is
    the image check's, not the header's."""
    ankle = _lying(_read(dicom_data, ANKLE), "CHEST", "CR", "PA")
    with pytest.raises(PipelineNotApplicable, match="not taken for a frontal chest"):
        cxr.check(ankle)
    mammo = _lying(_read(dicom_data, MAMMO), "CHEST", "CR", "PA")
    with pytest.raises(PipelineNotApplicable, match="not taken for a frontal chest"):
        cxr.check(mammo)
    chest = _lying(_read(dicom_data, CHEST_FILES[0]), "BREAST", "MG", "MLO")
    with pytest.raises(PipelineNotApplicable, match="both side edges.*not taken for a mammogram"):
        mg.check(chest)
    # the animal DX with its pixel size: the imaged field is too small
    dx = _read(dicom_data, ANIMAL_DX)
    ok, reason, _ = frontal_chest(np.zeros((64, 64), np.float32), (169 * 1.2, 211 * 1.2))
    assert not ok and "imaged field is 20.3 x 25.3 cm" in reason
    assert dx.Rows == 169


OOD = "out of the model's training distribution"


@pytest.mark.parametrize("rel", CHEST_FILES)
def test_chest_cr_passes_the_pixel_checks(
    cxr: CxrFindingsPipeline, dicom_data: pathlib.Path, rel: str
) -> None:
    """The real chest CR passes the header and pixel checks (also with its
    header emptied) and is then refused by the OOD check, the last one."""
    ds = _read(dicom_data, rel)
    for vol in (load_radiograph(ds), _lying(ds, None, "CR", None)):
        with pytest.raises(PipelineNotApplicable, match=OOD):
            cxr.check(vol)


def test_synthetic_chest_runs(cxr: CxrFindingsPipeline) -> None:
    """A chest phantom of the training family written as DICOM runs with results."""
    result = cxr.run(load_radiograph([cxr_dataset()]))
    assert len(result.findings) == 4


def test_mammogram_passes_the_pixel_checks(mg: MgMassesPipeline, dicom_data: pathlib.Path) -> None:
    ds = _read(dicom_data, MAMMO)
    vol = load_radiograph(ds)
    # Header and pixel checks pass; the OOD check (last) refuses the real film.
    with pytest.raises(PipelineNotApplicable, match=OOD):
        mg.check(_lying(ds, "BREAST", "MG", None))
    t0 = time.perf_counter()
    with pytest.raises(PipelineNotApplicable, match=OOD):
        mg.check(vol)
    elapsed = time.perf_counter() - t0
    # the check includes the model's own preprocessing at full resolution
    # (kept for run()) and one pass of the backbone
    assert elapsed < 5.0, f"the mg-masses check took {elapsed:.2f} s"
    # cxr-findings' image check on the same image is fast too
    t0 = time.perf_counter()
    with pytest.raises(PipelineNotApplicable):
        cxr_check = CxrFindingsPipeline(device="cpu")
        cxr_check.check(_lying(ds, "CHEST", "CR", "PA"))
    assert time.perf_counter() - t0 < 1.5
    result = mg.run(load_radiograph([mammo_dataset()]))
    assert result.findings, "the phantom's mass is reported"


# --------------------------------------------------------------------------- synthetic


def _finish(dens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    img = 1.0 - np.exp(-3.0 * np.clip(dens, 0.0, None))
    img = ndimage.gaussian_filter(img, 1.0) + 0.01 * rng.standard_normal(dens.shape)
    return np.clip(img / max(float(np.percentile(img, 99.5)), 1e-3), 0, 1).astype(np.float32)


def lateral_chest(rng: np.random.Generator, size: int = 320) -> np.ndarray:
    """A lateral-like chest: one lung field, the spine behind it, the heart in
    front and below, the diaphragm and abdomen underneath."""
    h, w = size, int(size * 0.9)
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    body = (x > 0.08) & (x < 0.92)
    cy = 0.42 + 0.04 * rng.standard_normal()
    dens = 0.35 * body - 0.22 * (((x - 0.5) / 0.30) ** 2 + ((y - cy) / 0.30) ** 2 < 1)
    dens = dens + 0.25 * ((np.abs(x - 0.78) < 0.05) & body)
    dens = np.maximum(dens, 0.4 * (((x - 0.35) / 0.16) ** 2 + ((y - 0.62) / 0.14) ** 2 < 1))
    dens = np.maximum(dens, 0.42 * ((y > 0.75) & body))
    dens = dens + 0.1 * ((np.abs(x - 0.12) < 0.02) & (y < 0.6))
    return _finish(dens, rng)


def limb(rng: np.random.Generator, white: bool, size: int = 320) -> np.ndarray:
    """A limb: a soft-tissue cylinder around a bone, on a dark or white open field."""
    y, x = np.mgrid[0:size, 0:size] / float(size)
    r = np.abs(x - (0.45 + 0.1 * rng.random()))
    dens = 0.3 * np.sqrt(np.clip(1 - (r / 0.16) ** 2, 0, 1))
    dens = dens + 0.4 * np.sqrt(np.clip(1 - (r / 0.05) ** 2, 0, 1))
    img = _finish(dens, rng)
    return np.where(r > 0.17, 1.0, img).astype(np.float32) if white else img


def _chest_ok(img: np.ndarray) -> tuple[bool, str]:
    return looks_like_chest(*cxr_input(img))


def _breast_ok(img: np.ndarray) -> tuple[bool, str]:
    ok, reason, _ = breast_region(mg_input(img)[0])
    return ok, reason


def test_training_phantoms_pass() -> None:
    rng = np.random.default_rng(2024_0611)
    chest = [_chest_ok(random_cxr_phantom(rng, 320).image) for _ in range(50)]
    breast = [_breast_ok(random_mammo_phantom(rng, 320).image) for _ in range(50)]
    for name, res in (("chest", chest), ("breast", breast)):
        accepted = sum(ok for ok, _ in res)
        assert accepted >= 49, f"{name} phantoms: {[r for ok, r in res if not ok]}"


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("lateral", lateral_chest),
        ("lateral chest phantom", lambda rng: random_lateral_cxr(rng, 320)),
        ("limb on a dark field", lambda rng: limb(rng, white=False)),
        ("limb on a white field", lambda rng: limb(rng, white=True)),
        ("frontal phantom on its side", lambda rng: np.rot90(random_cxr_phantom(rng).image)),
        ("mammogram phantom", lambda rng: random_mammo_phantom(rng).image),
    ],
)
def test_off_anatomy_refused_by_cxr(
    name: str, make: Callable[[np.random.Generator], np.ndarray]
) -> None:
    rng = np.random.default_rng(7)
    for _ in range(5):
        ok, reason = _chest_ok(np.ascontiguousarray(make(rng)))
        assert not ok and reason, name


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("lateral", lateral_chest),
        ("lateral chest phantom", lambda rng: random_lateral_cxr(rng, 320)),
        ("limb on a dark field", lambda rng: limb(rng, white=False)),
        ("limb on a white field", lambda rng: limb(rng, white=True)),
        ("chest phantom", lambda rng: random_cxr_phantom(rng).image),
    ],
)
def test_off_anatomy_refused_by_mg(
    name: str, make: Callable[[np.random.Generator], np.ndarray]
) -> None:
    rng = np.random.default_rng(11)
    for _ in range(5):
        ok, reason = _breast_ok(np.ascontiguousarray(make(rng)))
        assert not ok and reason, name


def test_mg_synthetic_for_presentation_passes(mg: MgMassesPipeline) -> None:
    """A phantom sent as an MG image with no header help passes on its pixels."""
    from tests.ai_models.test_mg_masses import _mg_dataset

    rng = np.random.default_rng(5)
    for _ in range(4):
        ph = random_mammo_phantom(rng, rows=512)
        vol = load_radiograph(_mg_dataset(ph.image))
        mg.check(dataclasses.replace(vol))
