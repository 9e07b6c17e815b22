"""Real MONAI Model Zoo bundles run unchanged as pipelines (``kind = "monai-bundle"``).

The bundles' configs under ``tests/data/model_zoo/`` are the published
ones; their weights are not shipped, so each test bundle gets a
``models/model.pt`` saved from the config's own ``network_def`` (the spleen
UNet briefly trained on a synthetic phantom so that its output holds both
classes).  The node's result on real DICOM series must equal, voxel for
voxel, what ``python -m monai.bundle run`` writes for a NIfTI that SimpleITK
made from the same series.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ai_models.errors import ModelLoadError, PipelineNotApplicable
from ai_models.pipelines.monai_bundle import (
    MonaiBundlePipeline,
    MonaiBundleSpec,
    clear_bundle_cache,
    load_bundle,
    volume_to_nifti_order,
)
from ai_models.types import PipelineResult, Volume
from ai_models.volume import load_series
from tests.conftest import IN_CI

ZOO = Path(__file__).resolve().parents[1] / "data" / "model_zoo"
SPLEEN = ZOO / "spleen_ct_segmentation"
WHOLE_BODY = ZOO / "wholeBody_ct_segmentation"

HEAD_CT = "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm"  # axial, 28 x 512 x 512
OBLIQUE_MR = "dcmqi/qin-prostate-01-0001_adc"  # tilted about 10 degrees, 20 x 256 x 256

CPU = "$torch.device('cpu')"
WHOLE_BODY_LOWRES = {"displayable_configs#highres": False, "inferer#device": CPU}


def require(module: str, why: str) -> None:
    """Skip when an optional package is missing (fail under CI)."""
    if importlib.util.find_spec(module) is None:
        if IN_CI:
            pytest.fail(f"{module} is not installed ({why})")
        pytest.skip(f"{module} not installed ({why})")


def copy_bundle(src: Path, dst: Path) -> Path:
    """The vendored configs of ``src`` in a fresh folder with an empty ``models/``."""
    shutil.copytree(src, dst)
    (dst / "models").mkdir()
    return dst


def network_def(bundle: Path, overrides: dict[str, Any] | None = None) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    for k, v in (overrides or {}).items():
        parser[k] = v
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, torch.nn.Module)
    return net


def train_on_phantom(net: torch.nn.Module, steps: int = 40, seed: int = 0) -> None:
    """A few steps that teach ``net`` "soft tissue": intensities strictly inside
    the bundle's window (scaled to 0..1, clipped), as in a head CT's brain."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    net.train()
    for _ in range(steps):
        noise = ndimage.gaussian_filter(rng.standard_normal((2, 32, 32, 32)), (0, 2, 2, 2))
        x = np.clip(noise / noise.std() * 0.6 + 0.5, 0.0, 1.0).astype(np.float32)
        y = ((x > 0.02) & (x < 0.98)).astype(np.int64)
        opt.zero_grad()
        loss = loss_fn(net(torch.from_numpy(x[:, None])), torch.from_numpy(y))
        loss.backward()
        opt.step()
    net.eval()


@pytest.fixture(scope="module")
def spleen_bundle(spleen_bundle_dir: Path) -> Path:
    """The spleen bundle with a ``models/model.pt`` of its own UNet (seeded, trained
    briefly; built once per session, :func:`tests.conftest.spleen_bundle_dir`)."""
    return spleen_bundle_dir


@pytest.fixture(scope="module")
def whole_body_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 105-structure bundle with seeded SegResNet weights (``model.pt`` and the
    ``model_lowres.pt`` its low-resolution setting loads)."""
    require("monai", "runs the bundle")
    root = copy_bundle(WHOLE_BODY, tmp_path_factory.mktemp("zoo") / "wholeBody_ct_segmentation")
    torch.manual_seed(1)
    state = network_def(root).state_dict()
    torch.save(state, root / "models" / "model.pt")
    torch.save(state, root / "models" / "model_lowres.pt")
    return root


def write_nifti(series: Path, out: Path, writer: str = "itk") -> Path:
    """The series as SimpleITK's ImageSeriesReader reads it, written as NIfTI.

    ``writer="itk"``: SimpleITK's own NIfTI writer.  ``"nibabel"``: the same
    image and geometry written by nibabel, whose sform is SimpleITK's affine
    rounded to float32.  ITK's writer instead re-orthogonalises the direction
    in float32 (``nifti_make_orthog_mat44``), which moves an oblique affine by
    a float32 ulp or so; MONAI's ``Spacingd`` picks its output grid origin with
    an ``allclose(..., atol=1e-8)`` test on the corners, so on an oblique
    stack such a difference can shift the bundle's working grid by half a
    voxel.  The bundle's own result on an oblique series thus depends on
    which program wrote its NIfTI.
    """
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    image = reader.Execute()
    out.parent.mkdir(parents=True, exist_ok=True)
    if writer == "itk":
        sitk.WriteImage(image, str(out))
        return out
    import nibabel as nib

    lps = np.eye(4)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    lps[:3, :3] = direction * np.asarray(image.GetSpacing())[None, :]
    lps[:3, 3] = image.GetOrigin()
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # (x, y, z) as NIfTI stores it
    nib.save(nib.Nifti1Image(array, ras), str(out))
    return out


def bundle_run(bundle: Path, nifti: Path, work: Path, overrides: dict[str, Any]) -> np.ndarray:
    """``python -m monai.bundle run`` on one NIfTI; its saved label map, ``(x, y, z)``."""
    require("ignite", "the bundle's evaluator")
    require("nibabel", "the bundle reads and writes NIfTI")
    require("fire", "the monai.bundle command line")
    import nibabel as nib

    dataset = work / "dataset"
    write_to = work / "out"
    (dataset / "imagesTs").mkdir(parents=True)
    shutil.copyfile(nifti, dataset / "imagesTs" / nifti.name)
    args = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(bundle / "configs" / "inference.json"),
        "--bundle_root", str(bundle),
        "--dataset_dir", str(dataset),
        "--output_dir", str(write_to),
        "--device", CPU,
        "--dataloader#num_workers", "0",
    ]  # fmt: skip
    for k, v in overrides.items():
        args += [f"--{k}", v if isinstance(v, str) else json.dumps(v).title()]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    saved = sorted(write_to.rglob("*.nii.gz"))
    assert len(saved) == 1, (saved, proc.stdout[-2000:])
    return np.asarray(nib.load(saved[0]).dataobj)  # type: ignore[attr-defined]


def node_label_map(result: PipelineResult, pipeline: MonaiBundlePipeline) -> np.ndarray:
    """The result's segments back as one label map on the volume's ``(k, i, j)`` grid."""
    values = {ls.label: ls.value for ls in pipeline.labels}
    out = np.zeros(result.volume.shape, dtype=np.int32)
    for seg in result.segments:
        mask = np.asarray(seg.mask, dtype=bool)
        assert mask.shape == result.volume.shape
        assert not out[mask].any(), f"{seg.label} overlaps another segment"
        out[mask] = values[seg.label]
    return out


def assert_same_as_bundle_run(
    pipeline: MonaiBundlePipeline,
    volume: Volume,
    series: Path,
    bundle: Path,
    work: Path,
    overrides: dict[str, Any],
    writer: str = "itk",
) -> tuple[np.ndarray, PipelineResult]:
    result = pipeline.run(volume)
    mine = node_label_map(result, pipeline)
    nifti = write_nifti(series, work / "nifti" / f"{series.name}.nii.gz", writer)
    theirs = bundle_run(bundle, nifti, work, overrides)
    assert theirs.shape == tuple(reversed(volume.shape))
    theirs_kij = np.rint(theirs).astype(np.int32).transpose(2, 1, 0)
    differ = int(np.count_nonzero(mine != theirs_kij))
    assert differ == 0, f"{differ} of {mine.size} voxels differ from the bundle's own run"
    return mine, result


# --------------------------------------------------------------------------- #
# The node's input is what LoadImaged reads from the NIfTI.


@pytest.mark.slow
@pytest.mark.parametrize("series,exact", [(HEAD_CT, True), (OBLIQUE_MR, False)])
def test_volume_input_matches_loadimaged_of_simpleitk_nifti(dicom_data, tmp_path, series, exact):
    require("nibabel", "LoadImaged reads the NIfTI with it")
    from monai.transforms import LoadImaged

    from ai_models.pipelines.monai_bundle import _make_volume_reader, _registered_volume

    volume = load_series(dicom_data / series)
    nifti = write_nifti(dicom_data / series, tmp_path / "series.nii.gz")
    ref = LoadImaged("image")({"image": str(nifti)})["image"]
    with _registered_volume(volume) as name:
        mine = LoadImaged("image", reader=_make_volume_reader())({"image": name})["image"]

    assert type(mine) is type(ref)
    assert mine.dtype == ref.dtype == torch.float32
    assert mine.shape == ref.shape == tuple(reversed(volume.shape))
    assert torch.equal(mine.as_tensor(), ref.as_tensor())
    assert mine.affine.dtype == ref.affine.dtype
    if exact:  # axial: the float32 affine of the NIfTI header, bit for bit
        assert torch.equal(mine.affine, ref.affine)
    else:  # oblique: ITK's writer re-orthogonalises in float32 (see write_nifti)
        assert torch.allclose(mine.affine, ref.affine, atol=1e-6, rtol=0)
    for key in ("affine", "original_affine", "spatial_shape", "space", "original_channel_dim"):
        assert key in mine.meta and key in ref.meta, key
    assert np.array_equal(mine.meta["spatial_shape"], ref.meta["spatial_shape"])
    assert mine.meta["space"] == ref.meta["space"]
    _, affine = volume_to_nifti_order(volume)
    assert np.allclose(affine, ref.meta["original_affine"], atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- #
# Real series: the node equals the bundle's own run.


@pytest.fixture(scope="module")
def spleen_head_ct(spleen_bundle, dicom_data, tmp_path_factory):
    """The spleen bundle on the real head CT: the node's label map and result, checked
    voxel for voxel against ``python -m monai.bundle run``."""
    pipeline = MonaiBundleSpec(name="spleen", path=spleen_bundle, device="cpu").build()
    volume = load_series(dicom_data / HEAD_CT)
    work = tmp_path_factory.mktemp("spleen-head-ct")
    mine, result = assert_same_as_bundle_run(
        pipeline, volume, dicom_data / HEAD_CT, spleen_bundle, work, {}
    )
    return mine, result


@pytest.mark.slow
def test_spleen_bundle_on_real_ct_equals_bundle_run(spleen_head_ct):
    mine, result = spleen_head_ct
    volume = result.volume
    # not trivially equal: both background and spleen
    fraction = float(np.count_nonzero(mine)) / mine.size
    assert 0.01 < fraction < 0.99, fraction

    assert result.pipeline == "spleen"
    assert set(result.timings) == {"load", "preprocess", "infer", "postprocess"}
    assert result.algorithm.version == "0.5.9"  # metadata.json
    assert "kind=monai-bundle" in result.algorithm.parameters
    assert len(result.algorithm.weights_sha256) == 64
    [segment] = result.segments
    assert segment.label == "spleen"
    assert (segment.type.scheme_designator, segment.type.value) == ("SCT", "78961009")
    [finding] = result.findings
    assert finding.segment_number == segment.number
    expected_mm3 = np.count_nonzero(mine) * volume.voxel_volume_mm3
    assert finding.measurements[0].value == pytest.approx(expected_mm3)


@pytest.mark.slow
def test_spleen_bundle_seg_equals_bundle_run(spleen_head_ct, tmp_path):
    """The SEG the node writes (the file, read back) holds the bundle's own label map."""
    import pydicom

    from dicom_node.results import write_seg
    from tests.results.helpers import assert_valid, label_map_from_seg

    mine, result = spleen_head_ct
    path = tmp_path / "seg.dcm"
    write_seg(result).save_as(path)
    assert_valid(path)
    back = label_map_from_seg(pydicom.dcmread(path), result.volume, {"spleen": 1})
    assert np.array_equal(back, mine)


@pytest.mark.slow
def test_postprocessing_without_invertd_is_resampled_to_the_volume(
    spleen_bundle, spleen_head_ct, tmp_path
):
    """A bundle whose postprocessing stays on its working grid (no Invertd): the
    label map is brought back by nearest neighbour through the affines."""
    mine, result = spleen_head_ct
    root = tmp_path / "no-invertd"
    shutil.copytree(spleen_bundle, root)

    def drop_invertd(config: dict[str, Any]) -> None:
        transforms = config["postprocessing"]["transforms"]
        config["postprocessing"]["transforms"] = [
            t for t in transforms if t["_target_"] != "Invertd"
        ]

    _edit_config(root, drop_invertd)
    pipeline = MonaiBundleSpec(name="spleen", path=root, device="cpu").build()
    other = node_label_map(pipeline.run(result.volume), pipeline)
    assert other.shape == mine.shape
    both = np.count_nonzero((other > 0) & (mine > 0))
    dice = 2.0 * both / (np.count_nonzero(other) + np.count_nonzero(mine))
    assert dice > 0.9, dice


@pytest.mark.slow
def test_oblique_mr_equals_bundle_run(spleen_bundle, dicom_data, tmp_path):
    """A stack tilted about 10 degrees (the spleen bundle let onto MR for the geometry).

    The reference NIfTI is SimpleITK's reading of the series written by
    nibabel (see :func:`write_nifti` for why not by ITK's NIfTI writer)."""
    volume = load_series(dicom_data / OBLIQUE_MR)
    assert abs(volume.direction[0, 0]) < 0.99  # really oblique
    spec = MonaiBundleSpec(name="spleen-mr", path=spleen_bundle, device="cpu", modalities=("MR",))
    mine, _ = assert_same_as_bundle_run(
        spec.build(), volume, dicom_data / OBLIQUE_MR, spleen_bundle, tmp_path, {}, "nibabel"
    )
    assert 0 < np.count_nonzero(mine) < mine.size


@pytest.mark.slow
def test_whole_body_bundle_105_labels_equals_bundle_run(whole_body_bundle, dicom_data, tmp_path):
    """The second bundle: SegResNet, 105 structures, its low-resolution checkpoint,
    argmax before a nearest-neighbour Invertd."""
    spec = MonaiBundleSpec(
        name="whole-body", path=whole_body_bundle, device="cpu", overrides=WHOLE_BODY_LOWRES
    )
    pipeline = spec.build()
    assert len(pipeline.labels) == 104
    assert load_bundle(spec).weights_path.name == "model_lowres.pt"
    volume = load_series(dicom_data / HEAD_CT)
    mine, result = assert_same_as_bundle_run(
        pipeline, volume, dicom_data / HEAD_CT, whole_body_bundle, tmp_path, WHOLE_BODY_LOWRES
    )
    assert len(np.unique(mine)) >= 2
    assert len(result.segments) == len(np.unique(mine[mine > 0]))
    assert "displayable_configs#highres=false" in result.algorithm.parameters


# --------------------------------------------------------------------------- #
# Listing, caching, applicability.


def test_info_from_metadata_without_monai():
    code = (
        "import sys; from pathlib import Path\n"
        "from ai_models.pipelines.monai_bundle import MonaiBundleSpec\n"
        f"s = MonaiBundleSpec(name='spleen', path=Path({str(SPLEEN)!r}))\n"
        "i = s.info()\n"
        "print(i.modalities, i.version, i.source, i.labels, s.label_names())\n"
        "assert 'monai' not in sys.modules, 'info() imported MONAI'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "('CT',) 0.5.9 configured ('spleen',) {1: 'spleen'}" in proc.stdout


@pytest.mark.slow
def test_bundle_stays_warm_and_reloads_on_change(spleen_bundle):
    spec = MonaiBundleSpec(name="spleen", path=spleen_bundle, device="cpu")
    first = load_bundle(spec)
    assert load_bundle(spec) is first
    assert load_bundle(MonaiBundleSpec(name="other", path=spleen_bundle, device="cpu")) is first
    tuned = load_bundle(
        MonaiBundleSpec(
            name="spleen", path=spleen_bundle, device="cpu", overrides={"inferer#sw_batch_size": 1}
        )
    )
    assert tuned is not first
    assert tuned.inferer.sw_batch_size == 1
    assert first.inferer.sw_batch_size == 4
    clear_bundle_cache()
    assert load_bundle(spec) is not first


def test_modality_and_slices_are_checked(dicom_data, tmp_path):
    root = copy_bundle(SPLEEN, tmp_path / "b")
    (root / "models" / "model.pt").write_bytes(b"")  # not loaded by the check
    pipeline = MonaiBundleSpec(name="spleen", path=root, min_slices=30).build()
    with pytest.raises(PipelineNotApplicable, match="modality 'MR'"):
        pipeline.check(load_series(dicom_data / OBLIQUE_MR))
    with pytest.raises(PipelineNotApplicable, match="28 slice"):
        pipeline.check(load_series(dicom_data / HEAD_CT))


# --------------------------------------------------------------------------- #
# Bad bundles: clear errors.


def _edit_config(root: Path, edit) -> None:  # noqa: ANN001
    cfg = root / "configs" / "inference.json"
    config = json.loads(cfg.read_text())
    edit(config)
    cfg.write_text(json.dumps(config))


def _drop_loader(config: dict[str, Any]) -> None:
    config["preprocessing"]["transforms"] = [
        t for t in config["preprocessing"]["transforms"] if t["_target_"] != "LoadImaged"
    ]


def test_missing_weights(tmp_path):
    root = copy_bundle(SPLEEN, tmp_path / "b")
    with pytest.raises(ModelLoadError, match=r"neither models/model\.pt nor models/model\.ts"):
        MonaiBundleSpec(name="x", path=root).build()


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda c: c.pop("preprocessing"), r"lacks 'preprocessing'"),
        (lambda c: c.pop("inferer"), r"lacks 'inferer'"),
        (lambda c: c.pop("network_def"), r"lacks 'network_def'"),
        (_drop_loader, r"preprocessing of configs/inference\.json has no LoadImaged"),
    ],
    ids=["no-preprocessing", "no-inferer", "no-network_def", "no-LoadImaged"],
)
def test_bad_config(tmp_path, edit, message):
    root = copy_bundle(SPLEEN, tmp_path / "b")
    (root / "models" / "model.pt").write_bytes(b"not read before the config is checked")
    _edit_config(root, edit)
    with pytest.raises(ModelLoadError, match=message):
        MonaiBundleSpec(name="x", path=root).build()


def test_bad_folder_and_metadata(tmp_path):
    with pytest.raises(ModelLoadError, match="is not a directory"):
        MonaiBundleSpec(name="x", path=tmp_path / "nowhere").validate()
    root = copy_bundle(SPLEEN, tmp_path / "b")
    (root / "models" / "model.pt").write_bytes(b"")
    (root / "configs" / "metadata.json").unlink()
    with pytest.raises(ModelLoadError, match=r"has no configs/metadata\.json"):
        MonaiBundleSpec(name="x", path=root).validate()
    with pytest.raises(ModelLoadError, match=r"has no configs/other\.json"):
        MonaiBundleSpec(name="x", path=root, config_file="configs/other.json").validate()


def test_unknown_label_needs_a_configured_code(tmp_path):
    root = copy_bundle(SPLEEN, tmp_path / "b")
    (root / "models" / "model.pt").write_bytes(b"")
    meta_file = root / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["network_data_format"]["outputs"]["pred"]["channel_def"]["1"] = "thing nobody codes"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="no code is known for label"):
        MonaiBundleSpec(name="x", path=root).build()


def test_weights_that_do_not_fit_the_network(tmp_path):
    root = copy_bundle(SPLEEN, tmp_path / "b")
    torch.save({"not.a.weight": torch.zeros(1)}, root / "models" / "model.pt")
    with pytest.raises(ModelLoadError, match="does not fit the architecture"):
        load_bundle(MonaiBundleSpec(name="x", path=root, device="cpu"))
