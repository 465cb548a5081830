"""IMAP METADATA (RFC 5464): GETMETADATA and SETMETADATA, server and mailbox entries.

The grammar (RFC 5464 §5, with erratum 1850's option order) and the entry-name rules are
pure functions here; the handlers talk to the store's annotation table
(``mxd.store.metadata``).  ``METADATA`` is advertised alone: RFC 5464 §1 — a server
that supports mailbox annotations supports server annotations too, and clients take
METADATA to include METADATA-SERVER.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from mxd.imap import response
from mxd.imap.dispatch import Reply, no, ok
from mxd.store.metadata import SERVER, Depth, MetadataTooLarge, MetadataTooMany

if TYPE_CHECKING:
    from mxd.imap.parser import Reader
    from mxd.imap.server import IMAPSession
    from mxd.imap.values import Command
    from mxd.store.interfaces import MailboxInfo

MAX_ENTRY_NAME = 255  # octets; RFC 5464 sets no limit, the store's key must be bounded
MAX_ENTRIES_PER_COMMAND = 100
_ENTRY_CHARS = frozenset(range(0x21, 0x7F)) - frozenset(b'*%"\\')


@attrs.frozen
class GetMetadataArgs:
    mailbox: str
    entries: tuple[str, ...]  # lower case (RFC 5464 §3.2: case-insensitive)
    maxsize: int | None = None
    depth: Depth = Depth.ZERO


@attrs.frozen
class SetMetadataArgs:
    mailbox: str
    items: tuple[tuple[str, bytes | None], ...]  # NIL removes the entry (§4.3)


def entry_problem(name: str) -> str | None:
    """Why ``name`` is not a valid entry name (RFC 5464 §3.2), or None.

    An entry is a "/"-separated path under "/private" or "/shared" (§3.2); no "*" or
    "%" (§3.2.1: they are reserved for future wildcard use), no empty component, no
    trailing "/"; printable ASCII here.  "/private" itself may be set, as Dovecot allows."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > MAX_ENTRY_NAME:
        return "entry name too long"
    if any(c not in _ENTRY_CHARS for c in raw):
        return "invalid character in entry name"
    low = name.lower()
    if not (low in ("/private", "/shared") or low.startswith(("/private/", "/shared/"))):
        return "entry names begin with /private or /shared"
    if "//" in low or low.endswith("/"):
        return "empty component in entry name"
    return None


def _entry(r: Reader) -> str:
    name = r.astring()
    problem = entry_problem(name)
    if problem is not None:
        raise r.error(problem)
    return name.lower()


def _options(r: Reader) -> tuple[int | None, Depth]:
    maxsize: int | None = None
    depth = Depth.ZERO
    r.expect(b"(")
    while True:
        opt = r.keyword()
        r.sp()
        if opt == "MAXSIZE":  # RFC 5464 §4.2.1
            maxsize = r.number()
        elif opt == "DEPTH":  # RFC 5464 §4.2.2
            if r.take(b"INFINITY"):
                depth = Depth.INFINITY
            else:
                n = r.number()
                if n > 1:
                    raise r.error("DEPTH is 0, 1 or infinity")
                depth = Depth(n)
        else:
            raise r.error(f"unknown GETMETADATA option {opt}")
        if r.take(b")"):
            return maxsize, depth
        r.sp()


def parse_getmetadata(r: Reader) -> GetMetadataArgs:
    """``GETMETADATA [SP options] SP mailbox SP entries``; the options are also taken
    after the mailbox, where RFC 5464's own examples put them (erratum 1850)."""
    r.sp()
    maxsize: int | None = None
    depth = Depth.ZERO
    if r.peek() == ord("("):
        maxsize, depth = _options(r)
        r.sp()
    mailbox = r.astring()
    r.sp()
    if r.peek() == ord("("):
        save = r.pos
        r.expect(b"(")
        word = r._run(frozenset(b" )")).upper()
        r.pos = save
        if word in (b"MAXSIZE", b"DEPTH"):
            maxsize, depth = _options(r)
            r.sp()
    if r.peek() == ord("("):
        entries = tuple(r.paren_list(lambda: _entry(r)))
        if not entries:
            raise r.error("no entries")
    else:
        entries = (_entry(r),)
    if len(entries) > MAX_ENTRIES_PER_COMMAND:
        raise r.error("too many entries in one command")
    return GetMetadataArgs(mailbox, entries, maxsize, depth)


def parse_setmetadata(r: Reader) -> SetMetadataArgs:
    """``SETMETADATA SP mailbox SP "(" entry SP value *(SP entry SP value) ")"``."""
    r.sp()
    mailbox = r.astring()
    r.sp()

    def item() -> tuple[str, bytes | None]:
        name = _entry(r)
        r.sp()
        if r.take(b"NIL"):
            return name, None
        return name, r.string()

    items = tuple(r.paren_list(item))
    if not items:
        raise r.error("no entries")
    if len(items) > MAX_ENTRIES_PER_COMMAND:
        raise r.error("too many entries in one command")
    return SetMetadataArgs(mailbox, items)


def parse_list_metadata(r: Reader) -> tuple[str, ...]:
    """RFC 9590 §5: the entries of LIST's ``RETURN (METADATA (entry ...))``."""
    entries = tuple(r.paren_list(lambda: _entry(r)))
    if not entries:
        raise r.error("no entries")
    if len(entries) > MAX_ENTRIES_PER_COMMAND:
        raise r.error("too many entries in one command")
    return entries


async def list_metadata(s: IMAPSession, box: MailboxInfo, entries: tuple[str, ...]) -> None:
    """RFC 9590 §3: after a mailbox's LIST response, its METADATA response with each
    requested entry (NIL when it has none)."""
    store = s.factory.shared.metadata
    if store is None or s.account is None:
        return
    found = dict(await store.get_metadata(s.account.id, box.id, entries))
    s.untagged(render(response.mailbox(box.name, s.utf8), [(e, found.get(e)) for e in entries],
                      s.utf8))


def render(mailbox: bytes, values: list[tuple[str, bytes | None]], utf8: bool) -> bytes:
    """``METADATA mailbox (entry value ...)`` (RFC 5464 §4.4.1)."""
    body = b" ".join(response.astring(n) + b" " + response.nstring(v, utf8) for n, v in values)
    return b"METADATA " + mailbox + b" (" + body + b")"


async def _target(s: IMAPSession, wire: str) -> tuple[int, bytes] | Reply:
    """(mailbox id or SERVER, the name as the response shows it)."""
    from mxd.imap.commands import _get_mailbox, mailbox_name

    if wire == "":
        return SERVER, b'""'
    name = mailbox_name(s, wire)
    info = await _get_mailbox(s, name)
    if info is None:
        return no("Mailbox does not exist", "NONEXISTENT")
    return info.id, response.mailbox(info.name, s.utf8)


async def cmd_getmetadata(s: IMAPSession, cmd: Command) -> Reply:
    args: GetMetadataArgs = cmd.args
    store = s.factory.shared.metadata
    assert s.account is not None and store is not None
    target = await _target(s, args.mailbox)
    if isinstance(target, Reply):
        return target
    mailbox_id, wire = target
    found = dict(await store.get_metadata(s.account.id, mailbox_id, args.entries, args.depth))
    values: list[tuple[str, bytes | None]] = []
    longest = 0
    seen: set[str] = set()
    for req in args.entries:
        # The entry asked for, then what lies below it.  Without DEPTH a missing entry
        # is answered NIL (as Dovecot does); with DEPTH it is left out (RFC 5464 §4.2.2's
        # example shows only the children).
        names = [req] + [n for n in sorted(found) if n != req and n.startswith(req + "/")]
        for n in names:
            if n in seen:
                continue
            seen.add(n)
            v = found.get(n)
            if v is None and (n != req or args.depth != Depth.ZERO):
                continue
            if v is not None and args.maxsize is not None and len(v) > args.maxsize:
                longest = max(longest, len(v))  # RFC 5464 §4.2.1: left out, reported
                continue
            values.append((n, v))
    if values:
        s.untagged(render(wire, values, s.utf8))
    if longest:
        return ok("GETMETADATA completed", f"METADATA LONGENTRIES {longest}")
    return ok("GETMETADATA completed")


async def cmd_setmetadata(s: IMAPSession, cmd: Command) -> Reply:
    args: SetMetadataArgs = cmd.args
    store = s.factory.shared.metadata
    assert s.account is not None and store is not None
    target = await _target(s, args.mailbox)
    if isinstance(target, Reply):
        return target
    mailbox_id, _ = target
    try:
        await store.set_metadata(s.account.id, mailbox_id, args.items)
    except MetadataTooLarge as e:
        return no("Value too large", f"METADATA MAXSIZE {e.limit}")  # RFC 5464 §4.3
    except MetadataTooMany:
        return no("Too many annotations, or too large in total", "METADATA TOOMANY")
    # RFC 5465 §5.6, §5.7: NOTIFY sessions hear of it (MailboxMetadataChange or
    # ServerMetadataChange).
    from mxd.imap.commands import mailbox_name

    s.factory.shared.notify.metadata_event(
        s.account.id, None if mailbox_id == SERVER else mailbox_name(s, args.mailbox),
        list(dict.fromkeys(n for n, _ in args.items)), origin=s)
    return ok("SETMETADATA completed")
