"""The receiver's fast header reader against pydicom, on every file of the shared data.

:func:`~dicom_node.receive.header.fast_record` reads the instance record straight
from the data set's bytes; where it answers at all, its record must equal the
one made from pydicom's parse (:func:`~dicom_node.receive.header.header_record`),
field for field, whatever the vendor, transfer syntax or character set.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite

from dicom_node.errors import StoreRejected
from dicom_node.protocol.file_meta import read_file_meta
from dicom_node.receive.header import fast_record, header_record, parse_header


def _fields(record: object) -> dict[str, object]:
    return {
        f.name: getattr(record, f.name)
        for f in dataclasses.fields(record)  # type: ignore[arg-type]
        if f.name != "attributes"
    }


def test_fast_record_equals_pydicom_on_the_shared_data(dicom_data: Path) -> None:
    compared = fallbacks = 0
    for path in sorted(p for p in dicom_data.rglob("*") if p.is_file()):
        try:
            meta = read_file_meta(path)
        except Exception:  # noqa: BLE001 - not a DICOM file (a readme, a NIfTI ...)
            continue
        data = path.read_bytes()[meta.data_offset :]
        ts = meta.transfer_syntax_uid
        try:
            expected = header_record(parse_header(data, ts, record_only=True), ts)
        except (StoreRejected, Exception):  # noqa: BLE001 - compare the refusals below
            expected = None
        for prefix in (data, data[:4096]):
            complete = len(prefix) >= len(data)
            try:
                fast = fast_record(prefix, ts, complete=complete)
            except StoreRejected:
                assert expected is None, path
                continue
            if fast is None:
                fallbacks += 1
                continue
            assert expected is not None, path
            assert _fields(fast) == _fields(expected), path
            compared += 1
    assert compared > 150, (compared, fallbacks)


def _dataset(**values: object) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.1"
    for k, v in values.items():
        setattr(ds, k, v)
    from io import BytesIO

    out = BytesIO()
    dcmwrite(out, ds, implicit_vr=False, little_endian=True)  # type: ignore[call-arg]
    return out.getvalue()


@pytest.mark.parametrize(
    "values",
    [
        {"PatientName": "Müller^Hans", "SpecificCharacterSet": "ISO_IR 100"},
        {"SeriesDescription": "A\\B"},
        {"InstanceNumber": "7.0"},
        {"SpecificCharacterSet": "ISO_IR 144", "Modality": "CT"},
    ],
)
def test_values_pydicom_must_decode_are_left_to_it(values: dict[str, object]) -> None:
    data = _dataset(**values)
    assert fast_record(data, "1.2.840.10008.1.2.1", complete=True) is None


def test_missing_uid_is_refused_like_pydicom_does() -> None:
    ds = _dataset(Modality="CT")
    with pytest.raises(StoreRejected):
        fast_record(ds.replace(b"1.2.3.4\x00", b"\x00" * 8), "1.2.840.10008.1.2.1", complete=True)
