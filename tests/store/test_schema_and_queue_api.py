"""Schema versions, migrations, and the queue's hooks: transact, commit_blob, ref/unref."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mxd.store.blobs import BlobError
from mxd.store.interfaces import Delivery, MessageProps, StoreError
from mxd.store.metadata import METADATA_MIGRATIONS
from mxd.store.queuedb import QUEUE_MIGRATIONS
from mxd.store.schema import STORE_MIGRATIONS, SchemaError, SchemaTooNew, migrate, split_sql
from mxd.store.watch import JOURNAL_MIGRATIONS
from tests.store.helpers import StoreHarness, open_store

QUEUE_V1 = ["CREATE TABLE q (id INTEGER PRIMARY KEY, blob_id TEXT NOT NULL REFERENCES blobs(id));"]
QUEUE_V2 = QUEUE_V1 + ["ALTER TABLE q ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;"]


def _versions(data_dir: Path) -> dict[str, int]:
    with sqlite3.connect(data_dir / "mxd.sqlite3") as c:
        return dict(c.execute("SELECT name, version FROM schema_version").fetchall())


def test_database_settings(store: StoreHarness, data_dir: Path) -> None:
    """The database runs in WAL mode with foreign keys on and synchronous=FULL."""
    def pragmas(conn: sqlite3.Connection) -> tuple[str, int, int]:
        return (conn.execute("PRAGMA journal_mode").fetchone()[0],
                conn.execute("PRAGMA synchronous").fetchone()[0],
                conn.execute("PRAGMA foreign_keys").fetchone()[0])

    assert store.run(store.store.transact(pragmas)) == ("wal", 2, 1)
    assert _versions(data_dir) == {"store": len(STORE_MIGRATIONS), "queue": len(QUEUE_MIGRATIONS),
                                   "metadata": len(METADATA_MIGRATIONS),
                                   "changes": len(JOURNAL_MIGRATIONS)}


def test_registered_schema_migrates_forward(data_dir: Path) -> None:
    """A component's tables are created at open and upgraded step by step later."""
    h = open_store(data_dir, schemas={"extra": QUEUE_V1})
    assert _versions(data_dir)["extra"] == 1
    h.close()
    h = open_store(data_dir, schemas={"extra": QUEUE_V2})
    assert _versions(data_dir)["extra"] == 2
    cols = h.run(h.store.transact(lambda c: [r[1] for r in c.execute("PRAGMA table_info(q)")]))
    assert cols == ["id", "blob_id", "attempts"]
    h.close()


def test_too_new_schema_fails_open(data_dir: Path) -> None:
    """A database from a newer mxd is refused with a clear SchemaTooNew error."""
    open_store(data_dir, schemas={"extra": QUEUE_V2}).close()
    with pytest.raises(SchemaTooNew, match="'extra' is at version 2.*knows only up to 1"):
        open_store(data_dir, schemas={"extra": QUEUE_V1})
    with sqlite3.connect(data_dir / "mxd.sqlite3") as c:
        c.execute("UPDATE schema_version SET version = 99 WHERE name = 'store'")
    with pytest.raises(SchemaTooNew, match="'store' is at version 99"):
        open_store(data_dir)


def test_failed_migration_rolls_back(tmp_path: Path) -> None:
    """A broken step leaves the component at its previous version."""
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    migrate(conn, "c", ["CREATE TABLE a (x);"])
    with pytest.raises(SchemaError, match="migration c 2 failed"):
        migrate(conn, "c", ["CREATE TABLE a (x);", "CREATE TABLE b (y); CREATE TABLE a (z);"])
    assert conn.execute("SELECT version FROM schema_version WHERE name='c'").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'b'").fetchone()[0] == 0
    conn.close()


def test_split_sql_keeps_triggers_whole() -> None:
    """Statements split at their real ends, a trigger body staying one statement."""
    stmts = split_sql("CREATE TABLE t (x);\nCREATE TRIGGER g AFTER INSERT ON t BEGIN\n"
                      "  UPDATE t SET x = 1;\nEND;\n")
    assert len(stmts) == 2 and stmts[1].endswith("END;")
    with pytest.raises(SchemaError):
        split_sql("CREATE TABLE t (x")


def test_register_schema_rules(store: StoreHarness) -> None:
    """Schemas must be registered before open, once per name."""
    with pytest.raises(StoreError, match="before open"):
        store.store.register_schema("late", [])


def test_transact_commits_or_rolls_back(data_dir: Path) -> None:
    """transact commits fn's work when it returns and rolls it back when it raises."""
    h = open_store(data_dir, schemas={"extra": QUEUE_V1})
    s = h.store
    w = s.new_blob()
    w.write(b"queued")
    blob_id = h.run(s.commit_blob(w))

    def enqueue(conn: sqlite3.Connection) -> int:
        s.ref_blob(conn, blob_id)
        return int(conn.execute("INSERT INTO q (blob_id) VALUES (?)", (blob_id,)).lastrowid or 0)

    qid = h.run(s.transact(enqueue))

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO q (blob_id) VALUES (?)", (blob_id,))
        raise ValueError("changed my mind")

    assert isinstance(h.fail(s.transact(broken)), ValueError)
    rows = h.run(s.transact(lambda c: c.execute("SELECT id FROM q").fetchall()))
    assert rows == [(qid,)]
    h.close()


def test_local_delivery_and_queue_share_one_blob(data_dir: Path) -> None:
    """commit_blob + deliver + queue reference use one file; it goes when the last
    reference (message or queue row) is dropped, after the commit."""
    h = open_store(data_dir, schemas={"extra": QUEUE_V1})
    s = h.store
    a = h.run(s.add_account("alice", "{}")).id
    w = s.new_blob()
    w.write(b"to alice and to the world")
    blob_id = h.run(s.commit_blob(w))
    path = s.blob_path(blob_id)
    assert path.exists()

    def enqueue(conn: sqlite3.Connection) -> None:
        s.ref_blob(conn, blob_id)
        conn.execute("INSERT INTO q (blob_id) VALUES (?)", (blob_id,))

    d1 = s.deliver(w, [Delivery(a)], MessageProps())
    d2 = s.transact(enqueue)
    assert h.run(d1) == [1]
    h.run(d2)
    (m,) = h.run(s.list_messages(h.run(s.get_mailbox(a, "INBOX")).id))
    assert m.blob_id == blob_id
    assert len(h.body_files()) == 1
    inbox = h.run(s.get_mailbox(a, "INBOX")).id
    h.run(s.store_flags(inbox, [1], frozenset({"\\Deleted"}), "add"))
    h.run(s.expunge(inbox))
    assert path.exists()  # the queue still holds it

    def dequeue(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM q WHERE blob_id = ?", (blob_id,))
        s.unref_blob(conn, blob_id)

    h.run(s.transact(dequeue))
    assert not path.exists()
    assert isinstance(h.fail(s.transact(lambda c: s.ref_blob(c, blob_id))), BlobError)
    # a durable writer whose blob is gone cannot be delivered again
    assert isinstance(h.fail(s.deliver(w, [Delivery(a)], MessageProps())), BlobError)
    h.close()


def test_unref_outside_transact_is_an_error(store: StoreHarness) -> None:
    """unref_blob needs the transact context (to remove the file after the commit)."""
    with pytest.raises(StoreError, match="inside transact"):
        store.store.unref_blob(None, "0" * 32)  # type: ignore[arg-type]


def test_upgrade_from_version_1_backfills_usage(data_dir: Path) -> None:
    """A version-1 database with messages opens upgraded, with storage use computed."""
    conn = sqlite3.connect(data_dir / "mxd.sqlite3", isolation_level=None)
    migrate(conn, "store", STORE_MIGRATIONS[:1])
    conn.executescript("""
        INSERT INTO accounts (id, name, secrets) VALUES (1, 'old', '{}');
        INSERT INTO mailboxes (id, account_id, name, uidvalidity, uidnext) VALUES (1, 1, 'INBOX', 7, 3);
        INSERT INTO blobs (id, size, refcount) VALUES ('00000000000000000000000000000001', 10, 0);
        INSERT INTO messages (mailbox_id, uid, modseq, internal_date, size, blob_id)
            VALUES (1, 1, 2, '2024-01-01T00:00:00+00:00', 10, '00000000000000000000000000000001'),
                   (1, 2, 3, '2024-01-01T00:00:00+00:00', 10, '00000000000000000000000000000001');
    """)
    conn.close()
    files_dir = data_dir / "blobs" / "00"
    files_dir.mkdir(parents=True)
    (files_dir / "00000000000000000000000000000001").write_bytes(b"0123456789")
    h = open_store(data_dir)
    assert _versions(data_dir)["store"] == len(STORE_MIGRATIONS) > 1
    assert h.run(h.store.get_usage(1)) == (20, None)
    (m1, m2) = h.run(h.store.list_messages(1))
    assert (m1.uid, m2.uid, m1.blob_id) == (1, 2, "00000000000000000000000000000001")
    # Step 4 (RFC 8514 save dates): messages older than the column get their internal date.
    when = datetime(2024, 1, 1, tzinfo=UTC)
    assert h.run(h.store.save_dates(1)) == {1: when, 2: when}
    h.close()


def test_commit_blob_after_deliver_returns_the_same_body(data_dir: Path) -> None:
    """The SMTP flow deliver-then-enqueue: commit_blob of an already delivered writer
    fires with the delivered body's id, and a queue reference keeps the file alive after
    the message is expunged."""
    h = open_store(data_dir, schemas={"extra": QUEUE_V1})
    s = h.store
    a = h.run(s.add_account("alice", "{}")).id
    w = s.new_blob()
    w.write(b"both")
    h.run(s.deliver(w, [Delivery(a)], MessageProps()))
    blob_id = h.run(s.commit_blob(w))
    h.run(s.transact(lambda c: s.ref_blob(c, blob_id)))
    inbox = h.run(s.get_mailbox(a, "INBOX"))
    (m,) = h.run(s.list_messages(inbox.id))
    assert m.blob_id == blob_id
    h.run(s.store_flags(inbox.id, [m.uid], frozenset({"\\Deleted"}), "add"))
    h.run(s.expunge(inbox.id))
    assert s.blob_path(blob_id).read_bytes() == b"both"
    h.close()
