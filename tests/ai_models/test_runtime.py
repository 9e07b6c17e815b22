"""Model runtime and configured pipelines, with tiny models made in tmp_path."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch

from ai_models import runtime
from ai_models.errors import ModelLoadError, PipelineNotApplicable
from ai_models.pipelines import (
    CODES,
    LabelSpec,
    SegmentationSpec,
    UnknownPipelineError,
    get_pipeline,
    list_pipelines,
)
from ai_models.types import CodedConcept, FrameRef, Volume

torch.set_num_threads(1)

TINY_UNET = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 0,
}


@pytest.fixture(autouse=True)
def _fresh_cache():
    runtime.clear_model_cache()
    yield
    runtime.clear_model_cache()


def tiny_unet() -> torch.nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(**TINY_UNET).eval()


class Threshold(torch.nn.Module):
    """Two-class 'segmenter': logits (0.5 - x, x - 0.5) -> label 1 where x > 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.5 - x, x - 0.5], dim=1)


def write_state_dict(
    tmp_path: pathlib.Path, net: torch.nn.Module, sidecar: bool = True
) -> pathlib.Path:
    p = tmp_path / "tiny.pt"
    torch.save(net.state_dict(), p)
    if sidecar:
        p.with_suffix(".json").write_text(
            json.dumps({"architecture": {"name": "monai.networks.nets.UNet", "kwargs": TINY_UNET}})
        )
    return p


def write_bundle(
    tmp_path: pathlib.Path, net: torch.nn.Module, torchscript: bool = False
) -> pathlib.Path:
    root = tmp_path / "bundle"
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "metadata.json").write_text(
        json.dumps(
            {
                "version": "0.0.1",
                "network_data_format": {
                    "inputs": {"image": {"num_channels": 1}},
                    "outputs": {"pred": {"num_channels": 2}},
                },
            }
        )
    )
    (root / "configs" / "inference.json").write_text(
        json.dumps(
            {
                "network_def": {"_target_": "monai.networks.nets.UNet", **TINY_UNET},
                "device": "$torch.device('cpu')",
            }
        )
    )
    if torchscript:
        torch.jit.script(net).save(str(root / "models" / "model.ts"))
    else:
        torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


def x_input(shape=(16, 16, 16)) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand((1, *shape), generator=g)


# -- device --------------------------------------------------------------------


def test_select_device_auto_and_override():
    auto = runtime.select_device(None)
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert runtime.select_device("auto") == auto
    assert runtime.select_device("cpu").type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_select_device_cuda_unavailable():
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        runtime.select_device("cuda")


# -- the three ways to load -------------------------------------------------------


def test_state_dict_with_sidecar_loads_warm_and_matches(tmp_path):
    net = tiny_unet()
    p = write_state_dict(tmp_path, net)
    m = runtime.load_model(p, "state_dict", device="cpu")
    assert m.kind is runtime.ModelKind.STATE_DICT
    assert m.sha256 == runtime.file_sha256(p)
    assert runtime.load_model(p, runtime.ModelKind.STATE_DICT, device="cpu") is m  # warm
    x = x_input()
    out = runtime.run_network(m, x)
    with torch.no_grad():
        ref = net(x[None])
    assert out.shape == (1, 2, 16, 16, 16)
    torch.testing.assert_close(out, ref)


def test_state_dict_explicit_architecture_and_errors(tmp_path):
    p = write_state_dict(tmp_path, tiny_unet(), sidecar=False)
    with pytest.raises(ModelLoadError, match="no architecture"):
        runtime.load_model(p, "state_dict")
    m = runtime.load_model(
        p, "state_dict", device="cpu", architecture="UNet", architecture_kwargs=TINY_UNET
    )
    assert isinstance(m.network, torch.nn.Module)
    wrong = dict(TINY_UNET, channels=[4, 16])
    with pytest.raises(ModelLoadError, match="does not fit"):
        runtime.load_model(p, "state_dict", architecture="UNet", architecture_kwargs=wrong)
    with pytest.raises(ModelLoadError, match="unknown architecture"):
        runtime.load_model(p, "state_dict", architecture="NoSuchNet", architecture_kwargs={})
    with pytest.raises(ModelLoadError, match="unknown model kind"):
        runtime.load_model(p, "onnx")
    with pytest.raises(ModelLoadError, match="not found"):
        runtime.load_model(tmp_path / "missing.pt", "state_dict")


def test_torchscript_file(tmp_path):
    net = tiny_unet()
    p = tmp_path / "tiny.ts"
    torch.jit.script(net).save(str(p))
    m = runtime.load_model(p, "torchscript", device="cpu")
    x = x_input()
    with torch.no_grad():
        ref = net(x[None])
    torch.testing.assert_close(runtime.run_network(m, x), ref)
    bad = tmp_path / "bad.ts"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="TorchScript"):
        runtime.load_model(bad, "torchscript")


@pytest.mark.parametrize("torchscript", [False, True])
def test_monai_bundle(tmp_path, torchscript):
    net = tiny_unet()
    root = write_bundle(tmp_path, net, torchscript=torchscript)
    m = runtime.load_model(root, "bundle", device="cpu")
    assert m.weights_path.name == ("model.ts" if torchscript else "model.pt")
    assert m.metadata["version"] == "0.0.1"
    x = x_input()
    with torch.no_grad():
        ref = net(x[None])
    torch.testing.assert_close(runtime.run_network(m, x), ref)


def test_bundle_without_weights(tmp_path):
    root = tmp_path / "b"
    (root / "configs").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match="model.ts nor models/model.pt"):
        runtime.load_model(root, "bundle")


# -- inference --------------------------------------------------------------------


def test_sliding_window_for_large_inputs_and_padding(tmp_path):
    m = runtime.load_model(write_state_dict(tmp_path, tiny_unet()), "state_dict", device="cpu")
    big = x_input((40, 24, 24))
    out = runtime.run_network(m, big, roi_size=(16, 16, 16), sw_batch_size=3)
    assert out.shape == (1, 2, 40, 24, 24)
    assert torch.isfinite(out).all()
    odd = x_input((13, 14, 15))  # not divisible by the UNet stride: padded and cropped back
    out = runtime.run_network(m, odd, divisible_by=2)
    assert out.shape == (1, 2, 13, 14, 15)
    with pytest.raises(ValueError, match="spatial"):
        runtime.run_network(m, torch.zeros(16, 16))


def test_stage_timer_accumulates():
    t = runtime.StageTimer()
    for _ in range(2):
        with t("infer"):
            pass
    assert set(t.timings) == {"infer"} and t.timings["infer"] >= 0


# -- configured pipelines: plug in a model from data -------------------------------------


def oblique_volume(shape=(12, 20, 24)) -> tuple[Volume, np.ndarray]:
    """A volume with permuted/flipped axes and a bright box; returns the box mask."""
    arr = np.full(shape, -1000.0, np.float32)
    box = np.zeros(shape, bool)
    box[3:8, 5:12, 14:20] = True
    arr[box] = 800.0
    # k along -x, i along +z, j along -y: exercises the canonical/RAS mapping
    direction = np.array([[-1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])
    vol = Volume(
        array=arr,
        origin=np.zeros(3),
        spacing=np.array([2.0, 1.0, 1.5]),
        direction=direction,
        frames=[FrameRef(f"2.25.{i + 1}", "1.2.840.10008.5.1.4.1.1.2") for i in range(shape[0])],
        source_datasets=[],
        modality="CT",
        series_instance_uid="2.25.99",
    )
    return vol, box


LIVER = CodedConcept("10200004", "SCT", "Liver")


def spec_for(path: pathlib.Path, kind: str, **kw) -> SegmentationSpec:
    kw = {"window": (-1000.0, 1000.0), "patch_size": (8, 8, 8), **kw}
    return SegmentationSpec(
        name="site-box",
        kind=kind,
        path=path,
        modalities=("CT",),
        labels=[LabelSpec(1, "Box", CODES.ANATOMICAL_STRUCTURE, LIVER)],
        **kw,
    )


@pytest.mark.parametrize("orientation", ["source", "LPS", "RAS"])
def test_configured_torchscript_pipeline_maps_back_exactly(tmp_path, orientation):
    p = tmp_path / "thr.ts"
    torch.jit.script(Threshold()).save(str(p))
    vol, box = oblique_volume()
    pipe = get_pipeline(
        "site-box", configured=[spec_for(p, "torchscript", orientation=orientation)]
    )
    res = pipe.run(vol)
    assert [s.label for s in res.segments] == ["Box"]
    seg = res.segments[0]
    assert seg.mask.shape == vol.shape
    np.testing.assert_array_equal(seg.mask, box)
    f = res.findings[0]
    assert f.measurements[0].value == pytest.approx(box.sum() * 3.0)
    assert f.tracking_uid == seg.tracking_uid
    assert set(res.timings) >= {"load", "preprocess", "infer", "postprocess"}
    assert res.algorithm.weights_sha256 == runtime.file_sha256(p)
    # reruns are stable: same tracking UID
    assert pipe.run(vol).segments[0].tracking_uid == seg.tracking_uid


def test_configured_resampling_bundle_and_state_dict(tmp_path):
    vol, box = oblique_volume()
    root = write_bundle(tmp_path, tiny_unet())
    for spec in (
        spec_for(root, "bundle", spacing_mm=(2.0, 2.0, 2.0), orientation="RAS"),
        spec_for(write_state_dict(tmp_path, tiny_unet()), "state_dict"),
        spec_for(
            write_state_dict(tmp_path, tiny_unet(), sidecar=False),
            "state_dict",
            architecture="monai.networks.nets.UNet",
            architecture_kwargs=TINY_UNET,
        ),
    ):
        res = get_pipeline(spec.name, configured=[spec]).run(vol)
        for s in res.segments:
            assert s.mask.shape == vol.shape and s.mask.dtype == bool


def test_configured_checks_and_validation(tmp_path):
    p = tmp_path / "thr.ts"
    torch.jit.script(Threshold()).save(str(p))
    vol, _ = oblique_volume()
    vol.modality = "MR"
    pipe = get_pipeline("site-box", configured=[spec_for(p, "torchscript")])
    with pytest.raises(PipelineNotApplicable, match="modality"):
        pipe.check(vol)
    with pytest.raises(ValueError, match="kind"):
        spec_for(p, "onnx").validate()
    with pytest.raises(ValueError, match="window"):
        spec_for(p, "torchscript", window=(5.0, 1.0)).validate()
    with pytest.raises(ValueError, match="orientation"):
        spec_for(p, "torchscript", orientation="RAI").validate()


def test_registry_lists_and_suggests(tmp_path):
    spec = spec_for(tmp_path / "x.ts", "torchscript")
    infos = list_pipelines([spec])
    builtins = ["ct-lungs", "cxr-findings", "mr-brain-lesion", "mg-masses"]
    assert [i.name for i in infos] == [*builtins, "site-box"]
    assert {i.source for i in infos[:-1]} == {"built-in"} and infos[-1].source == "configured"
    assert all(i.description for i in infos)
    with pytest.raises(UnknownPipelineError, match="did you mean 'ct-lungs'") as exc:
        get_pipeline("ct-lung")
    valid = f"valid pipelines: {', '.join(sorted(builtins))}, site-box"
    with pytest.raises(UnknownPipelineError, match=valid):
        get_pipeline("nothing-like-it", configured=[spec])
    assert isinstance(exc.value, LookupError)


def test_ai_models_does_not_import_the_node():
    import subprocess
    import sys

    code = (
        "import sys, ai_models.runtime, ai_models.pipelines, ai_models.pipelines.ct_lungs;"
        "bad=[m for m in sys.modules if m.split('.')[0] in "
        "('pynetdicom','sqlalchemy','dicom_node','storage')]; print(bad); sys.exit(bool(bad))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
