"""Synthetic DICOM series for benchmarks and network tests.

Valid CT Image Storage instances (PS3.3 A.3) with a regular axial geometry and
pseudo-random pixels; headers only as rich as a receiver needs.  Nothing here
is patient data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

__all__ = ["ct_slice", "write_ct_series", "write_volume_series"]


def ct_slice(
    pixels: np.ndarray,
    *,
    study_uid: str,
    series_uid: str,
    frame_of_reference_uid: str,
    instance_number: int,
    position: list[float],
    orientation: list[float],
    pixel_spacing: list[float],
    slice_thickness: float,
    description: str,
    modality: str = "CT",
    body_part: str | None = None,
) -> Dataset:
    """One CT Image Storage instance (PS3.3 A.3) holding int16 *pixels* in HU.

    With ``modality="MR"`` an MR Image Storage instance (PS3.3 A.4) instead,
    without the rescale attributes the MR Image module does not have.
    """
    sop_class = MRImageStorage if modality == "MR" else CTImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
        "SYNTHETIC^PHANTOM",
        "SYNTH0001",
        "",
        "O",
    )
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20260101", "120000", ""
    ds.ReferringPhysicianName, ds.StudyID = "", "1"
    ds.Modality, ds.Manufacturer = modality, "dicom-node synthetic"
    if body_part:
        ds.BodyPartExamined = body_part
    ds.SeriesDescription, ds.SeriesNumber = description, 1
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = position
    ds.ImageOrientationPatient = orientation
    ds.PixelSpacing = pixel_spacing
    ds.SliceThickness = slice_thickness
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    if modality != "MR":
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return ds


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
        ds = ct_slice(
            np.roll(base, k, axis=0),
            study_uid=study_uid,
            series_uid=series_uid,
            frame_of_reference_uid=for_uid,
            instance_number=k + 1,
            position=[-0.5 * cols, -0.5 * rows, float(k)],
            orientation=[1, 0, 0, 0, 1, 0],
            pixel_spacing=[1.0, 1.0],
            slice_thickness=1.0,
            description=f"synthetic {rows}x{cols}x{n}",
            modality=modality,
        )
        path = folder / f"{k + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_volume_series(
    volume: object,
    folder: Path,
    *,
    description: str = "synthetic chest phantom",
    body_part: str | None = "CHEST",
    modality: str = "CT",
) -> list[Path]:
    """Write a synthetic axial CT volume (HU) as a DICOM series; returns the paths in order.

    One study, series and frame of reference with fresh UIDs per call; the
    geometry (positions, orientation, spacing) is the volume's own.
    """
    from ai_models.types import Volume

    assert isinstance(volume, Volume)
    folder.mkdir(parents=True, exist_ok=True)
    study, series, for_uid = generate_uid(), generate_uid(), generate_uid()
    orientation = [float(v) for v in (*volume.direction[:, 2], *volume.direction[:, 1])]
    if modality == "MR":  # arbitrary units: scaled to 12 bits
        scale = 4000.0 / max(float(np.max(volume.array)), 1e-6)
        pixels = np.clip(np.rint(volume.array * scale), 0, 4095)
    else:  # HU
        pixels = np.clip(np.rint(volume.array), -1024, 3071)
    paths = []
    for k in range(volume.shape[0]):
        ds = ct_slice(
            pixels[k],
            study_uid=study,
            series_uid=series,
            frame_of_reference_uid=for_uid,
            instance_number=k + 1,
            position=[float(v) for v in volume.index_to_lps(np.array([k, 0, 0]))],
            orientation=orientation,
            pixel_spacing=[float(volume.spacing[1]), float(volume.spacing[2])],
            slice_thickness=float(volume.spacing[0]),
            description=description,
            body_part=body_part,
            modality=modality,
        )
        path = folder / f"{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
