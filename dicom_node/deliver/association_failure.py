"""Why an association could not be made, in words an admin can act on.

pynetdicom answers a failed ``AE.associate`` with an association that is
not established and logs the cause; the node records it on the delivery and
shows it in the console instead: ``connection refused by 10.0.0.5:104``,
``no answer from ...``, ``association rejected by PACS@...: called AE title
not recognised (service user, permanent)`` (PS3.8 9.3.4, A-ASSOCIATE-RJ
Result, Source and Reason), or ``aborted``.
"""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["AssociationWitness", "associate", "connect_failure"]


class AssociationWitness:
    """Watches one association request (bind :attr:`handlers` to ``AE.associate``)
    and says afterwards why it failed (:meth:`reason`)."""

    def __init__(self) -> None:
        self.rejection: str | None = None
        self.answered = False
        """The peer sent an A-ASSOCIATE response (accept or reject)."""

    @property
    def handlers(self) -> list[tuple[Any, Any]]:
        from pynetdicom import evt

        return [(evt.EVT_ACSE_RECV, self._on_acse)]

    def _on_acse(self, event: Any) -> None:
        primitive = getattr(event, "primitive", None)
        result = getattr(primitive, "result", None)
        if result is not None:
            self.answered = True
        if result in (0x01, 0x02):
            reason = str(getattr(primitive, "reason_str", "") or "").strip()
            source = str(getattr(primitive, "source_str", "") or "").strip()
            kind = str(getattr(primitive, "result_str", "") or "").strip()
            detail = ", ".join(s for s in (source, kind) if s)
            self.rejection = f"{reason} ({detail})" if detail else reason

    def reason(self, assoc: Any, where: str, host: str, port: int, timeout_s: float) -> str:
        """Why *assoc* (to the peer named *where* at *host*:*port*) is not established."""
        if self.rejection is not None or getattr(assoc, "is_rejected", False):
            return f"association rejected by {where}: {self.rejection or 'no reason given'}"
        if self.answered:
            return f"association aborted by {where}: no presentation context was accepted"
        return connect_failure(host, port, min(timeout_s, 5.0)) or (
            f"association with {where} failed after the connection was made "
            "(no answer to the request, or an abort: is it a DICOM port, TLS as configured?)"
        )


def connect_failure(host: str, port: int, timeout_s: float = 5.0) -> str | None:
    """Why a TCP connection to *host*:*port* cannot be made; ``None`` when it can."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except ConnectionRefusedError:
        return f"connection refused by {host}:{port} (nothing listens on that port)"
    except socket.gaierror as exc:
        return f"host name {host!r} not found ({exc.strerror or exc})"
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout_s:g} s (host down or firewalled)"
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc.strerror or exc}"


def associate(
    ae: Any, host: str, port: int, *, ae_title: str, tls_args: Any, where: str, timeout_s: float
) -> Any:
    """``ae.associate(...)``, established, or
    :class:`~dicom_node.errors.AssociationRejectedError` saying why not."""
    from dicom_node.errors import AssociationRejectedError

    witness = AssociationWitness()
    try:
        assoc = ae.associate(
            host, port, ae_title=ae_title, tls_args=tls_args, evt_handlers=witness.handlers
        )
    except socket.gaierror as exc:
        raise AssociationRejectedError(
            f"host name {host!r} not found ({exc.strerror or exc})"
        ) from exc
    if not assoc.is_established:
        raise AssociationRejectedError(witness.reason(assoc, where, host, port, timeout_s))
    return assoc
