"""The iprev method (RFC 8601 §3): the client's reverse name, confirmed forward.

A PTR lookup of the client address gives names; a name passes when its A (or AAAA) records
contain the address.  pass names the first such name; fail means names were found but none
maps back; permerror means no PTR at all; temperror a DNS failure.  ``authentic`` is True
when the lookups that decided were DNSSEC-validated.
"""

from __future__ import annotations

import enum
import ipaddress

import attrs
from twisted.internet.defer import Deferred

from mxd.dns.errors import DNSNegativeAnswer, DNSTemporaryError, DomainError
from mxd.dns.interfaces import IResolver
from mxd.dns.names import Domain
from mxd.msgauth.spf import client_address

MAX_NAMES = 10  # PTR names tried at most (as RFC 7208 §4.6.4 limits them for SPF)


class IprevResult(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


@attrs.frozen
class IprevOutcome:
    result: IprevResult
    ip: str
    name: str | None = None  # the verified name (pass only)
    authentic: bool = False
    reason: str = ""


async def check(resolver: IResolver, ip: str) -> IprevOutcome:
    try:
        addr = client_address(ip)
    except ValueError:
        return IprevOutcome(IprevResult.PERMERROR, ip, reason="not an IP address")
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    try:
        ptr = await resolver.lookup_ptr(addr)
    except DNSNegativeAnswer as e:
        return IprevOutcome(IprevResult.PERMERROR, ip, authentic=e.authentic,
                            reason="no PTR record")
    except DNSTemporaryError as e:
        return IprevOutcome(IprevResult.TEMPERROR, ip, reason=str(e))
    authentic = bool(ptr.authentic)
    temp = None
    for target in list(ptr.records)[:MAX_NAMES]:
        name = target.ascii if isinstance(target, Domain) else str(target).rstrip(".").lower()
        lookup = resolver.lookup_a if addr.version == 4 else resolver.lookup_aaaa
        try:
            answer = await lookup(name)
        except (DNSNegativeAnswer, DomainError):
            continue
        except DNSTemporaryError as e:
            temp = str(e)
            continue
        if addr in answer.records:
            return IprevOutcome(IprevResult.PASS, ip, name,
                                authentic and bool(answer.authentic))
    if temp is not None:
        return IprevOutcome(IprevResult.TEMPERROR, ip, reason=temp)
    return IprevOutcome(IprevResult.FAIL, ip, authentic=authentic,
                        reason="no PTR name resolves back to the address")


def check_iprev(resolver: IResolver, ip: str) -> Deferred[IprevOutcome]:
    return Deferred.fromCoroutine(check(resolver, ip))
