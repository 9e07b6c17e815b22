"""A site plugs in its own model from config.toml, with no code: ``[[models]]``.

A TorchScript file written by the test (a bone 'segmenter' that thresholds
the windowed CT) is configured with its label and codes; ``pipelines`` lists
it and ``analyze`` runs it on a real CT series and writes a SEG that carries
the configured label and codes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import highdicom as hd
import pytest
import torch

from dicom_node.config import load_settings
from dicom_node.errors import ConfigError

CT = "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm"


class BoneThreshold(torch.nn.Module):
    """Two-class logits: label 1 where the windowed input is above 0.6 (~ +200 HU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.6 - x, x - 0.6], dim=1)


def site_config(tmp_path: Path) -> Path:
    model = tmp_path / "bone.ts"
    torch.jit.script(BoneThreshold()).save(str(model))
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"""
[storage]
spool_dir = "spool"
database_url = "sqlite:///node.db"

[[models]]
name = "site-bone"
kind = "torchscript"
path = "{model.name}"
description = "site bone threshold model"
modalities = ["CT"]
window = [-1000.0, 1500.0]
patch_size = [64, 64, 32]
min_slices = 4

[[models.labels]]
value = 1
label = "Bone"
category = ["91723000", "SCT", "Anatomical Structure"]
type = ["272673000", "SCT", "Bone"]
"""
    )
    return cfg


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_models_section_validates(tmp_path: Path) -> None:
    settings = load_settings(site_config(tmp_path))
    (spec,) = settings.pipeline_specs()
    assert spec.name == "site-bone" and spec.kind == "torchscript"
    assert Path(spec.path) == tmp_path / "bone.ts"  # relative to the config file
    assert spec.labels[0].type.value == "272673000"
    bad = tmp_path / "bad.toml"
    bad.write_text('[[models]]\nname = "x"\nkind = "onnx"\npath = "m"\nlabels = []\n')
    with pytest.raises(ConfigError) as info:
        load_settings(bad)
    assert "models.0.kind" in str(info.value)
    bad.write_text('[[models]]\nname = "x"\nkind = "torchscript"\npath = "m"\nlabels = []\n')
    with pytest.raises(ConfigError, match=r"models\.0.*needs at least one \[\[models\.labels\]\]"):
        load_settings(bad)
    bad.write_text(
        '[[models]]\nname = "x"\nkind = "torchscript"\npath = "m"\npipeline = "ct-lung"\n'
    )
    with pytest.raises(ConfigError, match=r"'ct-lung' is not a shipped pipeline; choose from"):
        load_settings(bad)


def test_site_model_listed_and_run(tmp_path: Path, dicom_data: Path) -> None:
    cfg = site_config(tmp_path)
    listed = cli("-c", str(cfg), "pipelines")
    assert listed.returncode == 0, listed.stderr
    assert "site-bone" in listed.stdout and "ct-lungs" in listed.stdout
    out = tmp_path / "out"
    run = cli(
        "-c",
        str(cfg),
        "analyze",
        str(dicom_data / CT),
        "--pipeline",
        "site-bone",
        "--out",
        str(out),
        "--outputs",
        "seg,sr",
        "--device",
        "cpu",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    segs = sorted(out.glob("seg_*.dcm"))
    assert len(segs) == 1, run.stdout
    seg = hd.seg.segread(segs[0])
    (desc,) = seg.SegmentSequence
    assert desc.SegmentLabel == "Bone"
    assert desc.SegmentedPropertyTypeCodeSequence[0].CodeValue == "272673000"
    assert desc.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert len(seg.PerFrameFunctionalGroupsSequence) > 5  # the phantom's skull
    assert sorted(out.glob("sr_*.dcm"))


def test_shipped_pipeline_with_site_weights(tmp_path: Path, dicom_data: Path) -> None:
    """``pipeline = "cxr-findings"``: the shipped pipeline with a site's TorchScript
    weights, its labels from the weights' sidecar, under the site's own name."""
    from ai_models.pipelines import SHIPPED_PIPELINES, get_pipeline
    from ai_models.pipelines.cxr_findings import DEFAULT_WEIGHTS
    from dicom_node.config import ModelSettings

    shipped_model, _ = get_pipeline("cxr-findings", device="cpu").load()  # type: ignore[attr-defined]
    size = int(shipped_model.metadata["input_size"])
    with torch.no_grad():
        traced = torch.jit.trace(shipped_model.network, torch.zeros(1, 1, size, size))
    traced.save(str(tmp_path / "chest.ts"))
    (tmp_path / "chest.json").write_text(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        """
[storage]
spool_dir = "spool"
database_url = "sqlite:///node.db"

[[models]]
name = "site-chest"
pipeline = "cxr-findings"
kind = "torchscript"
path = "chest.ts"
version = "2.1"
"""
    )
    (spec,) = load_settings(cfg).pipeline_specs()
    assert (spec.name, spec.pipeline, spec.kind, spec.version) == (
        "site-chest", "cxr-findings", "torchscript", "2.1"
    )
    # The config offers exactly the shipped pipelines (it asks the registry).
    base = {"name": "m", "kind": "torchscript", "path": "m.ts"}
    for name in sorted(SHIPPED_PIPELINES):
        assert ModelSettings.model_validate({**base, "pipeline": name}).pipeline == name
    with pytest.raises(ValueError, match="not a shipped pipeline"):
        ModelSettings.model_validate({**base, "pipeline": "ct-lungs-v2"})
    listed = cli("-c", str(cfg), "pipelines")
    assert listed.returncode == 0, listed.stderr
    assert "site-chest" in listed.stdout
    out = tmp_path / "out"
    run = cli(
        "-c", str(cfg), "analyze", str(dicom_data / "nema_wg04/RG1_chest_CR/RG1_UNCR.dcm"),
        "--pipeline", "site-chest", "--out", str(out), "--outputs", "sr", "--device", "cpu",
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    (sr_path,) = sorted(out.glob("sr_*.dcm"))
    sr = hd.sr.srread(sr_path)
    assert sr.SeriesDescription.startswith("site-chest 2.1")
    groups = sr.content.get_image_measurement_groups()
    assert [g.tracking_identifier for g in groups] == [
        "Lung opacity", "Pleural effusion", "Cardiomegaly", "Pneumothorax"
    ]
    both = tmp_path / "both.toml"
    both.write_text(
        cfg.read_text()
        + '\n[[models.labels]]\nvalue = 1\nlabel = "x"\n'
        + 'category = ["1", "SCT", "x"]\ntype = ["1", "SCT", "x"]\n'
    )
    with pytest.raises(ConfigError, match="labels come from the weights"):
        load_settings(both)
