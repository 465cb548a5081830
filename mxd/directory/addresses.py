"""Normalising email addresses for lookup (RFC 5321 §2.4, RFC 6531, RFC 5890).

Pure functions.  The directory's key for an address is ``local@domain`` where

* the domain is the lowercase A-label form (IDNA2008 with UTS 46 mapping; RFC 5890),
  so ``Bücher.Example`` and ``xn--bcher-kva.example`` are the same domain;
* the local part is the unquoted form (``"a b"`` -> ``a b``), Unicode in NFC (RFC 6531
  §3.3 allows UTF-8 local parts), with ASCII letters lowercased.  RFC 5321 §2.4 says
  the local part MAY be case-sensitive; mxd, like most servers, treats ASCII case as
  insignificant, and leaves non-ASCII letters as they are (no locale-dependent folding).

Sub-addressing: with separator "+", ``alice+tag`` is delivered to ``alice``.
"""

from __future__ import annotations

import re
import unicodedata

from mxd.dns.errors import DomainError
from mxd.dns.names import Domain
from mxd.errors import MxdError

_LDH = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
MAX_LOCAL_PART = 64  # octets, RFC 5321 §4.5.3.1.1
MAX_ADDRESS = 254 + 64  # generous for UTF-8 local parts


class InvalidAddress(MxdError):
    """An address (or its domain) cannot be normalised."""


def normalize_domain(domain: str) -> str:
    """Lowercase A-label form; InvalidAddress for literals and invalid names."""
    domain = domain.strip()
    if domain.startswith("["):
        raise InvalidAddress(f"address literal {domain!r} is not a mail domain here")
    try:
        ascii_form = Domain.parse(domain).ascii
    except DomainError as e:
        raise InvalidAddress(f"invalid domain {domain!r}: {e}") from None
    # RFC 5321 §4.1.2 sub-domain: letters, digits, inner hyphens (no "_" service labels).
    if not all(_LDH.fullmatch(label) for label in ascii_form.split(".")):
        raise InvalidAddress(f"invalid mail domain {domain!r}")
    return ascii_form


def lower_ascii(s: str) -> str:
    """Lowercase the ASCII letters only (RFC 5321 §2.4 case-insensitivity, no locale)."""
    return "".join(c.lower() if c.isascii() else c for c in s)


def unquote_local(local: str) -> str:
    """RFC 5321 §4.1.2 Quoted-string to its content (``"a\\"b"`` -> ``a"b``)."""
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        return re.sub(r"\\(.)", r"\1", local[1:-1])
    return local


def normalize_local(local: str) -> str:
    """Unquoted, NFC, ASCII-lowercased local part; InvalidAddress when unusable."""
    local = unicodedata.normalize("NFC", unquote_local(local))
    if not local:
        raise InvalidAddress("empty local part")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in local):
        raise InvalidAddress("control character in local part")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise InvalidAddress(f"local part longer than {MAX_LOCAL_PART} octets")
    return lower_ascii(local)


def split_address(address: str) -> tuple[str, str]:
    """(local, domain) split at the last "@"; InvalidAddress when there is none."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain:
        raise InvalidAddress(f"not an address: {address!r}")
    if len(address) > MAX_ADDRESS:
        raise InvalidAddress("address too long")
    return local, domain


def normalize_address(address: str) -> str:
    """The directory's key for ``address`` (see the module docstring)."""
    local, domain = split_address(address)
    return f"{normalize_local(local)}@{normalize_domain(domain)}"


def login_key(name: str) -> str:
    """The directory's key for a login name: every spelling of one account gives one key.

    Account names compare like the store compares them (NFC, ASCII case ignored); a name
    that is an address is normalised as an address (IDNA domain, unquoted local part).
    The SASL layer keys its failure counters and unknown users' fake SCRAM salts on this,
    so that ``Nobody@EXAMPLE.org`` and ``nobody@example.org`` cannot be told apart."""
    name = unicodedata.normalize("NFC", name)
    if "@" in name:
        try:
            return normalize_address(name)
        except InvalidAddress:
            pass
    return lower_ascii(name)


def strip_separator(local: str, separator: str | None) -> str:
    """``alice+tag`` -> ``alice`` for separator "+"; unchanged when there is no
    separator, or when nothing would remain before it (``+tag`` stays ``+tag``)."""
    if not separator:
        return local
    base, sep, _ = local.partition(separator)
    return base if sep and base else local


def base_address(address: str, separator: str | None) -> str:
    """A normalised address with any sub-address tag removed."""
    local, _, domain = address.rpartition("@")
    return f"{strip_separator(local, separator)}@{domain}"
