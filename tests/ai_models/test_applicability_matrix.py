"""Every shared real series through every built-in pipeline of another anatomy: skipped.

The shared data holds no chest CT and no brain MR; its CTs are heads and an
abdomen, its MRs a prostate, QA phantoms and a localizer, its radiographs a
chest, an ankle, an animal and a mammogram.  Each of these, sent to a
pipeline made for another anatomy, must be refused with a reason
(:class:`~ai_models.errors.PipelineNotApplicable`, or
:class:`~ai_models.errors.VolumeError` for a series that is not one volume):
the job ends ``skipped`` and nothing reaches the PACS.  A pipeline's own
anatomy still passes (the result tests of each pipeline run it in full).

The same refusals hold when the header says nothing (no Body Part Examined,
no descriptions): the pixels decide.  The radiograph pipelines' refusals with
lying headers are in ``test_radiograph_applicability.py``.
"""

from __future__ import annotations

import copy
import pathlib

import pytest

from ai_models.dicom_files import discover_series
from ai_models.errors import PipelineNotApplicable, VolumeError
from ai_models.pipelines import get_pipeline

#: shared series (a folder or one file) -> what it shows
SERIES = {
    "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm": "head CT",
    "dcm_qa_ct/GE_HiSpeedDual_head_tilted": "head CT (tilted)",
    "dcmqi/ct-3slice": "abdominal CT",
    "pydicom_data/enhanced/eCT_Supplemental.dcm": "enhanced CT, 2 frames",
    "dcmqi/qin-prostate-01-0001_adc": "prostate MR",
    "dcm_qa_enh/Philips_Achieva_enhanced": "QA phantom MR",
    "dcm_qa_enh/Siemens_XA10_enhanced": "MR time series",
    "dcm_qa_table/GE_SIGNA_Premier_3plane_localizer": "MR localizer",
    "dcm_qa_ts/siemens_trio_ax_asc_35sl/1.dcm": "one MR slice",
    "nema_wg04/RG1_chest_CR/RG1_UNCR.dcm": "chest radiograph",
    "nema_wg04/RG1_chest_CR/RG1_J2KI.dcm": "chest radiograph",
    "nema_wg04/RG3_ankle_CR/RG3_J2KR.dcm": "ankle radiograph",
    "highdicom/dx/dx_image.dcm": "animal thorax radiograph",
    "nema_wg04/MG1_mammo/MG1_J2KI.dcm": "mammogram",
}

#: pipeline -> the shared series of its own anatomy (all others must be refused)
OWN = {
    "ct-lungs": set(),  # no chest CT in the shared data: synthetic chests in test_ct_lungs.py
    "mr-brain-lesion": set(),  # no brain MR: synthetic heads in test_mr_brain_lesion.py
    "cxr-findings": {"nema_wg04/RG1_chest_CR/RG1_UNCR.dcm", "nema_wg04/RG1_chest_CR/RG1_J2KI.dcm"},
    "mg-masses": {"nema_wg04/MG1_mammo/MG1_J2KI.dcm"},
}

CASES = [(s, p) for p in OWN for s in SERIES if s not in OWN[p]]
OWN_CASES = [(s, p) for p in OWN for s in sorted(OWN[p])]


def _files(data: pathlib.Path, rel: str) -> list:
    found = discover_series([data / rel])
    assert len(found) == 1, f"{rel}: {len(found)} series"
    (files,) = found.values()
    return files


@pytest.fixture(scope="module")
def pipelines() -> dict:
    return {name: get_pipeline(name, device="cpu") for name in OWN}


@pytest.mark.parametrize(("series", "pipeline"), CASES, ids=[f"{p}:{s}" for s, p in CASES])
def test_other_anatomy_is_refused_with_a_reason(
    dicom_data: pathlib.Path, pipelines: dict, series: str, pipeline: str
) -> None:
    p = pipelines[pipeline]
    with pytest.raises((PipelineNotApplicable, VolumeError)) as info:
        p.check(p.read_series(_files(dicom_data, series)))
    reason = str(info.value)
    assert len(reason) > 20, reason
    if isinstance(info.value, PipelineNotApplicable):
        assert reason.startswith(f"{pipeline}: "), reason


@pytest.mark.parametrize(("series", "pipeline"), OWN_CASES)
def test_own_anatomy_is_accepted(
    dicom_data: pathlib.Path, pipelines: dict, series: str, pipeline: str
) -> None:
    p = pipelines[pipeline]
    volume = p.read_series(_files(dicom_data, series))
    if pipeline in OOD_REFUSED:
        # accepted by the header and pixel checks, then refused by the OOD
        # check, the last one (tests/ai_models/test_ood.py)
        with pytest.raises(PipelineNotApplicable, match="out of the model's training distribution"):
            p.check(volume)
        return
    p.check(volume)


#: Pipelines whose OOD check refuses the shared real images of their anatomy.
OOD_REFUSED = frozenset({"cxr-findings", "mg-masses"})


@pytest.mark.parametrize(
    ("series", "pipeline", "why"),
    [
        ("dcm_qa_ct/Philips_Ingenuity_headphantom_5mm", "ct-lungs", "no lung fields"),
        ("dcmqi/qin-prostate-01-0001_adc", "mr-brain-lesion", "not a head"),
        ("dcm_qa_enh/Philips_Achieva_enhanced", "mr-brain-lesion", "not a head"),
    ],
)
def test_pixels_decide_when_the_header_says_nothing(
    dicom_data: pathlib.Path, pipelines: dict, series: str, pipeline: str, why: str
) -> None:
    """No source headers at all (no Body Part Examined, Image Type or
    descriptions to go by): the volume's pixels alone refuse it."""
    p = pipelines[pipeline]
    vol = copy.copy(p.read_series(_files(dicom_data, series)))
    vol.source_datasets = []
    with pytest.raises(PipelineNotApplicable, match=why):
        p.check(vol)
