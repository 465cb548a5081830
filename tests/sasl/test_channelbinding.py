"""Channel bindings from real (in-memory) TLS connections, TLS 1.2 and 1.3."""

from __future__ import annotations

import datetime
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from mxd.sasl.channelbinding import (
    EXPORTER_LABEL,
    channel_bindings_from_connection,
    channel_bindings_from_transport,
    extended_master_secret,
    session_reused,
    tls_server_end_point,
)

from .helpers import leaf, pyopenssl_pair, resumed_pair, stdlib_client_pair


def _leaf_der() -> bytes:
    return x509.load_pem_x509_certificate(leaf().cert_chain_pems[0].bytes()).public_bytes(
        serialization.Encoding.DER)


def test_tls13_bindings_agree_on_both_ends() -> None:
    """TLS 1.3: tls-exporter on both ends is the same 32 bytes, tls-unique is absent,
    tls-server-end-point is SHA-256 of the server certificate."""
    pair = pyopenssl_pair("TLSv1.3")
    srv = channel_bindings_from_connection(pair.server, server_side=True)
    cli = channel_bindings_from_connection(pair.client, server_side=False)
    assert srv == cli
    assert srv.tls_version == "TLSv1.3"
    assert srv.tls_exporter is not None and len(srv.tls_exporter) == 32
    assert srv.tls_unique is None
    assert srv.tls_server_end_point == hashlib.sha256(_leaf_der()).digest()
    assert srv.available == ("tls-exporter", "tls-server-end-point")


def test_tls12_with_ems_has_all_three() -> None:
    """TLS 1.2 with extended master secret: exporter, tls-unique (the client's Finished)
    and end-point, equal on both ends."""
    pair = pyopenssl_pair("TLSv1.2", ems=True)
    assert extended_master_secret(pair.server) and not session_reused(pair.server)
    srv = channel_bindings_from_connection(pair.server, server_side=True)
    cli = channel_bindings_from_connection(pair.client, server_side=False)
    assert srv == cli
    assert srv.tls_unique == pair.client.get_finished() and len(srv.tls_unique) == 12
    assert srv.tls_exporter == pair.client.export_keying_material(EXPORTER_LABEL, 32, None)
    assert srv.available == ("tls-exporter", "tls-unique", "tls-server-end-point")


def test_tls12_exporter_context_matters() -> None:
    """On TLS 1.2 the no-context exporter differs from the empty-context one, which is
    why mxd always uses the no-context form (RFC 9266 §2)."""
    pair = pyopenssl_pair("TLSv1.2", ems=True)
    srv = channel_bindings_from_connection(pair.server)
    assert srv.tls_exporter != pair.server.export_keying_material(EXPORTER_LABEL, 32, b"")


def test_tls12_without_ems_refuses_exporter() -> None:
    """TLS 1.2 without extended master secret: no tls-exporter (RFC 9266 §3), tls-unique
    still offered on a full handshake."""
    pair = pyopenssl_pair("TLSv1.2", ems=False)
    assert not extended_master_secret(pair.server)
    srv = channel_bindings_from_connection(pair.server)
    assert srv.tls_exporter is None
    assert srv.tls_unique == pair.client.get_finished()
    assert srv.available == ("tls-unique", "tls-server-end-point")


def test_tls12_resumed_with_ems_uses_server_finished() -> None:
    """On a resumed TLS 1.2 session tls-unique is the server's Finished (RFC 5929 §3.1),
    and both ends agree."""
    pair = resumed_pair("TLSv1.2", ems=True)
    assert session_reused(pair.server) and session_reused(pair.client)
    srv = channel_bindings_from_connection(pair.server, server_side=True)
    cli = channel_bindings_from_connection(pair.client, server_side=False)
    assert srv.tls_unique == pair.server.get_finished()
    assert srv.tls_unique == cli.tls_unique
    assert srv.tls_exporter == cli.tls_exporter is not None


def test_tls12_resumed_without_ems_refuses_tls_unique() -> None:
    """A resumed TLS 1.2 session without extended master secret has no tls-unique
    (triple handshake) and no exporter; only tls-server-end-point remains."""
    pair = resumed_pair("TLSv1.2", ems=False)
    assert session_reused(pair.server)
    srv = channel_bindings_from_connection(pair.server)
    assert srv.tls_unique is None and srv.tls_exporter is None
    assert srv.available == ("tls-server-end-point",)


def test_tls13_resumed_still_has_exporter() -> None:
    """TLS 1.3 resumption keeps tls-exporter, equal on both ends."""
    pair = resumed_pair("TLSv1.3")
    assert session_reused(pair.server)
    srv = channel_bindings_from_connection(pair.server, server_side=True)
    cli = channel_bindings_from_connection(pair.client, server_side=False)
    assert srv.tls_exporter == cli.tls_exporter is not None
    assert srv.tls_unique is None


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_stdlib_client_agrees(version: str) -> None:
    """An independent TLS client (Python's ssl module) sees the same tls-unique (TLS 1.2)
    and the same server certificate hash."""
    pair = stdlib_client_pair(version)
    srv = channel_bindings_from_connection(pair.server)
    der = pair.client.getpeercert(binary_form=True)
    assert der is not None
    assert tls_server_end_point(der) == srv.tls_server_end_point
    if version == "TLSv1.2":
        assert pair.client.get_channel_binding("tls-unique") == srv.tls_unique
    else:
        assert srv.tls_unique is None


# --- tls-server-end-point hash choice (RFC 5929 §4.1) -----------------------------------

SHA1_CERT = b"""-----BEGIN CERTIFICATE-----
MIIBjTCCATSgAwIBAgIUQFcyqODM8mdov+qJJPgZd7IL9dwwCQYHKoZIzj0EATAc
MRowGAYDVQQDDBFzaGExLmV4YW1wbGUudGVzdDAgFw0yNjExMjgxNjE4MjRaGA8y
MTI2MTEwNDE2MTgyNFowHDEaMBgGA1UEAwwRc2hhMS5leGFtcGxlLnRlc3QwWTAT
BgcqhkjOPQIBBggqhkjOPQMBBwNCAAQqC4FwP1FfR6iJIOpdfYIIUWSsfW+SuUYV
pqmO1vcIX98wyeqXPyRiP5t19fsYcaset5inuZIfhl6C4Snp48ego1MwUTAdBgNV
HQ4EFgQURCUYTo/3OdpgtnsWrxOId86z8icwHwYDVR0jBBgwFoAURCUYTo/3Odpg
tnsWrxOId86z8icwDwYDVR0TAQH/BAUwAwEB/zAJBgcqhkjOPQQBA0gAMEUCIQDU
kqYxm9iRdCkFP9RP0g4W4fcxEOz1b0JMt/NtpD6+1AIgOLkDF2kBmUWgLhAvtdjo
l5+O76Zulf8PntViDWUKv3Q=
-----END CERTIFICATE-----
"""


def _self_signed(key, algo) -> bytes:  # type: ignore[no-untyped-def]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cb.example.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, algo))
    return cert.public_bytes(serialization.Encoding.DER)


def test_end_point_sha1_signature_uses_sha256() -> None:
    """A certificate signed with SHA-1 is hashed with SHA-256, not SHA-1."""
    der = x509.load_pem_x509_certificate(SHA1_CERT).public_bytes(serialization.Encoding.DER)
    assert tls_server_end_point(der) == hashlib.sha256(der).digest()


@pytest.mark.parametrize(("algo", "name"), [
    (hashes.SHA256(), "sha256"), (hashes.SHA384(), "sha384"), (hashes.SHA512(), "sha512"),
])
def test_end_point_uses_signature_hash(algo, name) -> None:
    """Other signature hashes are used as they are."""
    der = _self_signed(ec.generate_private_key(ec.SECP256R1()), algo)
    assert tls_server_end_point(der) == hashlib.new(name, der).digest()


def test_end_point_undefined_for_ed25519() -> None:
    """An Ed25519 signature has no separate hash: no tls-server-end-point binding."""
    assert tls_server_end_point(_self_signed(ed25519.Ed25519PrivateKey.generate(), None)) is None


def test_transport_without_tls_has_no_bindings() -> None:
    """channel_bindings_from_transport answers None for a transport that is not TLS."""
    from twisted.internet.testing import StringTransport

    assert channel_bindings_from_transport(StringTransport()) is None
