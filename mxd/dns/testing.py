"""Test helpers for code that uses mxd.dns: ``FakeResolver`` and ``run_with_reactor``.

``FakeResolver`` has the lookup API of ``mxd.dns.resolver.Resolver`` and answers from a
table: records (with an ``authentic`` flag) and failures per (name, type), CNAME chains.
Lookups fire synchronously, so table tests need no reactor::

    fake = FakeResolver()
    fake.add("example.test", "MX", ["10 mx.example.test."], authentic=True)
    fake.add("_25._tcp.mx.example.test", "TLSA", ["3 1 1 " + "ab" * 32], authentic=True)
    fake.add_cname("www.example.test", "example.test", authentic=True)
    fake.fail("gone.example.test", "A", "nxdomain", authentic=True)
    fake.fail("broken.example.test", "TLSA", "servfail", ede=[ExtendedError(6)])

A name with no entry at all is NXDOMAIN; a name with entries of other types only is no-data
(both not authentic unless ``default_authentic``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Literal, TypeVar

import attrs
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.reversename
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.python.failure import Failure

from mxd.dns.errors import (
    DNSNoData,
    DNSNotFound,
    DNSServFail,
    DNSTimeout,
    DomainError,
)
from mxd.dns.names import Domain
from mxd.dns.results import MX, TLSA, Answer, ExtendedError, Record, convert_rdata

FailureKind = Literal["nxdomain", "nodata", "servfail", "timeout"]
T = TypeVar("T")


@attrs.frozen
class _Records:
    records: tuple[Record, ...]
    authentic: bool
    ttl: int


@attrs.frozen
class _Failure:
    kind: FailureKind
    authentic: bool
    ede: tuple[ExtendedError, ...]


def _domain(name: Domain | str) -> Domain:
    return name if isinstance(name, Domain) else Domain.parse(name)


def _type(rdtype: int | str) -> int:
    return int(dns.rdatatype.from_text(rdtype)) if isinstance(rdtype, str) else int(rdtype)


def _record(rdtype: int, value: Any) -> Record:
    if isinstance(value, str):
        rd = dns.rdata.from_text(
            dns.rdataclass.IN, dns.rdatatype.RdataType.make(rdtype), value,
            origin=dns.name.root,
        )
        return convert_rdata(rd)
    if rdtype == dns.rdatatype.A and not isinstance(value, ipaddress.IPv4Address):
        return ipaddress.IPv4Address(value)
    if rdtype == dns.rdatatype.AAAA and not isinstance(value, ipaddress.IPv6Address):
        return ipaddress.IPv6Address(value)
    return value


class FakeResolver:
    """A table-driven stand-in for ``Resolver`` (same lookup methods and outcomes)."""

    def __init__(self, *, default_authentic: bool = False) -> None:
        self.default_authentic = default_authentic
        self.queries: list[tuple[Domain, int]] = []
        self._records: dict[tuple[str, int], _Records] = {}
        self._cnames: dict[str, tuple[Domain, bool]] = {}
        self._failures: dict[tuple[str, int | None], _Failure] = {}

    # -- filling the table ---------------------------------------------------------------

    def add(self, name: Domain | str, rdtype: int | str, records: Iterable[Any], *,
            authentic: bool = False, ttl: int = 300) -> None:
        """Records for (name, type): zone-file rdata text (``"10 mx.example.test."``) or
        typed values (``MX(...)``, ``"192.0.2.1"`` / IPv4Address for A, bytes for TXT)."""
        t = _type(rdtype)
        values = tuple(_record(t, r) for r in records)
        self._records[(_domain(name).ascii, t)] = _Records(values, authentic, ttl)

    def add_cname(self, name: Domain | str, target: Domain | str, *,
                  authentic: bool = False) -> None:
        """``name`` is an alias of ``target`` (followed for every type but CNAME)."""
        self._cnames[_domain(name).ascii] = (_domain(target), authentic)

    def fail(self, name: Domain | str, rdtype: int | str | None, kind: FailureKind, *,
             authentic: bool = False, ede: Iterable[ExtendedError] = ()) -> None:
        """Make (name, type), or every type of name when ``rdtype`` is None, fail."""
        t = None if rdtype is None else _type(rdtype)
        self._failures[(_domain(name).ascii, t)] = _Failure(kind, authentic, tuple(ede))

    # -- the Resolver API ----------------------------------------------------------------

    def query(self, name: Domain | str, rdtype: int | str) -> Deferred[Answer[Record]]:
        try:
            domain = _domain(name)
            t = _type(rdtype)
        except (DomainError, dns.rdatatype.UnknownRdatatype) as e:
            return fail(DomainError(str(e)))
        self.queries.append((domain, t))
        try:
            return succeed(self._answer(domain, t))
        except Exception as e:  # noqa: BLE001 - the typed DNS outcomes
            return fail(e)

    def _answer(self, name: Domain, rdtype: int) -> Answer[Record]:
        current, authentic, seen = name, True, set()
        while True:
            failure = self._failures.get((current.ascii, rdtype)) or self._failures.get(
                (current.ascii, None)
            )
            if failure is not None:
                raise self._failure(name, rdtype, current, failure, authentic)
            entry = self._records.get((current.ascii, rdtype))
            if entry is not None:
                return Answer(name, rdtype, entry.records, authentic and entry.authentic,
                              current, entry.ttl)
            alias = self._cnames.get(current.ascii)
            if rdtype == dns.rdatatype.CNAME and alias is not None:
                return Answer(name, rdtype, (alias[0],), alias[1], current, 300)
            if alias is None or current.ascii in seen:
                break
            seen.add(current.ascii)
            authentic = authentic and alias[1]
            current = alias[0]
        exists = any(n == current.ascii for n, _ in self._records) or current.ascii in self._cnames
        cls = DNSNoData if exists else DNSNotFound
        raise cls(name, rdtype, authentic=authentic and self.default_authentic,
                  canonical_name=current)

    def _failure(self, name: Domain, rdtype: int, current: Domain, f: _Failure,
                 chain_authentic: bool) -> Exception:
        if f.kind == "nxdomain":
            return DNSNotFound(name, rdtype, authentic=f.authentic and chain_authentic,
                               canonical_name=current, extended_errors=f.ede)
        if f.kind == "nodata":
            return DNSNoData(name, rdtype, authentic=f.authentic and chain_authentic,
                             canonical_name=current, extended_errors=f.ede)
        if f.kind == "servfail":
            return DNSServFail(name, rdtype, extended_errors=f.ede)
        return DNSTimeout(name, rdtype, extended_errors=f.ede)

    def lookup_a(self, name: Domain | str) -> Deferred[Answer[ipaddress.IPv4Address]]:
        return self.query(name, dns.rdatatype.A)  # type: ignore[return-value]

    def lookup_aaaa(self, name: Domain | str) -> Deferred[Answer[ipaddress.IPv6Address]]:
        return self.query(name, dns.rdatatype.AAAA)  # type: ignore[return-value]

    def lookup_mx(self, name: Domain | str) -> Deferred[Answer[MX]]:
        return self.query(name, dns.rdatatype.MX)  # type: ignore[return-value]

    def lookup_txt(self, name: Domain | str) -> Deferred[Answer[bytes]]:
        return self.query(name, dns.rdatatype.TXT)  # type: ignore[return-value]

    def lookup_tlsa(self, name: Domain | str) -> Deferred[Answer[TLSA]]:
        return self.query(name, dns.rdatatype.TLSA)  # type: ignore[return-value]

    def lookup_cname(self, name: Domain | str) -> Deferred[Answer[Domain]]:
        return self.query(name, dns.rdatatype.CNAME)  # type: ignore[return-value]

    def lookup_ptr(
        self, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address
    ) -> Deferred[Answer[Domain]]:
        try:
            rev = dns.reversename.from_address(str(ipaddress.ip_address(address)))
        except ValueError:
            return fail(DomainError(f"not an IP address: {address!r}"))
        return self.query(Domain.from_dns(rev), dns.rdatatype.PTR)  # type: ignore[return-value]


def run_with_reactor(
    fn: Callable[[Any], Deferred[T] | Coroutine[Any, Any, T]],
    timeout: float = 30.0,
    reactor_factory: Callable[[], Any] | None = None,
) -> T:
    """Run ``fn(reactor)`` on a fresh, private (not installed) reactor until its Deferred
    or coroutine finishes; return its result or raise its error. For tests that need real
    loopback sockets without installing or restarting the global reactor. The default
    reactor is a SelectReactor; pass ``reactor_factory`` (e.g. EPollReactor) to change it."""
    from twisted.internet.selectreactor import SelectReactor

    reactor: Any = (reactor_factory or SelectReactor)()
    box: list[Any] = []

    def done(result: Any) -> None:
        if not box:
            box.append(result)
        if reactor.running:
            reactor.stop()

    def start() -> None:
        def call() -> Any:
            r = fn(reactor)
            return Deferred.fromCoroutine(r) if isinstance(r, Coroutine) else r

        maybeDeferred(call).addBoth(done)

    def expire() -> None:
        done(Failure(TimeoutError(f"not finished within {timeout}s")))

    timer = reactor.callLater(timeout, expire)
    reactor.callWhenRunning(start)
    try:
        reactor.run(installSignalHandlers=False)
    finally:
        if timer.active():
            timer.cancel()
        waker = getattr(reactor, "waker", None)
        if waker is not None:
            try:
                waker.connectionLost(None)
            except Exception:  # noqa: BLE001, S110 - closing a private reactor's pipe
                pass
    result = box[0] if box else Failure(RuntimeError("reactor stopped without a result"))
    if isinstance(result, Failure):
        result.raiseException()
    return result
