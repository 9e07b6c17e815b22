"""Shared fixtures: the real DICOM test data set and helpers to find peers."""

from __future__ import annotations

import os
import pathlib
import shutil

import pytest

pytest_plugins = ["tests.support.orthanc"]

ROOT = pathlib.Path(__file__).resolve().parents[1]
DICOM_DATA = pathlib.Path(
    os.environ.get("DICOM_TEST_DATA", ROOT / ".." / "shared" / "data" / "dicom")
).resolve()
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(name: str) -> str:
    """Return the path of an external peer program, or skip (fail under CI)."""
    path = shutil.which(name)
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
