"""The mailbox state shared by sessions (mxd.imap.mailboxstate) and the per-session view:
compact columns, one load per mailbox, changes and expunges reported to every session."""

from __future__ import annotations

import re
import sys
import tracemalloc
from array import array
from datetime import UTC, datetime, timedelta, timezone

from mxd.imap.mailboxstate import MailboxState
from mxd.store.interfaces import MessageInfo
from tests.imap.helpers import MSG1, Conn, make_store

N = 3000


def _fill(n: int = N) -> tuple[object, object]:
    store, acc = make_store()
    for i in range(n):
        store.put(acc, "INBOX", MSG1, flags=["\\Seen"] if i % 3 else [])
    return store, acc


class CountingStore:
    """Counts full listings (since_modseq == 0) made through it."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.full_listings = 0

    def list_messages(self, mailbox_id: int, since_modseq: int = 0) -> object:
        if since_modseq == 0:
            self.full_listings += 1
        return self.inner.list_messages(mailbox_id, since_modseq)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_sessions_share_one_state_loaded_once() -> None:
    """Two sessions selecting INBOX share one state; the store is listed in full once."""
    store, _ = _fill(50)
    counting = CountingStore(store)
    a = Conn(counting)  # type: ignore[arg-type]
    b = Conn(counting, factory=a.factory)  # type: ignore[arg-type]
    for c in (a, b):
        c.login()
        assert b"* 50 EXISTS" in c.select()
    assert a.proto.view is not None and b.proto.view is not None
    state = a.proto.view.state
    assert state is b.proto.view.state
    assert counting.full_listings == 1
    a.cmd("X LOGOUT")
    assert a.factory.states.get(state.mailbox_id) is state
    b.cmd("X LOGOUT")
    assert a.factory.states.get(state.mailbox_id) is None  # dropped when the last leaves


def test_session_view_is_an_array_of_uids() -> None:
    """A session's own state for a selected mailbox is an array of 32-bit UIDs and a few
    small containers: no Python object per message (tracemalloc, second session)."""
    store, _ = _fill()
    a = Conn(store)
    a.login()
    a.select()
    b = Conn(store, factory=a.factory)
    b.login()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        assert f"* {N} EXISTS".encode() in b.select()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    view = b.proto.view
    assert view is not None
    assert isinstance(view.uids, array) and view.uids.itemsize == 4
    assert sys.getsizeof(view.uids) < 5 * N + 200
    # 3,000 messages: a dict or object per message would be hundreds of KiB.
    assert grown < 4 * N + 48 * 1024, grown


def test_state_columns_are_compact() -> None:
    """The shared state keeps columns (arrays), interned flag sets and packed blob ids."""
    st = MailboxState(1)
    when = datetime(2024, 2, 1, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    st.load(MessageInfo(u, u, frozenset({"\\Seen"} if u % 2 else ()), when, 100 + u,
                        f"{u:032x}") for u in range(1, 1001))
    assert len(st._flagsets) == 2
    assert st._blobs._packed is not None and len(st._blobs._packed) == 16 * 1000
    m = st.info(7)
    assert m == MessageInfo(7, 7, frozenset({"\\Seen"}), when, 107, f"{7:032x}")
    assert m is not None and m.internal_date.utcoffset() == timedelta(hours=2)
    assert st.info(5000) is None


def test_state_merge_and_changed_since() -> None:
    """Merged flag changes are named by changed_since; new UIDs are appended."""
    st = MailboxState(1)
    now = datetime(2024, 1, 1, tzinfo=UTC)
    st.load([MessageInfo(u, 1, frozenset(), now, 1, "b%d" % u) for u in (1, 2, 3)])
    st.merge([MessageInfo(2, 5, frozenset({"\\Flagged"}), now, 1, "b2"),
              MessageInfo(9, 6, frozenset(), now, 1, "b9")])
    assert list(st.uids) == [1, 2, 3, 9] and st.modseq == 6
    assert list(st.changed_since(1)) == [2]
    assert st.flags(2) == frozenset({"\\Flagged"})


def test_expunge_elsewhere_stays_readable_until_reported() -> None:
    """A message expunged by another session stays fetchable in a session that has not
    been told (FETCH must not send EXPUNGE, RFC 3501 §7.4.1), and goes after it is."""
    store, _ = _fill(3)
    a = Conn(store)
    b = Conn(store, factory=a.factory)
    for c in (a, b):
        c.login()
        c.select()
    a.cmd("A1 STORE 2 +FLAGS (\\Deleted)")
    assert b"* 2 EXPUNGE" in a.cmd("A2 EXPUNGE")
    r = b.cmd("B1 FETCH 2 (FLAGS RFC822.SIZE)")
    assert re.search(rb"\* 2 FETCH \(FLAGS \(\\Deleted \\Seen\) RFC822.SIZE \d+\)", r), r
    assert b"EXPUNGE" not in r
    state = b.proto.view.state  # type: ignore[union-attr]
    assert 2 in state.ghosts
    assert b"* 2 EXPUNGE" in b.cmd("B2 NOOP")
    assert state.ghosts == {}


def test_flag_change_elsewhere_is_reported_once() -> None:
    """A STORE in one session is reported to the other as FETCH FLAGS, once, and not
    echoed back to the session that made it."""
    store, _ = _fill(3)
    a = Conn(store)
    b = Conn(store, factory=a.factory)
    for c in (a, b):
        c.login()
        c.select()
    assert b"* 3 FETCH (FLAGS (\\Flagged \\Seen))" in a.cmd("A1 STORE 3 +FLAGS (\\Flagged)")
    assert b"FETCH" not in a.cmd("A2 NOOP")
    r = b.cmd("B1 NOOP")
    assert r.count(b"FETCH") == 1 and b"* 3 FETCH (FLAGS (\\Flagged \\Seen))" in r
    assert b"FETCH" not in b.cmd("B2 NOOP")
