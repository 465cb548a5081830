"""The mailbox state shared by sessions (mxd.imap.mailboxstate) and the per-session view:
compact columns, one load per mailbox, changes and expunges reported to every session."""

from __future__ import annotations

import re
import sys
import tracemalloc
from array import array
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from mxd.imap import mailboxstate
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
    """Two sessions selecting INBOX share one state; the store is listed in full once,
    also for a session that comes soon after both left; later the state is dropped."""
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
    # Kept (and current) for a while after the last session: a new one reuses it.
    store.put(store.get_account("alice").result, "INBOX", MSG1)  # type: ignore[attr-defined]
    c = Conn(counting, factory=a.factory)  # type: ignore[arg-type]
    c.login()
    assert b"* 51 EXISTS" in c.select()
    assert counting.full_listings == 1
    c.cmd("X LOGOUT")
    a.clock.advance(a.factory.states.linger - 1)
    assert a.factory.states.get(state.mailbox_id) is state
    a.clock.advance(1)
    assert a.factory.states.get(state.mailbox_id) is None  # dropped a while after the last


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


class _Member:
    def __init__(self, uids: list[int]) -> None:
        self.uids = array("I", uids)
        self.pending: set[int] = set()

    def contains(self, uid: int) -> bool:
        return uid in set(self.uids)

    def expunged_elsewhere(self, uids: set[int]) -> None:
        self.pending |= uids

    def changed(self, change: object) -> None:
        pass


def test_large_expunge_seen_by_several_sessions() -> None:
    """Removing 4,000 of 5,000 messages shown by three sessions: each gets all 4,000 as
    pending, each ghost counts three holders, the columns keep the other 1,000."""
    st = MailboxState(1)
    now = datetime(2024, 1, 1, tzinfo=UTC)
    st.load(MessageInfo(u, u, frozenset(), now, u, f"{u:032x}") for u in range(1, 5001))
    members = [_Member(list(range(1, 5001))) for _ in range(3)]
    st.members.extend(members)  # type: ignore[arg-type]
    gone = list(range(1, 5001, 5)) + list(range(2, 5001, 5)) + list(range(3, 5001, 5)) + \
        list(range(4, 5001, 5))
    assert len(st.remove(gone)) == 4000
    assert list(st.uids) == list(range(5, 5001, 5))
    assert all(mb.pending == set(gone) for mb in members)
    assert len(st.ghosts) == 4000 and {n for _, n in st.ghosts.values()} == {3}
    m = st.info(4995)
    assert m is not None and m.size == 4995 and m.blob_id == f"{4995:032x}"


@settings(max_examples=60, deadline=None)
@given(st_ops=hs.lists(hs.tuples(hs.sampled_from(["new", "flag", "remove", "apply"]),
                                 hs.integers(0, 50), hs.integers(1, 4)), max_size=40))
def test_state_follows_a_model(st_ops: list[tuple[str, int, int]]) -> None:
    """Random merges, flag changes, own STORE results and expunges: the columns always
    equal a dict model, and changed_since never misses a flag change."""
    now = datetime(2024, 1, 1, tzinfo=UTC)
    state = MailboxState(1)
    model: dict[int, MessageInfo] = {}
    flagged: dict[int, int] = {}  # uid -> modseq of its last flag change
    state.load([])
    modseq = 1
    next_uid = 1
    for op, k, n in st_ops:
        modseq += 1
        uids = sorted(model)
        if op == "new":
            batch = []
            for _ in range(n):
                m = MessageInfo(next_uid, modseq, frozenset(), now, next_uid,
                                "x%d" % next_uid if k % 2 else f"{next_uid:032x}")
                model[next_uid] = m
                batch.append(m)
                next_uid += 1
            state.merge(batch)
        elif uids and op in ("flag", "apply"):
            uid = uids[k % len(uids)]
            m = MessageInfo(uid, modseq, frozenset({f"$k{n}"}), now, model[uid].size,
                            model[uid].blob_id)
            model[uid] = m
            flagged[uid] = modseq
            (state.merge if op == "flag" else state.apply)([m])
        elif uids and op == "remove":
            gone = uids[k % len(uids):][:n]
            state.remove(gone)
            for u in gone:
                del model[u]
        assert list(state.uids) == sorted(model)
        assert [state.info(u) for u in state.uids] == [model[u] for u in sorted(model)]
        for since in (0, modseq // 2, modseq - 1):
            want = {u for u, ms in flagged.items() if ms > since and u in model}
            assert want <= set(state.changed_since(since))


def test_changed_since_before_the_trimmed_log_scans(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the change log is trimmed, an older modseq is answered by a scan of the
    columns, so a session that looked long ago still hears of every change."""
    monkeypatch.setattr(mailboxstate, "LOG_LIMIT", 4)
    now = datetime(2024, 1, 1, tzinfo=UTC)
    st = MailboxState(1)
    st.load([MessageInfo(u, 1, frozenset(), now, 1, "b%d" % u) for u in range(1, 11)])
    for k, uid in enumerate(range(1, 11), 2):
        st.merge([MessageInfo(uid, k, frozenset({"\\Seen"}), now, 1, "b%d" % uid)])
    assert st._log_floor > 1
    assert sorted(st.changed_since(1)) == list(range(1, 11))
    assert sorted(st.changed_since(9)) == [9, 10]


def test_lingering_state_is_not_reused_for_a_new_mailbox_with_the_same_id() -> None:
    """SQLite may give a new mailbox the id of a deleted one: a state kept after its
    last session is used again only for the same UIDVALIDITY, never after a delete."""
    from twisted.internet.defer import Deferred
    from twisted.internet.task import Clock

    from mxd.imap.mailboxstate import MailboxStates
    from mxd.store.interfaces import MailboxChange, MailboxInfo

    store, acc = make_store()
    box = store._find(acc.id, "INBOX")  # type: ignore[attr-defined]
    store.put(acc, "INBOX", MSG1)  # type: ignore[attr-defined]
    states = MailboxStates(Clock())
    info = store.get_mailbox(acc.id, "INBOX").result  # type: ignore[attr-defined]
    st = Deferred.fromCoroutine(states.acquire(store, info)).result  # type: ignore[arg-type]
    states.release(st)
    assert states.get(box.id) is st  # lingering
    again = Deferred.fromCoroutine(states.acquire(store, info)).result  # type: ignore[arg-type]
    assert again is st
    states.release(st)
    other = MailboxInfo(box.id, acc.id, "INBOX", info.uidvalidity + 1, 1, 0, None, True)
    fresh = Deferred.fromCoroutine(states.acquire(store, other)).result  # type: ignore[arg-type]
    assert fresh is not st
    states.release(fresh)
    fresh.on_change(MailboxChange(box.id, "deleted"))
    assert Deferred.fromCoroutine(states.acquire(store, other)).result is not fresh  # type: ignore[arg-type]
