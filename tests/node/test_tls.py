"""DICOM over TLS on the node's own port (PS3.15 B.9, BCP 195), with DCMTK as the sender.

A test PKI is made at test time with ``cryptography``: a CA, the node's
certificate, a good client certificate, an expired one, and a client
certificate from a foreign CA.  Each case runs DCMTK ``storescu``/``echoscu``
with ``+tls``/``+tla`` against a real node and checks the outcome, the node's
log line, and the audit trail.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydicom.filereader import _read_file_meta_info, read_preamble  # type: ignore[attr-defined]
from sqlalchemy import select

from dicom_node.config import NodeSettings
from storage.audit import AuditEntry, AuditFilter, AuditStore
from storage.db import Database
from storage.models import Instance
from tests.conftest import require_tool
from tests.support.peers import NodeProcess, dcmtk_env, free_port

pytestmark = [pytest.mark.network]

CT_SERIES = "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm"
ACSE_S = 3.0
GOOD_CN = "good-sender"


# -- the test PKI -----------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    expired_cert: Path
    expired_key: Path
    foreign_cert: Path
    foreign_key: Path


def make_pki(folder: Path) -> Pki:
    """CA, server, good/expired client, and a client of a foreign CA, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dicom-node tests"),
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
            ]
        )

    def write(stem: str, cert: x509.Certificate, k: rsa.RSAPrivateKey) -> tuple[Path, Path]:
        cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path

    def ca(cn: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        k = key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()), False)
            .sign(k, hashes.SHA256())
        )  # fmt: skip
        return cert, k

    def leaf(
        cn: str,
        issuer: tuple[x509.Certificate, rsa.RSAPrivateKey],
        *,
        server: bool,
        expired: bool = False,
    ) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        k = key()
        start, end = (
            (now - dt.timedelta(days=60), now - dt.timedelta(days=30))
            if expired
            else (now - dt.timedelta(days=1), now + dt.timedelta(days=30))
        )
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(issuer[0].subject)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), False
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return builder.sign(issuer[1], hashes.SHA256()), k

    root = ca("dicom-node test CA")
    foreign = ca("foreign CA")
    ca_path, _ = write("ca", *root)
    server = write("server", *leaf("localhost", root, server=True))
    client = write("client", *leaf(GOOD_CN, root, server=False))
    expired = write("expired", *leaf("expired-sender", root, server=False, expired=True))
    stranger = write("foreign", *leaf("foreign-sender", foreign, server=False))
    return Pki(ca_path, *server, *client, *expired, *stranger)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    pytest.importorskip("cryptography")
    return make_pki(tmp_path_factory.mktemp("pki"))


# -- DCMTK over TLS -----------------------------------------------------------------------


def tls_args(pki: Pki, client: str | None) -> list[str]:
    """DCMTK options: ``+tls KEY CERT`` (or ``+tla`` without a certificate), our CA."""
    if client is None:
        auth = ["+tla"]
    else:
        cert, key = getattr(pki, f"{client}_cert"), getattr(pki, f"{client}_key")
        auth = ["+tls", str(key), str(cert), "-pw"]
    return [*auth, "+cf", str(pki.ca)]


def dcmtk(
    tool: str, port: int, args: list[str], files: list[Path] | None = None, calling: str = "TLSSCU"
) -> subprocess.CompletedProcess[str]:
    exe = require_tool(tool)
    return subprocess.run(
        [exe, "-v", "-aet", calling, "-aec", "DICOM_NODE", *args, "127.0.0.1", str(port),
         *map(str, files or [])],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip


def wait_for(check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def log_lines_after(node: NodeProcess, mark: int) -> str:
    return node.log()[mark:]


def wait_for_log(node: NodeProcess, mark: int, text: str) -> str:
    wait_for(lambda: text in log_lines_after(node, mark))
    return next(line for line in log_lines_after(node, mark).splitlines() if text in line)


def audit_rows(node: NodeProcess, event: str) -> list[AuditEntry]:
    db = Database(node.db_url)
    try:
        return AuditStore(db).query(AuditFilter(events=[event]), limit=1000)
    finally:
        db.dispose()


def wait_for_audit(node: NodeProcess, event: str, n: int) -> list[AuditEntry]:
    rows: list[AuditEntry] = []

    def enough() -> bool:
        nonlocal rows
        rows = audit_rows(node, event)
        return len(rows) >= n

    wait_for(enough)
    return rows


def dataset_sha256(path: Path) -> str:
    raw = path.read_bytes()
    fp = BytesIO(raw)
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    return hashlib.sha256(raw[fp.tell() :]).hexdigest()


def tls_node(workdir: Path, pki: Pki, **node: object) -> NodeProcess:
    settings = {
        "tls_port": free_port(),
        "tls_cert_file": str(pki.server_cert),
        "tls_key_file": str(pki.server_key),
        "tls_ca_file": str(pki.ca),
        "acse_timeout": ACSE_S,
        **node,
    }
    return NodeProcess(workdir, free_port(), extra={"node": settings})


def wait_tls_port(n: NodeProcess) -> int:
    port = int(n.extra["node"]["tls_port"])  # type: ignore[index]
    wait_for(lambda: _listening(port), 30)
    return port


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[NodeProcess]:
    """Client certificates verified when given, not required; plain port too."""
    n = tls_node(tmp_path_factory.mktemp("tls") / "node", pki)
    with n:
        wait_tls_port(n)
        yield n
    assert "Traceback" not in n.log()


# -- accepted ------------------------------------------------------------------------------


def test_storescu_with_client_certificate_stores_byte_identical_files(
    node: NodeProcess, pki: Pki, dicom_data: Path
) -> None:
    files = sorted((dicom_data / CT_SERIES).iterdir())[:6]
    mark = len(node.log())
    result = dcmtk("storescu", wait_tls_port(node), tls_args(pki, "client"), files, "CERTSCU")
    assert result.returncode == 0, result.stdout + result.stderr
    line = wait_for_log(node, mark, "TLS from ")
    assert f"CN={GOOD_CN},O=dicom-node tests" in line and "TLSv1." in line
    wait_for_log(node, mark, "association released from CERTSCU")

    db = Database(node.db_url)
    try:
        with db.session() as s:
            stored = {i.sop_instance_uid: i for i in s.scalars(select(Instance))}
    finally:
        db.dispose()
    from pydicom import dcmread

    sent = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    assert set(sent) <= set(stored)
    for uid, path in sent.items():
        assert dataset_sha256(node.spool / stored[uid].path) == dataset_sha256(path), uid

    accepted = [r for r in wait_for_audit(node, "association-accepted", 1) if r.actor == "CERTSCU"]
    assert len(accepted) == 1
    entry = accepted[0]
    assert entry.actor_kind == "ae" and entry.address == "127.0.0.1"
    assert entry.detail["tls"] is True
    assert entry.detail["called_ae"] == "DICOM_NODE"
    assert entry.detail["tls_identity"] == f"CN={GOOD_CN},O=dicom-node tests"
    assert str(entry.detail["tls_version"]).startswith("TLSv1.")

    study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    series = str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    rows = [r for r in wait_for_audit(node, "instances-stored", 1) if r.actor == "CERTSCU"]
    assert len(rows) == 1  # one event for the study, none per instance
    assert rows[0].study_instance_uid == study
    assert rows[0].detail["count"] == len(files)
    assert rows[0].detail["series_instance_uids"] == [series]
    assert rows[0].detail["bytes"] == sum(len(p.read_bytes()) - _meta_end(p) for p in files)
    assert rows[0].detail["failed"] == 0


def _meta_end(path: Path) -> int:
    fp = BytesIO(path.read_bytes())
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    return fp.tell()


def test_client_without_certificate_is_accepted_when_not_required(
    node: NodeProcess, pki: Pki
) -> None:
    mark = len(node.log())
    result = dcmtk("echoscu", wait_tls_port(node), tls_args(pki, None), calling="ANONSCU")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "client certificate none" in wait_for_log(node, mark, "TLS from ")
    rows = [r for r in wait_for_audit(node, "association-accepted", 1) if r.actor == "ANONSCU"]
    assert rows and rows[0].detail["tls"] is True and "tls_identity" not in rows[0].detail


def test_plain_port_still_serves_plain_dicom(node: NodeProcess) -> None:
    result = dcmtk("echoscu", node.port, [], calling="PLAINSCU")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [r for r in wait_for_audit(node, "association-accepted", 1) if r.actor == "PLAINSCU"]
    assert rows and rows[0].detail["tls"] is False


# -- refused ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "why"),
    [
        ("foreign", "client certificate rejected (unable to get local issuer certificate)"),
        ("expired", "client certificate rejected (certificate has expired)"),
    ],
)
def test_bad_client_certificates_are_refused(
    node: NodeProcess, pki: Pki, client: str, why: str
) -> None:
    mark = len(node.log())
    before = len(audit_rows(node, "association-rejected"))
    result = dcmtk("echoscu", wait_tls_port(node), tls_args(pki, client))
    assert result.returncode != 0, result.stdout
    line = wait_for_log(node, mark, "refused TLS connection from 127.0.0.1")
    assert why in line, line
    rows = wait_for_audit(node, "association-rejected", before + 1)
    assert rows[0].detail["limit"] == "tls" and why in rows[0].detail["reason"]
    assert rows[0].outcome == 4 and rows[0].address == "127.0.0.1"


def test_plain_dicom_client_on_the_tls_port_is_refused(node: NodeProcess) -> None:
    port = wait_tls_port(node)
    mark = len(node.log())
    result = dcmtk("echoscu", port, [])
    assert result.returncode != 0, result.stdout
    line = wait_for_log(node, mark, "refused TLS connection from 127.0.0.1")
    assert "plain DICOM (A-ASSOCIATE-RQ) on the TLS port" in line


def test_a_client_that_never_handshakes_holds_only_its_own_connection(
    node: NodeProcess, pki: Pki
) -> None:
    port = wait_tls_port(node)
    mark = len(node.log())
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        started = time.monotonic()
        result = dcmtk("echoscu", port, tls_args(pki, "client"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert time.monotonic() - started < ACSE_S  # not queued behind the silent ones
        line = wait_for_log(node, mark, "no TLS handshake within acse_timeout")
        assert "refused TLS connection" in line
        for s in silent:
            s.settimeout(5)
            assert s.recv(1) == b""  # closed by the node
    finally:
        for s in silent:
            s.close()


def test_a_client_trickling_its_handshake_is_cut_at_the_acse_deadline(
    node: NodeProcess, pki: Pki
) -> None:
    """A real ClientHello sent a byte every 0.2 s: the handshake's deadline is the
    ACSE one as a whole, not a fresh timeout per byte."""
    client = ssl.create_default_context(cafile=str(pki.ca))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert len(hello) > 40
    port = wait_tls_port(node)
    mark = len(node.log())
    sock = socket.create_connection(("127.0.0.1", port))
    started = time.monotonic()
    try:
        for i in range(len(hello)):
            sock.sendall(hello[i : i + 1])
            time.sleep(0.2)
            if time.monotonic() - started > 3 * ACSE_S:
                break
    except OSError:
        pass  # the node closed the connection
    finally:
        sock.close()
    line = wait_for_log(node, mark, "refused TLS connection from 127.0.0.1")
    assert "TLS handshake not complete within acse_timeout" in line, line
    assert time.monotonic() - started < 3 * ACSE_S


# -- client certificate required, TLS only --------------------------------------------------


def test_required_client_certificate_and_tls_only(tmp_path: Path, pki: Pki) -> None:
    plain_port, tls_port = free_port(), free_port()
    n = tls_node(
        tmp_path / "node", pki, tls_require_client_cert=True, tls_only=True,
        port=plain_port, tls_port=tls_port,
    )  # fmt: skip
    n.port = tls_port  # what NodeProcess waits for; the config keeps plain_port
    with n:
        assert not _listening(plain_port)
        mark = len(n.log())
        result = dcmtk("echoscu", tls_port, tls_args(pki, None))
        assert result.returncode != 0, result.stdout
        line = wait_for_log(n, mark, "refused TLS connection from 127.0.0.1")
        assert "no client certificate" in line, line
        rows = wait_for_audit(n, "association-rejected", 1)
        assert "no client certificate" in rows[0].detail["reason"]

        result = dcmtk("echoscu", tls_port, tls_args(pki, "client"), calling="CERTSCU")
        assert result.returncode == 0, result.stdout + result.stderr
        rows = wait_for_audit(n, "association-accepted", 1)
        assert rows[0].detail["tls_identity"] == f"CN={GOOD_CN},O=dicom-node tests"
        assert f"listening as DICOM_NODE on 127.0.0.1:{tls_port} (TLS)" in n.log()
    assert "Traceback" not in n.log()


def test_extra_receiver_processes_serve_the_tls_port_and_audit(tmp_path: Path, pki: Pki) -> None:
    n = tls_node(tmp_path / "node", pki, receivers=2)
    with n:
        port = wait_tls_port(n)
        wait_for(lambda: "receiver process 1 ready" in n.log(), 60)
        ss = subprocess.run(
            ["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, timeout=10
        )
        pids = {
            part.split("=")[1] for part in ss.stdout.replace(",", " ").split() if "pid=" in part
        }
        assert len(pids) == 2, ss.stdout  # both processes listen on the TLS port
        for i in range(8):
            result = dcmtk("echoscu", port, tls_args(pki, "client"), calling=f"RCV{i}")
            assert result.returncode == 0, result.stdout + result.stderr
        # Every association is audited, whichever process served it.
        rows = wait_for_audit(n, "association-accepted", 8)
        assert {r.actor for r in rows} == {f"RCV{i}" for i in range(8)}
        assert all(r.detail["tls"] is True for r in rows)
    assert "Traceback" not in n.log()


# -- settings -------------------------------------------------------------------------------


def test_tls_settings_are_validated(pki: Pki, tmp_path: Path) -> None:
    files = {"tls_cert_file": pki.server_cert, "tls_key_file": pki.server_key}
    ok = NodeSettings(tls_port=2762, tls_ca_file=pki.ca, tls_require_client_cert=True, **files)
    assert ok.tls_cert_file == pki.server_cert
    cases: list[tuple[dict[str, object], str]] = [
        ({"tls_port": 2762, "tls_cert_file": pki.server_cert}, "given together"),
        ({"tls_port": 2762}, "tls_port needs tls_cert_file"),
        ({"tls_port": 2762, "tls_require_client_cert": True, **files}, "needs tls_ca_file"),
        ({"tls_only": True}, "tls_only needs tls_port"),
        ({"tls_port": 11112, **files}, "must differ from port"),
        ({"tls_port": 2762, **files, "tls_ca_file": tmp_path / "nope.pem"}, "file not found"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValidationError, match=message):
            NodeSettings(**kwargs)  # type: ignore[arg-type]
