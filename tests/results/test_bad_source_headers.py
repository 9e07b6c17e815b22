"""Result writers and source headers with values invalid for their VR.

Copies of shared series mutated the way real exports are (anonymiser
``***`` dates, ``00000000`` dates, ages without a unit, over-long strings,
unknown character sets, control characters, ``70,5`` as a DS, missing
Patient ID), written through every writer that applies: each object is
written, dciodvfy-clean, the invalid value is gone (emptied for Type 2, left
out for Type 3), the valid attributes are unchanged and each cleaned
attribute logged exactly one warning.
"""

from __future__ import annotations

import logging
import pathlib
import re
from collections.abc import Callable

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from ai_models.radiograph import load_radiograph
from ai_models.types import (
    ClassificationFinding,
    CodedConcept,
    DetectionFinding,
    HeatMap,
    PipelineResult,
    Volume,
)
from ai_models.volume import load_series
from dicom_node.results import SourceHeaderError, save_datasets, write_results
from tests.results.helpers import algorithm, dciodvfy, make_result, unexplained

CT = "dcmqi/ct-3slice"
MR = "dcmqi/qin-prostate-01-0001_adc"
CHEST = "nema_wg04/RG1_chest_CR/RG1_UNCR.dcm"
LOGGER = "dicom_node.results.source_header"

#: keyword -> expected outcome: "empty" (Type 2) or "absent" (Type 3).
CLEANED = {
    "PatientBirthDate": "empty",  # anonymiser's ***
    "StudyDate": "empty",  # 00000000
    "PatientAge": "absent",  # 81, no unit
    "StudyDescription": "absent",  # LO over 64 characters
    "AccessionNumber": "empty",  # SH over 16 characters
    "ReferringPhysicianName": "empty",  # control character
    "PatientSex": "empty",  # not M, F or O
    "PatientWeight": "absent",  # "70,5" is no DS
    "SpecificCharacterSet": "absent",  # unknown term, every text ASCII
}
#: Valid source attributes that must reach the objects unchanged.
KEPT = ("PatientName", "StudyInstanceUID", "StudyTime")


#: Emptied Type 2 values are valid; dciodvfy only notes that a DICOMDIR
#: would want them (as for the de-identified sources' empty Study ID).
_EMPTIED = re.compile(r"needed to build DICOMDIR - (Patient ID|Study Date)")


def assert_valid(path: pathlib.Path) -> None:
    errors, warnings = dciodvfy(path)
    assert errors == [], f"dciodvfy errors for {path}:\n" + "\n".join(errors)
    left = [w for w in unexplained(warnings) if not _EMPTIED.search(w)]
    assert left == [], "unexplained dciodvfy warnings:\n" + "\n".join(left)


def _raw(ds: pydicom.Dataset, keyword: str, vr: str, value: bytes) -> None:
    """Store bytes as they are (pydicom refuses to convert some invalid values)."""
    tag = Tag(pydicom.datadict.tag_for_keyword(keyword))
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)  # type: ignore[assignment]


def bad_export(ds: pydicom.Dataset) -> None:
    """Every mutation of :data:`CLEANED` at once; PatientID removed."""
    _raw(ds, "PatientBirthDate", "DA", b"***\x20")
    _raw(ds, "StudyDate", "DA", b"00000000")
    _raw(ds, "PatientAge", "AS", b"81")
    _raw(ds, "StudyDescription", "LO", b"X" * 80)
    _raw(ds, "AccessionNumber", "SH", b"A" * 20)
    _raw(ds, "ReferringPhysicianName", "PN", b"WARD\x07^A")
    _raw(ds, "PatientSex", "CS", b"U ")
    _raw(ds, "PatientWeight", "DS", b"70,5")
    _raw(ds, "SpecificCharacterSet", "CS", b"ISO_IR 999")
    ds.PatientName = "DOE^JANE"
    ds.StudyTime = "101010"
    ds.StudyID = ""
    if "PatientID" in ds:
        del ds.PatientID


def mutated_copy(
    src: pathlib.Path, dst: pathlib.Path, mutate: Callable[[pydicom.Dataset], None]
) -> pathlib.Path:
    """Copy a file or a series folder to ``dst``, each file mutated."""
    files = sorted(p for p in src.iterdir() if p.is_file()) if src.is_dir() else [src]
    dst.mkdir(parents=True, exist_ok=True)
    for path in files:
        try:
            ds = pydicom.dcmread(path)
        except pydicom.errors.InvalidDicomError:
            continue
        mutate(ds)
        ds.save_as(dst / path.name)
    return dst if src.is_dir() else dst / src.name


def _warnings_by_attribute(caplog: pytest.LogCaptureFixture) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rec in caplog.records:
        if rec.name == LOGGER and rec.levelno == logging.WARNING:
            keyword = str(rec.args[0]) if isinstance(rec.args, tuple) else ""
            counts[keyword] = counts.get(keyword, 0) + 1
    return counts


def _check(paths: list[pathlib.Path], caplog: pytest.LogCaptureFixture) -> None:
    assert paths
    for path in paths:
        assert_valid(path)
        ds = pydicom.dcmread(path)
        for keyword, outcome in CLEANED.items():
            if outcome == "absent":
                assert keyword not in ds, (path.name, keyword)
            else:
                assert keyword in ds and ds[keyword].value in ("", None), (path.name, keyword)
        assert ds.PatientID in ("", None)  # Type 2, missing in the source
        assert str(ds.PatientName) == "DOE^JANE"
        assert ds.StudyTime == "101010"
    assert _warnings_by_attribute(caplog) == dict.fromkeys(CLEANED, 1)
    # No patient data above DEBUG: the node never logs the values it cleans.
    text = "\n".join(
        r.getMessage()
        for r in caplog.records
        if r.levelno > logging.DEBUG and r.name.startswith("dicom_node")
    )
    for value in ("***", "00000000", "70,5", "ISO_IR 999", "DOE^JANE"):
        assert value not in text


@pytest.mark.parametrize("series", [CT, MR])
def test_segmentation_result_of_a_bad_export(
    series: str, dicom_data: pathlib.Path, tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = mutated_copy(dicom_data / series, tmp_path / "src", bad_export)
    volume = load_series(folder)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    datasets = write_results(make_result(volume), outputs="seg,sr")
    assert sorted(str(ds.Modality) for ds in datasets) == ["SEG", "SR"]
    _check(save_datasets(datasets, tmp_path / "out"), caplog)
    # The caller's source datasets are left as they were.
    assert volume.source_datasets[0].get_item(0x00101010).value == b"81"


def _classification(volume: Volume) -> PipelineResult:
    uid = hd.UID()
    _, rows, cols = volume.shape
    yy, xx = np.mgrid[0:rows, 0:cols]
    blob = np.exp(-(((yy - 0.6 * rows) ** 2 + (xx - 0.3 * cols) ** 2) / (2 * (0.1 * rows) ** 2)))
    finding = ClassificationFinding(
        "Pleural effusion", uid,
        hd.sr.CodedConcept("60046008", "SCT", "Pleural effusion"),  # type: ignore[arg-type]
        probability=0.8, threshold=0.4, source_frames=(0,),
    )
    heatmap = HeatMap(
        "Pleural effusion", "Pleural effusion", uid, 0, blob.astype(np.float32),
        probability=0.8, present=True,
    )
    return PipelineResult("test-cxr", volume, algorithm(), findings=[finding], heatmaps=[heatmap])


def test_radiograph_classification_of_a_bad_export(
    dicom_data: pathlib.Path, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = mutated_copy(dicom_data / CHEST, tmp_path / "src", bad_export)
    volume = load_radiograph(path)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    datasets = write_results(_classification(volume), outputs="sr,sc")
    assert sorted(str(ds.Modality) for ds in datasets) == ["OT", "SR"]
    _check(save_datasets(datasets, tmp_path / "out"), caplog)


def _chest_sr_of_mutated_copy(
    dicom_data: pathlib.Path,
    tmp_path: pathlib.Path,
    mutate: Callable[[pydicom.Dataset], None],
    caplog: pytest.LogCaptureFixture,
) -> pydicom.Dataset:
    """The classification SR of a mutated copy of the chest CR, checked by dciodvfy."""
    path = mutated_copy(dicom_data / CHEST, tmp_path / "src", mutate)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    datasets = write_results(_classification(load_radiograph(path)), outputs="sr")
    (out,) = save_datasets(datasets, tmp_path / "out")
    assert_valid(out)
    return pydicom.dcmread(out)


def test_non_ascii_text_under_an_unknown_character_set(
    dicom_data: pathlib.Path, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    def mutate(ds: pydicom.Dataset) -> None:
        _raw(ds, "SpecificCharacterSet", "CS", b"ISO-8859-1")
        _raw(ds, "PatientName", "PN", "MÜLLER^JÖRG".encode("latin-1"))

    ds = _chest_sr_of_mutated_copy(dicom_data, tmp_path, mutate, caplog)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "MÜLLER^JÖRG"
    assert _warnings_by_attribute(caplog) == {"SpecificCharacterSet": 1}


def test_non_ascii_text_without_a_character_set(
    dicom_data: pathlib.Path, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    def mutate(ds: pydicom.Dataset) -> None:
        if "SpecificCharacterSet" in ds:
            del ds.SpecificCharacterSet
        _raw(ds, "StudyDescription", "LO", "THORAX P\xc4".encode("latin-1"))

    ds = _chest_sr_of_mutated_copy(dicom_data, tmp_path, mutate, caplog)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.StudyDescription == "THORAX P\xc4"
    assert _warnings_by_attribute(caplog) == {"SpecificCharacterSet": 1}


def test_valid_source_logs_nothing(
    dicom_data: pathlib.Path, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    volume = load_radiograph(dicom_data / CHEST)
    datasets = write_results(_classification(volume), outputs="sr")
    assert datasets and _warnings_by_attribute(caplog) == {}
    src = volume.source_datasets[0]
    assert datasets[0].PatientName == src.PatientName and datasets[0].PatientID == src.PatientID


@pytest.mark.parametrize("value", [b"1.2.03.4", b"1." + b"1" * 70, b""])
def test_invalid_study_uid_refuses_with_the_attribute_named(
    value: bytes, dicom_data: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """Type 1 and the key to the source study: no repair, a clear refusal."""
    path = mutated_copy(
        dicom_data / CHEST, tmp_path / "src",
        lambda ds: _raw(ds, "StudyInstanceUID", "UI", value + b"\x00" * (len(value) % 2)),
    )
    with pytest.raises(SourceHeaderError, match=r"StudyInstanceUID \(0020,000D\)"):
        write_results(_classification(load_radiograph(path)), outputs="sr,sc")


def test_analyze_paths_with_a_bad_chest_export(
    dicom_data: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    from dicom_node.work.analyze import SeriesStatus, analyze_paths
    from tests.support.radiographs import write_cxr

    # a chest phantom of the training family: the real chest CR is refused by
    # the model's OOD check (tests/ai_models/test_ood.py)
    src = tmp_path / "src"
    mutated_copy(write_cxr(tmp_path / "phantom"), src, bad_export)
    report = analyze_paths([src], "cxr-findings", tmp_path / "out", outputs="sr")
    (entry,) = report.series
    assert entry.status == SeriesStatus.DONE, entry.reason
    (sr_path,) = entry.files
    assert sr_path.name.startswith("sr_")
    assert_valid(sr_path)
    sr = pydicom.dcmread(sr_path)
    assert "PatientAge" not in sr and sr.PatientBirthDate == ""


def _detection(volume: Volume) -> PipelineResult:
    _, rows, cols = volume.shape
    finding = DetectionFinding(
        "Mass 1", hd.UID(), CodedConcept("4147007", "SCT", "Mass"),
        box=(0.3 * cols, 0.4 * rows, 0.45 * cols, 0.52 * rows), score=0.8,
    )  # fmt: skip
    return PipelineResult("test-detector", volume, algorithm(), findings=[finding])


def test_presentation_state_of_a_bad_export(
    dicom_data: pathlib.Path, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The GSPS (and its SR) of a detection on a bad export: written and valid."""
    path = mutated_copy(dicom_data / CHEST, tmp_path / "src", bad_export)
    volume = load_radiograph(path)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    datasets = write_results(_detection(volume), outputs="gsps,sr")
    assert sorted(str(ds.Modality) for ds in datasets) == ["PR", "SR"]
    _check(save_datasets(datasets, tmp_path / "out"), caplog)


def _item(**raw: tuple[str, bytes]) -> pydicom.Dataset:
    item = pydicom.Dataset()
    for keyword, (vr, value) in raw.items():
        _raw(item, keyword, vr, value)
    return item


def test_sequence_with_an_invalid_nested_value_is_left_out(
    dicom_data: pathlib.Path, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Other Patient IDs Sequence (Type 3) whose second item's issuer is over
    64 characters is left out whole; a valid Procedure Code Sequence is kept."""

    def mutate(ds: pydicom.Dataset) -> None:
        ds.OtherPatientIDsSequence = [
            _item(PatientID=("LO", b"OTHER-1 "), TypeOfPatientID=("CS", b"TEXT")),
            _item(PatientID=("LO", b"OTHER-2 "), IssuerOfPatientID=("LO", b"I" * 80)),
        ]
        ds.ProcedureCodeSequence = [
            _item(
                CodeValue=("SH", b"36643-5 "), CodingSchemeDesignator=("SH", b"LN"),
                CodeMeaning=("LO", b"XR Chest 2 Views"),
            )  # fmt: skip
        ]

    path = mutated_copy(dicom_data / CHEST, tmp_path / "src", mutate)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for kinds in ("sr", "gsps"):
        result = _classification if kinds == "sr" else _detection
        datasets = write_results(result(load_radiograph(path)), outputs=kinds)
        (out,) = save_datasets(datasets, tmp_path / f"out-{kinds}")
        assert_valid(out)
        ds = pydicom.dcmread(out)
        assert "OtherPatientIDsSequence" not in ds
        if "ProcedureCodeSequence" in ds:  # copied by the writer that copies it
            assert ds.ProcedureCodeSequence[0].CodeMeaning == "XR Chest 2 Views"
    # one warning per writer call, naming the sequence, the item and the attribute
    assert _warnings_by_attribute(caplog) == {"OtherPatientIDsSequence": 2}
    reasons = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert any("item 2 IssuerOfPatientID" in m for m in reasons), reasons
    assert not any("I" * 80 in m for m in reasons)



def test_fallback_attribute_list_agrees_with_highdicom(monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-in list used when highdicom's private module table moves gives
    the same types as that table, and is what a missing table falls back to."""
    import sys

    from dicom_node.results import source_header

    fallback = source_header._FALLBACK_MODULE_ATTRIBUTES
    table = source_header._module_attributes()
    assert {k: table.get(k) for k in fallback} == fallback
    monkeypatch.setitem(sys.modules, "highdicom._standard_utils", None)  # import fails
    assert source_header._module_attributes() == fallback
