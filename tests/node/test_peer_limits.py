"""Per-peer limits (associations per Calling AE Title, every length a peer announces)
and the audit of what an association stored.

A real node on 127.0.0.1 is talked to through raw sockets.  Each length a
peer announces -- the PDU length, a PDV item's length inside a P-DATA-TF
(PS3.8 9.3.5.1), an element's length inside the command set (PS3.7 E.1), a
variable item's length inside the A-ASSOCIATE-RQ (PS3.8 9.3.2) -- is set to
about 4 GB with nothing behind it: the node must refuse it (A-ABORT or
A-ASSOCIATE-RJ) with one log line, without its resident memory growing, and
go on serving (a DCMTK ``echoscu`` still succeeds).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydicom import dcmread
from pydicom.filereader import _read_file_meta_info, read_preamble  # type: ignore[attr-defined]

from dicom_node.config import NodeSettings
from storage.audit import AuditEntry, AuditFilter, AuditStore
from storage.db import Database
from tests.node.test_hostile_peers import (
    A_ABORT,
    A_ASSOCIATE_AC,
    assert_echo,
    associate_rq,
    connect,
    recv_pdu,
    rj_fields,
    vm_rss_mb,
)
from tests.support.peers import NodeProcess, free_port, storescu

pytestmark = [pytest.mark.network]

CT_SERIES = "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm"
MAX_PDU = 16384
PER_AE = 2
FOUR_GB = 0xFFFFFFF0
CONNECTIONS = 12
"""Connections that each announce ~4 GB at once in the memory tests."""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    settings = {
        "max_pdu": MAX_PDU,
        "max_associations": 16,
        "max_associations_per_ae": PER_AE,
        "max_connections": 48,
        "max_connections_per_host": 32,
        "acse_timeout": 3,
        "dimse_timeout": 3,
        "network_timeout": 6,
    }
    n = NodeProcess(
        tmp_path_factory.mktemp("limits") / "node", free_port(), extra={"node": settings}
    )
    with n:
        yield n
    assert "Traceback" not in n.log()


def associate(port: int, calling: str) -> tuple[socket.socket, tuple[int, bytes] | None]:
    sock = connect(port)
    sock.sendall(associate_rq(calling=calling))
    return sock, recv_pdu(sock)


def audit_rows(node: NodeProcess, event: str) -> list[AuditEntry]:
    db = Database(node.db_url)
    try:
        return AuditStore(db).query(AuditFilter(events=[event]), limit=1000)
    finally:
        db.dispose()


def wait_for(check: Callable[[], object], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


# -- associations per Calling AE Title ------------------------------------------------------


def test_associations_per_calling_ae_are_limited(node: NodeProcess) -> None:
    mark = len(node.log())
    held = []
    try:
        for _ in range(PER_AE):
            sock, reply = associate(node.port, "BUSY_AE")
            held.append(sock)
            assert reply is not None and reply[0] == A_ASSOCIATE_AC, reply
        sock, reply = associate(node.port, "BUSY_AE")
        held.append(sock)
        # transient, service provider (presentation), local-limit-exceeded (PS3.8 9.3.4)
        assert rj_fields(reply) == (2, 3, 2)
        line = next(
            line for line in node.log()[mark:].splitlines() if "rejected association" in line
        )
        assert "2 associations already open from calling AE 'BUSY_AE'" in line
        assert "(max_associations_per_ae)" in line
        # Another AE title from the same address is not affected.
        sock, reply = associate(node.port, "OTHER_AE")
        held.append(sock)
        assert reply is not None and reply[0] == A_ASSOCIATE_AC, reply
    finally:
        for sock in held:
            sock.close()

    def rejected() -> list[AuditEntry]:
        return [r for r in audit_rows(node, "association-rejected") if r.actor == "BUSY_AE"]

    wait_for(lambda: rejected())
    row = rejected()[0]
    assert row.outcome == 4 and row.actor_kind == "ae" and row.address == "127.0.0.1"
    assert row.detail["limit"] == "max_associations_per_ae"
    assert "max_associations_per_ae" in row.detail["reason"]
    assert row.detail["called_ae"] == "DICOM_NODE" and row.detail["tls"] is False
    accepted = [r for r in audit_rows(node, "association-accepted") if r.actor == "BUSY_AE"]
    assert len(accepted) == PER_AE
    # Once they are gone, the AE title is welcome again.
    wait_for(lambda: node.log()[mark:].count("association closed by peer from BUSY_AE") == PER_AE)
    sock, reply = associate(node.port, "BUSY_AE")
    with sock:
        assert reply is not None and reply[0] == A_ASSOCIATE_AC, reply


def test_a_flood_beyond_the_connection_limits_is_audited_once_a_second(node: NodeProcess) -> None:
    """Refusals in the accept loop are audited at most once a second, the next
    event counting those left out (a flood must not flood the audit trail)."""
    per_host = 32  # max_connections_per_host of the module's node

    def refused_rows() -> list[AuditEntry]:
        return [
            r
            for r in audit_rows(node, "association-rejected")
            if r.detail.get("limit") == "max_connections_per_host"
        ]

    time.sleep(1.1)  # nothing audited in the last second
    before = len(refused_rows())
    idle = [connect(node.port) for _ in range(per_host)]  # never associating
    try:
        for _ in range(5):
            with connect(node.port) as sock:
                assert rj_fields(recv_pdu(sock)) == (2, 3, 2)
        time.sleep(1.1)
        with connect(node.port) as sock:
            assert rj_fields(recv_pdu(sock)) == (2, 3, 2)
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: len(refused_rows()) >= before + 2)
    time.sleep(0.5)
    rows = refused_rows()
    assert len(rows) == before + 2, [r.detail for r in rows]
    assert rows[0].detail["similar_refusals_not_audited"] == 4  # newest first
    assert "similar_refusals_not_audited" not in rows[1].detail
    assert "max_connections_per_host" in rows[0].detail["reason"]


# -- announced lengths ----------------------------------------------------------------------


def _p_data(body: bytes) -> bytes:
    return struct.pack(">BxL", 0x04, len(body)) + body


def _command_pdv(command: bytes) -> bytes:
    """One PDV item carrying a whole command set on context 1 (PS3.8 E.2)."""
    return struct.pack(">LBB", len(command) + 2, 1, 0x03) + command


CASES = {
    # P-DATA-TF header announcing ~4 GB, then nothing.
    "pdu-length": (struct.pack(">BxL", 0x04, FOUR_GB), "exceeds the negotiated maximum"),
    # A PDV item announcing ~4 GB inside a 12-byte P-DATA-TF.
    "pdv-item-length": (
        _p_data(struct.pack(">LBB", FOUR_GB, 1, 0x03) + b"\0" * 6),
        f"invalid PDV item length {FOUR_GB}",
    ),
    # A command element (0000,0002) announcing ~4 GB inside a small command set.
    "command-element-length": (
        _p_data(_command_pdv(struct.pack("<HHL", 0x0000, 0x0002, FOUR_GB) + b"1.2")),
        "undecodable command set",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_announced_4_gb_after_association_is_aborted_without_allocating(
    node: NodeProcess, case: str
) -> None:
    assert node.proc is not None
    data, expected = CASES[case]
    assert_echo(node.port)
    before = vm_rss_mb(node.proc.pid)
    mark = len(node.log())
    socks = []
    try:
        for i in range(CONNECTIONS):
            sock, reply = associate(node.port, f"LEN{i}")
            socks.append(sock)
            assert reply is not None and reply[0] == A_ASSOCIATE_AC, reply
            sock.sendall(data)
        replies = [recv_pdu(sock) for sock in socks]
        after = vm_rss_mb(node.proc.pid)
    finally:
        for sock in socks:
            sock.close()
    assert all(r is not None and r[0] == A_ABORT for r in replies), replies
    assert after - before < 24, f"RSS {before:.0f} MB -> {after:.0f} MB"
    log = node.log()[mark:]
    assert log.count(expected) == CONNECTIONS, log
    assert_echo(node.port)


def test_associate_rq_item_announcing_more_than_the_pdu_is_refused(node: NodeProcess) -> None:
    """A variable item of the A-ASSOCIATE-RQ (PS3.8 9.3.2.1) claiming 65535 bytes
    at the end of a short PDU, and an RQ header announcing ~4 GB."""
    assert node.proc is not None
    before = vm_rss_mb(node.proc.pid)
    mark = len(node.log())
    rq = bytearray(associate_rq(calling="ITEM_LEN"))
    # The user information item (0x50) comes last: make its length run past the PDU.
    user_info = rq.rindex(b"\x50\x00")
    rq[user_info + 2 : user_info + 4] = b"\xff\xff"
    sock = connect(node.port)
    with sock:
        sock.sendall(bytes(rq))
        reply = recv_pdu(sock)
    assert reply is None or reply[0] in (A_ABORT, 0x03), reply
    assert "A-ASSOCIATE-RQ item 0x50 at offset" in node.log()[mark:]
    assert "announces 65535 bytes, only 8 left" in node.log()[mark:]
    socks = [connect(node.port) for _ in range(CONNECTIONS)]
    try:
        for s in socks:
            s.sendall(struct.pack(">BxL", 0x01, FOUR_GB))
        replies = [recv_pdu(s) for s in socks]
        after = vm_rss_mb(node.proc.pid)
    finally:
        for s in socks:
            s.close()
    # permanent, service provider (presentation), local-limit-exceeded
    assert {rj_fields(r) for r in replies} == {(1, 3, 2)}
    assert after - before < 24, f"RSS {before:.0f} MB -> {after:.0f} MB"
    wait_for(
        lambda: any(
            r.detail.get("limit") == "max_associate_rq"
            for r in audit_rows(node, "association-rejected")
        )
    )
    assert_echo(node.port)


# -- the audit of what an association stored ------------------------------------------------


def test_instances_stored_is_one_event_per_study_with_its_failures(
    tmp_path: Path, dicom_data: Path
) -> None:
    """storescu sends three slices, then one again unchanged and one changed (refused
    under ``duplicate_policy = "reject"``): each association leaves one
    ``instances-stored`` event for the study, with its counts, and none per instance."""
    files = sorted((dicom_data / CT_SERIES).iterdir())[:3]
    changed = tmp_path / "changed.dcm"
    ds = dcmread(files[1])
    ds.SeriesDescription = "changed after sending"
    ds.save_as(changed)
    study = str(ds.StudyInstanceUID)
    series = str(ds.SeriesInstanceUID)
    n = NodeProcess(tmp_path / "node", free_port(), extra={"node": {"duplicate_policy": "reject"}})
    with n:
        first = storescu(n.port, files, calling_ae="FIRST_SCU")
        assert first.returncode == 0, first.stdout + first.stderr
        second = storescu(n.port, [files[0], changed], calling_ae="SECOND_SCU")
        out = second.stdout + second.stderr
        assert out.count("Received Store Response (Success)") == 1, out
        assert out.count("Received Store Response (Error") == 1, out

        def rows() -> list[AuditEntry]:
            return audit_rows(n, "instances-stored")

        wait_for(lambda: {r.actor for r in rows()} == {"FIRST_SCU", "SECOND_SCU"})
        by_actor = {r.actor: r for r in rows()}
        assert len(rows()) == 2
        first_row, second_row = by_actor["FIRST_SCU"], by_actor["SECOND_SCU"]
        assert first_row.study_instance_uid == second_row.study_instance_uid == study
        assert first_row.detail["count"] == 3 and first_row.detail["failed"] == 0
        assert first_row.detail["series_instance_uids"] == [series]
        assert first_row.detail["bytes"] == sum(_data_set_size(p) for p in files)
        assert first_row.outcome == 0 and first_row.actor_kind == "ae"
        assert second_row.detail["count"] == 1 and second_row.detail["failed"] == 1
        assert second_row.outcome == 4
        assert second_row.detail["tls"] is False
    assert "Traceback" not in n.log()


def _data_set_size(path: Path) -> int:
    """Bytes of the data set after the file meta group, as storescu sends them."""
    fp = BytesIO(path.read_bytes())
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    return path.stat().st_size - fp.tell()


# -- max_pdu = 0 (unlimited) is still bounded -----------------------------------------------


def test_unlimited_max_pdu_is_capped_by_max_incoming_pdu(tmp_path: Path) -> None:
    assert NodeSettings().incoming_pdu_limit == 262144 + 1024
    assert NodeSettings(max_pdu=0).incoming_pdu_limit == 64 * 2**20
    with pytest.raises(ValidationError, match="must be at least max_pdu"):
        NodeSettings(max_pdu=262144, max_incoming_pdu=65536)
    cap = 2**20
    n = NodeProcess(
        tmp_path / "node", free_port(), extra={"node": {"max_pdu": 0, "max_incoming_pdu": cap}}
    )
    with n:
        assert n.proc is not None
        before = vm_rss_mb(n.proc.pid)
        socks = []
        try:
            for i in range(CONNECTIONS):
                sock, reply = associate(n.port, f"UNLIM{i}")
                socks.append(sock)
                assert reply is not None and reply[0] == A_ASSOCIATE_AC, reply
                sock.sendall(struct.pack(">BxL", 0x04, cap + 1))
            replies = [recv_pdu(sock) for sock in socks]
            after = vm_rss_mb(n.proc.pid)
        finally:
            for sock in socks:
                sock.close()
        assert all(r is not None and r[0] == A_ABORT for r in replies), replies
        assert after - before < 24, f"RSS {before:.0f} MB -> {after:.0f} MB"
        assert n.log().count(f"PDU of {cap + 1} bytes from 127.0.0.1") == CONNECTIONS
        assert_echo(n.port)
    assert "Traceback" not in n.log()
