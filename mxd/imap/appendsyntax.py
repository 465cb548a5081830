"""APPEND with several messages and built from parts, and REPLACE: the grammar of
MULTIAPPEND (RFC 3502 §6.3.11), CATENATE (RFC 4469 §5), REPLACE (RFC 8508 §5) and the
internal IMAP URLs CATENATE refers to (RFC 5092 §11, without URLAUTH).

Pure: the parser (``mxd.imap.parser``) hands its reader to ``parse_append`` and
``parse_replace``; they raise only ``ParseError``.  The plain one-literal APPEND keeps
its own value (``AppendArgs``) so that its fast path stays as it is; anything more
becomes ``MultiAppendArgs``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

import attrs

from mxd.imap.framer import BlobLiteral, Literal, Part
from mxd.imap.values import AppendArgs, Section

if TYPE_CHECKING:
    from mxd.imap.parser import Reader

_LIT = 0  # the reader's placeholder for a literal (mxd.imap.parser._LIT)


@attrs.frozen
class CatText:
    """RFC 4469 §5 ``text-literal``: octets to put into the message as they are."""

    data: Literal | BlobLiteral


@attrs.frozen
class CatURL:
    """RFC 4469 §5 ``url``: (part of) a message already in the account."""

    url: str


CatPart = CatText | CatURL


@attrs.frozen
class AppendMessage:
    """RFC 3502 ``append-message``: its flags, date and data (one literal, or the parts
    of a CATENATE)."""

    flags: tuple[str, ...]
    date: datetime | None
    data: Literal | BlobLiteral | tuple[CatPart, ...]


@attrs.frozen
class MultiAppendArgs:
    """APPEND of several messages (RFC 3502) or of a CATENATE message (RFC 4469)."""

    mailbox: str
    messages: tuple[AppendMessage, ...]


@attrs.frozen
class ReplaceArgs:
    """RFC 8508 §3.2/§3.3: REPLACE (``target`` a sequence number) or UID REPLACE (a UID)."""

    target: int
    mailbox: str
    message: AppendMessage


def _message(r: Reader) -> AppendMessage:
    """``append-opts SP append-data`` with the leading SP already taken."""
    flags: tuple[str, ...] = ()
    when: datetime | None = None
    if r.peek() == ord("("):
        flags = r.flag_list()
        r.sp()
    if r.peek() == ord('"'):
        when = r.date_time()
        r.sp()
    if r.take(b"CATENATE "):
        return AppendMessage(flags, when, _catenate(r))
    utf8 = r.take(b"UTF8 (")  # RFC 6855 §4: UTF8 (literal8)
    if r.peek() != _LIT:
        raise r.error("APPEND needs the message as a literal")
    data = r._literal()
    if utf8:
        r.expect(b")")
    return AppendMessage(flags, when, data)


def _catenate(r: Reader) -> tuple[CatPart, ...]:
    # RFC 4469 §5: "CATENATE" SP "(" cat-part *(SP cat-part) ")";
    # cat-part = text-literal / url; text-literal = "TEXT" SP literal; url = "URL" SP astring.
    # RFC 6855 §4 adds "UTF8" SP "(" literal8 ")" as a cat-part.
    r.expect(b"(")
    parts: list[CatPart] = []
    while True:
        if r.take(b"TEXT "):
            if r.peek() != _LIT:
                raise r.error("CATENATE TEXT needs a literal")
            parts.append(CatText(r._literal()))
        elif r.take(b"UTF8 ("):
            if r.peek() != _LIT:
                raise r.error("CATENATE UTF8 needs a literal8")
            parts.append(CatText(r._literal()))
            r.expect(b")")
        elif r.take(b"URL "):
            url = r.astring_bytes()
            try:
                parts.append(CatURL(url.decode("utf-8")))
            except UnicodeDecodeError as e:
                raise r.error("invalid UTF-8 in URL") from e
        else:
            raise r.error("expected TEXT or URL")
        if r.take(b")"):
            return tuple(parts)
        r.sp()


def parse_append(r: Reader) -> AppendArgs | MultiAppendArgs:
    """RFC 3502 §6.3.11: ``"APPEND" SP mailbox 1*append-message`` (each append-message
    begins with SP), with RFC 4469 CATENATE data."""
    r.sp()
    name = r.astring()
    messages = []
    while True:
        r.sp()
        messages.append(_message(r))
        if r.at_end():
            break
    first = messages[0]
    if len(messages) == 1 and not isinstance(first.data, tuple):
        return AppendArgs(name, first.flags, first.date, first.data)
    return MultiAppendArgs(name, tuple(messages))


def parse_replace(r: Reader) -> ReplaceArgs:
    """RFC 8508 §5: ``"REPLACE" SP seq-number SP mailbox append-message`` (and the same
    after "UID" with a UID)."""
    r.sp()
    target = r.number(nz=True)
    if target > 0xFFFFFFFF:
        raise r.error("number out of range")
    r.sp()
    name = r.astring()
    r.sp()
    return ReplaceArgs(target, name, _message(r))


# -- literal roles while a command is being read ------------------------------------------

_HEAD_RE = re.compile(rb"^[^ ]+ (?:UID +)?(?:APPEND|REPLACE +[0-9]+) +$", re.IGNORECASE)
_TEXT_RE = re.compile(rb"(?:\(| )(?:TEXT |UTF8 \()$", re.IGNORECASE)
_CATENATE_RE = re.compile(rb"(?:^| )CATENATE \(", re.IGNORECASE)


@attrs.frozen
class LiteralTally:
    """What ``LiteralCounter`` found: the role and message index of the literal being
    announced, the octets its message has had so far, of all messages, and in memory."""

    role: str  # "mailbox" | "message" | "text"
    index: int
    message_octets: int
    total_octets: int
    in_memory: int


class LiteralCounter:
    """What a literal of an APPEND or REPLACE announced after ``parts`` is: "mailbox"
    (the mailbox name as a literal), "message" (the data of message ``index``) or "text"
    (a CATENATE TEXT part of message ``index``, RFC 4469 §5), with the octets so far.
    The session counts each message against APPENDLIMIT and the command's total against
    the quota with it, before any octet of the literal is accepted.

    Incremental: the parts of one command only grow, and each is looked at once (a
    MULTIAPPEND of a thousand messages costs a thousand steps, not a million).  Only the
    line text between literals is read; input that is not valid syntax may be counted
    oddly, and the parser refuses it later."""

    def __init__(self) -> None:
        self._first: object = None
        self._seen = 0
        self._mailbox_pending = False
        self._messages = 0  # messages begun so far
        self._in_catenate = False
        self._prev = b""
        self._sizes: dict[int, int] = {}
        self._total = 0
        self._in_memory = 0

    def tally(self, parts: tuple[Part, ...]) -> LiteralTally:
        if not parts:
            return LiteralTally("message", 0, 0, 0, 0)
        if parts[0] is not self._first or len(parts) < self._seen:
            self.__init__()  # type: ignore[misc]  # a new command
            self._first = parts[0]
            first = parts[0]
            self._mailbox_pending = isinstance(first, bytes) and _HEAD_RE.match(first) is not None
        for p in parts[self._seen:]:
            self._step(p)
        self._seen = len(parts)
        last = parts[-1] if isinstance(parts[-1], bytes) else b""
        if self._mailbox_pending:
            return LiteralTally("mailbox", 0, 0, self._total, self._in_memory)
        if self._in_catenate and _TEXT_RE.search(last):
            i = self._messages - 1
            return LiteralTally("text", i, self._sizes.get(i, 0), self._total, self._in_memory)
        return LiteralTally("message", self._messages, 0, self._total, self._in_memory)

    def _step(self, p: Part) -> None:
        if isinstance(p, bytes):
            if _CATENATE_RE.search(p):
                self._messages += 1
                self._in_catenate = True
            self._prev = p
            return
        if self._mailbox_pending:
            self._mailbox_pending = False
            return
        if not (self._in_catenate and _TEXT_RE.search(self._prev)):
            self._messages += 1
            self._in_catenate = False
        n = p.size if isinstance(p, BlobLiteral) else len(p.data)
        i = self._messages - 1
        self._sizes[i] = self._sizes.get(i, 0) + n
        self._total += n
        if isinstance(p, Literal):
            self._in_memory += n


def literal_tally(parts: tuple[Part, ...]) -> LiteralTally:
    return LiteralCounter().tally(parts)


def literal_role(parts: tuple[Part, ...]) -> tuple[str, int]:
    """(role, message index) of ``literal_tally``."""
    t = literal_tally(parts)
    return t.role, t.index


# -- internal IMAP URLs (RFC 5092) ------------------------------------------------------------

class URLError(ValueError):
    """A URL CATENATE cannot use: answered NO [BADURL url] (RFC 4469 §5)."""


@attrs.frozen
class MessageURL:
    """What an internal IMAP URL names (RFC 5092 §6, ``imessagepart``)."""

    mailbox: str | None  # None: the selected mailbox (a relative URL, RFC 5092 §7.1)
    uidvalidity: int | None
    uid: int
    section: Section | None  # None: the whole message
    partial: tuple[int, int | None] | None  # RFC 5092 ;PARTIAL=offset[.length]


_URL_RE = re.compile(
    r"^(?:imap://(?P<user>[^@/;]*)(?:;AUTH=[^@/]*)?@(?P<host>[^/]*))?"
    r"(?:/(?P<box>[^;?]*?)(?:;UIDVALIDITY=(?P<uidvalidity>[1-9][0-9]{0,9}))?)?"
    r"/?;UID=(?P<uid>[1-9][0-9]{0,9})"
    r"(?:/;SECTION=(?P<section>[^/]+))?"
    r"(?:/;PARTIAL=(?P<offset>[0-9]{1,10})(?:\.(?P<length>[1-9][0-9]{0,9}))?)?$",
    re.IGNORECASE)
_PART_RE = re.compile(r"^(?:[1-9][0-9]{0,5}(?:\.[1-9][0-9]{0,5})*)?$")


def parse_url(url: str, user: str) -> MessageURL:
    """An IMAP URL naming a message or part in ``user``'s account (RFC 5092 §6),
    absolute (``imap://user@host/box;UIDVALIDITY=n/;UID=n``) or relative to the server
    (``/box;...``) or to the selected mailbox (``;UID=n``).  URLAUTH (RFC 4467) is not
    offered: a URL with ``;URLAUTH=`` or ``;EXPIRE=`` or for another user is refused."""
    upper = url.upper()
    if ";URLAUTH=" in upper or ";EXPIRE=" in upper or "?" in url:
        raise URLError("URLAUTH and search URLs are not supported")
    m = _URL_RE.match(url)
    if m is None:
        raise URLError("not an IMAP message URL")
    if m.group("user") is not None:
        if unquote_to_bytes(m.group("user")).decode("utf-8", "replace") != user:
            raise URLError("URL of another account")
    box = m.group("box")
    mailbox = None
    if box is not None:
        if not box:
            raise URLError("URL without a mailbox")
        try:
            mailbox = unquote_to_bytes(box).decode("utf-8")
        except UnicodeDecodeError as e:
            raise URLError("mailbox name is not UTF-8") from e
    elif m.group("user") is not None:
        raise URLError("URL without a mailbox")
    section = None
    if m.group("section"):
        section = _section(unquote_to_bytes(m.group("section")).decode("ascii", "replace"))
    partial = None
    if m.group("offset") is not None:
        length = m.group("length")
        partial = (int(m.group("offset")), int(length) if length else None)
    uidvalidity = m.group("uidvalidity")
    return MessageURL(mailbox, int(uidvalidity) if uidvalidity else None, int(m.group("uid")),
                      section, partial)


def _section(spec: str) -> Section:
    """RFC 5092 §6 ``isection`` = RFC 3501 section-text (HEADER.FIELDS not included:
    its parentheses are not URL characters)."""
    spec = spec.upper()
    text = ""
    for name in ("HEADER", "TEXT", "MIME"):
        if spec == name or spec.endswith("." + name):
            text = name
            spec = spec[:-len(name)].rstrip(".")
            break
    if not _PART_RE.match(spec):
        raise URLError(f"bad section {spec!r}")
    part = tuple(int(p) for p in spec.split(".")) if spec else ()
    if text == "MIME" and not part:
        raise URLError("MIME needs a part number")
    return Section(part, text)
