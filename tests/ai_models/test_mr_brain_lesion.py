"""The built-in ``mr-brain-lesion`` pipeline with its shipped weights.

Dice floors sit a little below values measured with
``python -m ai_models.training.evaluate_mr_brain_lesion`` and on the phantoms
below (see ai_models/README.md); the Dice values themselves are computed here.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import shutil
import subprocess
import sys
import warnings

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset

from ai_models import runtime
from ai_models.dicom_files import discover_series
from ai_models.errors import (
    MixedOrientationError,
    ModelLoadError,
    PipelineNotApplicable,
    VolumeError,
)
from ai_models.pipelines import CODES, MR_BRAIN_LESION, get_pipeline, list_pipelines
from ai_models.pipelines.base import longest_diameter_mm
from ai_models.pipelines.mr_brain_lesion import (
    DEFAULT_WEIGHTS,
    MrBrainLesionPipeline,
    class_channels,
    non_anatomical_reasons,
    working_spacing,
)
from ai_models.training.brain_phantoms import phantom_volume
from ai_models.training.evaluate import dice
from ai_models.training.evaluate_mr_brain_lesion import (
    heldout_phantom,
    reference_masks,
    result_masks,
)
from tests.ai_models.site_models import as_bundle, export_torchscript
from tests.results.helpers import assert_valid, frame_key_of

PHILIPS = "dcm_qa_enh/Philips_Achieva_enhanced"  # real MR of a QA phantom, magnitude + field map
ADC = "dcmqi/qin-prostate-01-0001_adc"
LOCALIZER = "dcm_qa_table/GE_SIGNA_Premier_3plane_localizer"

TEST_SEED = 8_675_309  # neither a training nor the evaluation stream
TEST_CASES = (("axial", "FLAIR"), ("sagittal", "T2"), ("oblique", "T1"))

# Measured on the shipped weights for these three phantoms (voxels pooled): brain 0.956,
# lesion 0.587, edema 0.778 (held-out evaluation set of 12 phantoms: 0.964 / 0.469 /
# 0.671, see ai_models/README.md).  Floors a bit below.
SYN_FLOOR = {"brain": 0.93, "lesion": 0.50, "edema": 0.70}


def _files(root: pathlib.Path) -> list:
    (files,) = discover_series([root]).values()
    return files


@pytest.fixture(scope="module")
def pipeline() -> MrBrainLesionPipeline:
    return get_pipeline(MR_BRAIN_LESION, device="cpu")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def phantom_runs(pipeline):
    rng = np.random.default_rng(TEST_SEED)
    runs = []
    for i, (plane, contrast) in enumerate(TEST_CASES):
        ph = heldout_phantom(
            rng, plane, contrast, n_lesions=1, pixel_mm=(1.0, 1.3), slice_mm=(3.0, 5.0)
        )
        vol = phantom_volume(ph, series_instance_uid=f"1.2.826.0.1.3680043.10.8.{i + 1}")
        runs.append((ph, vol, pipeline.run(vol)))
    return runs


@pytest.fixture(scope="module")
def philips(pipeline, dicom_data):
    """The real enhanced MR of a QA phantom, analysed past the applicability check.

    The pipeline refuses it (a round water cylinder is not a head:
    :func:`test_real_qa_phantom_is_refused`); the network and the writers are
    still run on it, since it is the one real multi-frame MR volume of the
    shared data and the SEG must land on exactly its frames.
    """
    vol = pipeline.read_series(_files(dicom_data / PHILIPS))
    return vol, pipeline._analyse(vol)


def test_registered_and_weights_described():
    assert MR_BRAIN_LESION in [p.name for p in list_pipelines()]
    info = next(p for p in list_pipelines() if p.name == MR_BRAIN_LESION)
    assert info.modalities == ("MR",) and info.source == "built-in" and info.description
    meta = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    assert DEFAULT_WEIGHTS.stat().st_size < 20 * 1024 * 1024
    assert meta["sha256"] == runtime.file_sha256(DEFAULT_WEIGHTS)
    assert meta["labels"] == {"0": "background", "1": "brain", "2": "lesion", "3": "edema"}
    assert meta["working_spacing_mm"] == 3.0
    assert {"seed", "steps", "threads"} <= set(meta["training"])
    assert set(meta["metrics"]["heldout_working_grid_dice"]) == {"brain", "lesion", "edema"}


def test_result_structure_and_codes(phantom_runs):
    _, vol, res = phantom_runs[0]
    assert res.pipeline == MR_BRAIN_LESION and res.algorithm.name == MR_BRAIN_LESION
    assert res.algorithm.weights_sha256 == runtime.file_sha256(DEFAULT_WEIGHTS)
    assert set(res.timings) == {"load", "preprocess", "infer", "postprocess"}
    assert res.procedure_reported is not None and res.procedure_reported.value == "25056-3"
    labels = [s.label for s in res.segments]
    assert labels[0] == "Brain" and "Lesion 1" in labels and labels[-1] == "Edema"
    assert [s.number for s in res.segments] == list(range(1, len(labels) + 1))
    by = {s.label: s for s in res.segments}
    # codes as in pydicom.sr.codedict (CID 7150 / 7151)
    assert by["Brain"].type == CODES.BRAIN and by["Brain"].type.value == "12738006"
    assert by["Brain"].category == CODES.ANATOMICAL_STRUCTURE
    assert by["Lesion 1"].type.value == "52988006" and by["Lesion 1"].type.meaning == "Lesion"
    assert by["Edema"].type.value == "79654002" and by["Edema"].type.meaning == "Edema"
    for s in ("Lesion 1", "Edema"):
        assert by[s].category.value == "49755003"
        assert by[s].anatomic_region == CODES.BRAIN
    from pydicom.sr.codedict import codes

    for concept, ref in (
        (CODES.BRAIN, codes.SCT.Brain),
        (CODES.LESION, codes.SCT.Lesion),
        (CODES.EDEMA, codes.SCT.Edema),
        (CODES.MRI_UNSPECIFIED, codes.LN.MRIUnspecifiedBodyRegion),
    ):
        assert (concept.value, concept.scheme_designator, concept.meaning) == (
            ref.value,
            ref.scheme_designator,
            ref.meaning,
        )
    for s in res.segments:
        assert s.mask.shape == vol.shape and s.mask.dtype == bool and s.mask.any()
    # the brain segment is the whole brain: it contains the lesions and the edema
    assert not (by["Lesion 1"].mask & ~by["Brain"].mask).any()
    assert not (by["Edema"].mask & by["Lesion 1"].mask).any()
    assert len({s.tracking_uid for s in res.segments}) == len(res.segments)
    fin = {f.tracking_id: f for f in res.findings}
    assert set(fin) == set(labels)
    for f in res.findings:
        seg = res.segments[f.segment_number - 1]
        assert seg.tracking_uid == f.tracking_uid and f.finding_type == seg.type
        if f.tracking_id == "Brain" and not f.measurements:  # this head is cut by the FOV
            assert [q.value for q in f.qualitative_evaluations] == [
                CODES.ANATOMY_COVERAGE_INCOMPLETE
            ]
            assert any("brain coverage partial" in n for n in res.notes), res.notes
            continue
        vol_m = f.measurements[0]
        assert vol_m.name.value == "118565006" and vol_m.unit.value == "mm3"
        assert vol_m.value == pytest.approx(seg.mask.sum() * vol.voxel_volume_mm3)
    long_axis = fin["Lesion 1"].measurements[1]
    assert long_axis.name.value == "103339001" and long_axis.unit.value == "mm"


def test_dice_on_heldout_phantoms(phantom_runs):
    sums = {k: [0, 0] for k in SYN_FLOOR}
    for ph, _, res in phantom_runs:
        m, ref = result_masks(res), reference_masks(ph)
        for k in SYN_FLOOR:
            sums[k][0] += 2 * int((m[k] & ref[k]).sum())
            sums[k][1] += int(m[k].sum()) + int(ref[k].sum())
    d = {k: a / b for k, (a, b) in sums.items()}
    for k, v in d.items():
        assert v >= SYN_FLOOR[k], (k, round(v, 3), d)


def test_lesion_measurements(phantom_runs):
    for _, vol, res in phantom_runs:
        les = next(s for s in res.segments if s.label == "Lesion 1")
        f = next(f for f in res.findings if f.tracking_id == "Lesion 1")
        # the long axis is measured in patient space on the segment's own mask
        assert f.measurements[1].value == pytest.approx(
            longest_diameter_mm(les.mask, vol.spacing, vol.direction), abs=0.01
        )
    # the large FLAIR lesion (55 mL, 54 mm long): measured 44 mL and 60 mm
    ph, vol, res = phantom_runs[0]
    ref = reference_masks(ph)["lesion"]
    f = next(f for f in res.findings if f.tracking_id == "Lesion 1")
    assert f.measurements[0].value == pytest.approx(ref.sum() * vol.voxel_volume_mm3, rel=0.3)
    ref_long = longest_diameter_mm(ref, vol.spacing, vol.direction)
    assert f.measurements[1].value == pytest.approx(ref_long, rel=0.2)


def test_tracking_uids_stable_across_runs(pipeline, phantom_runs):
    _, vol, res = phantom_runs[1]
    again = pipeline.run(vol)
    assert [s.tracking_uid for s in again.segments] == [s.tracking_uid for s in res.segments]


def test_not_applicable_geometry(pipeline, phantom_runs):
    _, vol, _ = phantom_runs[0]
    ct = copy.copy(vol)
    ct.modality = "CT"
    with pytest.raises(PipelineNotApplicable, match="modality"):
        pipeline.check(ct)
    thin = copy.copy(vol)
    thin.array = vol.array[:3]
    thin.frames = vol.frames[:3]
    with pytest.raises(PipelineNotApplicable, match="slice"):
        pipeline.run(thin)
    thick = copy.copy(vol)
    thick.spacing = np.array([10.0, *vol.spacing[1:]])
    with pytest.raises(PipelineNotApplicable, match="mm apart"):
        pipeline.check(thick)
    tiny = copy.copy(vol)
    tiny.array = vol.array[:, :32, :32]
    with pytest.raises(PipelineNotApplicable, match="matrix"):
        pipeline.check(tiny)


def _with_header(vol, **attrs):
    ds = Dataset()
    ds.SOPInstanceUID = vol.frames[0].sop_instance_uid
    for k, v in attrs.items():
        setattr(ds, k, v)
    out = copy.copy(vol)
    out.source_datasets = [ds]
    return out


@pytest.mark.parametrize(
    ("attrs", "reason"),
    [
        ({"ImageType": ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"]}, "diffusion"),
        ({"ImageType": ["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]}, "ADC"),
        ({"ImageType": ["ORIGINAL", "PRIMARY", "M", "ND", "TRACEW"]}, "trace"),
        ({"DiffusionBValue": 1000}, "DiffusionBValue 1000"),
        ({"SeriesDescription": "ep2d_diff_3scan_trace_p2"}, "diffusion"),
        ({"SeriesDescription": "Apparent Diffusion Coefficient (mm2/s)"}, "ADC"),
        ({"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}, "localizer"),
        ({"SeriesDescription": "AAHead_Scout_32ch-head-coil"}, "localizer"),
        ({"ImageType": ["ORIGINAL", "PRIMARY", "P", "ND"]}, "phase"),
        ({"ImageType": ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]}, "mosaic"),
        ({"BodyPartExamined": "KNEE"}, "not the head"),
    ],
)
def test_not_applicable_non_anatomical(pipeline, phantom_runs, attrs, reason):
    _, vol, _ = phantom_runs[0]
    with pytest.raises(PipelineNotApplicable, match=f"(?i){reason}"):
        pipeline.check(_with_header(vol, **attrs))


def test_anatomical_headers_accepted(pipeline, phantom_runs):
    _, vol, _ = phantom_runs[0]
    for attrs in (
        {"ImageType": ["ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D"], "BodyPartExamined": "HEAD"},
        {"ImageType": ["DERIVED", "SECONDARY", "MPR"], "BodyPartExamined": "BRAIN"},
        {"SeriesDescription": "t2_tse_tra FLAIR post contrast", "DiffusionBValue": 0},
    ):
        v = _with_header(vol, **attrs)
        assert non_anatomical_reasons(v) == []
        pipeline.check(v)


# -- real MR --------------------------------------------------------------------------


def test_real_adc_is_refused(pipeline, dicom_data):
    vol = pipeline.read_series(_files(dicom_data / ADC))  # a valid volume ...
    with pytest.raises(PipelineNotApplicable) as info:
        pipeline.check(vol)  # ... but not an anatomical brain image
    msg = str(info.value)
    assert "ADC" in msg and "Apparent Diffusion Coefficient" in msg
    assert "PROSTATE" in msg


def test_real_localizer_is_refused(pipeline, dicom_data):
    with pytest.raises(MixedOrientationError, match="orientation"):
        pipeline.read_series(_files(dicom_data / LOCALIZER))


def test_real_magnitude_stack_is_chosen(philips):
    vol, res = philips
    # the enhanced object holds 32 magnitude + 32 field-map frames at the same positions
    assert vol.shape == (32, 64, 64)
    (ds,) = vol.source_datasets
    per = ds.PerFrameFunctionalGroupsSequence
    for ref in vol.frames:
        ft = per[ref.frame_number - 1].MRImageFrameTypeSequence[0]
        assert ft.ComplexImageComponent == "MAGNITUDE" and "FIELD_MAP" not in ft.FrameType
    # The series is a real acquisition of a QA phantom (a water-filled cylinder with
    # inserts, BodyPartExamined BRAIN), not of a head: the demo model, which never saw
    # one, calls its interior "brain" -- which is why the pipeline refuses it.
    assert res.segments and res.segments[0].label == "Brain"


def test_real_qa_phantom_is_refused(pipeline, philips):
    vol, _ = philips
    with pytest.raises(PipelineNotApplicable, match="mr-brain-lesion: not a head: the cross-sec"):
        pipeline.run(vol)


def test_real_mr_seg_sr_valid_and_aligned(philips, tmp_path):
    from dicom_node.results import write_results

    vol, res = philips
    datasets = write_results(res, ("seg", "sr"))
    assert [d.Modality for d in datasets] == ["SEG", "SR"]
    for d in datasets:
        path = tmp_path / f"{d.Modality.lower()}.dcm"
        d.save_as(path, enforce_file_format=True)
        assert_valid(path)
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert seg.StudyInstanceUID == vol.study_instance_uid
    numbers = {s.SegmentLabel: int(s.SegmentNumber) for s in seg.SegmentSequence}
    brain = next(s for s in res.segments if s.label == "Brain")
    k_of = {(f.sop_instance_uid, f.frame_number): k for k, f in enumerate(vol.frames)}
    src = vol.source_datasets[0]
    n_checked = 0
    shared = seg.SharedFunctionalGroupsSequence[0]
    for idx, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ident = item if "SegmentIdentificationSequence" in item else shared
        if int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber) != numbers["Brain"]:
            continue
        key = frame_key_of(item)
        k = k_of[key]  # the SEG frame references a frame of the magnitude stack
        np.testing.assert_array_equal(seg.pixel_array[idx].astype(bool), brain.mask[k])
        src_pos = src.PerFrameFunctionalGroupsSequence[key[1] - 1].PlanePositionSequence[0]
        seg_pos = item.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(
            [float(v) for v in seg_pos], [float(v) for v in src_pos.ImagePositionPatient]
        )
        n_checked += 1
    assert n_checked == int(brain.mask.any(axis=(1, 2)).sum()) > 10
    sr = pydicom.dcmread(tmp_path / "sr.dcm")
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR


def test_cli_analyze(dicom_data, tmp_path):
    """``dicom-node analyze`` on the three real MR series of the shared data: a QA
    phantom, a prostate ADC map and a localizer -- none is a head: each is
    skipped with its reason and nothing is written."""
    out = tmp_path / "out"
    paths = [str(dicom_data / rel) for rel in (PHILIPS, ADC, LOCALIZER)]
    run = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "analyze", *paths, "--pipeline",
         MR_BRAIN_LESION, "--out", str(out), "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "COLUMNS": "400"},
    )  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr  # nothing analysed
    assert not list(out.glob("*.dcm")), run.stdout
    assert run.stdout.count("skipped") == 3, run.stdout
    assert "not a head: the cross-section is not a head's" in run.stdout, run.stdout
    assert "ADC" in run.stdout and "orientation" in run.stdout, run.stdout


def test_analyze_reasons(dicom_data, tmp_path):
    from dicom_node.work.analyze import analyze_paths

    report = analyze_paths(
        [dicom_data / ADC, dicom_data / LOCALIZER], MR_BRAIN_LESION, tmp_path, device="cpu"
    )
    reasons = sorted(s.reason for s in report.series)
    assert len(reasons) == 2 and not report.files
    assert any("ADC map" in r for r in reasons), reasons
    assert any("not one volume" in r and "orientation" in r for r in reasons), reasons


def test_volume_error_is_the_refusal_for_time_series(pipeline, dicom_data):
    # fMRI: 4 time points of the same 6 slices; no single magnitude stack to choose
    with pytest.raises(VolumeError, match="TemporalPositionIndex"):
        pipeline.read_series(_files(dicom_data / "dcm_qa_enh/Siemens_XA10_enhanced"))


# -- site weights: TorchScript and MONAI bundle -------------------------------------------


@pytest.fixture(scope="module")
def mr_torchscript(pipeline, tmp_path_factory):
    """The shipped UNet scripted (``site_brain.ts``), the shipped sidecar as ``site_brain.json``."""
    folder = tmp_path_factory.mktemp("mr_ts")
    return export_torchscript(
        pipeline.load().network, folder / "site_brain.ts", DEFAULT_WEIGHTS.with_suffix(".json")
    )


@pytest.mark.parametrize("kind", ["torchscript", "bundle"])
def test_site_weights_match_state_dict(phantom_runs, mr_torchscript, tmp_path, kind):
    """The shipped weights exported to TorchScript, as a file and as a MONAI bundle
    (``configs/metadata.json`` + ``models/model.ts``), give the state-dict run's
    segments (Dice > 0.99) and volumes (within 1 %)."""
    path = mr_torchscript
    if kind == "bundle":
        path = as_bundle(mr_torchscript, tmp_path / "brain_bundle")
    site = get_pipeline(MR_BRAIN_LESION, weights=path, weights_kind=kind, device="cpu")
    assert isinstance(site, MrBrainLesionPipeline)
    model = site.load()
    assert model.kind.value == kind and model.sha256 == runtime.file_sha256(mr_torchscript)
    _, vol, expected = phantom_runs[0]
    result = site.run(vol)
    assert result.algorithm.weights_sha256 == model.sha256
    assert result.algorithm.parameters == expected.algorithm.parameters
    assert [s.label for s in result.segments] == [s.label for s in expected.segments]
    assert {"Brain", "Lesion 1", "Edema"} <= {s.label for s in result.segments}
    for s, e in zip(result.segments, expected.segments, strict=True):
        assert dice(s.mask, e.mask) > 0.99, s.label
        assert s.tracking_uid == e.tracking_uid
    for f, e in zip(result.findings, expected.findings, strict=True):
        assert f.tracking_id == e.tracking_id
        assert len(f.measurements) == len(e.measurements)
        for m, em in zip(f.measurements, e.measurements, strict=True):
            assert m.value == pytest.approx(em.value, rel=0.01)


class _Reordered(torch.nn.Module):
    """A network whose output channels come in another order."""

    def __init__(self, net: torch.nn.Module, order: list[int]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("order", torch.tensor(order, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.index_select(self.net(x), 1, self.order)


def test_site_weights_other_channel_order(pipeline, phantom_runs, tmp_path):
    """A TorchScript model with channels background, edema, brain, lesion (its
    ``labels`` say so) gives the same segments as the shipped order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(_Reordered(pipeline.load().network, [0, 3, 1, 2]))
    path = tmp_path / "reordered.ts"
    scripted.save(str(path))
    meta = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    meta["labels"] = {"0": "background", "1": "edema", "2": "brain", "3": "lesion"}
    path.with_suffix(".json").write_text(json.dumps(meta))
    _, vol, expected = phantom_runs[0]
    result = MrBrainLesionPipeline(weights=path, weights_kind="torchscript", device="cpu").run(vol)
    assert [s.label for s in result.segments] == [s.label for s in expected.segments]
    for s, e in zip(result.segments, expected.segments, strict=True):
        assert dice(s.mask, e.mask) > 0.99, s.label


def test_site_weights_metadata_required(phantom_runs, mr_torchscript, tmp_path):
    """TorchScript metadata must give the working spacing and the label table."""
    meta = json.loads(mr_torchscript.with_suffix(".json").read_text())
    _, vol, _ = phantom_runs[0]
    for key in ("working_spacing_mm", "labels"):
        path = tmp_path / f"no_{key}.ts"
        shutil.copyfile(mr_torchscript, path)
        side = {k: v for k, v in meta.items() if k != key}
        path.with_suffix(".json").write_text(json.dumps(side))
        site = MrBrainLesionPipeline(weights=path, weights_kind="torchscript", device="cpu")
        with pytest.raises(ModelLoadError, match=f"no '{key}'"):
            site.run(vol)
    path = tmp_path / "bad_labels.ts"
    shutil.copyfile(mr_torchscript, path)
    bad = {**meta, "labels": {"0": "background", "1": "brain", "2": "tumour", "3": "edema"}}
    path.with_suffix(".json").write_text(json.dumps(bad))
    with pytest.raises(ModelLoadError, match="'labels' must map"):
        MrBrainLesionPipeline(weights=path, weights_kind="torchscript", device="cpu").load()


def test_class_channels_from_metadata():
    def table(*names):
        return {str(i): n for i, n in enumerate(names)}

    # the shipped table, another channel order, a bundle's channel_def, a list
    shipped = table("background", "brain", "lesion", "edema")
    assert class_channels({"labels": shipped}, "torchscript") == [0, 1, 2, 3]
    other = table("background", "Edema", "Brain", "lesion")
    assert class_channels({"labels": other}, "bundle") == [0, 2, 3, 1]
    channel_def = table("background", "lesion", "edema", "brain")
    nfd = {"outputs": {"pred": {"channel_def": channel_def}}}
    assert class_channels({"network_data_format": nfd}, "bundle") == [0, 3, 1, 2]
    assert class_channels({"labels": list(shipped.values())}, "torchscript") == [0, 1, 2, 3]
    # state-dict weights without a table keep the built-in order and spacing
    assert class_channels({}, "state_dict") == [0, 1, 2, 3]
    assert working_spacing({}, "state_dict") == 3.0
    assert working_spacing({"working_spacing_mm": 2}, "bundle") == 2.0
    twice = table("background", "brain", "brain", "edema")
    with pytest.raises(ModelLoadError, match="'labels' must map"):
        class_channels({"labels": twice}, "bundle")
    with pytest.raises(ModelLoadError, match="'working_spacing_mm'"):
        working_spacing({"working_spacing_mm": "fine"}, "torchscript")


def test_unknown_weights_kind_refused():
    with pytest.raises(ValueError, match="state_dict, torchscript, bundle; got 'onnx'"):
        MrBrainLesionPipeline(weights_kind="onnx")
    with pytest.raises(ValueError, match="weights_kind"):
        get_pipeline(MR_BRAIN_LESION, weights_kind="nifti", device="cpu")
