"""Hand-written encoders of the receive path against pydicom's reference codecs."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble  # type: ignore[attr-defined]
from pydicom.filewriter import write_file_meta_info

from dicom_node.protocol.dimse_command import CommandSet, decode_command, encode_response
from dicom_node.protocol.file_meta import IMPLEMENTATION_CLASS_UID, encode_file_meta
from dicom_node.protocol.upper_layer import PduError, iter_pdvs, p_data_pdu


@pytest.mark.parametrize("ae", ["STORESCU", "ODD", ""])
@pytest.mark.parametrize("sop_uid", ["1.2.3.4", "1.2.3.45"])
def test_file_meta_matches_pydicom(ae: str, sop_uid: str) -> None:
    ours = encode_file_meta("1.2.840.10008.5.1.4.1.1.2", sop_uid, "1.2.840.10008.1.2.4.90", ae)
    fp = BytesIO(ours)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    assert fp.tell() == len(ours)
    assert meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert meta.MediaStorageSOPInstanceUID == sop_uid
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.FileMetaInformationVersion == b"\x00\x01"
    ref = FileMetaDataset()
    for elem in meta:
        if elem.tag != 0x00020000:
            ref.add(elem)
    buf = BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, ref, enforce_standard=True)
    assert buf.getvalue() == ours


def test_response_round_trip() -> None:
    req = CommandSet(
        command_field=0x0001,
        message_id=7,
        affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        affected_sop_instance_uid="1.2.3",
        data_set_type=0x0000,
    )
    raw = encode_response(req, 0xC001, "missing or empty StudyInstanceUID")
    ds = read_dataset(BytesIO(raw), is_implicit_VR=True, is_little_endian=True)
    assert ds.CommandGroupLength == len(raw) - 12
    assert ds.CommandField == 0x8001
    assert ds.MessageIDBeingRespondedTo == 7
    assert ds.Status == 0xC001
    assert ds.ErrorComment == "missing or empty StudyInstanceUID"
    assert ds.AffectedSOPInstanceUID == "1.2.3"
    assert ds.CommandDataSetType == 0x0101
    back = decode_command(raw)
    assert back.command_field == 0x8001 and back.affected_sop_instance_uid == "1.2.3"


def test_bad_command_sets() -> None:
    with pytest.raises(ValueError):
        decode_command(b"\x00\x00\x00\x01\x04")
    with pytest.raises(ValueError):
        decode_command(b"")


def test_pdv_iteration() -> None:
    pdu = p_data_pdu(3, 0x02, b"abcd")
    items = [(cx, mch, bytes(d)) for cx, mch, d in iter_pdvs(bytearray(pdu[6:]))]
    assert items == [(3, 0x02, b"abcd")]
    with pytest.raises(PduError):
        list(iter_pdvs(bytearray(b"\x00\x00\x00\x09\x01\x00ab")))
