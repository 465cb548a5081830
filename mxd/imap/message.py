"""MIME structure of a stored message for FETCH and SEARCH (RFC 3501 §6.4.5, §7.4.2;
RFC 2045/2046; RFC 3516 BINARY).

Built on the stdlib ``email`` package for header parsing and decoding (policy compat32,
which tolerates broken MIME), with mxd's own boundary splitter so that every part is
known by its exact byte offsets in the original message: IMAP sections must return the
stored octets, not a re-serialisation.  Pure: works on bytes.
"""

from __future__ import annotations

import base64
import binascii
import email.header
import email.parser
import email.utils
import quopri
import re
import threading
from email.message import Message
from email.policy import compat32

import attrs

from mxd.imap.addresses import GroupEnd, GroupStart, parse_address_list

MAX_DEPTH = 20
MAX_PARTS = 2000
_HEADER_PARSER = email.parser.BytesHeaderParser(policy=compat32)
_UNFOLD = re.compile(r"\r?\n(?=[ \t])")
_HDR_END = re.compile(rb"\r?\n\r?\n")


class UnknownCTE(ValueError):
    """BINARY of a part whose Content-Transfer-Encoding cannot be decoded (RFC 3516 §4.3)."""


def header_end(raw: bytes, start: int = 0) -> int:
    """Offset where the body starts (just after the blank line), or len(raw) if none."""
    if raw[start:start + 2] == b"\r\n":
        return start + 2
    if raw[start:start + 1] == b"\n":
        return start + 1
    m = _HDR_END.search(raw, start)
    return m.end() if m else len(raw)


class _LastParsed(threading.local):
    block: bytes | None = None
    parsed: Message | None = None


_last = _LastParsed()


def parse_headers(block: bytes) -> Message:
    """The header fields of ``block``.  The last block parsed on a thread is kept: the
    store runs its derivers (ENVELOPE and sort keys, mxd.imap.summary; the preview,
    mxd.imap.preview) one after the other on each new body, and each parses the same
    header block, which so costs one parse.  The Message may thus be shared: callers
    read it, none changes it."""
    last = _last
    if last.parsed is not None and last.block == block:
        return last.parsed
    parsed = _HEADER_PARSER.parsebytes(block)
    last.block, last.parsed = block, parsed
    return parsed


def unfold(value: str) -> str:
    return _UNFOLD.sub("", value)


class HeaderList:
    """A fast, tolerant header splitter with the ``raw_items`` view that ENVELOPE needs.

    The stdlib parser builds a full Message; FETCH ENVELOPE over thousands of messages
    needs only ten raw field values.
    """

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items
        self.by_name: dict[str, list[str]] = {}
        for name, value in items:
            self.by_name.setdefault(name.lower(), []).append(value)

    @classmethod
    def parse(cls, block: bytes) -> HeaderList:
        text = block.decode("ascii", "surrogateescape")
        items: list[tuple[str, str]] = []
        for line in text.splitlines(keepends=True):
            if line in ("\r\n", "\n"):
                break
            if line[:1] in (" ", "\t"):
                if items:
                    name, value = items[-1]
                    items[-1] = (name, value + line)
                continue
            name, sep, value = line.partition(":")
            if not sep or not name.strip() or " " in name.strip():
                continue
            items.append((name.strip(), value.lstrip(" \t")))
        return cls([(n, v.rstrip("\r\n")) for n, v in items])

    def raw_items(self) -> list[tuple[str, str]]:
        return self._items


def raw_all(headers: Message | HeaderList, name: str) -> list[str]:
    """Raw values of a header field (8-bit octets kept as surrogate escapes)."""
    n = name.lower()
    if isinstance(headers, HeaderList):
        return headers.by_name.get(n, [])
    return [str(v) for k, v in headers.raw_items() if k.lower() == n]


def raw(headers: Message | HeaderList, name: str) -> str | None:
    values = raw_all(headers, name)
    return values[0] if values else None


def header_bytes(value: str | None) -> bytes | None:
    """A raw header value as bytes (8-bit octets restored), unfolded."""
    if value is None:
        return None
    return unfold(str(value)).strip().encode("utf-8", "surrogateescape")


@attrs.define
class Entity:
    """One MIME entity: ``[hdr_start, body_start)`` is its header, ``[body_start, end)``
    its body, both offsets into the whole message."""

    hdr_start: int
    body_start: int
    end: int
    headers: Message
    maintype: str
    subtype: str
    params: list[tuple[str, str]]
    children: list[Entity] = attrs.field(factory=list)
    encapsulated: Entity | None = None  # message/rfc822 content

    @property
    def is_multipart(self) -> bool:
        return self.maintype == "multipart"

    @property
    def is_message(self) -> bool:
        return self.maintype == "message" and self.subtype in ("rfc822", "global")

    @property
    def size(self) -> int:
        return self.end - self.body_start

    def param(self, name: str) -> str | None:
        for k, v in self.params:
            if k.lower() == name:
                return v
        return None


def _content_type(headers: Message, default: str) -> tuple[str, str, list[tuple[str, str]]]:
    raw = headers.get("Content-Type")
    ctype = default
    params: list[tuple[str, str]] = []
    if raw is not None:
        value = unfold(str(raw))
        main = value.split(";", 1)[0].strip().lower()
        if "/" in main and all(main.split("/", 1)):
            ctype = main
        try:
            got = headers.get_params(header="content-type") or []
        except Exception:  # noqa: BLE001 - compat32 raises assorted errors on junk
            got = []
        for k, v in got[1:]:
            if isinstance(v, tuple):
                v = email.utils.collapse_rfc2231_value(v)
            # RFC 5322 §2.2.3: a folded value is unfolded (the CRLF goes, the WSP stays):
            # boundary="foo\r\n bar" is "foo bar".
            params.append((str(k).lower(), unfold(str(v))))
    main, _, sub = ctype.partition("/")
    if main == "text" and not any(k == "charset" for k, _ in params):
        params.insert(0, ("charset", "us-ascii"))
    return main, sub, params


def _parse_entity(raw: bytes, start: int, end: int, default: str, depth: int,
                  counter: list[int]) -> Entity:
    counter[0] += 1
    body_start = min(header_end(raw, start), end)
    headers = parse_headers(raw[start:body_start])
    main, sub, params = _content_type(headers, default)
    ent = Entity(start, body_start, end, headers, main, sub, params)
    if depth >= MAX_DEPTH or counter[0] > MAX_PARTS:
        return ent
    if main == "multipart":
        boundary = ent.param("boundary")
        if boundary:
            child_default = "message/rfc822" if sub == "digest" else "text/plain"
            for a, b in _split_multipart(raw, body_start, end, boundary.encode("utf-8", "replace")):
                ent.children.append(_parse_entity(raw, a, b, child_default, depth + 1, counter))
                if counter[0] > MAX_PARTS:
                    break
        if not ent.children:
            # RFC 2046 §5.1.1 broken multipart: treat as one empty text part.
            ent.children.append(Entity(body_start, body_start, body_start, parse_headers(b""),
                                       "text", "plain", [("charset", "us-ascii")]))
    elif ent.is_message:
        ent.encapsulated = _parse_entity(raw, body_start, end, "text/plain", depth + 1, counter)
    return ent


def _split_multipart(raw: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the body parts between delimiter lines (RFC 2046 §5.1.1)."""
    pat = re.compile(rb"(?:(?<=\n)|(?<=\A))--" + re.escape(boundary) + rb"(--)?[ \t]*(\r?\n|\Z)")
    spans: list[tuple[int, int]] = []
    body = raw[:end]
    part_start: int | None = None
    pos = start
    while True:
        m = pat.search(body, pos)
        if m is None:
            break
        # The CRLF before the delimiter belongs to the delimiter.
        if part_start is not None:
            pe = m.start()
            if body[pe - 2:pe] == b"\r\n" and pe - 2 >= part_start:
                pe -= 2
            elif body[pe - 1:pe] == b"\n" and pe - 1 >= part_start:
                pe -= 1
            spans.append((part_start, pe))
        if m.group(1):  # close delimiter
            part_start = None
            break
        part_start = m.end()
        pos = m.end()
        if m.end() == m.start():
            break
    if part_start is not None and part_start <= end:
        spans.append((part_start, end))
    return spans


@attrs.define
class ParsedMessage:
    raw: bytes
    root: Entity

    @classmethod
    def parse(cls, raw: bytes) -> ParsedMessage:
        return cls(raw, _parse_entity(raw, 0, len(raw), "text/plain", 0, [0]))

    # -- sections -------------------------------------------------------------------------
    def locate(self, part: tuple[int, ...]) -> Entity | None:
        ent = self.root
        for i, n in enumerate(part):
            # RFC 3501 §6.4.5: a part number after that of a message/rfc822 part counts
            # within the enclosed message.  The top level is such a part too when the
            # whole message is message/rfc822: BODY[1] is the enclosed message and
            # BODY[1.1] its first part.
            if i > 0 and ent.is_message and ent.encapsulated is not None:
                ent = ent.encapsulated
            if ent.is_multipart:
                if n > len(ent.children):
                    return None
                ent = ent.children[n - 1]
            elif n != 1:
                return None
        return ent

    def section(self, part: tuple[int, ...], text: str, fields: tuple[str, ...] = ()) -> bytes | None:
        """The octets of BODY[section]; None when the part does not exist."""
        raw = self.raw
        if not part:
            target: Entity | None = self.root
        else:
            target = self.locate(part)
            if target is None:
                return None
            if text in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT"):
                if not target.is_message or target.encapsulated is None:
                    return None
                target = target.encapsulated
        assert target is not None
        if text == "":
            if not part:
                return raw
            return raw[target.body_start:target.end]
        if text == "TEXT":
            return raw[target.body_start:target.end]
        if text in ("HEADER", "MIME"):
            return raw[target.hdr_start:target.body_start]
        return filter_header(raw[target.hdr_start:target.body_start], fields,
                             text == "HEADER.FIELDS.NOT")

    def binary(self, part: tuple[int, ...]) -> bytes | None:
        """RFC 3516: the decoded content of a part (the whole message for ``()``)."""
        if not part:
            return self.raw
        ent = self.locate(part)
        if ent is None:
            return None
        if ent.is_multipart:
            return self.raw[ent.body_start:ent.end]
        return decode_cte(self.raw[ent.body_start:ent.end], _cte(ent))

    def without_nul(self) -> ParsedMessage:
        """The message with every leaf part whose body holds NUL re-encoded as base64.

        RFC 3516 §4.3 / RFC 9051 §6.3.12: a message APPENDed as a binary literal8 may
        hold NUL, which BODY[] (a normal literal, RFC 9051 §4.3) must never carry; the
        server re-encodes such parts (Dovecot does so with base64).  BINARY[] still gives
        the decoded octets from the stored message."""
        if b"\0" not in self.raw:
            return self
        edits: list[tuple[int, int, bytes]] = []

        def walk(e: Entity) -> None:
            if e.is_multipart:
                for c in e.children:
                    walk(c)
                return
            if e.is_message and e.encapsulated is not None:
                walk(e.encapsulated)
                return
            body = self.raw[e.body_start:e.end]
            if b"\0" not in body:
                return
            try:
                content = decode_cte(body, _cte(e))
            except UnknownCTE:
                content = body
            header = _replace_cte(self.raw[e.hdr_start:e.body_start])
            encoded = base64.encodebytes(content).replace(b"\n", b"\r\n")
            edits.append((e.hdr_start, e.end, header + encoded.rstrip(b"\r\n")))

        walk(self.root)
        out = bytearray()
        pos = 0
        for start, end, new in sorted(edits):
            out += self.raw[pos:start] + new
            pos = end
        out += self.raw[pos:]
        return ParsedMessage.parse(bytes(out).replace(b"\0", b"\x80"))

    # -- search -------------------------------------------------------------------------
    def text_parts(self) -> list[str]:
        """Decoded text of every text/* leaf (for SEARCH BODY/TEXT)."""
        out: list[str] = []

        def walk(e: Entity) -> None:
            if e.is_multipart:
                for c in e.children:
                    walk(c)
            elif e.is_message and e.encapsulated is not None:
                out.append(decode_header_text(self.raw[e.encapsulated.hdr_start:e.encapsulated.body_start]))
                walk(e.encapsulated)
            elif e.maintype == "text":
                body = self.raw[e.body_start:e.end]
                try:
                    body = decode_cte(body, _cte(e))
                except UnknownCTE:
                    pass
                out.append(decode_charset(body, e.param("charset")))
        walk(self.root)
        return out


def _replace_cte(block: bytes) -> bytes:
    """A header block with its Content-Transfer-Encoding field set to base64."""
    out = bytearray()
    skip = False
    body_sep = b"\r\n"
    for line in block.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            body_sep = line
            break
        if line[:1] in (b" ", b"\t"):
            if not skip:
                out += line
            continue
        skip = line.split(b":", 1)[0].strip().lower() == b"content-transfer-encoding"
        if not skip:
            out += line
    return bytes(out) + b"Content-Transfer-Encoding: base64\r\n" + body_sep


def _cte(e: Entity) -> str:
    return unfold(str(e.headers.get("Content-Transfer-Encoding", "7bit"))).strip().lower()


def decode_cte(body: bytes, cte: str) -> bytes:
    if cte in ("7bit", "8bit", "binary", ""):
        return body
    if cte == "base64":
        try:
            return base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", body) + b"==")
        except (binascii.Error, ValueError):
            try:
                return base64.b64decode(re.sub(rb"[^A-Za-z0-9+/]", b"", body)[: -1 or None] + b"==")
            except (binascii.Error, ValueError) as e:
                raise UnknownCTE("undecodable base64") from e
    if cte == "quoted-printable":
        return quopri.decodestring(body)
    raise UnknownCTE(cte)


def decode_charset(body: bytes, charset: str | None) -> str:
    """``body`` as text in ``charset`` (UTF-8 when the charset is unknown; bad octets
    replaced)."""
    try:
        return body.decode(charset or "us-ascii", "replace")
    except LookupError:
        return body.decode("utf-8", "replace")


def decode_header_value(value: str) -> str:
    """RFC 2047 encoded words decoded, for SEARCH."""
    value = unfold(value)
    try:
        parts = email.header.decode_header(value)
    except Exception:  # noqa: BLE001 - stdlib raises assorted errors on junk
        return value
    out = []
    for text, cs in parts:
        if isinstance(text, bytes):
            out.append(decode_charset(text, cs or "utf-8"))
        else:
            out.append(text)
    return "".join(out)


def decode_header_text(block: bytes) -> str:
    msg = parse_headers(block)
    return "\n".join(f"{k}: {decode_header_value(str(v))}" for k, v in msg.items())


def filter_header(block: bytes, fields: tuple[str, ...], exclude: bool) -> bytes:
    """HEADER.FIELDS / HEADER.FIELDS.NOT: the matching header lines and a blank line."""
    wanted = {f.upper().encode("ascii", "replace") for f in fields}
    out = bytearray()
    keep = False
    for line in block.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t"):
            if keep:
                out += line
            continue
        name = line.split(b":", 1)[0].strip().upper()
        keep = (name in wanted) != exclude
        if keep:
            out += line
    out += b"\r\n"
    return bytes(out)


# -- ENVELOPE and BODYSTRUCTURE as nested values (response.py renders them) ------------------

@attrs.frozen
class MultipartValue:
    """A multipart BODYSTRUCTURE: children are written without separating spaces."""

    children: tuple[Value, ...]
    rest: tuple[Value, ...]


@attrs.frozen
class AddressList:
    """An ENVELOPE address list: ``"(" 1*address ")"``, written without spaces."""

    addresses: tuple[Value, ...]


Value = bytes | int | None | list["Value"] | MultipartValue | AddressList


_SIMPLE_ADDR = re.compile(
    r'\s*(?:(?:"([^"\\]*)"|([A-Za-z0-9\x80-\U0010ffff!#$%&\'*+/=?^_`{|}~.-]+'
    r'(?:[ \t]+[A-Za-z0-9\x80-\U0010ffff!#$%&\'*+/=?^_`{|}~.-]+)*))?\s*'
    r'<([^<>@\s",;:()\[\]]+@[^<>@\s",;:()\[\]]+)>'
    r'|([^<>@\s",;:()\[\]]+@[^<>@\s",;:()\[\]]+))\s*(?:,|$)')


def _simple_addresses(text: str) -> list[tuple[str, str]] | None:
    """Fast path for the common address list forms; None when anything is unusual."""
    out = []
    pos = 0
    n = len(text)
    while pos < n:
        m = _SIMPLE_ADDR.match(text, pos)
        if m is None or m.end() == pos:
            return None
        name = m.group(1) if m.group(1) is not None else (m.group(2) or "")
        out.append((name, m.group(3) or m.group(4)))
        pos = m.end()
    return out


def _addr_value(display: str, addr: str) -> list[Value]:
    local, at, domain = addr.rpartition("@")
    if not at:
        local, domain = addr, ""
    return [
        display.encode("utf-8", "surrogateescape") if display else None,
        None,
        local.encode("utf-8", "surrogateescape") if local else None,
        domain.encode("utf-8", "surrogateescape") if domain else None,
    ]


def _b(text: str | None) -> bytes | None:
    return text.encode("utf-8", "surrogateescape") if text else None


def _parsed_addresses(text: str) -> list[Value]:
    """Full RFC 5322 address lists: groups, comments, source routes (mxd.imap.addresses)."""
    out: list[Value] = []
    for e in parse_address_list(text):
        if isinstance(e, GroupStart):
            # RFC 3501 §7.4.2: group start (NIL NIL name NIL) ... end (NIL NIL NIL NIL).
            out.append([None, None, _b(e.name) or b"", None])
        elif isinstance(e, GroupEnd):
            out.append([None, None, None, None])
        else:
            out.append([_b(e.name), _b(e.adl), _b(e.mailbox), _b(e.host)])
    return out


def _addresses(headers: Message | HeaderList, name: str) -> AddressList | None:
    values = raw_all(headers, name)
    if not values:
        return None
    text = ", ".join(unfold(str(v)) for v in values)
    pairs = _simple_addresses(text)
    out: list[Value] | None
    if pairs is not None:
        out = [_addr_value(d, a) for d, a in pairs]
    else:
        out = _parsed_addresses(text)
    return AddressList(tuple(out)) if out else None


def envelope(headers: Message | HeaderList) -> list[Value]:
    """RFC 3501 §7.4.2 ENVELOPE fields as values."""
    frm = _addresses(headers, "From")
    sender = _addresses(headers, "Sender") or frm
    reply_to = _addresses(headers, "Reply-To") or frm
    return [
        header_bytes(raw(headers, "Date")),
        header_bytes(raw(headers, "Subject")),
        frm, sender, reply_to,
        _addresses(headers, "To"),
        _addresses(headers, "Cc"),
        _addresses(headers, "Bcc"),
        header_bytes(raw(headers, "In-Reply-To")),
        header_bytes(raw(headers, "Message-ID")),
    ]


def _params_value(params: list[tuple[str, str]]) -> Value:
    if not params:
        return None
    out: list[Value] = []
    for k, v in params:
        out.append(k.upper().encode("utf-8", "surrogateescape"))
        out.append(v.encode("utf-8", "surrogateescape"))
    return out


def _disposition(e: Entity) -> Value:
    raw = e.headers.get("Content-Disposition")
    if raw is None:
        return None
    kind = unfold(str(raw)).split(";", 1)[0].strip()
    if not kind:
        return None
    try:
        got = e.headers.get_params(header="content-disposition") or []
    except Exception:  # noqa: BLE001
        got = []
    params = []
    for k, v in got[1:]:
        if isinstance(v, tuple):
            v = email.utils.collapse_rfc2231_value(v)
        params.append((str(k).lower(), unfold(str(v))))
    return [kind.upper().encode("utf-8", "surrogateescape"), _params_value(params)]


def _lines(body: bytes) -> int:
    # The CRLF before a boundary belongs to the delimiter, so a part's last line has
    # no terminator and is not counted (as Dovecot and Cyrus count).
    return body.count(b"\n")


def bodystructure(msg: ParsedMessage, ent: Entity | None = None, extended: bool = True) -> Value:
    """RFC 3501 §7.4.2 BODYSTRUCTURE (``extended``) or BODY as nested values."""
    e = msg.root if ent is None else ent
    if e.is_multipart:
        rest: list[Value] = [e.subtype.upper().encode()]
        if extended:
            rest += [_params_value(e.params), _disposition(e),
                     header_bytes(raw(e.headers, "Content-Language")),
                     header_bytes(raw(e.headers, "Content-Location"))]
        return MultipartValue(tuple(bodystructure(msg, c, extended) for c in e.children),
                              tuple(rest))
    cte = _cte(e).upper().encode("ascii", "replace") or b"7BIT"
    out: list[Value] = [
        e.maintype.upper().encode("utf-8", "replace"), e.subtype.upper().encode("utf-8", "replace"),
        _params_value(e.params),
        header_bytes(raw(e.headers, "Content-ID")),
        header_bytes(raw(e.headers, "Content-Description")),
        cte, e.size,
    ]
    if e.is_message and e.encapsulated is not None:
        inner = e.encapsulated
        out += [envelope(inner.headers), bodystructure(msg, inner, extended),
                _lines(msg.raw[e.body_start:e.end])]
    elif e.maintype == "text":
        out.append(_lines(msg.raw[e.body_start:e.end]))
    if extended:
        out += [header_bytes(raw(e.headers, "Content-MD5")), _disposition(e),
                header_bytes(raw(e.headers, "Content-Language")),
                header_bytes(raw(e.headers, "Content-Location"))]
    return out
