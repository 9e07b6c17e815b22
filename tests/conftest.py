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
