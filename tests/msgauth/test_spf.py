"""SPF (mxd.msgauth.spf): DNSSEC status, limits and bad input beyond the OpenSPF suite."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxd.dns.testing import FakeResolver
from mxd.msgauth.spf import SPFResult, SPFSyntaxError, check_helo, check_mail_from, parse_record


def _fake(authentic: bool = True) -> FakeResolver:
    fake = FakeResolver(default_authentic=authentic)
    fake.add("example.test", "TXT", [b"v=spf1 ip4:192.0.2.0/24 include:inc.example.test -all"],
             authentic=authentic)
    fake.add("inc.example.test", "TXT", [b"v=spf1 a:mx.example.test ~all"], authentic=authentic)
    fake.add("mx.example.test", "A", ["198.51.100.7"], authentic=authentic)
    return fake


@pytest.mark.parametrize(("ip", "result"), [
    ("192.0.2.10", SPFResult.PASS),
    ("198.51.100.7", SPFResult.PASS),
    ("203.0.113.1", SPFResult.FAIL),
    ("2001:db8::1", SPFResult.FAIL),
    ("::ffff:192.0.2.10", SPFResult.PASS),  # IPv4-mapped client is the IPv4 address
])
def test_results(ip: str, result: SPFResult) -> None:
    """Table: ip4, include → a, -all, IPv6 client, mapped IPv4."""
    out = check_mail_from(_fake(), ip, "a@example.test", "h.example.test").result
    assert out.result is result
    assert out.domain == "example.test" and out.identity == "mailfrom"


def test_authentic_only_when_every_lookup_was() -> None:
    """The outcome is authentic when every deciding lookup had the AD bit."""
    out = check_mail_from(_fake(True), "198.51.100.7", "a@example.test", "h").result
    assert out.authentic
    fake = _fake(True)
    fake.add("mx.example.test", "A", ["198.51.100.7"], authentic=False)
    out = check_mail_from(fake, "198.51.100.7", "a@example.test", "h").result
    assert out.result is SPFResult.PASS and not out.authentic


def test_include_loop_is_permerror_within_the_lookup_limit() -> None:
    """An include loop stops at the 10-lookup limit (RFC 7208 §4.6.4) with permerror."""
    fake = FakeResolver()
    fake.add("loop.test", "TXT", [b"v=spf1 include:loop.test -all"])
    out = check_mail_from(fake, "192.0.2.1", "a@loop.test", "h").result
    assert out.result is SPFResult.PERMERROR and out.lookups == 11
    assert "10" in out.reason


def test_megabyte_record_is_bounded() -> None:
    """A 1 MB SPF TXT gives permerror quickly, without parsing it."""
    fake = FakeResolver()
    fake.add("big.test", "TXT", [b"v=spf1 " + b"ip4:192.0.2.1 " * 80000 + b"-all"])
    out = check_mail_from(fake, "192.0.2.1", "a@big.test", "h").result
    assert out.result is SPFResult.PERMERROR and "octets" in out.reason


def test_dns_timeout_is_temperror() -> None:
    """A TXT lookup that times out is temperror (RFC 7208 §4.4), not none."""
    fake = FakeResolver()
    fake.fail("slow.test", "TXT", "timeout")
    out = check_mail_from(fake, "192.0.2.1", "a@slow.test", "h").result
    assert out.result is SPFResult.TEMPERROR


def test_null_sender_checks_helo() -> None:
    """MAIL FROM:<> is checked as postmaster@HELO (RFC 7208 §2.4)."""
    fake = FakeResolver()
    fake.add("helo.test", "TXT", [b"v=spf1 ip4:192.0.2.1 -all"])
    out = check_mail_from(fake, "192.0.2.1", "", "helo.test").result
    assert out.result is SPFResult.PASS and out.identity == "helo"
    assert check_helo(fake, "192.0.2.9", "helo.test").result.result is SPFResult.FAIL


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=80))
def test_parser_only_raises_syntax_error(tail: str) -> None:
    """Any record text parses or raises SPFSyntaxError, nothing else."""
    try:
        parse_record("v=spf1 " + tail)
    except SPFSyntaxError:
        pass
