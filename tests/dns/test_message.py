"""Reading responses: answers, CNAME chains, negative answers, AD trust, EDE, bad wire data."""

from __future__ import annotations

import ipaddress
import struct

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
from hypothesis import given
from hypothesis import strategies as st

from mxd.dns.errors import DNSNoData, DNSNotFound, DNSServFail
from mxd.dns.message import (
    MalformedResponse,
    QuerySettings,
    answers_question,
    interpret,
    make_query,
)
from mxd.dns.names import Domain
from mxd.dns.results import MX, TLSA, Answer, ExtendedError, OtherRecord
from tests.dns.fakeserver import reply

NAME = Domain.parse("www.example.test")
SOA = "example.test. 900 IN SOA ns.example.test. h.example.test. 1 2 3 4 120"


def query(name: Domain = NAME, rdtype: int = dns.rdatatype.A) -> dns.message.Message:
    return make_query(name, rdtype, QuerySettings())


def test_make_query_flags() -> None:
    """Queries are recursive, set AD (RFC 6840 §5.7), use EDNS0 and no DO by default."""
    q = query()
    assert q.flags & dns.flags.RD and q.flags & dns.flags.AD
    assert q.edns == 0 and not q.ednsflags & dns.flags.DO
    assert make_query(NAME, 1, QuerySettings(dnssec_ok=True)).ednsflags & dns.flags.DO


def test_answer_typed_and_rrsig_stripped() -> None:
    """A records become IPv4Address values; RRSIGs in the answer are not records."""
    q = query()
    r = reply(q, "www.example.test. 60 IN A 192.0.2.1",
              "www.example.test. 60 IN RRSIG A 13 3 60 20300101000000 20200101000000 1 "
              "example.test. AAAA", ad=True)
    out = interpret(NAME, dns.rdatatype.A, r, trusted=True)
    assert isinstance(out, Answer)
    assert out.records == (ipaddress.IPv4Address("192.0.2.1"),)
    assert out.authentic and out.ttl == 60 and out.canonical_name == NAME


def test_ad_ignored_when_untrusted() -> None:
    """The AD bit counts only when the nameserver is trusted."""
    q = query()
    r = reply(q, "www.example.test. 60 IN A 192.0.2.1", ad=True)
    out = interpret(NAME, dns.rdatatype.A, r, trusted=False)
    assert isinstance(out, Answer) and out.authentic is False


def test_cname_chain_followed() -> None:
    """CNAMEs are followed to the canonical name; the TTL is the chain's smallest."""
    q = query()
    r = reply(q, "www.example.test. 30 IN CNAME a.example.test.",
              "a.example.test. 300 IN CNAME b.example.test.",
              "b.example.test. 600 IN A 192.0.2.2")
    out = interpret(NAME, dns.rdatatype.A, r, trusted=True)
    assert isinstance(out, Answer)
    assert out.canonical_name == Domain.parse("b.example.test") and out.ttl == 30
    assert out.records == (ipaddress.IPv4Address("192.0.2.2"),)


def test_cname_question_not_followed() -> None:
    """A CNAME question returns the alias target itself."""
    q = query(rdtype=dns.rdatatype.CNAME)
    r = reply(q, "www.example.test. 30 IN CNAME a.example.test.")
    out = interpret(NAME, dns.rdatatype.CNAME, r, trusted=True)
    assert isinstance(out, Answer) and out.records == (Domain.parse("a.example.test"),)


def test_cname_loop_is_servfail() -> None:
    """A CNAME loop is a failure, not an endless walk."""
    q = query()
    r = reply(q, "www.example.test. 30 IN CNAME a.example.test.",
              "a.example.test. 30 IN CNAME www.example.test.")
    assert isinstance(interpret(NAME, dns.rdatatype.A, r, trusted=True), DNSServFail)


def test_nxdomain_after_cname_applies_to_target() -> None:
    """NXDOMAIN after a CNAME names the target as canonical name (RFC 6604 §3)."""
    q = query()
    r = reply(q, "www.example.test. 30 IN CNAME gone.example.test.", rcode=dns.rcode.NXDOMAIN,
              authority=(SOA,), ad=True)
    out = interpret(NAME, dns.rdatatype.A, r, trusted=True)
    assert isinstance(out, DNSNotFound)
    assert out.authentic and out.canonical_name == Domain.parse("gone.example.test")
    assert out.ttl == 30


def test_nodata_negative_ttl_from_soa() -> None:
    """No-data takes min(SOA TTL, SOA MINIMUM) as negative TTL (RFC 2308 §5)."""
    q = query()
    out = interpret(NAME, dns.rdatatype.A, reply(q, authority=(SOA,)), trusted=True)
    assert isinstance(out, DNSNoData) and out.ttl == 120 and not out.authentic


def test_negative_without_soa_has_zero_ttl() -> None:
    """Without an SOA a negative answer gets TTL 0 (not cached)."""
    q = query()
    out = interpret(NAME, dns.rdatatype.A, reply(q, rcode=dns.rcode.NXDOMAIN), trusted=True)
    assert isinstance(out, DNSNotFound) and out.ttl == 0


def test_error_rcodes_are_servfail_with_ede() -> None:
    """SERVFAIL and REFUSED are DNSServFail carrying rcode and RFC 8914 errors."""
    q = query()
    for rcode in (dns.rcode.SERVFAIL, dns.rcode.REFUSED):
        r = reply(q, rcode=rcode, ede=((6, "signature crypto failed"), (22, "")))
        out = interpret(NAME, dns.rdatatype.A, r, trusted=True)
        assert isinstance(out, DNSServFail) and out.rcode == rcode
        assert out.extended_errors == (ExtendedError(6, "signature crypto failed"),
                                       ExtendedError(22, ""))
    assert str(ExtendedError(6, "x")) == "EDE 6 (DNSSEC Bogus): x"
    assert ExtendedError(9).name == "DNSKEY Missing"
    assert ExtendedError(4000).name == "4000"


def test_record_types() -> None:
    """MX, TXT, TLSA, AAAA, PTR and other types convert to their typed values."""
    cases = [
        ("MX", "10 mx.example.test.", MX(10, Domain.parse("mx.example.test"))),
        ("TXT", '"v=spf1 " "-all"', b"v=spf1 -all"),
        ("TLSA", "3 1 0 abcd", TLSA(3, 1, 0, b"\xab\xcd")),
        ("AAAA", "2001:db8::1", ipaddress.IPv6Address("2001:db8::1")),
        ("PTR", "mx.example.test.", Domain.parse("mx.example.test")),
        ("SRV", "0 5 25 mx.example.test.", OtherRecord(33, "0 5 25 mx.example.test.")),
    ]
    for rtype, rdata, expected in cases:
        t = dns.rdatatype.from_text(rtype)
        q = query(rdtype=t)
        r = reply(q, f"www.example.test. 60 IN {rtype} {rdata}")
        out = interpret(NAME, t, r, trusted=True)
        assert isinstance(out, Answer) and out.records == (expected,), rtype


def test_answers_question_checks_id_and_question() -> None:
    """Only a response with our ID, QR set and our question is accepted (RFC 5452 §9.1)."""
    q = query()
    good = reply(q, "www.example.test. 60 IN A 192.0.2.1")
    assert answers_question(q, good.to_wire()) is not None
    bad_id = reply(q)
    bad_id.id ^= 1
    assert answers_question(q, bad_id.to_wire()) is None
    assert answers_question(q, q.to_wire()) is None  # QR not set: a query, not a response
    assert answers_question(q, reply(query(Domain.parse("x.test"))).to_wire()) is None
    assert answers_question(q, b"") is None


@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    """Arbitrary bytes are rejected (None) or, if accepted, interpret without raising."""
    q = query()
    try:
        r = answers_question(q, data)
    except MalformedResponse:
        return
    if r is not None:
        interpret(NAME, dns.rdatatype.A, r, trusted=True)


@given(st.binary(max_size=400), st.integers(0, 0xFFFF))
def test_bytes_after_matching_header_never_crash(tail: bytes, flags: int) -> None:
    """A matching ID and question followed by arbitrary sections never crash the reader."""
    q = query()
    question = q.to_wire()[12:12 + len(NAME.ascii) + 2 + 4]
    header = struct.pack("!HHHHHH", q.id, flags | 0x8000, 1, 1, 0, 0)
    try:
        r = answers_question(q, header + question + tail)
    except MalformedResponse:
        return
    if r is not None:
        out = interpret(NAME, dns.rdatatype.A, r, trusted=True)
        assert isinstance(out, Answer | DNSNotFound | DNSNoData | DNSServFail)


def test_undecodable_answer_to_our_question_is_malformed() -> None:
    """A response matching ID and question whose records do not decode is MalformedResponse
    (not a partial message that could read as no-data); with TC it is returned for TCP."""
    import pytest

    q = query(rdtype=dns.rdatatype.TLSA)
    wire = bytearray(reply(q, "www.example.test. 60 IN TLSA 3 1 0 abcd").to_wire())
    i = wire.find(bytes([3, 1, 0, 0xAB, 0xCD]))
    wire[i + 2] = 1  # SHA-256 matching type with 2 bytes of data: invalid
    with pytest.raises(MalformedResponse):
        answers_question(q, bytes(wire))
    with pytest.raises(MalformedResponse):
        answers_question(q, bytes(wire[:-1]))  # cut inside the record
    wire[2] |= 0x02  # TC
    r = answers_question(q, bytes(wire))
    assert r is not None and r.flags & dns.flags.TC and not r.answer
