"""Pipelined APPENDs of one session are stored side by side (so the store can commit them
together) and still answered in command order (RFC 3501 §5.5)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from twisted.internet.defer import Deferred

from mxd.imap.server import IMAPServerSettings
from mxd.store.interfaces import Appended
from tests.imap.fakes import FakeStore
from tests.imap.helpers import MSG1, Conn, make_store


class SlowAppendStore(FakeStore):
    """APPEND completes only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[Deferred[Appended], Any]] = []

    def append_to(self, account_id: int, name: str, blob: Any, flags: frozenset[str],
                  when: datetime | None = None) -> Deferred[Appended]:
        d: Deferred[Appended] = Deferred()
        self.pending.append((d, lambda: super(SlowAppendStore, self).append_to(
            account_id, name, blob, flags, when)))
        return d

    def finish(self, i: int) -> None:
        d, real = self.pending[i]
        real().addCallback(d.callback)


def _store() -> SlowAppendStore:
    store = SlowAppendStore()
    store.add_account("alice")
    return store


def _appends(n: int, then: bytes = b"") -> bytes:
    return b"".join(b"A%d APPEND INBOX {%d+}\r\n%s\r\n" % (i, len(MSG1), MSG1)
                    for i in range(n)) + then


def test_appends_run_side_by_side_and_answer_in_order() -> None:
    """Three pipelined APPENDs reach the store before any is durable; finished in
    reverse order, they are still answered A0, A1, A2, and a NOOP after them waits."""
    store = _store()
    c = Conn(store)
    c.login()
    out = c.send(_appends(3, b"N NOOP\r\n"))
    assert len(store.pending) == 3
    assert b"A0 " not in out and b"N OK" not in out
    store.finish(2)
    store.finish(1)
    assert c.out() == b""
    store.finish(0)
    out = c.out()
    tags = re.findall(rb"^(\w+) OK", out, re.M)
    assert tags == [b"A0", b"A1", b"A2", b"N"], out
    uids = [int(u) for u in re.findall(rb"APPENDUID \d+ (\d+)", out)]
    assert len(uids) == 3 and len(set(uids)) == 3


def test_pipelined_appends_are_bounded() -> None:
    """No more than ``max_pipelined_appends`` APPENDs are in flight; the rest wait
    unread."""
    store = _store()
    c = Conn(store, settings=IMAPServerSettings(max_pipelined_appends=2))
    c.login()
    c.send(_appends(4))
    assert len(store.pending) == 2
    store.finish(0)
    assert len(store.pending) == 3
    for i in (1, 2):
        store.finish(i)
    assert len(store.pending) == 4
    store.finish(3)
    assert re.findall(rb"^(\w+) OK", c.out(), re.M) == [b"A0", b"A1", b"A2", b"A3"]


def test_selected_mailbox_sees_pipelined_appends() -> None:
    """With the target selected, the EXISTS of pipelined APPENDs come before the tagged
    replies and the count matches."""
    store, acc = make_store()
    c = Conn(store)
    c.login()
    c.select()
    out = c.send(_appends(3, b"N NOOP\r\n"))
    assert re.findall(rb"^(\w+) OK", out, re.M) == [b"A0", b"A1", b"A2", b"N"]
    assert b"* 3 EXISTS" in out
    assert acc is not None


def test_command_held_behind_appends_is_dropped_cleanly_on_disconnect() -> None:
    """An APPEND that does not parse waits behind the running ones (its body already in
    a sink); when the client goes away before it runs, its sink is aborted."""
    store = _store()
    c = Conn(store, settings=IMAPServerSettings(append_memory=10))
    c.login()
    c.send(_appends(1) + b"B APPEND INBOX {%d+}\r\n%s trailing junk\r\n" % (len(MSG1), MSG1))
    assert len(store.pending) == 1
    held = c.proto._held
    assert held is not None
    sinks = [p.sink for p in held.parts if hasattr(p, "sink")]
    assert len(sinks) == 1
    c.proto.connectionLost(None)
    assert sinks[0].aborted  # type: ignore[attr-defined]
