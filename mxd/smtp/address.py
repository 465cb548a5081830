"""SMTP paths, mailboxes and ESMTP parameters (RFC 5321 §4.1.2, RFC 6531, RFC 3461 §4).

Pure functions over text: no I/O.  ``parse_mail_argument`` / ``parse_rcpt_argument`` take
what follows ``MAIL`` / ``RCPT`` on the command line; addresses come back as ``Address``
values that know the ASCII (A-label) and Unicode forms of their domain.  ``xtext`` helpers
implement RFC 3461 §4 for ENVID and ORCPT.
"""

from __future__ import annotations

import ipaddress
import re

import attrs
import idna

from mxd.errors import MxdError
from mxd.smtp import xtext

# RFC 5321 §4.5.3.1.1-3
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256
MAX_ENVID = 100  # RFC 3461 §4.4


class AddressError(MxdError):
    """A path, mailbox or parameter does not follow RFC 5321 / RFC 6531 / RFC 3461."""


# RFC 5322 atext; RFC 6531 §3.3 adds UTF8-non-ascii (here: any code point >= U+0080).
_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff"
_DOT_STRING = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*\Z")
# RFC 5321 qtextSMTP / quoted-pairSMTP, plus UTF8-non-ascii (RFC 6531).
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"\Z')
_LDH_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\Z")
_ESMTP_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
# RFC 5321 esmtp-value: %d33-60 / %d62-126; RFC 6531 §3.3 adds UTF8-non-ascii.
_ESMTP_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+\Z")
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+\Z")


@attrs.frozen
class Address:
    """A mailbox ``local@domain`` as received; ``domain`` may be a U-label or an address literal."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def is_literal(self) -> bool:
        return self.domain.startswith("[")

    @property
    def domain_ascii(self) -> str:
        """The domain in lowercase A-label form (literals unchanged)."""
        return domain_to_ascii(self.domain)

    @property
    def domain_unicode(self) -> str:
        if self.is_literal:
            return self.domain
        try:
            return idna.decode(self.domain_ascii)
        except idna.IDNAError:
            return self.domain.lower()

    @property
    def is_ascii(self) -> bool:
        return self.local.isascii() and self.domain.isascii()

    @property
    def local_unquoted(self) -> str:
        """The local part with RFC 5321 quoting removed (``"a b"`` -> ``a b``)."""
        if self.local.startswith('"'):
            return re.sub(r"\\(.)", r"\1", self.local[1:-1])
        return self.local

    def normalised(self) -> str:
        """``local@domain`` with the domain as a lowercase A-label: the directory's key."""
        return f"{self.local_unquoted}@{self.domain_ascii}"


def domain_to_ascii(domain: str) -> str:
    """Lowercase A-label form of a domain (RFC 5890); address literals unchanged."""
    if domain.startswith("["):
        return domain
    if domain.isascii():
        return domain.lower()
    try:
        return idna.encode(domain, uts46=True).decode("ascii").lower()
    except idna.IDNAError as e:
        raise AddressError(f"invalid internationalised domain {domain!r}: {e}") from None


def parse_domain(text: str) -> str:
    """Check an RFC 5321 ``Domain`` (or RFC 6531 U-label domain); return it unchanged."""
    if not text or len(text.encode("utf-8")) > MAX_DOMAIN:
        raise AddressError("domain empty or too long")
    labels = text.split(".")
    for label in labels:
        if not label:
            raise AddressError(f"empty label in domain {text!r}")
        if label.isascii():
            if len(label) > 63 or not _LDH_LABEL.match(label):  # RFC 1035 §2.3.4
                raise AddressError(f"invalid domain label {label!r}")
        else:
            try:
                idna.encode(label, uts46=True)
            except idna.IDNAError:
                raise AddressError(f"invalid U-label {label!r}") from None
    return text


def _parse_address_literal(text: str) -> str:
    inner = text[1:-1]
    if inner.lower().startswith("ipv6:"):
        try:
            ipaddress.IPv6Address(inner[5:])
        except ValueError:
            raise AddressError(f"invalid IPv6 address literal {text!r}") from None
        return text
    try:
        ipaddress.IPv4Address(inner)
        return text
    except ValueError:
        pass
    if _GENERAL_LITERAL.match(inner):
        return text
    raise AddressError(f"invalid address literal {text!r}")


def parse_mailbox(text: str) -> Address:
    """RFC 5321 ``Mailbox`` = Local-part "@" ( Domain / address-literal )."""
    if text.startswith('"'):
        # Quoted local part: find the closing quote, honouring quoted-pairs.
        i = 1
        while i < len(text):
            c = text[i]
            if c == "\\":
                i += 2
                continue
            if c == '"':
                break
            i += 1
        else:
            raise AddressError("unterminated quoted local part")
        local, rest = text[: i + 1], text[i + 1 :]
        if not rest.startswith("@") or not _QUOTED.match(local):
            raise AddressError("invalid quoted local part")
        domain = rest[1:]
    else:
        local, sep, domain = text.rpartition("@")
        if not sep:
            raise AddressError("mailbox has no domain")
        if not _DOT_STRING.match(local):
            raise AddressError(f"invalid local part {local!r}")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise AddressError("local part longer than 64 octets")
    if domain.startswith("[") and domain.endswith("]"):
        domain = _parse_address_literal(domain)
    else:
        domain = parse_domain(domain)
    return Address(local, domain)


def parse_path(text: str, *, null_ok: bool) -> Address | None:
    """RFC 5321 ``Path`` (or ``Reverse-path`` = Path / "<>" when ``null_ok``).

    The source route (A-d-l) is accepted and ignored (RFC 5321 §4.1.1.3, §C)."""
    if not (text.startswith("<") and text.endswith(">")):
        raise AddressError("path must be enclosed in <>")
    if len(text.encode("utf-8")) > MAX_PATH + 2:
        raise AddressError("path longer than 256 octets")
    inner = text[1:-1]
    if inner == "":
        if null_ok:
            return None
        raise AddressError("null path not allowed here")
    if inner.startswith("@"):
        route, colon, inner = inner.partition(":")
        if not colon:
            raise AddressError("source route without ':'")
        for hop in route.split(","):
            if not hop.startswith("@"):
                raise AddressError("invalid source route")
            parse_domain(hop[1:])
    return parse_mailbox(inner)


def _split_path(arg: str) -> tuple[str, str]:
    """Split ``<path> params`` at the closing ``>`` of the path (quoted parts honoured)."""
    if not arg.startswith("<"):
        raise AddressError("path must start with '<'")
    in_quote = False
    i = 1
    while i < len(arg):
        c = arg[i]
        if in_quote and c == "\\":
            i += 2
            continue
        if c == '"':
            in_quote = not in_quote
        elif c == ">" and not in_quote:
            return arg[: i + 1], arg[i + 1 :]
        i += 1
    raise AddressError("path has no closing '>'")


def parse_parameters(text: str) -> dict[str, str | None]:
    """RFC 5321 ``Mail-parameters``: keywords uppercased; a repeated keyword is an error."""
    params: dict[str, str | None] = {}
    for item in text.split(" "):
        if item == "":
            continue
        key, eq, value = item.partition("=")
        if not _ESMTP_KEYWORD.match(key):
            raise AddressError(f"invalid ESMTP keyword {key!r}")
        if eq and not _ESMTP_VALUE.match(value):
            raise AddressError(f"invalid value for {key}")
        k = key.upper()
        if k in params:
            raise AddressError(f"parameter {k} given twice")
        params[k] = value if eq else None
    return params


def _split_command_argument(arg: str, keyword: str) -> tuple[str, str]:
    head = arg[: len(keyword)]
    if head.upper() != keyword:
        raise AddressError(f"expected {keyword}")
    rest = arg[len(keyword) :]
    # Not RFC syntax, but common: "MAIL FROM: <a@b>" (a space after the colon).
    rest = rest.lstrip(" ")
    return _split_path(rest)


@attrs.frozen
class MailArgument:
    sender: Address | None  # None for the null reverse-path <>
    params: dict[str, str | None]


@attrs.frozen
class RcptArgument:
    recipient: Address | None  # None only for the bare <Postmaster> form (RFC 5321 §4.1.1.3)
    params: dict[str, str | None]


def parse_mail_argument(arg: str) -> MailArgument:
    """What follows ``MAIL `` on the line: ``FROM:<reverse-path> [params]``."""
    path, rest = _split_command_argument(arg, "FROM:")
    if rest and not rest.startswith(" "):
        raise AddressError("parameters must follow the path after a space")
    return MailArgument(parse_path(path, null_ok=True), parse_parameters(rest))


def parse_rcpt_argument(arg: str) -> RcptArgument:
    """What follows ``RCPT `` on the line: ``TO:<forward-path> [params]``.

    RFC 5321 §4.1.1.3: ``<Postmaster>`` without a domain is a valid recipient."""
    path, rest = _split_command_argument(arg, "TO:")
    if rest and not rest.startswith(" "):
        raise AddressError("parameters must follow the path after a space")
    params = parse_parameters(rest)
    if path.lower() == "<postmaster>":
        return RcptArgument(None, params)
    return RcptArgument(parse_path(path, null_ok=False), params)


# -- RFC 3461 §4 xtext ---------------------------------------------------------------

def decode_xtext(text: str) -> str:
    """Decode RFC 3461 §4 xtext (``+HH`` hex escapes); AddressError when malformed."""
    try:
        return xtext.decode(text)
    except xtext.XtextError as e:
        raise AddressError(str(e)) from None


encode_xtext = xtext.encode


_NOTIFY_VALUES = frozenset({"SUCCESS", "FAILURE", "DELAY"})


def parse_notify(value: str) -> frozenset[str]:
    """RFC 3461 §4.1: ``NEVER`` or a comma list of SUCCESS, FAILURE, DELAY."""
    items = [v.upper() for v in value.split(",")]
    if items == ["NEVER"]:
        return frozenset({"NEVER"})
    if not items or any(v not in _NOTIFY_VALUES for v in items) or len(set(items)) != len(items):
        raise AddressError("NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY")
    return frozenset(items)


def parse_orcpt(value: str, *, smtputf8: bool = False) -> str:
    """RFC 3461 §4.2 ``addr-type ";" xtext``; returned as received (validated).

    RFC 6533 §3: with addr-type ``utf-8`` the value may carry UTF-8 (SMTPUTF8 sessions)."""
    addr_type, semi, addr = value.partition(";")
    if not semi or not addr_type or not _LDH_LABEL.match(addr_type) or not addr:
        raise AddressError("ORCPT must be addr-type;address")
    if addr_type.lower() == "utf-8" and (smtputf8 or addr.isascii()):
        return value
    decode_xtext(addr)
    return value


def parse_envid(value: str) -> str:
    """RFC 3461 §4.4: an xtext of at most 100 characters; returns the decoded value."""
    if len(value) > MAX_ENVID:
        raise AddressError("ENVID longer than 100 characters")
    return decode_xtext(value)
