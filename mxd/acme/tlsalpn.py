"""The TLS-ALPN-01 challenge, RFC 8737, for the ``acme`` library.

``acme`` 4 and later no longer ship this challenge type, so mxd registers it with the
library's type registry (as the library's own HTTP01 is registered): the challenge's
response is an empty object (RFC 8737 §3), and the validation certificate is built here.
"""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

from acme import challenges
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

# RFC 8737 §6.1: id-pe-acmeIdentifier.
ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")


@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """RFC 8737 §3: the client's response is ``{}`` (the library drops keyAuthorization)."""

    typ = "tls-alpn-01"


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    """RFC 8737 §3: prove control by answering TLS with ALPN ``acme-tls/1``."""

    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key: Any, **unused_kwargs: Any) -> Any:
        return self.key_authorization(account_key)


def challenge_certificate(domain: str, key_authorization: str, key: Any,
                          now: datetime.datetime | None = None) -> x509.Certificate:
    """The self-signed validation certificate (RFC 8737 §3): one dNSName SAN and the
    critical acmeIdentifier extension holding the SHA-256 of the key authorization as a DER
    OCTET STRING."""
    now = now or datetime.datetime.now(datetime.UTC)
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    der = b"\x04\x20" + digest  # OCTET STRING, length 32
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ACME challenge")])
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, der), critical=True)
        .sign(key, hashes.SHA256())
    )
