"""Deflated files are measured before pydicom inflates them whole (PS3.5 A.5).

A small Deflated Explicit VR file whose data set inflates far beyond
:data:`ai_models.dicom_files.MAX_INFLATED_BYTES` (lowered here to 32 MiB so
the test stays quick) is refused with the reason by every reader a job uses,
and its inflated bytes never sit in memory; an ordinary Deflated file of the
shared data's kind still reads.
"""

from __future__ import annotations

import pathlib
import resource

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid

import ai_models.dicom_files as dicom_files
from ai_models.errors import VolumeError
from ai_models.radiograph import load_radiograph
from ai_models.volume import load_series

DEFLATED = dicom_files.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN


def _deflated_ct(path: pathlib.Path, rows: int) -> pathlib.Path:
    """A CT image of ``rows`` x 512 zero pixels, saved Deflated (it compresses ~1000:1)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DEFLATED
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "CT", "BOMB", "BOMB^TEST"
    ds.Rows, ds.Columns = rows, 512
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [1, 1], 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = np.zeros((rows, 512), np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> int:
    limit = 32 << 20
    monkeypatch.setattr(dicom_files, "MAX_INFLATED_BYTES", limit)
    return limit


def test_bomb_is_refused_by_every_reader(tmp_path: pathlib.Path, small_limit: int) -> None:
    bomb = _deflated_ct(tmp_path / "bomb.dcm", rows=48 * 1024)  # 48 MiB of pixels
    assert bomb.stat().st_size < small_limit // 50
    reason = dicom_files.deflate_bomb_reason(bomb)
    assert "decompression bomb" in reason and "32 MiB" in reason
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(VolumeError, match="decompression bomb"):
        load_series([bomb])
    with pytest.raises(VolumeError, match="decompression bomb"):
        load_radiograph(bomb)
    found, skipped = dicom_files.read_image_datasets(tmp_path)
    assert found == [] and "decompression bomb" in skipped[0].reason
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mb < 40, f"peak RSS grew {grown_mb:.0f} MB while refusing"


def test_ordinary_deflated_file_still_reads(tmp_path: pathlib.Path, small_limit: int) -> None:
    path = _deflated_ct(tmp_path / "ok.dcm", rows=256)
    assert dicom_files.deflate_bomb_reason(path) == ""
    assert dicom_files.deflate_bomb_reason(path, limit=1024).startswith("Deflated data set")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == DEFLATED and ds.Rows == 256
    found, skipped = dicom_files.read_image_datasets(tmp_path)
    assert len(found) == 1 and skipped == []
