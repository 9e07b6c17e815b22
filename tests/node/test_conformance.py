"""docs/conformance.md is what the code says, and what it says is true on the wire.

* The document equals what ``python -m dicom_node.conformance`` writes now, so it
  cannot drift from the code; ``--check`` reports a stale one with a diff.
* A real node (``dicom-node serve`` on loopback) accepts, over one association from
  pynetdicom, a sample of the SOP classes the statement lists -- with every transfer
  syntax it lists -- and refuses an abstract syntax and a transfer syntax it does not
  list; its A-ASSOCIATE-AC carries the Implementation Class UID, Version Name and
  maximum PDU length the statement gives.  With ``accept_deflated = false`` the
  Deflated syntaxes the statement marks are refused.
* The C-STORE statuses the statement lists are the constants of
  :mod:`dicom_node.protocol.status`, no more and no fewer.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import (
    ComprehensiveSRStorage,
    CTImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from dicom_node import conformance
from dicom_node.conformance import VERIFICATION, Statement, build_statement
from dicom_node.protocol import status as st
from tests.support.peers import NodeProcess, free_port, sender_ae

pytestmark = [pytest.mark.network]

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "conformance.md"

UNLISTED_ABSTRACT_SYNTAX = "1.2.840.10008.5.1.4.1.2.2.1"
"""Study Root Query/Retrieve Information Model - FIND: the node provides no such service."""
UNLISTED_TRANSFER_SYNTAX = "1.2.826.0.1.3680043.9.3811.99.1"
"""A transfer syntax UID no one defines."""

MUST_SAMPLE = (
    SegmentationStorage,
    "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation Storage
    EnhancedCTImageStorage,
    CTImageStorage,
    EnhancedMRImageStorage,
    MRImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    ComprehensiveSRStorage,
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR Storage
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State Storage
    SecondaryCaptureImageStorage,
)


@pytest.fixture(scope="module")
def statement() -> Statement:
    return build_statement()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    with NodeProcess(tmp_path_factory.mktemp("conformance") / "node", free_port()) as n:
        yield n


def sample_sop_classes(statement: Statement, n: int = 40) -> list[str]:
    """Verification, the SOP classes of :data:`MUST_SAMPLE`, and others spread over the list."""
    storage = list(statement.storage_sop_classes)
    sample = [VERIFICATION, *MUST_SAMPLE]
    step = max(1, len(storage) // (n - len(sample)))
    sample += [uid for uid in storage[::step] if uid not in sample]
    return sample[:n]


def test_document_is_what_the_code_says() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dicom_node.conformance", "--check", "--output", str(DOC)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, (
        "docs/conformance.md is stale; run `make conformance`:\n" + proc.stdout[-6000:]
    ) + proc.stderr[-2000:]


def test_check_reports_a_stale_document(
    statement: Statement,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(conformance, "build_statement", lambda: statement)
    stale = tmp_path / "conformance.md"
    text = conformance.render_markdown(statement)
    assert "| Implementation Class UID |" in text
    stale.write_text(text.replace("| Implementation Class UID |", "| Implementation UID |", 1))
    assert conformance.main(["--check", "--output", str(stale)]) == 1
    diff = capsys.readouterr().out
    assert "\n-| Implementation UID |" in diff
    assert "\n+| Implementation Class UID |" in diff
    assert conformance.main(["--output", str(stale)]) == 0
    assert stale.read_text() == text
    assert conformance.main(["--check", "--output", str(stale)]) == 0


def test_statement_lists_what_the_node_accepts_on_the_wire(
    statement: Statement, node: NodeProcess
) -> None:
    listed = set(statement.scp_sop_classes)
    syntaxes = list(statement.scp_transfer_syntaxes)
    assert UNLISTED_ABSTRACT_SYNTAX not in listed
    assert UNLISTED_TRANSFER_SYNTAX not in syntaxes
    assert {SegmentationStorage, EnhancedCTImageStorage, VERIFICATION} <= listed
    assert len(syntaxes) > 10 and ExplicitVRLittleEndian in syntaxes

    # CT Image Storage once per listed transfer syntax; each sampled SOP class with
    # a transfer syntax of its own (round robin); then what the statement does not list.
    proposed: list[tuple[str, str, bool]] = [(CTImageStorage, ts, True) for ts in syntaxes]
    for i, uid in enumerate(sample_sop_classes(statement)):
        proposed.append((uid, syntaxes[(i * 7) % len(syntaxes)], True))
    proposed.append((UNLISTED_ABSTRACT_SYNTAX, ExplicitVRLittleEndian, False))
    proposed.append((SegmentationStorage, UNLISTED_TRANSFER_SYNTAX, False))
    assert len(proposed) <= 128

    ae = sender_ae("CONFORMANCE")
    for uid, ts, _ in proposed:
        ae.add_requested_context(uid, ts)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        accepted = {
            int(cx.context_id): (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            for cx in assoc.accepted_contexts
        }
        rejected = {int(cx.context_id) for cx in assoc.rejected_contexts}
        echo = assoc.send_c_echo()
        peer = assoc.acceptor
        implementation = (str(peer.implementation_class_uid), peer.implementation_version_name)
        maximum_length = peer.maximum_length
    finally:
        assoc.release()
    assert int(echo.Status) == st.SUCCESS

    wrong = []
    for i, (uid, ts, listed_here) in enumerate(proposed):
        context_id = 2 * i + 1  # pynetdicom numbers requested contexts 1, 3, 5, ...
        if listed_here and accepted.get(context_id) != (uid, ts):
            wrong.append(f"listed {uid} / {ts} not accepted")
        if not listed_here and context_id not in rejected:
            wrong.append(f"unlisted {uid} / {ts} not rejected")
    assert wrong == []

    a = statement.acceptor
    assert implementation == (a.implementation_class_uid, a.implementation_version_name)
    assert maximum_length == a.maximum_length
    doc = DOC.read_text(encoding="utf-8")
    assert f"`{a.implementation_class_uid}`" in doc
    assert f"`{a.implementation_version_name}`" in doc


def test_deflated_syntaxes_are_refused_without_accept_deflated(
    statement: Statement, tmp_path: Path
) -> None:
    deflated = list(statement.deflated_syntaxes)
    assert "1.2.840.10008.1.2.1.99" in deflated
    extra = {"node": {"accept_deflated": False}}
    with NodeProcess(tmp_path / "node", free_port(), extra=extra) as n:
        ae = sender_ae("CONFORMANCE")
        for ts in [*deflated, ExplicitVRLittleEndian]:
            ae.add_requested_context(SegmentationStorage, ts)
        assoc = ae.associate("127.0.0.1", n.port, ae_title=n.ae_title)
        assert assoc.is_established
        try:
            accepted = [str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts]
        finally:
            assoc.release()
    assert accepted == [ExplicitVRLittleEndian]


def test_status_codes_are_the_status_module(statement: Statement) -> None:
    defined = {
        name: value
        for name, value in vars(st).items()
        if name.isupper() and isinstance(value, int) and not isinstance(value, bool)
    }
    listed = {s.constant: s.code for s in statement.statuses}
    assert listed == defined
    doc = DOC.read_text(encoding="utf-8")
    for code in defined.values():
        assert f"| 0x{code:04X} |" in doc
