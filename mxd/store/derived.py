"""Derived data of stored bodies in the embedded store: the ``blob_data`` table.

A *deriver* (``interfaces.Deriver``) turns a body's first octets into ``{kind: value}``;
its producer (IMAP's ENVELOPE and SORT/THREAD keys, mxd.imap.summary; a PREVIEW) passes
it in with ``SQLiteStore.register_deriver``.  The store runs every registered deriver
once per new body, inside the transaction that stores it (on the writer thread), so a
message and its derived values commit together.  ``blob_data`` rows go with their body
(``ON DELETE CASCADE`` from ``blobs``), and copies share them.

Bodies that lack a registered kind (stored before its deriver existed: an older store
upgraded by schema step 4, or one filled by a process that registered none) are found
by ``window`` and computed in small batches (``SQLiteStore.backfill_derived``), each
looking at a bounded number of bodies, so an upgrade never rewrites a big store at
start nor holds the store's thread long.  A deriver that raises stores nothing for
that body, and the body is not tried again by the backfill of this process.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

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


WINDOW = 1024  # bodies looked at per backfill batch, at most


def window(conn: Any, after: str, kinds: Iterable[str],
           limit: int) -> tuple[list[tuple[str, set[str]]], str | None]:
    """The next bodies after id ``after`` (in id order, at most WINDOW looked at) that a
    message references and that lack one of ``kinds``: (body id, missing kinds) for up
    to ``limit`` of them, and the id to continue after (None: the end was reached).
    Each batch costs a bounded amount of work, however big the store."""
    kinds = list(kinds)
    ids = [r[0] for r in conn.execute(
        "SELECT id FROM blobs WHERE id > ? ORDER BY id LIMIT ?", (after, WINDOW))]
    if not ids:
        return [], None
    out: list[tuple[str, set[str]]] = []
    last: str | None = ids[-1] if len(ids) == WINDOW else None  # None: the last window
    for blob_id in ids:
        # Bodies referenced by messages only: a queue-only body is never shown by IMAP.
        if conn.execute("SELECT 1 FROM messages WHERE blob_id = ? LIMIT 1",
                        (blob_id,)).fetchone() is None:
            continue
        have = {r[0] for r in conn.execute(
            "SELECT kind FROM blob_data WHERE blob_id = ?", (blob_id,))}
        lacking = set(kinds) - have
        if lacking:
            out.append((blob_id, lacking))
            if len(out) >= limit:
                last = blob_id
                break
    return out, last
