"""DICOM over TLS for the Storage SCP (PS3.15 Annex B, B.9 BCP 195 profile).

:func:`server_context` builds the :class:`ssl.SSLContext` of the node's TLS
port from ``[node] tls_*``: TLS 1.2 at least (RFC 9325 / BCP 195 4.1), the
AEAD cipher suites with forward secrecy that BCP 195 recommends (RFC 9325 4.2;
TLS 1.3 suites are all of that kind), no compression (RFC 9325 3.3) and no
renegotiation.  With ``tls_ca_file`` the server asks for a client
certificate and verifies it; ``tls_require_client_cert`` refuses clients
without one.

:func:`handshake` runs in the association's thread, bounded by the ACSE
deadline (PS3.8 9.1.6), so a client that never finishes its handshake holds
only its own connection.  :func:`peer_identity` gives the verified client
certificate's subject as an RFC 4514 string, the association's TLS identity.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass

from dicom_node.config import NodeSettings

__all__ = [
    "BCP195_CIPHERS",
    "ClosedBeforeHandshake",
    "TlsFailure",
    "TlsSession",
    "handshake",
    "server_context",
]

BCP195_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    )
)
"""TLS 1.2 cipher suites of PS3.15 B.9 / RFC 9325 4.2 (OpenSSL names)."""

_RDN_NAMES = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}
"""RFC 4514 2.3 short names of the attribute types Python reports by long name."""


def server_context(node: NodeSettings) -> ssl.SSLContext:
    """The server-side TLS context of ``[node] tls_*`` (PS3.15 B.9).

    Raises
    ------
    ssl.SSLError, OSError
        A certificate, key or CA file cannot be loaded (or they do not match).
    """
    if node.tls_cert_file is None or node.tls_key_file is None:
        raise ValueError("DICOM TLS needs tls_cert_file and tls_key_file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    context.load_cert_chain(str(node.tls_cert_file), str(node.tls_key_file))
    if node.tls_ca_file is not None:
        context.load_verify_locations(cafile=str(node.tls_ca_file))
        context.verify_mode = (
            ssl.CERT_REQUIRED if node.tls_require_client_cert else ssl.CERT_OPTIONAL
        )
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True)
class TlsSession:
    """What a finished handshake established."""

    version: str
    """Negotiated protocol, e.g. ``TLSv1.3``."""
    cipher: str
    identity: str | None
    """The verified client certificate's subject (RFC 4514), ``None`` without one."""


class TlsFailure(Exception):
    """The TLS handshake did not complete; the message says why, for the log."""


class ClosedBeforeHandshake(TlsFailure):
    """The peer closed without sending a byte (a port probe, like a health check)."""


def handshake(
    context: ssl.SSLContext, conn: socket.socket, deadline: float
) -> tuple[ssl.SSLSocket, TlsSession]:
    """Wrap *conn* and complete the server handshake by *deadline* (monotonic).

    The first byte is looked at before the handshake: 0x01 is an
    A-ASSOCIATE-RQ (PS3.8 9.3.2), i.e. a client speaking plain DICOM to the
    TLS port, which gets a clearer log line than OpenSSL's.

    Raises
    ------
    TlsFailure
        The peer closed, sent plain DICOM, failed verification, or did not
        finish by the deadline.
    """
    conn.settimeout(_remaining(deadline))
    try:
        first = conn.recv(1, socket.MSG_PEEK)
    except TimeoutError:
        raise TlsFailure("no TLS handshake within acse_timeout") from None
    except OSError as exc:
        raise TlsFailure(f"connection failed before the TLS handshake: {exc}") from None
    if not first:
        raise ClosedBeforeHandshake("connection closed before the TLS handshake")
    if first == b"\x01":
        raise TlsFailure("plain DICOM (A-ASSOCIATE-RQ) on the TLS port, not a TLS client")
    tls = context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
    try:
        tls.settimeout(_remaining(deadline))
        tls.do_handshake()
    except TimeoutError:
        tls.close()
        raise TlsFailure("TLS handshake not complete within acse_timeout") from None
    except ssl.SSLError as exc:
        tls.close()
        raise TlsFailure(f"TLS handshake failed: {_ssl_reason(exc)}") from None
    except OSError as exc:
        tls.close()
        raise TlsFailure(f"connection failed during the TLS handshake: {exc}") from None
    cipher = tls.cipher()
    session = TlsSession(
        version=tls.version() or "",
        cipher=cipher[0] if cipher else "",
        identity=peer_identity(tls),
    )
    return tls, session


def peer_identity(tls: ssl.SSLSocket) -> str | None:
    """The verified client certificate's subject as RFC 4514 text (``None``: none)."""
    cert = tls.getpeercert()
    if not cert:
        return None
    rdns = cert.get("subject", ())
    parts = []
    for rdn in reversed(rdns):  # RFC 4514 2.1: the last RDN first
        parts.append("+".join(f"{_RDN_NAMES.get(key, key)}={_escape(value)}" for key, value in rdn))
    return ",".join(parts) or None


def _escape(value: str) -> str:
    """RFC 4514 2.4 escaping of an attribute value."""
    out = "".join("\\" + ch if ch in ',+"\\<>;=' else ch for ch in value)
    if out.startswith(("#", " ")):
        out = "\\" + out
    if out.endswith(" ") and len(out) > 1:
        out = out[:-1] + "\\ "
    return out


def _ssl_reason(exc: ssl.SSLError) -> str:
    reason = getattr(exc, "reason", None)
    verify = getattr(exc, "verify_message", None)
    if verify:
        return f"client certificate rejected ({verify})"
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return "no client certificate (tls_require_client_cert)"
    if reason == "WRONG_VERSION_NUMBER" or reason == "UNSUPPORTED_PROTOCOL":
        return f"protocol version not accepted ({reason}; TLS 1.2 or later required)"
    if reason == "NO_SHARED_CIPHER":
        return "no BCP 195 cipher suite in common"
    return str(reason or exc)


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TlsFailure("no TLS handshake within acse_timeout")
    return remaining
