"""The resolver cache: TTLs, negative TTLs (RFC 2308), LRU bound, authentic flag kept."""

from __future__ import annotations

import ipaddress

from twisted.internet.task import Clock

from mxd.dns.cache import Cache
from mxd.dns.errors import DNSNoData, DNSNotFound
from mxd.dns.names import Domain
from mxd.dns.results import Answer

A = 1
TXT = 16


def answer(name: str, ttl: int, authentic: bool = True) -> Answer[ipaddress.IPv4Address]:
    d = Domain.parse(name)
    return Answer(d, A, (ipaddress.IPv4Address("192.0.2.1"),), authentic, d, ttl)


def test_answer_expires_after_ttl() -> None:
    """An answer is served until its TTL has passed, with the remaining TTL, then dropped."""
    clock, cache = Clock(), Cache(10)
    cache.put(answer("a.test", 60), clock.seconds())
    clock.advance(45)
    hit = cache.get(Domain.parse("a.test"), A, clock.seconds())
    assert isinstance(hit, Answer) and hit.ttl == 15 and hit.from_cache and hit.authentic
    clock.advance(15)
    assert cache.get(Domain.parse("a.test"), A, clock.seconds()) is None
    assert len(cache) == 0


def test_keyed_by_name_and_type() -> None:
    """A cached A answer does not answer a TXT question for the same name."""
    cache = Cache(10)
    cache.put(answer("a.test", 60), 0)
    assert cache.get(Domain.parse("a.test"), TXT, 1) is None
    assert cache.get(Domain.parse("A.TEST."), A, 1) is not None


def test_authentic_flag_kept_per_entry() -> None:
    """Each entry keeps its own authentic flag."""
    cache = Cache(10)
    cache.put(answer("a.test", 60, authentic=True), 0)
    cache.put(answer("b.test", 60, authentic=False), 0)
    a = cache.get(Domain.parse("a.test"), A, 1)
    b = cache.get(Domain.parse("b.test"), A, 1)
    assert isinstance(a, Answer) and isinstance(b, Answer)
    assert (a.authentic, b.authentic) == (True, False)


def test_negative_answers_cached_for_negative_ttl() -> None:
    """NXDOMAIN and no-data are cached for their negative TTL and keep authentic."""
    clock, cache = Clock(), Cache(10)
    name = Domain.parse("gone.test")
    cache.put(DNSNotFound(name, A, authentic=True, ttl=30), clock.seconds())
    cache.put(DNSNoData(name, TXT, authentic=False, ttl=90), clock.seconds())
    clock.advance(20)
    nx = cache.get(name, A, clock.seconds())
    nodata = cache.get(name, TXT, clock.seconds())
    assert isinstance(nx, DNSNotFound) and nx.authentic and nx.ttl == 10
    assert isinstance(nodata, DNSNoData) and not nodata.authentic
    clock.advance(10)
    assert cache.get(name, A, clock.seconds()) is None
    assert cache.get(name, TXT, clock.seconds()) is not None


def test_ttl_caps_and_zero_ttl() -> None:
    """TTLs are capped by max_ttl / max_negative_ttl; TTL 0 outcomes are not cached."""
    cache = Cache(10, max_ttl=100, max_negative_ttl=10)
    cache.put(answer("a.test", 10**6), 0)
    cache.put(DNSNotFound(Domain.parse("n.test"), A, authentic=False, ttl=10**6), 0)
    cache.put(answer("z.test", 0), 0)
    assert cache.get(Domain.parse("a.test"), A, 99) is not None
    assert cache.get(Domain.parse("a.test"), A, 100) is None
    assert cache.get(Domain.parse("n.test"), A, 10) is None
    assert cache.get(Domain.parse("z.test"), A, 0) is None


def test_lru_bound() -> None:
    """The cache holds at most ``size`` entries and evicts the least recently used."""
    cache = Cache(2)
    cache.put(answer("a.test", 60), 0)
    cache.put(answer("b.test", 60), 0)
    assert cache.get(Domain.parse("a.test"), A, 1) is not None  # a is now most recent
    cache.put(answer("c.test", 60), 0)
    assert len(cache) == 2
    assert cache.get(Domain.parse("b.test"), A, 1) is None
    assert cache.get(Domain.parse("a.test"), A, 1) is not None


def test_size_zero_disables() -> None:
    """A cache of size 0 keeps nothing."""
    cache = Cache(0)
    cache.put(answer("a.test", 60), 0)
    assert cache.get(Domain.parse("a.test"), A, 1) is None
