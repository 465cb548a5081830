"""xtext (RFC 3461 §4): the encoding of ENVID and ORCPT values in SMTP commands.

"+" followed by two upper-case hex digits stands for one octet; the octets 33..126 other
than "+" and "=" stand for themselves.  Text is UTF-8.
"""

from __future__ import annotations

import re

_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*\Z")
_ESCAPE = re.compile(r"\+([0-9A-Fa-f]{2})")


class XtextError(ValueError):
    """The text is not valid xtext."""


def encode(text: str) -> str:
    """UTF-8 octets outside 33..126, "+" and "=" become "+HH"."""
    out = []
    for b in text.encode("utf-8"):
        out.append(chr(b) if 33 <= b <= 126 and b not in (0x2B, 0x3D) else f"+{b:02X}")
    return "".join(out)


def decode(text: str) -> str:
    """Strict decoding, for values a client sends (XtextError when malformed)."""
    if not _XTEXT.match(text):
        raise XtextError("invalid xtext")
    return decode_lenient(text)


def decode_lenient(text: str) -> str:
    """Decoding that keeps a malformed escape as it is (for values already stored)."""
    out = bytearray()
    i = 0
    while i < len(text):
        m = _ESCAPE.match(text, i) if text[i] == "+" else None
        if m is not None:
            out.append(int(m.group(1), 16))
            i += 3
        else:
            out += text[i].encode("utf-8")
            i += 1
    return out.decode("utf-8", errors="replace")
