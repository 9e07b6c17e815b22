"""The OOD check of ``cxr-findings`` and ``mg-masses`` (:mod:`ai_models.ood`).

* each statistics file belongs to the shipped weights (sha256);
* held-out synthetic phantoms of a seed stream used neither for the fit nor
  for the threshold score below the threshold;
* foreign inputs (noise, a CT slice, a lateral-like chest, a limb, a
  phantom turned 90 degrees, the other model's phantoms) are refused with
  the score and the threshold in the reason;
* every shared real CR/DX/MG image gets the outcome the model cards state
  (the decision is asserted, not the score);
* weights without statistics run without the check; statistics of other
  weights are an error.
"""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
import pydicom
import pytest
import torch

from ai_models import ood
from ai_models.errors import ModelLoadError, PipelineNotApplicable
from ai_models.pipelines.cxr_findings import DEFAULT_WEIGHTS as CXR_WEIGHTS
from ai_models.pipelines.cxr_findings import CxrFindingsPipeline
from ai_models.pipelines.cxr_findings import model_input as cxr_input
from ai_models.pipelines.mg_masses import DEFAULT_WEIGHTS as MG_WEIGHTS
from ai_models.pipelines.mg_masses import MgMassesPipeline
from ai_models.pipelines.mg_masses import model_input as mg_input
from ai_models.radiograph import load_radiograph, presentation_image
from ai_models.runtime import file_sha256
from ai_models.training.calibrate_ood import phantom_inputs
from tests.ai_models.test_radiograph_applicability import lateral_chest, limb
from tests.support.radiographs import cxr_dataset, mammo_dataset

torch.set_num_threads(2)

OOD_REASON = (
    r"the image is out of the model's training distribution \(OOD score [\d.]+ above the threshold"
)

#: Every shared real CR/DX/MG image and the outcome the model cards state:
#: "ood" (refused by the OOD check) or "scope" (refused before it, by the
#: header or the pixel checks).
REAL_OUTCOMES = {
    "nema_wg04/RG1_chest_CR/RG1_UNCR.dcm": {"cxr-findings": "ood", "mg-masses": "scope"},
    "nema_wg04/RG1_chest_CR/RG1_J2KI.dcm": {"cxr-findings": "ood", "mg-masses": "scope"},
    "nema_wg04/RG3_ankle_CR/RG3_J2KR.dcm": {"cxr-findings": "scope", "mg-masses": "scope"},
    "nema_wg04/MG1_mammo/MG1_J2KI.dcm": {"cxr-findings": "scope", "mg-masses": "ood"},
    "highdicom/dx/dx_image.dcm": {"cxr-findings": "scope", "mg-masses": "scope"},
}
CT_SLICE = "dcm_qa_ct/GE_HiSpeedDual_head_tilted/14.dcm"


@pytest.fixture(scope="module")
def cxr() -> CxrFindingsPipeline:
    return CxrFindingsPipeline(device="cpu")


@pytest.fixture(scope="module")
def mg() -> MgMassesPipeline:
    return MgMassesPipeline(device="cpu")


@pytest.mark.parametrize("weights", [CXR_WEIGHTS, MG_WEIGHTS], ids=["cxr", "mg"])
def test_stats_belong_to_the_shipped_weights(weights: pathlib.Path) -> None:
    stats = ood.load_stats(ood.stats_path(weights))
    assert stats.weights_sha256 == file_sha256(weights)
    assert stats.threshold == pytest.approx(stats.info["heldout_percentiles"]["max"], abs=1e-3)
    assert ood.stats_path(weights).stat().st_size < 1_100_000


def test_ledoit_wolf_is_well_conditioned() -> None:
    x = np.random.default_rng(0).normal(size=(40, 60))  # fewer samples than dimensions
    cov, shrink = ood.ledoit_wolf(x)
    assert 0.0 < shrink <= 1.0
    assert np.linalg.eigvalsh(cov).min() > 0


@pytest.mark.parametrize("name", ["cxr-findings", "mg-masses"])
def test_heldout_phantoms_pass(name: str, cxr: CxrFindingsPipeline, mg: MgMassesPipeline) -> None:
    """40 phantoms of a third seed stream: at most one above the threshold
    (the threshold is the maximum of 500 held-out scores)."""
    pipe = cxr if name == "cxr-findings" else mg
    xs = phantom_inputs(name, 777, 1, 40)
    scores = []
    for x in xs:
        scored = pipe.ood_score(x)
        assert scored is not None
        scores.append(scored[0])
    threshold = scored[1]
    assert sum(s > threshold for s in scores) <= 1, (max(scores), threshold)


def _foreign(dicom_data: pathlib.Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    ds = pydicom.dcmread(dicom_data / CT_SLICE)
    return {
        "noise": rng.random((400, 400)).astype(np.float32),
        "CT slice": presentation_image(ds, ds.pixel_array.astype(np.float32)),
        "lateral chest": lateral_chest(rng),
        "limb": limb(rng, white=False),
        "chest phantom turned 90": np.rot90(
            cxr_dataset(size=320).pixel_array.astype(np.float32) / 4095.0
        ),
        "mammogram phantom turned 90": np.rot90(
            mammo_dataset(rows=320).pixel_array.astype(np.float32) / 4095.0
        ),
    }


def test_foreign_inputs_refused_by_cxr(cxr: CxrFindingsPipeline, dicom_data: pathlib.Path) -> None:
    for what, image in _foreign(dicom_data).items():
        with pytest.raises(PipelineNotApplicable, match=r"^cxr-findings: " + OOD_REASON):
            cxr.check_ood(cxr_input(image)[0])
        assert what  # the loop names the case in a failure's traceback


def test_foreign_inputs_refused_by_mg(mg: MgMassesPipeline, dicom_data: pathlib.Path) -> None:
    images = _foreign(dicom_data)
    images["chest phantom"] = cxr_dataset(size=320).pixel_array.astype(np.float32) / 4095.0
    for what, image in images.items():
        if what == "mammogram phantom turned 90":
            continue  # a landscape breast: the pixel check's job (wall contact)
        with pytest.raises(PipelineNotApplicable, match=r"^mg-masses: " + OOD_REASON):
            mg.check_ood(mg_input(image)[0])
        assert what


@pytest.mark.parametrize("rel", sorted(REAL_OUTCOMES))
def test_real_images_get_the_stated_outcome(
    rel: str, dicom_data: pathlib.Path, cxr: CxrFindingsPipeline, mg: MgMassesPipeline
) -> None:
    volume = load_radiograph(dicom_data / rel)
    for pipe in (cxr, mg):
        expected = REAL_OUTCOMES[rel][pipe.name]
        with pytest.raises(PipelineNotApplicable) as err:
            pipe.check(volume)
        is_ood = "out of the model's training distribution" in str(err.value)
        assert is_ood == (expected == "ood"), str(err.value)


def test_synthetic_dicom_phantoms_pass(cxr: CxrFindingsPipeline, mg: MgMassesPipeline) -> None:
    """The phantoms the node and result tests use are accepted, OOD check included."""
    for pipe, ds in ((cxr, cxr_dataset()), (mg, mammo_dataset())):
        volume = load_radiograph([ds])
        pipe.check(volume)


def test_weights_without_stats_run_unchecked(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    for src in (CXR_WEIGHTS, CXR_WEIGHTS.with_suffix(".json")):
        shutil.copy(src, tmp_path / src.name)
    site = CxrFindingsPipeline(weights=tmp_path / CXR_WEIGHTS.name, device="cpu")
    noise = np.random.default_rng(0).standard_normal((192, 192)).astype(np.float32)
    with caplog.at_level("INFO", logger="ai_models.ood"):
        assert site.ood_score(noise) is None
        site.check_ood(noise)  # no statistics: no check
        site.check_ood(noise)
    assert sum("without the OOD check" in r.getMessage() for r in caplog.records) == 1


def test_stats_of_other_weights_are_an_error(tmp_path: pathlib.Path) -> None:
    for src in (MG_WEIGHTS, MG_WEIGHTS.with_suffix(".json")):
        shutil.copy(src, tmp_path / src.name)
    stats = ood.load_stats(ood.stats_path(MG_WEIGHTS))
    wrong = ood.OodStats(stats.mean, stats.precision, stats.threshold, "0" * 64, stats.info)
    ood.save_stats(ood.stats_path(tmp_path / MG_WEIGHTS.name), wrong)
    site = MgMassesPipeline(weights=tmp_path / MG_WEIGHTS.name, device="cpu")
    with pytest.raises(ModelLoadError, match="recalibrate"):
        site.ood_score(np.zeros((256, 200), np.float32))
