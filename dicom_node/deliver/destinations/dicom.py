"""``type = "dicom"``: a DICOM peer, sent to by C-STORE (PS3.4 B.2).

Each object is proposed with its SOP class in its own transfer syntax and in
Explicit VR Little Endian; one association carries a batch; the sender sets
``TCP_NODELAY`` and re-associates after a lost reply
(:func:`dicom_node.deliver.scu.send_files`).  Echo is a C-ECHO (PS3.4 A.4).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from pydantic import Field

from dicom_node.config import AETitle, DestinationSettings, Port
from dicom_node.deliver.destinations.base import Outgoing
from dicom_node.errors import AssociationRejectedError, DeliveryError
from dicom_node.protocol import status as st

if TYPE_CHECKING:
    from storage.jobs import DeliveryOutcome

__all__ = ["DicomDestination", "DicomDestinationSettings", "is_permanent_failure"]


class DicomDestinationSettings(DestinationSettings):
    """``[[destinations]]`` with ``type = "dicom"``: a DICOM peer."""

    required_fields: ClassVar[tuple[str, ...]] = ("ae_title", "host", "port")
    path_fields: ClassVar[tuple[str, ...]] = ("tls_ca_file", "tls_cert_file", "tls_key_file")

    type: Literal["dicom"]
    ae_title: AETitle
    host: str
    port: Port
    tls: bool = False
    """DICOM over TLS (PS3.15 B.1)."""
    tls_ca_file: Path | None = None
    """CA bundle to verify the peer (``None``: the system's)."""
    tls_cert_file: Path | None = None
    """Client certificate, when the peer asks for one."""
    tls_key_file: Path | None = None
    tls_check_hostname: bool = True
    timeout_s: Annotated[float, Field(gt=0)] = 30.0
    """Network timeout of an association."""


def is_permanent_failure(status: int | None) -> bool:
    """Failure statuses a retry cannot fix (PS3.4 B.2.3; PS3.7 C).

    ``None`` (the presentation context was refused), 0xA9xx (data set does
    not match the SOP class), 0xCxxx (cannot understand), 0x0122 (SOP class
    not supported).  Out of Resources (0xA7xx) and processing failures
    (0x0110, 0x0111, 0x0212) are worth retrying.
    """
    if status is None:
        return True
    return status & 0xFF00 == 0xA900 or status & 0xF000 == 0xC000 or status == 0x0122


class DicomDestination:
    """C-STORE to a DICOM peer; the outcome of each object is its DIMSE status."""

    type_name: ClassVar[str] = "dicom"
    settings_model: ClassVar[type[DestinationSettings]] = DicomDestinationSettings

    def __init__(self, settings: DicomDestinationSettings, *, calling_ae: str) -> None:
        self.settings = settings
        self.calling_ae = calling_ae

    def send(self, objects: Sequence[Outgoing]) -> list[DeliveryOutcome]:
        """One association for the batch; Success and warnings (0xBxxx) are sent.

        An association that cannot be made or is lost: every object is retried.
        A refused presentation context or a permanent failure status
        (:func:`is_permanent_failure`) fails at once.
        """
        if not objects:
            return []
        from dicom_node.deliver.scu import peer_of, send_files
        from storage.jobs import DeliveryOutcome

        dest = self.settings
        files = [o.path for o in objects]
        known = {o.path: (o.sop_class_uid, o.sop_instance_uid) for o in objects if o.sop_class_uid}
        try:
            report = send_files(
                peer_of(dest),
                files,
                calling_ae=self.calling_ae,
                timeout_s=dest.timeout_s,
                known_uids=known,
            )
        except (AssociationRejectedError, DeliveryError, OSError, RuntimeError) as exc:
            error = f"{dest.name}: {exc}"
            return [DeliveryOutcome(o.delivery_id, False, None, error, retry=True) for o in objects]
        reasons = dict(report.failed)
        out = []
        for obj, path in zip(objects, files, strict=True):
            status = report.statuses.get(path)
            if status is not None and st.is_success_or_warning(status):
                out.append(DeliveryOutcome(obj.delivery_id, True, status))
                continue
            reason = reasons.get(path, "not sent")
            unsent = status is None and "presentation context" not in reason
            permanent = not unsent and is_permanent_failure(status)
            out.append(DeliveryOutcome(obj.delivery_id, False, status, reason, retry=not permanent))
        return out

    def echo(self) -> float:
        """C-ECHO the peer (PS3.4 A.4); the round trip in seconds."""
        from dicom_node.deliver.scu import echo, peer_of

        return echo(peer_of(self.settings), self.calling_ae, self.settings.timeout_s)
