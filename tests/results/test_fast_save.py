"""The fast save: the same bytes as pydicom's ``save_as``, on objects of real series."""

from __future__ import annotations

import copy
import pathlib

import pydicom
import pytest
from pydicom.dataset import Dataset

from ai_models.types import Volume
from dicom_node.results import save_datasets, write_results
from dicom_node.results.fast_save import encode_sequence, encoded_copy, save_as
from tests.results.helpers import assert_valid, make_result


def _pydicom_bytes(ds: Dataset, path: pathlib.Path) -> bytes:
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


@pytest.mark.parametrize("outputs", ["seg,sr", "gsps,sc"])
def test_same_bytes_as_pydicom(any_volume: Volume, tmp_path: pathlib.Path, outputs: str) -> None:
    result = make_result(any_volume)
    datasets = write_results(result, outputs, uid_seed="5eed" * 8)
    assert datasets
    for i, ds in enumerate(datasets):
        assert encoded_copy(ds) is not None  # not left to pydicom
        fast = tmp_path / f"fast{i}.dcm"
        save_as(ds, fast)
        assert fast.read_bytes() == _pydicom_bytes(ds, tmp_path / f"pydicom{i}.dcm"), ds.Modality


def test_saved_results_are_valid(ct_volume: Volume, tmp_path: pathlib.Path) -> None:
    datasets = write_results(make_result(ct_volume), "seg,sr", uid_seed="5eed" * 8)
    paths = save_datasets(datasets, tmp_path)
    for path in paths:
        assert_valid(path)
    seg = pydicom.dcmread(paths[0])
    assert seg.Modality == "SEG"
    assert len(seg.PerFrameFunctionalGroupsSequence) == int(seg.NumberOfFrames)


def test_a_dataset_read_from_a_file(dicom_data: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Raw elements of a file read in the same encoding are written as they are."""
    src = next((dicom_data / "dcmqi/ct-3slice").iterdir())
    ds = pydicom.dcmread(src)
    expected = _pydicom_bytes(pydicom.dcmread(src), tmp_path / "pydicom.dcm")
    save_as(ds, tmp_path / "fast.dcm")
    assert (tmp_path / "fast.dcm").read_bytes() == expected


def test_undefined_lengths_and_text(tmp_path: pathlib.Path) -> None:
    """Items of undefined length, non-ASCII text under a character set, an empty
    sequence, numbers: as pydicom writes them."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.PatientName = "Müller^Jürgen"
    item = Dataset()
    item.CodeValue = "T-04000"
    item.CodeMeaning = "Brüst"
    item.ReferencedFrameNumber = [1, 2, 3]
    item.ImagePositionPatient = [0.5, -1, "2.50"]
    item.ReferencedSOPSequence = []
    open_item = Dataset()
    open_item.is_undefined_length_sequence_item = True
    open_item.CodeValue = "1"
    nested = Dataset()
    nested.CodeValue = "2"
    open_item.ConceptCodeSequence = [nested]
    open_item["ConceptCodeSequence"].is_undefined_length = True
    ds.ConceptNameCodeSequence = [item, open_item]
    ds["ConceptNameCodeSequence"].is_undefined_length = True
    ds.ReferencedImageSequence = []
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    expected = _pydicom_bytes(copy.deepcopy(ds), tmp_path / "pydicom.dcm")
    assert encoded_copy(ds) is not None
    save_as(ds, tmp_path / "fast.dcm")
    assert (tmp_path / "fast.dcm").read_bytes() == expected
    assert encode_sequence([]) == b""


def test_other_transfer_syntax_left_to_pydicom(tmp_path: pathlib.Path) -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4"
    item = Dataset()
    item.CodeValue = "1"
    ds.ConceptNameCodeSequence = [item]
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    assert encoded_copy(ds) is None
    expected = _pydicom_bytes(copy.deepcopy(ds), tmp_path / "pydicom.dcm")
    save_as(ds, tmp_path / "fast.dcm")
    assert (tmp_path / "fast.dcm").read_bytes() == expected
