"""Versioned SQLite schema: the store's tables and forward-only migrations.

Each component (the store itself as ``"store"``, the outbound queue as ``"queue"``, ...)
has a list of migration steps; step *i* (0-based) takes the component from version *i*
to *i + 1*.  The ``schema_version`` table records each component's version.  Opening a
database whose recorded version is newer than the code's list fails with
``SchemaTooNew`` instead of running old code against a newer layout.
"""

from __future__ import annotations

import sqlite3

from mxd.store.interfaces import StoreError


class SchemaError(StoreError):
    """The database schema cannot be used or upgraded."""


class SchemaTooNew(SchemaError):
    """The database was written by a newer mxd than this one."""


STORE_MIGRATIONS: list[str] = [
    # 1: accounts, addresses, mailboxes, messages, blobs, vanished.
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO meta (key, value) VALUES ('next_uidvalidity', CAST(strftime('%s','now') AS INTEGER));

    CREATE TABLE accounts (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE,
        secrets TEXT NOT NULL
    );

    CREATE TABLE addresses (
        address TEXT PRIMARY KEY COLLATE NOCASE,  -- ASCII case-insensitive (RFC 5321 §2.4 leaves it to us)
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE
    ) WITHOUT ROWID;
    CREATE INDEX addresses_account ON addresses(account_id);

    CREATE TABLE mailboxes (
        id INTEGER PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        uidvalidity INTEGER NOT NULL,
        uidnext INTEGER NOT NULL DEFAULT 1,
        highestmodseq INTEGER NOT NULL DEFAULT 1,
        special_use TEXT,
        subscribed INTEGER NOT NULL DEFAULT 0,
        UNIQUE (account_id, name)
    );

    -- One row per durable body file; refcount counts messages and queue rows using it.
    CREATE TABLE blobs (
        id TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        refcount INTEGER NOT NULL DEFAULT 0 CHECK (refcount >= 0)
    ) WITHOUT ROWID;

    CREATE TABLE messages (
        mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id),
        uid INTEGER NOT NULL,
        modseq INTEGER NOT NULL,
        flags TEXT NOT NULL DEFAULT ' ',
        internal_date TEXT NOT NULL,
        size INTEGER NOT NULL,
        blob_id TEXT NOT NULL REFERENCES blobs(id),
        requiretls INTEGER NOT NULL DEFAULT 0,
        tls_required_no INTEGER NOT NULL DEFAULT 0,
        mail_from TEXT,
        received_via TEXT,
        PRIMARY KEY (mailbox_id, uid)
    ) WITHOUT ROWID;
    CREATE INDEX messages_modseq ON messages(mailbox_id, modseq);
    CREATE INDEX messages_blob ON messages(blob_id);

    -- Message rows keep their blob's refcount exact, whoever inserts or deletes them.
    CREATE TRIGGER messages_ref AFTER INSERT ON messages BEGIN
        UPDATE blobs SET refcount = refcount + 1 WHERE id = NEW.blob_id;
    END;
    CREATE TRIGGER messages_unref AFTER DELETE ON messages BEGIN
        UPDATE blobs SET refcount = refcount - 1 WHERE id = OLD.blob_id;
    END;

    -- RFC 7162 §3.2.10: expunged UIDs with the modseq of their expunge, for VANISHED.
    CREATE TABLE vanished (
        mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
        uid INTEGER NOT NULL,
        modseq INTEGER NOT NULL,
        PRIMARY KEY (mailbox_id, uid)
    ) WITHOUT ROWID;
    """,
    # 2: per-account storage use (kept by triggers) and quota, for QuotaExceeded/RFC 9208.
    """
    ALTER TABLE accounts ADD COLUMN used_bytes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE accounts ADD COLUMN quota_bytes INTEGER;
    UPDATE accounts SET used_bytes = (
        SELECT coalesce(sum(m.size), 0) FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id
        WHERE b.account_id = accounts.id);
    CREATE TRIGGER messages_use AFTER INSERT ON messages BEGIN
        UPDATE accounts SET used_bytes = used_bytes + NEW.size
        WHERE id = (SELECT account_id FROM mailboxes WHERE id = NEW.mailbox_id);
    END;
    CREATE TRIGGER messages_unuse AFTER DELETE ON messages BEGIN
        UPDATE accounts SET used_bytes = used_bytes - OLD.size
        WHERE id = (SELECT account_id FROM mailboxes WHERE id = OLD.mailbox_id);
    END;
    """,
    # 3: subscriptions that outlived their mailbox (RFC 3501 §6.3.6: a subscription is a
    # name; RFC 5258 LIST (SUBSCRIBED) shows it \NonExistent).
    """
    CREATE TABLE orphan_subscriptions (
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        PRIMARY KEY (account_id, name)
    ) WITHOUT ROWID;
    """,
    # 4: data derived from a body (IMAP ENVELOPE, SORT/THREAD keys, PREVIEW), stored
    # with it by kind (mxd.store.derived).  An empty table: bodies stored before this
    # step get their values later, in batches (SQLiteStore.backfill_derived).
    """
    CREATE TABLE blob_data (
        blob_id TEXT NOT NULL REFERENCES blobs(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (blob_id, kind)
    ) WITHOUT ROWID;
    """,
    # 5: the save date of each message (RFC 8514 SAVEDATE): when it was saved into its
    # mailbox (delivery, APPEND, COPY, MOVE), unlike the internal date, which COPY keeps
    # and APPEND may set.  Messages saved before this step get their internal date,
    # the best estimate there is (for delivered mail it is the arrival time).
    """
    ALTER TABLE messages ADD COLUMN save_date TEXT;
    UPDATE messages SET save_date = internal_date;
    """,
    # 6: bodies whose fsync ran alongside the commit of their rows, until it finished
    # (mxd.store.unsynced): checked at the next start after a crash.  An empty table.
    """
    CREATE TABLE unsynced_blobs (
        blob_id TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        digest BLOB NOT NULL
    ) WITHOUT ROWID;
    """,
]


def ensure_version_table(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version "
        "(name TEXT PRIMARY KEY, version INTEGER NOT NULL) WITHOUT ROWID"
    )


def current_version(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT version FROM schema_version WHERE name = ?", (name,)).fetchone()
    return int(row[0]) if row else 0


def check_not_newer(conn: sqlite3.Connection, name: str, migrations: list[str]) -> None:
    have = current_version(conn, name)
    if have > len(migrations):
        raise SchemaTooNew(
            f"database schema {name!r} is at version {have}, but this mxd knows only up to "
            f"{len(migrations)}; run a newer mxd or restore a backup"
        )


def migrate(conn: sqlite3.Connection, name: str, migrations: list[str]) -> int:
    """Bring component ``name`` up to ``len(migrations)``; each step is one transaction.

    ``conn`` must be in autocommit mode (``isolation_level=None``).  Returns the number of
    steps applied.  Raises SchemaTooNew, or SchemaError when a step fails (that step is
    rolled back; earlier ones stay).
    """
    ensure_version_table(conn)
    check_not_newer(conn, name, migrations)
    applied = 0
    while True:
        version = 0
        try:
            conn.execute("BEGIN IMMEDIATE")
            # Read the version under the write lock: another process may have migrated.
            version = current_version(conn, name) + 1
            if version > len(migrations):
                conn.execute("COMMIT")
                break
            step = migrations[version - 1]
            for stmt in split_sql(step):
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO schema_version (name, version) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET version = excluded.version",
                (name, version),
            )
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise SchemaError(f"migration {name} {version} failed: {e}") from e
        applied += 1
    return applied


def split_sql(script: str) -> list[str]:
    """Split a script into complete statements (triggers' inner ";" included)."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()
    ):
        raise SchemaError(f"incomplete SQL statement: {buf.strip()[:80]!r}")
    return out
