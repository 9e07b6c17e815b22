"""An nnU-Net v2 trained-model folder run unchanged as a pipeline (``kind = "nnunetv2"``).

The model is trained here, once per session, with nnU-Net's own commands
(:mod:`ai_models.training.nnunet_demo`: synthetic abdominal CT phantoms,
one epoch of a tiny plan).  The node's result on DICOM series must equal,
voxel for voxel, what ``nnUNetv2_predict_from_modelfolder`` writes for a
NIfTI that SimpleITK made from the same series (ImageSeriesReader, GDCM's
file order), after the CLI's output is resampled onto the node's grid
through patient coordinates (so the check does not rely on the pipeline's
own axis bookkeeping).  Once with the folder's default reader
(``SimpleITKIO``: orientation ``source``) and once with a copy switched to
``NibabelIOWithReorient`` as TotalSegmentator's folders are (``RAS``).

Series: the real Philips head phantom CT (axial), the real prostate ADC MR
(tilted about 10 degrees), a phantom written as an axial CT series and the
same phantom written as an oblique coronal series (axes permuted and
flipped relative to RAS).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ai_models.errors import ModelLoadError, PipelineNotApplicable
from ai_models.pipelines.nnunet import (
    NnUNetSpec,
    clear_predictor_cache,
    load_predictor,
    nnunet_orientation,
)
from ai_models.types import PipelineResult, Volume
from ai_models.volume import load_series, resample_to_volume
from dicom_node.results import write_seg
from tests.conftest import require_nnunet
from tests.results.helpers import label_map_from_seg

HEAD_CT = "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm"  # axial, 28 x 512 x 512
OBLIQUE_MR = "dcmqi/qin-prostate-01-0001_adc"  # tilted about 10 degrees, 20 x 256 x 256

#: What both the node and the CLI run with: not nnU-Net's defaults (0.5,
#: mirroring), so that the result shows they are passed on, and a third of
#: the compute of the default step without the 8 mirrored passes.
STEP = 1.0
MIRRORING = False

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="session")
def demo_model(nnunet_demo_model: Path) -> Path:
    """The demo trained-model folder (``nnUNetTrainer_1epoch__nnUNetPlans__3d_fullres``)."""
    return nnunet_demo_model


@pytest.fixture(scope="session")
def reorient_model(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the demo folder that reads images with ``NibabelIOWithReorient``."""
    dst = tmp_path_factory.mktemp("nnunet_reorient") / demo_model.name
    shutil.copytree(demo_model, dst, ignore=shutil.ignore_patterns("validation", "*.png"))
    for name, key in (("dataset.json", "overwrite_image_reader_writer"),
                      ("plans.json", "image_reader_writer")):  # fmt: skip
        data = json.loads((dst / name).read_text())
        data[key] = "NibabelIOWithReorient"
        (dst / name).write_text(json.dumps(data, indent=2))
    return dst


# --------------------------------------------------------------------------- #
# Series


def phantom_volume(direction: np.ndarray, origin: tuple[float, float, float]) -> Volume:
    """A demo phantom (HU) with the given ``(k, i, j)`` direction."""
    from ai_models.training.nnunet_demo import SPACING_ZYX, phantom_case

    image, _ = phantom_case(np.random.default_rng(20240611))
    return Volume(
        array=image,
        origin=np.asarray(origin, dtype=float),
        spacing=np.asarray(SPACING_ZYX, dtype=float),
        direction=np.asarray(direction, dtype=float),
        frames=[],
        source_datasets=[],
        modality="CT",
    )


def rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [n for n in range(3) if n != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


AXIAL = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
"""Columns: k towards superior, i posterior, j left."""

# Coronal: rows run towards patient left, columns towards the feet, slices
# (row x column) towards posterior; then tilted 20 and 12 degrees.
_CORONAL = np.column_stack([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
OBLIQUE_CORONAL = rotation(2, 20.0) @ rotation(0, 12.0) @ _CORONAL


def write_series(volume: Volume, folder: Path) -> Path:
    from bench.synthetic import write_volume_series

    write_volume_series(volume, folder, description="nnU-Net demo phantom", body_part=None)
    return folder


def series_to_nifti(series: Path, out: Path) -> Path:
    """The series as a NIfTI, the way nnU-Net users convert DICOM (SimpleITK)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    sitk.WriteImage(reader.Execute(), str(out))
    return out


@dataclass
class Case:
    name: str
    volume: Volume
    nifti: Path


@pytest.fixture(scope="module")
def cases(dicom_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    """The four series, read by the node and converted to NIfTI (``<name>_0000.nii.gz``)."""
    tmp = tmp_path_factory.mktemp("nnunet_cases")
    inputs = tmp / "in"
    inputs.mkdir()
    folders = {
        "head_ct": dicom_data / HEAD_CT,
        "oblique_mr": dicom_data / OBLIQUE_MR,
        "phantom_axial": write_series(
            phantom_volume(AXIAL, (-126.0, -126.0, -60.0)), tmp / "phantom_axial"
        ),
        "phantom_oblique": write_series(
            phantom_volume(OBLIQUE_CORONAL, (-90.0, -40.0, 70.0)), tmp / "phantom_oblique"
        ),
    }
    return {
        name: Case(
            name, load_series(folder), series_to_nifti(folder, inputs / f"{name}_0000.nii.gz")
        )
        for name, folder in folders.items()
    }


# --------------------------------------------------------------------------- #
# Running both


def predict_cli(model: Path, inputs: Path, out: Path) -> Path:
    """``nnUNetv2_predict_from_modelfolder`` on every NIfTI in ``inputs``."""
    from ai_models.training.nnunet_demo import nnunet_command

    args = ["-i", str(inputs), "-o", str(out), "-m", str(model), "-f", "0",
            "-step_size", str(STEP), "-device", "cpu", "-npp", "1", "-nps", "1",
            "--disable_progress_bar"]  # fmt: skip
    if not MIRRORING:
        args.append("--disable_tta")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(
        [*nnunet_command("nnUNetv2_predict_from_modelfolder"), *args],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.fixture
def cli_threads() -> Iterator[None]:
    """Torch threads as the nnU-Net CLI sets them on a CPU (one per core), so that
    both compute the same floating-point sums."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(multiprocessing.cpu_count())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def node_label_map(model: Path, result: PipelineResult) -> np.ndarray:
    """The label values of the result's segments (by ``dataset.json``), on the volume's grid."""
    values = json.loads((model / "dataset.json").read_text())["labels"]
    lab = np.zeros(result.volume.shape, np.uint8)
    for seg in result.segments:
        mask = np.asarray(seg.mask)
        assert mask.shape == result.volume.shape and mask.dtype == bool
        assert not (lab[mask] > 0).any(), "segments of a label map overlap"
        lab[mask] = values[seg.label]
    return lab


def cli_label_map(path: Path, volume: Volume) -> np.ndarray:
    """The CLI's output NIfTI resampled (nearest) onto the volume's grid via LPS."""
    import SimpleITK as sitk

    return resample_to_volume(sitk.ReadImage(str(path)), volume, nearest=True).astype(np.uint8)


def compare_with_cli(
    model: Path, cases: dict[str, Case], tmp_path: Path, orientation: str
) -> dict[str, np.ndarray]:
    """Run the node and the CLI on every case; assert equal label maps; return them."""
    inputs = next(iter(cases.values())).nifti.parent
    out = predict_cli(model, inputs, tmp_path / "cli")
    spec = NnUNetSpec(
        name="demo-organs",
        path=model.parent,  # the dataset folder: the configuration picks the model
        tile_step_size=STEP,
        use_mirroring=MIRRORING,
        modalities=("CT", "MR"),
        device="cpu",
    )
    pipeline = spec.build()
    assert pipeline.orientation == orientation
    maps = {}
    for name, case in cases.items():
        result = pipeline.run(case.volume)
        assert f"orientation={orientation}" in result.algorithm.parameters
        assert result.algorithm.version == "nnunetv2 DemoAbdomen 3d_fullres folds 0"
        assert set(result.timings) == {"load", "preprocess", "infer", "postprocess"}
        node = node_label_map(model, result)
        cli = cli_label_map(out / f"{name}.nii.gz", case.volume)
        diff = int(np.count_nonzero(node != cli))
        assert diff == 0, (
            f"{name}: {diff} of {node.size} voxels differ from nnUNetv2_predict "
            f"(node labels {np.bincount(node.ravel()).tolist()}, "
            f"CLI {np.bincount(cli.ravel()).tolist()})"
        )
        if result.segments:  # the SEG file holds the CLI's label map too
            seg_path = tmp_path / f"{name}-seg.dcm"
            write_seg(result).save_as(seg_path)
            values = {ls.label: ls.value for ls in pipeline.labels}
            from_seg = label_map_from_seg(pydicom.dcmread(seg_path), case.volume, values)
            assert np.array_equal(from_seg, cli), f"{name}: the SEG differs from nnUNetv2_predict"
        maps[name] = node
    # not trivially equal: labels were found in the phantoms (the demo model's
    # training family; on the real series a one-epoch model may find nothing,
    # and then both agree on nothing), and more than one structure overall
    phantoms = {k: int(m.sum()) for k, m in maps.items() if k.startswith("phantom")}
    assert all(phantoms.values()), phantoms
    found = set().union(*(set(np.unique(m).tolist()) for m in maps.values())) - {0}
    assert len(found) >= 2, found
    return maps


# --------------------------------------------------------------------------- #
# Tests: the CLI's result


@pytest.mark.slow
def test_equals_nnunet_cli_simpleitk_reader(
    demo_model: Path, cases: dict[str, Case], tmp_path: Path, cli_threads: None
) -> None:
    compare_with_cli(demo_model, cases, tmp_path, "source")


@pytest.mark.slow
def test_equals_nnunet_cli_nibabel_reorient(
    reorient_model: Path, cases: dict[str, Case], tmp_path: Path, cli_threads: None
) -> None:
    compare_with_cli(reorient_model, cases, tmp_path, "RAS")


# --------------------------------------------------------------------------- #
# Tests: orientation against nnU-Net's own readers


@pytest.mark.parametrize("name", ["head_ct", "oblique_mr", "phantom_oblique"])
def test_arrays_are_what_nnunet_readers_return(cases: dict[str, Case], name: str) -> None:
    require_nnunet()
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIO, NibabelIOWithReorient
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    case = cases[name]
    for reader, orientation in (
        (SimpleITKIO, "source"),
        (NibabelIO, "source"),
        (NibabelIOWithReorient, "RAS"),
    ):
        expected, props = reader().read_images([str(case.nifti)])
        orient = nnunet_orientation(case.volume, orientation)
        got = orient.to_canonical(case.volume.array)
        assert got.shape == expected.shape[1:], (reader.__name__, got.shape, expected.shape)
        np.testing.assert_array_equal(got, expected[0], err_msg=reader.__name__)
        np.testing.assert_allclose(orient.spacing(case.volume.spacing), props["spacing"], rtol=1e-5)
        back = orient.from_canonical(expected[0])
        np.testing.assert_array_equal(back, case.volume.array)


def test_lps_layout_and_reversed_slices(cases: dict[str, Case]) -> None:
    import SimpleITK as sitk

    case = cases["phantom_oblique"]
    vol = case.volume
    lps = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(case.nifti)), "LPS"))
    np.testing.assert_array_equal(nnunet_orientation(vol, "LPS").to_canonical(vol.array), lps)
    # a volume whose k runs against the slice normal gives nnU-Net the same arrays
    rev = Volume(
        array=vol.array[::-1],
        origin=vol.index_to_lps(np.array([vol.shape[0] - 1, 0, 0])),
        spacing=vol.spacing,
        direction=vol.direction * np.array([-1.0, 1.0, 1.0]),
        frames=[],
        source_datasets=[],
        modality="CT",
    )
    for orientation in ("source", "RAS", "LPS"):
        a = nnunet_orientation(vol, orientation).to_canonical(vol.array)
        b = nnunet_orientation(rev, orientation).to_canonical(rev.array)
        np.testing.assert_array_equal(a, b, err_msg=orientation)


# --------------------------------------------------------------------------- #
# Tests: the spec


def test_info_without_loading(tmp_path: Path) -> None:
    folder = fake_model(tmp_path)
    spec = NnUNetSpec(name="fake-organs", path=folder.parent, folds=(0, "all"))
    info = spec.info()
    assert info.modalities == ("CT",)
    assert info.source == "configured"
    assert info.labels == ("liver", "spleen")
    assert info.version == "nnunetv2 Dataset009_Fake 3d_fullres folds 0,all"
    assert info.description == "nnU-Net Dataset009_Fake (3d_fullres)"
    assert spec.label_names() == {1: "liver", 2: "spleen"}
    assert spec.resolved_orientation() == "source"
    other = NnUNetSpec(name="x", path=folder, modalities=("MR",), version="7", description="d")
    assert (other.info().modalities, other.info().version, other.info().description) == (
        ("MR",),
        "7",
        "d",
    )


@pytest.mark.slow
def test_settings_reach_the_predictor_and_stay_warm(demo_model: Path) -> None:
    clear_predictor_cache()
    spec = NnUNetSpec(name="demo-organs", path=demo_model, device="cpu")
    loaded = load_predictor(spec)
    assert loaded.predictor.use_mirroring is True and loaded.predictor.tile_step_size == 0.5
    assert load_predictor(spec) is loaded
    other = load_predictor(
        NnUNetSpec(
            name="demo-organs",
            path=demo_model,
            device="cpu",
            use_mirroring=False,
            tile_step_size=0.75,
        )  # fmt: skip
    )
    assert other is not loaded
    assert other.predictor.use_mirroring is False and other.predictor.tile_step_size == 0.75
    assert other.sha256 == loaded.sha256 and len(loaded.sha256) == 64


def test_refuses_other_modalities_and_thin_volumes(tmp_path: Path, cases: dict[str, Case]) -> None:
    pipeline = NnUNetSpec(name="fake-organs", path=fake_model(tmp_path), min_slices=30).build()
    with pytest.raises(PipelineNotApplicable, match="modality 'MR'"):
        pipeline.check(cases["oblique_mr"].volume)
    with pytest.raises(PipelineNotApplicable, match="28 slice"):
        pipeline.check(cases["head_ct"].volume)


# --------------------------------------------------------------------------- #
# Tests: bad folders (no nnU-Net needed)


def fake_model(root: Path, *, configurations: tuple[str, ...] = ("2d", "3d_fullres")) -> Path:
    """A trained-model folder with the right files (the checkpoint is empty)."""
    folder = root / "Dataset009_Fake" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "liver": 1, "spleen": 2},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }))  # fmt: skip
    (folder / "plans.json").write_text(json.dumps({
        "dataset_name": "Dataset009_Fake",
        "image_reader_writer": "SimpleITKIO",
        "configurations": {c: {"patch_size": [16, 32, 32]} for c in configurations},
    }))  # fmt: skip
    return folder


def test_fake_folder_validates(tmp_path: Path) -> None:
    folder = fake_model(tmp_path)
    NnUNetSpec(name="fake", path=folder).validate()
    NnUNetSpec(name="fake", path=folder.parent).validate()  # the dataset folder
    assert NnUNetSpec(name="fake", path=folder.parent).model_folder() == folder


def test_listing_and_building_import_no_nnunet(tmp_path: Path) -> None:
    folder = fake_model(tmp_path)
    code = (
        "import sys; from pathlib import Path; "
        "from ai_models.pipelines.nnunet import NnUNetSpec; "
        "spec = NnUNetSpec(name='fake', path=Path(sys.argv[1])); "
        "info = spec.info(); spec.build(); "
        "assert info.labels == ('liver', 'spleen') and info.modalities == ('CT',), info; "
        "assert 'nnunetv2' not in sys.modules, 'nnunetv2 was imported'"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", code, str(folder)], cwd=root, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_missing_checkpoint(tmp_path: Path) -> None:
    folder = fake_model(tmp_path)
    (folder / "fold_0" / "checkpoint_final.pth").unlink()
    (folder / "fold_0" / "checkpoint_best.pth").write_bytes(b"")
    with pytest.raises(
        ModelLoadError, match=r"fold_0 has no checkpoint_final\.pth.*checkpoint_best"
    ):
        NnUNetSpec(name="fake", path=folder).validate()
    NnUNetSpec(name="fake", path=folder, checkpoint="checkpoint_best.pth").validate()
    with pytest.raises(ModelLoadError, match=r"no fold_3 folder; it has fold_0"):
        NnUNetSpec(
            name="fake", path=folder, folds=(0, 3), checkpoint="checkpoint_best.pth"
        ).validate()


def test_missing_json(tmp_path: Path) -> None:
    folder = fake_model(tmp_path)
    (folder / "plans.json").unlink()
    with pytest.raises(ModelLoadError, match="has no plans.json"):
        NnUNetSpec(name="fake", path=folder).validate()


def test_unknown_configuration(tmp_path: Path) -> None:
    folder = fake_model(tmp_path)
    with pytest.raises(
        ModelLoadError, match=r"'3d_lowres' is not in plans.json; it has 2d, 3d_fullres"
    ):
        NnUNetSpec(name="fake", path=folder, configuration="3d_lowres").validate()
    # the dataset folder lists the trained models it holds
    with pytest.raises(
        ModelLoadError, match=r"no trained model for configuration '2d'.*nnUNetPlans__3d_fullres"
    ):
        NnUNetSpec(name="fake", path=folder.parent, configuration="2d").validate()
    with pytest.raises(ModelLoadError, match="trained as configuration '3d_fullres', not '2d'"):
        NnUNetSpec(name="fake", path=folder, configuration="2d").validate()


def test_region_based_labels_refused(tmp_path: Path) -> None:
    folder = fake_model(tmp_path)
    data = json.loads((folder / "dataset.json").read_text())
    data["labels"] = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3]}
    data["regions_class_order"] = [1, 2]
    (folder / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="region-based.*'whole_tumor'"):
        NnUNetSpec(name="fake", path=folder).validate()


def test_bad_fields(tmp_path: Path) -> None:
    folder = fake_model(tmp_path)
    for kwargs, match in (
        ({"orientation": "RAI"}, "orientation 'RAI' is not one of auto, source, RAS, LPS"),
        ({"folds": ()}, "at least one fold"),
        ({"folds": ("first",)}, "fold 'first' is neither"),
        ({"tile_step_size": 0.0}, r"tile_step_size must be in \(0, 1\]"),
        ({"name": " "}, "name must not be empty"),
    ):
        with pytest.raises(ValueError, match=match):
            NnUNetSpec(**{"name": "fake", "path": folder, **kwargs}).validate()  # type: ignore[arg-type]
    with pytest.raises(ModelLoadError, match="is not a directory"):
        NnUNetSpec(name="fake", path=tmp_path / "nowhere").validate()
    data = json.loads((folder / "plans.json").read_text())
    data["image_reader_writer"] = "Tiff3DIO"
    (folder / "plans.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="Tiff3DIO; set orientation"):
        NnUNetSpec(name="fake", path=folder).validate()
    NnUNetSpec(name="fake", path=folder, orientation="source").validate()
