"""The resolver seam: ``IResolver``, the typed lookups every DNS consumer uses.

``mxd.dns.resolver.Resolver`` provides it, and ``mxd.dns.testing.FakeResolver`` for tests.
Each lookup fires with an ``Answer`` whose ``records`` have the record type's value type
(A: IPv4Address, MX: MX, TXT: bytes, ...), or errbacks with an ``mxd.dns.errors`` outcome
(DNSNotFound, DNSNoData, DNSServFail, DNSTimeout).
"""

from __future__ import annotations

import ipaddress
from typing import Protocol

from twisted.internet.defer import Deferred

from mxd.dns.names import Domain
from mxd.dns.results import MX, TLSA, Answer


class IResolver(Protocol):
    def lookup_a(self, name: Domain | str) -> Deferred[Answer[ipaddress.IPv4Address]]: ...

    def lookup_aaaa(self, name: Domain | str) -> Deferred[Answer[ipaddress.IPv6Address]]: ...

    def lookup_mx(self, name: Domain | str) -> Deferred[Answer[MX]]: ...

    def lookup_txt(self, name: Domain | str) -> Deferred[Answer[bytes]]: ...

    def lookup_tlsa(self, name: Domain | str) -> Deferred[Answer[TLSA]]: ...

    def lookup_cname(self, name: Domain | str) -> Deferred[Answer[Domain]]: ...

    def lookup_ptr(
        self, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address
    ) -> Deferred[Answer[Domain]]: ...
