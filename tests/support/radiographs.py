"""Synthetic radiographs of the built-in models' training families, as DICOM.

``cxr-findings`` and ``mg-masses`` refuse real images out of their training
distribution (their OOD check, :mod:`ai_models.ood`), so tests that need
these pipelines to produce results use phantoms of the families they were
trained on (:mod:`ai_models.training.cxr_phantoms`,
:mod:`ai_models.training.mammo_phantoms`), written as ordinary CR and MG
images.  Each seed below was checked to pass the pipeline's pixel and OOD
checks (``tests/ai_models/test_ood.py`` asserts it).
"""

from __future__ import annotations

import pathlib

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset

from ai_models.training.cxr_phantoms import random_cxr_phantom
from ai_models.training.mammo_phantoms import random_mammo_phantom

__all__ = [
    "CR_IMAGE_STORAGE",
    "CXR_SEED",
    "MAMMO_SEED",
    "cxr_dataset",
    "mammo_dataset",
    "write_cxr",
    "write_mammogram",
]

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
"""Computed Radiography Image Storage."""

CXR_SEED = 20_250_101
"""A frontal chest phantom with lung opacity (and only that) drawn in."""

MAMMO_SEED = 20_250_102
"""A left MLO mammogram phantom with one mass."""


def cxr_dataset(seed: int = CXR_SEED, size: int = 640, bits: int = 12) -> Dataset:
    """A frontal (PA) chest CR, MONOCHROME2, from phantom ``seed`` (opacity present)."""
    phantom = random_cxr_phantom(
        np.random.default_rng(seed), size, labels=(True, False, False, False)
    )
    top = 2**bits - 1
    stored = np.round(np.clip(phantom.image, 0.0, 1.0) * top).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = hd.UID()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = hd.UID()
    ds.SeriesInstanceUID = hd.UID()
    ds.Modality = "CR"
    ds.PatientName = "Phantom^Chest"
    ds.PatientID = "CXR-PHANTOM"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = "20250101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SeriesDescription = "synthetic chest PA"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    rows, cols = stored.shape
    spacing = 400.0 / max(rows, cols)
    ds.PixelSpacing = [spacing, spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = top / 2.0
    ds.WindowWidth = float(top)
    ds.PixelData = stored.tobytes()
    return ds


def mammo_dataset(seed: int = MAMMO_SEED, rows: int = 1024) -> Dataset:
    """A left MLO MG For Presentation image of phantom ``seed`` with one mass."""
    from tests.ai_models.test_mg_masses import _mg_dataset

    phantom = random_mammo_phantom(
        np.random.default_rng(seed), rows=rows, n_masses=1, laterality="L", view="MLO"
    )
    ds = _mg_dataset(phantom.image, laterality="L")
    ds.BodyPartExamined = "BREAST"
    return ds


def _write(ds: Dataset, folder: pathlib.Path, name: str) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


def write_cxr(folder: pathlib.Path, seed: int = CXR_SEED) -> pathlib.Path:
    """Write :func:`cxr_dataset` as ``folder/cxr.dcm``."""
    return _write(cxr_dataset(seed), folder, "cxr.dcm")


def write_mammogram(folder: pathlib.Path, seed: int = MAMMO_SEED) -> pathlib.Path:
    """Write :func:`mammo_dataset` as ``folder/mg.dcm``."""
    return _write(mammo_dataset(seed), folder, "mg.dcm")
