"""Certificate chains for the DANE and MTA-STS tests (trustme and cryptography)."""

from __future__ import annotations

import datetime
from functools import cache

import attrs
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _load(blob: trustme.Blob) -> x509.Certificate:
    return x509.load_pem_x509_certificate(blob.bytes())


@attrs.frozen
class Chain:
    """A server chain, leaf first, and the CA certificates above it."""

    certs: tuple[x509.Certificate, ...]
    root: x509.Certificate

    @property
    def der(self) -> list[bytes]:
        return [der(c) for c in self.certs]


def leaf_chain(ca: trustme.CA, *names: str, not_before: datetime.datetime | None = None,
               not_after: datetime.datetime | None = None) -> Chain:
    leaf = ca.issue_cert(*names, not_before=not_before, not_after=not_after)
    certs = tuple(_load(b) for b in leaf.cert_chain_pems)
    return Chain(certs, _load(ca.cert_pem))


@cache
def root_ca() -> trustme.CA:
    return trustme.CA()


@cache
def intermediate_ca() -> trustme.CA:
    return root_ca().create_child_ca()


def mx_chain(*names: str, intermediate: bool = True, **kw: object) -> Chain:
    """leaf (names) <- intermediate <- root; the chain as a server sends it (no root)."""
    ca = intermediate_ca() if intermediate else root_ca()
    chain = leaf_chain(ca, *(names or ("mx.example.test",)), **kw)  # type: ignore[arg-type]
    return Chain(chain.certs, _load(root_ca().cert_pem))


def self_signed(cn: str, *, ca: bool = False, san: tuple[str, ...] = (),
                not_after: datetime.datetime | None = None) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed certificate (for DANE-EE tests and a non-CA issuer)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(NOW - datetime.timedelta(days=10))
         .not_valid_after(not_after or NOW + datetime.timedelta(days=10))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in san]),
                            critical=False)
    return b.sign(key, hashes.SHA256()), key


def issued_by(issuer: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey, cn: str,
              san: tuple[str, ...] = ()) -> x509.Certificate:
    """A leaf signed by ``issuer`` (whatever its CA flag)."""
    key = ec.generate_private_key(ec.SECP256R1())
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(issuer.subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(NOW - datetime.timedelta(days=1))
         .not_valid_after(NOW + datetime.timedelta(days=1)))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in san]),
                            critical=False)
    return b.sign(issuer_key, hashes.SHA256())
