"""DNS messages: building queries and reading responses (RFC 1035 §4, RFC 2308, RFC 6840).

The pure core of the resolver: no I/O. ``make_query`` builds the wire question (AD set,
EDNS0); ``interpret`` turns a response into an ``Answer`` or a negative/failed outcome.
"""

from __future__ import annotations

import attrs
import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from mxd.dns.errors import DNSError, DNSNoData, DNSNotFound, DNSServFail
from mxd.dns.names import Domain
from mxd.dns.results import Answer, ExtendedError, Record, convert_rdata

MAX_CNAME_CHAIN = 16


@attrs.frozen
class QuerySettings:
    """Wire options of a query."""

    edns_payload: int = 1232  # RFC 9715 / DNS flag day 2020 advice
    dnssec_ok: bool = False


def make_query(name: Domain, rdtype: int, settings: QuerySettings) -> dns.message.QueryMessage:
    """A recursive query with EDNS0 and the AD bit (RFC 6840 §5.7); a random ID (dnspython
    draws it from ``secrets``-grade randomness)."""
    q = dns.message.make_query(
        name.to_dns(),
        dns.rdatatype.RdataType.make(rdtype),
        dns.rdataclass.IN,
        use_edns=0,
        want_dnssec=settings.dnssec_ok,
        payload=settings.edns_payload,
    )
    # RFC 6840 §5.7: set AD in queries to ask for the AD bit in the answer without DO.
    q.flags |= dns.flags.AD | dns.flags.RD
    return q


def extended_errors(response: dns.message.Message) -> tuple[ExtendedError, ...]:
    """The RFC 8914 options of a response."""
    return tuple(
        ExtendedError(int(o.code), o.text or "")
        for o in response.options
        if isinstance(o, dns.edns.EDEOption)
    )


def _find(
    section: list[dns.rrset.RRset], name: dns.name.Name, rdtype: int
) -> dns.rrset.RRset | None:
    for rrset in section:
        if (
            rrset.name == name
            and rrset.rdtype == rdtype
            and rrset.rdclass == dns.rdataclass.IN
            and rrset.covers == dns.rdatatype.NONE
        ):
            return rrset
    return None


def negative_ttl(response: dns.message.Message) -> int:
    """RFC 2308 §5: the SOA's TTL capped by its MINIMUM field; 0 when there is no SOA."""
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return int(min(rrset.ttl, rrset[0].minimum))
    return 0


Outcome = Answer[Record] | DNSNotFound | DNSNoData | DNSServFail


def interpret(
    name: Domain, rdtype: int, response: dns.message.Message, *, trusted: bool
) -> Outcome:
    """The outcome a response gives for ``name``/``rdtype``.

    The caller has checked that ``response`` answers the question (ID and question section).
    Returns (does not raise) the negative and failure outcomes so callers can cache them.
    CNAMEs in the answer section are followed (RFC 1034 §4.3.2 step 3a) unless the question
    is for CNAME itself; RRSIGs and records of other names are ignored.
    """
    authentic = trusted and bool(response.flags & dns.flags.AD)
    ede = extended_errors(response)
    rcode = response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return DNSServFail(name, rdtype, rcode=int(rcode), extended_errors=ede)
    current = qname = name.to_dns()
    ttls: list[int] = []
    seen = {current}
    rrset = _find(response.answer, current, rdtype)
    while rrset is None and rdtype != dns.rdatatype.CNAME:
        cname = _find(response.answer, current, dns.rdatatype.CNAME)
        if cname is None or not len(cname):
            break
        ttls.append(cname.ttl)
        current = cname[0].target
        if current in seen or len(seen) > MAX_CNAME_CHAIN:
            return DNSServFail(name, rdtype, rcode=int(dns.rcode.SERVFAIL), extended_errors=ede)
        seen.add(current)
        rrset = _find(response.answer, current, rdtype)
    canonical = name if current == qname else Domain.from_dns(current)
    if rrset is not None and len(rrset):
        # RFC 2181 §5.2: all records of an RRset share a TTL; take the smallest in the chain.
        ttls.append(rrset.ttl)
        records = tuple(convert_rdata(rd) for rd in rrset)
        return Answer(
            name=name,
            rdtype=rdtype,
            records=records,
            authentic=authentic,
            canonical_name=canonical,
            ttl=int(min(ttls)),
            extended_errors=ede,
        )
    neg_ttl = min([negative_ttl(response), *ttls])
    if rcode == dns.rcode.NXDOMAIN:
        # RFC 6604 §3: the rcode applies to the last name of the CNAME chain.
        return DNSNotFound(
            name, rdtype, authentic=authentic, canonical_name=canonical,
            extended_errors=ede, ttl=neg_ttl,
        )
    return DNSNoData(
        name, rdtype, authentic=authentic, canonical_name=canonical,
        extended_errors=ede, ttl=neg_ttl,
    )


class MalformedResponse(DNSError):
    """A response with our ID and question whose records cannot be decoded."""


def _is_response(query: dns.message.Message, response: dns.message.Message) -> bool:
    try:
        return bool(query.is_response(response))
    except Exception:  # noqa: BLE001 - dnspython raises many kinds on odd messages
        return False


def answers_question(query: dns.message.Message, wire: bytes) -> dns.message.Message | None:
    """Decode ``wire``; return it when it is a response to ``query`` (same ID, QR set, same
    question, RFC 5452 §9.1), else None (to be ignored).

    When the header and question match but the rest cannot be decoded, a truncated (TC)
    response is returned with its question only (the caller retries over TCP); any other
    raises ``MalformedResponse``: a partly read message could turn into a false no-data.
    """
    try:
        response = dns.message.from_wire(wire, ignore_trailing=True)
    except Exception:  # noqa: BLE001 - dnspython raises many kinds on bad wire data
        try:
            header = dns.message.from_wire(wire, question_only=True, ignore_trailing=True)
        except Exception:  # noqa: BLE001
            return None
        if not _is_response(query, header):
            return None
        if header.flags & dns.flags.TC:
            return header
        raise MalformedResponse("undecodable response to our question") from None
    return response if _is_response(query, response) else None
