"""Derived data of stored bodies in the embedded store: the ``blob_data`` table.

A *deriver* (``interfaces.Deriver``) turns a body's first octets into ``{kind: value}``;
its producer (IMAP's ENVELOPE and SORT/THREAD keys, mxd.imap.summary; a PREVIEW) passes
it in with ``SQLiteStore.register_deriver``.  The store runs every registered deriver
once per new body, inside the transaction that stores it (on the writer thread), so a
message and its derived values commit together.  ``blob_data`` rows go with their body
(``ON DELETE CASCADE`` from ``blobs``), and copies share them.

Bodies that lack a registered kind (stored before its deriver existed: an older store
upgraded by schema step 4, or one filled by a process that registered none) are found
by ``missing`` and computed in small batches (``SQLiteStore.backfill_derived``), so an
upgrade never rewrites a big store at start.  A deriver that raises stores nothing for
that body, and the body is not tried again by the backfill of this process.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping

import attrs
from twisted.logger import Logger

from mxd.store.interfaces import Deriver, ReadHead

log = Logger()

MAX_VALUE = 64 * 1024  # a larger value is not stored (the reader computes it)


@attrs.frozen
class Registered:
    name: str
    kinds: tuple[str, ...]
    fn: Deriver


def derive(conn: sqlite3.Connection, blob_id: str, read_head: ReadHead,
           derivers: Iterable[Registered]) -> None:
    """Run each deriver on one body and store its values (writer thread)."""
    for d in derivers:
        values = run(d, blob_id, read_head)
        if values:
            store(conn, blob_id, values)


def run(d: Registered, blob_id: str, read_head: ReadHead) -> dict[str, bytes]:
    """The deriver's values of its registered kinds; {} when it fails."""
    try:
        values = d.fn(read_head)
    except Exception:  # noqa: BLE001 - derived data must never fail a delivery
        log.failure("deriver {name} failed on body {blob_id}", name=d.name, blob_id=blob_id)
        return {}
    return {k: bytes(v) for k, v in values.items()
            if k in d.kinds and len(v) <= MAX_VALUE}


def store(conn: sqlite3.Connection, blob_id: str, values: Mapping[str, bytes]) -> None:
    conn.executemany(
        "INSERT INTO blob_data (blob_id, kind, value) VALUES (?, ?, ?) "
        "ON CONFLICT (blob_id, kind) DO UPDATE SET value = excluded.value",
        [(blob_id, k, v) for k, v in values.items()])


def get(conn: sqlite3.Connection, mailbox_id: int, kind: str, first_uid: int,
        last_uid: int) -> dict[int, bytes]:
    rows = conn.execute(
        "SELECT m.uid, d.value FROM messages m JOIN blob_data d "
        "ON d.blob_id = m.blob_id AND d.kind = ? "
        "WHERE m.mailbox_id = ? AND m.uid BETWEEN ? AND ?",
        (kind, mailbox_id, first_uid, last_uid)).fetchall()
    return dict(rows)


def missing(conn: sqlite3.Connection, kind: str, limit: int,
            skip: Iterable[str] = ()) -> list[str]:
    """Up to ``limit`` bodies referenced by a message that have no ``kind`` value,
    newest messages' bodies first is not promised: in blob id order."""
    skipped = set(skip)
    out: list[str] = []
    # Bodies referenced by messages only: a queue-only body is never shown by IMAP.
    for (blob_id,) in conn.execute(
            "SELECT b.id FROM blobs b WHERE NOT EXISTS "
            "(SELECT 1 FROM blob_data d WHERE d.blob_id = b.id AND d.kind = ?) "
            "AND EXISTS (SELECT 1 FROM messages m WHERE m.blob_id = b.id) "
            "LIMIT ?", (kind, limit + len(skipped))):
        if blob_id not in skipped:
            out.append(blob_id)
            if len(out) >= limit:
                break
    return out
