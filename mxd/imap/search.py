"""Evaluating SEARCH programs (RFC 3501 §6.4.4, RFC 9051 §6.4.4, RFC 7162 §3.1.5,
RFC 5032 WITHIN).  Pure: message headers and bodies come from loader callables, so a
search that needs only flags never opens a message file.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from datetime import UTC, date, datetime
from email.message import Message

from mxd.imap import headersearch
from mxd.imap.addresses import Address, parse_address_list
from mxd.imap.message import ParsedMessage, decode_header_value, raw_all
from mxd.imap.values import SearchKey, SeqSet
from mxd.store.interfaces import MessageInfo

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "UNANSWERED": ("\\Answered", False),
    "DELETED": ("\\Deleted", True), "UNDELETED": ("\\Deleted", False),
    "DRAFT": ("\\Draft", True), "UNDRAFT": ("\\Draft", False),
    "FLAGGED": ("\\Flagged", True), "UNFLAGGED": ("\\Flagged", False),
    "SEEN": ("\\Seen", True), "UNSEEN": ("\\Seen", False),
}
_ADDR_HEADERS = {"FROM": "From", "TO": "To", "CC": "Cc", "BCC": "Bcc", "SUBJECT": "Subject"}


def needs(key: SearchKey) -> str:
    """What a program reads: "meta" (flags, sizes, dates), "header" or "body"."""
    if key.name in ("BODY", "TEXT"):
        return "body"
    if key.name in ("HEADER", "SENTBEFORE", "SENTON", "SENTSINCE") or key.name in _ADDR_HEADERS:
        return "header"
    best = "meta"
    for a in key.args:
        if isinstance(a, SearchKey):
            n = needs(a)
            if n == "body":
                return "body"
            if n == "header":
                best = "header"
    return best


def uses_modseq(key: SearchKey) -> bool:
    return key.name == "MODSEQ" or any(isinstance(a, SearchKey) and uses_modseq(a) for a in key.args)


SAVEDATE_KEYS = frozenset({"SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"})


def uses_savedate(key: SearchKey) -> bool:
    """Does the program read save dates (RFC 8514 §4.3), which the store keeps apart?"""
    return key.name in SAVEDATE_KEYS or any(isinstance(a, SearchKey) and uses_savedate(a)
                                            for a in key.args)


class Candidate:
    """One message as the evaluator sees it.  ``stored`` is its header search text
    (mxd.imap.headersearch) when the store has it: header keys read it instead of the
    header, which is loaded only where the stored text cannot decide."""

    def __init__(self, seq: int, info: MessageInfo, max_seq: int, max_uid: int,
                 load_header: Callable[[], Message], load_message: Callable[[], ParsedMessage],
                 now: datetime, recent: bool = False, saved: datetime | None = None,
                 stored: bytes | None = None) -> None:
        self.stored = stored
        self.recent = recent
        self.saved = saved  # RFC 8514 save date, when the program needs it
        self.seq = seq
        self.info = info
        self.max_seq = max_seq
        self.max_uid = max_uid
        self._load_header = load_header
        self._load_message = load_message
        self._header: Message | None = None
        self._texts: list[str] | None = None
        self.now = now

    @property
    def header(self) -> Message:
        if self._header is None:
            self._header = self._load_header()
        return self._header

    def texts(self) -> list[str]:
        if self._texts is None:
            self._texts = [t.casefold() for t in self._load_message().text_parts()]
        return self._texts

    def sent_date(self) -> date | None:
        if self.stored is not None:
            iso = headersearch.stored_sent_date(self.stored)
            if iso == "-":
                return None
            if iso is not None:
                try:
                    return date.fromisoformat(iso)
                except ValueError:
                    pass
        values = raw_all(self.header, "Date")
        if not values:
            return None
        try:
            dt = email.utils.parsedate_to_datetime(values[0])
        except (TypeError, ValueError, IndexError):
            return None
        return dt.date() if dt is not None else None


def _header_contains(c: Candidate, name: str, needle: str) -> bool:
    if c.stored is not None:
        found = headersearch.contains(c.stored, name, needle)
        if found is not None:
            return found
    values = [v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
              for v in raw_all(c.header, name)]
    if needle == "":
        return bool(values)  # RFC 3501: HEADER field "" matches messages with that field
    n = needle.casefold()
    return any(n in decode_header_value(str(v)).casefold() for v in values)


def _address_contains(c: Candidate, name: str, needle: str) -> bool:
    """FROM/TO/CC/BCC also match the addresses as RFC 5322 reads them: comments and
    folding whitespace inside an address (``<user (c)@ (c) domain.org>``) are not part
    of it (RFC 5322 §3.4.1), so "user@domain.org" is found there too, as in Dovecot."""
    n = needle.casefold()
    for v in raw_all(c.header, name):
        text = decode_header_value(str(v))
        for entry in parse_address_list(text):
            if isinstance(entry, Address):
                spec = f"{entry.mailbox or ''}@{entry.host}" if entry.host else entry.mailbox or ""
                if n in spec.casefold() or (entry.name and n in entry.name.casefold()):
                    return True
    return False


def matches(key: SearchKey, c: Candidate, saved: SeqSet | None = None) -> bool:
    k = key.name
    a = key.args
    if k == "AND":
        return all(matches(x, c, saved) for x in a)
    if k == "ALL":
        return True
    if k == "OR":
        return matches(a[0], c, saved) or matches(a[1], c, saved)
    if k == "NOT":
        return not matches(a[0], c, saved)
    if k in _FLAG_KEYS:
        flag, want = _FLAG_KEYS[k]
        return (flag in c.info.flags) == want
    if k == "RECENT":
        return c.recent
    if k == "NEW":
        return c.recent and "\\Seen" not in c.info.flags
    if k == "OLD":
        return not c.recent
    if k == "KEYWORD":
        return any(f.casefold() == a[0].casefold() for f in c.info.flags)
    if k == "UNKEYWORD":
        return not any(f.casefold() == a[0].casefold() for f in c.info.flags)
    if k == "LARGER":
        return c.info.size > a[0]
    if k == "SMALLER":
        return c.info.size < a[0]
    if k == "SEQ":
        return _in_set(a[0], c.seq, c.max_seq, saved)
    if k == "UID":
        return _in_set(a[0], c.info.uid, c.max_uid, saved)
    if k == "MODSEQ":
        return c.info.modseq >= a[0]
    if k in ("BEFORE", "ON", "SINCE"):
        # RFC 3501: internal date, disregarding time and timezone.
        d = c.info.internal_date.date()
        return d < a[0] if k == "BEFORE" else d == a[0] if k == "ON" else d >= a[0]
    if k in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        sd = c.sent_date()
        if sd is None:
            return False
        return sd < a[0] if k == "SENTBEFORE" else sd == a[0] if k == "SENTON" else sd >= a[0]
    if k in SAVEDATE_KEYS:
        # RFC 8514 §4.3: the save date, disregarding time and timezone (as BEFORE/ON/
        # SINCE read the internal date); a message without one is judged by its
        # internal date.
        d = (c.saved or c.info.internal_date).date()
        return d < a[0] if k == "SAVEDBEFORE" else d == a[0] if k == "SAVEDON" else d >= a[0]
    if k == "SAVEDATESUPPORTED":
        return True  # RFC 8514 §4.3: every mailbox keeps save dates
    if k in ("OLDER", "YOUNGER"):
        # RFC 5032 §3: OLDER n: internal date at least n seconds ago; YOUNGER n: at
        # most n seconds ago.
        age = (c.now - c.info.internal_date.astimezone(UTC)).total_seconds()
        return age >= a[0] if k == "OLDER" else age <= a[0]
    if k in _ADDR_HEADERS:
        if c.stored is not None:
            # The field's text and (but for SUBJECT) its addresses, as stored.
            found = headersearch.contains(c.stored, _ADDR_HEADERS[k], a[0], k != "SUBJECT")
            if found is not None:
                return found
        if _header_contains(c, _ADDR_HEADERS[k], a[0]):
            return True
        return k != "SUBJECT" and _address_contains(c, _ADDR_HEADERS[k], a[0])
    if k == "HEADER":
        return _header_contains(c, a[0], a[1])
    if k == "BODY":
        n = a[0].casefold()
        return any(n in t for t in c.texts())
    if k == "TEXT":
        n = a[0].casefold()
        hdr = "\n".join(f"{name}: {decode_header_value(str(v))}" for name, v in c.header.items())
        return n in hdr.casefold() or any(n in t for t in c.texts())
    return False


def _in_set(s: SeqSet, n: int, star: int, saved: SeqSet | None) -> bool:
    if s.saved:
        return saved is not None and saved.contains(n, star)
    return s.contains(n, star) if star else False
