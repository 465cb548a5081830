"""The sweep of unreferenced bodies on the shared body directory (mxd.store.orphans), on
the tests' private PostgreSQL cluster with two nodes on one database and one directory."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mxd.store.interfaces import Delivery, MessageInfo
from mxd.store.orphans import LOCK_KEY, SweepResult, SweepSettings
from mxd.store.sqlite import StoreSettings
from tests.store.helpers import StoreHarness, ThreadCalls, open_pg_store

HOUR = 3600.0


class _ClockCalls(ThreadCalls):
    """ThreadCalls plus ``callLater`` on a task.Clock (the store's grace timers)."""

    def __init__(self, clock: Any) -> None:
        super().__init__(clock)
        self.clock = clock

    def callLater(self, delay: float, f: Any, *a: Any, **kw: Any) -> Any:
        return self.clock.callLater(delay, f, *a, **kw)


def _plant(blob_dir: Path, data: bytes, age: float) -> str:
    """A body file no row references, last modified ``age`` seconds ago."""
    blob_id = secrets.token_hex(16)
    path = blob_dir / "blobs" / blob_id[:2] / blob_id
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    t = time.time() - age
    os.utime(path, (t, t))
    return blob_id


def _one_kept_message(h: Any) -> MessageInfo:
    """An account with one delivered message (a body a row references)."""
    acct = h.run(h.store.add_account("alice", "{}"))
    h.deliver_bytes(b"Subject: kept\r\n\r\nbody\r\n", [Delivery(acct.id)])
    inbox = h.run(h.store.get_mailbox(acct.id, "INBOX"))
    [msg] = h.run(h.store.list_messages(inbox.id))
    return msg  # type: ignore[no-any-return]


def _exists(blob_dir: Path, blob_id: str) -> bool:
    return (blob_dir / "blobs" / blob_id[:2] / blob_id).exists()


def _age(path: Path, age: float) -> None:
    t = time.time() - age
    os.utime(path, (t, t))


def _sweep(h: StoreHarness, now: float) -> SweepResult:
    result = h.run(h.store.sweep_orphans(now))  # type: ignore[attr-defined]
    assert isinstance(result, SweepResult)
    return result


def test_a_planted_orphan_goes_and_a_body_being_written_stays(
        pg_dsn: str, tmp_path: Path) -> None:
    """Node A delivered a message (its body made old); an old body no row names is
    planted (a node killed between the body's fsync and its commit), and a fresh one (a
    body another node is writing right now), an old empty file (another node's pool
    file) and two tmp/ leftovers, one old and one fresh.  Node B's first sweep removes the
    old tmp file and only notes the orphan; its sweep ``hold_off`` later removes the
    orphan, and nothing else."""
    blobs = tmp_path / "blobs"
    a = open_pg_store(pg_dsn, blobs)
    b = open_pg_store(pg_dsn, blobs)
    try:
        acct = a.run(a.store.add_account("alice", "{}"))
        [uid] = a.deliver_bytes(b"Subject: kept\r\n\r\nbody\r\n", [Delivery(acct.id)])
        [kept] = [p for p in a.body_files()]
        _age(kept, 2 * HOUR)
        orphan = _plant(blobs, b"Subject: orphan\r\n\r\n", 2 * HOUR)
        writing = _plant(blobs, b"Subject: in flight\r\n\r\n", 0)
        empty = _plant(blobs, b"", 2 * HOUR)
        (blobs / "tmp").mkdir(exist_ok=True)
        old_tmp, new_tmp = blobs / "tmp" / "old.tmp", blobs / "tmp" / "new.tmp"
        old_tmp.write_bytes(b"partial")
        new_tmp.write_bytes(b"partial")
        _age(old_tmp, 2 * HOUR)
        settings = SweepSettings(min_age=HOUR, hold_off=600.0)
        b.store._sweeper.settings = settings  # type: ignore[attr-defined]
        now = time.time()
        first = _sweep(b, now)
        assert first.locked and first.unreferenced == 1 and first.removed == ()
        assert first.tmp_removed == 1 and not old_tmp.exists()  # no row names tmp files
        assert _exists(blobs, orphan)
        second = _sweep(b, now + 601)
        assert second.removed == (orphan,)
        assert not _exists(blobs, orphan) and not old_tmp.exists()
        for blob_id in (writing, empty):
            assert _exists(blobs, blob_id), blob_id
        assert kept.exists() and new_tmp.exists()
        inbox = a.run(a.store.get_mailbox(acct.id, "INBOX"))
        [msg] = a.run(a.store.list_messages(inbox.id))
        assert msg.uid == uid
        with a.store.open_blob(msg.blob_id) as f:
            assert f.read() == b"Subject: kept\r\n\r\nbody\r\n"
    finally:
        a.close()
        b.close()


def test_one_node_sweeps_at_a_time(pg_dsn: str, tmp_path: Path) -> None:
    """While another node holds the sweep's advisory lock, a node's sweep does nothing
    (not even note candidates); once it is free, the sweep runs."""
    import psycopg

    blobs = tmp_path / "blobs"
    h = open_pg_store(pg_dsn, blobs)
    try:
        h.store._sweeper.settings = SweepSettings(min_age=HOUR, hold_off=0.0)  # type: ignore[attr-defined]
        orphan = _plant(blobs, b"Subject: orphan\r\n\r\n", 2 * HOUR)
        with psycopg.connect(pg_dsn, autocommit=True) as other:
            other.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
            assert _sweep(h, time.time()) == SweepResult(False)
            assert _exists(blobs, orphan)
            other.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        result = _sweep(h, time.time())
        assert result.locked and result.removed == (orphan,)
        assert not _exists(blobs, orphan)
    finally:
        h.close()


def test_a_body_whose_last_reference_went_is_not_swept_within_the_hold_off(
        pg_dsn: str, tmp_path: Path) -> None:
    """An expunged message's body that its node keeps for a grace period (old file, no
    row any more) is left alone by a sweep that sees it unreferenced for the first time:
    only a second sweep ``hold_off`` later may remove it."""
    blobs = tmp_path / "blobs"
    from twisted.internet import task

    from mxd.store.postgres import PostgresSettings, PostgresStore

    blobs.mkdir()
    calls = _ClockCalls(task.Clock())
    store = PostgresStore(pg_dsn, blobs, calls,  # type: ignore[arg-type]
                          settings=StoreSettings(unlink_grace=HOUR),
                          pg=PostgresSettings(pool_size=4, listen=False, connect_timeout=2.0))
    h = StoreHarness(store, calls, inline=False)
    h.run(store.open())
    try:
        acct = h.run(h.store.add_account("alice", "{}"))
        h.deliver_bytes(b"Subject: gone\r\n\r\n", [Delivery(acct.id)])
        [body] = h.body_files()
        _age(body, 2 * HOUR)
        inbox = h.run(h.store.get_mailbox(acct.id, "INBOX"))
        [msg] = h.run(h.store.list_messages(inbox.id))
        h.run(h.store.store_flags(inbox.id, [msg.uid], frozenset({"\\Deleted"}), "add"))
        assert h.run(h.store.expunge(inbox.id)) == [msg.uid]
        h.settle()
        assert body.exists()  # kept for its grace period by this node
        h.store._sweeper.settings = SweepSettings(min_age=HOUR, hold_off=600.0)  # type: ignore[attr-defined]
        now = time.time()
        assert _sweep(h, now).removed == ()
        assert _sweep(h, now + 300).removed == ()
        assert body.exists()
        assert _sweep(h, now + 601).removed == (msg.blob_id,)
        assert not body.exists()
    finally:
        h.close()


def test_bodies_a_dead_node_kept_for_their_grace_period_go_whatever_their_age(
        pg_dsn: str, tmp_path: Path) -> None:
    """A node killed during the grace period of bodies it dropped leaves them listed in
    its doomed list (mxd.store.leftovers).  The sweep removes a listed body without a
    row once unreferenced at two sweeps ``hold_off`` apart although it is younger than
    ``min_age``; a listed body whose row is still there (its drop rolled back) stays; the
    list goes once it is older than ``min_age`` and nothing in it is left to remove."""
    blobs = tmp_path / "blobs"
    h = open_pg_store(pg_dsn, blobs)
    try:
        msg = _one_kept_message(h)
        dropped = _plant(blobs, b"Subject: dropped\r\n\r\n", 60)  # a minute old
        doomed = blobs / "tmp" / "elsewhere.example-4242.0badcafe.doomed"
        doomed.write_text(f"{dropped}\n{msg.blob_id}\n")
        h.store._sweeper.settings = SweepSettings(min_age=HOUR, hold_off=600.0)  # type: ignore[attr-defined]
        now = time.time()
        assert _sweep(h, now).removed == ()
        assert _exists(blobs, dropped)
        result = _sweep(h, now + 601)
        assert result.removed == (dropped,)
        assert not _exists(blobs, dropped) and _exists(blobs, msg.blob_id)
        assert doomed.exists() and result.lists_removed == 0  # younger than min_age
        _age(doomed, 2 * HOUR)
        assert _sweep(h, now + 1200).lists_removed == 1
        assert not doomed.exists() and _exists(blobs, msg.blob_id)
    finally:
        h.close()


def test_pool_files_of_a_dead_process_of_this_host_go_and_live_lists_stay(
        pg_dsn: str, tmp_path: Path) -> None:
    """A node restarted on this host: the empty pooled files its dead predecessor listed
    in its pool list go at the next sweep (with its list); the pool lists of a live
    process and of another host stay, however old (they are not tmp leftovers)."""
    import socket

    blobs = tmp_path / "blobs"
    h = open_pg_store(pg_dsn, blobs)
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
        name = f"{socket.gethostname()}-{int(dead.stdout)}"
        pooled = [_plant(blobs, b"", 2 * HOUR) for _ in range(3)]
        dead_list = blobs / "tmp" / f"{name}.pool"
        dead_list.write_text("".join(b + "\n" for b in pooled))
        live_pool = blobs / "tmp" / f"{socket.gethostname()}-{os.getpid()}.pool"
        live_pool.write_text(pooled[0] + "\n")
        other_host = blobs / "tmp" / "elsewhere.example-1.pool"
        other_host.write_text(pooled[1] + "\n")
        for f in (dead_list, live_pool, other_host):
            _age(f, 2 * HOUR)
        h.store._sweeper.settings = SweepSettings(min_age=HOUR, hold_off=600.0)  # type: ignore[attr-defined]
        result = _sweep(h, time.time())
        assert result.dead_pooled == 3
        assert not any(_exists(blobs, b) for b in pooled) and not dead_list.exists()
        assert live_pool.exists() and other_host.exists()
    finally:
        h.close()


def test_files_of_a_node_of_another_host_go_once_it_has_been_gone_a_while(
        pg_dsn: str, tmp_path: Path) -> None:
    """A node of another host (its pid means nothing here) is known alive by its
    database connections (``application_name``).  Seen connected, then absent at two
    sweeps ``hold_off`` apart, with files older than ``min_age``: its pooled files that
    no row names, its pool list and its pin directory go.  A node never seen connected
    (an older mxd, say) keeps its files."""
    import psycopg

    from mxd.store.orphans import application_name

    blobs = tmp_path / "blobs"
    h = open_pg_store(pg_dsn, blobs)
    try:
        msg = _one_kept_message(h)
        gone_node, unknown_node = "node-b.example-77", "node-c.example-78"
        pooled = [_plant(blobs, b"", 2 * HOUR) for _ in range(2)]
        lst = blobs / "tmp" / f"{gone_node}.pool"
        lst.write_text(f"{pooled[0]}\n{msg.blob_id}\n")  # the second one was delivered
        pins = blobs / "held" / f"{gone_node}.0a0b0c0d"
        pins.mkdir(parents=True)
        os.link(blobs / "blobs" / msg.blob_id[:2] / msg.blob_id, pins / msg.blob_id)
        other = blobs / "tmp" / f"{unknown_node}.pool"
        other.write_text(f"{pooled[1]}\n")
        for p in (lst, pins, other):
            _age(p, 2 * HOUR)
        h.store._sweeper.settings = SweepSettings(min_age=HOUR, hold_off=600.0)  # type: ignore[attr-defined]
        now = time.time()
        app = application_name(gone_node)
        with psycopg.connect(pg_dsn, application_name=app):
            assert _sweep(h, now).dead_pooled == 0  # connected: alive
        with psycopg.connect(pg_dsn, autocommit=True) as db:  # its backend exits after
            deadline = time.monotonic() + 20
            while db.execute("SELECT count(*) FROM pg_stat_activity"
                             " WHERE application_name = %s", (app,)).fetchone()[0]:
                assert time.monotonic() < deadline, "the node's backend is still there"
                time.sleep(0.02)
        assert _sweep(h, now + 1).dead_pooled == 0  # gone for the first time
        assert _exists(blobs, pooled[0]) and lst.exists() and pins.exists()
        result = _sweep(h, now + 602)
        assert result.dead_pooled == 1
        assert not _exists(blobs, pooled[0]) and not lst.exists() and not pins.exists()
        assert _exists(blobs, msg.blob_id)
        assert _exists(blobs, pooled[1]) and other.exists()
        with h.store.open_blob(msg.blob_id) as f:
            assert f.read() == b"Subject: kept\r\n\r\nbody\r\n"
    finally:
        h.close()


def test_a_node_names_itself_on_its_database_connections(pg_dsn: str, tmp_path: Path) -> None:
    """What the sweep's liveness rests on: the store's connections carry its name."""
    from mxd.store.orphans import application_name

    h = open_pg_store(pg_dsn, tmp_path / "blobs")
    try:
        names = h.run(h.store.transact(lambda conn: [r[0] for r in conn.execute(
            "SELECT application_name FROM pg_stat_activity")]))
        assert application_name(h.store._files.proc_name) in names  # type: ignore[attr-defined]
    finally:
        h.close()


def test_main_process_cleans_up_after_a_dead_worker_on_postgresql(
        pg_dsn: str, tmp_path: Path) -> None:
    """``clean_dead_process`` (what a node's main process runs for a reaped worker) works
    on the PostgreSQL store too: the dead worker's unused pooled file goes at once."""
    import socket

    from mxd.store.blobs import DeadLeftovers

    blobs = tmp_path / "blobs"
    h = open_pg_store(pg_dsn, blobs)
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
        pooled = _plant(blobs, b"", 0)
        (blobs / "tmp" / f"{socket.gethostname()}-{int(dead.stdout)}.pool").write_text(
            pooled + "\n")
        assert h.run(h.store.clean_dead_process(int(dead.stdout))) == DeadLeftovers(0, 1)
        assert not _exists(blobs, pooled)
    finally:
        h.close()
