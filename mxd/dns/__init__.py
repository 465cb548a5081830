"""mxd's DNSSEC-aware resolver (dnspython for the wire format, Twisted sockets).

Public API (see each module):

* ``Domain`` (names): ASCII and Unicode forms of a name, IDNA2008/UTS 46;
* ``Resolver``, ``ResolverSettings``, ``Nameserver``, ``settings_from_resolv_conf``
  (resolver): Deferred-based lookups whose answers carry ``authentic``;
* ``Answer``, ``MX``, ``TLSA``, ``OtherRecord``, ``ExtendedError`` (results);
* ``DNSNotFound``, ``DNSNoData``, ``DNSServFail``, ``DNSTimeout`` and their bases (errors);
* ``FakeResolver`` (testing) for unit tests of code that does DNS lookups.
"""

from mxd.dns.errors import (
    DNSError,
    DNSLookupError,
    DNSNegativeAnswer,
    DNSNoData,
    DNSNotFound,
    DNSServFail,
    DNSTemporaryError,
    DNSTimeout,
    DomainError,
)
from mxd.dns.names import Domain
from mxd.dns.resolver import Nameserver, Resolver, ResolverSettings, settings_from_resolv_conf
from mxd.dns.results import MX, TLSA, Answer, ExtendedError, OtherRecord, Record

__all__ = [
    "MX",
    "TLSA",
    "Answer",
    "DNSError",
    "DNSLookupError",
    "DNSNegativeAnswer",
    "DNSNoData",
    "DNSNotFound",
    "DNSServFail",
    "DNSTemporaryError",
    "DNSTimeout",
    "Domain",
    "DomainError",
    "ExtendedError",
    "Nameserver",
    "OtherRecord",
    "Record",
    "Resolver",
    "ResolverSettings",
    "settings_from_resolv_conf",
]
