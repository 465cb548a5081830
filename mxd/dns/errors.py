"""Errors of mxd's resolver: the typed DNS outcomes that are not answers.

A lookup's Deferred fires with an ``Answer`` or errbacks with one of these:

* ``DNSNotFound``: NXDOMAIN (RFC 1035 §4.1.1 rcode 3, RFC 8020);
* ``DNSNoData``: NOERROR with no record of the asked type (RFC 2308 §2.2);
* ``DNSServFail``: SERVFAIL, or any other error rcode (REFUSED, NOTIMP, FORMERR), from every
  nameserver; ``rcode`` says which, ``extended_errors`` carries RFC 8914 codes;
* ``DNSTimeout``: no usable response from any nameserver within the attempts.

``DNSNotFound`` and ``DNSNoData`` carry ``authentic``: whether the denial of existence was
DNSSEC-validated by a trusted resolver (RFC 7672 §2.2 needs to tell the two apart).
``DNSServFail`` and ``DNSTimeout`` are temporary failures (``DNSTemporaryError``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mxd.dns.base import DNSError, DomainError

if TYPE_CHECKING:
    from mxd.dns.names import Domain
    from mxd.dns.results import ExtendedError



class DNSLookupError(DNSError):
    """A lookup ended without records; subclasses say how."""

    def __init__(
        self,
        name: Domain,
        rdtype: int,
        *,
        extended_errors: tuple[ExtendedError, ...] = (),
        message: str = "",
    ) -> None:
        self.name = name
        self.rdtype = rdtype
        self.extended_errors = extended_errors
        super().__init__(message or self._describe())

    def _describe(self) -> str:
        import dns.rdatatype

        text = f"{self.__class__.__name__}: {self.name.ascii} {dns.rdatatype.to_text(dns.rdatatype.RdataType.make(self.rdtype))}"
        for ede in self.extended_errors:
            text += f" [{ede}]"
        return text


class DNSNegativeAnswer(DNSLookupError):
    """Base of the two negative answers (the name or the type does not exist)."""

    def __init__(
        self,
        name: Domain,
        rdtype: int,
        *,
        authentic: bool,
        canonical_name: Domain | None = None,
        extended_errors: tuple[ExtendedError, ...] = (),
        ttl: int = 0,
    ) -> None:
        self.authentic = authentic
        self.canonical_name = canonical_name if canonical_name is not None else name
        self.ttl = ttl
        super().__init__(name, rdtype, extended_errors=extended_errors)

    def _describe(self) -> str:
        return super()._describe() + (" (authentic)" if self.authentic else " (not authentic)")


class DNSNotFound(DNSNegativeAnswer):
    """NXDOMAIN: the (canonical) name does not exist (RFC 8020)."""


class DNSNoData(DNSNegativeAnswer):
    """The name exists but has no record of the asked type (RFC 2308 §2.2)."""


class DNSTemporaryError(DNSLookupError):
    """The question could not be answered now; retry later (RFC 7208 'temperror' etc.)."""


class DNSServFail(DNSTemporaryError):
    """Every nameserver answered with an error rcode (SERVFAIL, REFUSED, ...)."""

    def __init__(
        self,
        name: Domain,
        rdtype: int,
        *,
        rcode: int = 2,
        extended_errors: tuple[ExtendedError, ...] = (),
    ) -> None:
        self.rcode = rcode
        super().__init__(name, rdtype, extended_errors=extended_errors)

    def _describe(self) -> str:
        import dns.rcode

        return super()._describe() + f" rcode={dns.rcode.to_text(self.rcode)}"  # type: ignore[arg-type]


class DNSTimeout(DNSTemporaryError):
    """No usable response from any nameserver within the timeout and attempts."""


__all__ = [
    "DNSError", "DNSLookupError", "DNSNegativeAnswer", "DNSNoData", "DNSNotFound",
    "DNSServFail", "DNSTemporaryError", "DNSTimeout", "DomainError",
]
