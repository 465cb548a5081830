"""``SQLiteStore.accept``: local copies, queue rows and body references in one transaction."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mxd.store import queuedb
from mxd.store.interfaces import (
    Delivery,
    MessageProps,
    OutboundMessage,
    OutboundRecipient,
    QuotaExceeded,
    StoreError,
)
from mxd.store.sqlite import StoreSettings
from tests.store.helpers import StoreHarness, open_store

ENVELOPE = OutboundMessage("a@example.test", (OutboundRecipient("x@remote.test"),), size=4)


def _account(h: StoreHarness, name: str = "alice") -> int:
    return h.run(h.store.add_account(name, "{}")).id


def _counts(h: StoreHarness) -> tuple[int, int, int]:
    """(message rows, queue messages, body files referenced in ``blobs``)."""
    def op(c: sqlite3.Connection) -> tuple[int, int, int]:
        return (c.execute("SELECT count(*) FROM messages").fetchone()[0],
                c.execute("SELECT count(*) FROM queue_messages").fetchone()[0],
                c.execute("SELECT count(*) FROM blobs").fetchone()[0])
    return h.run(h.store.transact(op))


def _blob(h: StoreHarness, data: bytes = b"body") -> object:
    w = h.store.new_blob()
    w.write(data)
    return w


def test_local_and_queued_share_one_body(store: StoreHarness) -> None:
    """Two local copies and a queue row: one body with three references, queued under the
    given id with its envelope."""
    a, b = _account(store), _account(store, "bob")
    w = _blob(store)
    got = store.run(store.store.accept(w, [Delivery(a), Delivery(b)], MessageProps(),
                                       ENVELOPE, "q1"))
    assert got.queue_id == "q1" and len(got.uids) == 2
    assert _counts(store) == (2, 1, 1)
    m = store.run(store.store.transact(lambda c: queuedb.get_message(c, "q1")))
    assert m is not None and [r.address for r in m.recipients] == ["x@remote.test"]
    refs = store.run(store.store.transact(
        lambda c: c.execute("SELECT refcount FROM blobs").fetchone()[0]))
    assert refs == 3


def test_refused_local_part_queues_nothing(data_dir: Path) -> None:
    """Over quota: QuotaExceeded, and neither the local copy nor the queue row nor the
    body is kept."""
    h = open_store(data_dir, settings=StoreSettings(quota_bytes=2))
    try:
        a = _account(h)
        err = h.fail(h.store.accept(_blob(h), [Delivery(a)], MessageProps(), ENVELOPE, "q1"))
        assert isinstance(err, QuotaExceeded)
        assert _counts(h) == (0, 0, 0)
    finally:
        h.close()


def test_taken_queue_id_stores_nothing(store: StoreHarness) -> None:
    """A queue id already in use fails the whole accept, local copies included."""
    a = _account(store)
    store.run(store.store.accept(_blob(store), [], MessageProps(), ENVELOPE, "q1"))
    err = store.fail(store.store.accept(_blob(store), [Delivery(a)], MessageProps(),
                                        ENVELOPE, "q1"))
    assert isinstance(err, StoreError) and "q1" in str(err)
    assert _counts(store) == (0, 1, 1)


def test_local_only_and_queue_only(store: StoreHarness) -> None:
    """Without an outbound part nothing is queued; without targets only the queue row."""
    a = _account(store)
    assert store.run(store.store.accept(_blob(store), [Delivery(a)], MessageProps())).queue_id is None
    assert _counts(store) == (1, 0, 1)
    store.run(store.store.accept(_blob(store), [], MessageProps(), ENVELOPE, "q2"))
    assert _counts(store) == (1, 1, 2)
