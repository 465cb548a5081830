"""Domain names: ASCII and Unicode forms, IDNA2008 with UTS 46, typed parse errors."""

from __future__ import annotations

import dns.name
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxd.dns.errors import DNSError, DomainError
from mxd.dns.names import Domain


@pytest.mark.parametrize(
    ("text", "ascii_form", "unicode_form"),
    [
        ("example.com", "example.com", "example.com"),
        ("Example.COM.", "example.com", "example.com"),
        ("bücher.example", "xn--bcher-kva.example", "bücher.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example", "bücher.example"),
        ("Bücher.Example", "xn--bcher-kva.example", "bücher.example"),  # UTS 46 case mapping
        ("ＥＸＡＭＰＬＥ。com", "example.com", "example.com"),  # full-width + ideographic stop
        ("faß.de", "xn--fa-hia.de", "faß.de"),  # IDNA2008 keeps ß (non-transitional)
        ("_25._tcp.mx.example.test", "_25._tcp.mx.example.test", "_25._tcp.mx.example.test"),
        ("s1._domainkey.example.org", "s1._domainkey.example.org", "s1._domainkey.example.org"),
        ("1.2.0.192.in-addr.arpa", "1.2.0.192.in-addr.arpa", "1.2.0.192.in-addr.arpa"),
        ("例え.テスト", "xn--r8jz45g.xn--zckzah", "例え.テスト"),
    ],
)
def test_parse_valid(text: str, ascii_form: str, unicode_form: str) -> None:
    """Valid names parse into the expected lower-case A-label and U-label forms."""
    d = Domain.parse(text)
    assert (d.ascii, d.unicode) == (ascii_form, unicode_form)
    assert str(d) == ascii_form


@pytest.mark.parametrize(
    "text",
    [
        "", ".", "a..b", "..", "exa mple.com", "a/b.com", "xn--zz.com", "xn--bcher-KVA-.example",
        "a" * 64 + ".com", ".".join(["a" * 63] * 4) + ".com", "☃\u0000.com", "ex@mple.com",
        "\u200d.com",
    ],
)
def test_parse_invalid(text: str) -> None:
    """Invalid names raise DomainError (a DNSError and a ValueError), nothing else."""
    with pytest.raises(DomainError) as info:
        Domain.parse(text)
    assert isinstance(info.value, DNSError) and isinstance(info.value, ValueError)


def test_non_text_rejected() -> None:
    """Bytes are not a domain name: DomainError, not a TypeError."""
    with pytest.raises(DomainError):
        Domain.parse(b"example.com")  # type: ignore[arg-type]


def test_equality_and_helpers() -> None:
    """Domains compare by ASCII form; subdomain test, labels and dnspython name agree."""
    a, b = Domain.parse("Bücher.example"), Domain.parse("xn--bcher-kva.example.")
    assert a == b and hash(a) == hash(b)
    assert a.is_subdomain_of(Domain.parse("example"))
    assert not Domain.parse("notexample").is_subdomain_of(Domain.parse("example"))
    assert a.labels == ("xn--bcher-kva", "example")
    assert a.to_dns() == dns.name.from_text("xn--bcher-kva.example.")


def test_from_dns_keeps_names_that_are_not_host_names() -> None:
    """A wire name that is no valid Domain (RFC 2317 '/') keeps its presentation form."""
    d = Domain.from_dns(dns.name.from_text("0/25.2.0.192.in-addr.arpa."))
    assert d.ascii == "0/25.2.0.192.in-addr.arpa"
    assert Domain.from_dns(dns.name.from_text("MX.Example.COM.")).ascii == "mx.example.com"


LABEL = st.from_regex(r"[a-z0-9_]([a-z0-9_-]{0,20}[a-z0-9_])?", fullmatch=True)
UNICODE_LABEL = st.text(
    alphabet=st.characters(codec="utf-8", categories=("Ll", "Lo", "Nd")), min_size=1,
    max_size=10,
)


@given(st.lists(st.one_of(LABEL, UNICODE_LABEL), min_size=1, max_size=5))
def test_parse_roundtrip(labels: list[str]) -> None:
    """Whatever parses re-parses to the same Domain from its ASCII and its Unicode form."""
    try:
        d = Domain.parse(".".join(labels))
    except DomainError:
        return
    assert Domain.parse(d.ascii) == d
    assert Domain.parse(d.unicode) == d
    assert Domain.parse(d.unicode).unicode == d.unicode
    assert d.ascii.isascii() and d.ascii == d.ascii.lower() and len(d.ascii) <= 253


@given(st.text(max_size=300))
def test_parse_arbitrary_text_never_crashes(text: str) -> None:
    """Arbitrary text either parses to a valid ASCII name or raises DomainError."""
    try:
        d = Domain.parse(text)
    except DomainError:
        return
    assert d.ascii.isascii() and all(0 < len(label) <= 63 for label in d.labels)
    d.to_dns()  # dnspython accepts every ASCII form we produce
