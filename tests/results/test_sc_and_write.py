"""SC overlay writer, write_results / save_datasets, and common helpers."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest

from ai_models.types import CodedConcept, PipelineResult, Segment, Volume
from dicom_node.results import (
    OutputUIDs,
    parse_outputs,
    save_datasets,
    write_results,
    write_sc,
)
from dicom_node.results.common import series_description, to_code
from dicom_node.results.sc import frame_key
from tests.results.helpers import ANATOMY, LUNG, algorithm, assert_valid, make_result


@pytest.mark.parametrize("name", ["ct", "mr", "enh_ct"])
def test_sc_overlay(name: str, dicom_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.results.conftest import load

    volume = load(dicom_data, name)
    result = make_result(volume)
    images = write_sc(result)
    with_mask = {
        int(k) for s in result.segments for k in np.flatnonzero(s.mask.any(axis=(1, 2)))
    }
    assert len(images) == len(with_mask)  # default: only slices with a segment
    src = volume.source_datasets[0]
    paths = save_datasets(images, tmp_path)
    for path in paths[:3]:
        assert_valid(path)
    ks = sorted(with_mask)
    for t, (path, k) in enumerate(zip(paths, ks, strict=True)):
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert ds.StudyInstanceUID == src.StudyInstanceUID
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID
        assert ds.BurnedInAnnotation == "YES"
        assert "NOT FOR DIAGNOSTIC USE" in ds.ImageComments
        assert "not for diagnosis" in ds.SeriesDescription
        assert ds.PhotometricInterpretation == "RGB"
        assert ds.InstanceNumber == t + 1
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx(
            [float(volume.spacing[1]), float(volume.spacing[2])]
        )
        ref = ds.SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == volume.frames[k].sop_instance_uid
        # The outline of segment 1 is burned in with its colour (255, 0, 0).
        rgb = ds.pixel_array
        seg1 = result.segments[0].mask[k]
        if seg1.sum() > 20:
            red = np.all(rgb == (255, 0, 0), axis=-1)
            assert red.any()
            # Red pixels lie on or inside segment 1 (except the legend box).
            legend = np.zeros_like(red)
            legend[:40, :200] = True
            assert not (red & ~seg1 & ~legend).any()


def test_sc_of_a_monochrome1_radiograph_is_shown_as_presented(dicom_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The chest CR is MONOCHROME1 with a window: the overlay shows it the way a
    viewer does (air dark), not its raw values (air bright)."""
    from ai_models.radiograph import load_radiograph, presentation_image

    volume = load_radiograph(dicom_data / "nema_wg04/RG1_chest_CR")
    assert volume.source_datasets[0].PhotometricInterpretation == "MONOCHROME1"
    _, rows, cols = volume.shape
    mask = np.zeros(volume.shape, dtype=bool)
    mask[0, rows // 3 : rows // 2, cols // 3 : cols // 2] = True
    result = PipelineResult(
        "test-cr",
        volume,
        algorithm(),
        segments=[
            Segment(1, "Box", ANATOMY, LUNG, mask, "Box", hd.UID(), color_rgb=(255, 0, 0))
        ],
    )
    (image,) = write_sc(result)
    (path,) = save_datasets([image], tmp_path)
    ds = pydicom.dcmread(path)
    assert "as presented" in ds.DerivationDescription
    grey = ds.pixel_array[..., 1].astype(float)
    expected = np.rint(presentation_image(volume.source_datasets[0], volume.array[0]) * 255)
    away = np.ones((rows, cols), dtype=bool)
    away[:60, :] = False  # the banner
    away[rows // 3 - 5 : rows // 2 + 5, cols // 3 - 5 : cols // 2 + 5] = False  # the outline
    np.testing.assert_array_equal(grey[away], expected[away])
    # Raw MONOCHROME1 values would put bright air in the corners; presented, it is dark.
    assert grey[rows - 50 :, :50].mean() < 128 or grey[rows - 50 :, cols - 50 :].mean() < 128


def test_sc_all_slices_fixed_uids(ct_volume: Volume) -> None:
    result = make_result(ct_volume)
    key = frame_key(ct_volume.frames[0])
    images = write_sc(
        result, slices="all", series_instance_uid="1.2.3.7", series_number=12,
        instance_number=100, sop_instance_uids={key: "1.2.3.8"},
    )
    assert len(images) == ct_volume.shape[0]
    assert images[0].SOPInstanceUID == "1.2.3.8"
    assert {im.SeriesInstanceUID for im in images} == {"1.2.3.7"}
    assert [im.InstanceNumber for im in images[:2]] == [100, 101]
    with pytest.raises(ValueError, match="slices"):
        write_sc(result, slices="some")


def test_write_results_and_save(ct_volume: Volume, tmp_path) -> None:
    result = make_result(ct_volume)
    uids = {
        "seg": OutputUIDs(series_instance_uid="1.2.3.1", sop_instance_uid="1.2.3.2",
                          series_number=301),
        "sr": OutputUIDs(sop_instance_uid="1.2.3.3"),
    }
    datasets = write_results(result, {"sr", "seg", "sc"}, uids=uids)
    kinds = [d.Modality for d in datasets]
    assert kinds[:2] == ["SEG", "SR"] and set(kinds[2:]) == {"OT"}
    seg, sr = datasets[0], datasets[1]
    assert (seg.SOPInstanceUID, seg.SeriesInstanceUID, seg.SeriesNumber) == (
        "1.2.3.2", "1.2.3.1", 301
    )
    assert sr.SOPInstanceUID == "1.2.3.3"
    series = {d.SeriesInstanceUID for d in datasets}
    assert len(series) == 3  # a new series per kind
    assert {d.StudyInstanceUID for d in datasets} == {ct_volume.study_instance_uid}
    paths = save_datasets(datasets, tmp_path / "out")
    assert paths[0].name == "seg_1.2.3.2.dcm" and paths[1].name == "sr_1.2.3.3.dcm"
    assert all(p.name.startswith("sc_") for p in paths[2:])
    assert not list((tmp_path / "out").glob("*.part"))
    back = hd.sr.srread(paths[1])
    assert back.SOPInstanceUID == "1.2.3.3"


def test_write_results_skips_what_is_empty(ct_volume: Volume) -> None:
    result = make_result(ct_volume)
    for s in result.segments:
        s.mask = np.zeros_like(s.mask)
    datasets = write_results(result, "seg,sr,sc")
    # No SEG (all empty), no SC; the SR still reports (TID 1501 groups).
    assert [d.Modality for d in datasets] == ["SR"]
    # Nothing at all: the negative report alone, unless turned off.
    empty = PipelineResult("p", ct_volume, algorithm())
    assert [d.SeriesDescription for d in write_results(empty, ("seg", "sr"))] == [
        "p 0.1 SR no findings (AI, not for diagnosis)"
    ]
    assert write_results(empty, ("seg", "sr"), negative_report=False) == []


def test_parse_outputs_and_uids() -> None:
    assert parse_outputs("sr, seg") == ("seg", "sr")
    assert parse_outputs(["SC"]) == ("sc",)
    with pytest.raises(ValueError, match="Unknown output"):
        parse_outputs("seg,pdf")
    with pytest.raises(ValueError, match="not a valid UID"):
        OutputUIDs(sop_instance_uid="1.02.3")
    with pytest.raises(TypeError):
        OutputUIDs(series_number="5")  # type: ignore[arg-type]


def test_series_description_and_codes() -> None:
    text = series_description("ct-lungs", algorithm(), "SEG")
    assert text == "ct-lungs 0.1 SEG (AI, not for diagnosis)"
    long = series_description("x" * 80, algorithm(), "SEG")
    assert len(long) <= 64 and long.endswith("SEG (AI, not for diagnosis)")
    code = to_code(CodedConcept("39607008", "SCT", "Lung"))
    assert (code.value, code.scheme_designator, code.meaning) == ("39607008", "SCT", "Lung")
    with pytest.raises(TypeError):
        to_code("lung")  # type: ignore[arg-type]


def test_sources_missing_type2_attributes(dicom_data, tmp_path) -> None:
    """Real scanners omit Type 2 patient/study attributes; results are still written."""
    import dataclasses

    from ai_models.volume import load_series
    from dicom_node.results import write_results
    from tests.results.helpers import make_result

    vol = load_series(dicom_data / "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm")
    for ds in vol.source_datasets:
        for kw in ("PatientBirthDate", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
            if kw in ds:
                delattr(ds, kw)
    result = make_result(vol)
    before = [kw in vol.source_datasets[0] for kw in ("PatientBirthDate", "StudyID")]
    out = write_results(result, "seg,sr")
    assert [ds.Modality for ds in out][:2] == ["SEG", "SR"]
    assert out[0].PatientBirthDate == "" and out[0].StudyID == ""
    # the caller's datasets are untouched
    assert [kw in vol.source_datasets[0] for kw in ("PatientBirthDate", "StudyID")] == before
    assert dataclasses.is_dataclass(result)
