"""The root of mxd.dns's errors, below the modules that raise them (``names`` raises
``DomainError``; ``errors`` adds the lookup outcomes), so that none of them imports another
in a circle.  Import them from ``mxd.dns.errors``."""

from __future__ import annotations

from mxd.errors import MxdError


class DNSError(MxdError):
    """Base of every error raised by mxd.dns."""


class DomainError(DNSError, ValueError):
    """A text is not a valid domain name (syntax, length or IDNA2008/UTS 46)."""
