"""ENVELOPE rendered straight from header octets (RFC 3501 §7.4.2, RFC 9051 §7.5.2).

The general path (``message.HeaderList`` → ``message.envelope`` → ``response.render``)
builds a value tree per message; FETCH ENVELOPE over a large mailbox spends most of its
time there.  ``render_envelope`` reads only the ten fields ENVELOPE needs from the
header block and writes the response bytes directly.  It must give exactly the octets of
the general path: whenever the header has anything unusual (a line break other than
CRLF/LF, a field name that is not plain printable ASCII, a line that is neither a field
nor a continuation, an address list beyond the simple forms), that field or the whole
header takes the general path.  Pure: works on bytes.
"""

from __future__ import annotations

import functools
import re

from mxd.imap import message as mimemsg
from mxd.imap.response import _QUOTED_MAX, render, string

# Characters that make str.splitlines/str.strip (the general path) differ from a split on
# LF and bytes.strip: VT, FF, FS, GS, RS, US, and a CR not followed by LF.
_ODD = re.compile(rb"[\x0b\x0c\x1c-\x1f]")
# Octets that response.string would escape or send as a literal (RFC 3501 §4.3), and TAB,
# which unfolding can leave in a value.  A header without them is quoted as it is.
_NEEDS_ESCAPE = re.compile(rb'[\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\xff"\\]')
_UNFOLD = re.compile(rb"\r?\n(?=[ \t])")
# A line that is neither a field, a continuation nor the blank line.  HeaderList skips
# it, and a continuation after it would then fold into an earlier field.
_JUNK_LINE = re.compile(rb"^(?![ \t]|[!-9;-~]+:|\r?$)", re.M)
# An ENVELOPE field with its continuation lines; "[ \t]*" is HeaderList's lstrip.
_FIELD = re.compile(
    rb"^(date|subject|from|sender|reply-to|to|cc|bcc|in-reply-to|message-id):[ \t]*"
    rb"([^\n]*(?:\n[ \t][^\n]*)*)", re.M | re.I)

_DATE, _SUBJECT, _FROM, _SENDER, _REPLY_TO, _TO, _CC, _BCC, _IN_REPLY_TO, _MESSAGE_ID = range(10)
_FIELDS = {
    b"date": _DATE, b"subject": _SUBJECT, b"from": _FROM, b"sender": _SENDER,
    b"reply-to": _REPLY_TO, b"to": _TO, b"cc": _CC, b"bcc": _BCC,
    b"in-reply-to": _IN_REPLY_TO, b"message-id": _MESSAGE_ID,
}

# message._SIMPLE_ADDR over octets: the str pattern's \x80-\U0010ffff are the surrogate
# escapes of 8-bit octets, and \s equals bytes' \s once _ODD octets have been ruled out.
_SIMPLE_ADDR = re.compile(
    rb'\s*(?:(?:"([^"\\]*)"|([A-Za-z0-9\x80-\xff!#$%&\'*+/=?^_`{|}~.-]+'
    rb'(?:[ \t]+[A-Za-z0-9\x80-\xff!#$%&\'*+/=?^_`{|}~.-]+)*))?\s*'
    rb'<([^<>@\s",;:()\[\]]+@[^<>@\s",;:()\[\]]+)>'
    rb'|([^<>@\s",;:()\[\]]+@[^<>@\s",;:()\[\]]+))\s*(?:,|$)')


def _is_unusual(block: bytes, plain: bool) -> bool:
    # _NEEDS_ESCAPE covers _ODD: a plain header has no odd octets.
    return (block.count(b"\r") != block.count(b"\r\n")
            or (not plain and _ODD.search(block) is not None)
            or _JUNK_LINE.search(block) is not None)


def split_fields(block: bytes, plain: bool = False) -> list[list[bytes]] | None:
    """The raw values of the ENVELOPE fields, indexed like ``_FIELDS``, as
    ``HeaderList.parse`` would give them; None when the header needs the general path.
    ``plain``: the caller found no _NEEDS_ESCAPE octet in the block."""
    if _is_unusual(block, plain):
        return None
    fields: list[list[bytes]] = [[], [], [], [], [], [], [], [], [], []]
    for name, value in _FIELD.findall(block):
        # HeaderList keeps each line's terminator; the last one is stripped.
        fields[_FIELDS[name.lower()]].append(value.rstrip(b"\r\n"))
    return fields


def _quote(value: bytes, utf8: bool, plain: bool) -> bytes:
    """response.string; ``plain`` says the value has nothing that needs escaping."""
    if plain and len(value) <= _QUOTED_MAX:
        return b'"' + value + b'"'
    return string(value, utf8)


def _text(values: list[bytes], utf8: bool, plain: bool) -> bytes:
    # message.header_bytes: the first value, unfolded and stripped.
    if not values:
        return b"NIL"
    value = values[0]
    if b"\n" in value:
        value = _UNFOLD.sub(b"", value)
    return _quote(value.strip(), utf8, plain)


def _address_list(values: list[bytes], utf8: bool, plain: bool) -> bytes | None:
    """An address list (None when absent or empty), as message._addresses renders it."""
    if not values:
        return None
    if len(values) == 1:
        text = values[0]
        if b"\n" in text:
            text = _UNFOLD.sub(b"", text)
    else:
        text = b", ".join([_UNFOLD.sub(b"", v) for v in values])
    if len(text) <= _MEMO_TEXT:
        return _address_list_memo(text, utf8, plain)
    return _render_addresses(text, utf8, plain)


def _render_addresses(text: bytes, utf8: bool, plain: bool) -> bytes | None:
    out = [b"("]
    pos = 0
    for m in _SIMPLE_ADDR.finditer(text):
        # message._simple_addresses: the matches must follow each other from the start.
        if m.start() != pos:
            return _general_address_list(text, utf8)
        quoted, atoms, angle, bare = m.groups()
        display = quoted if quoted is not None else atoms
        local, _, domain = (angle or bare).rpartition(b"@")
        out += (b"(", _quote(display, utf8, plain) if display else b"NIL", b" NIL ",
                _quote(local, utf8, plain), b" ", _quote(domain, utf8, plain), b")")
        pos = m.end()
    if pos != len(text):
        return _general_address_list(text, utf8)
    if len(out) == 1:
        return None
    out.append(b")")
    return b"".join(out)


# Address lists repeat across a mailbox (To: the owner, mailing lists); a small bounded
# memo of short ones saves their parsing.  Values are immutable bytes.
_MEMO_TEXT = 512
_address_list_memo = functools.lru_cache(maxsize=2048)(_render_addresses)


def _general_address_list(text: bytes, utf8: bool) -> bytes | None:
    headers = mimemsg.HeaderList([("To", text.decode("ascii", "surrogateescape"))])
    value = mimemsg._addresses(headers, "To")
    return None if value is None else render(value, utf8)


def render_envelope(block: bytes, utf8: bool = False) -> bytes:
    """The rendered ENVELOPE of a message's header block: the octets of
    ``render(envelope(HeaderList.parse(block)), utf8)``, computed faster."""
    plain = _NEEDS_ESCAPE.search(block) is None
    fields = split_fields(block, plain)
    if fields is None:
        return render(mimemsg.envelope(mimemsg.HeaderList.parse(block)), utf8)
    if not plain:
        # Quotes or 8-bit octets elsewhere in the header (a MIME boundary="...") need not
        # be in the ENVELOPE fields.
        plain = _NEEDS_ESCAPE.search(b"".join([v for values in fields for v in values])) is None
    frm = _address_list(fields[_FROM], utf8, plain)
    sender = _address_list(fields[_SENDER], utf8, plain) or frm
    reply_to = _address_list(fields[_REPLY_TO], utf8, plain) or frm
    nil = b"NIL"
    return b"".join((
        b"(", _text(fields[_DATE], utf8, plain), b" ", _text(fields[_SUBJECT], utf8, plain), b" ",
        frm or nil, b" ", sender or nil, b" ", reply_to or nil, b" ",
        _address_list(fields[_TO], utf8, plain) or nil, b" ",
        _address_list(fields[_CC], utf8, plain) or nil, b" ",
        _address_list(fields[_BCC], utf8, plain) or nil, b" ",
        _text(fields[_IN_REPLY_TO], utf8, plain), b" ", _text(fields[_MESSAGE_ID], utf8, plain), b")",
    ))
