"""Synthetic DICOM series for benchmarks and network tests.

Valid CT Image Storage instances (PS3.3 A.3) with a regular axial geometry and
pseudo-random pixels; headers only as rich as a receiver needs.  Nothing here
is patient data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

__all__ = ["write_ct_series"]


def write_ct_series(
    folder: Path,
    n: int = 300,
    rows: int = 512,
    cols: int = 512,
    *,
    seed: int = 0,
    modality: str = "CT",
) -> list[Path]:
    """Write an *n*-slice series of ``rows x cols`` int16 images; returns the paths in order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid, series_uid, for_uid = generate_uid(), generate_uid(), generate_uid()
    base = rng.integers(-1000, 1500, size=(rows, cols), dtype=np.int16)
    paths: list[Path] = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = for_uid
        ds.PatientName = "SYNTHETIC^BENCH"
        ds.PatientID = "SYNTH0001"
        ds.StudyDate = "20260101"
        ds.Modality = modality
        ds.Manufacturer = "dicom-node synthetic"
        ds.SeriesDescription = f"synthetic {rows}x{cols}x{n}"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [-0.5 * cols, -0.5 * rows, float(k)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 1.0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.roll(base, k, axis=0).tobytes()
        path = folder / f"{k + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
