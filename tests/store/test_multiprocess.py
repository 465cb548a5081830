"""One SQLite store shared by several processes (``[server] workers = N``): writes of
every process land once each, UIDs and modseqs stay unique and ordered, and each
process hears of the others' commits (mxd.store.watch)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from twisted.internet import task

from mxd.store.blobs import DeadLeftovers
from mxd.store.interfaces import Delivery, MailboxChange, MessageProps
from mxd.store.sqlite import StoreSettings
from tests.store.helpers import StoreHarness, ThreadCalls, open_store

WRITER_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from twisted.internet import defer, reactor
    from mxd.store.interfaces import Delivery, MessageProps
    from mxd.store.sqlite import SQLiteStore, StoreSettings

    data_dir, tag, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])

    async def main():
        store = SQLiteStore(data_dir, reactor, settings=StoreSettings(max_batch=8))
        await store.open()
        acct = await store.get_account("alice")
        ds = []
        for i in range(n):
            w = store.new_blob()
            w.write(b"Subject: %s-%d\\r\\n\\r\\nbody\\r\\n" % (tag.encode(), i))
            ds.append(store.deliver(w, [Delivery(acct.id)], MessageProps()))
            if i % 10 == 0:
                await defer.gatherResults(ds)
        await defer.gatherResults(ds)
        # A flag change per message too: modseqs interleave with the other process's.
        box = await store.get_mailbox(acct.id, "INBOX")
        msgs = await store.list_messages(box.id)
        mine = [m.uid for m in msgs if m.uid % 2 == (0 if tag == "a" else 1)]
        for uid in mine[:20]:
            await store.store_flags(box.id, [uid], frozenset({"$" + tag}), "add")
        print("BATCHES", store._writer.batches, store._writer.ops, flush=True)
        await store.close()

    def run():
        d = defer.ensureDeferred(main())
        d.addErrback(lambda f: (f.printTraceback(), setattr(sys, "exitcode", 1)))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
    sys.exit(getattr(sys, "exitcode", 0))
""")


def test_two_processes_write_concurrently_each_message_once(data_dir: Path) -> None:
    """Two processes deliver 150 messages each into one INBOX at the same time: 300
    messages, UIDs 1..300 without gaps or repeats, every modseq distinct per change, and
    each process still commits several operations per transaction."""
    h = open_store(data_dir)
    acct = h.run(h.store.add_account("alice", "{}", ["alice@example.test"]))
    start = h.run(h.store.get_mailbox(acct.id, "INBOX")).highestmodseq
    h.close()
    n = 150
    procs = [subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(data_dir), tag, str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for tag in ("a", "b")]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode(errors="replace")
        # Group commit still works with another process writing: fewer transactions
        # than operations (deliveries were submitted ten at a time).
        batches, ops = map(int, out.decode().split("BATCHES ")[1].split()[:2])
        assert batches < ops, (batches, ops)
    h = open_store(data_dir)
    try:
        box = h.run(h.store.get_mailbox(acct.id, "INBOX"))
        msgs = h.run(h.store.list_messages(box.id))
        assert [m.uid for m in msgs] == list(range(1, 2 * n + 1))
        assert box.uidnext == 2 * n + 1
        subjects = []
        for m in msgs:
            subjects.append(h.store.read_blob_head(m.blob_id, 64).split(b"\r\n")[0])
        assert sorted(subjects) == sorted(
            b"Subject: %s-%d" % (t, i) for t in (b"a", b"b") for i in range(n))
        # Each delivery and each flag change took its own modseq.
        assert box.highestmodseq == start + 2 * n + 40
        flagged = [m for m in msgs if m.flags & {"$a", "$b"}]
        assert len(flagged) == 40
        assert len({m.modseq for m in flagged}) == 40
    finally:
        h.close()


class ClockCalls(ThreadCalls):
    """ThreadCalls plus ``callLater`` on a task.Clock, so the store runs its watcher."""

    def __init__(self, clock: task.Clock) -> None:
        super().__init__(clock)
        self.clock = clock

    def callLater(self, delay: float, f: Any, *a: Any, **kw: Any) -> Any:
        return self.clock.callLater(delay, f, *a, **kw)


def _open_watching(data_dir: Path, clock: task.Clock,
                   settings: StoreSettings = StoreSettings()) -> StoreHarness:
    from mxd.store.sqlite import SQLiteStore

    calls = ClockCalls(clock)
    store = SQLiteStore(data_dir, calls, settings=settings)  # type: ignore[arg-type]
    h = StoreHarness(store, calls, inline=False)
    h.run(store.open())
    return h


def _until(h: StoreHarness, clock: task.Clock, pred: Any, what: str,
           timeout: float = 10.0) -> None:
    """Advance the watcher's clock and pump the store until ``pred()``."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout}s: {what}")
        clock.advance(0.2)
        h.calls.pump_once(0.02)
        while h.calls.pump_once(0):
            pass


def test_changes_of_another_store_reach_listeners(data_dir: Path) -> None:
    """A listener on store A hears of B's delivery ("exists"), flag change ("flags")
    and expunge ("expunge" with the UIDs), and of the mailbox's deletion."""
    clock = task.Clock()
    a = _open_watching(data_dir, clock)
    b = open_store(data_dir)
    try:
        acct = b.run(b.store.add_account("alice", "{}", ["alice@example.test"]))
        box_id = b.run(b.store.create_mailbox(acct.id, "Lists")).id
        heard: list[MailboxChange] = []
        a.store.subscribe(box_id, heard.append)
        a.settle()
        assert a.store._watcher is not None
        _until(a, clock, lambda: a.store._watcher.polls >= 2, "first polls")  # type: ignore[union-attr]
        assert heard == []

        uids = b.deliver_bytes(b"Subject: x\r\n\r\nx\r\n", [Delivery(acct.id, "Lists")])
        b.deliver_bytes(b"Subject: y\r\n\r\ny\r\n", [Delivery(acct.id, "Lists")])
        _until(a, clock, lambda: any(c.kind == "exists" for c in heard), "exists")
        box = b.run(b.store.get_mailbox(acct.id, "Lists"))
        assert heard[-1] == MailboxChange(box_id, "exists", (), box.highestmodseq)

        heard.clear()
        b.run(b.store.store_flags(box_id, uids, frozenset({"\\Deleted"}), "add"))
        _until(a, clock, lambda: any(c.kind == "flags" for c in heard), "flags")

        heard.clear()
        assert b.run(b.store.expunge(box_id)) == uids
        _until(a, clock, lambda: any(c.kind == "expunge" for c in heard), "expunge")
        assert [c.uids for c in heard if c.kind == "expunge"] == [tuple(uids)]

        heard.clear()
        b.run(b.store.delete_mailbox(acct.id, "Lists"))
        _until(a, clock, lambda: any(c.kind == "deleted" for c in heard), "deleted")
    finally:
        a.close()
        b.close()


def test_own_commits_do_not_wake_the_watcher(data_dir: Path) -> None:
    """``PRAGMA data_version`` moves only for other connections' commits: a store alone
    polls without a query per watched mailbox and hears each change once, from its
    own commit."""
    clock = task.Clock()
    a = _open_watching(data_dir, clock)
    try:
        acct = a.run(a.store.add_account("alice", "{}", ["alice@example.test"]))
        box = a.run(a.store.get_mailbox(acct.id, "INBOX"))
        heard: list[MailboxChange] = []
        a.store.subscribe(box.id, heard.append)
        w = a.store.new_blob()
        w.write(b"Subject: z\r\n\r\nz\r\n")
        a.run(a.store.deliver(w, [Delivery(acct.id)], MessageProps()))
        watcher = a.store._watcher
        assert watcher is not None
        _until(a, clock, lambda: watcher.polls >= 10, "polls")
        assert [c.kind for c in heard] == ["exists"]
        assert watcher.notices == 0
    finally:
        a.close()


def test_catch_up_reports_at_once(data_dir: Path) -> None:
    """``catch_up`` (what IMAP NOOP, CHECK, IDLE and SELECT call) delivers another
    store's commit without waiting for the watcher's next tick."""
    clock = task.Clock()
    a = _open_watching(data_dir, clock)
    b = open_store(data_dir)
    try:
        acct = b.run(b.store.add_account("alice", "{}", ["alice@example.test"]))
        box = b.run(b.store.get_mailbox(acct.id, "INBOX"))
        heard: list[MailboxChange] = []
        a.store.subscribe(box.id, heard.append)
        a.settle()
        b.deliver_bytes(b"Subject: now\r\n\r\nnow\r\n", [Delivery(acct.id)])
        polls = a.store._watcher.polls  # type: ignore[union-attr]
        a.run(a.store.catch_up())  # the clock does not move
        assert [c.kind for c in heard] == ["exists"]
        assert a.store._watcher.polls == polls + 1  # type: ignore[union-attr]
    finally:
        a.close()
        b.close()


def test_renames_of_another_store_reach_listeners(data_dir: Path) -> None:
    """B renames a mailbox A watches, with its inferior: A's listeners of both hear
    "renamed" (RENAME takes no modseq; the watcher compares names too), once."""
    clock = task.Clock()
    a = _open_watching(data_dir, clock)
    b = open_store(data_dir)
    try:
        acct = b.run(b.store.add_account("alice", "{}", ["alice@example.test"]))
        top = b.run(b.store.create_mailbox(acct.id, "Work")).id
        child = b.run(b.store.create_mailbox(acct.id, "Work/2026")).id
        heard: list[MailboxChange] = []
        a.store.subscribe(top, heard.append)
        a.store.subscribe(child, heard.append)
        a.settle()
        _until(a, clock, lambda: a.store._watcher.polls >= 2, "first polls")  # type: ignore[union-attr]
        b.run(b.store.rename_mailbox(acct.id, "Work", "Play"))
        _until(a, clock, lambda: len(heard) >= 2, "renamed")
        assert sorted((c.mailbox_id, c.kind) for c in heard) == [(top, "renamed"),
                                                                 (child, "renamed")]
        b.deliver_bytes(b"Subject: x\r\n\r\nx\r\n", [Delivery(acct.id, "Play")])
        _until(a, clock, lambda: len(heard) >= 3, "exists after the rename")
        assert [c.kind for c in heard[2:]] == ["exists"]
    finally:
        a.close()
        b.close()


def test_account_changes_of_another_store_reach_listeners(data_dir: Path) -> None:
    """Names, subscriptions and annotations changed by B reach A's ``on_account_changes``
    listener as AccountChange values, in order; A's own changes do not; a change
    B makes before A listens is not replayed."""
    from mxd.store.interfaces import AccountChange
    from mxd.store.metadata import SERVER, SQLiteMetadata

    clock = task.Clock()
    a = _open_watching(data_dir, clock)
    b = open_store(data_dir)
    try:
        acct = b.run(b.store.add_account("alice", "{}", ["alice@example.test"]))
        b.run(b.store.create_mailbox(acct.id, "Before"))
        heard: list[AccountChange] = []
        a.store.on_account_changes(heard.extend)
        a.settle()
        _until(a, clock, lambda: a.store._watcher.polls >= 2, "first polls")  # type: ignore[union-attr]
        box = b.run(b.store.create_mailbox(acct.id, "Work"))
        b.run(b.store.set_subscribed(acct.id, "Work", True))
        b.run(b.store.rename_mailbox(acct.id, "Work", "Play"))
        meta = SQLiteMetadata(b.store)
        b.run(meta.set_metadata(acct.id, box.id, [("/private/comment", b"hi")]))
        b.run(meta.set_metadata(acct.id, SERVER, [("/shared/admin", b"x"),
                                                 ("/private/vendor/a", None)]))
        b.run(b.store.delete_mailbox(acct.id, "Play"))
        a.run(a.store.create_mailbox(acct.id, "Mine"))  # A's own: not passed back
        _until(a, clock, lambda: len(heard) >= 6, "six changes")
        assert heard == [
            AccountChange(acct.id, "name", "Work"),
            AccountChange(acct.id, "subscription", "Work", subscribed=True),
            AccountChange(acct.id, "name", "Play", old="Work"),
            AccountChange(acct.id, "metadata", "Play", entries=("/private/comment",)),
            AccountChange(acct.id, "metadata", None,
                          entries=("/shared/admin", "/private/vendor/a")),
            AccountChange(acct.id, "name", "Play", exists=False),
        ]
        b.deliver_bytes(b"Subject: y\r\n\r\ny\r\n", [Delivery(acct.id)])
        _until(a, clock, lambda: a.store._watcher.polls >= 20, "more polls")  # type: ignore[union-attr]
        assert len(heard) == 6
    finally:
        a.close()
        b.close()


def test_busy_database_fails_whole_operations_and_a_retry_stores_once(data_dir: Path) -> None:
    """Another program holds the write lock longer than the busy timeout: the delivery
    fails as a whole (StoreError, nothing written, the body file removed); retried once
    the lock is free it is stored exactly once."""
    import sqlite3

    from mxd.store.interfaces import StoreError

    h = open_store(data_dir, settings=StoreSettings(busy_timeout_ms=200))
    try:
        acct = h.run(h.store.add_account("alice", "{}", ["alice@example.test"]))
        box = h.run(h.store.get_mailbox(acct.id, "INBOX"))
        other = sqlite3.connect(data_dir / "mxd.sqlite3", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            w = h.store.new_blob()
            w.write(b"Subject: busy\r\n\r\nbusy\r\n")
            err = h.fail(h.store.deliver(w, [Delivery(acct.id)], MessageProps()))
            assert isinstance(err, StoreError) and "locked" in str(err)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert h.run(h.store.list_messages(box.id)) == []
        assert h.body_files() == []
        assert h.deliver_bytes(b"Subject: busy\r\n\r\nbusy\r\n", [Delivery(acct.id)]) == [1]
        assert [m.uid for m in h.run(h.store.list_messages(box.id))] == [1]
    finally:
        h.close()


def _pump(h: StoreHarness, clock: task.Clock, seconds: float = 0.0) -> None:
    """Advance ``clock`` and run what the store's threads handed back, until idle."""
    clock.advance(seconds)
    for _ in range(3):
        h.settle()
        while h.calls.pump_once(0.02):
            pass


def test_body_expunged_by_another_process_stays_readable(data_dir: Path) -> None:
    """With ``unlink_grace`` (workers sharing a store), B's expunge leaves the body on
    disk for the grace period: A reads it before it hears of the expunge; A's session
    still showing the message pins it (hold_blob), so A reads it after B removed the
    file too; A's release drops the pin, and then the body is gone for good."""
    from mxd.store.blobs import BlobError

    grace = StoreSettings(unlink_grace=60.0)
    clock_a, clock_b = task.Clock(), task.Clock()
    a = _open_watching(data_dir, clock_a, grace)
    b = _open_watching(data_dir, clock_b, grace)
    try:
        acct = b.run(b.store.add_account("alice", "{}", ["alice@example.test"]))
        box = b.run(b.store.get_mailbox(acct.id, "INBOX"))
        body = b"Subject: soon gone\r\n\r\nstill readable\r\n"
        b.deliver_bytes(body, [Delivery(acct.id)])
        [m] = b.run(b.store.list_messages(box.id))

        def listener(change: MailboxChange) -> None:  # as the IMAP mailbox state does
            if change.kind == "expunge":
                a.store.hold_blob(m.blob_id)

        a.store.subscribe(box.id, listener)
        _until(a, clock_a, lambda: a.store._watcher.polls >= 2, "first polls")  # type: ignore[union-attr]
        b.run(b.store.store_flags(box.id, [m.uid], frozenset({"\\Deleted"}), "add"))
        assert b.run(b.store.expunge(box.id)) == [m.uid]
        _pump(b, clock_b)
        # Not yet heard of in A: the file is still there, so A's FETCH still works.
        assert b.store.blob_path(m.blob_id).exists()
        with a.store.open_blob(m.blob_id) as f:
            assert f.read() == body
        _until(a, clock_a, lambda: m.blob_id in a.store._holds, "expunge heard in A")
        _pump(a, clock_a)  # the pin is made
        _pump(b, clock_b, 61.0)  # B's grace period ends: B removes the file
        assert not b.store.blob_path(m.blob_id).exists()
        with a.store.open_blob(m.blob_id) as f:
            assert f.read() == body
        assert a.store.read_blob_head(m.blob_id, 7) == body[:7]
        a.store.release_blob(m.blob_id)
        _pump(a, clock_a)
        assert not list((data_dir / "held").glob(f"*/{m.blob_id}"))
        try:
            a.store.open_blob(m.blob_id)
        except BlobError:
            pass
        else:
            raise AssertionError("the body is still readable after its last hold went")
    finally:
        a.close()
        b.close()


def test_grace_period_removes_unheld_bodies_and_close_removes_the_rest(data_dir: Path) -> None:
    """An expunged body nobody holds goes when the grace period ends; one still waiting
    when the store closes goes at close (no leftovers)."""
    clock = task.Clock()
    h = _open_watching(data_dir, clock, StoreSettings(unlink_grace=30.0))
    closed = False
    try:
        acct = h.run(h.store.add_account("alice", "{}", ["alice@example.test"]))
        box = h.run(h.store.get_mailbox(acct.id, "INBOX"))
        h.deliver_bytes(b"Subject: 1\r\n\r\none\r\n", [Delivery(acct.id)])
        h.deliver_bytes(b"Subject: 2\r\n\r\ntwo\r\n", [Delivery(acct.id)])
        first, second = h.run(h.store.list_messages(box.id))
        h.run(h.store.store_flags(box.id, [first.uid], frozenset({"\\Deleted"}), "add"))
        h.run(h.store.expunge(box.id))
        _pump(h, clock, 29.0)
        assert h.store.blob_path(first.blob_id).exists()
        _pump(h, clock, 2.0)
        assert not h.store.blob_path(first.blob_id).exists()
        h.run(h.store.store_flags(box.id, [second.uid], frozenset({"\\Deleted"}), "add"))
        h.run(h.store.expunge(box.id))
        _pump(h, clock, 1.0)
        assert h.store.blob_path(second.blob_id).exists()
        h.close()
        closed = True
        assert not h.store.blob_path(second.blob_id).exists()
        held = data_dir / "held"
        assert not held.exists() or list(held.iterdir()) == []  # its pin directory went
    finally:
        if not closed:
            h.close()


def test_pins_of_a_dead_process_are_removed_at_open(data_dir: Path) -> None:
    """A process killed while it pinned bodies leaves its pin directory; the next store
    to open on this host removes it, but not that of a process still running."""
    import os
    import socket

    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    held = data_dir / "held"
    stale = held / f"{host}-{int(dead.stdout)}.0001"
    live = held / f"{host}-{os.getppid()}.0002"
    other_host = held / "elsewhere.example-1.0003"
    for d in (stale, live, other_host):
        d.mkdir(parents=True)
        (d / ("0" * 32)).write_bytes(b"x")
    h = open_store(data_dir, settings=StoreSettings(unlink_grace=60.0))
    try:
        assert not stale.exists()
        assert live.exists() and other_host.exists()
    finally:
        h.close()


KILLED_SCRIPT = textwrap.dedent("""
    import secrets, sys, time
    from pathlib import Path
    from twisted.internet import defer, reactor
    from mxd.store.blobs import FileBlobWriter
    from mxd.store.interfaces import Delivery, MessageProps
    from mxd.store.sqlite import SQLiteStore, StoreSettings

    async def main():
        store = SQLiteStore(Path(sys.argv[1]), reactor, settings=StoreSettings(blob_pool=8))
        await store.open()
        acct = await store.get_account("alice")
        done = store.new_blob()  # pooled, delivered: its row keeps it
        done.write(b"Subject: kept\\r\\n\\r\\nkept\\r\\n")
        await store.deliver(done, [Delivery(acct.id)], MessageProps())
        store._files.pooled_ids()  # waits for the pool's refill
        half = store.new_blob()  # pooled, half written when the process dies
        assert half.pooled
        half.write(b"Subject: half")
        tmp = FileBlobWriter(store._files, secrets.token_hex(16))  # a body in tmp/
        tmp.write(b"Subject: tmp")
        store._files.pooled_ids()  # the refill has run: its files are listed
        print("IDS", done.blob_id, half.blob_id, flush=True)
        print("POOL", *sorted(store._files.pooled_ids()), flush=True)
        print("READY", flush=True)

    reactor.callWhenRunning(lambda: defer.ensureDeferred(main()).addErrback(
        lambda f: (f.printTraceback(), reactor.stop())))
    reactor.run()
""")


def test_files_of_a_killed_process_are_removed_and_a_live_ones_kept(data_dir: Path) -> None:
    """A process SIGKILLed while writing leaves a tmp file, a half-written pooled file
    and unused pooled files; ``clean_dead_process`` (what the main process runs once
    it has reaped a worker) removes those and keeps the delivered body, and touches
    nothing of a live process (another store writing into the same directories)."""
    h = open_store(data_dir, settings=StoreSettings(blob_pool=8))
    try:
        acct = h.run(h.store.add_account("alice", "{}", ["alice@example.test"]))
        h.store.new_blob().abort()  # the pool fills
        h.store._files.pooled_ids()
        live = h.store.new_blob()  # this (live) process's half-written pooled body
        assert live.pooled
        live.write(b"Subject: live")
        from mxd.store.blobs import FileBlobWriter

        live_tmp = FileBlobWriter(h.store._files, "ab" * 16)
        live_tmp.write(b"Subject: live tmp")
        p = subprocess.Popen([sys.executable, "-c", KILLED_SCRIPT, str(data_dir)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lines: dict[str, list[str]] = {}
        assert p.stdout is not None
        deadline = time.monotonic() + 60
        while "READY" not in lines:
            line = p.stdout.readline().decode()
            assert line and time.monotonic() < deadline, (line, lines)
            key, *rest = line.split()
            lines[key] = rest
        done_id, half_id = lines["IDS"]
        unused = lines["POOL"]
        files = h.store._files
        theirs = [f for f in files.tmp_dir.iterdir() if f".{p.pid}." in f.name
                  or f.name.startswith(f"{files.proc_name.rsplit('-', 1)[0]}-{p.pid}.")]
        assert {f.suffix for f in theirs} == {".tmp", ".pool"}, theirs

        # Alive: nothing is removed.
        assert h.run(h.store.clean_dead_process(p.pid)) == DeadLeftovers()
        p.kill()
        p.wait(10)
        assert h.run(h.store.clean_dead_process(p.pid)) == DeadLeftovers(1, 1 + len(unused))
        assert not any(f.exists() for f in theirs)
        assert files.path(done_id).exists()
        assert not files.path(half_id).exists()
        assert not any(files.path(b).exists() for b in unused)
        # This process's files are all still there.
        assert live._tmp == files.path(live.blob_id) and live._tmp.exists()
        assert live_tmp._tmp.exists()
        assert files.pool_list.exists()
        assert all(files.path(b).exists() for b in files.pooled_ids())
        live_tmp.abort()
        h.run(h.store.deliver(live, [Delivery(acct.id)], MessageProps()))
    finally:
        h.close()


def test_a_body_held_when_its_grace_period_ends_goes_at_its_release(data_dir: Path) -> None:
    """A body whose grace period ends while a reader here holds it stays until that
    reader releases it, and is removed then (not left behind)."""
    clock = task.Clock()
    h = _open_watching(data_dir, clock, StoreSettings(unlink_grace=30.0))
    try:
        acct = h.run(h.store.add_account("alice", "{}", ["alice@example.test"]))
        box = h.run(h.store.get_mailbox(acct.id, "INBOX"))
        h.deliver_bytes(b"Subject: 1\r\n\r\none\r\n", [Delivery(acct.id)])
        [m] = h.run(h.store.list_messages(box.id))
        h.run(h.store.store_flags(box.id, [m.uid], frozenset({"\\Deleted"}), "add"))
        h.run(h.store.expunge(box.id))
        h.store.hold_blob(m.blob_id)  # held after the commit, before the grace ends
        _pump(h, clock, 31.0)
        assert h.store.blob_path(m.blob_id).exists()
        h.store.release_blob(m.blob_id)
        _pump(h, clock, 31.0)
        assert not h.store.blob_path(m.blob_id).exists()
    finally:
        h.close()


DOOMED_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from twisted.internet import defer, reactor
    from mxd.store.sqlite import SQLiteStore, StoreSettings

    async def main():
        store = SQLiteStore(Path(sys.argv[1]), reactor,
                            settings=StoreSettings(unlink_grace=600.0, watch_interval=0))
        await store.open()
        acct = await store.get_account("alice")
        box = await store.get_mailbox(acct.id, "INBOX")
        other = await store.get_mailbox(acct.id, "Kept")
        gone, copied = await store.list_messages(box.id)
        await store.copy(box.id, [copied.uid], other.id)
        store.hold_blob(gone.blob_id)  # a session here still shows it: pinned
        await store.store_flags(box.id, [gone.uid, copied.uid], frozenset({"\\\\Deleted"}),
                                "add")
        await store.expunge(box.id)
        while not list(store._files.pin_dir.glob("*")):
            await defer.Deferred.fromCoroutine(_sleep())
        print("READY", flush=True)

    async def _sleep():
        from twisted.internet import task
        await task.deferLater(reactor, 0.02, lambda: None)

    reactor.callWhenRunning(lambda: defer.ensureDeferred(main()).addErrback(
        lambda f: (f.printTraceback(), reactor.stop())))
    reactor.run()
""")


def test_bodies_a_killed_process_kept_for_their_grace_period_are_removed(
        data_dir: Path) -> None:
    """A process (a worker) expunges two messages and is SIGKILLed during its grace
    period: one body had no other reference, the other is still in another mailbox.
    Once the main process has reaped it (``clean_dead_process``) and a grace period has
    passed, the first body's file is gone, the second stays, the dead process's pin is
    gone, and a session of another live process that pinned the first body still reads
    it."""
    clock, clock_r = task.Clock(), task.Clock()
    grace = StoreSettings(unlink_grace=30.0)
    h = _open_watching(data_dir, clock, grace)  # the main process
    r = _open_watching(data_dir, clock_r, grace)  # another worker, whose session shows it
    try:
        acct = h.run(h.store.add_account("alice", "{}", ["alice@example.test"]))
        box = h.run(h.store.get_mailbox(acct.id, "INBOX"))
        h.run(h.store.create_mailbox(acct.id, "Kept"))
        h.deliver_bytes(b"Subject: gone\r\n\r\ngone\r\n", [Delivery(acct.id)])
        h.deliver_bytes(b"Subject: copied\r\n\r\ncopied\r\n", [Delivery(acct.id)])
        gone, copied = h.run(h.store.list_messages(box.id))
        p = subprocess.Popen([sys.executable, "-c", DOOMED_SCRIPT, str(data_dir)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert p.stdout is not None
        line = p.stdout.readline().decode()
        assert line.strip() == "READY", line + p.stdout.read().decode(errors="replace")
        r.store.hold_blob(gone.blob_id)  # within the grace period
        _pump(r, clock_r)
        p.kill()
        p.wait(10)
        files = h.store._files
        host = files.proc_name.rsplit("-", 1)[0]
        assert list((data_dir / "held").glob(f"{host}-{p.pid}.*/{gone.blob_id}"))
        _pump(h, clock, 60.0)
        assert files.path(gone.blob_id).exists()  # no one else would ever remove it

        result = h.run(h.store.clean_dead_process(p.pid))
        assert result.doomed == (gone.blob_id,) and result.pins == 1
        assert not list((data_dir / "held").glob(f"{host}-{p.pid}.*"))
        assert not list(files.tmp_dir.glob(f"{host}-{p.pid}.*"))  # its lists went
        _pump(h, clock, 29.0)
        assert files.path(gone.blob_id).exists()  # a full grace period from now
        _pump(h, clock, 2.0)
        assert not files.path(gone.blob_id).exists()
        assert not list(files.tmp_dir.glob("*.doomed"))  # nothing left to remove
        with r.store.open_blob(gone.blob_id) as f:  # through the live worker's pin
            assert f.read() == b"Subject: gone\r\n\r\ngone\r\n"
        [kept] = h.run(h.store.list_messages(
            h.run(h.store.get_mailbox(acct.id, "Kept")).id))
        assert kept.blob_id == copied.blob_id
        with h.store.open_blob(kept.blob_id) as f:
            assert f.read() == b"Subject: copied\r\n\r\ncopied\r\n"
        r.store.release_blob(gone.blob_id)
        _pump(r, clock_r, 31.0)
        assert not list((data_dir / "held").glob(f"*/{gone.blob_id}"))
    finally:
        r.close()
        h.close()
