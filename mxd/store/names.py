"""Mailbox names and message flags as the store keeps them (RFC 3501, RFC 9051).

Pure functions, no I/O.  Mailbox names are Unicode strings with "/" as the hierarchy
separator (the IMAP layer converts from modified UTF-7 or UTF8=ACCEPT).  "INBOX" is
case-insensitive (RFC 3501 §5.1), including as the first level of a hierarchy
("inbox/x" is "INBOX/x").  Flags: system flags are case-insensitive and stored in their
canonical spelling; keywords keep the spelling they were first given, and compare
case-insensitively (RFC 3501 §2.3.2).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from mxd.store.interfaces import HIERARCHY_SEPARATOR, InvalidFlag, InvalidMailboxName, StoreError

__all__ = ["InvalidFlag", "InvalidMailboxName"]

MAX_MAILBOX_NAME = 1000  # characters of the full name
MAX_FLAG = 200


SYSTEM_FLAGS = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}
# RFC 3501 §2.3.2: \Recent is session state; RFC 9051 drops it.  Never stored.
RECENT = "\\recent"
# RFC 3501 §9 atom-specials (plus "]" for flag-keyword, RFC 3501 §9 "atom" via ATOM-CHAR).
_ATOM_SPECIALS = set('(){ %*"\\]')


def normalize_mailbox_name(name: str) -> str:
    """The stored form of a mailbox name, or InvalidMailboxName.

    A single trailing separator is dropped (RFC 3501 §6.3.3: "foo/" asks for a name
    under which others will be created).
    """
    if name.endswith(HIERARCHY_SEPARATOR) and len(name) > 1:
        name = name[:-1]
    name = unicodedata.normalize("NFC", name)
    if not name:
        raise InvalidMailboxName("empty mailbox name")
    if len(name) > MAX_MAILBOX_NAME:
        raise InvalidMailboxName("mailbox name too long")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        raise InvalidMailboxName("control character in mailbox name")
    parts = name.split(HIERARCHY_SEPARATOR)
    if any(p == "" for p in parts):
        raise InvalidMailboxName(f"empty hierarchy level in {name!r}")
    if parts[0].upper() == "INBOX":
        parts[0] = "INBOX"
    return HIERARCHY_SEPARATOR.join(parts)


def is_inbox(name: str) -> bool:
    return name.upper() == "INBOX"


def parents(name: str) -> list[str]:
    """Superior names, outermost first: "a/b/c" -> ["a", "a/b"]."""
    parts = name.split(HIERARCHY_SEPARATOR)
    return [HIERARCHY_SEPARATOR.join(parts[:i]) for i in range(1, len(parts))]


def is_inferior(name: str, of: str) -> bool:
    """True when ``name`` is below ``of`` in the hierarchy."""
    return name.startswith(of + HIERARCHY_SEPARATOR)


def like_children(name: str) -> str:
    """A LIKE pattern (escape '!') matching the inferiors of ``name``."""
    esc = name.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return esc + HIERARCHY_SEPARATOR + "%"


def canonical_flag(flag: str) -> str:
    """System flags in canonical case; keywords as given.  InvalidFlag otherwise."""
    if not flag or len(flag) > MAX_FLAG:
        raise InvalidFlag(f"bad flag {flag!r}")
    low = flag.lower()
    if low.startswith("\\"):
        if low in SYSTEM_FLAGS:
            return SYSTEM_FLAGS[low]
        if low == RECENT:
            raise InvalidFlag("\\Recent cannot be stored")
        body = flag[1:]
    else:
        body = flag
    if not body or any(c in _ATOM_SPECIALS or ord(c) <= 0x20 or ord(c) == 0x7F for c in body):
        raise InvalidFlag(f"bad flag {flag!r}")
    return flag


def clean_flags(flags: Iterable[str], *, drop_recent: bool = True) -> frozenset[str]:
    """Canonical, case-insensitively de-duplicated flags; \\Recent silently dropped when
    ``drop_recent`` (APPEND may name it)."""
    out: dict[str, str] = {}
    for f in flags:
        if drop_recent and f.lower() == RECENT:
            continue
        c = canonical_flag(f)
        out.setdefault(c.lower(), c)
    return frozenset(out.values())


def apply_flags(current: frozenset[str], flags: frozenset[str], mode: str) -> frozenset[str]:
    """RFC 3501 §6.4.6 STORE: mode "set" (FLAGS), "add" (+FLAGS), "remove" (-FLAGS)."""
    if mode == "set":
        return flags
    cur = {f.lower(): f for f in current}
    if mode == "add":
        for f in flags:
            cur.setdefault(f.lower(), f)
    elif mode == "remove":
        for f in flags:
            cur.pop(f.lower(), None)
    else:
        raise StoreError(f"unknown flag store mode {mode!r}")
    return frozenset(cur.values())


def flags_equal(a: frozenset[str], b: frozenset[str]) -> bool:
    return {f.lower() for f in a} == {f.lower() for f in b}


def flags_to_text(flags: frozenset[str]) -> str:
    """Stored form: space separated, sorted, with a leading and trailing space so that
    ``instr(flags, ' \\Seen ')`` is an exact test in SQL."""
    return " " + " ".join(sorted(flags)) + " " if flags else " "


def flags_from_text(text: str) -> frozenset[str]:
    return frozenset(text.split())
