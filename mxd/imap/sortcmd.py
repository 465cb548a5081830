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
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

import attrs

from mxd.imap import context, esearch, summary
from mxd.imap import message as mimemsg
from mxd.imap.dispatch import Reply, bad, no, ok
from mxd.imap.messagecache import read_header_block
from mxd.imap.search import uses_savedate
from mxd.imap.searchcmd import CHARSETS, iter_matches
from mxd.imap.sort import SortData, chunked_sort, key_function, sort_steps
from mxd.imap.storedvalues import stored_values
from mxd.imap.values import Command, SearchKey, SortArgs
from mxd.store.interfaces import MessageInfo, StoreError

if TYPE_CHECKING:
    from mxd.imap.server import IMAPSession


# What SORT and THREAD derive from a header block (summary.Fields), per blob (blobs are
# immutable, so entries never go stale), for messages the store has no keys for.
# Shared by the sessions of a factory and bounded in entries (about 1-2 KiB each).
MAX_CACHED = 20_000
_caches: WeakKeyDictionary[object, OrderedDict[str, summary.Fields]] = WeakKeyDictionary()

# (sequence number, UID, internal date in POSIX seconds, size, header keys, either
# as stored (summary.KEYS) or decoded)
Keys = bytes | summary.Fields
Row = tuple[int, int, float, int, Keys]


async def stored_keys(s: IMAPSession) -> Mapping[int, bytes]:
    """UID -> the stored keys (summary.KEYS) of the selected mailbox's messages that
    have them; {} when the store cannot say (the keys are then read from the files)."""
    return await stored_values(s, summary.KEYS)


def _decode(raw: bytes | None) -> summary.Fields | None:
    if raw is None:
        return None
    try:
        return summary.decode_fields(raw)
    except (ValueError, UnicodeDecodeError, TypeError):
        return None


def header_fields(s: IMAPSession, m: MessageInfo, stored: Mapping[int, bytes]) -> summary.Fields:
    """The header keys of ``m``: stored, cached, or read from its file (and cached)."""
    f = _decode(stored.get(m.uid))
    if f is not None:
        return f
    cache = _caches.get(s.factory)
    if cache is None:
        cache = _caches[s.factory] = OrderedDict()
    f = cache.get(m.blob_id)
    if f is not None:
        cache.move_to_end(m.blob_id)
        return f
    # Through the stored format, so that both ways give the very same keys.
    f = summary.decode_fields(summary.encode_keys(summary.header_keys(read_header_bytes(s, m))))
    cache[m.blob_id] = f
    if len(cache) > MAX_CACHED:
        cache.popitem(last=False)
    return f


def read_header_bytes(s: IMAPSession, m: MessageInfo) -> bytes:
    try:
        with s.store.open_blob(m.blob_id) as f:
            return read_header_block(f)
    except (OSError, KeyError, StoreError):
        return b""


def is_all(key: SearchKey) -> bool:
    """Does the search program match every message (``ALL``, alone or ANDed)?"""
    return key.name == "ALL" or (key.name == "AND" and all(is_all(k) for k in key.args))


async def rows(s: IMAPSession, key: SearchKey, now: datetime) -> AsyncIterator[list[Row]]:
    """Rows for the messages of the selected mailbox that ``key`` matches, in mailbox
    order and in lists of up to CHUNK, giving the reactor back between work slices.
    For ``ALL`` with keys stored (the common case: a client sorting or threading a whole
    mailbox) no message object is built and the keys stay encoded until a criterion
    needs them (``fields``, ``sent``).  Raises ValueError for a search program that
    cannot be evaluated."""
    view = s.view
    assert view is not None
    stored = await stored_keys(s)
    if s.view is not view:
        return
    out: list[Row] = []
    if uses_savedate(key):  # RFC 8514: save dates are read with the matches
        from mxd.imap.searchcmd import selected_matches

        for seq, uid, m in await selected_matches(s, key, now):
            out.append((seq, uid, m.internal_date.timestamp(), m.size,
                        header_fields(s, m, stored)))
        yield out
        return
    if not is_all(key):
        async for seq, uid, m in matching(s, key, now):
            out.append((seq, uid, m.internal_date.timestamp(), m.size,
                        header_fields(s, m, stored)))
            if len(out) >= CHUNK:
                yield out
                out = []
        if out:
            yield out
        return
    st = view.state
    index, columns, get = st.index, st.arrival_size_at, stored.get
    for seq, uid in enumerate(view.uids[:], 1):
        raw = get(uid)
        i = index(uid) if raw is not None and _well_formed(raw) else None
        if i is not None and raw is not None:
            arrival, size = columns(i)
            out.append((seq, uid, arrival, size, raw))
        else:
            info = view.msgs.get(uid)  # no stored keys, or expunged elsewhere (a ghost)
            if info is not None:
                out.append((seq, uid, info.internal_date.timestamp(), info.size,
                            header_fields(s, info, stored)))
        if not seq & 31:
            await s.breathe()
        if len(out) >= CHUNK:
            yield out
            out = []
    if out:
        yield out


CHUNK = 256


def _well_formed(raw: bytes) -> bool:
    return raw[:1] == b"J" or raw.count(b"\0") == 9


def fields(keys: Keys) -> summary.Fields:
    """The header keys of a Row, decoded."""
    if isinstance(keys, bytes):
        try:
            return summary.decode_fields(keys)
        except (ValueError, UnicodeDecodeError, TypeError):
            return _NO_FIELDS
    return keys


def sent(keys: Keys) -> float | None:
    """The Date header of a Row (None: none or unparseable), decoding nothing else."""
    if isinstance(keys, bytes) and keys[:1] != b"J":
        date = keys[:keys.find(b"\0")]
        try:
            return float(date) if date else None
        except ValueError:
            return None
    return fields(keys)[0]


_NO_FIELDS: summary.Fields = (None, "", "", "", "", "", "", False, None, ())


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
    async for hit in iter_matches(s, key, now):
        yield hit


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
    opts_needing_items = args.return_opts is not None and "UPDATE" in args.return_opts
    if not opts_needing_items:
        # A tuple of plain values per message (no SortData), sorted as it is.
        try:
            numbers = await _sort_numeric(s, args, now, is_uid)
        except ValueError as e:
            return bad(str(e))
        ordered: list[SortData] = []
    else:
        items: list[SortData] = []
        # DATE, ARRIVAL and SIZE need no string key: those are left empty, undecoded.
        strings = any(k not in _NUMERIC for k, _ in args.criteria)
        try:
            async for chunk in rows(s, args.key, now):
                for seq, uid, arrival, size, keys in chunk:
                    if strings:
                        f = fields(keys)
                        date = f[0]
                        items.append(SortData(seq, uid, arrival,
                                              arrival if date is None else date, size,
                                              f[1], f[2], f[3], f[4], f[5], f[6]))
                    else:
                        date = sent(keys)
                        items.append(SortData(seq, uid, arrival,
                                              arrival if date is None else date, size,
                                              "", "", "", "", "", ""))
        except ValueError as e:
            return bad(str(e))
        ordered = []
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
    s.untagged(esearch.render(cmd.tag, is_uid, opts, numbers, partial=args.partial,
                              in_order=True))
    return ok(f"{cmd.name} completed")


_NUMERIC = ("ARRIVAL", "DATE", "SIZE")


# Where each string criterion is among the fields of the stored keys (summary.KEYS).
_STRING_FIELD = {"SUBJECT": 1, "FROM": 2, "TO": 3, "CC": 4, "DISPLAYFROM": 5, "DISPLAYTO": 6}


def _as_bytes(keys: Keys) -> list[bytes]:
    """The date and the six string fields of a Row's keys as the UTF-8 octets of the
    stored format: octets compare as the strings' code points do (UTF-8 keeps code point
    order), so no key is decoded to sort."""
    if isinstance(keys, bytes) and keys[:1] != b"J":
        parts = keys.split(b"\0", 7)
        if len(parts) == 8:
            return parts
    f = fields(keys)
    return [b"" if f[0] is None else repr(f[0]).encode(),
            *(v.encode("utf-8", "surrogatepass") for v in f[1:7])]


async def _sort_numeric(s: IMAPSession, args: SortArgs, now: datetime, is_uid: bool) -> list[int]:
    """SORT by ``args.criteria`` (RFC 5256 §3, RFC 5957 §3; REVERSE applies to the
    criterion it precedes; messages equal under all of them in sequence order): a tuple
    of the criteria's values, then sequence number and UID, per message, sorted as it
    is; the string keys stay the stored octets.  The numbers in order.  Raises
    ValueError for a search program that cannot run."""
    criteria = args.criteria
    numeric_only = all(k in _NUMERIC for k, _ in criteria)
    keyed: list[tuple[Any, ...]] = []
    for_date = any(k == "DATE" for k, _ in criteria)
    async for chunk in rows(s, args.key, now):
        for seq, uid, arrival, size, keys in chunk:
            parts: list[bytes] | None = None
            if numeric_only:
                date = sent(keys) if for_date else None
            else:
                parts = _as_bytes(keys)
                date = _float(parts[0]) if for_date else None
            vals: list[Any] = []
            for name, reverse in criteria:
                if name == "ARRIVAL":
                    v: Any = arrival
                elif name == "DATE":
                    v = arrival if date is None else date
                elif name == "SIZE":
                    v = size
                else:
                    assert parts is not None
                    v = parts[_STRING_FIELD[name]]
                    vals.append(v.translate(_INVERT) + b"\xff" if reverse else v)
                    continue
                vals.append(-v if reverse else v)
            vals.append(seq)
            vals.append(uid)
            keyed.append(tuple(vals))
        await s.breathe()
    ordered: list[tuple[Any, ...]] = []
    for _ in chunked_sort(keyed, _same, ordered):
        await s.breathe()
    return [t[-1] for t in ordered] if is_uid else [t[-2] for t in ordered]


# REVERSE of a string key as octets that sort the other way: each octet inverted, then
# 0xFF, so that a string sorts after its own extensions ("ab" after "abc").  The fields
# hold no NUL, so no inverted octet is 0xFF.
_INVERT = bytes(255 - b for b in range(256))


def _float(v: bytes) -> float | None:
    try:
        return float(v) if v else None
    except ValueError:
        return None


def _same(t: tuple[Any, ...]) -> tuple[Any, ...]:
    return t


def sort_item(s: IMAPSession, m: MessageInfo, seq: int, uid: int,
              stored: Mapping[int, bytes] | None = None) -> SortData:
    """What SORT reads of one message (header keys stored, or cached per blob)."""
    f = header_fields(s, m, stored or {})
    arrival = m.internal_date.timestamp()
    return SortData(seq, uid, arrival, arrival if f[0] is None else f[0], m.size,
                    f[1], f[2], f[3], f[4], f[5], f[6])
