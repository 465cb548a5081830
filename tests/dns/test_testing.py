"""FakeResolver: table-driven records, authentic flags, failures and CNAME chains."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from mxd.dns.errors import DNSNoData, DNSNotFound, DNSServFail, DNSTimeout, DomainError
from mxd.dns.names import Domain
from mxd.dns.results import MX, TLSA, ExtendedError
from mxd.dns.testing import FakeResolver, run_with_reactor


def result(d: Deferred[Any]) -> Any:
    """The synchronous result of a fired Deferred (raising its failure)."""
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "FakeResolver Deferreds fire synchronously"
    from twisted.python.failure import Failure

    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


def test_records_typed_from_text_and_values() -> None:
    """Records given as zone-file text or typed values come back typed, with authentic."""
    fake = FakeResolver()
    fake.add("example.test", "MX", ["10 mx.example.test."], authentic=True)
    fake.add("mx.example.test", "A", ["192.0.2.1"])
    fake.add("_25._tcp.mx.example.test", "TLSA", [TLSA(3, 1, 1, b"\x01" * 32)], authentic=True)
    fake.add("example.test", "TXT", [b"v=spf1 -all"])
    mx = result(fake.lookup_mx("example.test"))
    assert mx.records == (MX(10, Domain.parse("mx.example.test")),) and mx.authentic
    a = result(fake.lookup_a("mx.example.test"))
    assert a.records == (ipaddress.IPv4Address("192.0.2.1"),) and not a.authentic
    assert result(fake.lookup_tlsa("_25._tcp.mx.example.test")).records[0].usage == 3
    assert result(fake.lookup_txt("example.test")).records == (b"v=spf1 -all",)
    assert [(str(n), t) for n, t in fake.queries][:2] == [("example.test", 15),
                                                         ("mx.example.test", 1)]


def test_cname_chain_and_authentic_and() -> None:
    """CNAMEs are followed; authentic only when every link and the records are authentic."""
    fake = FakeResolver()
    fake.add_cname("www.example.test", "web.example.test", authentic=True)
    fake.add_cname("web.example.test", "host.other.test", authentic=False)
    fake.add("host.other.test", "A", ["192.0.2.7"], authentic=True)
    a = result(fake.lookup_a("www.example.test"))
    assert a.canonical_name == Domain.parse("host.other.test") and a.authentic is False
    cname = result(fake.lookup_cname("www.example.test"))
    assert cname.records == (Domain.parse("web.example.test"),)


def test_failures_per_name_and_type() -> None:
    """Configured failures errback with the typed outcome and its authentic flag / EDE."""
    fake = FakeResolver()
    fake.fail("gone.test", "A", "nxdomain", authentic=True)
    fake.fail("empty.test", "TLSA", "nodata", authentic=True)
    fake.fail("broken.test", None, "servfail", ede=[ExtendedError(6, "bogus")])
    fake.fail("slow.test", "MX", "timeout")
    with pytest.raises(DNSNotFound) as nx:
        result(fake.lookup_a("gone.test"))
    assert nx.value.authentic
    with pytest.raises(DNSNoData) as nodata:
        result(fake.lookup_tlsa("empty.test"))
    assert nodata.value.authentic
    with pytest.raises(DNSServFail) as sf:
        result(fake.lookup_txt("broken.test"))
    assert sf.value.extended_errors == (ExtendedError(6, "bogus"),)
    with pytest.raises(DNSTimeout):
        result(fake.lookup_mx("slow.test"))


def test_defaults_nxdomain_and_nodata() -> None:
    """An unknown name is NXDOMAIN; a known name without the type is no-data."""
    fake = FakeResolver()
    fake.add("mx.test", "A", ["192.0.2.1"])
    with pytest.raises(DNSNotFound) as nx:
        result(fake.lookup_a("other.test"))
    assert nx.value.authentic is False
    with pytest.raises(DNSNoData):
        result(fake.lookup_aaaa("mx.test"))


def test_ptr_and_bad_names() -> None:
    """PTR takes an IP address; invalid names and addresses errback with DomainError."""
    fake = FakeResolver()
    fake.add("1.2.0.192.in-addr.arpa", "PTR", ["mx.example.test."])
    assert result(fake.lookup_ptr("192.0.2.1")).records == (Domain.parse("mx.example.test"),)
    with pytest.raises(DomainError):
        result(fake.lookup_a("bad..name"))
    with pytest.raises(DomainError):
        result(fake.lookup_ptr("not-an-ip"))


def test_run_with_reactor_returns_and_raises() -> None:
    """run_with_reactor returns a coroutine's result and raises its error."""

    async def ok(reactor: Any) -> int:
        from twisted.internet.task import deferLater

        await deferLater(reactor, 0.01, lambda: None)
        return 7

    async def bad(reactor: Any) -> None:
        raise ValueError("boom")

    assert run_with_reactor(ok) == 7
    with pytest.raises(ValueError, match="boom"):
        run_with_reactor(bad)
