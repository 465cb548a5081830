"""Header search text: what SEARCH reads of a message's header, stored with the message
(RFC 3501 §6.4.4, RFC 9051 §6.4.4: FROM, TO, CC, BCC, SUBJECT, HEADER, SENTBEFORE,
SENTON, SENTSINCE).

RFC 9051 §6.4.4: the string of a header key matches when it is a substring of the
field's value, case-insensitively; mxd compares the value RFC 2047-decoded and both
casefolded (``mxd.imap.search``).  Decoding and casefolding every header of every
message at each SEARCH is what made a header search read and parse every message file;
this module computes, once per body (a kind of derived data, mxd.store.derived), the
very texts ``mxd.imap.search`` compares, so that a search only looks for a substring in
stored octets.  ``contains`` answers None whenever the stored text cannot decide (a
field that was too long to keep, a needle holding a line break): the caller then reads
the message's header as before, so results never depend on what was stored.

The format (kind ``imap.hsearch.1``; change it only under a new kind name) is UTF-8
(lone surrogates kept, "surrogatepass") in lines joined by LF:

* line 0: the sent date (RFC 3501 SENT* keys: the first Date field's date in its own
  zone) as ``YYYY-MM-DD``, or ``-`` when there is none or it cannot be read; then,
  space-separated, the lowercased names of fields present but not stored (trace fields,
  over-long values): a key naming one of those reads the header;
* one line per field occurrence, in header order: lowercased name, ``:``, the value
  RFC 2047-decoded and casefolded;
* for each address of From, To, Cc and Bcc (RFC 5322 §3.4, comments and folding white
  space left out): ``\\x01`` + name + ``:`` + ``mailbox@host`` casefolded, and the same
  with the display name when there is one.

The single octet ``!`` says "nothing stored; read the header" (a header this module
could not process).
"""

from __future__ import annotations

import email.utils
from email.message import Message
from functools import lru_cache

from mxd.imap.addresses import Address, parse_address_list
from mxd.imap.message import _simple_addresses, decode_header_value, raw_all, unfold

KIND = "imap.hsearch.1"
UNUSABLE = b"!"

# Fields never stored (only their names): long trace and signature fields nobody
# searches for in a mail client; a HEADER key naming one reads the header.
TRACE = frozenset({
    "received", "x-received", "dkim-signature", "x-google-dkim-signature", "arc-seal",
    "arc-message-signature", "arc-authentication-results", "authentication-results",
    "x-ms-exchange-crosstenant-network-message-id", "x-forefront-antispam-report",
    "x-microsoft-antispam-message-info", "x-ms-exchange-antispam-messagedata-0",
})
MAX_FIELD = 2048  # characters of one decoded value kept, at most
MAX_TEXT = 16 * 1024  # characters of stored text, at most (later fields: names only)
ADDRESS_FIELDS = ("from", "to", "cc", "bcc")


def _good_name(name: str) -> bool:
    # RFC 5322 §2.2 field names: printable US-ASCII but colon; line 0 separates names by
    # spaces and lines by LF, and \x01 marks address lines.
    return bool(name) and name.isascii() and name.isprintable() and " " not in name \
        and ":" not in name


def sent_date(h: Message) -> str:
    """Line 0's date: as ``mxd.imap.search.Candidate.sent_date`` reads it."""
    values = raw_all(h, "Date")
    if not values:
        return "-"
    try:
        dt = email.utils.parsedate_to_datetime(values[0])
    except (TypeError, ValueError, IndexError):
        return "-"
    return dt.date().isoformat() if dt is not None else "-"


def header_value(raw: str) -> str:
    """A raw value as ``mxd.imap.search`` compares it in HEADER and SUBJECT keys."""
    return decode_header_value(raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))


def address_pieces(raw: str) -> list[str]:
    """The address specs and display names of a raw address field, as FROM/TO/CC/BCC
    compare them (RFC 5322 §3.4.1: ``<user (c)@ (c) domain.org>`` is user@domain.org),
    leaving out those that are bound to be in the field's text already: the common
    plain forms (``Name <a@b>``, ``"Name" <a@b>``, ``a@b``, no comment, no encoded word,
    single spaces), whose specs and names are written out in the text as they are."""
    if raw.isascii() and "=?" not in raw:
        simple = _simple_addresses(unfold(raw))
        if simple is not None and all(" " * 2 not in n and "\t" not in n for n, _ in simple):
            return []
    out = []
    for entry in parse_address_list(decode_header_value(raw)):
        if isinstance(entry, Address):
            out.append(f"{entry.mailbox or ''}@{entry.host}" if entry.host else entry.mailbox or "")
            if entry.name:
                out.append(entry.name)
    return out


def encode(h: Message) -> bytes:
    """The stored search text of a parsed header block (pure; never raises: a header
    that cannot be processed gives UNUSABLE)."""
    try:
        return _encode(h)
    except Exception:  # noqa: BLE001 - a strange header must not fail the other derivers
        return UNUSABLE


def _encode(h: Message) -> bytes:
    by_name: dict[str, list[str]] = {}
    for k, v in h.raw_items():
        by_name.setdefault(str(k).lower(), []).append(str(v))
    lines: list[str] = []
    skipped: list[str] = []
    size = 0
    for name, values in by_name.items():
        if not _good_name(name):
            return UNUSABLE  # cannot be written down: every key reads the header
        if name in TRACE:
            skipped.append(name)
            continue
        every = []
        for v in values:
            if v.isascii() and "=?" not in v and "\n" not in v:
                every.append(v.casefold())  # what header_value gives such a value
            else:
                every.append(header_value(v).casefold())
        count = len(every)
        if name in ADDRESS_FIELDS:
            for v in values:
                every.extend(p.casefold() for p in address_pieces(v))
        length = sum(map(len, every))
        if size + length > MAX_TEXT or any("\n" in t or len(t) > MAX_FIELD for t in every):
            skipped.append(name)
            continue
        size += length
        head = name + ":"
        lines.extend(head + t for t in every[:count])
        lines.extend("\x01" + head + t for t in every[count:])
    first = " ".join([sent_date(h), *skipped])
    return "\n".join([first, *lines]).encode("utf-8", "surrogatepass")


@lru_cache(maxsize=256)
def needle(text: str) -> bytes | None:
    """A search string as stored texts are compared with it (casefolded, UTF-8); None
    when the stored text cannot answer for it (a line break, a lone surrogate)."""
    n = text.casefold()
    if "\n" in n:
        return None
    try:
        return n.encode("utf-8")
    except UnicodeEncodeError:
        return None


@lru_cache(maxsize=256)
def _name(name: str) -> bytes | None:
    """A field name as stored lines carry it; None for one that cannot be stored."""
    key = name.lower()
    return key.encode("ascii") if _good_name(key) else None


def _skipped(stored: bytes, name: bytes) -> bool:
    first = stored[:stored.find(b"\n")] if b"\n" in stored else stored
    if b" " not in first:  # a date or "-" alone: every field stored
        return False
    return name in first.split(b" ")[1:]


def contains(stored: bytes, name: str, text: str, addresses: bool = False) -> bool | None:
    """Does a field ``name`` of the message hold ``text`` (RFC 9051 §6.4.4 substring,
    casefolded), as ``mxd.imap.search`` judges from the header?  With ``addresses``, its
    addresses' specs and display names count too (FROM, TO, CC, BCC).  An empty ``text``
    asks whether the field is present.  None: the stored text cannot say; read the
    header."""
    if stored == UNUSABLE or not stored:
        return None
    n = needle(text)
    bname = _name(name)
    if n is None or bname is None:
        return None
    if n and n not in stored:
        # Not anywhere in the text (the common case, decided in one scan).
        return None if _skipped(stored, bname) else False
    prefix = b"\n" + bname + b":"
    aprefix = b"\n\x01" + bname + b":"
    for p in (prefix, aprefix) if addresses else (prefix,):
        i = stored.find(p)
        while i >= 0:
            start = i + len(p)
            end = stored.find(b"\n", start)
            if end < 0:
                end = len(stored)
            if n in stored[start:end]:
                return True
            i = stored.find(p, end)
    if _skipped(stored, bname):
        return True if not n else None  # present, and the empty string is in any value
    return False


def stored_sent_date(stored: bytes) -> str | None:
    """Line 0's date (``YYYY-MM-DD`` or ``-``); None when nothing usable is stored."""
    if stored == UNUSABLE or not stored:
        return None
    end = stored.find(b"\n")
    first = stored if end < 0 else stored[:end]
    return first.split(b" ", 1)[0].decode("ascii", "replace")
