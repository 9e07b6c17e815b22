"""Readers never throw: odd series end in a Volume or in a refusal with a reason.

Every path from DICOM files to a volume must end in a result, a
:class:`~ai_models.errors.VolumeError` (or a subclass) or
:class:`~ai_models.errors.PipelineNotApplicable` with a message -- never a
numpy shape error, a ``TypeError`` on a missing attribute and the like.  The
series here are small (8x8 or 16x16 CT/MR slices) and built with pydicom from
a regular stack plus a random subset of defects: repeated positions, one file
per slice position, zero/degenerate/non-orthogonal/NaN orientation vectors,
missing or zero spacing, mixed sizes and bit depths, missing positions,
duplicated SOP Instance UIDs, odd functional groups.
"""

from __future__ import annotations

import logging
import pathlib
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ai_models.dicom_files import discover_series
from ai_models.errors import DuplicateSlicesError, PipelineNotApplicable, VolumeError
from ai_models.pipelines import get_pipeline, list_pipelines
from ai_models.types import Volume
from ai_models.volume import load_series, load_volumes

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"

AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]

#: Defects a strategy may combine (any subset, applied in this order).
DEFECTS = (
    "repeat_position",
    "files_per_position",
    "bvalue_stacks",
    "iop_zero",
    "iop_degenerate",
    "iop_non_orthogonal",
    "iop_nan",
    "iop_short",
    "iop_other_plane",
    "iop_missing_one",
    "spacing_missing",
    "spacing_zero",
    "spacing_mixed",
    "spacing_one_value",
    "position_missing_one",
    "position_missing_all",
    "position_nan",
    "position_huge",
    "size_mixed",
    "bits_mixed",
    "bits_stored_too_many",
    "bits_allocated_odd",
    "pixels_short",
    "duplicate_sop_uid",
    "thickness_negative",
    "instance_number_text",
    "frames_negative",
    "frames_two_without_groups",
    "slope_text",
    "gap",
    "uneven",
    "multiframe",
)

#: Defects of one enhanced multi-frame instance (with ``multiframe``).
MF_DEFECTS = (
    "per_frame_short",
    "no_plane_position",
    "no_plane_orientation",
    "empty_shared",
    "no_pixel_measures",
    "frames_zero",
    "per_frame_not_sequence",
    "repeated_positions",
)


# --------------------------------------------------------------------------- builders


def _meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _image(
    modality: str,
    size: int,
    uids: dict[str, str],
    *,
    position: list[float] | None,
    orientation: list[Any] | None = AXIAL,
    spacing: list[Any] | None = (0.8, 0.8),  # type: ignore[assignment]
    number: int = 1,
) -> Dataset:
    """A small single-frame CT or MR slice with a gradient pattern."""
    sop_class = CT_IMAGE if modality == "CT" else MR_IMAGE
    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = _meta(sop_class, sop_uid)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.FrameOfReferenceUID = uids["for"]
    ds.Modality = modality
    ds.PatientName = "Never^Throw"
    ds.PatientID = "NT1"
    ds.SeriesNumber = 3
    ds.InstanceNumber = number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    if position is not None:
        ds.ImagePositionPatient = position
    if orientation is not None:
        ds.ImageOrientationPatient = orientation
    if spacing is not None:
        ds.PixelSpacing = list(spacing)
    ds.SliceThickness = 2.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 1 if modality == "CT" else 0
    if modality == "CT":
        ds.RescaleSlope = 1
        ds.RescaleIntercept = -1024
    pixels = (np.arange(size * size, dtype=np.int16).reshape(size, size) * 7 + number) % 2000
    ds.PixelData = pixels.astype("<i2" if modality == "CT" else "<u2").tobytes()
    return ds


def _set_bits8(ds: Dataset) -> None:
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(int(ds.Rows) * int(ds.Columns))


def _multiframe(base: Dataset, positions: list[list[float]], defects: set[str]) -> Dataset:
    """An enhanced-style multi-frame instance made from ``base``'s header."""
    ds = base.copy()
    ds.file_meta = _meta(base.SOPClassUID, base.SOPInstanceUID)
    for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if kw in ds:
            del ds[kw]
    n = len(positions)
    if "repeated_positions" in defects and n > 1:
        positions = [positions[0]] * n
    shared = Dataset()
    if "no_plane_orientation" not in defects:
        ori = Dataset()
        ori.ImageOrientationPatient = AXIAL
        shared.PlaneOrientationSequence = Sequence([ori])
    if "no_pixel_measures" not in defects:
        pm = Dataset()
        pm.PixelSpacing = [0.8, 0.8]
        pm.SliceThickness = 2.0
        shared.PixelMeasuresSequence = Sequence([pm])
    ds.SharedFunctionalGroupsSequence = Sequence([] if "empty_shared" in defects else [shared])
    per_frame = []
    for p in positions:
        item = Dataset()
        if "no_plane_position" not in defects:
            pos = Dataset()
            pos.ImagePositionPatient = p
            item.PlanePositionSequence = Sequence([pos])
        per_frame.append(item)
    if "per_frame_short" in defects and n > 1:
        per_frame = per_frame[:-1]
    if "per_frame_not_sequence" in defects:
        # Written with an explicit VR of OB: read back as bytes, not as items.
        ds[0x52009230] = DataElement(0x52009230, "OB", b"\x01\x02\x03\x04")
    else:
        ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.NumberOfFrames = 0 if "frames_zero" in defects else n
    rows, cols = int(ds.Rows), int(ds.Columns)
    ds.PixelData = bytes(2 * rows * cols * n)
    return ds


def _raw(ds: Dataset, tag: int, vr: str, value: bytes) -> None:
    """An element kept as read from disk: its invalid value raises only when used."""
    ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)  # type: ignore[assignment]


@contextmanager
def _quiet() -> Iterator[None]:
    """pydicom warns about the invalid values written on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def build_series(spec: dict[str, Any]) -> list[Dataset]:
    """The datasets of one odd series described by ``spec`` (see :func:`series_specs`)."""
    modality, size, n = spec["modality"], spec["size"], spec["n"]
    defects: set[str] = spec["defects"]
    uids = {"study": generate_uid(), "series": generate_uid(), "for": generate_uid()}
    step = 2.0
    z = [i * step for i in range(n)]
    if "gap" in defects and n > 2:
        z = z[:1] + [v + step for v in z[1:]]
    if "uneven" in defects and n > 2:
        z[1] += 0.7
    positions = [[-3.0, -3.0, v] for v in z]
    if "repeat_position" in defects and n > 1:
        positions[-1] = list(positions[0])

    out: list[Dataset] = []
    with _quiet():
        copies = spec["copies"] if "files_per_position" in defects else 1
        for i, p in enumerate(positions):
            for c in range(copies):
                ds = _image(modality, size, uids, position=list(p), number=i * copies + c + 1)
                if "files_per_position" in defects:
                    # A DTI export: one file per direction at each position, differing
                    # only in the gradient direction.
                    ds.DiffusionBValue = 1000
                    ds.DiffusionGradientOrientation = [
                        [1.0, 0.0, 0.0],
                        [0.0, 1.0, 0.0],
                        [0.0, 0.0, 1.0],
                        [0.577, 0.577, 0.577],
                    ][c % 4]
                if "bvalue_stacks" in defects:
                    ds.DiffusionBValue = 0 if i % 2 else 1000
                out.append(ds)
        first, last = out[0], out[-1]
        if "iop_zero" in defects:
            first.ImageOrientationPatient = [0.0] * 6
        if "iop_degenerate" in defects:
            for ds in out:
                ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
        if "iop_non_orthogonal" in defects:
            for ds in out:
                ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.3, 1.0, 0.0]
        if "iop_nan" in defects:
            last.ImageOrientationPatient = ["nan", 0, 0, 0, 1, 0]
        if "iop_short" in defects:
            last.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0]
        if "iop_other_plane" in defects:
            last.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
        if "iop_missing_one" in defects and "ImageOrientationPatient" in last:
            del last.ImageOrientationPatient
        if "spacing_missing" in defects:
            for ds in out:
                del ds.PixelSpacing
        if "spacing_zero" in defects:
            first.PixelSpacing = [0.0, 0.0]
        if "spacing_mixed" in defects:
            last.PixelSpacing = [1.5, 1.5]
        if "spacing_one_value" in defects:
            first.PixelSpacing = 0.8
        if "position_missing_one" in defects:
            del last.ImagePositionPatient
        if "position_missing_all" in defects:
            for ds in out:
                if "ImagePositionPatient" in ds:
                    del ds.ImagePositionPatient
        if "position_nan" in defects:
            first.ImagePositionPatient = [0, "nan", 0]
        if "position_huge" in defects:
            first.ImagePositionPatient = [0, 0, 1e308]
            last.ImagePositionPatient = [0, 0, -1e308]
        if "size_mixed" in defects:
            other = 16 if size == 8 else 8
            last.Rows = last.Columns = other
            last.PixelData = bytes(2 * other * other)
        if "bits_mixed" in defects:
            _set_bits8(last)
        if "bits_stored_too_many" in defects:
            first.BitsStored = 20
        if "bits_allocated_odd" in defects:
            last.BitsAllocated = 12
        if "pixels_short" in defects:
            last.PixelData = last.PixelData[:10]
        if "duplicate_sop_uid" in defects and len(out) > 1:
            last.SOPInstanceUID = first.SOPInstanceUID
            last.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
        if "thickness_negative" in defects:
            for ds in out:
                ds.SliceThickness = -2.0
        if "instance_number_text" in defects:
            _raw(first, 0x00200013, "IS", b"1A")
        if "frames_negative" in defects:
            _raw(last, 0x00280008, "IS", b"-1")
        if "frames_two_without_groups" in defects:
            last.NumberOfFrames = 2
        if "slope_text" in defects:
            _raw(first, 0x00281053, "DS", b"x ")
        if "multiframe" in defects:
            mf = _multiframe(first, positions, spec["mf_defects"])
            out = [mf] + (out[1:] if spec["mf_with_others"] else [])
    return out


@st.composite
def series_specs(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "modality": draw(st.sampled_from(["CT", "MR"])),
        "size": draw(st.sampled_from([8, 16])),
        "n": draw(st.integers(min_value=1, max_value=5)),
        "copies": draw(st.integers(min_value=2, max_value=4)),
        "defects": draw(st.sets(st.sampled_from(DEFECTS), max_size=4)),
        "mf_defects": draw(st.sets(st.sampled_from(MF_DEFECTS), max_size=2)),
        "mf_with_others": draw(st.booleans()),
    }


def _write(datasets: list[Dataset], folder: pathlib.Path) -> None:
    with _quiet():
        for i, ds in enumerate(datasets):
            ds.save_as(folder / f"f{i:03d}.dcm", enforce_file_format=True)


def _assert_refusal(exc: BaseException, spec: dict[str, Any]) -> None:
    assert isinstance(exc, (VolumeError, PipelineNotApplicable)), (
        f"{type(exc).__name__} for defects {sorted(spec['defects'])}: {exc}"
    )
    assert str(exc).strip(), f"{type(exc).__name__} without a message for {spec}"


# --------------------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=series_specs())
def test_load_series_and_volumes_never_throw(spec: dict[str, Any]) -> None:
    datasets = build_series(spec)
    for loader in (load_series, load_volumes):
        try:
            with _quiet():
                out = loader(list(datasets))
        except Exception as exc:  # noqa: BLE001 - the property under test
            _assert_refusal(exc, spec)
        else:
            vols = [out] if isinstance(out, Volume) else list(out.values())
            assert vols and all(isinstance(v, Volume) for v in vols)
            for v in vols:
                assert v.array.ndim == 3 and v.array.shape[0] == len(v.frames)
                assert np.all(np.isfinite(v.spacing)) and np.all(v.spacing > 0)


#: Pipelines whose read_series is ai_models.radiograph.load_radiograph.
RADIOGRAPH_READERS = frozenset({"cxr-findings", "mg-masses"})


@pytest.fixture(scope="module")
def pipelines() -> list[Any]:
    return [get_pipeline(info.name, device="cpu") for info in list_pipelines()]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(spec=series_specs())
def test_files_through_discovery_and_pipelines_never_throw(
    spec: dict[str, Any], pipelines: list[Any]
) -> None:
    datasets = build_series(spec)
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        _write(datasets, folder)
        with _quiet():
            series = discover_series(folder)
        for files in series.values():
            try:
                with _quiet():
                    load_series(files)
            except Exception as exc:  # noqa: BLE001 - the property under test
                _assert_refusal(exc, spec)
            for pipe in pipelines:
                try:
                    with _quiet():
                        volume = pipe.read_series(files)
                        pipe.check(volume)
                except Exception as exc:  # noqa: BLE001 - the property under test
                    _assert_refusal(exc, spec)


@pytest.mark.parametrize("name", sorted(RADIOGRAPH_READERS))
def test_radiograph_reader_text_rescale_slope(tmp_path: pathlib.Path, name: str) -> None:
    spec = {
        "modality": "CT",
        "size": 16,
        "n": 1,
        "copies": 2,
        "defects": {"slope_text"},
        "mf_defects": set(),
        "mf_with_others": False,
    }
    _write(build_series(spec), tmp_path)
    (files,) = discover_series(tmp_path).values()
    with _quiet():
        load_series(files)  # the volume reader ignores the unusable slope
    pipe = get_pipeline(name, device="cpu")
    with pytest.raises(VolumeError, match="Modality LUT"), _quiet():
        pipe.check(pipe.read_series(files))


def test_empty_series_is_a_refusal() -> None:
    with pytest.raises(VolumeError, match="no DICOM image"):
        load_series([])
    with pytest.raises(VolumeError, match="no DICOM image"):
        load_volumes([])


# --------------------------------------------------------------------------- regressions


@pytest.mark.parametrize("with_positions", [True, False])
def test_dti_export_one_file_per_direction_is_refused_with_a_reason(
    tmp_path: pathlib.Path, with_positions: bool
) -> None:
    """N files at M positions, several per position differing only in the gradient.

    A vendor's DTI export ended in ``ValueError: matmul: Input operand 0 does
    not have enough dimensions``; it must be a DuplicateSlicesError (with the
    positions) or, without positions, a VolumeError naming the missing one.
    """
    spec = {
        "modality": "MR",
        "size": 16,
        "n": 3,
        "copies": 4,
        "defects": {"files_per_position"} | (set() if with_positions else {"position_missing_one"}),
        "mf_defects": set(),
        "mf_with_others": False,
    }
    datasets = build_series(spec)
    assert len(datasets) == 12
    _write(datasets, tmp_path)
    (files,) = discover_series(tmp_path).values()
    if with_positions:
        with pytest.raises(DuplicateSlicesError, match="same position"):
            load_series(files)
        with pytest.raises(DuplicateSlicesError, match="same position"):
            load_volumes(files)
    else:
        with pytest.raises(VolumeError, match="ImagePositionPatient"):
            load_series(files)
        with pytest.raises(VolumeError, match="ImagePositionPatient"):
            load_volumes(files)
    pipe = get_pipeline("mr-brain-lesion", device="cpu")
    with pytest.raises(VolumeError):
        pipe.read_series(files)


# --------------------------------------------------------------------------- shared broken files


BAD_FOLDERS = ("pydicom/bad", "pydicom_data/bad")


@pytest.mark.parametrize("folder", BAD_FOLDERS)
def test_shared_broken_files_end_in_a_volume_or_a_reason(
    dicom_data: pathlib.Path, folder: str
) -> None:
    with _quiet():
        series = discover_series(dicom_data / folder)
    assert series, "the broken-file folders hold some image files"
    for files in series.values():
        for loader in (load_series, load_volumes):
            try:
                with _quiet():
                    loader(files)
            except Exception as exc:  # noqa: BLE001 - the property under test
                assert isinstance(exc, VolumeError), f"{files[0].path.name}: {exc!r}"
                assert str(exc).strip()


UNDECODABLE = "pydicom/bad/JPEG2000-embedded-sequence-delimiter.dcm"


def test_undecodable_file_logs_one_line_without_traceback(
    dicom_data: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = dicom_data / UNDECODABLE
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    caplog.set_level(logging.DEBUG)
    with _quiet(), pytest.raises(VolumeError, match="cannot be decoded"):
        load_series([path])
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert all(r.exc_info is None and not r.exc_text for r in loud), [
        (r.name, r.getMessage()) for r in loud
    ]
    assert not any("Traceback" in r.getMessage() for r in loud)
    about = [r for r in caplog.records if r.levelno >= logging.INFO and uid in r.getMessage()]
    assert len(about) == 1, [(r.name, r.levelname, r.getMessage()) for r in about]
    (line,) = about
    assert line.levelno in (logging.INFO, logging.WARNING)
    assert "cannot be decoded" in line.getMessage()
    assert "\n" not in line.getMessage()
    # The decoders' own tracebacks are kept, at DEBUG only.
    assert all(r.levelno <= logging.DEBUG for r in caplog.records if r.exc_info)
