"""Finding the hosts to deliver to: MX lookup and address records (RFC 5321 §5.1, RFC 7505).

* MX records are tried in order of preference, records of equal preference in random
  order (RFC 5321 §5.1).
* No MX records (an authentic or plain "no data" answer): the domain itself is the implicit
  MX with preference 0, when it has address records (RFC 5321 §5.1).
* A null MX (a single "." exchange, RFC 7505 §3) means the domain accepts no mail: a
  permanent failure with 5.1.10 (RFC 7505 §4.2).
* A CNAME for the domain is followed by the resolver; the canonical name is kept so that
  later DANE checks (RFC 7672 §2.2.2) can use it.
* If our own host name is one of the MX hosts, the records with a preference equal to or
  greater than ours are discarded (RFC 5321 §5.1); none left is a mail loop (5.4.6).
* An address of our own (listening addresses) is never connected to.

The resolver is mxd's (``mxd.dns``): Deferred lookups whose answers carry ``records`` and
``authentic``; NXDOMAIN / no-data / temporary failures errback with mxd.dns.errors types.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.internet.defer import Deferred

from mxd.dns.errors import DNSLookupError, DNSNoData, DNSNotFound
from mxd.dns.interfaces import IResolver
from mxd.dns.results import Answer
from mxd.errors import MxdError


class MXError(MxdError):
    """Why no host could be found; ``permanent`` decides bounce or retry."""

    permanent = False
    enhanced = "4.4.3"  # RFC 3463: directory server failure

    def __init__(self, domain: str, detail: str = "") -> None:
        self.domain = domain
        self.detail = detail
        super().__init__(f"{domain}: {detail}" if detail else domain)


class MXTemporaryError(MXError):
    """A DNS lookup failed temporarily (SERVFAIL, timeout)."""


class NoSuchDomain(MXError):
    """The recipient domain does not exist (NXDOMAIN), or has no MX and no address."""

    permanent = True
    enhanced = "5.1.2"  # RFC 3463: bad destination system address


class NullMX(MXError):
    """RFC 7505: the domain declares it accepts no mail."""

    permanent = True
    enhanced = "5.1.10"  # RFC 7505 §4.2


class MailLoop(MXError):
    """We are the best MX for the domain: delivering would loop (RFC 5321 §5.1)."""

    permanent = True
    enhanced = "5.4.6"  # RFC 3463: routing loop detected


@attrs.frozen
class MXHost:
    name: str  # ASCII, no trailing dot
    preference: int
    implicit: bool = False


@attrs.frozen
class MXPlan:
    """The ordered hosts for one domain and whether the MX answer was DNSSEC-authentic."""

    domain: str
    hosts: tuple[MXHost, ...]
    authentic: bool
    canonical_name: str


@attrs.frozen
class HostAddress:
    ip: str
    authentic: bool  # the address record was DNSSEC-authentic
    canonical_name: str | None = None  # the owner name after CNAMEs (RFC 7672 §2.2.2)


def name_text(name: Any) -> str:
    """The ASCII text of a domain value (mxd.dns Domain, dnspython Name or str), no final dot."""
    if hasattr(name, "ascii"):
        text = str(name.ascii)
    elif hasattr(name, "to_text"):
        text = str(name.to_text())
    else:
        text = str(name)
    return text.rstrip(".").lower()


def order_mx(records: Iterable[tuple[int, str]], random: Callable[[], float]) -> list[MXHost]:
    """Sort by preference; shuffle records of equal preference with ``random``."""
    keyed = [(pref, random(), name_text(host)) for pref, host in records]
    keyed.sort()
    return [MXHost(name=host, preference=pref) for pref, _r, host in keyed]


def plan_from_records(
    domain: str,
    records: list[tuple[int, str]],
    random: Callable[[], float],
    own_names: frozenset[str] = frozenset(),
) -> list[MXHost]:
    """The pure part: null MX, ordering and the self-MX rule; raises MXError subclasses."""
    if any(name_text(host) in ("", ".", "@") for _p, host in records):
        # ("@" is how dnspython prints the root name "." relative to itself.)
        # RFC 7505 §3: a null MX is the only MX; treat one mixed with others as null too.
        raise NullMX(domain, "the domain accepts no mail (null MX, RFC 7505)")
    hosts = order_mx(records, random)
    own = {name_text(n) for n in own_names}
    ours = [h.preference for h in hosts if h.name in own]
    if ours:
        best = min(ours)
        hosts = [h for h in hosts if h.preference < best]
        if not hosts:
            raise MailLoop(domain, "mail for this domain loops back to this server")
    return hosts


def find_mx_hosts(
    resolver: IResolver,
    domain: str,
    random: Callable[[], float],
    own_names: frozenset[str] = frozenset(),
) -> Deferred[MXPlan]:
    """The MX plan for ``domain``; errbacks with an MXError subclass."""
    return Deferred.fromCoroutine(_find_mx_hosts(resolver, domain, random, own_names))


async def _find_mx_hosts(resolver: IResolver, domain: str, random: Callable[[], float],
                         own_names: frozenset[str]) -> MXPlan:
    domain = name_text(domain)
    try:
        answer = await resolver.lookup_mx(domain)
    except DNSNotFound as e:
        raise NoSuchDomain(domain, "the domain does not exist (NXDOMAIN)") from e
    except DNSNoData as e:
        # RFC 5321 §5.1: no MX records: the domain itself is the implicit MX.
        canonical = name_text(e.canonical_name or domain)
        host = MXHost(name=canonical, preference=0, implicit=True)
        return MXPlan(domain, (host,), e.authentic, canonical)
    except DNSLookupError as e:
        raise MXTemporaryError(domain, f"MX lookup failed: {e}") from e
    records = [(r.preference, name_text(r.host)) for r in answer.records]
    canonical = name_text(answer.canonical_name)
    if not records:
        host = MXHost(name=canonical, preference=0, implicit=True)
        return MXPlan(domain, (host,), answer.authentic, canonical)
    hosts = plan_from_records(domain, records, random, own_names)
    return MXPlan(domain, tuple(hosts), answer.authentic, canonical)


def is_own_address(ip: str, own_ips: frozenset[str]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr == ipaddress.ip_address(o) for o in own_ips)


def resolve_host(
    resolver: IResolver, host: str, ipv6: bool = True, ipv4: bool = True,
    prefer_ipv6: bool = False,
) -> Deferred[list[HostAddress]]:
    """The host's addresses (both families, preferred first).

    A "no data" or NXDOMAIN answer for one family is an empty list for it; temporary errors
    for both families errback with MXTemporaryError, NXDOMAIN for both with NoSuchDomain.
    """
    return Deferred.fromCoroutine(_resolve_host(resolver, host, ipv6, ipv4, prefer_ipv6))


async def _resolve_host(resolver: IResolver, host: str, ipv6: bool, ipv4: bool,
                        prefer_ipv6: bool) -> list[HostAddress]:
    results: dict[str, list[HostAddress]] = {"a": [], "aaaa": []}
    temporary: list[Exception] = []
    notfound = 0
    families = [f for f, on in (("aaaa", ipv6), ("a", ipv4)) if on]
    for family in families:
        try:
            answer: Answer[ipaddress.IPv4Address] | Answer[ipaddress.IPv6Address]
            if family == "aaaa":
                answer = await resolver.lookup_aaaa(host)
            else:
                answer = await resolver.lookup_a(host)
        except DNSNotFound:
            notfound += 1
            continue
        except DNSNoData:
            continue
        except DNSLookupError as e:
            temporary.append(e)
            continue
        canonical = name_text(answer.canonical_name)
        results[family] = [HostAddress(str(r), answer.authentic, canonical)
                           for r in answer.records]
    ordered = results["aaaa"] + results["a"] if prefer_ipv6 else results["a"] + results["aaaa"]
    if not ordered:
        if temporary:
            raise MXTemporaryError(host, f"address lookup failed: {temporary[0]}")
        if notfound == len(families):
            raise NoSuchDomain(host, "the host does not exist (NXDOMAIN)")
    return ordered
