"""The TLS-ALPN-01 validation certificate (RFC 8737 §3) and the challenge's JSON."""

from __future__ import annotations

import hashlib

import josepy as jose
from acme import challenges
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from mxd.acme.tlsalpn import ACME_IDENTIFIER_OID, TLSALPN01, challenge_certificate


def test_certificate_carries_the_key_authorization_digest():
    key = ec.generate_private_key(ec.SECP256R1())
    cert = challenge_certificate("mx.example.test", "tok.thumb", key)
    ext = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    assert ext.critical
    assert ext.value.value == b"\x04\x20" + hashlib.sha256(b"tok.thumb").digest()
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.value.get_values_for_type(x509.DNSName) == ["mx.example.test"]


def test_challenge_parses_and_its_response_is_an_empty_object():
    """The CA's tls-alpn-01 object becomes our class; the response posted is ``{}``."""
    chall = challenges.Challenge.from_json({"type": "tls-alpn-01", "token": "a" * 43})
    assert isinstance(chall, TLSALPN01)
    account = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    response = chall.response(account)
    assert response.to_partial_json() == {}
    assert chall.validation(account) == chall.key_authorization(account)
