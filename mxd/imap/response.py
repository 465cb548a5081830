"""Rendering IMAP response data (RFC 3501 §4, §7; RFC 9051 §4, §7).

Strings become quoted strings when they can, literals otherwise (CR, LF, NUL or 8-bit
octets, or long values).  Pure functions returning bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime

from mxd.imap import utf7
from mxd.imap.message import AddressList, Value

_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_QUOTED_MAX = 1000


_NOT_QUOTABLE = re.compile(rb"[\x00-\x1f\x7f-\xff]")
_NOT_QUOTABLE_UTF8 = re.compile(rb"[\x00-\x1f\x7f]")


def _quotable(b: bytes, utf8: bool) -> bool:
    if len(b) > _QUOTED_MAX:
        return False
    return (_NOT_QUOTABLE_UTF8 if utf8 else _NOT_QUOTABLE).search(b) is None


def string(b: bytes | str, utf8: bool = False) -> bytes:
    """A quoted string or a literal (RFC 3501 §4.3)."""
    if isinstance(b, str):
        b = b.encode("utf-8", "surrogateescape")
    if len(b) <= _QUOTED_MAX and (_NOT_QUOTABLE_UTF8 if utf8 else _NOT_QUOTABLE).search(b) is None:
        if b"\\" in b or b'"' in b:
            b = b.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return b'"' + b + b'"'
    return b"{%d}\r\n" % len(b) + b


def nstring(b: bytes | str | None, utf8: bool = False) -> bytes:
    return b"NIL" if b is None else string(b, utf8)


def astring(s: str) -> bytes:
    """An atom when the text allows it, else a string."""
    b = s.encode("utf-8", "surrogateescape")
    if b and all(0x21 <= c <= 0x7E and c not in b'(){%*"\\]' for c in b) and b.upper() != b"NIL":
        return b
    return string(b, utf8=True)


def mailbox(name: str, utf8: bool = False) -> bytes:
    """A mailbox name: modified UTF-7 (RFC 3501 §5.1.3) unless UTF8=ACCEPT is on."""
    if name.upper() == "INBOX":
        return b"INBOX"
    wire = name if utf8 else utf7.encode(name)
    return string(wire.encode("utf-8"), utf8=True)


def render(v: Value, utf8: bool = False) -> bytes:
    """Nested values (ENVELOPE, BODYSTRUCTURE): bytes→string, int, None→NIL, list→(...)."""
    if isinstance(v, bytes):
        return string(v, utf8)
    if v is None:
        return b"NIL"
    if isinstance(v, list):
        return b"(" + b" ".join([render(x, utf8) for x in v]) + b")"
    if isinstance(v, bool):
        return b"1" if v else b"0"
    if isinstance(v, int):
        return b"%d" % v
    if isinstance(v, AddressList):
        return b"(" + b"".join([render(a, utf8) for a in v.addresses]) + b")"
    return (b"(" + b"".join([render(c, utf8) for c in v.children]) + b" "
            + b" ".join([render(x, utf8) for x in v.rest]) + b")")


def flags(fl: Iterable[str]) -> bytes:
    return b"(" + " ".join(sorted(fl)).encode("utf-8", "replace") + b")"


def internaldate(dt: datetime) -> bytes:
    """RFC 3501 date-time: "dd-Mon-yyyy hh:mm:ss +zzzz"."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    off = dt.utcoffset()
    mins = int(off.total_seconds() // 60) if off is not None else 0
    sign = "+" if mins >= 0 else "-"
    mins = abs(mins)
    return ('"%02d-%s-%04d %02d:%02d:%02d %s%02d%02d"' % (
        dt.day, _MONTHS[dt.month - 1], dt.year, dt.hour, dt.minute, dt.second,
        sign, mins // 60, mins % 60)).encode("ascii")


def seqset(values: Iterable[int]) -> bytes:
    """Compress numbers into a sequence set "1:3,7,9:10"."""
    vals = sorted(set(values))
    out: list[str] = []
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        out.append(str(vals[i]) if i == j else f"{vals[i]}:{vals[j]}")
        i = j + 1
    return ",".join(out).encode("ascii")
