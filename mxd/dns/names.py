"""Domain names with their ASCII (A-label) and Unicode (U-label) forms, IDNA2008 with UTS 46.

Every name mxd's resolver sees is a ``Domain``. ``Domain.parse`` accepts a name in either form
(with or without the final dot), applies the UTS 46 mapping (non-transitional, RFC 5891 with
UTS #46 §4), validates each label with IDNA2008 (the ``idna`` package) and keeps both forms:

* ``ascii``: lower case, A-labels, no final dot (``xn--bcher-kva.example``);
* ``unicode``: U-labels (``bücher.example``).

ASCII labels are taken as they are (lower-cased) when they hold letters, digits, hyphens and
underscores (``_25._tcp``, ``_dmarc``, ``selector._domainkey`` are service names, not host
names, RFC 8552); an ``xn--`` label must decode to a valid U-label that encodes back to it.
"""

from __future__ import annotations

import functools
import re

import attrs
import dns.name
import idna

from mxd.dns.base import DomainError

_ASCII_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
_MAX_NAME = 253  # RFC 1035 §2.3.4: 255 octets on the wire, 253 in presentation form


def _label_forms(label: str) -> tuple[str, str]:
    """(A-label, U-label) of one already UTS 46-mapped label."""
    if not label:
        raise DomainError("empty label")
    if label.isascii():
        low = label.lower()
        if not _ASCII_LABEL.fullmatch(low):
            raise DomainError(f"invalid label {label!r}")
        if low.startswith("xn--"):
            try:
                ulabel = idna.ulabel(low)
                if idna.alabel(ulabel).decode("ascii") != low:
                    raise DomainError(f"non-canonical A-label {label!r}")
            except idna.IDNAError as e:
                raise DomainError(f"invalid A-label {label!r}: {e}") from None
            return low, ulabel
        return low, low
    try:
        alabel = idna.alabel(label).decode("ascii")
    except (idna.IDNAError, UnicodeError) as e:
        raise DomainError(f"invalid label {label!r}: {e}") from None
    if len(alabel) > 63:
        raise DomainError(f"label too long: {label!r}")
    return alabel, label


@functools.lru_cache(maxsize=4096)
def _to_dns(ascii_form: str) -> dns.name.Name:
    return dns.name.from_text(ascii_form, origin=dns.name.root)


@attrs.frozen(order=True)
class Domain:
    """A domain name; equal, ordered and hashed by its ASCII form."""

    ascii: str
    unicode: str = attrs.field(eq=False, order=False)

    @classmethod
    def parse(cls, text: str) -> Domain:
        """Parse a name in ASCII or Unicode form; raise ``DomainError`` when invalid.

        Results are memoised (a Domain is immutable): a mail server parses the same few
        thousand names (its peers' hosts, their SPF/DKIM/DMARC names) over and over, and
        the UTS 46 mapping costs tens of microseconds each time.  Errors are not cached.
        """
        if not isinstance(text, str):
            raise DomainError(f"a domain name is text, not {type(text).__name__}")
        if cls is Domain:
            return _parse_cached(text)
        return cls._parse(text)

    @classmethod
    def _parse(cls, text: str) -> Domain:
        if text.endswith(".") and not text.endswith(".."):
            text = text[:-1]
        if not text:
            raise DomainError("empty domain name")
        if len(text) > 4 * _MAX_NAME:
            raise DomainError("domain name too long")
        try:
            mapped = idna.uts46_remap(text, std3_rules=False, transitional=False)
        except (idna.IDNAError, UnicodeError, IndexError) as e:
            raise DomainError(f"invalid domain name {text!r}: {e}") from None
        if mapped.endswith(".") and len(mapped) > 1:
            mapped = mapped[:-1]
        a_labels: list[str] = []
        u_labels: list[str] = []
        for label in mapped.split("."):
            a, u = _label_forms(label)
            a_labels.append(a)
            u_labels.append(u)
        ascii_form = ".".join(a_labels)
        if len(ascii_form) > _MAX_NAME:
            raise DomainError(f"domain name too long ({len(ascii_form)} > {_MAX_NAME})")
        return cls(ascii_form, ".".join(u_labels))

    @classmethod
    def from_dns(cls, name: dns.name.Name) -> Domain:
        """The Domain of a name read from a DNS message.

        Names in answers are not always host names (RFC 2317 uses ``/``); a name that is not
        a valid Domain keeps its escaped presentation form as both ASCII and Unicode form.
        """
        text = name.to_text(omit_final_dot=True)
        try:
            return cls.parse(text)
        except DomainError:
            return cls(text.lower(), text.lower())

    def to_dns(self) -> dns.name.Name:
        """The absolute dnspython name (for building queries)."""
        return _to_dns(self.ascii)

    def is_subdomain_of(self, other: Domain) -> bool:
        """True when self equals ``other`` or lies below it."""
        return self.ascii == other.ascii or self.ascii.endswith("." + other.ascii)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.ascii.split("."))

    def __str__(self) -> str:
        return self.ascii


@functools.lru_cache(maxsize=8192)
def _parse_cached(text: str) -> Domain:
    return Domain._parse(text)
