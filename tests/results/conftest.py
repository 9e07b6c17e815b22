"""Volumes of real series for the writer tests (loaded once per session)."""

from __future__ import annotations

import pathlib

import pytest

from ai_models.types import Volume
from ai_models.volume import load_series, load_volumes

#: name -> (path under the data root, stack key or None for load_series)
SERIES: dict[str, tuple[str, str | None]] = {
    "ct": ("dcm_qa_ct/Philips_Ingenuity_headphantom_5mm", None),
    "ct3": ("dcmqi/ct-3slice", None),
    "mr": ("dcmqi/qin-prostate-01-0001_adc", None),
    # Enhanced MR, 64 frames: magnitude + field map at the same positions;
    # the magnitude stack is every other frame of one multi-frame instance.
    "enh_mr": ("dcm_qa_enh/Philips_Achieva_enhanced", "FrameType=ORIGINAL\\PRIMARY\\T1\\M"),
    # Enhanced CT, 2 frames stored against the slice order.
    "enh_ct": ("pydicom_data/enhanced/eCT_Supplemental.dcm", None),
}

_cache: dict[str, Volume] = {}


def load(data: pathlib.Path, name: str) -> Volume:
    if name not in _cache:
        rel, key = SERIES[name]
        if key is None:
            _cache[name] = load_series(data / rel)
        else:
            _cache[name] = load_volumes(data / rel)[key]
    return _cache[name]


@pytest.fixture(params=sorted(SERIES))
def any_volume(request: pytest.FixtureRequest, dicom_data: pathlib.Path) -> Volume:
    return load(dicom_data, request.param)


@pytest.fixture
def ct_volume(dicom_data: pathlib.Path) -> Volume:
    return load(dicom_data, "ct")
