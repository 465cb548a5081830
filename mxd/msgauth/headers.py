"""Header fields of a message as raw bytes (RFC 5322 §2.2, §3.6), for DKIM, ARC and DMARC.

Signatures are computed over the exact bytes of header fields, so fields are kept as they
arrived (folding and all); only the name is decoded, for matching.
"""

from __future__ import annotations

import re
from email.headerregistry import Address
from email.policy import SMTP

import attrs

_FIELD_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:")


@attrs.frozen
class Field:
    """One header field: ``raw`` is the whole field including folding and the final CRLF."""

    name: str  # as written
    raw: bytes
    # The lower-cased name, computed once: the checks compare it many times per field.
    lname: str = attrs.field(init=False, eq=False, repr=False, default=attrs.Factory(
        lambda self: self.name.lower(), takes_self=True))

    @property
    def value(self) -> bytes:
        """The part after the colon, with the final CRLF removed (still folded)."""
        return self.raw.split(b":", 1)[1].removesuffix(b"\r\n")


def split_fields(section: bytes) -> list[Field]:
    """The fields of a header section (which ends with the CRLF of its last field).

    A line that is neither a field nor a continuation (no colon) is kept as a field with
    an empty name, so nothing of the section is lost."""
    fields: list[Field] = []
    if not section:
        return fields
    lines = section.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    current: list[bytes] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and current:
            current.append(line)
            continue
        if current:
            fields.append(_field(current))
        current = [line]
    if current:
        fields.append(_field(current))
    return fields


def _field(lines: list[bytes]) -> Field:
    raw = b"\r\n".join(lines) + b"\r\n"
    m = _FIELD_NAME.match(raw)
    name = m.group(1).decode("ascii") if m else ""
    return Field(name, raw)


def join_fields(fields: list[Field]) -> bytes:
    return b"".join(f.raw for f in fields)


def unfold(value: bytes) -> str:
    """A field value unfolded (RFC 5322 §2.2.3), decoded as UTF-8 (RFC 6532) with
    replacement, and stripped."""
    return re.sub(rb"\r\n(?=[ \t])", b"", value).decode("utf-8", "replace").strip()


# The common forms "Name <local@domain>" and "local@domain", without quotes, comments,
# groups or several addresses; anything else goes to the full RFC 5322 parser.
_SIMPLE_FROM = re.compile(r"^(?:[A-Za-z0-9 .\-_']*<)?[A-Za-z0-9.!#$%&'*+/=?^_`{|}~\-]+"
                          r"@([A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?)>?$")


def from_domains(fields: list[Field]) -> list[str] | None:
    """The domains of the RFC5322.From addresses (RFC 7489 §6.6.1), lower case, or None
    when there is not exactly one From field or it cannot be parsed."""
    froms = [f for f in fields if f.lname == "from"]
    if len(froms) != 1:
        return None
    text = unfold(froms[0].value)
    m = _SIMPLE_FROM.match(text)
    if m and (text.endswith(">") == ("<" in text)):
        return [m.group(1).lower().rstrip(".")]
    try:
        header = SMTP.header_factory("from", text)
        addresses: tuple[Address, ...] = header.addresses
    except (ValueError, IndexError, TypeError, AttributeError):
        return None
    if getattr(header, "defects", None):
        # A From the parser had to guess at is not a basis for DMARC.
        if not addresses or any(not a.domain for a in addresses):
            return None
    domains = [a.domain.lower().rstrip(".") for a in addresses if a.domain]
    return domains or None
