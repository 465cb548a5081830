"""SORT and SORT=DISPLAY (RFC 5256 §2-3, RFC 5957) with the i;unicode-casemap
collation (RFC 5051).  Pure: the adapter (``mxd.imap.sortcmd``) hands in each message's
header block and store data; nothing here does I/O.

The ordering itself runs as a generator of work units (``sort_steps``) so that the
adapter can give the reactor back between units: a mailbox of 100,000 messages is
sorted in chunks and merged, never in one long call.
"""

from __future__ import annotations

import email.utils
import heapq
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from email.message import Message
from functools import lru_cache
from typing import Any, TypeVar

import attrs

from mxd.imap.addresses import Address, parse_address_list
from mxd.imap.message import decode_header_value, raw_all, unfold

T = TypeVar("T")

# RFC 5256 §3 sort-key, plus RFC 5957 §3 DISPLAYFROM / DISPLAYTO.
SORT_KEYS = frozenset({"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO",
                       "DISPLAYFROM", "DISPLAYTO"})


# --- RFC 5051: i;unicode-casemap -------------------------------------------------------

@lru_cache(maxsize=8192)
def _canon_char(ch: str) -> str:
    """RFC 5051 §2 steps 1-3 for one character: the titlecase mapping of UnicodeData
    (simple: one character), then its decomposition mapping (canonical or
    compatibility, tag dropped), both repeated until nothing changes."""
    t = ch.title()
    if len(t) == 1:
        ch = t  # a multi-character result is a SpecialCasing full mapping: not used
    d = unicodedata.decomposition(ch)
    if not d:
        return ch
    parts = d.split()
    if parts[0].startswith("<"):
        parts = parts[1:]
    return "".join(_canon_char(chr(int(p, 16))) for p in parts)


def casemap(s: str) -> str:
    """The "titlecased canonicalized" form of ``s`` (RFC 5051 §2); two strings compare
    as these forms do (their UTF-8 octets order as their code points do)."""
    if s.isascii():
        return s.upper()  # ASCII titlecase is uppercase; nothing decomposes
    return "".join(_canon_char(c) for c in s)


# --- RFC 5256 §2.1: base subject -------------------------------------------------------

_WSP = re.compile(r"[ \t\r\n]+")
_TRAILER = re.compile(r"(?:[ \t]|\(fwd\))+\Z", re.I)  # subj-trailer = "(fwd)" / WSP
_BLOB = r"\[[^\[\]]*\][ \t]*"  # subj-blob = "[" *BLOBCHAR "]" *WSP
# subj-leader = (*subj-blob subj-refwd) / WSP; subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"
_LEADER = re.compile(rf"(?:{_BLOB})*(?:re|fwd?)[ \t]*(?:{_BLOB})?:|[ \t]+", re.I)
_BLOB_RE = re.compile(_BLOB)
_FWD_HDR = re.compile(r"\[fwd:", re.I)


def base_subject(subject: str) -> str:
    """RFC 5256 §2.1: the subject with reply/forward markers and list tags removed,
    whitespace collapsed (the caller has decoded RFC 2047 words).  Not yet casemapped."""
    return base_subject_reply(subject)[0]


def base_subject_reply(subject: str) -> tuple[str, bool]:
    """The base subject and whether it is a reply or forward: RFC 5256 §2.1 counts a
    message as one when step 2 removed "(fwd)", step 3 removed a subj-refwd or step 6
    removed a "[fwd:" wrapper (THREAD=REFERENCES uses that in its step 6)."""
    reply = False
    s = _WSP.sub(" ", subject)  # step 1
    while True:
        m = _TRAILER.search(s)  # step 2
        if m:
            reply = reply or "(" in m.group()
            s = s[:m.start()]
        while True:  # steps 3-5
            before = s
            while (m := _LEADER.match(s)) and m.end() > 0:
                reply = reply or m.group().endswith(":")
                s = s[m.end():]
            m = _BLOB_RE.match(s)
            if m and s[m.end():]:  # step 4: only if a non-empty base remains
                s = s[m.end():]
            if s == before:
                break
        # step 6: "[fwd:" ... "]" wrapping the whole subject
        if _FWD_HDR.match(s) and s.endswith("]"):
            s = s[5:-1]
            reply = True
            continue
        return s, reply


# --- per-message sort data ----------------------------------------------------------------

@attrs.frozen
class SortData:
    """What SORT reads of one message (RFC 5256 §3, RFC 5957 §3)."""

    seq: int
    uid: int
    arrival: float  # internal date, POSIX seconds
    sent: float  # RFC 5256 §2.2 sent date, UTC POSIX seconds
    size: int
    subject: str  # base subject, casemapped
    from_: str
    to: str
    cc: str
    display_from: str
    display_to: str


def header_text(raw: str) -> str:
    """A raw header value as text: 8-bit octets (kept as surrogate escapes) read as
    UTF-8 (RFC 6532), then RFC 2047 encoded words decoded (RFC 5256 §2.1 step 1)."""
    if not raw.isascii():
        raw = raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return decode_header_value(raw)


def _first_address(h: Message, name: str) -> Address | None:
    for v in raw_all(h, name):
        a = _first_in(v)
        if a is not None:
            return a
    return None


@lru_cache(maxsize=4096)
def _first_in(v: str) -> Address | None:
    # Address lists repeat across messages (the owner in To, a list in From): parsed
    # once per distinct value.  Address is immutable.
    if not v.isascii():
        v = v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    for e in parse_address_list(unfold(v)):
        if isinstance(e, Address):
            return e
    return None


def header_sort_keys(h: Message) -> tuple[str, str, str, str, str, str]:
    """The header parts of SortData: base subject (casemapped), first From, To and Cc
    mailbox, and the display names of From and To (RFC 5256 §3, RFC 5957 §3)."""
    subj = raw_all(h, "Subject")
    subject = casemap(base_subject(header_text(subj[0]))) if subj else ""
    frm, to, cc = _first_address(h, "From"), _first_address(h, "To"), _first_address(h, "Cc")
    return (subject, _mailbox_key(frm), _mailbox_key(to), _mailbox_key(cc),
            _display_key(frm), _display_key(to))


def _mailbox_key(a: Address | None) -> str:
    # RFC 5256 §3 (CC, FROM, TO): the addr-mailbox of the first address; empty if none.
    return casemap(a.mailbox or "") if a is not None else ""


def _display_key(a: Address | None) -> str:
    # RFC 5957 §3: the addr-name (RFC 2047-decoded) of the first address; when it is
    # NIL or empty, the addr-mailbox and addr-host joined with "@".
    if a is None:
        return ""
    if a.name:
        name = decode_header_value(a.name).strip()
        if name:
            return casemap(name)
    spec = a.mailbox or ""
    if a.host:
        spec += "@" + a.host
    return casemap(spec)


def sent_date(h: Message, internal: datetime) -> float:
    """RFC 5256 §2.2: the Date header in UTC; the internal date when it is missing or
    cannot be parsed."""
    d = header_date(h)
    return internal.timestamp() if d is None else d


def header_date(h: Message) -> float | None:
    """The Date header in UTC POSIX seconds, or None when missing or unparseable."""
    for v in raw_all(h, "Date"):
        try:
            dt = email.utils.parsedate_to_datetime(unfold(v).strip())
        except (TypeError, ValueError, IndexError, OverflowError):
            break
        if dt is None:
            break
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)  # "-0000": UTC with no statement of the zone
        try:
            return dt.timestamp()
        except (OverflowError, ValueError, OSError):
            break
        break
    return None


def sort_data(seq: int, uid: int, internal: datetime, size: int, h: Message) -> SortData:
    return SortData(seq, uid, internal.timestamp(), sent_date(h, internal), size,
                    *header_sort_keys(h))


# --- ordering -------------------------------------------------------------------------------

class _Rev:
    """A string ordered backwards (REVERSE on a string sort key)."""

    __slots__ = ("v",)

    def __init__(self, v: str) -> None:
        self.v = v

    def __lt__(self, other: _Rev) -> bool:
        return other.v < self.v

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Rev) and other.v == self.v

    def __hash__(self) -> int:
        return hash(self.v)


_FIELDS: dict[str, Callable[[SortData], Any]] = {
    "ARRIVAL": lambda d: d.arrival, "DATE": lambda d: d.sent, "SIZE": lambda d: d.size,
    "SUBJECT": lambda d: d.subject, "FROM": lambda d: d.from_, "TO": lambda d: d.to,
    "CC": lambda d: d.cc, "DISPLAYFROM": lambda d: d.display_from,
    "DISPLAYTO": lambda d: d.display_to,
}


def key_function(criteria: Sequence[tuple[str, bool]]) -> Callable[[SortData], tuple[Any, ...]]:
    """The sort key of a message for ``criteria`` ((key, reverse) pairs).  RFC 5256 §3:
    messages equal under every criterion are in sequence-number order, and REVERSE
    applies to the one criterion it precedes."""
    getters = [(_FIELDS[k], rev, k in ("ARRIVAL", "DATE", "SIZE")) for k, rev in criteria]

    def key(d: SortData) -> tuple[Any, ...]:
        out: list[Any] = []
        for get, rev, numeric in getters:
            v = get(d)
            out.append((-v if numeric else _Rev(v)) if rev else v)
        out.append(d.seq)
        return tuple(out)

    return key


def sort_steps(items: list[SortData], criteria: Sequence[tuple[str, bool]], result: list[SortData],
               chunk: int = 2000) -> Iterator[None]:
    """Sort ``items`` by ``criteria`` into ``result`` in units of about ``chunk``."""
    yield from chunked_sort(items, key_function(criteria), result, chunk)


def chunked_sort(items: Sequence[T], key: Callable[[T], Any], result: list[T],
                 chunk: int = 2000) -> Iterator[None]:
    """A stable sort of ``items`` into ``result``, yielding between units of about
    ``chunk`` items: chunks are sorted one by one, then merged a slice at a time."""
    # (key, position, item): positions are unique, so tuples never compare the items,
    # and equal keys keep their order (the sort is stable).
    runs: list[list[tuple[Any, int, T]]] = []
    for i in range(0, len(items), chunk):
        run = [(key(d), i + j, d) for j, d in enumerate(items[i:i + chunk])]
        run.sort()
        runs.append(run)
        yield None
    if len(runs) == 1:
        result.extend(d for _, _, d in runs[0])
        return
    n = 0
    for _, _, d in heapq.merge(*runs):
        result.append(d)
        n += 1
        if n % chunk == 0:
            yield None
