"""The cache of stored derived values of searched/sorted mailboxes (mxd.imap.storedvalues):
only new UIDs are asked for, and a message that had no value yet is asked for again for
a while (the store derives delivered mail once it is quiet)."""

from __future__ import annotations

from array import array
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed

from mxd.imap import storedvalues


class FakeStore:
    def __init__(self) -> None:
        self.values: dict[int, bytes] = {}
        self.asked: list[tuple[int, int]] = []

    def get_derived(self, mailbox_id: int, kind: str, first: int = 1,
                    last: int = 0xFFFFFFFF) -> Deferred[dict[int, bytes]]:
        self.asked.append((first, last))
        return succeed({u: v for u, v in self.values.items() if first <= u <= last})


class Factory:
    """Stands for the sessions' factory (the cache is per factory, weakly keyed)."""


def _session(store: FakeStore, uids: list[int]) -> Any:
    state = SimpleNamespace(uids=array("I", uids))
    view = SimpleNamespace(info=SimpleNamespace(id=7, uidvalidity=1), state=state,
                           max_uid=uids[-1] if uids else 0)
    return SimpleNamespace(view=view, store=store, factory=Factory())


def _get(s: Any) -> dict[int, bytes]:
    box: list[Any] = []
    Deferred.fromCoroutine(storedvalues.stored_values(s, "k")).addBoth(box.append)
    if not isinstance(box[0], dict):
        box[0].raiseException()
    return dict(box[0])


def test_only_uids_above_those_asked_are_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    store = FakeStore()
    store.values = {1: b"a", 2: b"b"}
    s = _session(store, [1, 2])
    assert _get(s) == {1: b"a", 2: b"b"}
    assert _get(s) == {1: b"a", 2: b"b"}
    s.view.state.uids.append(3)
    s.view.max_uid = 3
    store.values[3] = b"c"
    assert _get(s) == {1: b"a", 2: b"b", 3: b"c"}
    assert store.asked == [(1, 2), (3, 3)]


def test_a_message_without_a_value_is_asked_for_again_until_the_wait_ends(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(storedvalues.time, "monotonic", lambda: now[0])
    store = FakeStore()
    store.values = {1: b"a", 3: b"c"}  # 2 is not derived yet
    s = _session(store, [1, 2, 3])
    assert _get(s) == {1: b"a", 3: b"c"}
    store.values[2] = b"b"  # the store derived it
    now[0] += 1
    assert _get(s) == {1: b"a", 2: b"b", 3: b"c"}
    assert store.asked == [(1, 3), (2, 3)]
    assert _get(s) == {1: b"a", 2: b"b", 3: b"c"}
    assert len(store.asked) == 2  # nothing missing: nothing asked


def test_a_value_missing_for_good_is_no_longer_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(storedvalues.time, "monotonic", lambda: now[0])
    store = FakeStore()
    store.values = {1: b"a", 3: b"c"}  # 2's value is too big to store: never comes
    s = _session(store, [1, 2, 3])
    _get(s)
    _get(s)
    assert store.asked == [(1, 3), (2, 3)]
    now[0] += storedvalues.HOLE_WAIT + 1
    assert _get(s) == {1: b"a", 3: b"c"}
    assert len(store.asked) == 2


def test_octets_count_each_value_once() -> None:
    store = FakeStore()
    store.values = {1: b"aaaa", 3: b"cccc"}
    s = _session(store, [1, 2, 3])
    _get(s)
    store.values[2] = b"bbbb"
    _get(s)
    cache = storedvalues._caches[s.factory]
    (_, _, octets, hole, _), = cache.values()
    assert octets == 3 * (4 + storedvalues.PER_ENTRY) and hole == 0
