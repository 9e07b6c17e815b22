"""Shared fixtures: the real DICOM test data set and helpers to find peers."""

from __future__ import annotations

import os
import pathlib
import shutil
import sys

import pytest

pytest_plugins = ["tests.support.orthanc"]

ROOT = pathlib.Path(__file__).resolve().parents[1]
DICOM_DATA = pathlib.Path(
    os.environ.get("DICOM_TEST_DATA", ROOT / ".." / "shared" / "data" / "dicom")
).resolve()
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(name: str) -> str:
    """Return the path of an external peer program, or skip (fail under CI).

    The virtual environment's own ``bin/`` is left out of the search:
    pynetdicom installs ``storescu``/``echoscu`` scripts there that would
    shadow DCMTK's when the environment is activated.
    """
    venv_bin = (pathlib.Path(sys.prefix) / "bin").resolve()
    search = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep)
        if p and pathlib.Path(p).resolve() != venv_bin
    )  # fmt: skip
    path = shutil.which(name, path=search)
    if path is None:
        if IN_CI:
            pytest.fail(f"required peer program {name!r} is not installed")
        pytest.skip(f"{name!r} not installed")
    return path


@pytest.fixture(scope="session")
def dicom_data() -> pathlib.Path:
    """Root of the shared real-DICOM test set (read-only)."""
    if not (DICOM_DATA / "manifest.csv").is_file():
        if IN_CI:
            pytest.fail(f"real DICOM test data not found at {DICOM_DATA}")
        pytest.skip(f"real DICOM test data not found at {DICOM_DATA}")
    return DICOM_DATA


@pytest.fixture(autouse=True)
def _ct_lungs_stays_inside_the_body(monkeypatch):  # noqa: ANN001, ANN202
    """Every ct-lungs run in a test asserts that no lung or bone voxel lies outside the body.

    Wraps :meth:`CtLungsPipeline.run` for the test's duration; the body mask
    is the independent one of :mod:`tests.support.body_mask`.
    """
    try:
        from ai_models.pipelines.ct_lungs import CtLungsPipeline
    except ImportError:  # pragma: no cover - the package always has it
        yield
        return
    from tests.support.body_mask import segments_outside_body

    original = CtLungsPipeline.run

    def run_and_check(self, volume):  # noqa: ANN001, ANN202
        result = original(self, volume)
        outside = {k: v for k, v in segments_outside_body(volume, result).items() if v}
        assert not outside, f"ct-lungs segments outside the body: {outside} voxels"
        return result

    monkeypatch.setattr(CtLungsPipeline, "run", run_and_check)
    yield
