"""A site's own weights in a shipped pipeline: TorchScript and MONAI bundles.

The shipped network of ``cxr-findings`` is exported the way a
site would ship its own (``torch.jit.trace`` + the sidecar JSON, or a MONAI
bundle folder with ``configs/metadata.json`` and ``models/model.ts``); the
pipeline, given them with ``weights_kind``, must find what the built-in
state dict finds (``ct-lungs``, ``mg-masses`` and ``mr-brain-lesion`` have
the same checks in their own test modules).
"""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

from ai_models.errors import ModelLoadError
from ai_models.pipelines import get_pipeline
from ai_models.pipelines.cxr_findings import DEFAULT_WEIGHTS as CXR_WEIGHTS
from ai_models.radiograph import load_radiograph
from ai_models.types import ClassificationFinding, Volume
from tests.ai_models.site_models import as_bundle, export_torchscript
from tests.support.radiographs import cxr_dataset


def _as_site_model(
    network: torch.nn.Module, example: torch.Tensor, sidecar: pathlib.Path, folder: pathlib.Path
) -> tuple[pathlib.Path, pathlib.Path]:
    """``(model.ts with model.json beside it, bundle folder)`` of ``network``, traced."""
    ts = export_torchscript(network, folder / "model.ts", sidecar, example)
    return ts, as_bundle(ts, folder / "bundle")


@pytest.fixture(scope="module")
def chest() -> Volume:
    """A chest phantom of the training family as a CR: the shipped weights'
    OOD check refuses the real chest CR (site TorchScript and bundle models,
    which have no OOD statistics, would still read it)."""
    return load_radiograph([cxr_dataset()])


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
