"""The certificate store: self-signed fallback on the host keys, atomic install, SNI."""

from __future__ import annotations

import datetime
import socket

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from mxd.certs import CertifiedKey, CertStore, names_for, spki_sha256_of_cert
from mxd.hostkeys import KeyKind
from tests.golive_helpers import NOW, host_keys

NAMES = names_for("mx.example.test", ["example.test"])


def _issued(hk, name: str, days: int = 90) -> CertifiedKey:
    """A certificate for ``name`` on host key ``hk`` signed by a throwaway CA."""
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(NOW - datetime.timedelta(days=1))
          .not_valid_after(NOW + datetime.timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(hk.key.public_key()).serial_number(2)
            .not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return CertifiedKey((leaf, ca), hk.key, hk.kind)


def _handshake(store: CertStore, sni: str | None, rsa_only: bool = False,
               http: bool = False, alpn: list[bytes] | None = None,
               chain: list[x509.Certificate] | None = None) -> x509.Certificate:
    """A real TLS handshake over a socket pair; the certificate the server presented."""
    a, b = socket.socketpair()
    server = SSL.Connection(store.context(None, None, "http/1.1" if http else "smtp"), a)
    server.set_accept_state()
    cctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if rsa_only:  # TLS 1.2 with an RSA-only cipher suite
        cctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        cctx.set_cipher_list(b"ECDHE-RSA-AES128-GCM-SHA256")
    if alpn:
        cctx.set_alpn_protos(alpn)
    client = SSL.Connection(cctx, b)
    if sni:
        client.set_tlsext_host_name(sni.encode())
    client.set_connect_state()
    a.setblocking(False)
    b.setblocking(False)
    for _ in range(100):
        for c in (client, server):
            try:
                c.do_handshake()
            except SSL.WantReadError:
                pass
        if client.get_peer_certificate() is not None and server.get_servername() is not None \
                or (client.get_peer_certificate() is not None and sni is None):
            try:
                client.do_handshake()
                break
            except SSL.WantReadError:
                continue
    cert = client.get_peer_certificate()
    assert cert is not None
    if chain is not None:
        chain += [c.to_cryptography() for c in client.get_peer_cert_chain() or []]
    a.close()
    b.close()
    return cert.to_cryptography()


@pytest.fixture
def keys(tmp_path):
    return host_keys(tmp_path / "keys")


def test_fallback_is_self_signed_for_every_name_on_each_host_key(keys, tmp_path):
    """Without CA certificates every name is served a self-signed certificate made for
    the host key of each kind (never no certificate)."""
    store = CertStore(NAMES, keys, tmp_path / "certs", now=NOW)
    for name in NAMES:
        served = store.current(name)
        assert [c.kind for c in served] == [KeyKind.RSA2048, KeyKind.ECDSAP256]
        for c, hk in zip(served, keys, strict=True):
            assert c.self_signed
            assert spki_sha256_of_cert(c.leaf) == hk.spki_sha256
            sans = c.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            assert set(sans.value.get_values_for_type(x509.DNSName)) == set(NAMES)


def test_fallback_is_kept_across_restarts(keys, tmp_path):
    """The self-signed certificate is stored and reused, so it can be pinned."""
    one = CertStore(NAMES, keys, tmp_path / "certs", now=NOW)
    two = CertStore(NAMES, keys, tmp_path / "certs", now=NOW)
    assert one.fallback[KeyKind.RSA2048].leaf == two.fallback[KeyKind.RSA2048].leaf


def test_install_writes_then_serves_and_survives_a_restart(keys, tmp_path):
    """A new CA certificate is written to disk and served; a new store loads it."""
    store = CertStore(NAMES, keys, tmp_path / "certs", now=NOW)
    issued = _issued(keys[1], "mta-sts.example.test")
    store.install("mta-sts.example.test", issued)
    assert store.get("mta-sts.example.test", KeyKind.ECDSAP256) == issued
    assert _handshake(store, "mta-sts.example.test") == issued.leaf
    again = CertStore(NAMES, keys, tmp_path / "certs", now=NOW)
    assert again.get("mta-sts.example.test", KeyKind.ECDSAP256).leaf == issued.leaf


def test_install_refuses_a_certificate_for_another_key(keys, tmp_path):
    """A certificate whose key is not the host key is refused; the old one stays."""
    store = CertStore(NAMES, keys, tmp_path / "certs", now=NOW)
    wrong = _issued(keys[1], "mx.example.test")
    bad = CertifiedKey(wrong.chain, keys[0].key, KeyKind.RSA2048)
    with pytest.raises(ValueError, match="not for its host key"):
        store.install("mx.example.test", bad)
    assert store.get("mx.example.test", KeyKind.RSA2048) is None
    assert not (tmp_path / "certs" / "mx.example.test.rsa2048.pem").exists()


def test_sni_picks_the_certificate_of_the_name(keys, tmp_path):
    """SNI mta-sts.example.test gets that name's certificate; no SNI or an unknown name
    gets the host name's."""
    store = CertStore(NAMES, keys, tmp_path / "certs", now=NOW)
    mx = _issued(keys[1], "mx.example.test")
    sts = _issued(keys[1], "mta-sts.example.test")
    store.install("mx.example.test", mx)
    store.install("mta-sts.example.test", sts)
    assert _handshake(store, "mta-sts.example.test") == sts.leaf
    assert _handshake(store, None) == mx.leaf
    assert _handshake(store, "unknown.example.test") == mx.leaf


def test_rsa_only_clients_get_the_rsa_certificate(keys, tmp_path):
    """Both certificates are in each context; a client without ECDSA gets the RSA one."""
    store = CertStore(NAMES, keys, tmp_path / "certs", now=NOW)
    cert = _handshake(store, "mx.example.test", rsa_only=True)
    assert spki_sha256_of_cert(cert) == keys[0].spki_sha256


def test_tls_alpn_challenge_certificate_only_for_the_validator(keys, tmp_path):
    """While a TLS-ALPN-01 validation is pending, a client offering ALPN acme-tls/1 to the
    https listener gets the challenge certificate (RFC 8737 §3); ordinary clients of the
    same name, and the mail listeners, keep getting the normal one."""
    from mxd.acme.tlsalpn import challenge_certificate

    store = CertStore(NAMES, keys, tmp_path / "certs", now=NOW)
    pairs = [(challenge_certificate("mta-sts.example.test", "tok.thumb", k.key), k.key)
             for k in keys]
    store.set_challenge("mta-sts.example.test", pairs)
    acme = [b"acme-tls/1"]
    assert _handshake(store, "mta-sts.example.test", http=True, alpn=acme) in \
        [c for c, _ in pairs]
    assert _handshake(store, "mta-sts.example.test", http=True, alpn=acme,
                      rsa_only=True) == pairs[0][0]
    assert _handshake(store, "mta-sts.example.test", http=True,
                      alpn=[b"http/1.1"]) not in [c for c, _ in pairs]
    assert _handshake(store, "mta-sts.example.test", http=True) not in [c for c, _ in pairs]
    assert _handshake(store, "mx.example.test", http=True, alpn=acme) not in \
        [c for c, _ in pairs]
    store.clear_challenge("mta-sts.example.test")
    assert _handshake(store, "mta-sts.example.test", http=True, alpn=acme) not in \
        [c for c, _ in pairs]


def test_each_key_type_is_served_with_its_own_chain(keys, tmp_path):
    """RSA and ECDSA certificates from different intermediates: each handshake carries the
    leaf and only its own issuer."""
    store = CertStore(NAMES, keys, tmp_path / "certs", now=NOW)
    rsa, ecdsa = _issued(keys[0], "mx.example.test"), _issued(keys[1], "mx.example.test")
    store.install("mx.example.test", rsa)
    store.install("mx.example.test", ecdsa)
    got: list[x509.Certificate] = []
    _handshake(store, "mx.example.test", rsa_only=True, chain=got)
    assert got == list(rsa.chain)
    got = []
    _handshake(store, "mx.example.test", chain=got)
    assert got == list(ecdsa.chain)


def test_worker_reloads_what_the_main_process_installed(keys, tmp_path):
    """A worker's store (``CertReloader``) notices the file the main process's ACME
    service wrote, switches to it, and serves it in new handshakes."""
    from twisted.internet import task

    from mxd.certs import CertReloader

    main = CertStore(NAMES, keys, tmp_path / "certs", now=NOW)
    worker = CertStore(NAMES, keys, tmp_path / "certs", now=NOW)
    reloader = CertReloader(worker, task.Clock())
    assert reloader.check() == 0
    issued = _issued(keys[1], "mx.example.test")
    _handshake(worker, "mx.example.test")  # a context built before the change
    main.install("mx.example.test", issued)
    assert reloader.check() == 1
    assert worker.get("mx.example.test", KeyKind.ECDSAP256).leaf == issued.leaf
    assert _handshake(worker, "mx.example.test") == issued.leaf
    assert reloader.check() == 0
