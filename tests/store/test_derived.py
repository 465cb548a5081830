"""Derived data stored with each body (IMailStore.register_deriver / get_derived /
backfill_derived): computed once at delivery, APPEND and accept, shared by COPY and
MOVE, gone with the body, backfilled in batches for bodies stored before, and never a
reason for a delivery to fail.  Contract tests run on MemoryStore and SQLiteStore."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mxd.store.interfaces import Delivery, MessageProps, ReadHead
from mxd.store.schema import STORE_MIGRATIONS
from mxd.store.testing import MemoryStore
from tests.store.helpers import open_store
from tests.store.test_contract import Contract

CALLS: list[bytes] = []


def subject_deriver(read_head: ReadHead) -> dict[str, bytes]:
    """A test deriver: the Subject line, and the size of the first read."""
    head = read_head(64)
    CALLS.append(head)
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"subject:"):
            return {"t.subject": line[8:].strip(), "t.len": b"%d" % len(head), "t.other": b"x"}
    return {"t.subject": b"", "t.len": b"%d" % len(head)}


def failing_deriver(read_head: ReadHead) -> dict[str, bytes]:
    raise ValueError("boom")


@pytest.fixture(params=["memory", "sqlite"])
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Contract]:
    CALLS.clear()
    if request.param == "memory":
        store: Any = MemoryStore()
        store.register_deriver("t", ("t.subject", "t.len"), subject_deriver)
        yield Contract(store)
        return
    h = open_store(tmp_path / "data", inline=True)
    h.store.register_deriver("t", ("t.subject", "t.len"), subject_deriver)
    try:
        yield Contract(h.store)
    finally:
        h.close()


def msg(subject: str) -> bytes:
    return f"Subject: {subject}\r\nFrom: a@example.test\r\n\r\nbody\r\n".encode()


def test_values_are_computed_once_at_delivery_and_append(c: Contract) -> None:
    """deliver to two mailboxes runs the deriver once; APPEND runs it too; only the
    registered kinds are kept ("t.other" is not)."""
    a = c.account()
    inbox, sent = c.box(a), c.box(a, "Sent")
    c.run(c.store.deliver(c.blob(msg("one")), [Delivery(a), Delivery(a, "Sent")], MessageProps()))
    assert len(CALLS) == 1
    c.run(c.store.append(inbox, c.blob(msg("two")), frozenset()))
    assert len(CALLS) == 2
    assert c.run(c.store.get_derived(inbox, "t.subject")) == {1: b"one", 2: b"two"}
    assert c.run(c.store.get_derived(sent, "t.subject")) == {1: b"one"}
    assert c.run(c.store.get_derived(inbox, "t.len")) == {1: b"44", 2: b"44"}
    assert c.run(c.store.get_derived(inbox, "t.other")) == {}
    assert c.run(c.store.get_derived(inbox, "t.subject", 2, 2)) == {2: b"two"}
    assert c.run(c.store.backfill_derived()) == 0  # nothing is missing


def test_copy_and_move_share_the_values(c: Contract) -> None:
    """COPY and MOVE share the body, so the copies have the values without a new run."""
    a = c.account()
    inbox, trash, sent = c.box(a), c.box(a, "Trash"), c.box(a, "Sent")
    c.run(c.store.append(inbox, c.blob(msg("one")), frozenset()))
    c.run(c.store.append(inbox, c.blob(msg("two")), frozenset()))
    c.run(c.store.copy(inbox, [1, 2], trash))
    c.run(c.store.move(inbox, [2], sent))
    assert len(CALLS) == 2
    assert c.run(c.store.get_derived(trash, "t.subject")) == {1: b"one", 2: b"two"}
    assert c.run(c.store.get_derived(sent, "t.subject")) == {1: b"two"}
    assert c.run(c.store.get_derived(inbox, "t.subject")) == {1: b"one"}


def test_a_failing_deriver_never_fails_the_delivery(c: Contract) -> None:
    """The message is stored without values; the other deriver's values are kept."""
    c.store.register_deriver("bad", ("t.bad",), failing_deriver)
    a = c.account()
    inbox = c.box(a)
    assert c.run(c.store.append(inbox, c.blob(msg("one")), frozenset())) == 1
    assert c.run(c.store.get_derived(inbox, "t.bad")) == {}
    assert c.run(c.store.get_derived(inbox, "t.subject")) == {1: b"one"}


def test_backfill_fills_bodies_stored_before_the_deriver(c: Contract) -> None:
    """Messages stored before registration have no values; backfill_derived computes
    them in batches of ``limit`` bodies until it reports 0."""
    c.store.register_deriver("late", ("t.late",), lambda rh: {"t.late": rh(9)})
    a = c.account()
    inbox = c.box(a)
    c.store.register_deriver("late", ("t.late",), lambda rh: (_ for _ in ()).throw(ValueError()))
    for i in range(5):
        c.run(c.store.append(inbox, c.blob(msg(f"m{i}")), frozenset()))
    assert c.run(c.store.get_derived(inbox, "t.late")) == {}
    c.store.register_deriver("late", ("t.late",), lambda rh: {"t.late": rh(9)})
    done = [c.run(c.store.backfill_derived(2)) for _ in range(4)]
    assert done == [2, 2, 1, 0]
    assert c.run(c.store.get_derived(inbox, "t.late")) == {i: b"Subject: " for i in range(1, 6)}


# -- SQLite: the table, the cascade, the migration ------------------------------------------

def test_values_go_with_the_body(tmp_path: Path) -> None:
    """Expunging the last message of a body removes its blob_data rows (the cascade)."""
    h = open_store(tmp_path / "data", inline=True)
    try:
        h.store.register_deriver("t", ("t.subject",), subject_deriver)
        c = Contract(h.store)
        a = c.account()
        inbox, trash = c.box(a), c.box(a, "Trash")
        c.run(h.store.append(inbox, c.blob(msg("one")), frozenset({"\\Deleted"})))
        c.run(h.store.copy(inbox, [1], trash))
        c.run(h.store.expunge(inbox))
        db = sqlite3.connect(h.store.db_path)
        assert db.execute("SELECT count(*) FROM blob_data").fetchone()[0] == 1  # Trash's copy
        c.run(h.store.store_flags(trash, [1], frozenset({"\\Deleted"}), "add"))
        c.run(h.store.expunge(trash))
        assert db.execute("SELECT count(*) FROM blob_data").fetchone()[0] == 0
        db.close()
    finally:
        h.close()


def test_an_older_store_is_upgraded_and_backfilled(tmp_path: Path) -> None:
    """A store at schema 3 (before blob_data) with messages opens at the new version
    without computing anything at open; the backfill then fills every body once, and
    values are right after it."""
    data = tmp_path / "data"
    h = open_store(data, inline=True)
    c = Contract(h.store)
    a = c.account()
    inbox = c.box(a)
    for i in range(3):
        c.run(h.store.append(inbox, c.blob(msg(f"old{i}")), frozenset()))
    h.close()
    # Back to schema 3: what the steps after it added is taken away again (today's
    # code cannot write rows of an older layout).
    db = sqlite3.connect(data / "mxd.sqlite3", isolation_level=None)
    db.executescript("DROP TABLE blob_data; ALTER TABLE messages DROP COLUMN save_date; "
                     "DROP TABLE unsynced_blobs; "
                     "UPDATE schema_version SET version = 3 WHERE name = 'store';")
    assert len(STORE_MIGRATIONS) == 6  # a later step must be taken away above too
    assert db.execute("SELECT version FROM schema_version WHERE name = 'store'").fetchone() == (3,)
    db.close()
    CALLS.clear()
    h = open_store(data, inline=True)
    try:
        h.store.register_deriver("t", ("t.subject",), subject_deriver)
        c = Contract(h.store)
        assert CALLS == []  # nothing computed at open
        assert c.run(h.store.get_derived(inbox, "t.subject")) == {}
        c.run(h.store.append(inbox, c.blob(msg("new")), frozenset()))
        assert c.run(h.store.get_derived(inbox, "t.subject")) == {4: b"new"}
        assert c.run(h.store.backfill_derived(64)) == 3
        assert c.run(h.store.backfill_derived(64)) == 0
        assert c.run(h.store.get_derived(inbox, "t.subject")) == {
            1: b"old0", 2: b"old1", 3: b"old2", 4: b"new"}
    finally:
        h.close()


def test_a_long_header_is_read_from_the_file(tmp_path: Path) -> None:
    """A deriver asking for more than the writer kept in memory reads the file."""
    h = open_store(tmp_path / "data", inline=True)
    try:
        h.store.register_deriver("n", ("t.n",), lambda rh: {"t.n": b"%d" % len(rh(100_000))})
        c = Contract(h.store)
        inbox = c.box(c.account())
        body = b"X-Pad: " + b"a" * 90_000 + b"\r\n\r\nbody\r\n"
        c.run(h.store.append(inbox, c.blob(body), frozenset()))
        assert c.run(h.store.get_derived(inbox, "t.n")) == {1: b"%d" % len(body)}
    finally:
        h.close()


def test_backfill_looks_at_a_bounded_window_per_batch(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Each batch looks at no more than WINDOW bodies (here 2), windows whose bodies all
    have their values report 1 so the pass goes on, and the pass fills every body."""
    from mxd.store import derived

    monkeypatch.setattr(derived, "WINDOW", 2)
    h = open_store(tmp_path / "data", inline=True)
    try:
        c = Contract(h.store)
        inbox = c.box(c.account())
        h.store.register_deriver("t", ("t.subject",), subject_deriver)
        for i in range(4):
            c.run(h.store.append(inbox, c.blob(msg(f"new{i}")), frozenset()))
        h.store.register_deriver("late", ("t.late",), lambda rh: {"t.late": rh(9)})
        for i in range(3):
            c.run(h.store.append(inbox, c.blob(msg(f"m{i}")), frozenset()))
        results = []
        while (n := c.run(h.store.backfill_derived(64))) and len(results) < 20:
            results.append(n)
        assert all(0 < r <= 2 for r in results) and len(results) >= 2
        assert len(c.run(h.store.get_derived(inbox, "t.late"))) == 7
        assert c.run(h.store.backfill_derived(64)) == 0
    finally:
        h.close()
