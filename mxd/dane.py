"""DANE for SMTP (RFC 7672): TLSA matching (RFC 6698, RFC 7671) and the per-host decision.

Pure cores, no I/O:

* ``classify`` splits a TLSA RRset into usable and unusable records (RFC 7672 §3.1): only
  DANE-TA(2) and DANE-EE(3) with selector 0/1 and matching type 0/1/2 are usable for SMTP;
  PKIX-TA(0) and PKIX-EE(1) are not (§3.1.3), nor unknown parameters or digests of the wrong
  length (RFC 7671 §4).
* ``verify_chain`` checks a server's certificate chain (DER, leaf first) against the usable
  records: DANE-EE(3) matches the leaf only, with no name or expiry checks (RFC 7672
  §3.1.1); DANE-TA(2) matches a certificate of the chain (or its public key), an issuer
  path from the leaf up to it is built from the presented certificates (in any order) and
  validated link by link (issuer name, signature, CA constraints, validity), and the leaf's
  names are checked against the reference identifiers (RFC 7672 §3.1.2, §3.2.2, §3.2.3).
* ``decide`` is the per-host decision of RFC 7672 §2.2 from the authentic status of the MX
  and address lookups and the outcome of the TLSA lookup.

One thin adapter, ``lookup_tlsa``, asks an mxd.dns resolver for ``_25._tcp.<host>`` (with the
CNAME rule of RFC 7672 §2.2.2) and returns a ``TLSALookup`` value for ``decide``.

Choices made here:

* A non-authentic TLSA answer (or non-authentic denial) for a host whose address records were
  authentic is treated like a failed lookup: the host is not used now (temporary failure).
  With a trusted validating resolver this only happens when ``_25._tcp.<host>`` lies in an
  unsigned delegation, which is a misconfiguration worth deferring over rather than a
  reason to drop to unauthenticated TLS silently.
* When the MX lookup was not authentic, no TLSA lookup is made (no DANE; as Postfix's
  ``smtp_tls_dane_insecure_mx_policy = may``).
* DANE-TA: the trust anchor's own validity dates are not checked (DNSSEC vouches for it;
  Postfix/OpenSSL agree, see tests/integration/test_dane_lab.py); every certificate below it
  must be within its validity period.  A
  DANE-TA(2) record that matches the leaf makes the leaf its own anchor (names still checked).
  A trust anchor given only as a public key (``2 1 0``) that signs the top certificate of the
  chain is accepted.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mxd.dns.errors import DNSLookupError, DNSNegativeAnswer, DNSTemporaryError
from mxd.dns.interfaces import IResolver
from mxd.dns.results import TLSA
from mxd.errors import MxdError
from mxd.tlsrpt.results import ResultType

__all__ = [
    "TLSA", "DANEDecision", "DANEError", "DANEResult", "Decision", "MatchingType",
    "Selector", "TLSALookup", "TLSAOutcome", "Usage", "association_data", "classify",
    "decide", "is_usable", "lookup_tlsa", "match_name", "tlsa_base_name", "tlsa_for_certificate",
    "tlsa_text", "verify_chain",
]


class DANEError(MxdError):
    """Base of the errors raised by mxd.dane (bad input, not verification outcomes)."""


class Usage(enum.IntEnum):
    """TLSA certificate usage (RFC 6698 §2.1.1, names from RFC 7218)."""

    PKIX_TA = 0
    PKIX_EE = 1
    DANE_TA = 2
    DANE_EE = 3


class Selector(enum.IntEnum):
    """TLSA selector (RFC 6698 §2.1.2)."""

    CERT = 0
    SPKI = 1


class MatchingType(enum.IntEnum):
    """TLSA matching type (RFC 6698 §2.1.3)."""

    FULL = 0
    SHA2_256 = 1
    SHA2_512 = 2


_DIGEST_SIZE = {MatchingType.SHA2_256: 32, MatchingType.SHA2_512: 64}


# -- records ---------------------------------------------------------------------------


def tlsa_text(record: TLSA) -> str:
    """Presentation form without spaces in the data, as RFC 8460 §4.4 wants it."""
    return f"{record.usage} {record.selector} {record.mtype} {record.data.hex().upper()}"


def is_usable(record: TLSA) -> bool:
    """Whether an SMTP client can use ``record`` (RFC 7672 §3.1, RFC 7671 §4)."""
    if record.usage not in (Usage.DANE_TA, Usage.DANE_EE):  # RFC 7672 §3.1.3
        return False
    if record.selector not in (Selector.CERT, Selector.SPKI):
        return False
    if record.mtype == MatchingType.FULL:
        return len(record.data) > 0
    size = _DIGEST_SIZE.get(MatchingType(record.mtype)) if record.mtype in (1, 2) else None
    return size is not None and len(record.data) == size  # RFC 7671 §4: wrong length unusable


def classify(records: Iterable[TLSA]) -> tuple[tuple[TLSA, ...], tuple[TLSA, ...]]:
    """(usable, unusable) records of an RRset, in their original order."""
    usable: list[TLSA] = []
    unusable: list[TLSA] = []
    for r in records:
        (usable if is_usable(r) else unusable).append(r)
    return tuple(usable), tuple(unusable)


def _selected(cert: x509.Certificate, selector: int) -> bytes:
    if selector == Selector.CERT:
        return cert.public_bytes(serialization.Encoding.DER)
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _digest(data: bytes, mtype: int) -> bytes:
    if mtype == MatchingType.SHA2_256:
        return hashlib.sha256(data).digest()
    if mtype == MatchingType.SHA2_512:
        return hashlib.sha512(data).digest()
    return data


def association_data(cert: x509.Certificate | bytes, selector: int, mtype: int) -> bytes:
    """The certificate association data of ``cert`` for a selector and matching type
    (RFC 6698 §2.1.2-2.1.3)."""
    c = x509.load_der_x509_certificate(cert) if isinstance(cert, bytes) else cert
    return _digest(_selected(c, selector), mtype)


def tlsa_for_certificate(cert: x509.Certificate | bytes, usage: int = 3, selector: int = 1,
                         mtype: int = 1) -> TLSA:
    """The TLSA record that matches ``cert`` (``3 1 1`` by default, RFC 7671 §5.1)."""
    return TLSA(usage, selector, mtype, association_data(cert, selector, mtype))


def _matches(record: TLSA, cert: x509.Certificate) -> bool:
    return _digest(_selected(cert, record.selector), record.mtype) == record.data


# -- names -----------------------------------------------------------------------------


def match_name(pattern: str, name: str) -> bool:
    """RFC 7672 §3.2.3: exact match, or a ``*`` leftmost label matching exactly one label
    (no partial-label wildcards).  Both in ASCII form; case-insensitive."""
    p = pattern.rstrip(".").lower()
    n = name.rstrip(".").lower()
    if not p or not n:
        return False
    if p == n:
        return True
    if p.startswith("*.") and "*" not in p[2:]:
        head, _, rest = n.partition(".")
        return bool(head) and rest == p[2:] and "." in p[2:]
    return False


def _cert_names(cert: x509.Certificate) -> list[str]:
    """DNS-IDs of ``cert``; the CN when there is none (RFC 7672 §3.2.3 follows RFC 6125)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    if names:
        return names
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


# -- chain checks ----------------------------------------------------------------------


class _Fail(Exception):
    def __init__(self, result_type: ResultType, detail: str) -> None:
        self.result_type = result_type
        self.detail = detail
        super().__init__(detail)


def _utc(now: datetime.datetime | float) -> datetime.datetime:
    if isinstance(now, (int, float)):
        return datetime.datetime.fromtimestamp(now, datetime.UTC)
    if now.tzinfo is None:
        return now.replace(tzinfo=datetime.UTC)
    return now


def _check_validity(cert: x509.Certificate, now: datetime.datetime, what: str) -> None:
    if now < cert.not_valid_before_utc:
        raise _Fail(ResultType.CERTIFICATE_EXPIRED, f"{what} is not yet valid")
    if now > cert.not_valid_after_utc:
        raise _Fail(ResultType.CERTIFICATE_EXPIRED, f"{what} has expired")


def _is_ca(cert: x509.Certificate) -> tuple[bool, int | None]:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False, None
    return bc.ca, bc.path_length


def _verify_signature(child: x509.Certificate, key: Any) -> None:
    """Raise InvalidSignature (or TypeError) unless ``key`` signed ``child``."""
    sig, data = child.signature, child.tbs_certificate_bytes
    if isinstance(key, rsa.RSAPublicKey):
        params = child.signature_algorithm_parameters
        pad = params if isinstance(params, padding.PSS) else padding.PKCS1v15()
        key.verify(sig, data, pad, child.signature_hash_algorithm)  # type: ignore[arg-type]
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(sig, data, ec.ECDSA(child.signature_hash_algorithm))  # type: ignore[arg-type]
    elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        key.verify(sig, data)
    else:
        raise TypeError(f"unsupported key type {type(key).__name__}")


def _check_link(child: x509.Certificate, issuer: x509.Certificate, below: int,
                what: str) -> None:
    """``issuer`` issued ``child``; ``below`` is the number of CA certificates between."""
    try:
        child.verify_directly_issued_by(issuer)
    except ValueError as e:  # issuer name mismatch
        raise _Fail(ResultType.VALIDATION_FAILURE, f"{what}: {e}") from None
    except InvalidSignature:
        raise _Fail(ResultType.VALIDATION_FAILURE, f"{what}: bad signature") from None
    except TypeError as e:
        raise _Fail(ResultType.VALIDATION_FAILURE, f"{what}: {e}") from None
    ca, pathlen = _is_ca(issuer)
    if not ca:
        raise _Fail(ResultType.VALIDATION_FAILURE, f"{what}: issuer is not a CA")
    if pathlen is not None and below > pathlen:
        raise _Fail(ResultType.VALIDATION_FAILURE, f"{what}: path length exceeded")


def _check_server_eku(leaf: x509.Certificate) -> None:
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.SERVER_AUTH not in eku and (
            ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku):
        raise _Fail(ResultType.VALIDATION_FAILURE, "leaf certificate not for TLS servers")


def _check_names(leaf: x509.Certificate, names: Sequence[str]) -> None:
    presented = _cert_names(leaf)
    for ref in names:
        if any(match_name(p, ref) for p in presented):
            return
    raise _Fail(ResultType.CERTIFICATE_HOST_MISMATCH,
                f"certificate names {presented} match none of {list(names)}")


_MAX_PATH = 10  # certificates in a path
_MAX_POOL = 16  # certificates of a server chain considered
_MAX_PATHS = 32  # candidate paths tried per anchor


def _paths(leaf: x509.Certificate, pool: Sequence[x509.Certificate],
           is_top: Any) -> list[list[x509.Certificate]]:
    """Candidate issuer paths [leaf, ..., top] through ``pool`` (any order, as servers send
    chains out of order or with extra certificates) ending where ``is_top(cert)``; issuer
    candidates are chosen by name here and checked by ``_validate`` later."""
    found: list[list[x509.Certificate]] = []

    def walk(path: list[x509.Certificate]) -> None:
        current = path[-1]
        if len(found) >= _MAX_PATHS:
            return
        if is_top(current):
            found.append(list(path))
            return
        if len(path) >= _MAX_PATH:
            return
        for cand in pool[:_MAX_POOL]:
            if cand.subject == current.issuer and all(cand is not p for p in path):
                walk([*path, cand])

    walk([leaf])
    return found


def _validate(path: Sequence[x509.Certificate], now: datetime.datetime,
              names: Sequence[str], anchor_is_cert: bool) -> None:
    """Validate ``path`` (leaf first).  With ``anchor_is_cert`` the last certificate is the
    trust anchor (not date-checked); otherwise every certificate is checked and the anchor
    is a bare key that the caller has verified against the last one."""
    last = len(path) - 1
    for i, cert in enumerate(path):
        if i == last and anchor_is_cert:
            break
        _check_validity(cert, now, "leaf certificate" if i == 0 else f"certificate {i}")
        if i < last:
            # ``i`` intermediate CA certificates lie below path[i + 1] (RFC 5280 §4.2.1.9).
            _check_link(cert, path[i + 1], i, f"certificate {i} -> {i + 1}")
    _check_server_eku(path[0])
    _check_names(path[0], names)


def _signed_by(cert: x509.Certificate, key: Any) -> bool:
    try:
        _verify_signature(cert, key)
    except (InvalidSignature, TypeError, ValueError):
        return False
    return True


def _ta_path(records: Sequence[TLSA], chain: Sequence[x509.Certificate],
             now: datetime.datetime, names: Sequence[str]) -> TLSA:
    """The DANE-TA record through which the chain validates (RFC 7672 §3.1.2)."""
    errors: list[_Fail] = []
    leaf = chain[0]
    for record in records:
        anchors = [c for c in chain if _matches(record, c)]
        for anchor in anchors:
            for path in _paths(leaf, chain, lambda c, a=anchor: c is a):
                try:
                    _validate(path, now, names, anchor_is_cert=True)
                    return record
                except _Fail as e:
                    errors.append(e)
    # RFC 7671 §5.2.2: a bare public key (selector 1, full) may sign the top certificate.
    for record in records:
        if record.selector != Selector.SPKI or record.mtype != MatchingType.FULL:
            continue
        try:
            key = serialization.load_der_public_key(record.data)
        except (ValueError, TypeError):
            continue
        for path in _paths(leaf, chain, lambda c, k=key: _signed_by(c, k)):
            try:
                _validate(path, now, names, anchor_is_cert=False)
                return record
            except _Fail as e:
                errors.append(e)
    if errors:
        raise errors[0]
    raise _Fail(ResultType.VALIDATION_FAILURE, "no DANE-TA record matches the chain")


@attrs.frozen
class DANEResult:
    """The outcome of ``verify_chain``.

    ``verified``: the chain is authenticated by ``matched``; otherwise ``result_type`` (RFC
    8460 §4.3) and ``detail`` say why not.
    """

    verified: bool
    result_type: ResultType | None = None
    detail: str = ""
    matched: TLSA | None = None


def verify_chain(tlsa_records: Iterable[TLSA], chain_der: Sequence[bytes],
                 names: Sequence[str], now: datetime.datetime | float) -> DANEResult:
    """Authenticate a server's chain (DER, leaf first) with DANE (RFC 7672 §3).

    ``names`` are the reference identifiers for DANE-TA(2) (the TLSA base domain first, then
    the MX host name; RFC 7672 §3.2.2), in ASCII form.  Unusable records are ignored; with
    none usable the result is ``tlsa-invalid``.  ``now`` is a POSIX time or an aware
    datetime (only DANE-TA checks dates).
    """
    usable, _unusable = classify(tlsa_records)
    if not usable:
        return DANEResult(False, ResultType.TLSA_INVALID, "no usable TLSA records")
    if not chain_der:
        return DANEResult(False, ResultType.VALIDATION_FAILURE, "no certificate presented")
    try:
        chain = [x509.load_der_x509_certificate(bytes(c)) for c in chain_der]
    except ValueError as e:
        return DANEResult(False, ResultType.VALIDATION_FAILURE, f"unreadable certificate: {e}")
    # RFC 7672 §3.1.1: DANE-EE(3) matches the leaf; no name checks, no expiry checks.
    for record in usable:
        if record.usage == Usage.DANE_EE and _matches(record, chain[0]):
            return DANEResult(True, None, f"DANE-EE {tlsa_text(record)[:16]} matched", record)
    ta = [r for r in usable if r.usage == Usage.DANE_TA]
    if not ta:
        return DANEResult(False, ResultType.VALIDATION_FAILURE,
                          "no DANE-EE record matches the server certificate")
    try:
        record = _ta_path(ta, chain, _utc(now), names)
    except _Fail as e:
        return DANEResult(False, e.result_type, e.detail)
    return DANEResult(True, None, f"DANE-TA {tlsa_text(record)[:16]} matched", record)


# -- the per-host decision (RFC 7672 §2.2) ---------------------------------------------


class TLSAOutcome(enum.StrEnum):
    """What the TLSA lookup for one host produced."""

    RECORDS = "records"  # authentic TLSA records
    DENIAL = "denial"  # authentic NXDOMAIN / no data
    INSECURE = "insecure"  # an answer or denial that was not authentic
    FAILURE = "failure"  # SERVFAIL (e.g. bogus), timeout


@attrs.frozen
class TLSALookup:
    """The TLSA lookup for one host, as ``decide`` needs it.

    ``base_domain``: the name whose ``_25._tcp`` records were found (the TLSA base domain,
    RFC 7672 §2.2.2), or the host name asked for when there were none.
    """

    outcome: TLSAOutcome
    base_domain: str
    records: tuple[TLSA, ...] = ()
    detail: str = ""


class Decision(enum.StrEnum):
    """RFC 7672 §2.2 for one MX host."""

    DANE_REQUIRED = "dane-required"  # TLS mandatory; authenticated when records are usable
    NO_DANE = "no-dane"  # pre-DANE opportunistic TLS (RFC 7435)
    TEMPORARY_FAILURE = "temporary-failure"  # do not use this host now


@attrs.frozen
class DANEDecision:
    """The decision for one host.

    For ``dane-required``: ``usable`` records authenticate the peer; when empty (only
    unusable records) TLS is still mandatory but unauthenticated (RFC 7672 §2.2, §3.1).
    ``result_type`` is what TLS reporting records for a problem found before connecting
    (``dnssec-invalid`` for a failed lookup, ``tlsa-invalid`` for unusable records).
    """

    decision: Decision
    base_domain: str = ""
    usable: tuple[TLSA, ...] = ()
    unusable: tuple[TLSA, ...] = ()
    reason: str = ""
    result_type: ResultType | None = None

    @property
    def authenticated(self) -> bool:
        """Whether the peer must be authenticated with ``usable`` records."""
        return self.decision is Decision.DANE_REQUIRED and bool(self.usable)


def decide(mx_authentic: bool, addr_authentic: bool, tlsa: TLSALookup | None) -> DANEDecision:
    """RFC 7672 §2.2: what DANE means for one host.

    ``mx_authentic``: the MX lookup (and any CNAME leading to it) was DNSSEC-authentic, or
    the host is the implicit MX of an authentic no-MX answer; ``addr_authentic``: the host's
    address records were authentic; ``tlsa``: the TLSA lookup, or None when none was made.
    """
    if not mx_authentic:
        return DANEDecision(Decision.NO_DANE, reason="MX records not DNSSEC-authentic")
    if not addr_authentic:  # RFC 7672 §2.2.2: insecure address records: no TLSA lookup
        return DANEDecision(Decision.NO_DANE, reason="address records not DNSSEC-authentic")
    if tlsa is None:
        raise DANEError("the TLSA lookup is needed when the address records are authentic")
    if tlsa.outcome is TLSAOutcome.DENIAL:
        return DANEDecision(Decision.NO_DANE, tlsa.base_domain,
                            reason="no TLSA records (authentic denial)")
    if tlsa.outcome is TLSAOutcome.FAILURE:  # RFC 7672 §2.1.1: bogus or indeterminate
        return DANEDecision(Decision.TEMPORARY_FAILURE, tlsa.base_domain,
                            reason=f"TLSA lookup failed: {tlsa.detail}".rstrip(": "),
                            result_type=ResultType.DNSSEC_INVALID)
    if tlsa.outcome is TLSAOutcome.INSECURE:
        return DANEDecision(Decision.TEMPORARY_FAILURE, tlsa.base_domain,
                            reason="TLSA answer not DNSSEC-authentic for a signed host",
                            result_type=ResultType.DNSSEC_INVALID)
    usable, unusable = classify(tlsa.records)
    if not usable and not unusable:
        return DANEDecision(Decision.NO_DANE, tlsa.base_domain, reason="empty TLSA RRset")
    return DANEDecision(
        Decision.DANE_REQUIRED, tlsa.base_domain, usable, unusable,
        reason="usable TLSA records" if usable else "only unusable TLSA records",
        result_type=None if usable else ResultType.TLSA_INVALID,
    )


def reference_names(mx_host: str, base_domain: str, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """RFC 7672 §3.2.2: the TLSA base domain first, then the MX host name, then ``extra``
    (e.g. the CNAME-expanded next-hop domain), without duplicates, in ASCII form."""
    out: list[str] = []
    for n in (base_domain, mx_host, *extra):
        n = n.rstrip(".").lower()
        if n and n not in out:
            out.append(n)
    return tuple(out)


# -- the thin adapter ------------------------------------------------------------------


def tlsa_base_name(host: str, port: int = 25) -> str:
    """``_25._tcp.<host>`` (RFC 6698 §3, RFC 7672 §2.2)."""
    return f"_{port}._tcp.{host.rstrip('.').lower()}"


async def _lookup_one(resolver: IResolver, host: str, port: int) -> TLSALookup:
    try:
        answer = await resolver.lookup_tlsa(tlsa_base_name(host, port))
    except DNSNegativeAnswer as e:
        if e.authentic:
            return TLSALookup(TLSAOutcome.DENIAL, host, detail=str(e))
        return TLSALookup(TLSAOutcome.INSECURE, host, detail=str(e))
    except DNSTemporaryError as e:
        return TLSALookup(TLSAOutcome.FAILURE, host, detail=str(e))
    except DNSLookupError as e:
        return TLSALookup(TLSAOutcome.FAILURE, host, detail=str(e))
    records = tuple(r for r in answer.records if isinstance(r, TLSA))
    if not answer.authentic:
        return TLSALookup(TLSAOutcome.INSECURE, host, records, "answer not authentic")
    if not records:
        return TLSALookup(TLSAOutcome.DENIAL, host, detail="no TLSA records in the answer")
    return TLSALookup(TLSAOutcome.RECORDS, host, records)


async def lookup_tlsa(resolver: IResolver, host: str, canonical: str | None = None,
                      port: int = 25) -> TLSALookup:
    """Look up the TLSA records of an MX host (RFC 7672 §2.2.2).

    ``canonical``: the host's name after an authentic CNAME expansion of its address records,
    if different.  Its TLSA records are tried first; when they are authentically absent, the
    original name's are used.  Never raises for DNS outcomes: they are ``TLSAOutcome`` values.
    """
    host = host.rstrip(".").lower()
    if canonical and canonical.rstrip(".").lower() != host:
        first = await _lookup_one(resolver, canonical.rstrip(".").lower(), port)
        if first.outcome is not TLSAOutcome.DENIAL:
            return first
    return await _lookup_one(resolver, host, port)
