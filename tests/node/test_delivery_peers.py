"""Delivery against real DCMTK peers: refused SOP classes, and DICOM over TLS.

``storescp`` with an association profile that accepts CT Image Storage only
refuses the Segmentation's presentation context: that delivery fails at once
(a retry cannot fix it) while the CT in the same batch is sent.  ``storescp
+tls`` with a self-signed certificate is a TLS archive (PS3.15 B.1) that the
node reaches with ``tls = true``.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_node.config import Settings
from dicom_node.deliver import deliver_batch, is_permanent_failure
from storage.jobs import ClaimedDelivery
from tests.conftest import require_tool
from tests.support.peers import dcmtk_env, free_port, render_config, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
CT_FILE = "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm/I10"
SEG_FILE = "dcmqi/ct-3slice_seg/liver.dcm"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

CT_ONLY_PROFILE = f"""\
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = 1.2.840.10008.1.2.1
TransferSyntax2 = 1.2.840.10008.1.2

[[PresentationContexts]]
[CTOnly]
PresentationContext1 = {CT_IMAGE_STORAGE}\\Uncompressed

[[Profiles]]
[CTOnly]
PresentationContexts = CTOnly
"""


def start_storescp(folder: Path, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    exe = require_tool("storescp")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [exe, "-aet", "ARCHIVE", "-od", str(folder), *args, str(port)],
        env=dcmtk_env(),
        stdout=(folder / "storescp.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    wait_for_port(port, 20, proc)
    return proc, port


@pytest.fixture
def stop_later() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def settings_for(tmp_path: Path, port: int, **dest: object) -> Settings:
    return Settings.model_validate(
        {
            "storage": {"results_dir": str(tmp_path / "results")},
            "destinations": [
                {
                    "name": "archive",
                    "type": "dicom",
                    "ae_title": "ARCHIVE",
                    "host": "127.0.0.1",
                    "port": port,
                    "timeout_s": 10,
                    **dest,
                }
            ],
        }
    )


@pytest.mark.parametrize("uids_known", [False, True], ids=["read-from-file", "from-rows"])
def test_refused_sop_class_fails_at_once_and_the_rest_is_sent(
    dicom_data: Path,
    tmp_path: Path,
    stop_later: list[subprocess.Popen[bytes]],
    uids_known: bool,
) -> None:
    """Deliveries whose rows carry their UIDs are sent the same (only the file meta is read)."""
    profile = tmp_path / "ct-only.cfg"
    profile.write_text(CT_ONLY_PROFILE)
    proc, port = start_storescp(tmp_path / "archive", "-xf", str(profile), "CTOnly")
    stop_later.append(proc)
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(dicom_data / SEG_FILE, results / "seg.dcm")
    shutil.copy(dicom_data / CT_FILE, results / "ct.dcm")
    items = [
        ClaimedDelivery(1, 1, "archive", "seg.dcm", "seg", "1.2.3", 0),
        ClaimedDelivery(2, 2, "archive", "ct.dcm", "sc", "1.2.4", 0),
    ]
    if uids_known:
        items = [
            dataclasses.replace(
                item,
                sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
            )
            for item in items
            for ds in [dcmread(results / item.path, stop_before_pixels=True)]
        ]
    seg, ct = deliver_batch(settings_for(tmp_path, port), items)
    assert not seg.sent and seg.status is None and seg.retry is False
    assert "presentation context" in (seg.error or "")
    assert ct.sent and ct.status == 0
    stored = [p for p in (tmp_path / "archive").iterdir() if p.name.startswith("CT")]
    assert len(stored) == 1


def test_archive_down_is_retried_not_failed(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "x.dcm").write_bytes(b"\0" * 128 + b"DICM")
    items = [ClaimedDelivery(1, 1, "archive", "x.dcm", "seg", "1.2.3", 0)]
    (outcome,) = deliver_batch(settings_for(tmp_path, free_port()), items)
    assert not outcome.sent and outcome.retry


def test_permanent_failure_statuses() -> None:
    assert is_permanent_failure(None)
    assert is_permanent_failure(0xA900) and is_permanent_failure(0xC000)
    assert is_permanent_failure(0x0122)
    assert not is_permanent_failure(0xA700) and not is_permanent_failure(0x0110)


def test_dicom_over_tls(
    dicom_data: Path, tmp_path: Path, stop_later: list[subprocess.Popen[bytes]]
) -> None:
    openssl = require_tool("openssl")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    proc, port = start_storescp(tmp_path / "archive", "+tls", str(key), str(cert), "-ic")
    stop_later.append(proc)
    config = tmp_path / "config.toml"
    config.write_text(
        render_config(
            {
                "storage": {
                    "spool_dir": str(tmp_path / "spool"),
                    "database_url": f"sqlite:///{tmp_path / 'n.db'}",
                },
                "destinations": [
                    {
                        "name": "tls-archive",
                        "type": "dicom",
                        "ae_title": "ARCHIVE",
                        "host": "127.0.0.1",
                        "port": port,
                        "tls": True,
                        "tls_ca_file": str(cert),
                    }
                ],
            }
        )
    )
    cli = [sys.executable, "-m", "dicom_node.cli", "-c", str(config)]
    echo = subprocess.run(
        [*cli, "echo", "tls-archive"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert echo.returncode == 0, echo.stdout + echo.stderr
    sent = subprocess.run(
        [*cli, "send", str(dicom_data / CT_FILE), "--to", "tls-archive"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert len([p for p in (tmp_path / "archive").iterdir() if p.name.startswith("CT")]) == 1
    # Without the CA the certificate is not trusted: no association.
    config.write_text(config.read_text().replace(f'tls_ca_file = "{cert}"', ""))
    untrusted = subprocess.run(
        [*cli, "echo", "tls-archive"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert untrusted.returncode != 0
