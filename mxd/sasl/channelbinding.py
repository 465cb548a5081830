"""TLS channel bindings (RFC 5056): tls-unique and tls-server-end-point (RFC 5929),
tls-exporter (RFC 9266), computed from a pyOpenSSL connection.

Call once the handshake has completed (``IHandshakeListener.handshakeCompleted``); the
result is an ``api.ChannelBindings`` value in which a type is None when this
connection cannot provide it safely:

* ``tls-exporter``: TLS 1.3 always; TLS 1.2 only with the extended master secret
  (RFC 7627), else None (RFC 9266 §3).  Always the no-context form: on TLS 1.2 a
  ``None`` context and ``b""`` give different bytes, and RFC 9266 §2 says "no context".
* ``tls-unique``: TLS 1.2 and below only (RFC 9266 §1: undefined for TLS 1.3), the first
  Finished message of the handshake (RFC 5929 §3.1); None on a resumed session without
  extended master secret (the triple-handshake attack, RFC 7627 §1).
* ``tls-server-end-point``: any version, the hash of the server certificate
  (RFC 5929 §4.1); None when its signature uses no single hash (e.g. Ed25519).

Whether the extended master secret was negotiated is read with OpenSSL's
``SSL_get_extms_support`` through the binding that pyOpenSSL itself uses (pyOpenSSL has
no public method for it).  If that binding is missing, TLS 1.2 is treated as having no
extended master secret: tls-exporter is refused and tls-unique allowed only on full
handshakes.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from mxd.sasl.api import ChannelBindings

EXPORTER_LABEL = b"EXPORTER-Channel-Binding"  # RFC 9266 §2
EXPORTER_LENGTH = 32


def _openssl_lib() -> Any:
    try:
        from OpenSSL._util import lib  # the cryptography binding pyOpenSSL is built on
    except ImportError:  # pragma: no cover - depends on the pyOpenSSL build
        return None
    return lib


def extended_master_secret(conn: SSL.Connection) -> bool:
    """True when the (TLS ≤ 1.2) handshake negotiated the extended master secret."""
    lib = _openssl_lib()
    if lib is None or not getattr(lib, "Cryptography_HAS_GET_EXTMS_SUPPORT", False):
        return False  # pragma: no cover - unknown: assume the unsafe case
    return bool(lib.SSL_get_extms_support(conn._ssl) == 1)


def session_reused(conn: SSL.Connection) -> bool:
    """True when the handshake resumed an earlier session (abbreviated handshake)."""
    lib = _openssl_lib()
    if lib is None:  # pragma: no cover
        return True  # unknown: treat as resumed, the unsafe case for tls-unique
    return bool(lib.SSL_session_reused(conn._ssl))


def tls_server_end_point(cert_der: bytes) -> bytes | None:
    """RFC 5929 §4.1: hash the DER certificate with its signature's hash function,
    using SHA-256 when that is MD5 or SHA-1; None when there is no single hash."""
    cert = x509.load_der_x509_certificate(cert_der)
    try:
        algo = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return None
    if algo is None:
        return None
    if isinstance(algo, (hashes.MD5, hashes.SHA1)):
        algo = hashes.SHA256()
    digest = hashes.Hash(algo)
    digest.update(cert_der)
    return digest.finalize()


def channel_bindings_from_connection(
    conn: SSL.Connection, server_side: bool = True,
) -> ChannelBindings:
    """The channel bindings of a connection whose handshake has completed."""
    version = conn.get_protocol_version_name()
    tls13 = version == "TLSv1.3"
    ems = False if tls13 else extended_master_secret(conn)

    exporter: bytes | None = None
    if tls13 or ems:
        try:
            exporter = conn.export_keying_material(EXPORTER_LABEL, EXPORTER_LENGTH, None)
        except SSL.Error:  # handshake not complete: no binding rather than a crash
            exporter = None

    unique: bytes | None = None
    if not tls13 and version.startswith("TLSv1"):
        resumed = session_reused(conn)
        if not resumed or ems:
            # RFC 5929 §3.1: the first Finished of the handshake: the client's on a full
            # handshake, the server's on an abbreviated (resumed) one.
            client_first = not resumed
            own = conn.get_finished()
            peer = conn.get_peer_finished()
            unique = peer if server_side == client_first else own

    cert = conn.get_certificate() if server_side else conn.get_peer_certificate()
    end_point: bytes | None = None
    if cert is not None:
        end_point = tls_server_end_point(cert.to_cryptography().public_bytes(Encoding.DER))

    return ChannelBindings(
        tls_version=version, tls_exporter=exporter, tls_unique=unique or None,
        tls_server_end_point=end_point,
    )


def channel_bindings_from_transport(transport: Any, server_side: bool = True) -> ChannelBindings | None:
    """For a Twisted TLS transport (``transport.getHandle()`` is the pyOpenSSL
    Connection, also after ``startTLS``); None when the transport is not TLS.  Call it
    from ``IHandshakeListener.handshakeCompleted``."""
    get_handle = getattr(transport, "getHandle", None)
    handle = get_handle() if get_handle is not None else None
    if not isinstance(handle, SSL.Connection):
        return None
    return channel_bindings_from_connection(handle, server_side=server_side)

