"""WebPKI validation of an MX host's certificate chain for MTA-STS (RFC 8461 §4.2).

``verify_webpki(chain_der, host, roots, now)`` checks, in order: that the leaf is within its
validity period (certificate-expired), that it names ``host`` (service-identity, RFC 6125
DNS-ID with a whole-label wildcard: certificate-host-mismatch), and that the chain builds to
one of ``roots`` under the CA/Browser Forum profile as implemented by ``cryptography``'s
verifier, slightly relaxed (see ``_ee_policy``) (certificate-not-trusted).  Result types are RFC 8460 §4.3.1's.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID
from service_identity import VerificationError as NameMismatch
from service_identity.cryptography import verify_certificate_hostname
from service_identity.exceptions import CertificateError

from mxd.tlsrpt.results import ResultType

SYSTEM_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"


@attrs.frozen
class WebPKIResult:
    ok: bool
    result_type: ResultType | None = None
    detail: str = ""


@lru_cache(maxsize=4)
def load_roots(path: str = SYSTEM_CA_FILE) -> tuple[x509.Certificate, ...]:
    """The CA certificates of a PEM bundle (the system store by default), cached."""
    return tuple(x509.load_pem_x509_certificates(Path(path).read_bytes()))


def _server_eku(_policy: object, _cert: x509.Certificate,
                ext: x509.ExtendedKeyUsage | None) -> None:
    if ext is not None and ExtendedKeyUsageOID.SERVER_AUTH not in ext and (
            ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in ext):
        raise ValueError("extended key usage does not allow TLS servers")


def _ee_policy() -> verification.ExtensionPolicy:
    """The CA/B Forum end-entity profile, relaxed where OpenSSL-based MTAs are: the
    criticality of subjectAltName and extendedKeyUsage is not checked (many private and
    test CAs mark them critical); a present extendedKeyUsage must allow serverAuth."""
    crit = verification.Criticality.AGNOSTIC
    return (verification.ExtensionPolicy.webpki_defaults_ee()
            .require_present(x509.SubjectAlternativeName, crit, None)
            .may_be_present(x509.ExtendedKeyUsage, crit, _server_eku))


def _utc(now: datetime.datetime | float) -> datetime.datetime:
    if isinstance(now, (int, float)):
        return datetime.datetime.fromtimestamp(now, datetime.UTC)
    return now if now.tzinfo else now.replace(tzinfo=datetime.UTC)


def verify_webpki(chain_der: Sequence[bytes], host: str, roots: Sequence[x509.Certificate],
                  now: datetime.datetime | float) -> WebPKIResult:
    """Validate a server chain (DER, leaf first) for ``host`` against ``roots``."""
    if not chain_der:
        return WebPKIResult(False, ResultType.VALIDATION_FAILURE, "no certificate presented")
    try:
        chain = [x509.load_der_x509_certificate(bytes(c)) for c in chain_der]
    except ValueError as e:
        return WebPKIResult(False, ResultType.VALIDATION_FAILURE, f"unreadable certificate: {e}")
    when = _utc(now)
    leaf = chain[0]
    if when < leaf.not_valid_before_utc or when > leaf.not_valid_after_utc:
        return WebPKIResult(False, ResultType.CERTIFICATE_EXPIRED,
                            f"certificate valid {leaf.not_valid_before_utc:%Y-%m-%d} to "
                            f"{leaf.not_valid_after_utc:%Y-%m-%d}")
    name = host.rstrip(".").lower()
    try:
        verify_certificate_hostname(leaf, name)
    except (NameMismatch, CertificateError) as e:
        return WebPKIResult(False, ResultType.CERTIFICATE_HOST_MISMATCH, f"{name}: {e}")
    if not roots:
        return WebPKIResult(False, ResultType.CERTIFICATE_NOT_TRUSTED, "no trust anchors")
    try:
        verifier = (verification.PolicyBuilder().store(verification.Store(list(roots)))
                    .time(when.replace(tzinfo=None))
                    .extension_policies(
                        ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                        ee_policy=_ee_policy())
                    .build_server_verifier(x509.DNSName(name)))
        verifier.verify(leaf, chain[1:])
    except verification.VerificationError as e:  # RFC 8461 §4.2: must chain to a trusted CA
        return WebPKIResult(False, ResultType.CERTIFICATE_NOT_TRUSTED, str(e))
    except ValueError as e:  # e.g. a name the verifier cannot represent
        return WebPKIResult(False, ResultType.VALIDATION_FAILURE, str(e))
    return WebPKIResult(True)
