"""A site's own weights in a shipped pipeline: TorchScript and MONAI bundles.

The shipped networks of ``cxr-findings`` and ``ct-lungs`` are exported the way a
site would ship its own (``torch.jit.trace`` + the sidecar JSON, or a MONAI
bundle folder with ``configs/metadata.json`` and ``models/model.ts``); the
pipelines, given them with ``weights_kind``, must find what the built-in
state dicts find.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest
import torch

from ai_models.errors import ModelLoadError
from ai_models.pipelines import get_pipeline
from ai_models.pipelines.ct_lungs import DEFAULT_WEIGHTS as CT_WEIGHTS
from ai_models.pipelines.cxr_findings import DEFAULT_WEIGHTS as CXR_WEIGHTS
from ai_models.radiograph import load_radiograph
from ai_models.training.evaluate import dice, result_masks
from ai_models.training.phantoms import phantom_volume, random_phantom
from ai_models.types import ClassificationFinding, Volume

CHEST = "nema_wg04/RG1_chest_CR/RG1_UNCR.dcm"


def _torchscript(network: torch.nn.Module, example: torch.Tensor, path: pathlib.Path) -> None:
    with torch.no_grad():
        traced = torch.jit.trace(network.eval(), example, check_trace=False)
    torch.jit.save(traced, str(path))


def _as_site_model(
    network: torch.nn.Module, example: torch.Tensor, sidecar: pathlib.Path, folder: pathlib.Path
) -> tuple[pathlib.Path, pathlib.Path]:
    """``(model.ts with model.json beside it, bundle folder)`` of ``network``."""
    folder.mkdir(parents=True, exist_ok=True)
    ts = folder / "model.ts"
    _torchscript(network, example, ts)
    shutil.copy2(sidecar, folder / "model.json")
    bundle = folder / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    shutil.copy2(ts, bundle / "models" / "model.ts")
    shutil.copy2(sidecar, bundle / "configs" / "metadata.json")
    return ts, bundle


@pytest.fixture(scope="module")
def chest(dicom_data: pathlib.Path) -> Volume:
    return load_radiograph(dicom_data / CHEST)


def _probabilities(result) -> dict[str, float]:  # type: ignore[no-untyped-def]
    return {
        f.tracking_id: f.probability
        for f in result.findings
        if isinstance(f, ClassificationFinding)
    }


def test_cxr_findings_with_torchscript_and_bundle_weights(
    chest: Volume, tmp_path: pathlib.Path
) -> None:
    shipped = get_pipeline("cxr-findings", device="cpu")
    reference = shipped.run(chest)
    model, _ = shipped.load()  # type: ignore[attr-defined]
    size = int(model.metadata["input_size"])
    ts, bundle = _as_site_model(
        model.network, torch.zeros(1, 1, size, size), CXR_WEIGHTS.with_suffix(".json"), tmp_path
    )
    for path, kind in ((ts, "torchscript"), (bundle, "bundle")):
        site = get_pipeline("cxr-findings", device="cpu", weights=path, weights_kind=kind)
        result = site.run(chest)
        got, want = _probabilities(result), _probabilities(reference)
        assert got.keys() == want.keys()
        for name in want:
            assert got[name] == pytest.approx(want[name], abs=1e-4), (kind, name)
        # A TorchScript network cannot be hooked: no Grad-CAM, and the result says so.
        assert not result.heatmaps and reference.heatmaps
        assert any("no explanation maps" in n for n in result.notes), result.notes
        assert result.algorithm.weights_sha256 != reference.algorithm.weights_sha256


def test_cxr_site_model_needs_labels_and_matching_outputs(
    chest: Volume, tmp_path: pathlib.Path
) -> None:
    shipped = get_pipeline("cxr-findings", device="cpu")
    model, _ = shipped.load()  # type: ignore[attr-defined]
    size = int(model.metadata["input_size"])
    ts, _ = _as_site_model(
        model.network, torch.zeros(1, 1, size, size), CXR_WEIGHTS.with_suffix(".json"), tmp_path
    )
    meta = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**meta, "labels": []}))
    with pytest.raises(ModelLoadError, match="needs 'labels'"):
        get_pipeline("cxr-findings", weights=ts, weights_kind="torchscript").run(chest)
    (tmp_path / "model.json").write_text(json.dumps({**meta, "labels": meta["labels"][:3]}))
    with pytest.raises(ModelLoadError, match="4 output"):
        get_pipeline("cxr-findings", weights=ts, weights_kind="torchscript").run(chest)
    with pytest.raises(ValueError, match="weights_kind"):
        get_pipeline("cxr-findings", weights=ts, weights_kind="onnx")


def test_ct_lungs_with_torchscript_weights(tmp_path: pathlib.Path) -> None:
    rng = np.random.default_rng(424243)  # not a training stream
    phantom = random_phantom(
        rng,
        spacing=np.array([4.0, 2.0, 2.0], np.float32),
        fov_mm=(160.0, 320.0, 320.0),
        head_fraction=0.0,
        nodule_diameters_mm=[16.0],
    )
    volume = phantom_volume(phantom, series_instance_uid="1.2.826.0.1.3680043.10.9.7")
    shipped = get_pipeline("ct-lungs", device="cpu")
    reference = shipped.run(volume)
    model = shipped.load()  # type: ignore[attr-defined]
    channels = int(model.metadata["architecture"]["kwargs"]["in_channels"])
    ts, bundle = _as_site_model(
        model.network,
        torch.zeros(1, channels, 64, 64, 64),
        CT_WEIGHTS.with_suffix(".json"),
        tmp_path,
    )
    for path, kind in ((ts, "torchscript"), (bundle, "bundle")):
        result = get_pipeline("ct-lungs", device="cpu", weights=path, weights_kind=kind).run(
            volume
        )
        want, got = result_masks(reference), result_masks(result)
        assert got.keys() == want.keys()
        for name in want:
            if want[name].any():
                assert dice(got[name], want[name]) > 0.99, (kind, name)
