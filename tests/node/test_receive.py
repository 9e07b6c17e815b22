"""The Storage SCP against real senders: DCMTK storescu/echoscu and a pynetdicom SCU.

The node runs as a subprocess (``dicom-node serve``) with its own config on a
free loopback port; every test checks the spool files and database rows it
left behind.
"""

from __future__ import annotations

import csv
import hashlib
import os
import signal
import subprocess
import tempfile
import time
from io import BytesIO
from pathlib import Path

import pynetdicom._config
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble  # type: ignore[attr-defined]
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from bench.synthetic import write_ct_series
from dicom_node.protocol import status as st
from storage.db import Database
from storage.models import Instance, Series
from tests.support.peers import (
    NodeProcess,
    echoscu,
    free_port,
    sender_ae,
    storescu,
    storescu_as_is,
)

pytestmark = [pytest.mark.network]

CT_SERIES = "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm"


def dataset_sha256(path: Path) -> tuple[str, str]:
    """(sha256 of the data set after the file meta group, transfer syntax UID)."""
    raw = path.read_bytes()
    fp = BytesIO(raw)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    return hashlib.sha256(raw[fp.tell() :]).hexdigest(), str(meta.TransferSyntaxUID)


def instances(node: NodeProcess) -> dict[str, Instance]:
    db = Database(node.db_url)
    try:
        with db.session() as s:
            return {i.sop_instance_uid: i for i in s.scalars(select(Instance))}
    finally:
        db.dispose()


@pytest.fixture
def node(tmp_path: Path) -> NodeProcess:
    n = NodeProcess(tmp_path / "node", free_port())
    with n:
        yield n


def manifest_rows(data: Path) -> list[dict[str, str]]:
    with (data / "manifest.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_echo(node: NodeProcess) -> None:
    result = echoscu(node.port)
    assert result.returncode == 0, result.stderr


def good_files(data: Path) -> list[dict[str, str]]:
    """Manifest rows of well-formed storage objects (not under bad/)."""
    return [
        r
        for r in manifest_rows(data)
        if "/bad/" not in r["path"]
        and r["sop_class_uid"]
        and r["transfer_syntax_uid"]
        and r["sop_class_uid"].startswith("1.2.840.10008.5.1.4.1.1.")
    ]


def expected_instances(data: Path, rows: list[dict[str, str]]) -> tuple[dict[str, list[Path]], int]:
    """SOP Instance UID -> files that carry it; and how many files lack a required UID."""
    by_uid: dict[str, list[Path]] = {}
    lacking = 0
    for r in rows:
        path = data / r["path"]
        ds = dcmread(path, stop_before_pixels=True)
        if not all(ds.get(k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")):
            lacking += 1  # real files do lack UIDs: refused with a reason
            continue
        by_uid.setdefault(str(ds.SOPInstanceUID), []).append(path)
    return by_uid, lacking


def test_every_shared_file_is_stored_byte_identical(
    node: NodeProcess, dicom_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sender that sends each file's data set as it is: the node stores exactly those bytes."""
    # pynetdicom then streams the bytes after the file meta instead of re-encoding.
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    rows = good_files(dicom_data)
    assert len(rows) > 150
    contexts = sorted({(r["sop_class_uid"], r["transfer_syntax_uid"]) for r in rows})
    ae = sender_ae("PYNETDICOM")
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOM_NODE")
    assert assoc.is_established
    statuses: dict[str, int] = {}
    try:
        for r in rows:
            rsp = assoc.send_c_store(dicom_data / r["path"])
            statuses[r["path"]] = int(rsp.Status)
    finally:
        assoc.release()
    # This sender takes the Affected SOP Instance UID from the file meta; real files
    # exist whose meta disagrees with the data set, and those must be refused.
    meta_mismatch = []
    for r in rows:
        ds = dcmread(dicom_data / r["path"], stop_before_pixels=True)
        if ds.file_meta.MediaStorageSOPInstanceUID != ds.get("SOPInstanceUID"):
            meta_mismatch.append(r)
            assert statuses[r["path"]] == st.UID_MISMATCH, r["path"]
    assert meta_mismatch  # pydicom/other_modalities/rtdose.dcm
    rows = [r for r in rows if r not in meta_mismatch]
    by_uid, lacking = expected_instances(dicom_data, rows)
    stored = instances(node)
    assert set(stored) == set(by_uid)
    assert sum(1 for v in statuses.values() if v == st.MISSING_UID) == lacking
    assert all(v in (st.SUCCESS, st.MISSING_UID, st.UID_MISMATCH) for v in statuses.values()), (
        statuses
    )
    for uid, paths in by_uid.items():
        inst = stored[uid]
        f = node.spool / inst.path
        assert dataset_sha256(f) in [dataset_sha256(p) for p in paths], uid
        assert inst.receive_count == len(paths)
        assert inst.size_bytes == f.stat().st_size
        assert inst.sha256 == dataset_sha256(f)[0]
        assert inst.transfer_syntax_uid == dataset_sha256(f)[1]


def test_every_shared_file_from_storescu(node: NodeProcess, dicom_data: Path) -> None:
    """DCMTK storescu as the scanner: everything well-formed is stored; bad files get an outcome."""
    rows = good_files(dicom_data)
    by_syntax: dict[str, list[Path]] = {}
    for r in rows:
        by_syntax.setdefault(r["transfer_syntax_uid"], []).append(dicom_data / r["path"])
    unknown_to_dcmtk: list[Path] = []
    for syntax, paths in by_syntax.items():
        result = storescu_as_is(node.port, paths, syntax, timeout_s=300)
        out = result.stdout + result.stderr
        assert result.returncode == 0, out[-3000:]
        for line in out.splitlines():
            # DCMTK 3.6.7 does not know every storage SOP class (e.g. Label Map SEG).
            if "unknown storage SOP class in file:" in line:
                unknown_to_dcmtk.append(Path(line.split("in file:", 1)[1].split(":", 1)[0].strip()))
    for path in unknown_to_dcmtk:
        assert _pynetdicom_store(node.port, path) == 0, path
    by_uid, lacking = expected_instances(dicom_data, rows)
    stored = instances(node)
    assert set(stored) == set(by_uid)
    assert node.log().count("(Missing UID): missing or empty") == lacking
    for uid, paths in by_uid.items():
        f = node.spool / stored[uid].path
        got = dcmread(f, stop_before_pixels=True)
        # storescu re-encodes (sequence lengths, pixel padding), so compare the header
        # content here; exact bytes are checked with an exact sender above.
        assert any(got == dcmread(p, stop_before_pixels=True) for p in paths), uid

    # Rows carry what routing needs.
    db = Database(node.db_url)
    with db.session() as s:
        ct = s.scalars(select(Series).where(Series.series_description == "STD BRAIN 5MM")).one()
        assert ct.modality == "CT" and ct.manufacturer == "Philips"
        assert ct.calling_ae == "STORESCU" and ct.peer_address == "127.0.0.1"
        assert "ImageType" in ct.attributes and "PatientName" not in ct.attributes
        mg = s.scalars(select(Series).where(Series.body_part_examined == "BREAST")).one()
        assert mg.modality == "RG"
    db.dispose()

    # Bad files: one at a time, each gets a defined outcome; the node keeps serving.
    outcomes: dict[str, str] = {}
    for r in manifest_rows(dicom_data):
        if "/bad/" not in r["path"]:
            continue
        path = dicom_data / r["path"]
        before = instances(node)
        res = storescu_as_is(node.port, [path], r["transfer_syntax_uid"], timeout_s=60)
        out = res.stdout + res.stderr
        after = instances(node)
        received = sum(i.receive_count for i in after.values()) - sum(
            i.receive_count for i in before.values()
        )
        if "Received Store Response (Success)" in out:
            # Stored, or recorded as a re-send of an instance already there.
            assert received == 1, f"{r['path']}: success but not recorded"
            outcomes[r["path"]] = "stored"
        else:
            assert received == 0, f"{r['path']}: failure reported but something was recorded"
            outcomes[r["path"]] = "refused" if "Received Store Response" in out else "not sent"
        assert echoscu(node.port).returncode == 0, f"node stopped serving after {r['path']}"
    assert "refused" in outcomes.values() or "stored" in outcomes.values()
    assert "Traceback" not in node.log()


def test_duplicates_and_restart(tmp_path: Path, dicom_data: Path) -> None:
    node = NodeProcess(tmp_path / "node", free_port())
    series = dicom_data / CT_SERIES
    with node:
        assert storescu(node.port, [series]).returncode == 0
        first = instances(node)
        assert len(first) == 28
        assert storescu(node.port, [series]).returncode == 0
        again = instances(node)
        assert set(again) == set(first)
        assert {i.receive_count for i in again.values()} == {2}
    assert node.proc is not None and node.proc.returncode == 0
    # Restart: everything is still there and new sends are still deduplicated.
    with node:
        assert len(instances(node)) == 28
        assert storescu(node.port, [series / "I10"]).returncode == 0
        assert len(instances(node)) == 28
        res = subprocess.run(
            [*_cli(), "-c", str(node.config_path), "studies"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "250"},
        )
        assert res.returncode == 0, res.stderr
        assert "28" in res.stdout and "STD BRAIN 5MM" in res.stdout


def _cli() -> list[str]:
    import sys

    return [sys.executable, "-m", "dicom_node.cli"]


@pytest.mark.parametrize("receivers", [1, 2])
def test_four_concurrent_associations(tmp_path: Path, receivers: int) -> None:
    """Four storescu processes send overlapping parts of one series at once."""
    files = write_ct_series(tmp_path / "ct", n=120, rows=128, cols=128)
    parts = [files[k * 30 : k * 30 + 45] for k in range(4)]  # overlapping by 15
    node = NodeProcess(tmp_path / "node", free_port(), extra={"node": {"receivers": receivers}})
    with node:
        procs = [
            subprocess.Popen(
                [
                    "storescu",
                    "-aet",
                    f"SCU{k}",
                    "-aec",
                    "DICOM_NODE",
                    "127.0.0.1",
                    str(node.port),
                    *map(str, part),
                ],
                env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for k, part in enumerate(parts)
        ]
        for p in procs:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0, out.decode(errors="replace")[-2000:]
        stored = instances(node)
    assert len(stored) == 120
    sent = sum(len(p) for p in parts)
    assert sum(i.receive_count for i in stored.values()) == sent
    for f in files:
        uid = str(dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        assert stored[uid].sha256 == dataset_sha256(f)[0]
        assert dataset_sha256(node.spool / stored[uid].path)[0] == dataset_sha256(f)[0]
    assert "different content" not in node.log()  # same data set from another AE
    if receivers > 1:
        assert "receiver process 1 ready" in node.log()


def test_unknown_peers_are_rejected(tmp_path: Path) -> None:
    extra = {
        "peers": [
            {"ae_title": "CT_SCANNER", "host": "127.0.0.1"},
            {"ae_title": "ELSEWHERE", "host": "10.255.255.1"},
        ]
    }
    node = NodeProcess(tmp_path / "node", free_port(), extra=extra)
    with node:
        assert echoscu(node.port, calling_ae="CT_SCANNER").returncode == 0
        assert echoscu(node.port, calling_ae="INTRUDER").returncode != 0
        # Known AE title, wrong host.
        assert echoscu(node.port, calling_ae="ELSEWHERE").returncode != 0
        # Wrong called AE title.
        assert echoscu(node.port, calling_ae="CT_SCANNER", called_ae="OTHER").returncode != 0
        assert echoscu(node.port, calling_ae="CT_SCANNER").returncode == 0
    log = node.log()
    assert "unknown peer 'INTRUDER' at 127.0.0.1" in log
    assert "unknown peer 'ELSEWHERE' at 127.0.0.1" in log
    assert "called AE title 'OTHER' is not 'DICOM_NODE'" in log


def test_open_node_warns_at_startup(node: NodeProcess) -> None:
    assert "no [[peers]] configured" in node.log()


def test_free_space_watermark_answers_out_of_resources(tmp_path: Path, dicom_data: Path) -> None:
    extra = {"storage": {"min_free_disk_mb": 10**9}}
    node = NodeProcess(tmp_path / "node", free_port(), extra=extra)
    with node:
        res = storescu(node.port, [dicom_data / CT_SERIES / "I10"])
        assert "Refused: OutOfResources" in res.stdout + res.stderr, res.stderr  # 0xA700
        assert instances(node) == {}
        assert echoscu(node.port).returncode == 0
    assert "free-space watermark" in node.log()


def _pynetdicom_store(port: int, path: Path) -> int:
    """C-STORE one file as it is with pynetdicom (for SOP classes DCMTK does not know)."""
    ds = dcmread(path, stop_before_pixels=True)
    ae = sender_ae("PYNETDICOM")
    ae.add_requested_context(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_NODE")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(path)
        return int(rsp.Status)
    finally:
        assoc.release()


# -- malformed requests from a pynetdicom SCU (storescu will not send these) ---------


def _raw_store(port: int, dataset_bytes: bytes, sop_class: str, affected_uid: str) -> Dataset:
    """Send one C-STORE whose Data Set is exactly *dataset_bytes* (Explicit VR LE).

    The bytes go into a file whose meta names *affected_uid*; pynetdicom's
    chunked mode then sends them unchanged with that Affected SOP Instance UID.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = affected_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "raw.dcm"
        path.write_bytes(buf.getvalue() + dataset_bytes)
        ae = sender_ae("RAWSCU")
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        old = pynetdicom._config.STORE_SEND_CHUNKED_DATASET
        pynetdicom._config.STORE_SEND_CHUNKED_DATASET = True
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_NODE")
        assert assoc.is_established
        try:
            rsp = assoc.send_c_store(path)
        finally:
            pynetdicom._config.STORE_SEND_CHUNKED_DATASET = old
            assoc.release()
    out = Dataset()
    out.Status = rsp.Status
    out.ErrorComment = rsp.get("ErrorComment", "")
    return out


def _encode(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return fp.getvalue()


def _ct_dataset(**overrides: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientID = "TEST"
    for k, v in overrides.items():
        setattr(ds, k, v)
    return ds


@pytest.mark.parametrize(
    ("overrides", "status", "reason"),
    [
        ({"StudyInstanceUID": ""}, st.MISSING_UID, "StudyInstanceUID"),
        ({"SeriesInstanceUID": ""}, st.MISSING_UID, "SeriesInstanceUID"),
        ({"SOPInstanceUID": ""}, st.MISSING_UID, "SOPInstanceUID"),
    ],
)
def test_missing_uids_are_refused(
    node: NodeProcess, overrides: dict[str, str], status: int, reason: str
) -> None:
    ds = _ct_dataset(**overrides)
    affected = str(ds.SOPInstanceUID) or generate_uid()
    rsp = _raw_store(node.port, _encode(ds), str(ds.SOPClassUID), affected)
    assert rsp.Status == status
    assert reason in rsp.ErrorComment
    assert instances(node) == {}
    assert echoscu(node.port).returncode == 0


def test_uid_mismatch_is_refused(node: NodeProcess) -> None:
    ds = _ct_dataset()
    rsp = _raw_store(node.port, _encode(ds), str(ds.SOPClassUID), generate_uid())
    assert rsp.Status == st.UID_MISMATCH
    assert instances(node) == {}


def test_unparseable_dataset_is_refused(node: NodeProcess) -> None:
    good = _encode(_ct_dataset())
    garbage = good[:20] + b"\xff\xff\xff\xff" + b"\x00" * 7
    rsp = _raw_store(node.port, garbage, "1.2.840.10008.5.1.4.1.1.2", generate_uid())
    assert rsp.Status in (st.CANNOT_DECODE, st.MISSING_UID)
    assert rsp.ErrorComment
    assert instances(node) == {}
    assert echoscu(node.port).returncode == 0


def test_duplicate_with_different_content_policy_reject(tmp_path: Path) -> None:
    node = NodeProcess(
        tmp_path / "node", free_port(), extra={"node": {"duplicate_policy": "reject"}}
    )
    ds = _ct_dataset()
    with node:
        uid = str(ds.SOPInstanceUID)
        assert _raw_store(node.port, _encode(ds), str(ds.SOPClassUID), uid).Status == 0
        assert _raw_store(node.port, _encode(ds), str(ds.SOPClassUID), uid).Status == 0
        ds.SeriesDescription = "changed"
        rsp = _raw_store(node.port, _encode(ds), str(ds.SOPClassUID), uid)
        assert rsp.Status == st.DUPLICATE_DIFFERS
        (inst,) = instances(node).values()
        assert inst.receive_count == 2


# -- shutdown ---------------------------------------------------------------------


def _acknowledged(storescu_output: str) -> list[str]:
    """Files storescu saw acknowledged with Success, from its verbose log."""
    acked: list[str] = []
    current: str | None = None
    for line in storescu_output.splitlines():
        if "Sending file:" in line:
            current = line.split("Sending file:", 1)[1].strip()
        elif "Received Store Response" in line and "Success" in line and current:
            acked.append(current)
            current = None
    return acked


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_signal_during_transfer_loses_nothing_acknowledged(tmp_path: Path, sig: int) -> None:
    files = write_ct_series(tmp_path / "ct", n=300, rows=256, cols=256)
    node = NodeProcess(tmp_path / "node", free_port())
    node.start()
    try:
        proc = subprocess.Popen(
            ["storescu", "-v", "-aec", "DICOM_NODE", "127.0.0.1", str(node.port), *map(str, files)],
            env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # Wait until some instances are through, then signal the node mid-transfer.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(instances(node)) < 20:
            time.sleep(0.02)
        assert node.proc is not None
        node.proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
        node.proc.wait(60)
    finally:
        node.kill()
    acked = _acknowledged(out)
    assert acked, out[-2000:]
    if sig == signal.SIGTERM:
        assert node.proc.returncode == 0, node.log()[-3000:]
    with node:  # restart on the same spool and database
        stored = instances(node)
        uid_of = {str(f): str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
        for path in acked:
            uid = uid_of[path]
            assert uid in stored, f"acknowledged {path} was lost"
            f = node.spool / stored[uid].path
            assert dataset_sha256(f)[0] == stored[uid].sha256
        # Nothing half-written is left where it could be mistaken for data.
        assert not list((node.spool / ".tmp").glob("*.part"))
