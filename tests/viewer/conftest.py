"""Fixtures of the viewer tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, bytes], Path]:
    """``save(name, png)``: into the pytest tmp dir and ``$DICOM_NODE_TEST_ARTIFACTS/viewer``."""
    folder = tmp_path_factory.mktemp("viewer-screenshots")
    extra = os.environ.get("DICOM_NODE_TEST_ARTIFACTS")

    def save(name: str, data: bytes) -> Path:
        path = folder / name
        path.write_bytes(data)
        if extra:
            target = Path(extra) / "viewer"
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / name)
        return path

    return save
