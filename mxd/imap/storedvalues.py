"""The derived values (mxd.store.derived) of recently searched, sorted or threaded
mailboxes, kept in memory and shared by the sessions of a factory.

Key: (kind, mailbox id, UIDVALIDITY); value: UID -> the stored octets, and the highest
UID asked for.  A UID's values never change (its body is immutable), so an entry only
grows: a later command asks the store for the UIDs above the highest one asked for, in
one query.  Bounded in octets over all entries (the least recently used mailbox goes
first); an entry alone above the bound is not kept.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from mxd.store.interfaces import StoreError

if TYPE_CHECKING:
    from mxd.imap.server import IMAPSession

MAX_OCTETS = 48 * 1024 * 1024
PER_ENTRY = 80  # what a dict slot, an int and a bytes object cost beyond the value

_Key = tuple[str, int, int]
_Entry = tuple[dict[int, bytes], int, int]  # values, highest UID asked, octets
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
    values, asked, octets = cache.pop(key, ({}, 0, 0))
    top = view.max_uid
    if top > asked:
        try:
            got = await s.store.get_derived(view.info.id, kind, asked + 1)
        except StoreError:
            return values
        if values:
            values = {**values, **got}
        else:
            values = got
        octets += sum(len(v) for v in got.values()) + PER_ENTRY * len(got)
        asked = top
    if octets <= max_octets:
        cache[key] = (values, asked, octets)
    total = sum(o for _, _, o in cache.values())
    while total > max_octets and len(cache) > 1:
        _, (_, _, dropped) = cache.popitem(last=False)
        total -= dropped
    return values
