"""Peers that misbehave at the association layer: memory, connections, time, AE titles.

Each case talks to a real node on 127.0.0.1 through raw sockets (a hostile or
broken peer is not something a DICOM toolkit lets one be), checks the node's
answer (A-ASSOCIATE-RJ, A-ABORT or a closed connection) and its single log
line, and then checks that a real DCMTK ``echoscu`` still succeeds.  Deadlines
are configured short so every case ends by itself within seconds.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

from dicom_node.config import NodeSettings, load_settings
from dicom_node.node import Node
from dicom_node.protocol.upper_layer import PduReader, PeerClosed, p_data_pdu
from tests.support.peers import NodeProcess, echoscu, free_port, render_config

pytestmark = [pytest.mark.network]

MAX_PDU = 16384
MAX_ASSOCIATIONS = 8
PER_HOST = 24
DEADLINE_S = 2.0
"""acse_timeout and dimse_timeout of the test node; network_timeout is longer,
so only the deadlines can cut a peer that sends a byte every second."""

A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
A_ABORT = 0x07

NODE_SETTINGS = {
    "max_pdu": MAX_PDU,
    "max_associations": MAX_ASSOCIATIONS,
    "max_connections": 48,
    "max_connections_per_host": PER_HOST,
    "acse_timeout": DEADLINE_S,
    "dimse_timeout": DEADLINE_S,
    "network_timeout": 8,
}


# -- a raw peer ----------------------------------------------------------------------


def associate_rq(calling: str = "HOSTILE", called: str = "DICOM_NODE") -> bytes:
    """An A-ASSOCIATE-RQ proposing Verification (PS3.8 9.3.2)."""
    prim = A_ASSOCIATE()
    prim.application_context_name = "1.2.840.10008.3.1.1.1"
    prim.calling_ae_title = calling
    prim.called_ae_title = called
    cx = build_context("1.2.840.10008.1.1", ["1.2.840.10008.1.2"])
    cx.context_id = 1
    prim.presentation_context_definition_list = [cx]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = MAX_PDU
    prim.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(prim)
    return bytes(pdu.encode())


def with_raw_titles(
    rq: bytes, *, called: bytes | None = None, calling: bytes | None = None
) -> bytes:
    """*rq* with its 16-byte AE title fields replaced as they are (PDU bytes 11-42)."""
    out = bytearray(rq)
    if called is not None:
        out[10:26] = called.ljust(16, b" ")[:16]
    if calling is not None:
        out[26:42] = calling.ljust(16, b" ")[:16]
    return bytes(out)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_pdu(sock: socket.socket, timeout: float = 5.0) -> tuple[int, bytes] | None:
    """The next PDU from the node, or ``None`` when it closed the connection."""
    sock.settimeout(timeout)
    data = b""
    try:
        while len(data) < 6:
            chunk = sock.recv(6 - len(data))
            if not chunk:
                return None
            data += chunk
        pdu_type, length = struct.unpack(">BxL", data)
        body = b""
        while len(body) < length:
            chunk = sock.recv(length - len(body))
            if not chunk:
                return None
            body += chunk
    except ConnectionResetError:
        return None
    return pdu_type, body


def associated(port: int) -> socket.socket:
    sock = connect(port)
    sock.sendall(associate_rq())
    reply = recv_pdu(sock)
    assert reply is not None and reply[0] == A_ASSOCIATE_AC, reply
    return sock


def rj_fields(reply: tuple[int, bytes] | None) -> tuple[int, int, int]:
    """(result, source, reason) of an A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
    assert reply is not None and reply[0] == A_ASSOCIATE_RJ, reply
    return reply[1][1], reply[1][2], reply[1][3]


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def assert_echo(port: int) -> None:
    result = echoscu(port, timeout_s=20)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    n = NodeProcess(
        tmp_path_factory.mktemp("hostile") / "node", free_port(), extra={"node": NODE_SETTINGS}
    )
    with n:
        yield n
    assert "Traceback" not in n.log()


# -- 1. memory before authentication ---------------------------------------------------


def test_announced_64_mib_before_association_costs_no_memory(node: NodeProcess) -> None:
    assert node.proc is not None
    assert_echo(node.port)
    before = vm_rss_mb(node.proc.pid)
    socks = [connect(node.port) for _ in range(16)]
    try:
        for sock in socks:
            sock.sendall(struct.pack(">BxL", 0x01, 64 * 2**20))  # A-ASSOCIATE-RQ of 64 MiB
        time.sleep(1.0)
        after = vm_rss_mb(node.proc.pid)
        assert after - before < 32, f"RSS {before:.0f} MB -> {after:.0f} MB"
        replies = [recv_pdu(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    # permanent, service provider (presentation), local-limit-exceeded
    assert {rj_fields(r) for r in replies} == {(1, 3, 2)}
    assert "more than max_associate_rq (65536)" in node.log()
    assert_echo(node.port)


def test_pdu_buffer_grows_only_with_bytes_that_arrive() -> None:
    """A header announcing 64 MiB followed by 4 kB allocates about the 4 kB, not 64 MiB."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(struct.pack(">BxL", 0x04, 64 * 2**20) + b"\0" * 4096)
        theirs.shutdown(socket.SHUT_WR)
        tracemalloc.start()
        try:
            with pytest.raises(PeerClosed, match="after 4096 of 67108864 bytes"):
                PduReader(ours, idle_s=5).read(2**27)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 2 * 2**20, peak


def test_pdu_above_the_negotiated_maximum_is_aborted(node: NodeProcess) -> None:
    with associated(node.port) as sock:
        start = time.monotonic()
        sock.sendall(struct.pack(">BxL", 0x04, 2**20))  # P-DATA-TF of 1 MiB > 16 kB
        reply = recv_pdu(sock)
        elapsed = time.monotonic() - start
    # A-ABORT, service provider, invalid-PDU-parameter value (PS3.8 9.3.8)
    assert reply is not None and reply[0] == A_ABORT and reply[1][2:4] == b"\x02\x06", reply
    assert elapsed < 1.5
    assert f"PDU of {2**20} bytes from 127.0.0.1" in node.log()
    assert "exceeds the negotiated maximum" in node.log()
    assert_echo(node.port)


def test_connections_per_address_are_limited_before_association(node: NodeProcess) -> None:
    idle = [connect(node.port) for _ in range(PER_HOST)]  # connected, never associating
    try:
        time.sleep(0.3)
        with connect(node.port) as extra:
            extra.sendall(associate_rq())
            # transient, service provider (presentation), local-limit-exceeded
            assert rj_fields(recv_pdu(extra)) == (2, 3, 2)
    finally:
        for sock in idle:
            sock.close()
    assert "(max_connections_per_host)" in node.log()
    # The node notices the closed connections within a moment; then the slots are free.
    deadline = time.monotonic() + 5
    while echoscu(node.port, timeout_s=20).returncode != 0:
        assert time.monotonic() < deadline, "slots of closed connections were not freed"
        time.sleep(0.2)


# -- 5. max_associations is atomic -------------------------------------------------


def test_64_simultaneous_requests_never_exceed_max_associations(node: NodeProcess) -> None:
    n = 64
    socks = [connect(node.port) for _ in range(n)]
    rq = associate_rq()
    start = threading.Barrier(n)
    replies: list[tuple[int, bytes] | None] = [None] * n

    def request(i: int) -> None:
        start.wait(10)
        try:
            socks[i].sendall(rq)
        except OSError:
            pass  # refused at the connection limit and already closed
        replies[i] = recv_pdu(socks[i], timeout=10)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(n)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    finally:
        for sock in socks:
            sock.close()
    accepted = sum(1 for r in replies if r is not None and r[0] == A_ASSOCIATE_AC)
    rejected = [rj_fields(r) for r in replies if r is None or r[0] != A_ASSOCIATE_AC]
    assert 0 < accepted <= MAX_ASSOCIATIONS
    assert set(rejected) == {(2, 3, 2)}  # transient, local-limit-exceeded
    assert f"{MAX_ASSOCIATIONS} associations already open (max_associations)" in node.log()
    assert_echo(node.port)


# -- 6. deadlines, not per-read timeouts -------------------------------------------


def _trickle(sock: socket.socket, data: bytes, give_up_s: float) -> float | None:
    """Send *data* one byte a second; seconds until the node hung up, ``None`` if it did not."""
    start = time.monotonic()
    sock.settimeout(1.0)
    for byte in data:
        if time.monotonic() - start > give_up_s:
            return None
        try:
            sock.sendall(bytes((byte,)))
            if sock.recv(65536) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - start
        # an A-ABORT arrived: wait for the close that follows
        while True:
            try:
                if sock.recv(65536) == b"":
                    return time.monotonic() - start
            except TimeoutError:
                return None
            except OSError:
                return time.monotonic() - start
    return None


def test_slow_senders_are_cut_at_the_deadline(node: NodeProcess) -> None:
    give_up = DEADLINE_S + 5
    results: dict[str, float | None] = {}
    acse_sock = connect(node.port)
    dimse_sock = associated(node.port)
    command = p_data_pdu(1, 0x03, b"\0" * 200)  # a command PDV, trickled

    def run(name: str, sock: socket.socket, data: bytes) -> None:
        with sock:
            results[name] = _trickle(sock, data, give_up)

    threads = [
        threading.Thread(target=run, args=("acse", acse_sock, associate_rq())),
        threading.Thread(target=run, args=("dimse", dimse_sock, command)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(give_up + 5)
    for name in ("acse", "dimse"):
        cut = results.get(name)
        assert cut is not None, f"{name}: still connected after {give_up} s"
        assert cut < DEADLINE_S + 1.5, f"{name}: cut after {cut:.1f} s"
    log = node.log()
    assert "within 2 s (acse_timeout); closing" in log
    assert "not complete within 2 s (dimse_timeout); aborting" in log
    assert_echo(node.port)


# -- 8. invalid AE titles ----------------------------------------------------------


@pytest.mark.parametrize(
    ("called", "calling", "expected", "logged"),
    [
        (None, "HÉLLO".encode(), (1, 1, 3), "invalid calling AE title b'H\\xc3\\x89LLO"),
        (None, b"BACK\\SLASH", (1, 1, 3), "invalid calling AE title b'BACK\\\\SLASH"),
        (None, b" " * 16, (1, 1, 3), "invalid calling AE title b'                ' (empty)"),
        (b"DICOM\x01NODE", None, (1, 1, 7), "invalid called AE title b'DICOM\\x01NODE"),
        ("NÖDE".encode("latin-1"), None, (1, 1, 7), "invalid called AE title b'N\\xd6DE"),
    ],
)
def test_invalid_ae_titles_are_rejected(
    node: NodeProcess,
    called: bytes | None,
    calling: bytes | None,
    expected: tuple[int, int, int],
    logged: str,
) -> None:
    with connect(node.port) as sock:
        sock.sendall(with_raw_titles(associate_rq(), called=called, calling=calling))
        assert rj_fields(recv_pdu(sock)) == expected
    assert logged in node.log()
    assert_echo(node.port)


# -- 10. command sets are bounded ----------------------------------------------------


def test_endless_command_fragments_are_aborted(node: NodeProcess) -> None:
    fragment = p_data_pdu(1, 0x01, b"\0" * 8000)  # command, not the last fragment
    with associated(node.port) as sock:
        sent = 0
        try:
            for _ in range(40):  # 320 kB, far beyond the 64 KiB cap
                sock.sendall(fragment)
                sent += 1
        except OSError:
            pass
        reply = recv_pdu(sock)
    assert reply is not None and reply[0] == A_ABORT, reply
    assert sent < 40 or "command set longer than 65536 bytes" in node.log()
    assert "command set longer than 65536 bytes" in node.log()
    assert_echo(node.port)


# -- 3. the listener survives a thread that cannot start ------------------------------


def _health(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=10) as rsp:
            return rsp.status, json.loads(rsp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_listener_survives_thread_start_failure_and_health_reports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    dicom_port, web_port = free_port(), free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        render_config(
            {
                "node": {"host": "127.0.0.1", "port": dicom_port, "acse_timeout": DEADLINE_S},
                "storage": {
                    "spool_dir": str(tmp_path / "spool"),
                    "database_url": f"sqlite:///{tmp_path / 'node.db'}",
                    "min_free_disk_mb": 0,
                },
                "worker": {"concurrency": 0},
                "web": {"enabled": True, "host": "127.0.0.1", "port": web_port},
            }
        )
    )
    node = Node(load_settings(config))
    node.start()
    try:
        real_start = threading.Thread.start
        failures = {"left": 3}

        def start_or_fail(thread: threading.Thread) -> None:
            if thread.name.startswith("assoc-") and failures["left"] > 0:
                failures["left"] -= 1
                raise RuntimeError("can't start new thread")
            real_start(thread)

        monkeypatch.setattr(threading.Thread, "start", start_or_fail)
        for _ in range(3):
            refused = echoscu(dicom_port, timeout_s=20)
            assert refused.returncode != 0
            # DCMTK reads the rejection: transient, local limit exceeded
            assert "Association Rejected" in refused.stdout + refused.stderr
            assert "Local Limit Exceeded" in refused.stdout + refused.stderr
        assert failures["left"] == 0
        assert_echo(dicom_port)
        assert "cannot start a thread (can't start new thread)" in caplog.text
        status, body = _health(web_port)
        assert (status, body["status"], body["listener"]) == (200, "ok", True)

        assert node.scp._listener is not None
        node.scp._listener.close()  # the listener is gone: health must say so
        time.sleep(0.5)
        status, body = _health(web_port)
        assert (status, body["status"], body["listener"]) == (503, "error", False)
        assert body["problem"] == "the DICOM listening socket is closed"
    finally:
        node.stop()
    assert "Traceback" not in caplog.text


def test_connection_limits_default_from_max_associations() -> None:
    node = NodeSettings(max_associations=10)
    assert (node.connection_limit, node.per_host_limit) == (20, 10)
    with pytest.raises(ValueError, match="max_connections \\(4\\) must be at least"):
        NodeSettings(max_associations=10, max_connections=4)
