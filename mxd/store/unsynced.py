"""Bodies whose fsync ran alongside their database commit: the ``unsynced_blobs`` table.

A message is acknowledged only once its body file and its rows are both durable
(DESIGN.md "Contracts").  Done one after the other, that costs two fsync latencies per
APPEND or delivery; the writer (mxd.store.writer) instead starts the fsync of a new body
that sits in a pool file (its directory entry is durable already, mxd.store.blobs) on a
helper thread and commits the rows meanwhile, and fires the operation's Deferred only
after both have finished.

The rows may then be durable before the body is: an operating-system crash in between
would leave a message whose file lost its unwritten pages.  So the same transaction
records each such body in ``unsynced_blobs`` with its size and digest (BLAKE2b-128 of the
octets written); the entry is dropped in a later transaction once the fsync has
finished (a leftover entry only costs a check).  At the next start, a process alone on
the data directory checks every entry (``recover``): a body whose file still holds
exactly those octets is fsynced and kept; any other was never acknowledged, and its
messages are removed as by an expunge (their UIDs reported VANISHED), so no message is
ever shown with a body it was not stored with.  A body fsync that fails while the
process runs is undone the same way at once (``remove_bodies``), and the operation fails.

Operations that also reference a body from the outbound queue (``accept`` with an
outbound part, ``commit_blob``) do not overlap: their bodies are durable before the
commit, as before.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import Any

from twisted.logger import Logger

from mxd.store.blobs import BlobFiles, is_blob_id

log = Logger(namespace="mxd.store.sqlite")


def record(conn: Any, blob_id: str, size: int, digest: bytes) -> None:
    conn.execute("INSERT OR REPLACE INTO unsynced_blobs (blob_id, size, digest) VALUES (?, ?, ?)",
                 (blob_id, size, digest))


def forget(conn: Any, blob_ids: Iterable[str]) -> None:
    conn.executemany("DELETE FROM unsynced_blobs WHERE blob_id = ?", [(b,) for b in blob_ids])


def remove_bodies(conn: Any, ctx: Any, blob_ids: Iterable[str]) -> list[str]:
    """Inside a transaction: remove every message whose body is one of ``blob_ids`` (as
    an expunge), and the bodies' rows; returns the ids whose file is now to be removed."""
    from mxd.store import queries as q  # it imports the writer, which imports this
    gone: list[str] = []
    for blob_id in blob_ids:
        by_box: dict[int, list[int]] = {}
        for mailbox_id, uid in conn.execute(
                "SELECT mailbox_id, uid FROM messages WHERE blob_id = ? ORDER BY mailbox_id, uid",
                (blob_id,)).fetchall():
            by_box.setdefault(mailbox_id, []).append(uid)
        for mailbox_id, uids in by_box.items():
            q.remove(conn, ctx, mailbox_id, uids)
        if conn.execute("DELETE FROM blobs WHERE id = ? AND refcount = 0", (blob_id,)).rowcount:
            gone.append(blob_id)
        forget(conn, [blob_id])
    return gone


def _intact(files: BlobFiles, blob_id: str, size: int, digest: bytes) -> bool:
    """Does the body's file hold exactly the octets stored?  If so it is fsynced now."""
    if not is_blob_id(blob_id):
        return False
    try:
        fd = os.open(files.path(blob_id), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        h = hashlib.blake2b(digest_size=16)
        n = 0
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
            n += len(chunk)
        if n != size or h.digest() != digest:
            return False
        os.fsync(fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def recover(conn: Any, files: BlobFiles) -> tuple[int, int]:
    """At open, alone on the data directory: check every recorded body (module
    docstring).  Returns (kept, removed)."""
    from mxd.store.writer import OpContext

    entries = conn.execute("SELECT blob_id, size, digest FROM unsynced_blobs").fetchall()
    if not entries:
        return 0, 0
    bad = [b for b, size, digest in entries if not _intact(files, b, size, bytes(digest))]
    ctx = OpContext()
    conn.execute("BEGIN IMMEDIATE")
    try:
        gone = remove_bodies(conn, ctx, bad)
        forget(conn, [e[0] for e in entries])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    files.unlink(gone)
    if bad:
        log.warn("{n} message(s) whose body was not durable at a crash were removed "
                 "(never acknowledged): {ids}", n=len(bad), ids=", ".join(bad))
    return len(entries) - len(bad), len(bad)
