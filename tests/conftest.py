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


#: Test tiers.  ``pytest -m "not slow"`` runs the unit and fast integration
#: tests (a few minutes on two cores); ``make test`` runs everything.  A test
#: is ``slow`` when it starts real peers (a node, DCMTK, Orthanc, a browser)
#: or runs a model on full-size images; these files are slow throughout, and
#: single tests elsewhere carry ``@pytest.mark.slow`` themselves.
SLOW_FILES = frozenset(
    {
        "ai_models/test_applicability_matrix.py",
        "ai_models/test_ct_lungs.py",
        "ai_models/test_cxr_findings.py",
        "ai_models/test_mg_masses.py",
        "ai_models/test_mr_brain_constraints.py",
        "ai_models/test_mr_brain_lesion.py",
        "ai_models/test_ood.py",
        "ai_models/test_radiograph_applicability.py",
        "ai_models/test_readers_never_throw.py",
        "ai_models/test_site_weights.py",
        "node/test_celery_executor.py",
        "node/test_chaos_slice.py",
        "node/test_cli.py",
        "node/test_codecs.py",
        "node/test_delivery_peers.py",
        "node/test_fuzz_slice.py",
        "node/test_hostile_datasets.py",
        "node/test_hostile_peers.py",
        "node/test_negative_report.py",
        "node/test_peer_limits.py",
        "node/test_orthanc_peer.py",
        "node/test_no_phi_in_logs.py",
        "node/test_receive.py",
        "node/test_retention.py",
        "node/test_route_deliver.py",
        "node/test_site_models.py",
        "node/test_tls.py",
        "viewer/test_console_login.py",
        "viewer/test_ohif.py",
        "viewer/test_ohif_radiograph.py",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests of :data:`SLOW_FILES` ``slow``."""
    tests_dir = pathlib.Path(__file__).resolve().parent
    for item in items:
        try:
            rel = item.path.resolve().relative_to(tests_dir).as_posix()
        except ValueError:
            continue
        if rel in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


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


def require_nnunet() -> None:
    """Skip when nnU-Net v2 is missing (fail under CI)."""
    import importlib.util

    if importlib.util.find_spec("nnunetv2") is None:
        if IN_CI:
            pytest.fail("nnunetv2 is not installed (pip install nnunetv2)")
        pytest.skip("nnunetv2 not installed")


@pytest.fixture(scope="session")
def nnunet_demo_model(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """nnU-Net's demonstration trained-model folder, planned and trained once per
    session by nnU-Net's own commands (:mod:`ai_models.training.nnunet_demo`)."""
    require_nnunet()
    from ai_models.training.nnunet_demo import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("nnunet_demo"))


@pytest.fixture(scope="session")
def spleen_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The real ``spleen_ct_segmentation`` bundle configs (``tests/data/model_zoo``)
    with a ``models/model.pt`` of their own UNet, seeded and briefly trained on a
    phantom; built once per session."""
    import torch

    from tests.ai_models.test_monai_bundle import (
        SPLEEN,
        copy_bundle,
        network_def,
        require,
        train_on_phantom,
    )

    require("monai", "runs the bundle")
    root = copy_bundle(SPLEEN, tmp_path_factory.mktemp("zoo") / "spleen_ct_segmentation")
    torch.manual_seed(0)
    net = network_def(root)
    train_on_phantom(net)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


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
