"""Derived values of delivered bodies computed once the store is quiet
(mxd.store.derived.Later), and how the embedded store uses it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred, fail, succeed

from mxd.store import derived
from mxd.store.interfaces import Delivery, MessageProps
from mxd.store.sqlite import SQLiteStore
from tests.store.helpers import StoreHarness, ThreadCalls


class Runs:
    """``run`` of a Later: records each batch; fires at once unless told to hold."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.hold: list[Deferred[object]] | None = None
        self.error: Exception | None = None

    def __call__(self, ids: list[str]) -> Deferred[object]:
        self.batches.append(list(ids))
        if self.error is not None:
            return fail(self.error)
        if self.hold is not None:
            d: Deferred[object] = Deferred()
            self.hold.append(d)
            return d
        return succeed(None)


@pytest.fixture
def world() -> Iterator[tuple[task.Clock, list[int], Runs, derived.Later]]:
    clock, activity, runs = task.Clock(), [0], Runs()
    yield clock, activity, runs, derived.Later(clock, lambda: activity[0], runs, quiet=0.02,
                                               max_age=1.0, batch=3, bound=10)


def test_values_wait_until_no_store_work_came_for_the_quiet_time(world: Any) -> None:
    clock, activity, runs, later = world
    later.add("a")
    clock.advance(0.01)
    assert runs.batches == []
    for _ in range(5):  # a delivery every 10 ms: never quiet for 20 ms
        activity[0] += 1
        clock.advance(0.02)
    assert runs.batches == [] and len(later) == 1
    clock.advance(0.02)  # no new work since the last look
    assert runs.batches == [["a"]] and len(later) == 0


def test_under_steady_deliveries_the_oldest_waits_max_age_at_most() -> None:
    clock, activity, runs = task.Clock(), [0], Runs()
    later = derived.Later(clock, lambda: activity[0], runs, quiet=0.02, max_age=1.0,
                          batch=3, bound=1000)
    later.add("a")
    for i in range(49):  # a delivery every 20 ms for 0.98 s: never quiet
        activity[0] += 1
        later.add(f"m{i}")
        clock.advance(0.02)
    assert runs.batches == []
    activity[0] += 1
    clock.advance(0.02)  # a has waited 1 s
    assert runs.batches == [["a", "m0", "m1"]]


def test_batches_are_bounded_and_follow_each_other_while_quiet(world: Any) -> None:
    clock, activity, runs, later = world
    for b in "abcdefg":
        later.add(b)
    clock.advance(0.02)
    assert runs.batches == [["a", "b", "c"]]
    clock.advance(0.02)
    clock.advance(0.02)
    assert runs.batches == [["a", "b", "c"], ["d", "e", "f"], ["g"]]
    assert later.derived == 7


def test_past_the_bound_a_batch_runs_even_while_busy(world: Any) -> None:
    clock, activity, runs, later = world
    runs.hold = []
    for i in range(9):
        later.add(str(i))
        activity[0] += 1
    assert runs.batches == []
    later.add("9")  # the tenth: the bound
    assert runs.batches == [["0", "1", "2"]]
    runs.hold.pop().callback(None)  # 7 left, under the bound: wait for quiet again
    assert len(runs.batches) == 1
    activity[0] += 1
    clock.advance(0.02)
    assert len(runs.batches) == 1
    clock.advance(0.02)
    assert runs.batches[1] == ["3", "4", "5"]


def test_flush_derives_everything_at_once(world: Any) -> None:
    clock, activity, runs, later = world
    for b in "abcde":
        later.add(b)
    activity[0] += 1
    done: list[object] = []
    later.flush().addCallback(done.append)
    assert runs.batches == [["a", "b", "c"], ["d", "e"]] and done == [None]
    assert later.flush().called  # nothing waits


def test_stop_drops_what_waits_and_refuses_more(world: Any) -> None:
    clock, activity, runs, later = world
    later.add("a")
    later.add("b")
    assert later.stop() == 2
    later.add("c")
    clock.advance(1)
    assert runs.batches == [] and len(later) == 0


def test_a_failing_batch_is_logged_and_the_next_goes_on(world: Any) -> None:
    clock, activity, runs, later = world
    runs.error = RuntimeError("disk gone")
    for b in "abcd":
        later.add(b)
    clock.advance(0.02)
    runs.error = None
    clock.advance(0.02)
    assert runs.batches == [["a", "b", "c"], ["d"]]


# -- the embedded store ----------------------------------------------------------------
class ClockCalls(ThreadCalls):
    """ThreadCalls plus ``callLater`` on a task.Clock: the store defers values."""

    def __init__(self, clock: task.Clock) -> None:
        super().__init__(clock)
        self.callLater = clock.callLater


def _msg(subject: str) -> bytes:
    return f"Subject: {subject}\r\nFrom: a@b.example\r\n\r\nbody\r\n".encode()


def _subject(rh: Any) -> dict[str, bytes]:
    return {"t.subject": rh(200).split(b"\r\n")[0]}


def _open(data: Path, clock: task.Clock, derive: bool = True) -> StoreHarness:
    """A store on ``data`` whose reactor has ``clock`` (so it defers values), open, with
    the test deriver registered unless told otherwise."""
    calls = ClockCalls(clock)
    store = SQLiteStore(data, calls)  # type: ignore[arg-type]
    harness = StoreHarness(store, calls, inline=False)
    harness.run(store.open())
    if derive:
        store.register_deriver("t", ("t.subject",), _subject)
    return harness


@pytest.fixture
def h(tmp_path: Path) -> Iterator[tuple[StoreHarness, task.Clock]]:
    clock = task.Clock()
    harness = _open(tmp_path / "data", clock)
    yield harness, clock
    harness.run(harness.store.close())


def _deliver(h: StoreHarness, account_id: int, subject: str) -> int:
    w = h.store.new_blob()
    w.write(_msg(subject))
    uids = h.run(h.store.deliver(w, [Delivery(account_id)], MessageProps()))
    return int(uids[0])


def test_a_delivery_is_acknowledged_before_its_values_which_follow_when_quiet(h: Any) -> None:
    harness, clock = h
    store = harness.store
    acct = harness.run(store.add_account("alice", "{}"))
    inbox = harness.run(store.get_mailbox(acct.id, "INBOX")).id
    uid = _deliver(harness, acct.id, "one")
    assert harness.run(store.get_derived(inbox, "t.subject")) == {}  # not yet
    clock.advance(0.02)  # quiet: the batch goes to the writer
    harness.run(store.flush_derived())
    assert harness.run(store.get_derived(inbox, "t.subject")) == {uid: b"Subject: one"}


@pytest.mark.parametrize("held", [False, True], ids=["file-gone", "file-held-by-a-reader"])
def test_values_of_a_body_removed_meanwhile_are_not_stored(h: Any, held: bool) -> None:
    """Its message expunged before the batch: nothing stored for it, and the others'
    values are (also when a reader still holds its file, so the row is gone but the
    file is there: the insert must not trip over the foreign key)."""
    harness, clock = h
    store = harness.store
    acct = harness.run(store.add_account("alice", "{}"))
    inbox = harness.run(store.get_mailbox(acct.id, "INBOX")).id
    gone = _deliver(harness, acct.id, "gone")
    kept = _deliver(harness, acct.id, "kept")
    if held:
        info = [m for m in harness.run(store.list_messages(inbox)) if m.uid == gone][0]
        store.hold_blob(info.blob_id)
    harness.run(store.store_flags(inbox, [gone], frozenset({"\\Deleted"}), "add"))
    assert harness.run(store.expunge(inbox, [gone])) == [gone]
    harness.run(store.flush_derived())
    assert harness.run(store.get_derived(inbox, "t.subject")) == {kept: b"Subject: kept"}
    rows = harness.run(store.transact(
        lambda conn: conn.execute("SELECT count(*) FROM blob_data").fetchone()[0]))
    assert rows == 1


def test_append_still_stores_its_values_with_the_message(h: Any) -> None:
    harness, clock = h
    store = harness.store
    acct = harness.run(store.add_account("alice", "{}"))
    inbox = harness.run(store.get_mailbox(acct.id, "INBOX")).id
    w = store.new_blob()
    w.write(_msg("appended"))
    uid = harness.run(store.append(inbox, w, frozenset()))
    assert harness.run(store.get_derived(inbox, "t.subject")) == {uid: b"Subject: appended"}


def test_values_still_waiting_at_close_are_derived_before_it_closes(tmp_path: Path) -> None:
    """A tool that filled the store (or a server stopping after a burst) closes it
    with values waiting: they are stored before the close completes."""
    clock = task.Clock()
    harness = _open(tmp_path / "data", clock)
    acct = harness.run(harness.store.add_account("alice", "{}"))
    uids = [_deliver(harness, acct.id, f"late {i}") for i in range(3)]
    harness.run(harness.store.close())  # before the store was quiet
    harness = _open(tmp_path / "data", clock, derive=False)
    store = harness.store
    inbox = harness.run(store.get_mailbox(acct.id, "INBOX")).id
    assert harness.run(store.get_derived(inbox, "t.subject")) == {
        uid: b"Subject: late %d" % i for i, uid in enumerate(uids)}
    harness.run(store.close())


def test_values_lost_to_a_crash_come_from_the_backfill_at_the_next_open(
        tmp_path: Path) -> None:
    """Waiting ids are in memory: a process that dies loses them; the next start's
    backfill computes the values."""
    clock = task.Clock()
    harness = _open(tmp_path / "data", clock)
    acct = harness.run(harness.store.add_account("alice", "{}"))
    uid = _deliver(harness, acct.id, "late")
    later = harness.store._later
    assert later is not None
    later.stop()  # as a crash would: the waiting ids are gone
    harness.run(harness.store.close())
    harness = _open(tmp_path / "data", clock)
    store = harness.store
    inbox = harness.run(store.get_mailbox(acct.id, "INBOX")).id
    assert harness.run(store.get_derived(inbox, "t.subject")) == {}
    while harness.run(store.backfill_derived()):
        pass
    assert harness.run(store.get_derived(inbox, "t.subject")) == {uid: b"Subject: late"}
    harness.run(store.close())
