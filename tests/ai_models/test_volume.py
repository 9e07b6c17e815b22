"""Series -> volume -> masks back: geometry checked on real series.

Every expected value here is computed from the DICOM headers with the
Image Plane Module formula (PS3.3 C.7.6.2.1.1), independently of
:mod:`ai_models.volume`::

    P(row, col) = IPP + col * PixelSpacing[1] * row_dir + row * PixelSpacing[0] * col_dir
"""

from __future__ import annotations

import importlib.util
import pathlib
import random
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from ai_models.dicom_files import discover_series, is_dicom_file, scan_paths
from ai_models.errors import (
    DuplicateSlicesError,
    IrregularSpacingError,
    MissingSlicesError,
    MixedOrientationError,
    VolumeError,
)
from ai_models.types import Volume
from ai_models.volume import (
    load_series,
    load_volumes,
    mask_to_frames,
    mask_to_source_array,
    resample_to_volume,
    sitk_to_volume_array,
    volume_to_sitk,
)

PHILIPS_CT = "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm"
GE_TILTED = "dcm_qa_ct/GE_HiSpeedDual_head_tilted"
CT_3SLICE = "dcmqi/ct-3slice"
ADC = "dcmqi/qin-prostate-01-0001_adc"
LOCALIZER = "dcm_qa_table/GE_SIGNA_Premier_3plane_localizer"
TS_SERIES = "dcm_qa_ts/siemens_trio_ax_asc_35sl"
PHILIPS_ENH = "dcm_qa_enh/Philips_Achieva_enhanced/IM_0027_fMAP.dcm"
SIEMENS_ENH = "dcm_qa_enh/Siemens_XA10_enhanced"
ECT = "pydicom_data/enhanced/eCT_Supplemental.dcm"

HAVE_PYLIBJPEG = all(
    importlib.util.find_spec(m) is not None for m in ("pylibjpeg", "libjpeg", "openjpeg")
)


# --------------------------------------------------------------------------- helpers


def _files(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def _plane(ds: pydicom.Dataset, frame: int | None = None):
    """(IPP, row_dir, col_dir, PixelSpacing) of a single frame, from the header."""
    if frame is None:
        ipp, iop, ps = ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing
    else:
        pf = ds.PerFrameFunctionalGroupsSequence[frame - 1]
        sh = ds.SharedFunctionalGroupsSequence[0]

        def item(kw):
            return (pf.get(kw) or sh.get(kw))[0]

        ipp = item("PlanePositionSequence").ImagePositionPatient
        iop = item("PlaneOrientationSequence").ImageOrientationPatient
        ps = item("PixelMeasuresSequence").PixelSpacing
    iop = np.array(iop, dtype=float)
    return np.array(ipp, dtype=float), iop[:3], iop[3:], np.array(ps, dtype=float)


def _patient_point(ds: pydicom.Dataset, row: int, col: int, frame: int | None = None):
    """PS3.3 C.7.6.2.1.1: centre of pixel (row, col) in LPS mm."""
    ipp, r, c, ps = _plane(ds, frame)
    return ipp + col * ps[1] * r + row * ps[0] * c


def _assert_roundtrip(volume: Volume, picks) -> None:
    """Mark the voxel at a patient point; it must land on its source frame.

    ``picks`` holds ``(dataset, frame_number_or_None, row, col)``.
    """
    for ds, frame, row, col in picks:
        xyz = _patient_point(ds, row, col, frame)
        kij = volume.lps_to_index(xyz)
        idx = np.round(kij).astype(int)
        # The point must be exactly on a voxel centre, not just near one.
        np.testing.assert_allclose(kij, idx, atol=2e-3)
        mask = np.zeros(volume.shape, dtype=bool)
        mask[tuple(idx)] = True
        hits = [fm for fm in mask_to_frames(volume, mask) if fm.mask.any()]
        assert len(hits) == 1
        assert hits[0].frame.sop_instance_uid == ds.SOPInstanceUID
        assert hits[0].frame.frame_number == frame
        assert hits[0].mask.shape == (ds.Rows, ds.Columns)
        assert [tuple(p) for p in np.argwhere(hits[0].mask)] == [(row, col)]


def _picks(datasets, rng: random.Random, n: int = 4, frames=None):
    out = []
    for _ in range(n):
        ds = rng.choice(datasets)
        frame = rng.choice(frames) if frames else None
        out.append((ds, frame, rng.randrange(ds.Rows), rng.randrange(ds.Columns)))
    # corners too: an off-by-one or flip shows there first
    ds = datasets[0]
    frame = frames[0] if frames else None
    out += [
        (ds, frame, 0, 0),
        (ds, frame, ds.Rows - 1, ds.Columns - 1),
        (ds, frame, 0, ds.Columns - 1),
    ]
    return out


def _headers(folder: pathlib.Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in _files(folder)]


def _copy_series(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    dst.mkdir(parents=True, exist_ok=True)
    for p in _files(src):
        shutil.copy(p, dst / p.name)
    return dst


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    ax, ay, az = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@pytest.fixture()
def oblique_ct(dicom_data: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    """The Philips head phantom rotated rigidly into a double-oblique plane.

    IOP and every IPP are rotated by the same rotation about the stack centre,
    so the copy is a consistent, truly oblique series (about 25 and 20 deg).
    """
    src = _files(dicom_data / PHILIPS_CT)
    rot = _rotation(25.0, -20.0, 10.0)
    centre = np.array([0.0, 110.0, 760.0])
    out = tmp_path / "oblique"
    out.mkdir()
    series = generate_uid()
    for p in src:
        ds = pydicom.dcmread(p)
        iop = np.array(ds.ImageOrientationPatient, dtype=float)
        ipp = np.array(ds.ImagePositionPatient, dtype=float)
        new_iop = np.concatenate([rot @ iop[:3], rot @ iop[3:]])
        ds.ImageOrientationPatient = [f"{v:.10f}" for v in new_iop]
        ds.ImagePositionPatient = [f"{v:.8f}" for v in rot @ (ipp - centre) + centre]
        ds.SeriesInstanceUID = series
        ds.save_as(out / p.name)
    return out


# --------------------------------------------------------------------------- discovery


def test_discovery_by_content_not_name(dicom_data: pathlib.Path) -> None:
    series = discover_series(dicom_data / "dcm_qa_ct")
    assert len(series) == 2  # Philips phantom + GE head; DIRFILE is not an image
    sizes = sorted(len(v) for v in series.values())
    assert sizes == [28, 28]
    names = {f.path.name for files in series.values() for f in files}
    assert "I10" in names and "DIRFILE" not in names  # no suffix, found by content

    images, skipped = scan_paths([dicom_data / "dcm_qa_ct"])
    reasons = {s.path.name: s.reason for s in skipped}
    assert "DICOMDIR" in reasons["DIRFILE"]
    assert is_dicom_file(dicom_data / PHILIPS_CT / "I10")
    assert not is_dicom_file(dicom_data / "README.md")
    # discovery records feed load_series directly
    philips = next(v for v in series.values() if v[0].path.parent.name.startswith("Philips"))
    assert load_series(philips).shape == (28, 512, 512)


def test_discovery_skips_non_images(dicom_data: pathlib.Path) -> None:
    images, skipped = scan_paths([dicom_data])
    image_classes = {f.sop_class_uid for f in images}
    assert "1.2.840.10008.5.1.4.1.1.66.4" not in image_classes  # SEG
    assert not any(uid.startswith("1.2.840.10008.5.1.4.1.1.88.") for uid in image_classes)  # SR
    by_name = {s.path.name: s.reason for s in skipped}
    assert "Segmentation" in by_name["liver.dcm"]
    assert "Structured Report" in by_name["sr_document.dcm"]
    # RTSTRUCT without preamble/meta is recognised as DICOM, then skipped as non-image
    assert "RT Structure Set" in by_name["rtstruct.dcm"]
    assert "Pixel Data" in by_name["emri_small_jpeg_2k_lossless_too_short.dcm"]
    assert "README.md" in by_name and "manifest.csv" in by_name
    # the 9 transfer syntaxes share one SeriesInstanceUID
    ts = [f for f in images if f.path.parent.name == "siemens_trio_ax_asc_35sl"]
    assert len(ts) == 9 and len({f.series_instance_uid for f in ts}) == 1


def test_discovery_without_preamble(dicom_data: pathlib.Path, tmp_path: pathlib.Path) -> None:
    raw = (dicom_data / PHILIPS_CT / "I10").read_bytes()
    assert raw[128:132] == b"DICM"
    (tmp_path / "nopreamble").write_bytes(raw[132:])  # file meta, no preamble
    assert not is_dicom_file(tmp_path / "nopreamble")
    series = discover_series(tmp_path)
    assert [len(v) for v in series.values()] == [1]
    vol = load_series(tmp_path)
    assert vol.shape == (1, 512, 512)


# --------------------------------------------------------------------------- geometry


def test_philips_head_phantom(dicom_data: pathlib.Path) -> None:
    folder = dicom_data / PHILIPS_CT
    vol = load_series(folder)
    headers = _headers(folder)
    by_z = sorted(headers, key=lambda d: float(d.ImagePositionPatient[2]))
    assert vol.shape == (28, 512, 512)
    assert vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.spacing, [5.0, 0.451171875, 0.451171875], atol=1e-6)
    np.testing.assert_allclose(vol.origin, np.array(by_z[0].ImagePositionPatient, float))
    np.testing.assert_allclose(vol.direction, [[0, 0, 1], [0, 1, 0], [1, 0, 0]], atol=1e-9)
    assert [f.sop_instance_uid for f in vol.frames] == [d.SOPInstanceUID for d in by_z]
    assert all(f.frame_number is None for f in vol.frames)
    assert [d.SOPInstanceUID for d in vol.source_datasets] == [d.SOPInstanceUID for d in by_z]
    assert all("PixelData" not in d for d in vol.source_datasets)
    assert vol.modality == "CT" and vol.series_instance_uid == by_z[0].SeriesInstanceUID
    assert vol.frame_of_reference_uid == by_z[0].FrameOfReferenceUID
    # Hounsfield units: stored * slope + intercept, slice by slice
    for k in (0, 13, 27):
        ds = pydicom.dcmread(folder / _name_of(folder, vol.frames[k].sop_instance_uid))
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(vol.array[k], hu.astype(np.float32))
    assert vol.array.min() == -1024.0  # air outside the phantom


def _name_of(folder: pathlib.Path, sop_uid: str) -> str:
    for p in _files(folder):
        if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == sop_uid:
            return p.name
    raise KeyError(sop_uid)


def test_ct_3slice_sorted_along_normal(dicom_data: pathlib.Path) -> None:
    vol = load_series(dicom_data / CT_3SLICE)
    headers = {d.SOPInstanceUID: d for d in _headers(dicom_data / CT_3SLICE)}
    z = [float(headers[f.sop_instance_uid].ImagePositionPatient[2]) for f in vol.frames]
    assert z == sorted(z)  # normal is +z (axial, row x col = +z)
    assert [headers[f.sop_instance_uid].InstanceNumber for f in vol.frames] == [3, 2, 1]
    np.testing.assert_allclose(vol.spacing[0], 1.0, atol=1e-4)
    assert vol.array.min() < -1000  # HU applied (intercept -1024)


def test_adc_mr_oblique_geometry(dicom_data: pathlib.Path) -> None:
    vol = load_series(dicom_data / ADC)
    assert vol.shape == (20, 256, 256)
    hdr = _headers(dicom_data / ADC)[0]
    iop = np.array(hdr.ImageOrientationPatient, float)
    r, c = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    n = np.cross(r, c)
    np.testing.assert_allclose(vol.direction[:, 1], c, atol=1e-9)
    np.testing.assert_allclose(vol.direction[:, 2], r, atol=1e-9)
    np.testing.assert_allclose(vol.direction[:, 0], n / np.linalg.norm(n), atol=1e-9)
    np.testing.assert_allclose(vol.spacing, [3.0, 0.7031, 0.7031], atol=1e-3)
    assert abs(vol.direction[2, 1]) > 0.15  # really oblique (about 10 deg)
    instance_numbers = [
        {d.SOPInstanceUID: d.InstanceNumber for d in _headers(dicom_data / ADC)}[f.sop_instance_uid]
        for f in vol.frames
    ]
    assert instance_numbers == list(range(1, 21))  # file order differs; geometry sorts


def test_shuffled_input_gives_same_volume(dicom_data: pathlib.Path) -> None:
    files = _files(dicom_data / ADC)
    ref = load_series(files)
    shuffled = files[:]
    random.Random(7).shuffle(shuffled)
    assert shuffled != files
    vol = load_series(shuffled)
    np.testing.assert_array_equal(vol.array, ref.array)
    np.testing.assert_array_equal(vol.origin, ref.origin)
    np.testing.assert_array_equal(vol.direction, ref.direction)
    np.testing.assert_array_equal(vol.spacing, ref.spacing)
    assert vol.frames == ref.frames


def test_datasets_as_sources_are_not_modified(dicom_data: pathlib.Path) -> None:
    datasets = [pydicom.dcmread(p) for p in _files(dicom_data / CT_3SLICE)]
    vol = load_series(datasets)
    assert all("PixelData" in d for d in datasets)
    assert vol.shape == (3, 512, 512)
    kept = load_series(_files(dicom_data / CT_3SLICE), keep_pixel_data=True)
    assert all("PixelData" in d for d in kept.source_datasets)


def test_enhanced_philips_two_stacks(dicom_data: pathlib.Path) -> None:
    path = dicom_data / PHILIPS_ENH
    with pytest.raises(DuplicateSlicesError, match="FIELD_MAP"):
        load_series(path)
    vols = load_volumes(path)
    assert len(vols) == 2
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array
    for vol in vols.values():
        assert vol.shape == (32, 64, 64)
        np.testing.assert_allclose(vol.spacing, [4.0, 4.0, 4.0], atol=1e-3)
        assert len(vol.source_datasets) == 1
        for k in (0, 17, 31):
            f = vol.frames[k].frame_number
            pvt = ds.PerFrameFunctionalGroupsSequence[f - 1].PixelValueTransformationSequence[0]
            expect = stored[f - 1] * float(pvt.RescaleSlope) + float(pvt.RescaleIntercept)
            np.testing.assert_allclose(vol.array[k], expect, rtol=1e-6, atol=1e-4)
            ipp, *_ = _plane(ds, f)
            np.testing.assert_allclose(vol.index_to_lps([k, 0, 0]), ipp, atol=2e-3)
    fmap = next(v for k, v in vols.items() if "FIELD_MAP" in k)
    assert fmap.array.min() < 0  # per-frame intercept -500 applied


def test_enhanced_siemens_time_points(dicom_data: pathlib.Path) -> None:
    folder = dicom_data / SIEMENS_ENH
    with pytest.raises(DuplicateSlicesError, match="TemporalPositionIndex"):
        load_series(folder)
    vols = load_volumes(folder)
    assert len(vols) == 4
    for vol in vols.values():
        assert vol.shape == (6, 64, 64)
        np.testing.assert_allclose(vol.spacing, [2.4, 3.375, 3.375], atol=1e-3)
        assert len({f.sop_instance_uid for f in vol.frames}) == 1
        assert [f.frame_number for f in vol.frames] == [1, 2, 3, 4, 5, 6]


def test_enhanced_ct_reversed_frames(dicom_data: pathlib.Path) -> None:
    """eCT: normal is -z, so frame 2 (z=-149) is slice 0; masks go back in frame order."""
    path = dicom_data / ECT
    vol = load_series(path)
    assert vol.shape == (2, 512, 512)
    assert [f.frame_number for f in vol.frames] == [2, 1]
    np.testing.assert_allclose(vol.direction[:, 0], [0, 0, -1], atol=1e-9)
    np.testing.assert_allclose(vol.spacing[0], 10.0)
    mask = np.zeros(vol.shape, dtype=bool)
    mask[0, 5, 6] = True  # slice 0 = frame 2
    per_frame = mask_to_frames(vol, mask)
    assert [fm.frame.frame_number for fm in per_frame] == [1, 2]
    assert not per_frame[0].mask.any() and per_frame[1].mask[5, 6]
    stack = mask_to_source_array(vol, mask)
    assert stack.shape == (2, 512, 512) and stack[1, 5, 6] and stack.sum() == 1
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    _assert_roundtrip(vol, _picks([ds], random.Random(3), frames=[1, 2]))


def test_transfer_syntaxes_decode_identically(dicom_data: pathlib.Path) -> None:
    files = sorted((dicom_data / TS_SERIES).glob("*.dcm"), key=lambda p: int(p.stem))
    assert len(files) == 9
    if not HAVE_PYLIBJPEG:
        pytest.skip("pylibjpeg decoders not installed (files 5-9 are JPEG / JPEG-LS / J2K)")
    ref = load_series(files[0])
    assert ref.shape == (1, 384, 384)
    for f in files[1:]:
        vol = load_series(f)
        np.testing.assert_array_equal(vol.array, ref.array, err_msg=f.name)
        np.testing.assert_array_equal(vol.origin, ref.origin)
    # one series UID, one position, nine series numbers: nine one-slice stacks
    assert len(load_volumes(files)) == 9
    with pytest.raises(DuplicateSlicesError):
        load_series(files)


# --------------------------------------------------------------------------- refusals


def test_localizer_is_not_one_volume(dicom_data: pathlib.Path) -> None:
    with pytest.raises(MixedOrientationError, match="3 different orientations"):
        load_series(dicom_data / LOCALIZER)
    vols = load_volumes(dicom_data / LOCALIZER)
    assert sorted(v.shape for v in vols.values()) == [(7, 256, 256)] * 3
    for vol in vols.values():
        np.testing.assert_allclose(vol.spacing[0], 15.0, atol=1e-3)


def test_gantry_tilt_refused(dicom_data: pathlib.Path) -> None:
    with pytest.raises(IrregularSpacingError) as err:
        load_series(dicom_data / GE_TILTED)
    msg = str(err.value)
    assert "18.5 degrees" in msg and "sheared" in msg and "refused" in msg
    assert "InstanceNumber 1)" in msg and "InstanceNumber 28)" in msg


def test_missing_slice_detected(dicom_data: pathlib.Path, tmp_path: pathlib.Path) -> None:
    folder = _copy_series(dicom_data / PHILIPS_CT, tmp_path / "s")
    (folder / "I140").unlink()  # InstanceNumber 14, mid-series
    with pytest.raises(MissingSlicesError, match=r"1 slice\(s\) missing") as err:
        load_series(folder)
    assert "InstanceNumber 13" in str(err.value) and "InstanceNumber 15" in str(err.value)
    (folder / "I150").unlink()
    with pytest.raises(MissingSlicesError, match=r"2 slice\(s\) missing"):
        load_series(folder)


def test_uneven_spacing_refused(dicom_data: pathlib.Path, tmp_path: pathlib.Path) -> None:
    folder = _copy_series(dicom_data / PHILIPS_CT, tmp_path / "s")
    ds = pydicom.dcmread(folder / "I140")
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 2.0
    ds.save_as(folder / "I140")
    with pytest.raises(IrregularSpacingError, match="uneven slice spacing"):
        load_series(folder)


def test_small_jitter_is_tolerated(dicom_data: pathlib.Path, tmp_path: pathlib.Path) -> None:
    folder = _copy_series(dicom_data / PHILIPS_CT, tmp_path / "s")
    ds = pydicom.dcmread(folder / "I140")
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 0.01
    ds.save_as(folder / "I140")
    assert load_series(folder).shape == (28, 512, 512)
    with pytest.raises(IrregularSpacingError):
        load_series(folder, tolerance=0.001)


def test_duplicate_position_detected(dicom_data: pathlib.Path, tmp_path: pathlib.Path) -> None:
    folder = _copy_series(dicom_data / PHILIPS_CT, tmp_path / "s")
    ds = pydicom.dcmread(folder / "I140")
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(folder / "I140_copy")
    with pytest.raises(DuplicateSlicesError, match="same position"):
        load_series(folder)


def test_same_instance_twice_is_kept_once(dicom_data: pathlib.Path) -> None:
    files = _files(dicom_data / CT_3SLICE)
    assert load_series(files + files[:1]).shape == (3, 512, 512)


def test_other_refusals(dicom_data: pathlib.Path) -> None:
    with pytest.raises(VolumeError, match="different series"):
        load_series(_files(dicom_data / CT_3SLICE) + _files(dicom_data / ADC))
    with pytest.raises(VolumeError, match="not a DICOM image"):
        load_series(dicom_data / "dcm_qa_ct/Philips_series_DIRFILE/DIRFILE")
    with pytest.raises(VolumeError, match="no Pixel Data"):
        load_series(dicom_data / "pydicom/other_modalities/waveform_ecg.dcm")
    with pytest.raises(VolumeError, match="samples per pixel"):
        load_series(dicom_data / "pydicom/transfer_syntaxes/SC_rgb_jpeg_gdcm.dcm")
    with pytest.raises(VolumeError, match="cannot be decoded"):
        load_series(dicom_data / "pydicom/bad/MR_truncated.dcm")
    with pytest.raises(VolumeError, match="no DICOM image"):
        load_series([])


# --------------------------------------------------------------------------- single images


def test_single_ct_slice(dicom_data: pathlib.Path) -> None:
    f = _files(dicom_data / CT_3SLICE)[0]
    vol = load_series(f)
    ds = pydicom.dcmread(f, stop_before_pixels=True)
    assert vol.shape == (1, 512, 512)
    np.testing.assert_allclose(vol.spacing[0], float(ds.SliceThickness))
    np.testing.assert_allclose(vol.origin, np.array(ds.ImagePositionPatient, float))
    _assert_roundtrip(vol, [(ds, None, 100, 200)])


@pytest.mark.parametrize(
    ("path", "spacing"),
    [
        ("nema_wg04/RG1_chest_CR/RG1_UNCR.dcm", (1.0, 1.0)),  # PixelSpacing is 0\0
        ("highdicom/dx/dx_image.dcm", None),  # ImagerPixelSpacing
    ],
)
def test_projection_radiograph(dicom_data: pathlib.Path, path: str, spacing) -> None:
    ds = pydicom.dcmread(dicom_data / path, stop_before_pixels=True)
    vol = load_series(dicom_data / path)
    assert vol.shape == (1, ds.Rows, ds.Columns)
    assert "ImageOrientationPatient" not in ds
    np.testing.assert_array_equal(vol.direction, [[0, 0, 1], [0, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(vol.origin, [0, 0, 0])
    expect = spacing or tuple(float(v) for v in ds.ImagerPixelSpacing)
    np.testing.assert_allclose(vol.spacing, (1.0,) + tuple(expect))
    mask = np.zeros(vol.shape, dtype=bool)
    mask[0, 3, 4] = True
    (fm,) = mask_to_frames(vol, mask)
    assert fm.frame.sop_instance_uid == ds.SOPInstanceUID and fm.mask[3, 4]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("series", [PHILIPS_CT, CT_3SLICE, ADC])
def test_roundtrip_real_series(dicom_data: pathlib.Path, series: str) -> None:
    vol = load_series(dicom_data / series)
    _assert_roundtrip(vol, _picks(_headers(dicom_data / series), random.Random(series)))


def test_roundtrip_localizer_planes(dicom_data: pathlib.Path) -> None:
    """Coronal and sagittal stacks of the localizer (non-axial IOP)."""
    headers = _headers(dicom_data / LOCALIZER)
    for vol in load_volumes(dicom_data / LOCALIZER).values():
        uids = {f.sop_instance_uid for f in vol.frames}
        mine = [d for d in headers if d.SOPInstanceUID in uids]
        _assert_roundtrip(vol, _picks(mine, random.Random(len(uids))))


def test_roundtrip_enhanced(dicom_data: pathlib.Path) -> None:
    ds = pydicom.dcmread(dicom_data / PHILIPS_ENH, stop_before_pixels=True)
    for vol in load_volumes(dicom_data / PHILIPS_ENH).values():
        frames = [f.frame_number for f in vol.frames]
        _assert_roundtrip(vol, _picks([ds], random.Random(5), frames=frames))
        # the full-object mask has every frame of the source, in frame order
        mask = np.zeros(vol.shape, dtype=bool)
        mask[3, 10, 20] = True
        stack = mask_to_source_array(vol, mask)
        assert stack.shape == (64, 64, 64)
        assert [tuple(p) for p in np.argwhere(stack)] == [(vol.frames[3].frame_number - 1, 10, 20)]


def test_roundtrip_double_oblique_copy(oblique_ct: pathlib.Path) -> None:
    vol = load_series(oblique_ct)
    assert vol.shape == (28, 512, 512)
    assert np.all(np.abs(vol.direction) < 0.99)  # no axis aligned with L, P or S
    np.testing.assert_allclose(vol.spacing[0], 5.0, atol=1e-4)
    _assert_roundtrip(vol, _picks(_headers(oblique_ct), random.Random(11), n=8))


def test_mask_checks(dicom_data: pathlib.Path) -> None:
    vol = load_series(dicom_data / CT_3SLICE)
    with pytest.raises(ValueError, match="shape"):
        mask_to_frames(vol, np.zeros((2, 512, 512), dtype=bool))
    with pytest.raises(TypeError, match="boolean"):
        mask_to_frames(vol, np.zeros(vol.shape, dtype=np.uint8))


def test_highdicom_seg_from_pixel_less_headers(dicom_data: pathlib.Path) -> None:
    """highdicom builds a SEG from the kept headers (no Pixel Data) and our mask order."""
    hd = pytest.importorskip("highdicom")
    from pydicom.sr.codedict import codes

    vol = load_series(dicom_data / CT_3SLICE)
    headers = {d.SOPInstanceUID: d for d in _headers(dicom_data / CT_3SLICE)}
    ds = headers[vol.frames[2].sop_instance_uid]
    mask = np.zeros(vol.shape, dtype=bool)
    mask[2, 40:44, 50:52] = True
    desc = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="box",
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=vol.source_datasets,
        pixel_array=mask_to_source_array(vol, mask),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc],
        series_instance_uid=generate_uid(),
        series_number=100,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="dicom-node",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )
    assert seg.NumberOfFrames == 1
    ref = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert ref.SourceImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    pos = seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient
    np.testing.assert_allclose(np.array(pos, float), np.array(ds.ImagePositionPatient, float))
    np.testing.assert_array_equal(seg.pixel_array.reshape(mask[2].shape) > 0, mask[2])


# --------------------------------------------------------------------------- SimpleITK


def test_sitk_geometry_matches(dicom_data: pathlib.Path) -> None:
    vol = load_series(dicom_data / ADC)
    img = volume_to_sitk(vol)
    for kij in [(0, 0, 0), (19, 255, 255), (7, 30, 200)]:
        k, i, j = kij
        itk = np.array(img.TransformIndexToPhysicalPoint((j, i, k)))
        np.testing.assert_allclose(itk, vol.index_to_lps(kij), atol=1e-6)
    np.testing.assert_array_equal(sitk_to_volume_array(img, vol), vol.array)
    mask = vol.array > np.percentile(vol.array, 90)
    back = resample_to_volume(volume_to_sitk(vol, mask), vol)
    np.testing.assert_array_equal(back.astype(bool), mask)


def test_sitk_coarse_mask_back_to_grid(dicom_data: pathlib.Path) -> None:
    import SimpleITK as sitk

    vol = load_series(dicom_data / PHILIPS_CT)
    img = volume_to_sitk(vol)
    coarse = sitk.Resample(
        img,
        [s // 2 for s in img.GetSize()],
        sitk.Transform(),
        sitk.sitkLinear,
        img.GetOrigin(),
        [2 * s for s in img.GetSpacing()],
        img.GetDirection(),
    )
    coarse_mask = sitk.BinaryThreshold(coarse, -200.0, 3000.0, 1, 0)
    back = resample_to_volume(coarse_mask, vol).astype(bool)
    assert back.shape == vol.shape
    full = vol.array > -200
    agree = (back == full).mean()
    assert agree > 0.93
    with pytest.raises(ValueError, match="not on the volume grid"):
        sitk_to_volume_array(coarse_mask, vol)
