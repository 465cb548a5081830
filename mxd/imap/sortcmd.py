"""SORT and UID SORT (RFC 5256 §3, RFC 5957): the session adapter around the pure
``mxd.imap.sort``.  The header keys of each message come from what the store keeps
with it (``mxd.imap.summary``, one query per command), else from its header block, read
per message between work slices; the ordering runs in chunks, so a big mailbox never
holds the reactor."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from email.message import Message
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

import attrs

from mxd.imap import context, esearch, summary
from mxd.imap import message as mimemsg
from mxd.imap.dispatch import Reply, bad, no, ok
from mxd.imap.messagecache import read_header_block
from mxd.imap.search import Candidate, matches, uses_savedate
from mxd.imap.searchcmd import CHARSETS
from mxd.imap.sort import SortData, key_function, sort_steps
from mxd.imap.summary import HeaderKeys
from mxd.imap.values import Command, SearchKey, SortArgs
from mxd.store.interfaces import MessageInfo, StoreError

if TYPE_CHECKING:
    from mxd.imap.server import IMAPSession


# What SORT and THREAD derive from a header block (summary.HeaderKeys), per blob
# (blobs are immutable, so entries never go stale).  Shared by the sessions of a
# factory and bounded in entries (about 1-2 KiB each).
MAX_CACHED = 20_000
_caches: WeakKeyDictionary[object, OrderedDict[str, HeaderKeys]] = WeakKeyDictionary()


async def stored_keys(s: IMAPSession) -> Mapping[int, bytes]:
    """UID -> the stored keys (summary.KEYS) of the selected mailbox's messages that
    have them; {} when the store cannot say (the keys are then read from the files)."""
    view = s.view
    assert view is not None
    try:
        return await s.store.get_derived(view.info.id, summary.KEYS)
    except StoreError:
        return {}


def header_keys(s: IMAPSession, m: MessageInfo,
                stored: Mapping[int, bytes] | None = None) -> HeaderKeys:
    cache = _caches.get(s.factory)
    if cache is None:
        cache = _caches[s.factory] = OrderedDict()
    v = cache.get(m.blob_id)
    if v is not None:
        cache.move_to_end(m.blob_id)
        return v
    raw = stored.get(m.uid) if stored is not None else None
    if raw is not None:
        try:
            v = summary.decode_keys(raw)
        except (ValueError, UnicodeDecodeError, TypeError):
            v = None
    if v is None:
        v = summary.header_keys(read_header_bytes(s, m))
    cache[m.blob_id] = v
    if len(cache) > MAX_CACHED:
        cache.popitem(last=False)
    return v


def read_header_bytes(s: IMAPSession, m: MessageInfo) -> bytes:
    try:
        with s.store.open_blob(m.blob_id) as f:
            return read_header_block(f)
    except (OSError, KeyError, StoreError):
        return b""


def read_headers(s: IMAPSession, m: MessageInfo) -> Message:
    try:
        with s.store.open_blob(m.blob_id) as f:
            return mimemsg.parse_headers(read_header_block(f))
    except (OSError, KeyError):
        return mimemsg.parse_headers(b"")


async def matching(s: IMAPSession, key: SearchKey,
                   now: datetime) -> AsyncIterator[tuple[int, int, MessageInfo]]:
    """(sequence number, UID, message) of each message of the selected mailbox that
    ``key`` matches, in mailbox order, giving the reactor back between work slices
    (SORT and THREAD select their messages this way). Raises ValueError for a search
    program that cannot be evaluated."""
    view = s.view
    assert view is not None
    exists, max_uid, recent = view.exists, view.max_uid, view.recent
    for seq, uid in enumerate(view.uids[:], 1):
        await s.breathe()
        m = view.msgs[uid]
        cache: list[Message] = []

        def header(m: MessageInfo = m, cache: list[Message] = cache) -> Message:
            if not cache:
                cache.append(read_headers(s, m))
            return cache[0]

        def full(m: MessageInfo = m) -> mimemsg.ParsedMessage:
            try:
                with s.store.open_blob(m.blob_id) as f:
                    return mimemsg.ParsedMessage.parse(f.read())
            except (OSError, KeyError):
                return mimemsg.ParsedMessage.parse(b"")

        if matches(key, Candidate(seq, m, exists, max_uid, header, full, now, uid in recent)):
            yield seq, uid, m


async def do_sort(s: IMAPSession, cmd: Command) -> Reply:
    args: SortArgs = cmd.args
    view = s.view
    assert view is not None
    if args.charset not in CHARSETS:
        # RFC 5256 §3: an unsupported charset is a NO with BADCHARSET.
        return no("Unsupported charset", "BADCHARSET (US-ASCII UTF-8)")
    saving = args.return_opts is not None and "SAVE" in args.return_opts
    if saving:
        s.search_result = ()  # RFC 5182 §2.4: a failed command leaves the result empty
    is_uid = cmd.name == "UID SORT"
    now = datetime.fromtimestamp(s.clock.seconds(), UTC)
    items: list[SortData] = []
    stored = await stored_keys(s)
    if uses_savedate(args.key):
        from mxd.imap.searchcmd import selected_matches

        try:
            found = await selected_matches(s, args.key, now)
        except ValueError as e:
            return bad(str(e))
        for seq, uid, m in found:
            items.append(sort_item(s, m, seq, uid, stored))
    else:
        try:
            async for seq, uid, m in matching(s, args.key, now):
                items.append(sort_item(s, m, seq, uid, stored))
        except ValueError as e:
            return bad(str(e))
    ordered: list[SortData] = []
    for _ in sort_steps(items, args.criteria, ordered):
        await s.breathe()
    numbers = [d.uid if is_uid else d.seq for d in ordered]
    if args.return_opts is None:
        # RFC 5256 §4: "SORT" *(SP nz-number); UID SORT answers UIDs (§3).
        s.untagged(b"SORT" + b"".join(b" %d" % n for n in numbers))
        return ok(f"{cmd.name} completed")
    opts = args.return_opts or ("ALL",)
    if saving and s.view is not None:
        # RFC 5267 §3 with RFC 5182 §2.4: SAVE keeps the matches (as a set, so order
        # does not matter), MIN/MAX alone the first/last in sort order.
        picked = numbers
        if numbers and ("MIN" in opts or "MAX" in opts) and "ALL" not in opts \
                and "COUNT" not in opts:
            picked = ([numbers[0]] if "MIN" in opts else []) + (
                [numbers[-1]] if "MAX" in opts else [])
        uids = s.view.uids
        s.search_result = tuple(sorted(set(picked if is_uid else (uids[q - 1] for q in picked))))
        opts = tuple(o for o in opts if o != "SAVE")
        if not opts:
            return ok(f"{cmd.name} completed")
    if "UPDATE" in opts:
        key = key_function(args.criteria)
        pairs = [(key(attrs.evolve(d, seq=d.uid)), d.uid) for d in ordered]
        pairs.sort()
        context.start(s, cmd.tag, is_uid, args.key, args.criteria, [u for _, u in pairs],
                      args.partial, [k for k, _ in pairs])
    if set(opts) <= {"UPDATE", "CONTEXT"}:
        opts = opts + ("ALL",)
    s.untagged(esearch.render(cmd.tag, is_uid, opts, numbers, partial=args.partial,
                              in_order=True))
    return ok(f"{cmd.name} completed")


def sort_item(s: IMAPSession, m: MessageInfo, seq: int, uid: int,
              stored: Mapping[int, bytes] | None = None) -> SortData:
    """What SORT reads of one message (header keys cached per blob)."""
    date, d, _ = header_keys(s, m, stored)
    arrival = m.internal_date.timestamp()
    return attrs.evolve(d, seq=seq, uid=uid, arrival=arrival, size=m.size,
                        sent=arrival if date is None else date)
