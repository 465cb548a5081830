"""Bodies fsynced alongside their commit (mxd.store.unsynced): recorded until durable,
checked after a crash (intact ones kept, the others' messages removed as by an
expunge), and a failed body fsync undoes its committed message at once."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from mxd.store.blobs import FileBlobWriter
from mxd.store.interfaces import (
    Delivery,
    MessageProps,
    OutboundMessage,
    OutboundRecipient,
    StoreError,
)
from tests.store.helpers import open_store
from tests.store.test_contract import Contract

BODY = b"Subject: overlap\r\n\r\n" + b"x" * 3000 + b"\r\n"


def _pool(h: Any) -> None:
    """Have the body-file pool filled (the first writer comes from tmp/ and starts it)."""
    h.store.new_blob().abort()
    assert h.store._files.pooled_ids()


def _rows(data: Path, sql: str) -> list[Any]:
    with sqlite3.connect(data / "mxd.sqlite3") as db:
        return db.execute(sql).fetchall()


def _appended(tmp_path: Path) -> tuple[Path, Any, Contract, int, int]:
    """An inline store with its pool filled, an account, its INBOX and one APPEND in it:
    (data dir, harness, contract, account id, INBOX id)."""
    data = tmp_path / "data"
    h = open_store(data, inline=True)
    _pool(h)
    c = Contract(h.store)
    a = c.account()
    inbox = c.box(a)
    c.run(h.store.append(inbox, c.blob(BODY), frozenset()))
    return data, h, c, a, inbox


def test_append_overlaps_and_its_entry_goes_with_the_next_commit(tmp_path: Path) -> None:
    """An APPEND's pooled body is fsynced alongside the commit and recorded in
    unsynced_blobs; the next transaction (or the close) drops the entry.  A delivery
    with an outbound part does not overlap."""
    data, h, c, a, inbox = _appended(tmp_path)
    assert h.store._writer.overlapped == 1
    assert len(_rows(data, "SELECT blob_id FROM unsynced_blobs")) == 1
    c.run(h.store.get_mailbox(a, "INBOX"))  # any later transaction
    assert _rows(data, "SELECT blob_id FROM unsynced_blobs") == []
    out = OutboundMessage("a@example.test", (OutboundRecipient("x@remote.test"),))
    c.run(h.store.accept(c.blob(BODY), [Delivery(a)], MessageProps(), out, "q1"))
    assert h.store._writer.overlapped == 1
    c.run(h.store.deliver(c.blob(BODY), [Delivery(a)], MessageProps()))
    assert h.store._writer.overlapped == 2
    h.close()
    assert _rows(data, "SELECT blob_id FROM unsynced_blobs") == []
    assert _rows(data, "SELECT count(*) FROM messages") == [(3,)]


def test_restart_keeps_intact_bodies_and_removes_lost_ones(tmp_path: Path) -> None:
    """As a crash would leave them: two entries, one body intact, one truncated (its
    pages lost).  The next open keeps the first, removes the second's messages (both
    copies) with a VANISHED record and its file, and empties the table."""
    data = tmp_path / "data"
    h = open_store(data, inline=True)
    c = Contract(h.store)
    a = c.account()
    inbox, trash = c.box(a), c.box(a, "Trash")
    good_body, lost_body = BODY, BODY.replace(b"overlap", b"lost")
    c.run(h.store.append(inbox, c.blob(good_body), frozenset()))
    c.run(h.store.append(inbox, c.blob(lost_body), frozenset()))
    c.run(h.store.copy(inbox, [2], trash))
    blobs = dict(_rows(data, "SELECT uid, blob_id FROM messages WHERE mailbox_id = %d" % inbox))
    h.close()
    with sqlite3.connect(data / "mxd.sqlite3") as db:
        for blob_id, body in ((blobs[1], good_body), (blobs[2], lost_body)):
            db.execute("INSERT INTO unsynced_blobs VALUES (?, ?, ?)",
                       (blob_id, len(body), hashlib.blake2b(body, digest_size=16).digest()))
    lost = h.store.blob_path(blobs[2])
    lost.write_bytes(b"")
    h = open_store(data, inline=True)
    try:
        c = Contract(h.store)
        assert [m.uid for m in c.run(h.store.list_messages(inbox))] == [1]
        assert c.run(h.store.list_messages(trash)) == []
        assert c.run(h.store.list_vanished(inbox)) == [2]
        assert c.run(h.store.list_vanished(trash)) == [1]
        assert h.store.read_blob_head(blobs[1], 10_000) == good_body
        assert not lost.exists()
        assert _rows(data, "SELECT * FROM unsynced_blobs") == []
    finally:
        h.close()


def test_a_failed_body_fsync_undoes_the_committed_message(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The body's fsync fails after the rows committed: the APPEND fails, its message
    is gone again (no row, no entry), and the next APPEND works."""
    data = tmp_path / "data"
    h = open_store(data, inline=True)
    _pool(h)
    try:
        c = Contract(h.store)
        a = c.account()
        inbox = c.box(a)
        real = FileBlobWriter._sync

        def failing(self: FileBlobWriter) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(FileBlobWriter, "_sync", failing)
        assert isinstance(c.fail(h.store.append(inbox, c.blob(BODY), frozenset())), StoreError)
        monkeypatch.setattr(FileBlobWriter, "_sync", real)
        assert c.run(h.store.list_messages(inbox)) == []
        assert _rows(data, "SELECT count(*) FROM blobs") == [(0,)]
        assert c.run(h.store.append(inbox, c.blob(BODY), frozenset())) == 2
        assert _rows(data, "SELECT count(*) FROM unsynced_blobs") == [(1,)]
    finally:
        h.close()
    assert _rows(data, "SELECT count(*) FROM unsynced_blobs") == [(0,)]


def test_a_lone_failing_operation_rolls_back_alone_and_the_entries_are_dropped_later(
        tmp_path: Path) -> None:
    """An operation alone in its batch runs without a savepoint: when it fails, its
    whole transaction rolls back (none of its rows stay), including the dropping of
    earlier bodies' unsynced_blobs entries, which the next transaction then does."""
    data, h, c, a, inbox = _appended(tmp_path)
    assert len(_rows(data, "SELECT blob_id FROM unsynced_blobs")) == 1
    before = _rows(data, "SELECT uidnext, highestmodseq FROM mailboxes WHERE id = "
                         f"{inbox}")
    with pytest.raises(StoreError):  # no such mailbox: fails after the entry was dropped
        c.run(h.store.deliver(c.blob(BODY), [Delivery(a, "Nowhere")], MessageProps()))
    assert len(_rows(data, "SELECT blob_id FROM unsynced_blobs")) == 1  # rolled back
    assert _rows(data, "SELECT uidnext, highestmodseq FROM mailboxes WHERE id = "
                       f"{inbox}") == before
    assert len(_rows(data, "SELECT uid FROM messages")) == 1
    c.run(h.store.get_mailbox(a, "INBOX"))  # the next transaction drops it
    assert _rows(data, "SELECT blob_id FROM unsynced_blobs") == []
    h.close()


def test_a_failing_operation_among_others_rolls_back_alone(tmp_path: Path) -> None:
    """In a batch of several operations each has its savepoint: one failing (here: a
    missing mailbox) leaves the others committed."""
    data = tmp_path / "data"
    h = open_store(data)  # a real writer thread: work queues up while a batch runs
    try:
        a = h.run(h.store.add_account("alice", "{}", ["alice@example.test"])).id
        h.run(h.store.get_mailbox(a, "INBOX"))

        def blob() -> Any:
            w = h.store.new_blob()
            w.write(BODY)
            return w

        batches = h.store._writer.batches
        ds = [h.store.deliver(blob(), [Delivery(a, box)], MessageProps())
              for box in ("INBOX", "Nowhere", "INBOX")]
        assert h.run(ds[0]) == [1]
        assert isinstance(h.fail(ds[1]), StoreError)
        assert h.run(ds[2]) == [2]
        assert h.store._writer.batches - batches <= 2  # two of them shared a batch
        assert [r[0] for r in _rows(data, "SELECT uid FROM messages ORDER BY uid")] == [1, 2]
    finally:
        h.close()
