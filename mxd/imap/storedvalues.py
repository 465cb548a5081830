"""The derived values (mxd.store.derived) of recently searched, sorted or threaded
mailboxes, kept in memory and shared by the sessions of a factory.

Key: (kind, mailbox id, UIDVALIDITY); value: UID -> the stored octets, and the highest
UID asked for.  A UID's values never change (its body is immutable), so an entry only
grows: a later command asks the store for the UIDs above the highest one asked for, in
one query, and again for the first UID that had no value while it may still get one
(HOLE_WAIT).  Bounded in octets over all entries (the least recently used mailbox goes
first); an entry alone above the bound is not kept.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from mxd.store.interfaces import StoreError

if TYPE_CHECKING:
    from mxd.imap.server import IMAPSession

MAX_OCTETS = 48 * 1024 * 1024
PER_ENTRY = 80  # what a dict slot, an int and a bytes object cost beyond the value
# A message without a stored value may get it soon: the store puts off the values of
# delivered mail until it is quiet (mxd.store.derived.Later).  The first such UID is
# asked for again by later commands for this long; after that its value is taken to
# be missing for good (a value too big to store: readers compute it).
HOLE_WAIT = 120.0

_Key = tuple[str, int, int]
# values, highest UID asked, octets, first UID without a value (0: none), ask again until
_Entry = tuple[dict[int, bytes], int, int, int, float]
_caches: WeakKeyDictionary[object, OrderedDict[_Key, _Entry]] = WeakKeyDictionary()


async def stored_values(s: IMAPSession, kind: str,
                        max_octets: int = MAX_OCTETS) -> Mapping[int, bytes]:
    """UID -> the stored ``kind`` value of the selected mailbox's messages that have one;
    what was read before when the store cannot say now ({} when nothing was)."""
    view = s.view
    assert view is not None
    cache = _caches.get(s.factory)
    if cache is None:
        cache = _caches[s.factory] = OrderedDict()
    key = (kind, view.info.id, view.info.uidvalidity)
    values, asked, octets, hole, until = cache.pop(key, ({}, 0, 0, 0, 0.0))
    now = time.monotonic()
    start = hole - 1 if hole and now < until else asked
    top = view.max_uid
    if top > start:
        try:
            got = await s.store.get_derived(view.info.id, kind, start + 1, top)
        except StoreError:
            return values
        fresh = {u: v for u, v in got.items() if u not in values} if values else got
        if fresh:  # a new dict: a command still reading the old one is not disturbed
            values = {**values, **fresh} if values else fresh
            octets += sum(len(v) for v in fresh.values()) + PER_ENTRY * len(fresh)
        asked = top
        uids = view.state.uids
        lo = bisect_right(uids, start)
        first = 0
        if len(got) < len(uids) - lo:  # some message of the range has no value
            first = next((u for u in uids[lo:] if u not in values), 0)
        if first != hole:
            hole, until = first, now + HOLE_WAIT
    if octets <= max_octets:
        cache[key] = (values, asked, octets, hole, until)
    total = sum(e[2] for e in cache.values())
    while total > max_octets and len(cache) > 1:
        _, dropped = cache.popitem(last=False)
        total -= dropped[2]
    return values
