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
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred as DeferredT
from twisted.logger import Logger
from twisted.python.failure import Failure

from mxd.store.interfaces import DERIVED_MAX_DELAY, Deriver, ReadHead

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


def store_if_present(conn: sqlite3.Connection, blob_id: str,
                     values: Mapping[str, bytes]) -> None:
    """``store``, but nothing when the body's row is gone (its messages were removed
    while its values waited, see Later)."""
    conn.executemany(
        "INSERT INTO blob_data (blob_id, kind, value) SELECT ?, ?, ? "
        "WHERE EXISTS (SELECT 1 FROM blobs WHERE id = ?) "
        "ON CONFLICT (blob_id, kind) DO UPDATE SET value = excluded.value",
        [(blob_id, k, v, blob_id) for k, v in values.items()])


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


# -- values of delivered bodies, computed once the store is quiet ----------------------
QUIET = 0.02  # seconds without a new delivery before deferred values are computed
MAX_AGE = DERIVED_MAX_DELAY  # seconds the oldest waiting body waits, deliveries or not
BATCH = 64  # bodies derived per operation
BOUND = 10_000  # bodies waiting, at most: past it they are derived at once


class Later:
    """Delivered bodies whose derived values wait until the store is quiet.

    Deriving costs a sixth of an SMTP delivery's CPU, and the client that delivers is
    not the one who reads the values: a burst of incoming mail is taken in first, and the
    values are computed in batches of ``batch`` bodies once no delivery came for
    ``quiet`` seconds (a few hundredths of a second after a lone delivery), or once the
    oldest has waited ``max_age`` seconds (under steady load), or at once past ``bound``
    waiting bodies.  Until its values are stored a message is read as one stored before
    its deriver existed: readers compute what they need from the body.  The store
    derives what still waits before it closes; after a crash the backfill of the next
    start computes what was lost.

    ``activity()`` counts the deliveries; ``run(ids)`` derives and stores one batch
    (off the reactor) and fires when it is committed."""

    def __init__(self, clock: Any, activity: Callable[[], int],
                 run: Callable[[list[str]], DeferredT[object]], *, quiet: float = QUIET,
                 max_age: float = MAX_AGE, batch: int = BATCH, bound: int = BOUND) -> None:
        self._clock = clock
        self._activity = activity
        self._run = run
        self._quiet = quiet
        self._max_age = max_age
        self._batch = max(1, batch)
        self._bound = max(1, bound)
        self._pending: list[str] = []
        self._timer: Any = None
        self._seen = 0  # activity() when the timer was armed
        self._since = 0.0  # when the oldest waiting body came (about: see add)
        self._running = False
        self._stopped = False
        self._waiters: list[DeferredT[None]] = []  # flush() callers
        self.derived = 0  # bodies whose batch ran (for tests and metrics)

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, blob_id: str) -> None:
        if self._stopped:
            return
        if not self._pending:
            # What waits after a batch came later than what the batch took: taking
            # this time for it too only ever runs the next batch early.
            self._since = self._clock.seconds()
        self._pending.append(blob_id)
        if len(self._pending) >= self._bound:
            self._next()
        else:
            self._arm()

    def flush(self) -> DeferredT[None]:
        """Derive what waits now, without waiting for quiet; fires once nothing waits."""
        d: DeferredT[None] = DeferredT()
        if not self._pending and not self._running:
            d.callback(None)
            return d
        self._waiters.append(d)
        self._next()
        return d

    def stop(self) -> int:
        """Drop what waits (after a flush: nothing); returns how many."""
        self._stopped = True
        self._cancel()
        left, self._pending = len(self._pending), []
        self._wake()
        return left

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def _arm(self) -> None:
        if self._timer is None and not self._running and self._pending:
            self._seen = self._activity()
            self._timer = self._clock.callLater(self._quiet, self._tick)

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _tick(self) -> None:
        self._timer = None
        waited = self._clock.seconds() - self._since
        if self._activity() != self._seen and waited < self._max_age:
            self._arm()  # deliveries keep coming: look again later
            return
        self._next()

    def _next(self) -> None:
        if self._running or self._stopped or not self._pending:
            return
        self._cancel()
        ids, self._pending = self._pending[:self._batch], self._pending[self._batch:]
        self._running = True

        def done(result: object) -> None:
            self._running = False
            self.derived += len(ids)
            if not self._pending:
                self._wake()
            elif self._waiters or len(self._pending) >= self._bound:
                self._next()
            else:
                self._arm()

        def failed(f: Failure) -> None:
            log.failure("computing derived values of {n} bodies failed", f, n=len(ids))

        self._run(ids).addErrback(failed).addBoth(done)
