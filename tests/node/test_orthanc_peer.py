"""A real Orthanc PACS as the archive: the node's sender and DCMTK storescu against it.

Orthanc runs as a subprocess (:mod:`tests.support.orthanc`) on free loopback
ports; every test checks what Orthanc's REST API says it stored.
"""

from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_node.deliver.scu import DicomPeer, send_files
from dicom_node.errors import AssociationRejectedError
from tests.support.orthanc import OrthancServer
from tests.support.peers import storescu

pytestmark = [pytest.mark.network]

CT_SERIES = "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm"


def ct_files(data: Path, count: int) -> list[Path]:
    files = sorted(f for f in (data / CT_SERIES).iterdir() if f.is_file())
    assert len(files) >= count
    return files[:count]


def peer(orthanc: OrthancServer) -> DicomPeer:
    return DicomPeer(orthanc.ae_title, "127.0.0.1", orthanc.dicom_port)


def sop_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def by_sop_uid(orthanc: OrthancServer) -> dict[str, str]:
    """SOP Instance UID -> Orthanc ID of every stored instance."""
    return {str(i["MainDicomTags"]["SOPInstanceUID"]): i["ID"] for i in orthanc.find_instances()}


def test_send_files_and_storescu_store_in_orthanc(
    orthanc_server: OrthancServer,
    dicom_data: Path,
) -> None:
    orthanc = orthanc_server
    files = ct_files(dicom_data, 5)
    ours, theirs = files[:3], files[3:]

    report = send_files(peer(orthanc), ours, timeout_s=10)
    assert (report.sent, report.failed, report.warnings) == (3, [], []), orthanc.log_tail()
    result = storescu(orthanc.dicom_port, theirs, called_ae=orthanc.ae_title, timeout_s=60)
    assert result.returncode == 0, result.stderr + result.stdout

    stored = by_sop_uid(orthanc)
    sources = {sop_uid(f): f for f in files}
    assert set(stored) == set(sources)
    assert orthanc.count_instances() == len(orthanc.instances()) == len(files)
    for uid, orthanc_id in stored.items():
        source = dcmread(sources[uid])
        got = dcmread(BytesIO(orthanc.instance_file(orthanc_id)))
        assert got.SOPInstanceUID == uid
        assert got.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
        assert got.PixelData == source.PixelData
        tags = orthanc.instance_tags(orthanc_id)
        assert tags["SOPInstanceUID"] == uid
        assert tags["StudyInstanceUID"] == source.StudyInstanceUID
        calling = "DICOM_NODE" if sources[uid] in ours else "STORESCU"
        assert orthanc.instance_metadata(orthanc_id)["RemoteAET"] == calling

    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    series = orthanc.series_of_study(study_uid)
    assert len(series) == 1
    assert len(series[0]["Instances"]) == len(files)
    first_uid = sop_uid(files[0])
    [found] = orthanc.find_instances(SOPInstanceUID=first_uid)
    assert found["ID"] == stored[first_uid]
    assert [(r["Type"], r["ID"]) for r in orthanc.lookup(first_uid)] == [
        ("Instance", stored[first_uid])
    ]
    assert orthanc.sop_instance_uids() == set(sources)


def test_same_sop_instance_twice_is_success_and_keeps_the_first(
    orthanc_server: OrthancServer,
    dicom_data: Path,
    tmp_path: Path,
) -> None:
    orthanc = orthanc_server
    [original] = ct_files(dicom_data, 1)
    first = send_files(peer(orthanc), [original], timeout_s=10)
    changed = tmp_path / "changed.dcm"
    ds = dcmread(original)
    ds.SeriesDescription = "CHANGED BY THE TEST"
    ds.save_as(changed)
    again = send_files(peer(orthanc), [original, changed], timeout_s=10)

    # C-STORE success (0x0000, no warning) each time; Orthanc keeps the first copy.
    assert (first.sent, first.failed, first.warnings) == (1, [], [])
    assert (again.sent, again.failed, again.warnings) == (2, [], [])
    assert orthanc.count_instances() == 1
    [orthanc_id] = orthanc.instances()
    assert orthanc.instance_tags(orthanc_id)["SeriesDescription"] == original_description(original)
    assert [c["ChangeType"] for c in orthanc.changes()["Changes"]].count("NewInstance") == 1


def original_description(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SeriesDescription)


def test_archive_down_then_back_with_the_same_storage(
    orthanc_server: OrthancServer,
    dicom_data: Path,
) -> None:
    orthanc = orthanc_server
    files = ct_files(dicom_data, 3)
    report = send_files(peer(orthanc), files[:2], timeout_s=10)
    assert report.sent == 2
    before = sorted(orthanc.instances())
    port = orthanc.dicom_port

    orthanc.stop()
    assert not orthanc.running
    t0 = time.monotonic()
    with pytest.raises(AssociationRejectedError):
        send_files(peer(orthanc), files[2:], timeout_s=5)
    assert time.monotonic() - t0 < 10  # a closed port is refused at once

    orthanc.start()
    assert orthanc.dicom_port == port
    assert sorted(orthanc.instances()) == before
    report = send_files(peer(orthanc), files[2:], timeout_s=10)
    assert (report.sent, report.failed) == (1, [])
    assert set(by_sop_uid(orthanc)) == {sop_uid(f) for f in files}


def test_dicomweb_lists_the_study(tmp_path: Path, dicom_data: Path) -> None:
    files = ct_files(dicom_data, 2)
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with OrthancServer(tmp_path / "orthanc", "PACS", dicomweb=True) as orthanc:
        assert orthanc.ae_title == "PACS"
        report = send_files(peer(orthanc), files, timeout_s=10)
        assert report.sent == len(files)
        studies = orthanc.get_json("/dicom-web/studies")
        assert isinstance(studies, list)
        assert [s["0020000D"]["Value"][0] for s in studies] == [study_uid]
        instances = orthanc.get_json(f"/dicom-web/studies/{study_uid}/instances")
        assert {i["00080018"]["Value"][0] for i in instances} == {sop_uid(f) for f in files}
    assert not orthanc.running
