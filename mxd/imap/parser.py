"""IMAP command grammar (RFC 3501 §9, RFC 9051 §9, with RFC 4731, 4959, 5161, 5258, 5819,
6154, 7162, 7888 extensions).

Pure: turns a framed command (``mxd.imap.framer.RawCommand``) into a typed ``Command``.
It raises only ``ParseError``, whatever the input (a Hypothesis test holds it to that).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from typing import Any

from mxd.imap import appendsyntax
from mxd.imap.errors import ParseError
from mxd.imap.framer import BlobLiteral, Literal, Part, RawCommand
from mxd.imap.metadata import parse_getmetadata, parse_list_metadata, parse_setmetadata
from mxd.imap.notify import parse_notify
from mxd.imap.searchres import uses_saved as _uses_saved
from mxd.imap.sort import SORT_KEYS
from mxd.imap.thread import ALGORITHMS
from mxd.imap.values import (
    AuthenticateArgs,
    CancelUpdateArgs,
    Command,
    CopyArgs,
    CreateArgs,
    EnableArgs,
    ESearchArgs,
    FetchArgs,
    FetchAtt,
    IdArgs,
    ListArgs,
    LoginArgs,
    MailboxArgs,
    RenameArgs,
    SearchArgs,
    SearchKey,
    Section,
    SelectArgs,
    SeqSet,
    SeqSetArgs,
    SortArgs,
    StatusArgs,
    StoreArgs,
    ThreadArgs,
)

# RFC 3501 §9: atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials
# / resp-specials.
_ATOM_SPECIALS = frozenset(b'(){ %*"\\]') | frozenset(range(0, 32)) | {127}
_ASTRING_SPECIALS = _ATOM_SPECIALS - {ord("]")}
_LIST_SPECIALS = _ATOM_SPECIALS - {ord("%"), ord("*"), ord("]")}
_TAG_SPECIALS = _ASTRING_SPECIALS | {ord("+")}
_MONTHS = {m: i + 1 for i, m in enumerate(
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"])}
_LIT = 0  # placeholder byte for a literal in the flattened line (NUL is never valid text)
MAX_NUMBER = 2**63 - 1
_SEQSET_RUN = re.compile(rb"[0-9*:,]+")
_DATE_RE = re.compile(r"^([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})$")
_DATETIME_RE = re.compile(
    r"^([ 0-9]?[0-9])-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})$")


# -- the reader ---------------------------------------------------------------------------

class Reader:
    """A cursor over one command: line text with literals in between."""

    def __init__(self, parts: tuple[Part, ...], tag: str | None = None) -> None:
        pieces = []
        self._literals: list[Literal | BlobLiteral] = []
        for p in parts:
            if isinstance(p, bytes):
                if b"\0" in p:
                    raise ParseError("NUL in command line", tag)
                pieces.append(p)
            else:
                pieces.append(bytes([_LIT]))
                self._literals.append(p)
        self.text = b"".join(pieces)
        self.pos = 0
        self._lit_index = 0
        self.tag = tag

    def error(self, what: str) -> ParseError:
        near = self.text[self.pos:self.pos + 20].replace(b"\0", b"{literal}")
        return ParseError(f"{what} at position {self.pos} near {near.decode('ascii', 'replace')!r}",
                          self.tag)

    def peek(self) -> int | None:
        return self.text[self.pos] if self.pos < len(self.text) else None

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def end(self) -> None:
        if not self.at_end():
            raise self.error("unexpected extra arguments")

    def take(self, s: bytes) -> bool:
        if self.text[self.pos:self.pos + len(s)].upper() == s:
            self.pos += len(s)
            return True
        return False

    def expect(self, s: bytes) -> None:
        if not self.take(s):
            raise self.error(f"expected {s.decode()!r}")

    def sp(self) -> None:
        self.expect(b" ")

    def _run(self, specials: frozenset[int], allow8: bool = False) -> bytes:
        start = self.pos
        t = self.text
        n = len(t)
        while self.pos < n and t[self.pos] not in specials and (allow8 or t[self.pos] < 128):
            self.pos += 1
        return t[start:self.pos]

    def atom(self) -> str:
        a = self._run(_ATOM_SPECIALS)
        if not a:
            raise self.error("expected an atom")
        return a.decode("ascii")

    def keyword(self) -> str:
        return self.atom().upper()

    def _literal(self) -> Literal | BlobLiteral:
        if self._lit_index >= len(self._literals):
            raise self.error("literal missing")
        lit = self._literals[self._lit_index]
        self._lit_index += 1
        self.pos += 1
        return lit

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        t = self.text
        while True:
            if self.pos >= len(t):
                raise self.error("unterminated quoted string")
            c = t[self.pos]
            self.pos += 1
            if c == 0x22:
                return bytes(out)
            if c == 0x5C:
                if self.pos >= len(t) or t[self.pos] not in (0x22, 0x5C):
                    raise self.error("bad escape in quoted string")
                c = t[self.pos]
                self.pos += 1
            elif c in (0x0A, 0x0D, _LIT):
                raise self.error("bad character in quoted string")
            out.append(c)

    def string_or_literal(self) -> Literal | BlobLiteral | bytes:
        c = self.peek()
        if c == 0x22:
            return self.quoted()
        if c == _LIT:
            return self._literal()
        raise self.error("expected a string")

    def string(self) -> bytes:
        v = self.string_or_literal()
        if isinstance(v, BlobLiteral):
            raise self.error("literal too large here")
        return v.data if isinstance(v, Literal) else v

    def astring_bytes(self) -> bytes:
        c = self.peek()
        if c in (0x22, _LIT):
            return self.string()
        # 8-bit octets are not ATOM-CHARs, but clients send raw UTF-8 (RFC 6855 spirit).
        a = self._run(_ASTRING_SPECIALS, allow8=True)
        if not a:
            raise self.error("expected an atom or string")
        return a

    def astring(self) -> str:
        return _utf8(self.astring_bytes(), self)

    def nstring(self) -> str | None:
        if self.take(b"NIL"):
            return None
        return _utf8(self.string(), self)

    def list_mailbox(self) -> str:
        c = self.peek()
        if c in (0x22, _LIT):
            return _utf8(self.string(), self)
        a = self._run(_LIST_SPECIALS, allow8=True)
        if not a:
            raise self.error("expected a mailbox pattern")
        return _utf8(a, self)

    def number(self, nz: bool = False) -> int:
        start = self.pos
        while self.pos < len(self.text) and 0x30 <= self.text[self.pos] <= 0x39:
            self.pos += 1
        digits = self.text[start:self.pos]
        if not digits or len(digits) > 19:
            raise self.error("expected a number")
        v = int(digits)
        if v > MAX_NUMBER or (nz and v == 0):
            raise self.error("number out of range")
        return v

    def seqset(self) -> SeqSet:
        if self.take(b"$"):
            return SeqSet(saved=True)
        # One regex pass over the whole set, then split: a 64 KiB line of "1:*," ranges
        # parses in milliseconds (RFC 9051 §9 sequence-set, seq-range, seq-number).
        m = _SEQSET_RUN.match(self.text, self.pos)
        if m is None:
            raise self.error("expected a sequence set")
        ranges = []
        for item in m.group().split(b","):
            bounds = item.split(b":")
            if len(bounds) > 2:
                raise self.error("bad sequence range")
            values = [self._seq_value(v) for v in bounds]
            ranges.append((values[0], values[-1]))
        self.pos = m.end()
        return SeqSet(tuple(ranges))

    def _seq_value(self, v: bytes) -> int:
        if v == b"*":
            return 0
        if not v.isdigit() or len(v) > 19:
            raise self.error("expected a sequence number")
        n = int(v)
        if n == 0 or n > 0xFFFFFFFF:
            raise self.error("sequence number out of range")
        return n

    def flag(self) -> str:
        if self.take(b"\\"):
            if self.take(b"*"):
                return "\\*"
            return "\\" + self.atom()
        return self.atom()

    def flag_list(self) -> tuple[str, ...]:
        self.expect(b"(")
        flags: list[str] = []
        if self.take(b")"):
            return ()
        while True:
            flags.append(self.flag())
            if self.take(b")"):
                return tuple(flags)
            self.sp()

    def paren_list(self, item: Callable[[], Any]) -> list[Any]:
        self.expect(b"(")
        out: list[Any] = []
        if self.take(b")"):
            return out
        while True:
            out.append(item())
            if self.take(b")"):
                return out
            self.sp()

    def date(self) -> date:
        if self.peek() == 0x22:
            s = self.quoted().decode("ascii", "replace")
        else:
            s = self._run(_ATOM_SPECIALS).decode("ascii")
        m = _DATE_RE.match(s)
        if not m or m.group(2).upper() not in _MONTHS:
            raise self.error("expected a date like 1-Feb-2024")
        try:
            return date(int(m.group(3)), _MONTHS[m.group(2).upper()], int(m.group(1)))
        except ValueError as e:
            raise self.error(f"invalid date: {e}") from e

    def date_time(self) -> datetime:
        s = self.quoted().decode("ascii", "replace")
        m = _DATETIME_RE.match(s)
        if not m or m.group(2).upper() not in _MONTHS:
            raise self.error("expected a date-time like \"01-Feb-2024 10:00:00 +0000\"")
        try:
            off = timedelta(hours=int(m.group(8)), minutes=int(m.group(9)))
            if m.group(7) == "-":
                off = -off
            return datetime(int(m.group(3)), _MONTHS[m.group(2).upper()], int(m.group(1).strip()),
                            int(m.group(4)), int(m.group(5)), int(m.group(6)),
                            tzinfo=timezone(off))
        except ValueError as e:
            raise self.error(f"invalid date-time: {e}") from e


def _utf8(b: bytes, r: Reader) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError as e:
        raise r.error("invalid UTF-8") from e


# -- commands -------------------------------------------------------------------------------

def _no_args(r: Reader) -> None:
    return None


def _login(r: Reader) -> LoginArgs:
    r.sp()
    user = r.astring()
    r.sp()
    pw = r.astring()
    return LoginArgs(user, pw)


def _authenticate(r: Reader) -> AuthenticateArgs:
    import base64
    import binascii

    r.sp()
    mech = r.keyword()
    initial: bytes | None = None
    if r.take(b" "):
        # RFC 4959 §3: initial response is base64, "=" for empty.
        raw = r._run(frozenset(b" ") | frozenset(range(0, 33)))
        if raw == b"=":
            initial = b""
        else:
            try:
                initial = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError) as e:
                raise r.error("invalid base64 in initial response") from e
            if not raw:
                raise r.error("empty initial response (use =)")
    return AuthenticateArgs(mech, initial)


def _mailbox(r: Reader) -> MailboxArgs:
    r.sp()
    return MailboxArgs(r.astring())


def _create(r: Reader) -> CreateArgs:
    r.sp()
    name = r.astring()
    uses: tuple[str, ...] = ()
    if r.take(b" "):
        # RFC 6154 §3: CREATE name (USE (\Sent))
        r.expect(b"(")
        r.expect(b"USE")
        r.sp()
        uses = r.flag_list()
        r.expect(b")")
    return CreateArgs(name, uses)


def _rename(r: Reader) -> RenameArgs:
    r.sp()
    old = r.astring()
    r.sp()
    return RenameArgs(old, r.astring())


def _select(r: Reader) -> SelectArgs:
    r.sp()
    name = r.astring()
    condstore = False
    qresync: tuple[int, int, SeqSet | None] | None = None
    if r.take(b" "):
        r.expect(b"(")
        while True:
            p = r.keyword()
            if p == "CONDSTORE":
                condstore = True
            elif p == "QRESYNC":
                # RFC 7162 §3.2.5: (uidvalidity modseq [known-uids [seq-match-data]])
                r.sp()
                r.expect(b"(")
                uidvalidity = r.number(nz=True)
                r.sp()
                modseq = r.number(nz=True)
                known: SeqSet | None = None
                if r.take(b" "):
                    if r.peek() != ord("("):
                        known = r.seqset()
                        r.take(b" ")
                    if r.peek() == ord("("):
                        r.expect(b"(")
                        r.seqset()
                        r.sp()
                        r.seqset()
                        r.expect(b")")
                r.expect(b")")
                qresync = (uidvalidity, modseq, known)
            else:
                raise r.error(f"unknown SELECT parameter {p}")
            if r.take(b")"):
                break
            r.sp()
    return SelectArgs(name, condstore, qresync)


_LIST_SELECT = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
_LIST_RETURN = frozenset({"SUBSCRIBED", "CHILDREN", "STATUS", "SPECIAL-USE", "METADATA"})


def _list(r: Reader) -> ListArgs:
    r.sp()
    select: set[str] = set()
    extended = False
    if r.peek() == ord("("):
        extended = True
        select = set(r.paren_list(r.keyword))
        r.sp()
    ref = r.astring()
    r.sp()
    if r.peek() == ord("("):
        extended = True
        patterns = tuple(r.paren_list(r.list_mailbox))
    else:
        patterns = (r.list_mailbox(),)
    ret: set[str] = set()
    status_items: tuple[str, ...] = ()
    metadata_entries: tuple[str, ...] = ()
    if r.take(b" "):
        extended = True
        r.expect(b"RETURN")
        r.sp()
        r.expect(b"(")
        if not r.take(b")"):
            while True:
                opt = r.keyword()
                ret.add(opt)
                if opt == "STATUS":
                    # RFC 5819 §2
                    r.sp()
                    status_items = tuple(r.paren_list(r.keyword))
                elif opt == "METADATA":
                    r.sp()
                    metadata_entries = parse_list_metadata(r)  # RFC 9590 §5
                if r.take(b")"):
                    break
                r.sp()
    # RFC 5258 §3: options the server does not know, and RECURSIVEMATCH alone (or with
    # only REMOTE), are BAD.
    unknown = (select - _LIST_SELECT) | (ret - _LIST_RETURN)
    if unknown:
        raise r.error(f"unknown LIST option {sorted(unknown)[0]}")
    if "RECURSIVEMATCH" in select and not select - {"RECURSIVEMATCH", "REMOTE"}:
        raise r.error("RECURSIVEMATCH needs another selection option")
    return ListArgs(ref, patterns, frozenset(select), frozenset(ret), status_items, extended,
                    metadata_entries=metadata_entries)


def _lsub(r: Reader) -> ListArgs:
    r.sp()
    ref = r.astring()
    r.sp()
    return ListArgs(ref, (r.list_mailbox(),), lsub=True)


def _status(r: Reader) -> StatusArgs:
    r.sp()
    name = r.astring()
    r.sp()
    items = tuple(r.paren_list(r.keyword))
    if not items:
        raise r.error("STATUS needs at least one item")
    return StatusArgs(name, items)


_FETCH_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_SIMPLE_ATTS = frozenset({"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER",
                          "RFC822.SIZE", "RFC822.TEXT", "BODY", "BODYSTRUCTURE", "UID", "MODSEQ",
                          "BINARY.SIZE", "SAVEDATE"})


def _section(r: Reader, binary: bool = False) -> Section:
    r.expect(b"[")
    parts: list[int] = []
    text = ""
    fields: tuple[str, ...] = ()
    if r.take(b"]"):
        return Section()
    while r.peek() is not None and 0x30 <= (r.peek() or 0) <= 0x39:
        parts.append(r.number(nz=True))
        if not r.take(b"."):
            break
    if r.peek() != ord("]"):
        if binary:
            raise r.error("BINARY takes only part numbers")
        kw = r._run(frozenset(b" ]") | frozenset(range(0, 32))).decode("ascii", "replace").upper()
        if kw in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            r.sp()
            fields = tuple(f.upper() for f in r.paren_list(r.astring))
            if not fields:
                raise r.error("empty header list")
        elif kw == "MIME" and not parts:
            raise r.error("MIME needs a part number")
        elif kw not in ("HEADER", "TEXT", "MIME"):
            raise r.error("unknown section")
        text = kw
    r.expect(b"]")
    return Section(tuple(parts), text, fields)


def _partial(r: Reader) -> tuple[int, int] | None:
    if not r.take(b"<"):
        return None
    off = r.number()
    r.expect(b".")
    n = r.number(nz=True)
    r.expect(b">")
    return (off, n)


def _fetch_att(r: Reader) -> FetchAtt:
    name = r._run(_ATOM_SPECIALS | {ord("["), ord("<")}).decode("ascii").upper()
    if not name:
        raise r.error("expected a fetch item")
    if name in ("BODY", "BODY.PEEK") and r.peek() == ord("["):
        sec = _section(r)
        return FetchAtt("BODY", sec, _partial(r), peek=name == "BODY.PEEK")
    if name in ("BINARY", "BINARY.PEEK", "BINARY.SIZE"):
        sec = _section(r, binary=True)
        if name == "BINARY.SIZE":
            return FetchAtt(name, sec)
        return FetchAtt("BINARY", sec, _partial(r), peek=name == "BINARY.PEEK")
    if name == "PREVIEW":
        # RFC 8970 §6: "PREVIEW" [SP "(" preview-mod *(SP preview-mod) ")"]
        lazy = False
        if r.take(b" ("):
            while True:
                mod = r.keyword()
                if mod != "LAZY":
                    raise r.error(f"unknown PREVIEW modifier {mod}")
                lazy = True
                if r.take(b")"):
                    break
                r.sp()
        return FetchAtt(name, lazy=lazy)
    if name not in _SIMPLE_ATTS or name == "BINARY.SIZE":
        raise r.error(f"unknown fetch item {name}")
    return FetchAtt(name)


def _fetch(r: Reader) -> FetchArgs:
    r.sp()
    seqset = r.seqset()
    r.sp()
    atts: list[FetchAtt]
    if r.peek() == ord("("):
        atts = r.paren_list(lambda: _fetch_att(r))
        if not atts:
            raise r.error("empty fetch list")
    else:
        save = r.pos
        word = r._run(_ATOM_SPECIALS | {ord("["), ord("<")}).decode("ascii").upper()
        if word in _FETCH_MACROS:
            atts = [FetchAtt(n) for n in _FETCH_MACROS[word]]
        else:
            r.pos = save
            atts = [_fetch_att(r)]
    changed: int | None = None
    vanished = False
    if r.take(b" "):
        # RFC 7162 §3.1.4, §3.2.6: (CHANGEDSINCE n [VANISHED])
        r.expect(b"(")
        while True:
            m = r.keyword()
            if m == "CHANGEDSINCE":
                r.sp()
                changed = r.number()
            elif m == "VANISHED":
                vanished = True
            else:
                raise r.error(f"unknown FETCH modifier {m}")
            if r.take(b")"):
                break
            r.sp()
    return FetchArgs(seqset, tuple(atts), changed, vanished)


def _store(r: Reader) -> StoreArgs:
    r.sp()
    seqset = r.seqset()
    r.sp()
    unchanged: int | None = None
    if r.take(b"("):
        r.expect(b"UNCHANGEDSINCE")
        r.sp()
        unchanged = r.number()
        r.expect(b")")
        r.sp()
    mode = "set"
    if r.take(b"+"):
        mode = "add"
    elif r.take(b"-"):
        mode = "remove"
    item = r.keyword()
    if item not in ("FLAGS", "FLAGS.SILENT"):
        raise r.error("expected FLAGS or FLAGS.SILENT")
    r.sp()
    if r.peek() == ord("("):
        flags = r.flag_list()
    else:
        fl = [r.flag()]
        while r.take(b" "):
            fl.append(r.flag())
        flags = tuple(fl)
    return StoreArgs(seqset, mode, item.endswith(".SILENT"), flags, unchanged)


_FLAG_KEYS = {"ANSWERED", "DELETED", "DRAFT", "FLAGGED", "SEEN", "UNANSWERED", "UNDELETED",
              "UNDRAFT", "UNFLAGGED", "UNSEEN", "NEW", "OLD", "RECENT", "ALL",
              "SAVEDATESUPPORTED"}  # RFC 8514 §4.3
_STRING_KEYS = {"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"}
_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE",
              "SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"}  # RFC 8514 §4.3
MAX_SEARCH_DEPTH = 40


def _search_key(r: Reader, depth: int = 0) -> SearchKey:
    if depth > MAX_SEARCH_DEPTH:
        raise r.error("search program nested too deeply")
    c = r.peek()
    if c == ord("("):
        keys = r.paren_list(lambda: _search_key(r, depth + 1))
        if not keys:
            raise r.error("empty search list")
        return SearchKey("AND", tuple(keys))
    if c is not None and (0x30 <= c <= 0x39 or c in (ord("*"), ord("$"))):
        return SearchKey("SEQ", (r.seqset(),))
    k = r.keyword()
    if k in _FLAG_KEYS:
        return SearchKey(k)
    if k in _STRING_KEYS:
        r.sp()
        return SearchKey(k, (r.astring(),))
    if k in _DATE_KEYS:
        r.sp()
        return SearchKey(k, (r.date(),))
    if k in ("KEYWORD", "UNKEYWORD"):
        r.sp()
        return SearchKey(k, (r.atom(),))
    if k == "HEADER":
        r.sp()
        field = r.astring()
        r.sp()
        return SearchKey(k, (field.upper(), r.astring()))
    if k in ("LARGER", "SMALLER"):
        r.sp()
        return SearchKey(k, (r.number(),))
    if k in ("OLDER", "YOUNGER"):  # RFC 5032
        r.sp()
        return SearchKey(k, (r.number(nz=True),))
    if k == "UID":
        r.sp()
        return SearchKey(k, (r.seqset(),))
    if k == "NOT":
        r.sp()
        return SearchKey(k, (_search_key(r, depth + 1),))
    if k == "OR":
        r.sp()
        a = _search_key(r, depth + 1)
        r.sp()
        return SearchKey(k, (a, _search_key(r, depth + 1)))
    if k == "MODSEQ":
        # RFC 7162 §3.1.5: MODSEQ [entry-name entry-type-req] mod-sequence-valzer
        r.sp()
        if r.peek() == ord('"'):
            r.quoted()
            r.sp()
            r.keyword()
            r.sp()
        return SearchKey(k, (r.number(),))
    raise r.error(f"unknown search key {k}")


_RETURN_OPTS = ("MIN", "MAX", "ALL", "COUNT", "SAVE", "CONTEXT", "UPDATE", "PARTIAL")
MAX_PARTIAL = 0xFFFFFFFF


def _partial_range(r: Reader) -> tuple[int, int]:
    # RFC 9394 §3.1 (extending RFC 5267 §4.4): partial-range = partial-range-first /
    # partial-range-last; first = nz-number ":" nz-number, last = "-" nz-number ":" "-"
    # nz-number.  Either end may come first ("100:1" is "1:100").
    neg = r.take(b"-")
    a = r.number(nz=True)
    r.expect(b":")
    if neg:
        r.expect(b"-")
    elif r.peek() == ord("-"):
        raise r.error("a PARTIAL range has both ends on one side")
    b = r.number(nz=True)
    if a > MAX_PARTIAL or b > MAX_PARTIAL:
        raise r.error("PARTIAL range out of range")
    lo, hi = min(a, b), max(a, b)
    return (-hi, -lo) if neg else (lo, hi)


def _return_opts(r: Reader) -> tuple[tuple[str, ...], tuple[int, int] | None]:
    """``RETURN (...)`` after "RETURN " (RFC 4731 §3, RFC 5182, RFC 5267 §4, RFC 9394)."""
    opts: list[str] = []
    partial: tuple[int, int] | None = None

    def opt() -> str:
        nonlocal partial
        o = r.keyword()
        if o not in _RETURN_OPTS:
            raise r.error(f"unknown RETURN option {o[:40]}")
        if o == "PARTIAL":
            r.sp()
            partial = _partial_range(r)
        return o

    opts = r.paren_list(opt)
    if "PARTIAL" in opts and "ALL" in opts:
        # RFC 9394 §3.1: PARTIAL and ALL cannot be asked for together.
        raise r.error("RETURN PARTIAL and ALL are mutually exclusive")
    if len(set(opts)) != len(opts):
        raise r.error("a RETURN option is repeated")
    return tuple(opts), partial


def _search(r: Reader) -> SearchArgs:
    r.sp()
    ret: tuple[str, ...] | None = None
    partial: tuple[int, int] | None = None
    charset: str | None = None
    if r.take(b"RETURN "):
        ret, partial = _return_opts(r)
        r.sp()
    if r.take(b"CHARSET "):
        charset = r.astring().upper()
        r.sp()
    keys = [_search_key(r)]
    while r.take(b" "):
        keys.append(_search_key(r))
    key = keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))
    return SearchArgs(key, charset, ret, partial)


# RFC 7377 §4 (the filter-mailboxes of RFC 5465 §8): which take one-or-more-mailbox.
_SOURCES = {"SELECTED": False, "SELECTED-DELAYED": False, "INBOXES": False, "PERSONAL": False,
            "SUBSCRIBED": False, "SUBTREE": True, "SUBTREE-ONE": True, "MAILBOXES": True}
MAX_ESEARCH_MAILBOXES = 1000


def _esearch(r: Reader) -> ESearchArgs:
    # RFC 7377 §4: esearch = "ESEARCH" [SP esearch-source-opts] [SP search-return-opts]
    # SP search-program; esearch-source-opts = "IN" SP "(" source-mbox [SP "("
    # scope-options ")"] ")"; source-mbox = filter-mailboxes *(SP filter-mailboxes).
    r.sp()
    sources: list[tuple[str, tuple[str, ...]]] = []
    named = 0
    if r.take(b"IN ("):
        while True:
            f = r.keyword()
            if f not in _SOURCES:
                raise r.error(f"unknown mailbox filter {f[:40]}")
            names: tuple[str, ...] = ()
            if _SOURCES[f]:
                r.sp()
                names = tuple(r.paren_list(r.astring)) if r.peek() == ord("(") else (r.astring(),)
                if not names:
                    raise r.error("a mailbox filter needs a mailbox")
                named += len(names)
                if named > MAX_ESEARCH_MAILBOXES:
                    raise r.error("too many mailboxes")
            sources.append((f, names))
            if r.take(b")"):
                break
            r.sp()
            if r.peek() == ord("("):
                # RFC 7377 §2: scope options; none is defined, so any is unknown.
                raise r.error("unknown scope option")
        r.sp()
    base = _search(_back_one(r))
    if any(f not in ("SELECTED", "SELECTED-DELAYED") for f, _ in sources) and \
            _uses_saved(base.key):
        # RFC 7377 §2.2: "$" is the selected mailbox's result, meaningless elsewhere.
        raise r.error("$ can only be used in a search of the selected mailbox")
    return ESearchArgs(base.key, base.charset, base.return_opts, base.partial, tuple(sources))


def _back_one(r: Reader) -> Reader:
    """``r`` one position back, so that ``_search`` may read its leading space again."""
    r.pos -= 1
    return r


def _cancelupdate(r: Reader) -> CancelUpdateArgs:
    # RFC 5267 §4.3: "CANCELUPDATE" 1*(SP tag-string); tag-string = string.
    tags = []
    while r.take(b" "):
        tags.append(_utf8(r.string(), r))
    if not tags:
        raise r.error("CANCELUPDATE needs a tag")
    return CancelUpdateArgs(tuple(tags))


def _sort(r: Reader) -> SortArgs:
    # RFC 5256 §5: "SORT" SP sort-criteria SP search-criteria; sort-criteria =
    # "(" sort-criterion *(SP sort-criterion) ")"; sort-criterion = ["REVERSE" SP] sort-key;
    # search-criteria = charset 1*(SP search-key) (the charset is not optional here).
    r.sp()
    ret: tuple[str, ...] | None = None
    partial: tuple[int, int] | None = None
    if r.take(b"RETURN "):
        # RFC 5267 §3: sort-return-opts = "RETURN" SP "(" [search-return-opts] ")"
        ret, partial = _return_opts(r)
        r.sp()

    def criterion() -> tuple[str, bool]:
        k = r.keyword()
        rev = k == "REVERSE"
        if rev:
            r.sp()
            k = r.keyword()
        if k not in SORT_KEYS:
            raise r.error(f"unknown sort key {k[:40]}")
        return (k, rev)

    criteria = tuple(r.paren_list(criterion))
    if not criteria:
        raise r.error("empty sort criteria")
    r.sp()
    charset = r.astring().upper()
    return SortArgs(criteria, charset, _search_criteria(r), ret, partial)


def _search_criteria(r: Reader) -> SearchKey:
    # RFC 5256 §5: search-criteria = charset 1*(SP search-key), after the charset.
    keys = []
    while r.take(b" "):
        keys.append(_search_key(r))
    if not keys:
        raise r.error("a search key is needed")
    return keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))


def _thread(r: Reader) -> ThreadArgs:
    # RFC 5256 §5: "THREAD" SP thread-alg SP search-criteria
    r.sp()
    alg = r.atom().upper()
    if alg not in ALGORITHMS:
        raise r.error(f"unknown threading algorithm {alg[:40]}")
    r.sp()
    charset = r.astring().upper()
    return ThreadArgs(alg, charset, _search_criteria(r))


def _copy(r: Reader) -> CopyArgs:
    r.sp()
    s = r.seqset()
    r.sp()
    return CopyArgs(s, r.astring())


def _getquota(r: Reader) -> MailboxArgs:
    r.sp()
    return MailboxArgs(r.astring())  # the quota root name


def _setquota(r: Reader) -> MailboxArgs:
    # RFC 9208 §4.3: SETQUOTA root (resource limit ...); mxd refuses it, but parses it.
    r.sp()
    root = r.astring()
    r.sp()
    def resource() -> int:
        r.atom()
        r.sp()
        return r.number()

    r.paren_list(resource)
    return MailboxArgs(root)


def _uid_expunge(r: Reader) -> SeqSetArgs:
    r.sp()
    return SeqSetArgs(r.seqset())


def _compress(r: Reader) -> str:
    # RFC 4978 §5: compress = "COMPRESS" SP algorithm; algorithm = "DEFLATE" (an atom).
    r.sp()
    return r.atom()


def _enable(r: Reader) -> EnableArgs:
    caps = []
    while r.take(b" "):
        caps.append(r.keyword())
    if not caps:
        raise r.error("ENABLE needs a capability")
    return EnableArgs(tuple(caps))


def _id(r: Reader) -> IdArgs:
    r.sp()
    if r.take(b"NIL"):
        return IdArgs(None)

    def pair() -> tuple[str, str | None]:
        k = _utf8(r.string(), r)
        r.sp()
        return (k, r.nstring())

    items = r.paren_list(pair)
    return IdArgs(tuple(items))


Parser = Callable[[Reader], Any]

COMMANDS: dict[str, Parser] = {
    "CAPABILITY": _no_args, "NOOP": _no_args, "LOGOUT": _no_args, "ID": _id,
    "STARTTLS": _no_args, "AUTHENTICATE": _authenticate, "LOGIN": _login,
    "ENABLE": _enable, "SELECT": _select, "EXAMINE": _select, "CREATE": _create,
    "DELETE": _mailbox, "RENAME": _rename, "SUBSCRIBE": _mailbox, "UNSUBSCRIBE": _mailbox,
    "LIST": _list, "LSUB": _lsub, "NAMESPACE": _no_args, "STATUS": _status,
    "APPEND": appendsyntax.parse_append,  # RFC 3502 MULTIAPPEND, RFC 4469 CATENATE
    "IDLE": _no_args, "CHECK": _no_args, "CLOSE": _no_args, "UNSELECT": _no_args,
    "EXPUNGE": _no_args, "SEARCH": _search, "FETCH": _fetch, "STORE": _store, "COPY": _copy,
    "MOVE": _copy,
    "UID FETCH": _fetch, "UID STORE": _store, "UID SEARCH": _search, "UID COPY": _copy,
    "UID MOVE": _copy, "UID EXPUNGE": _uid_expunge, "SORT": _sort, "UID SORT": _sort,
    "THREAD": _thread, "UID THREAD": _thread,
    "ESEARCH": _esearch, "CANCELUPDATE": _cancelupdate,  # RFC 7377, RFC 5267
    "COMPRESS": _compress,  # RFC 4978
    "REPLACE": appendsyntax.parse_replace, "UID REPLACE": appendsyntax.parse_replace,  # RFC 8508
    "GETQUOTAROOT": _mailbox, "GETQUOTA": _getquota, "SETQUOTA": _setquota,
    "GETMETADATA": parse_getmetadata, "SETMETADATA": parse_setmetadata,  # RFC 5464
    "NOTIFY": lambda r: parse_notify(r, _fetch_att),  # RFC 5465
}


def parse_command(raw: RawCommand) -> Command:
    """Parse one framed command; raise ParseError (with ``tag`` when known)."""
    # A NUL anywhere in the line is refused with the command's tag when the tag itself is
    # valid, so the client gets its tagged BAD instead of waiting forever (RFC 3501 §7.1.3).
    first = raw.first_line
    sp = first.find(b" ")
    head = first[:sp] if sp > 0 else b""
    known = (head.decode("ascii") if head and all(c < 128 and c not in _TAG_SPECIALS for c in head)
             else None)
    r = Reader(raw.parts, known)
    t = r._run(_TAG_SPECIALS).decode("ascii")
    if not t or r.peek() not in (ord(" "), None):
        raise ParseError("missing or invalid tag", None)
    r.tag = t
    if r.at_end():
        raise ParseError("missing command", t)
    r.sp()
    name = r.atom().upper()
    if name == "UID":
        r.sp()
        name = "UID " + r.atom().upper()
    parse = COMMANDS.get(name)
    if parse is None:
        raise ParseError(f"unknown command {name[:40]}", t)
    args = parse(r)
    r.end()
    return Command(t, name, args)


def parse_bytes(data: bytes) -> Command:
    """Parse a whole command given as bytes with inline literals (tests and tools).

    ``data`` is the command as a client sends it, with ``{n}``/``{n+}`` CRLF literals.
    """
    from mxd.imap.errors import FramingError
    from mxd.imap.framer import Framer, NeedContinuation

    fr = Framer(lambda head, n, ns: None)
    fr.feed(data if data.endswith(b"\n") else data + b"\r\n")
    try:
        while True:
            ev = fr.next_event()
            if ev is None:
                raise ParseError("incomplete command")
            if isinstance(ev, NeedContinuation):
                continue
            return parse_command(ev)
    except FramingError as e:
        raise ParseError(str(e), e.tag) from e
