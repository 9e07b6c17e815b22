"""Hostile or broken data sets against a live node (``dicom-node serve`` on loopback).

Each case is sent by a real peer (pynetdicom streaming the bytes as they are,
or DCMTK storescu), gets its defined C-STORE status (PS3.4 B.2.3), and is
followed by a good instance that must still be stored.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pynetdicom._config
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from bench.synthetic import write_ct_series
from dicom_node.protocol import status as st
from dicom_node.protocol.file_meta import encode_file_meta
from storage.db import Database
from storage.intake import SEGMENT_BYTES
from storage.models import Instance
from tests.support.peers import NodeProcess, echoscu, free_port, sender_ae, storescu

pytestmark = [pytest.mark.network, pytest.mark.timeout(180)]

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
CT_FILE = "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm/I10"
MiB = 2**20


# -- helpers ----------------------------------------------------------------------


def instances(node: NodeProcess) -> dict[str, Instance]:
    db = Database(node.db_url)
    try:
        with db.session() as s:
            return {i.sop_instance_uid: i for i in s.scalars(select(Instance))}
    finally:
        db.dispose()


def ct_dataset(**overrides: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientID = "TEST"
    for k, v in overrides.items():
        setattr(ds, k, v)
    return ds


def encode(ds: Dataset) -> bytes:
    """Explicit VR Little Endian data set bytes (no file meta)."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return fp.getvalue()


class Item:
    """One C-STORE to send as it is: data set bytes (or a file of them) and the
    Affected UIDs its file meta names."""

    def __init__(
        self,
        data: bytes | Path,
        sop_instance_uid: str,
        *,
        sop_class_uid: str = CT_IMAGE,
        syntax: str = ExplicitVRLittleEndian,
    ) -> None:
        self.data = data
        self.sop_instance_uid = sop_instance_uid
        self.sop_class_uid = sop_class_uid
        self.syntax = syntax

    @classmethod
    def good(cls, ds: Dataset | None = None) -> Item:
        ds = ds or ct_dataset()
        return cls(encode(ds), str(ds.SOPInstanceUID))

    def write(self, folder: Path, n: int) -> Path:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = self.sop_class_uid
        meta.MediaStorageSOPInstanceUID = self.sop_instance_uid
        meta.TransferSyntaxUID = self.syntax
        buf = BytesIO()
        buf.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(buf, meta)
        path = folder / f"{n}.dcm"
        with path.open("wb") as fh:
            fh.write(buf.getvalue())
            if isinstance(self.data, Path):
                with self.data.open("rb") as src:
                    shutil.copyfileobj(src, fh, 4 * MiB)
            else:
                fh.write(self.data)
        return path


def send(port: int, items: list[Item], calling_ae: str = "RAWSCU") -> list[Dataset]:
    """Send *items* on one association with pynetdicom, each data set exactly as given;
    returns each C-STORE response (Status and Error Comment)."""
    ae = sender_ae(calling_ae)
    ae.maximum_pdu_size = 256 * 1024
    for syntax in sorted({i.syntax for i in items}):
        ae.add_requested_context(CT_IMAGE, syntax)
    old = pynetdicom._config.STORE_SEND_CHUNKED_DATASET
    pynetdicom._config.STORE_SEND_CHUNKED_DATASET = True
    out: list[Dataset] = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = [item.write(Path(tmp), n) for n, item in enumerate(items)]
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_NODE")
        assert assoc.is_established
        try:
            for path in paths:
                rsp = assoc.send_c_store(path)
                status = Dataset()
                status.Status = rsp.get("Status", -1)
                status.ErrorComment = rsp.get("ErrorComment", "")
                out.append(status)
        finally:
            pynetdicom._config.STORE_SEND_CHUNKED_DATASET = old
            if assoc.is_established:
                assoc.release()
    return out


def peak_rss_mb(node: NodeProcess) -> float:
    """The node process's peak resident set (VmHWM), MB."""
    assert node.proc is not None
    for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def spool_part_files(node: NodeProcess) -> list[Path]:
    return list((node.spool / ".tmp").glob("*.part"))


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    n = NodeProcess(tmp_path / "node", free_port())
    with n:
        yield n


def started(tmp_path: Path, **extra: Any) -> NodeProcess:
    return NodeProcess(tmp_path / "node", free_port(), extra=extra)


def assert_still_serving(node: NodeProcess, dicom_data: Path) -> None:
    """A good instance from DCMTK storescu on a new association is still stored."""
    res = storescu(node.port, [dicom_data / CT_FILE])
    assert "Received Store Response (Success)" in res.stdout + res.stderr, res.stderr[-2000:]
    uid = str(dcmread(dicom_data / CT_FILE, stop_before_pixels=True).SOPInstanceUID)
    assert uid in instances(node)
    assert echoscu(node.port).returncode == 0


# -- 2. deflate bombs ------------------------------------------------------------------


def deflate_bomb(tag: int, inflated_mb: int) -> tuple[bytes, str]:
    """A Deflated Explicit VR LE data set whose element *tag* (OB) is *inflated_mb*
    of zeros: ~1 KB on the wire per MB inflated (PS3.5 A.5)."""
    ds = ct_dataset()
    head = encode(ds) + struct.pack("<HH2s2sL", tag >> 16, tag & 0xFFFF, b"OB", b"\0\0", 0)
    head = head[:-4] + struct.pack("<L", inflated_mb * MiB)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [deflater.compress(head)]
    zeros = bytes(MiB)
    parts += [deflater.compress(zeros) for _ in range(inflated_mb)]
    parts.append(deflater.flush())
    return b"".join(parts), str(ds.SOPInstanceUID)


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        (0x00420011, st.CANNOT_DECODE),  # Encapsulated Document, before Pixel Data: refused
        (0x7FE00010, st.SUCCESS),  # Pixel Data: the header ends before it; stored as sent
    ],
)
def test_deflate_bomb_keeps_memory_bounded(
    node: NodeProcess, dicom_data: Path, tag: int, expected: int
) -> None:
    """400 KB that inflate to 400 MB: the node inflates at most a few MB of it."""
    bomb, uid = deflate_bomb(tag, 400)
    assert len(bomb) < MiB
    warm = Item.good()
    assert [r.Status for r in send(node.port, [warm])] == [st.SUCCESS]
    before = peak_rss_mb(node)
    good = Item.good()
    statuses = send(node.port, [Item(bomb, uid, syntax=DeflatedExplicitVRLittleEndian), good])
    grown = peak_rss_mb(node) - before
    assert grown < 80, f"peak RSS grew by {grown:.0f} MB"
    assert statuses[0].Status == expected, statuses[0]
    assert statuses[1].Status == st.SUCCESS
    stored = instances(node)
    assert good.sop_instance_uid in stored
    assert (uid in stored) == (expected == st.SUCCESS)
    if expected == st.SUCCESS:  # stored as sent: the compressed bytes
        assert stored[uid].sha256 == hashlib.sha256(bomb).hexdigest()
    else:
        assert "MiB inflated" in statuses[0].ErrorComment
    assert not spool_part_files(node)
    assert_still_serving(node, dicom_data)
    assert "Traceback" not in node.log()


def test_deflated_syntax_refused_by_config(tmp_path: Path, dicom_data: Path) -> None:
    """``accept_deflated = false``: a Deflated presentation context is rejected."""
    with started(tmp_path, node={"accept_deflated": False}) as node:
        ae = sender_ae("RAWSCU")
        ae.add_requested_context(CT_IMAGE, DeflatedExplicitVRLittleEndian)
        ae.add_requested_context(CT_IMAGE, ImplicitVRLittleEndian)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOM_NODE")
        assert assoc.is_established
        try:
            accepted = {str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
            rejected = {str(cx.transfer_syntax[0]) for cx in assoc.rejected_contexts}
        finally:
            assoc.release()
        assert DeflatedExplicitVRLittleEndian in rejected
        assert DeflatedExplicitVRLittleEndian not in accepted
        assert ImplicitVRLittleEndian in accepted
        assert_still_serving(node, dicom_data)


# -- 4. data set size cap and free-space watermark while writing ------------------------


def test_data_set_over_the_size_cap_is_refused_and_the_association_goes_on(
    tmp_path: Path, dicom_data: Path
) -> None:
    big = write_ct_series(tmp_path / "big", n=1, rows=1024, cols=1024)[0]  # ~2 MB
    assert big.stat().st_size > 2 * MiB
    with started(tmp_path, node={"max_dataset_mb": 1}) as node:
        res = storescu(node.port, [big, dicom_data / CT_FILE])  # one association
        out = res.stdout + res.stderr
        assert "Refused: OutOfResources" in out, out[-2000:]  # 0xA700
        assert out.count("Received Store Response (Success)") == 1, out[-2000:]
        uid = str(dcmread(dicom_data / CT_FILE, stop_before_pixels=True).SOPInstanceUID)
        assert set(instances(node)) == {uid}
        assert not spool_part_files(node)
        assert_still_serving(node, dicom_data)
    assert "max_dataset_mb" in node.log()


def write_large_dataset(path: Path, mb: int) -> Item:
    """A CT data set with *mb* MB of (zero) Pixel Data, written without holding it."""
    ds = ct_dataset()
    with path.open("wb") as fh:
        fh.write(encode(ds))
        fh.write(struct.pack("<HH2s2sL", 0x7FE0, 0x0010, b"OW", b"\0\0", mb * MiB))
        zeros = bytes(MiB)
        for _ in range(mb):
            fh.write(zeros)
    return Item(path, str(ds.SOPInstanceUID))


def test_watermark_holds_while_a_large_data_set_arrives(tmp_path: Path, dicom_data: Path) -> None:
    """Free space is checked every ``disk_check_mb`` while writing, not after the end."""
    item = write_large_dataset(tmp_path / "large.bin", 240)
    margin_mb, step_mb = 40, 4
    # The node preallocates one intake journal segment when it starts.
    free_mb = (shutil.disk_usage(tmp_path).free - SEGMENT_BYTES) // MiB
    extra = {"disk_check_mb": step_mb}
    with started(tmp_path, node=extra, storage={"min_free_disk_mb": free_mb - margin_mb}) as node:
        biggest = 0
        done = threading.Event()

        def watch() -> None:
            nonlocal biggest
            while not done.is_set():
                for part in spool_part_files(node):
                    try:
                        biggest = max(biggest, part.stat().st_size)
                    except FileNotFoundError:
                        pass
                time.sleep(0.005)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            (rsp,) = send(node.port, [item])
        finally:
            done.set()
            watcher.join()
        assert rsp.Status == st.OUT_OF_RESOURCES, rsp
        # Old behaviour: all 240 MB written, then refused.  Now: stopped within a step
        # or two past the watermark (plus what the watcher cannot see between polls).
        assert biggest < (margin_mb + 3 * step_mb + 16) * MiB, biggest / MiB
        assert not spool_part_files(node)
        assert item.sop_instance_uid not in instances(node)
        # The removed partial file's blocks count as free once the file system commits.
        deadline = time.monotonic() + 30
        while shutil.disk_usage(tmp_path).free // MiB < free_mb - margin_mb + 8:
            assert time.monotonic() < deadline, "free space did not come back"
            os.sync()
            time.sleep(0.2)
        time.sleep(0.6)  # the node caches free space for 0.5 s
        assert_still_serving(node, dicom_data)
    assert "free-space watermark" in node.log()


# -- 7. unknown explicit VR ---------------------------------------------------------------


def test_unknown_vr_in_a_series_first_instance_is_stored(
    node: NodeProcess, dicom_data: Path
) -> None:
    ds = ct_dataset(SeriesDescription="odd VR")
    raw = encode(ds)
    at = raw.index(struct.pack("<HH", 0x0020, 0x000D))  # before Study Instance UID
    odd = struct.pack("<HH2sH", 0x0018, 0x9999, b"Da", 4) + b"ABCD"  # unknown VR 'Da'
    (rsp,) = send(node.port, [Item(raw[:at] + odd + raw[at:], str(ds.SOPInstanceUID))])
    assert rsp.Status == st.SUCCESS, rsp
    inst = instances(node)[str(ds.SOPInstanceUID)]
    assert inst.sha256 == hashlib.sha256(raw[:at] + odd + raw[at:]).hexdigest()
    log = node.log()
    assert log.count("skipped 1 element(s) that cannot be read") == 1
    assert "(0018,9999) VR 'Da'" in log
    assert "Traceback" not in log and "ERROR" not in log
    assert_still_serving(node, dicom_data)


# -- 8. non-ASCII Affected SOP Instance UID ------------------------------------------------


def test_non_ascii_affected_uid_gets_a_failure_status(node: NodeProcess, dicom_data: Path) -> None:
    ds = ct_dataset()
    ds.SOPInstanceUID = "1.2.3.4"
    weird = "1.2.3.\u00e94"  # é: one byte in the command (ISO 8859-1), not a UID character
    good = Item.good()
    statuses = send(node.port, [Item(encode(ds), weird), good])  # one association
    assert statuses[0].Status == st.INVALID_UID, statuses[0]
    assert "Affected SOP Instance UID" in statuses[0].ErrorComment
    assert statuses[1].Status == st.SUCCESS
    assert set(instances(node)) == {good.sop_instance_uid}
    log = node.log()
    assert log.count("refused with 0xC005") == 1
    assert "Traceback" not in log and "aborting" not in log
    assert_still_serving(node, dicom_data)


# -- 9. hashed spool names cannot collide ---------------------------------------------------


def test_a_uid_equal_to_another_uids_hashed_name_is_stored_separately(
    tmp_path: Path, dicom_data: Path
) -> None:
    unsafe = "1.2.3/4"
    digest = hashlib.sha1(unsafe.encode()).hexdigest()
    study, series = generate_uid(), generate_uid()
    with started(tmp_path, node={"uid_policy": "warn"}) as node:
        items = [
            Item.good(ct_dataset(SOPInstanceUID=uid, StudyInstanceUID=study,
                                 SeriesInstanceUID=series))
            for uid in (unsafe, "x" + digest, "@" + digest)
        ]  # fmt: skip
        statuses = send(node.port, items)
        assert [r.Status for r in statuses] == [st.SUCCESS] * 3
        stored = instances(node)
        assert len({stored[i.sop_instance_uid].path for i in items}) == 3
        for item in items:
            f = node.spool / stored[item.sop_instance_uid].path
            assert f.read_bytes().endswith(item.data)  # type: ignore[arg-type]
            assert str(dcmread(f).SOPInstanceUID) == item.sop_instance_uid
        assert_still_serving(node, dicom_data)


# -- 10. orphan spool files -------------------------------------------------------------------


def test_orphan_spool_files_are_reconciled_at_start(tmp_path: Path, dicom_data: Path) -> None:
    node = started(tmp_path)
    with node:
        assert [r.Status for r in send(node.port, [Item.good()])] == [st.SUCCESS]
    # As if killed between placing a file and committing its row: a file that
    # parses, and one that does not.
    ds = ct_dataset(SeriesDescription="orphan")
    orphan_uid = str(ds.SOPInstanceUID)
    rel = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{orphan_uid}.dcm"
    (node.spool / rel).parent.mkdir(parents=True)
    meta = encode_file_meta(CT_IMAGE, orphan_uid, ExplicitVRLittleEndian, "SCANNER_7")
    (node.spool / rel).write_bytes(meta + encode(ds))
    junk = "1.2.3/1.2.4/1.2.5.dcm"
    (node.spool / junk).parent.mkdir(parents=True)
    (node.spool / junk).write_bytes(b"not DICOM at all" * 10)
    with node:
        stored = instances(node)
        assert orphan_uid in stored
        assert stored[orphan_uid].path == rel
        assert stored[orphan_uid].calling_ae == "SCANNER_7"
        assert stored[orphan_uid].sha256 == hashlib.sha256(encode(ds)).hexdigest()
        assert (node.spool / rel).is_file()
        assert not (node.spool / junk).exists()
        assert (node.spool / ".quarantine" / junk).read_bytes().startswith(b"not DICOM")
        assert_still_serving(node, dicom_data)
    log = node.log()
    assert (
        "2 without a database row: 1 registered, 0 already recorded elsewhere, 1 quarantined" in log
    )
    assert "spool reconciled" in log


# -- 11. UID validation ------------------------------------------------------------------------

INVALID = {
    "path": "/etc/passwd",
    "dots": "..",
    "shell": "$(touch x)",
    "leading zero": "1.2.03.4",
    "empty component": "1.2..4",
    "letters": "1.2.abc",
}
RLM = "1.2.\u200f3"  # a right-to-left mark: never acceptable


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_invalid_uids_are_refused_in_strict_mode(
    node: NodeProcess, dicom_data: Path, keyword: str
) -> None:
    items, names = [], []
    for name, value in [*INVALID.items(), ("rlm", RLM)]:
        ds = ct_dataset()
        setattr(ds, keyword, value)
        items.append(_item_any(ds))
        names.append(name)
    good = Item.good()
    statuses = send(node.port, [*items, good])
    for name, rsp in zip(names, statuses[:-1], strict=True):
        assert rsp.Status == st.INVALID_UID, (name, rsp)
        assert "PS3.5 9.1" in rsp.ErrorComment or "UID" in rsp.ErrorComment
    assert statuses[-1].Status == st.SUCCESS
    assert set(instances(node)) == {good.sop_instance_uid}
    assert "Traceback" not in node.log()
    assert_still_serving(node, dicom_data)


def test_invalid_uids_are_accepted_with_a_warning_in_warn_mode(
    tmp_path: Path, dicom_data: Path
) -> None:
    with started(tmp_path, node={"uid_policy": "warn"}) as node:
        items = []
        for value in INVALID.values():
            ds = ct_dataset()
            ds.StudyInstanceUID = value
            items.append(Item(encode(ds), str(ds.SOPInstanceUID)))
        ds = ct_dataset()
        ds.StudyInstanceUID = RLM
        rlm = _item_any(ds)
        statuses = send(node.port, [*items, rlm])
        assert [r.Status for r in statuses[:-1]] == [st.SUCCESS] * len(items)
        assert statuses[-1].Status == st.INVALID_UID  # not ASCII: refused in every mode
        stored = instances(node)
        assert {i.sop_instance_uid for i in items} <= set(stored)
        assert rlm.sop_instance_uid not in stored
        for item in items:  # the unsafe values never reach a path
            p = (node.spool / stored[item.sop_instance_uid].path).resolve()
            assert p.is_relative_to(node.spool.resolve())
        assert_still_serving(node, dicom_data)
    log = node.log()
    assert log.count("accepted with invalid UID(s) (uid_policy = warn)") == 1  # per association
    assert not (Path.cwd() / "x").exists()


def test_uid_policy_per_peer(tmp_path: Path, dicom_data: Path) -> None:
    peers = [
        {"ae_title": "LEGACY", "uid_policy": "warn"},
        {"ae_title": "RAWSCU"},
        {"ae_title": "STORESCU"},
        {"ae_title": "ECHOSCU"},
    ]
    with started(tmp_path, peers=peers) as node:
        ds = ct_dataset(StudyInstanceUID="1.2.03.4")
        item = Item(encode(ds), str(ds.SOPInstanceUID))
        assert send(node.port, [item])[0].Status == st.INVALID_UID
        assert send(node.port, [item], calling_ae="LEGACY")[0].Status == st.SUCCESS
        assert_still_serving(node, dicom_data)


def _item_any(ds: Dataset) -> Item:
    """An item for *ds* whose UI values are written byte for byte (UTF-8), even those no
    UID may hold; the command then names an ASCII stand-in for such a SOP Instance UID."""
    swapped: dict[str, str] = {}
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        value = str(ds.get(kw, ""))
        if not value.isascii():
            placeholder = "9" * len(value.encode())
            swapped[placeholder] = value
            setattr(ds, kw, placeholder)
    affected = str(ds.SOPInstanceUID)
    raw = encode(ds)
    for placeholder, value in swapped.items():
        raw = raw.replace(placeholder.encode(), value.encode())
    return Item(raw, affected)
