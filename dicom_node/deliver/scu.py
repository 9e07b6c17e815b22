"""C-ECHO and C-STORE to destinations (PS3.4 A.4, B.2) as an SCU.

Sending sets ``TCP_NODELAY`` on the association's socket (pynetdicom never
does, which limits it to a few dozen instances per second) and, when an
association is aborted mid-way (pynetdicom 3.0.4 can lose a C-STORE reply to
a fast receiver), re-associates and resumes with the instance that was not
acknowledged.  Re-sending an instance is safe: receivers key on the SOP
Instance UID.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.config import DestinationSettings
from dicom_node.deliver.association_failure import associate
from dicom_node.errors import DeliveryError
from dicom_node.protocol import status as st

if TYPE_CHECKING:
    from dicom_node.deliver.destinations.dicom import DicomDestinationSettings

__all__ = [
    "DicomPeer",
    "SendReport",
    "collect_dicom_files",
    "echo",
    "parse_peer",
    "peer_of",
    "send_files",
]

LOGGER = logging.getLogger(__name__)

EXPLICIT_VR_LITTLE_ENDIAN = str(ExplicitVRLittleEndian)

MAX_CONTEXTS = 128
"""PS3.8 9.3.2.2: at most 128 presentation contexts in one A-ASSOCIATE-RQ."""


@dataclass(frozen=True)
class DicomPeer:
    """A remote Application Entity: AE title, host and port."""

    ae_title: str
    host: str
    port: int
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_check_hostname: bool = True

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_peer(spec: str, destinations: Sequence[DestinationSettings] = ()) -> DicomPeer:
    """Resolve a destination name or a ``host:port:AET`` string to a peer.

    Raises
    ------
    ValueError
        With a message that lists the known destinations.
    """
    from dicom_node.deliver.destinations.dicom import DicomDestinationSettings

    for dest in destinations:
        if dest.name == spec:
            if not isinstance(dest, DicomDestinationSettings):
                raise ValueError(f"destination {spec!r} is a {dest.type!r} destination, not DICOM")
            return peer_of(dest)
    parts = spec.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit():
        host, port, aet = parts
        return DicomPeer(aet, host, int(port))
    known = ", ".join(d.name for d in destinations if d.type == "dicom") or "none configured"
    raise ValueError(f"unknown destination {spec!r}: use a name ({known}) or HOST:PORT:AET")


def peer_of(dest: DicomDestinationSettings) -> DicomPeer:
    """The peer a ``dicom`` destination names."""
    if dest.type != "dicom" or not (dest.ae_title and dest.host and dest.port):
        raise ValueError(f"destination {dest.name!r} is not a complete DICOM destination")
    return DicomPeer(
        dest.ae_title,
        dest.host,
        dest.port,
        tls=dest.tls,
        tls_ca_file=str(dest.tls_ca_file) if dest.tls_ca_file else None,
        tls_cert_file=str(dest.tls_cert_file) if dest.tls_cert_file else None,
        tls_key_file=str(dest.tls_key_file) if dest.tls_key_file else None,
        tls_check_hostname=dest.tls_check_hostname,
    )


def _make_ae(calling_ae: str, timeout_s: float) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    ae.maximum_pdu_size = 0
    return ae


def _nodelay(assoc: object) -> None:
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def echo(peer: DicomPeer, calling_ae: str = "DICOM_NODE", timeout_s: float = 10.0) -> float:
    """C-ECHO *peer*; returns the round trip in seconds.

    Raises
    ------
    AssociationRejectedError, DeliveryError
    """
    ae = _make_ae(calling_ae, timeout_s)
    ae.add_requested_context(Verification)
    t0 = time.perf_counter()
    assoc = associate(ae, peer.host, peer.port, ae_title=peer.ae_title,
                      tls_args=_tls_args(peer), where=str(peer), timeout_s=timeout_s)
    try:
        rsp = assoc.send_c_echo()
    finally:
        assoc.release()
    if not rsp or int(rsp.get("Status", -1)) != st.SUCCESS:
        raise DeliveryError(f"C-ECHO to {peer} failed: {rsp!r}")
    return time.perf_counter() - t0


def collect_dicom_files(paths: Iterable[Path | str]) -> list[Path]:
    """Files under *paths* that are DICOM by content (``DICM`` at offset 128)."""
    out: list[Path] = []
    for p in map(Path, paths):
        candidates = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
        for f in candidates:
            try:
                with f.open("rb") as fh:
                    head = fh.read(132)
            except OSError:
                continue
            if len(head) == 132 and head[128:132] == b"DICM":
                out.append(f)
    return out


@dataclass
class _FileInfo:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


@dataclass
class SendReport:
    """What :func:`send_files` did."""

    sent: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[tuple[Path, int]] = field(default_factory=list)
    statuses: dict[Path, int | None] = field(default_factory=dict)
    """Per file: the peer's C-STORE status, ``None`` when it was never sent
    (unreadable, refused presentation context, association kept failing)."""
    bytes: int = 0
    seconds: float = 0.0
    associations: int = 0


def _read_info(path: Path, known: tuple[str, str] | None = None) -> _FileInfo:
    """The file's SOP Class and Instance UIDs and its transfer syntax.

    With *known* UIDs (the node's own result objects: their rows hold them),
    only the File Meta Information is read, for the transfer syntax.
    """
    if known is not None:
        meta = read_file_meta_info(path)
        return _FileInfo(path, known[0], known[1], str(meta.TransferSyntaxUID))
    ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
    return _FileInfo(
        path,
        str(ds.SOPClassUID),
        str(ds.SOPInstanceUID),
        str(ds.file_meta.TransferSyntaxUID),
    )


def send_files(
    peer: DicomPeer,
    files: Sequence[Path],
    *,
    calling_ae: str = "DICOM_NODE",
    timeout_s: float = 30.0,
    max_reassociations: int = 3,
    progress: Callable[[Path, int | None], None] | None = None,
    known_uids: Mapping[Path, tuple[str, str]] | None = None,
) -> SendReport:
    """C-STORE *files* to *peer*, one association per group of <=128 contexts.

    Each (SOP class, transfer syntax) pair of the files is proposed as its
    own presentation context, so every file goes as it is, without
    transcoding.  Files that cannot be read, are
    refused by context negotiation, or get a failure status are reported in
    :attr:`SendReport.failed`; warning statuses are logged and reported.
    ``known_uids`` maps files to their (SOP Class, SOP Instance) UIDs when the
    caller has them; only the file meta of those is read.
    """
    report = SendReport()
    t0 = time.perf_counter()
    infos: list[_FileInfo] = []
    for f in files:
        try:
            infos.append(_read_info(f, (known_uids or {}).get(f)))
        except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:
            report.failed.append((f, f"not a readable DICOM file: {exc}"))
            if progress:
                progress(f, None)
    pending = list(infos)
    attempts = 0
    while pending:
        batch, contexts = _next_batch(pending)
        ae = _make_ae(calling_ae, timeout_s)
        for sop_class, syntaxes in contexts:
            ae.add_requested_context(sop_class, syntaxes)
        report.associations += 1
        assoc = associate(ae, peer.host, peer.port, ae_title=peer.ae_title,
                          tls_args=_tls_args(peer), where=str(peer), timeout_s=timeout_s)
        _nodelay(assoc)
        done = 0
        try:
            for info in batch:
                if not assoc.is_established:
                    break
                try:
                    rsp = assoc.send_c_store(info.path)
                except ValueError as exc:  # no accepted context for this SOP class / syntax
                    report.failed.append((info.path, f"presentation context refused: {exc}"))
                    report.statuses[info.path] = None
                    done += 1
                    if progress:
                        progress(info.path, None)
                    continue
                except RuntimeError:  # association died under us
                    break
                if not rsp or "Status" not in rsp:
                    break  # reply lost: re-associate and resend this one
                status = int(rsp.Status)
                report.statuses[info.path] = status
                done += 1
                if st.is_success_or_warning(status):
                    report.sent += 1
                    report.bytes += info.path.stat().st_size
                    if status != st.SUCCESS:
                        LOGGER.warning("C-STORE of %s: warning 0x%04X", info.path.name, status)
                        report.warnings.append((info.path, status))
                else:
                    comment = str(rsp.get("ErrorComment", "")) if rsp else ""
                    reason = f"status 0x{status:04X} {st.describe(status)} {comment}".strip()
                    report.failed.append((info.path, reason))
                if progress:
                    progress(info.path, status)
        finally:
            if assoc.is_established:
                assoc.release()
        del pending[:done]
        if done < len(batch):
            attempts += 1
            if attempts > max_reassociations:
                for info in pending:
                    report.failed.append((info.path, "association kept failing"))
                    report.statuses[info.path] = None
                break
            LOGGER.warning("association with %s ended early; re-associating", peer)
    report.seconds = time.perf_counter() - t0
    return report


def _tls_args(peer: DicomPeer) -> tuple[ssl.SSLContext, str] | None:
    """The (context, server name) pynetdicom needs for DICOM over TLS (PS3.15 B.1)."""
    if not peer.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=peer.tls_ca_file)
    if peer.tls_cert_file:
        context.load_cert_chain(peer.tls_cert_file, peer.tls_key_file)
    context.check_hostname = peer.tls_check_hostname
    return context, peer.host


def _next_batch(
    pending: list[_FileInfo],
) -> tuple[list[_FileInfo], list[tuple[str, list[str]]]]:
    """The longest prefix of *pending* whose presentation contexts fit (PS3.8 9.3.2.2).

    Each (SOP class, transfer syntax) pair of the files gets a context of its
    own, so every file can go as it is; each SOP class also gets one context
    offering Explicit VR Little Endian (PS3.5 10.1), the fallback a peer
    that refuses a compressed or big-endian syntax may accept.
    """
    contexts: list[tuple[str, list[str]]] = []
    batch: list[_FileInfo] = []
    for info in pending:
        wanted = [(info.sop_class_uid, [info.transfer_syntax_uid])]
        if info.transfer_syntax_uid != EXPLICIT_VR_LITTLE_ENDIAN:
            wanted.append((info.sop_class_uid, [EXPLICIT_VR_LITTLE_ENDIAN]))
        new = [c for c in wanted if c not in contexts]
        if len(contexts) + len(new) > MAX_CONTEXTS:
            break
        contexts.extend(new)
        batch.append(info)
    return batch, contexts
