"""mxd's DNSSEC-aware stub resolver (RFC 1035, RFC 4035 §3.2.3, RFC 6840 §5.7, RFC 8914).

mxd does not validate DNSSEC itself: it asks a validating recursive resolver and believes the
AD bit only from nameservers configured as ``trusted`` (by default: loopback addresses,
RFC 6698 §A.3 / RFC 7672 §1.3 expect a local validating resolver). Run unbound on the mail
host and list it as nameserver; with a remote, untrusted resolver every answer has
``authentic=False`` (DANE then never applies, and ``mxd dns lookup`` prints "not authentic").

Each lookup returns a Deferred that fires with an ``Answer`` or errbacks with one of
``DNSNotFound``, ``DNSNoData`` (both with ``authentic``), ``DNSServFail``, ``DNSTimeout``
(see mxd.dns.errors), or ``DomainError`` for a name that is not a domain name.
"""

from __future__ import annotations

import functools
import ipaddress
from pathlib import Path
from typing import Any, TypeVar

import attrs
import dns.rcode
import dns.rdatatype
import dns.reversename
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from mxd.dns.cache import Cache
from mxd.dns.errors import DNSServFail, DNSTimeout, DomainError
from mxd.dns.message import Outcome, QuerySettings, interpret, make_query
from mxd.dns.names import Domain
from mxd.dns.results import MX, TLSA, Answer, Record
from mxd.dns.transport import (
    ExchangeFailed,
    ExchangeMalformed,
    ExchangeTimeout,
    Reactor,
    exchange,
)
from mxd.metrics import IMetrics, NoopMetrics

T = TypeVar("T")
_log = Logger()


def _is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def _check_ip(instance: Any, attribute: Any, value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"nameserver must be an IP address, not {value!r}") from None


@attrs.frozen
class Nameserver:
    """A recursive resolver to ask; ``trusted`` decides whether its AD bit counts."""

    host: str = attrs.field(validator=_check_ip)
    port: int = 53
    trusted: bool = attrs.field(
        default=attrs.Factory(lambda self: _is_loopback(self.host), takes_self=True)
    )

    @classmethod
    def parse(cls, text: str, trusted: bool | None = None) -> Nameserver:
        """``IP``, ``IP:PORT``, ``[IPv6]:PORT`` or a bare IPv6 address."""
        host, port = text, 53
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            if rest:
                port = int(rest.removeprefix(":"))
        elif text.count(":") == 1:
            host, p = text.split(":")
            port = int(p)
        if not 0 < port < 65536:  # ValueError from int() too
            raise ValueError(f"bad port in {text!r}")
        if trusted is None:
            return cls(host, port)
        return cls(host, port, trusted)


@attrs.frozen
class ResolverSettings:
    """How the resolver asks. ``timeout`` is per exchange; ``attempts`` rounds over all
    nameservers (as in resolv.conf(5)); ``cache_size`` 0 disables the cache."""

    nameservers: tuple[Nameserver, ...] = (Nameserver("127.0.0.1"),)
    timeout: float = 2.0
    attempts: int = 2
    cache_size: int = 10000
    edns_payload: int = 1232
    dnssec_ok: bool = False
    max_ttl: int = 86400
    max_negative_ttl: int = 10800


def settings_from_resolv_conf(path: str | Path = "/etc/resolv.conf", **overrides: Any
                              ) -> ResolverSettings:
    """Settings from a resolv.conf(5): ``nameserver`` lines, ``options timeout:N attempts:N
    trust-ad``. Without ``trust-ad`` only loopback nameservers are trusted; with it all are.
    No nameserver line means 127.0.0.1 (as the C library does)."""
    hosts: list[str] = []
    trust_ad = False
    opts: dict[str, Any] = {}
    for raw in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        words = raw.split("#", 1)[0].split(";", 1)[0].split()
        if not words:
            continue
        if words[0] == "nameserver" and len(words) > 1:
            host = words[1].split("%", 1)[0]
            try:
                ipaddress.ip_address(host)
            except ValueError:
                continue
            hosts.append(host)
        elif words[0] == "options":
            for opt in words[1:]:
                if opt == "trust-ad":
                    trust_ad = True
                elif opt.startswith("timeout:") and opt[8:].isdigit():
                    opts["timeout"] = float(max(1, int(opt[8:])))
                elif opt.startswith("attempts:") and opt[9:].isdigit():
                    opts["attempts"] = max(1, int(opt[9:]))
    if not hosts:
        hosts = ["127.0.0.1"]
    servers = tuple(Nameserver(h, 53, trust_ad or _is_loopback(h)) for h in hosts)
    opts.update(overrides)
    return ResolverSettings(nameservers=servers, **opts)


def settings_from_values(
    nameservers: list[str] | tuple[str, ...],
    trusted: list[str] | tuple[str, ...] = (),
    **kw: Any,
) -> ResolverSettings:
    """Settings from configuration values: nameservers as ``IP``/``IP:PORT``/``[IPv6]:PORT``;
    ``trusted`` lists (as written in ``nameservers``) those whose AD bit counts; when it is
    empty, loopback nameservers are trusted. Other keywords go to ResolverSettings."""
    servers = tuple(
        Nameserver.parse(ns, (ns in trusted) if trusted else None) for ns in nameservers
    )
    return ResolverSettings(nameservers=servers, **kw)


def _rdtype(rdtype: int | str) -> int:
    if isinstance(rdtype, str):
        return int(dns.rdatatype.from_text(rdtype))
    return int(rdtype)


class Resolver:
    """Deferred-based lookups through the configured nameservers, with a cache."""

    def __init__(
        self,
        reactor: Reactor,
        settings: ResolverSettings | None = None,
        metrics: IMetrics | None = None,
    ) -> None:
        self._reactor = reactor
        self.settings = settings or ResolverSettings()
        if not self.settings.nameservers:
            raise ValueError("at least one nameserver is needed")
        self._metrics = metrics or NoopMetrics()
        self.cache = Cache(
            self.settings.cache_size, self.settings.max_ttl, self.settings.max_negative_ttl
        )
        self._query_settings = QuerySettings(self.settings.edns_payload, self.settings.dnssec_ok)
        if not any(ns.trusted for ns in self.settings.nameservers):
            _log.warn(
                "no trusted nameserver among {nameservers}: DNS answers are never authentic, "
                "so DANE and DNSSEC-dependent checks cannot apply; run a local validating "
                "resolver (unbound) on loopback",
                nameservers=[f"{ns.host}:{ns.port}" for ns in self.settings.nameservers],
            )

    # -- typed lookups -------------------------------------------------------------------

    def query(self, name: Domain | str, rdtype: int | str) -> Deferred[Answer[Record]]:
        """Look up any type; records are typed as described by ``mxd.dns.results.Record``."""
        try:
            domain = name if isinstance(name, Domain) else Domain.parse(name)
            qtype = _rdtype(rdtype)
        except (DomainError, dns.rdatatype.UnknownRdatatype, ValueError) as e:
            err = e if isinstance(e, DomainError) else DomainError(f"bad type {rdtype!r}")
            return fail(err)
        # A cache hit is answered without a coroutine: most lookups of a busy server are
        # hits (the same peers, SPF and DKIM names), and the Deferred/coroutine machinery
        # costs more than the lookup itself.
        now = self._reactor.seconds()
        cached = self.cache.get(domain, qtype, now)
        if cached is not None:
            self._count(qtype, cached, "hit", 0.0)
            if isinstance(cached, Answer):
                return succeed(cached)
            return fail(cached)
        return Deferred.fromCoroutine(self._lookup(domain, qtype))

    def _typed(self, name: Domain | str, rdtype: int) -> Deferred[Answer[Any]]:
        return self.query(name, rdtype)

    def lookup_a(self, name: Domain | str) -> Deferred[Answer[ipaddress.IPv4Address]]:
        return self._typed(name, dns.rdatatype.A)

    def lookup_aaaa(self, name: Domain | str) -> Deferred[Answer[ipaddress.IPv6Address]]:
        return self._typed(name, dns.rdatatype.AAAA)

    def lookup_mx(self, name: Domain | str) -> Deferred[Answer[MX]]:
        return self._typed(name, dns.rdatatype.MX)

    def lookup_txt(self, name: Domain | str) -> Deferred[Answer[bytes]]:
        return self._typed(name, dns.rdatatype.TXT)

    def lookup_tlsa(self, name: Domain | str) -> Deferred[Answer[TLSA]]:
        return self._typed(name, dns.rdatatype.TLSA)

    def lookup_cname(self, name: Domain | str) -> Deferred[Answer[Domain]]:
        return self._typed(name, dns.rdatatype.CNAME)

    def lookup_ptr(
        self, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address
    ) -> Deferred[Answer[Domain]]:
        """PTR of an IP address (RFC 1035 §3.5 in-addr.arpa, RFC 3596 §2.5 ip6.arpa)."""
        try:
            rev = _reverse_name(str(address))
        except ValueError:
            return fail(DomainError(f"not an IP address: {address!r}"))
        return self._typed(rev, dns.rdatatype.PTR)

    # -- machinery -----------------------------------------------------------------------

    def _count(self, rdtype: int, outcome: object, cache: str, seconds: float) -> None:
        type_text = _type_text(rdtype)
        kind = "answer" if isinstance(outcome, Answer) else type(outcome).__name__
        self._metrics.inc("dns_lookups_total", rdtype=type_text, outcome=kind, cache=cache)
        self._metrics.observe("dns_lookup_seconds", seconds, rdtype=type_text)

    async def _lookup(self, name: Domain, rdtype: int) -> Answer[Record]:
        start = self._reactor.seconds()
        outcome: Outcome | DNSTimeout = await self._resolve(name, rdtype)
        if not isinstance(outcome, DNSServFail | DNSTimeout):
            self.cache.put(outcome, self._reactor.seconds())
        self._count(rdtype, outcome, "miss", self._reactor.seconds() - start)
        if isinstance(outcome, Answer):
            return outcome
        raise outcome

    async def _resolve(self, name: Domain, rdtype: int) -> Outcome | DNSTimeout:
        servers = self.settings.nameservers
        done: set[int] = set()
        servfail: DNSServFail | None = None
        for _round in range(max(1, self.settings.attempts)):
            for index, ns in enumerate(servers):
                if index in done:
                    continue
                # A fresh query (and random ID) for every exchange, RFC 5452 §9.2.
                query = make_query(name, rdtype, self._query_settings)
                label = f"{ns.host}:{ns.port}"
                try:
                    response = await exchange(
                        self._reactor, ns.host, ns.port, query, self.settings.timeout,
                        self._metrics,
                    )
                except ExchangeTimeout:
                    self._metrics.inc("dns_exchanges_total", nameserver=label, outcome="timeout")
                    _log.debug("dns timeout {nameserver} {name} {rdtype}", nameserver=label,
                               name=name.ascii, rdtype=rdtype)
                    continue
                except ExchangeFailed as e:
                    self._metrics.inc("dns_exchanges_total", nameserver=label, outcome="failed")
                    if isinstance(e, ExchangeMalformed) and servfail is None:
                        servfail = DNSServFail(name, rdtype, rcode=int(dns.rcode.FORMERR))
                    _log.debug("dns exchange failed {nameserver}: {error}", nameserver=label,
                               error=str(e))
                    done.add(index)
                    continue
                outcome = interpret(name, rdtype, response, trusted=ns.trusted)
                if isinstance(outcome, DNSServFail):
                    # Ask the next nameserver; keep the error (and its EDE) if all fail.
                    self._metrics.inc("dns_exchanges_total", nameserver=label, outcome="servfail")
                    servfail = outcome
                    done.add(index)
                    continue
                self._metrics.inc("dns_exchanges_total", nameserver=label, outcome="answer")
                return outcome
            if len(done) == len(servers):
                break
        if servfail is not None:
            return servfail
        return DNSTimeout(name, rdtype)


@functools.lru_cache(maxsize=64)
def _type_text(rdtype: int) -> str:
    return str(dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype)))


@functools.lru_cache(maxsize=4096)
def _reverse_name(address: str) -> Domain:
    """The in-addr.arpa/ip6.arpa name of an address (memoised: clients come back)."""
    rev = dns.reversename.from_address(str(ipaddress.ip_address(address)))
    return Domain.from_dns(rev)
