"""``[[models]] kind = "monai-bundle"`` / ``"nnunetv2"`` from config.toml to SEG.

The config maps each kind onto its spec in the registry
(:data:`ai_models.pipelines.MODEL_SPECS`); fields of another kind are refused
with a message naming them; ``dicom-node pipelines --labels`` lists the
folder's own labels and ``dicom-node analyze`` runs it on a real CT series
and writes a SEG (dciodvfy-clean) coded from the shipped anatomy table.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import pytest

from dicom_node.config import ModelSettings, load_settings
from dicom_node.errors import ConfigError
from tests.results.helpers import assert_valid

CT = "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm"
ZOO = Path(__file__).resolve().parents[1] / "data" / "model_zoo"


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def listed_with_labels(cfg: Path, name: str) -> tuple[str, list[str]]:
    """``dicom-node pipelines --labels``: the pipeline's row and its label lines."""
    listed = cli("-c", str(cfg), "pipelines", "--labels")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(f"{name}\t"))
    labels = []
    for line in lines[at + 1 :]:
        if not line.startswith("  "):
            break
        labels.append(line.strip())
    return lines[at], labels


def analyze(cfg: Path, series: Path, pipeline: str, out: Path) -> Path:
    """``dicom-node analyze`` writing SEG and SR into ``out`` (must succeed)."""
    run = cli(
        "-c", str(cfg), "analyze", str(series), "--pipeline", pipeline,
        "--out", str(out), "--outputs", "seg,sr", "--device", "cpu",
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    return out


def _config(tmp_path: Path, models: str) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        '[storage]\nspool_dir = "spool"\ndatabase_url = "sqlite:///node.db"\n\n' + models
    )
    return cfg


def test_kinds_map_to_their_specs(tmp_path: Path) -> None:
    from ai_models.pipelines.monai_bundle import MonaiBundleSpec
    from ai_models.pipelines.nnunet import NnUNetSpec

    cfg = _config(
        tmp_path,
        """
[[models]]
name = "total"
kind = "nnunetv2"
path = "models/total"
folds = [0, 1]
use_mirroring = false
tile_step_size = 1.0
gpu_memory_mb = 8000

[[models]]
name = "spleen"
kind = "monai-bundle"
path = "models/spleen"
overrides = { "inferer#sw_batch_size" = 1 }

[[models.labels]]
value = 1
label = "Spleen"
category = ["91723000", "SCT", "Anatomical Structure"]
type = ["78961009", "SCT", "Spleen"]
""",
    )
    total, spleen = load_settings(cfg).pipeline_specs()
    assert isinstance(total, NnUNetSpec) and isinstance(spleen, MonaiBundleSpec)
    assert Path(total.path) == tmp_path / "models" / "total"  # relative to the config file
    assert tuple(total.folds) == (0, 1) and not total.use_mirroring
    assert total.tile_step_size == 1.0 and total.gpu_memory_mb == 8000
    assert total.orientation == "auto" and total.configuration == "3d_fullres"
    assert spleen.overrides == {"inferer#sw_batch_size": 1}
    assert spleen.labels[0].type.value == "78961009"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ('kind = "torchscript"\nconfiguration = "2d"', "configuration apply to kind = 'nnunetv2'"),
        ('kind = "nnunetv2"\noverrides = {a = 1}', "overrides apply to kind = 'monai-bundle'"),
        ('kind = "monai-bundle"\npatch_size = [64, 64, 64]', "own pre- and post-processing"),
        ('kind = "torchscript"\norientation = "auto"', 'orientation = "auto" applies'),
        ('kind = "nnunetv2"\nfolds = ["most"]', "folds"),
        ('kind = "nnunetv2"\ntile_step_size = 0', "tile_step_size"),
    ],
)
def test_fields_of_another_kind_are_refused(tmp_path: Path, fields: str, message: str) -> None:
    cfg = _config(tmp_path, f'[[models]]\nname = "m"\npath = "m"\n{fields}\n')
    with pytest.raises(ConfigError, match=message):
        load_settings(cfg)


def test_folder_kinds_need_no_labels() -> None:
    for kind in ("nnunetv2", "monai-bundle"):
        assert ModelSettings.model_validate({"name": "m", "kind": kind, "path": "m"}).labels == []


@pytest.fixture(scope="module")
def spleen_bundle(spleen_bundle_dir: Path) -> Path:
    return spleen_bundle_dir


@pytest.mark.slow
def test_bundle_listed_with_labels_and_run_to_a_valid_seg(
    spleen_bundle: Path, tmp_path: Path, dicom_data: Path
) -> None:
    cfg = _config(
        tmp_path,
        f"""
[[models]]
name = "spleen"
kind = "monai-bundle"
path = "{spleen_bundle}"
modalities = ["CT"]
""",
    )
    _, labels = listed_with_labels(cfg, "spleen")
    assert labels[0] == "spleen"  # the bundle's own channel_def name
    out = analyze(cfg, dicom_data / CT, "spleen", tmp_path / "out")
    (seg_path,) = sorted(out.glob("seg_*.dcm"))
    assert_valid(seg_path)
    seg = hd.seg.segread(seg_path)
    (desc,) = seg.SegmentSequence
    assert desc.SegmentLabel == "spleen"
    assert desc.SegmentedPropertyTypeCodeSequence[0].CodeValue == "78961009"  # SCT Spleen
    assert desc.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    (sr_path,) = sorted(out.glob("sr_*.dcm"))
    assert_valid(sr_path)
    shutil.rmtree(out)


@pytest.mark.slow
def test_nnunet_folder_listed_with_labels_and_run_to_a_valid_seg(
    nnunet_demo_model: Path, tmp_path: Path
) -> None:
    """The dataset folder above the trained-model folder is enough (the
    configuration picks it); labels and codes come from dataset.json."""
    cfg = _config(
        tmp_path,
        f"""
[[models]]
name = "abdomen"
kind = "nnunetv2"
path = "{nnunet_demo_model.parent}"
use_mirroring = false
tile_step_size = 1.0
""",
    )
    row, labels = listed_with_labels(cfg, "abdomen")
    assert row.split("\t")[1] == "CT"  # from dataset.json's channel_names
    assert labels == ["liver", "spleen", "kidney_left"]
    from tests.ai_models.test_nnunet import AXIAL, phantom_volume, write_series

    # a phantom of the demo model's training family, written as a DICOM CT series
    series = write_series(phantom_volume(AXIAL, (-126.0, -126.0, -60.0)), tmp_path / "ct")
    out = analyze(cfg, series, "abdomen", tmp_path / "out")
    (seg_path,) = sorted(out.glob("seg_*.dcm"))
    assert_valid(seg_path)
    seg = hd.seg.segread(seg_path)
    table = {"liver": "10200004", "spleen": "78961009", "kidney_left": "64033007"}
    for desc in seg.SegmentSequence:
        type_item = desc.SegmentedPropertyTypeCodeSequence[0]
        assert type_item.CodeValue == table[desc.SegmentLabel]
        if desc.SegmentLabel == "kidney_left":
            assert type_item.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "7771000"


def test_check_config_finds_a_broken_folder(tmp_path: Path) -> None:
    """A missing or incomplete model folder is found by check-config, not at the first series."""
    bundle = tmp_path / "spleen"
    shutil.copytree(ZOO / "spleen_ct_segmentation", bundle)  # no models/model.pt
    cfg = _config(
        tmp_path,
        f"""
[[models]]
name = "total"
kind = "nnunetv2"
path = "{tmp_path / 'missing'}"

[[models]]
name = "spleen"
kind = "monai-bundle"
path = "{bundle}"
""",
    )
    checked = cli("-c", str(cfg), "check-config")
    assert checked.returncode == 2, checked.stdout + checked.stderr
    text = " ".join((checked.stdout + checked.stderr).split())
    assert "models.0 (total)" in text and "not a directory" in text
    assert "models.1 (spleen)" in text and "model.pt" in text
