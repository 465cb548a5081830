"""Typed DNS results: records, extended DNS errors (RFC 8914) and the answer value."""

from __future__ import annotations

import ipaddress
from typing import Generic, TypeVar

import attrs
import dns.edns
import dns.rdata
import dns.rdatatype

from mxd.dns.names import Domain


@attrs.frozen
class MX:
    """An MX record (RFC 5321 §5.1): preference and exchange host."""

    preference: int
    host: Domain


@attrs.frozen
class TLSA:
    """A TLSA record (RFC 6698 §2.1): certificate usage, selector, matching type, data."""

    usage: int
    selector: int
    mtype: int
    data: bytes


@attrs.frozen
class OtherRecord:
    """A record of a type without its own class here, kept in presentation form."""

    rdtype: int
    text: str


Record = (
    ipaddress.IPv4Address | ipaddress.IPv6Address | MX | TLSA | bytes | Domain | OtherRecord
)
"""What ``Answer.records`` holds per type: A → IPv4Address, AAAA → IPv6Address, MX → MX,
TLSA → TLSA, TXT → bytes (the character-strings of one record joined, RFC 7208 §3.3),
PTR/CNAME/NS/DNAME → Domain, anything else → OtherRecord."""

T = TypeVar("T")


def convert_rdata(rdata: dns.rdata.Rdata) -> Record:
    """The typed value of one dnspython rdata."""
    t = rdata.rdtype
    if t == dns.rdatatype.A:
        return ipaddress.IPv4Address(rdata.address)  # type: ignore[attr-defined]
    if t == dns.rdatatype.AAAA:
        return ipaddress.IPv6Address(rdata.address)  # type: ignore[attr-defined]
    if t == dns.rdatatype.MX:
        return MX(rdata.preference, Domain.from_dns(rdata.exchange))  # type: ignore[attr-defined]
    if t == dns.rdatatype.TXT:
        return b"".join(rdata.strings)  # type: ignore[attr-defined]
    if t == dns.rdatatype.TLSA:
        return TLSA(rdata.usage, rdata.selector, rdata.mtype, bytes(rdata.cert))  # type: ignore[attr-defined]
    if t in (dns.rdatatype.PTR, dns.rdatatype.CNAME, dns.rdatatype.NS, dns.rdatatype.DNAME):
        return Domain.from_dns(rdata.target)  # type: ignore[attr-defined]
    return OtherRecord(int(t), rdata.to_text())


@attrs.frozen
class ExtendedError:
    """An extended DNS error (RFC 8914 §2): INFO-CODE and EXTRA-TEXT."""

    code: int
    text: str = ""

    @property
    def name(self) -> str:
        """The code's name in the RFC 8914 §4 registry (``DNSSEC Bogus``), or its number."""
        try:
            return dns.edns.EDECode(self.code).name.replace("_", " ").title().replace(
                "Dnssec", "DNSSEC"
            ).replace("Dnskey", "DNSKEY").replace("Rrsigs", "RRSIGs").replace("Nsec", "NSEC")
        except ValueError:
            return str(self.code)

    def __str__(self) -> str:
        text = f"EDE {self.code} ({self.name})"
        return f"{text}: {self.text}" if self.text else text


@attrs.frozen
class Answer(Generic[T]):
    """A positive answer.

    ``authentic``: the AD bit was set by a nameserver configured as trusted (RFC 6840 §5.7,
    RFC 4035 §3.2.3); always False for untrusted nameservers.
    ``canonical_name``: the name the records belong to after following CNAMEs (RFC 1034
    §3.6.2); equal to ``name`` when there was no CNAME.
    ``ttl``: seconds the answer stays valid (the smallest TTL along the CNAME chain; counts
    down for answers served from the cache).
    """

    name: Domain
    rdtype: int
    records: tuple[T, ...]
    authentic: bool
    canonical_name: Domain
    ttl: int = 0
    extended_errors: tuple[ExtendedError, ...] = ()
    from_cache: bool = False
