"""The embedded store: SQLite (WAL, synchronous=FULL) metadata plus one file per body.

``SQLiteStore`` implements ``IAccountStore`` and ``IMailStore`` (mxd.store.interfaces).
Every SQLite call runs on one writer thread with group commit (mxd.store.writer); the
reactor thread only writes arriving body bytes (into pre-created files of the body-file
pool, or ``tmp/``; see mxd.store.blobs) and fires Deferreds.

Use::

    store = SQLiteStore(data_dir, reactor)
    store.register_schema("queue", QUEUE_MIGRATIONS)   # optional, before open()
    await store.open()
    ...
    await store.close()

Semantics worth knowing:

* UIDVALIDITY comes from a database-wide counter that starts at the creation time (in
  seconds) and only grows, so a mailbox deleted and created again, or created in place
  of a renamed one, never reuses a value (RFC 3501 §2.3.1.1).
* Each mailbox has a modseq counter (RFC 7162).  Every change (delivery, append, flag
  store, copy/move in, expunge) takes the next value once for the whole operation; the
  messages it touched carry it.  Expunged UIDs stay in ``vanished`` with that modseq so
  QRESYNC can report VANISHED (``list_vanished``).
* Names: "/" separates levels; "INBOX" is case-insensitive.  CREATE makes missing
  superiors (RFC 3501 §6.3.3).  There is no \\Noselect: DELETE of a mailbox that has
  inferiors fails with ``MailboxHasChildren`` (RFC 3501 §6.3.4 lets a server refuse;
  the client deletes the children first).  INBOX cannot be deleted; RENAME of INBOX
  moves its messages to the new mailbox and leaves INBOX empty (RFC 3501 §6.3.5).
  RENAME moves the inferiors along.
* Bodies are shared: copy, move, and queue rows reference one file; ``blobs.refcount``
  counts the references (message rows keep it exact through triggers).  The file is
  removed after the commit that drops the last reference — or, when other processes
  share the store (``StoreSettings.unlink_grace`` > 0: workers, several nodes),
  ``unlink_grace`` seconds later, so that their sessions still showing the message can
  pin it first (``hold_blob``; mxd.store.blobs "Pins"); the doomed list of
  mxd.store.leftovers lets another process remove it if this one dies meanwhile.
* Quota: ``accounts.used_bytes`` (kept by triggers) against the account's ``quota_bytes``
  or ``StoreSettings.quota_bytes``; deliver, append and copy fail with QuotaExceeded
  (nothing stored), move never does.  ``get_usage``/``set_quota`` for RFC 9208.
* Several processes may open one data directory (the server and an ``mxd account``
  command): SQLite serialises their writes, and each holds a shared flock on
  ``mxd.lock``.  Crash cleanup (tmp/ leftovers, bodies at refcount 0, orphan files) runs
  at open only when the opener is alone, since it would destroy another process's work
  in progress.  Writers of several processes take turns on an flock
  (``mxd.write.lock``) around each group commit.  Change notifications reach the
  listeners of every process: those of this one after its commits, those of others
  within ``watch_interval`` (mxd.store.watch, ``PRAGMA data_version``).
* Derived data (mxd.store.derived): ``register_deriver`` passes in a function that
  computes values from a body's first octets (IMAP ENVELOPE and SORT/THREAD keys, PREVIEW);
  it runs in the transaction that stores a new body (deliver, accept, append), and
  ``get_derived`` reads a mailbox's values in one query.  ``backfill_derived`` fills
  bodies stored earlier, a batch at a time.  Add a new kind of per-message data this way
  (a new ``kind`` name per format) rather than as a column.
* Errors: each Deferred errbacks with a StoreError subclass (NoSuchAccount,
  NoSuchMailbox, MailboxExists, QuotaExceeded, InvalidMailboxName, InvalidFlag, ...);
  SQLite errors arrive as StoreError with the sqlite3 error as ``__cause__``.
  Operations submitted while ``open()`` runs wait for it; after ``close()`` they fail
  with StoreClosed.

For the outbound queue (mxd.queue), which keeps its tables in this same database:

* ``register_schema(name, migrations)`` before ``open()``: a component name and a list of
  SQL scripts (step *i* takes the component to version *i + 1*); applied at open, each in
  its own transaction; a database newer than the list fails ``open`` with SchemaTooNew.
* ``transact(fn)`` runs ``fn(conn)`` on the writer thread inside one transaction (really a
  savepoint in a group commit): commit when it returns, rollback when it raises; the
  Deferred fires with fn's result after the commit is durable.  ``fn`` must not call
  ``commit``/``rollback``/``BEGIN`` itself, nor block on the reactor.
* ``commit_blob(writer)`` makes a body durable and fires with its id.  The body has
  refcount 0 until referenced; a body still at 0 at the next start is removed.
* ``ref_blob(conn, blob_id)`` / ``unref_blob(conn, blob_id)`` inside ``transact``: count a
  queue row's reference; the unref that reaches 0 removes the file after the commit.
* To deliver locally *and* queue one message: ``accept(w, targets, props, outbound,
  queue_id)`` writes the message rows, the queue rows (mxd.store.queuedb) and the body's
  references in one transaction, so a crash leaves all of it or none (DESIGN.md
  "Contracts").  The queue's tables are always part of the database.
"""

from __future__ import annotations

import collections
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from mxd.store import derived, failpoints, names, queuedb
from mxd.store import queries as q
from mxd.store.blobs import BlobError, BlobFiles, DeadLeftovers, FileBlobWriter
from mxd.store.interfaces import (
    DEFAULT_MAILBOXES,
    Accepted,
    Account,
    AccountChange,
    AccountExists,
    Appended,
    BlobWriter,
    CannotDeleteInbox,
    Delivery,
    Deriver,
    InvalidMailboxName,
    MailboxChange,
    MailboxExists,
    MailboxHasChildren,
    MailboxInfo,
    MessageColumns,
    MessageGone,
    MessageInfo,
    MessageProps,
    NoSuchAccount,
    NoSuchMailbox,
    OutboundMessage,
    QuotaExceeded,
    ReadHead,
    SpecialUse,
    StoreError,
)
from mxd.store.metadata import METADATA_MIGRATIONS
from mxd.store.schema import STORE_MIGRATIONS
from mxd.store.sqlbase import INTEGRITY_ERRORS, Conn
from mxd.store.sqlitedb import WRITE_LOCK_NAME, DatabaseOpener, WriteLock
from mxd.store.watch import JOURNAL_MIGRATIONS, ChangeWatcher, record
from mxd.store.writer import OpContext, PoolLike, StoreClosed, Writer

log = Logger()

T = TypeVar("T")

DB_NAME = "mxd.sqlite3"


# The components every SQLite store has (mxd.store.pgschema.SCHEMAS: the same on PostgreSQL).
BUILTIN_SCHEMAS: dict[str, list[str]] = {"store": STORE_MIGRATIONS,
                                         "queue": queuedb.QUEUE_MIGRATIONS,
                                         "metadata": METADATA_MIGRATIONS}
# SQLite's alone: the change journal between the processes of one store (mxd.store.watch;
# PostgreSQL nodes hear of each other by LISTEN/NOTIFY).
SQLITE_SCHEMAS: dict[str, list[str]] = {**BUILTIN_SCHEMAS, "changes": JOURNAL_MIGRATIONS}


@attrs.frozen
class StoreSettings:
    """Settings of the embedded store."""

    max_batch: int = 64  # operations per group commit; 1 = one transaction each
    quota_bytes: int | None = None  # default per-account quota (None: unlimited)
    busy_timeout_ms: int = 5000
    scan_orphans: bool = True  # at open, remove body files no row references
    # Empty body files created ahead of time (see mxd.store.blobs); 0 = create each in tmp/.
    blob_pool: int = 64
    # Seconds between looks for commits of other processes (mxd.store.watch); 0: never.
    watch_interval: float = 0.2
    # Seconds a body whose last reference went stays on disk when other processes share
    # the store: they learn of the change within ``watch_interval`` and pin the bodies
    # their sessions still show (hold_blob).  0: removed at once (one process).
    unlink_grace: float = 0.0


class SQLiteStore:
    """SQLite + files implementation of IAccountStore and IMailStore."""

    def __init__(
        self, data_dir: Path, reactor: IReactorFromThreads, *,
        settings: StoreSettings = StoreSettings(), threadpool: PoolLike | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.settings = settings
        self._reactor = reactor
        self._files = BlobFiles(self.data_dir, pool_size=settings.blob_pool)
        pool = threadpool if threadpool is not None else ThreadPool(1, 1, "mxd-store")
        self._writer = Writer(reactor, pool, self._files, max_batch=settings.max_batch)
        self._writer.on_changes = self._dispatch
        self._writer.keep_bodies = self._unheld
        self._holds: dict[str, int] = {}  # blob id -> readers holding it
        self._orphans: set[str] = set()  # held bodies no message references any more
        # Bodies to remove once the grace period ends: (due time, ids), oldest first.
        self._doomed: collections.deque[tuple[float, list[str]]] = collections.deque()
        self._doom_timer: Any = None
        self._pins_pending: list[str] = []  # to pin on the next turn (one trip for many)
        self._unpins_pending: list[str] = []
        if settings.unlink_grace > 0:
            self._files.enable_pins()
        self._schemas: dict[str, list[str]] = dict(BUILTIN_SCHEMAS)
        self._listeners: dict[int, list[Callable[[MailboxChange], None]]] = {}
        self._ctx: OpContext | None = None  # the running transact() op (writer thread)
        self._opened = False
        self._opened_db: DatabaseOpener | None = None
        self._derivers: dict[str, derived.Registered] = {}
        self._backfill_after: str | None = ""  # backfill's place in body id order
        # Delivered bodies' values wait for a quiet store (mxd.store.derived.Later);
        # without a clock they are computed with the delivery.
        self._later: derived.Later | None = None
        self._accepts = 0  # deliveries so far: while they come, the values wait
        if hasattr(reactor, "callLater"):
            self._later = derived.Later(reactor, lambda: self._accepts, self._derive_batch)
        self._write_lock = WriteLock(self.data_dir / WRITE_LOCK_NAME)
        self._writer.write_lock = self._write_lock
        self._watcher: ChangeWatcher | None = None
        # Names this store's rows of account_changes (mxd.store.watch): unique per open
        # store, so a process skips its own and a restarted one is another origin.
        self.origin = f"{os.getpid()}-{os.urandom(4).hex()}"
        self._journal = False  # account_changes rows are written (set by _connect)
        if settings.watch_interval > 0 and hasattr(reactor, "callLater"):
            self._watcher = ChangeWatcher(reactor, self._writer.call, self._read_op,
                                          self._dispatch, settings.watch_interval,
                                          origin=self.origin)

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_NAME

    # -- lifecycle -----------------------------------------------------------------------
    def register_schema(self, name: str, migrations: list[str]) -> None:
        """Add a component's versioned tables; must be called before ``open``."""
        if self._opened:
            raise StoreError("register_schema must be called before open()")
        if self._schemas.get(name) == list(migrations):
            return  # the same component again (the queue's tables are built in)
        if name in self._schemas:
            raise StoreError(f"schema {name!r} is already registered")
        self._schemas[name] = list(migrations)

    def open(self) -> Deferred[None]:
        """Create or upgrade the database, clean up after a crash, start the writer.

        Errbacks with SchemaTooNew / SchemaError / StoreError."""
        if self._opened:
            raise StoreError("store is already open")
        self._opened = True
        d = self._writer.start(self._connect)
        if self._watcher is not None:
            watcher = self._watcher

            def watch(result: object) -> object:
                watcher.start()
                return result

            d.addCallback(watch)
        return d

    @property
    def idle(self) -> bool:
        """True when no operation is queued or running (for tests and shutdown)."""
        return self._writer.idle

    def close(self) -> Deferred[None]:
        """Finish queued work (and derive the values still waiting), then close the
        database and stop the writer thread."""
        doomed = self._take_doomed()

        def _finish(conn: sqlite3.Connection) -> None:
            try:
                conn.execute("PRAGMA optimize")
            except sqlite3.Error:
                pass
            finally:
                self._files.unlink(doomed)
                self._files.clear_pins()
                self._files.close()
                self._write_lock.close()
                self._unlock()

        if self._watcher is not None:
            self._watcher.stop()
        later = self._later
        if later is None or not len(later):
            if later is not None:
                later.stop()
            return self._writer.stop(_finish)

        # Values still waiting for a quiet store are derived first (at most BOUND
        # bodies, about a second): a tool that filled the store, or a server stopping
        # after a burst, leaves none to the next start's backfill.
        def stop(_: object) -> Deferred[None]:
            later.stop()
            return self._writer.stop(_finish)

        return later.flush().addBoth(stop)

    def _read_op(self, fn: Callable[[sqlite3.Connection], T]) -> Deferred[T]:
        return self._writer.submit(lambda conn, ctx: fn(conn))

    def _connect(self) -> sqlite3.Connection:
        """Writer thread: lock, open, configure, migrate and (when alone) clean up."""
        self._opened_db = DatabaseOpener(self.data_dir, self.db_path, self._files,
                                         self.settings.busy_timeout_ms,
                                         self.settings.scan_orphans,
                                         {**self._schemas, "changes": JOURNAL_MIGRATIONS})
        conn = self._opened_db.connect()
        self._journal = True
        if self._files.pin_dir is not None:
            self._files.clean_stale_pins()
        return conn

    def clean_dead_process(self, pid: int) -> Deferred[DeadLeftovers]:
        """Remove the body files process ``pid`` of this host (a worker killed while the
        others run) left: its tmp files, its pooled files no row references and its
        pins (mxd.store.blobs ``clean_dead``); the bodies it kept for their grace period
        are removed one grace period from now (mxd.store.leftovers)."""
        files = self._files

        def adopt(blob_ids: list[str]) -> None:
            if files.doomed is not None:
                files.doomed.note(blob_ids)  # listed as ours before its list goes

        def adopted(result: DeadLeftovers) -> DeadLeftovers:
            if result.doomed:
                self._remove_later(list(result.doomed))
            return result

        def op(conn: sqlite3.Connection, ctx: OpContext) -> DeadLeftovers:
            def referenced(ids: list[str]) -> set[str]:
                out: set[str] = set()
                for start in range(0, len(ids), 500):
                    chunk = ids[start:start + 500]
                    out.update(r[0] for r in conn.execute(
                        "SELECT id FROM blobs WHERE id IN (%s)" % ",".join("?" * len(chunk)),
                        chunk))
                return out

            return files.clean_dead(pid, referenced, adopt)

        return self._writer.submit(op).addCallback(adopted)

    def _unlock(self) -> None:
        if self._opened_db is not None:
            self._opened_db.unlock()

    # -- queue support ---------------------------------------------------------------------
    def transact(self, fn: Callable[[Conn], T]) -> Deferred[T]:
        """Run ``fn(conn)`` in one transaction on the writer thread (see module doc)."""
        def op(conn: Conn, ctx: OpContext) -> T:
            self._ctx = ctx
            try:
                return fn(conn)
            finally:
                self._ctx = None

        return self._writer.submit(op)

    def commit_blob(self, writer: BlobWriter) -> Deferred[str]:
        """Make a body durable; fires with its id (refcount 0 until referenced)."""
        w = self._own_writer(writer)

        def op(conn: sqlite3.Connection, ctx: OpContext) -> str:
            self._register_blob(conn, ctx, w)
            return w.blob_id

        return self._writer.submit(op, [w])

    def ref_blob(self, conn: Conn, blob_id: str) -> None:
        """Inside ``transact``: one more reference to a durable body."""
        self._ref(conn, blob_id)

    @staticmethod
    def _ref(conn: Conn, blob_id: str) -> None:
        cur = conn.execute("UPDATE blobs SET refcount = refcount + 1 WHERE id = ?", (blob_id,))
        if cur.rowcount != 1:
            raise BlobError(f"no such blob {blob_id}")

    def unref_blob(self, conn: Conn, blob_id: str) -> None:
        """Inside ``transact``: drop a reference; at zero the file goes after the commit."""
        if self._ctx is None:
            raise StoreError("unref_blob must be called inside transact()")
        cur = conn.execute(
            "UPDATE blobs SET refcount = refcount - 1 WHERE id = ? AND refcount > 0", (blob_id,))
        if cur.rowcount != 1:
            raise BlobError(f"no reference to drop on blob {blob_id}")
        self._gc(conn, self._ctx, [blob_id])

    # -- bodies ----------------------------------------------------------------------------
    def new_blob(self) -> FileBlobWriter:
        return self._files.new_writer()

    def new_blob_nowait(self) -> FileBlobWriter | None:
        return self._files.pooled_writer()

    def open_blob(self, blob_id: str) -> BinaryIO:
        return self._files.open(blob_id)

    def read_blob_head(self, blob_id: str, length: int) -> bytes:
        return self._files.read_head(blob_id, length)

    def blob_path(self, blob_id: str) -> Path:
        return self._files.path(blob_id)

    def _own_writer(self, writer: BlobWriter) -> FileBlobWriter:
        if not isinstance(writer, FileBlobWriter) or writer._files is not self._files:
            raise StoreError("blob writer does not belong to this store")
        return writer

    @staticmethod
    def _register_blob(conn: Conn, ctx: OpContext, w: FileBlobWriter) -> None:
        if w.blob_id in ctx.fresh_blobs:
            conn.execute("INSERT INTO blobs (id, size, refcount) VALUES (?, ?, 0) "
                         "ON CONFLICT DO NOTHING", (w.blob_id, w.size))
        elif conn.execute("SELECT 1 FROM blobs WHERE id = ?", (w.blob_id,)).fetchone() is None:
            raise BlobError(f"blob {w.blob_id} no longer exists")

    def _gc(self, conn: Conn, ctx: OpContext, blob_ids: Iterable[str]) -> None:
        dropped = []
        for blob_id in set(blob_ids):
            cur = conn.execute("DELETE FROM blobs WHERE id = ? AND refcount = 0", (blob_id,))
            if cur.rowcount:
                dropped.append(blob_id)
        if dropped:
            ctx.unlink_after_commit.extend(dropped)
            if self._files.doomed is not None:  # before the commit (mxd.store.leftovers)
                self._files.doomed.note(dropped)

    def _now(self) -> datetime:
        seconds = getattr(self._reactor, "seconds", time.time)
        return datetime.fromtimestamp(int(seconds()), UTC)

    # -- derived data (mxd.store.derived) ----------------------------------------------------
    def register_deriver(self, name: str, kinds: Iterable[str], fn: Deriver) -> None:
        """IMailStore.register_deriver: from now on, every new body gets ``fn``'s values."""
        self._derivers[name] = derived.Registered(name, tuple(kinds), fn)

    def _derive_new(self, conn: sqlite3.Connection, ctx: OpContext, w: FileBlobWriter) -> None:
        # Writer thread, in the storing transaction: a body new to this operation (not
        # one shared with an earlier call) gets its values with its first message row,
        # computed before the transaction (_prepare_derived) when the runner did that.
        if w.blob_id in ctx.derived:
            derived.store(conn, w.blob_id, ctx.derived.pop(w.blob_id))
        elif self._derivers and w.blob_id in ctx.fresh_blobs:
            derived.derive(conn, w.blob_id, w.read_head, list(self._derivers.values()))

    def _prepare_derived(self, w: FileBlobWriter) -> Callable[[OpContext], None]:
        def prepare(ctx: OpContext) -> None:
            if not self._derivers or w.blob_id not in ctx.fresh_blobs:
                return
            values: dict[str, bytes] = {}
            for d in list(self._derivers.values()):
                values.update(derived.run(d, w.blob_id, w.read_head))
            ctx.derived[w.blob_id] = values

        return prepare

    def get_derived(self, mailbox_id: int, kind: str, first_uid: int = 1,
                    last_uid: int = 0xFFFFFFFF) -> Deferred[dict[int, bytes]]:
        def op(conn: sqlite3.Connection, ctx: OpContext) -> dict[int, bytes]:
            return derived.get(conn, mailbox_id, kind, first_uid, last_uid)

        return self._writer.submit(op)

    def backfill_derived(self, limit: int = 64) -> Deferred[int]:
        """IMailStore.backfill_derived: one batch, derived on the writer thread in one
        transaction: the next bodies in id order (mxd.store.derived.window), at most
        ``limit`` of them computed.  Fires with the number computed (at least 1 while the
        pass goes on), 0 once it is complete (new bodies get their values when stored)."""
        registered = list(self._derivers.values())
        kinds = [k for d in registered for k in d.kinds]

        def op(conn: sqlite3.Connection, ctx: OpContext) -> int:
            if not kinds or self._backfill_after is None:
                return 0
            todo, after = derived.window(conn, self._backfill_after, kinds, limit)
            looked = 0
            for blob_id, lacking in todo:
                looked += 1
                read_head = self._stored_head(blob_id)
                if read_head is None:
                    continue
                for d in registered:
                    if lacking & set(d.kinds):
                        values = derived.run(d, blob_id, read_head)
                        if values:
                            derived.store(conn, blob_id, values)
            self._backfill_after = after
            # Positive while there may be more to do (a window of bodies that all had
            # their values computes nothing, yet the pass goes on).
            return looked or (1 if after is not None else 0)

        return self._writer.submit(op)

    def flush_derived(self) -> Deferred[None]:
        """IMailStore.flush_derived: compute now the values of delivered bodies that wait
        for a quiet store (mxd.store.derived.Later)."""
        if self._later is None:
            return succeed(None)
        return self._later.flush()

    def _derive_batch(self, blob_ids: list[str]) -> Deferred[object]:
        """Derived.Later's batch: the values of ``blob_ids`` computed before the
        transaction (writer thread), stored in it for the bodies still there."""
        registered = list(self._derivers.values())

        def prepare(ctx: OpContext) -> None:
            for blob_id in blob_ids:
                read_head = self._stored_head(blob_id)
                if read_head is None:
                    continue  # removed meanwhile
                values: dict[str, bytes] = {}
                for d in registered:
                    values.update(derived.run(d, blob_id, read_head))
                if values:
                    ctx.derived[blob_id] = values

        def op(conn: sqlite3.Connection, ctx: OpContext) -> None:
            for blob_id, values in ctx.derived.items():
                derived.store_if_present(conn, blob_id, values)

        return self._writer.submit(op, prepare=prepare)

    def _stored_head(self, blob_id: str) -> ReadHead | None:
        """Writer thread: a ReadHead of a stored body (its first MAX_VALUE octets read
        once), or None when the body is gone."""
        try:
            head = self._files.read_head(blob_id, derived.MAX_VALUE)
        except BlobError:
            return None
        size = len(head)

        def read_head(n: int) -> bytes:
            if n <= size or size < derived.MAX_VALUE:
                return head[:n]
            return self._files.read_head(blob_id, n)

        return read_head

    # -- bodies that readers still show ------------------------------------------------------
    def hold_blob(self, blob_id: str) -> None:
        """Keep a body file while a reader can still show its message, even after the
        last reference goes (IMAP: a message expunged by another session stays readable
        until every session that shows it has been told, RFC 9051 §7.5.1).  Call from
        a change listener to hold a body that the change being reported dropped.

        When other processes share the store the change may be theirs: the body is also
        pinned (hard-linked) before their grace period ends, off the reactor thread."""
        n = self._holds.get(blob_id, 0)
        self._holds[blob_id] = n + 1
        if n == 0 and self._files.pin_dir is not None:
            self._queue_pin_change(self._pins_pending, blob_id)

    def release_blob(self, blob_id: str) -> None:
        n = self._holds.get(blob_id, 0) - 1
        if n > 0:
            self._holds[blob_id] = n
            return
        self._holds.pop(blob_id, None)
        if self._files.pin_dir is not None:
            self._queue_pin_change(self._unpins_pending, blob_id)
        if blob_id in self._orphans:
            self._orphans.discard(blob_id)
            self._remove_later([blob_id])

    def _queue_pin_change(self, pending: list[str], blob_id: str) -> None:
        """Add to the pins or unpins made on the next turn (one writer trip for many)."""
        if not self._pins_pending and not self._unpins_pending:
            self._reactor.callLater(0, self._flush_pins)  # type: ignore[attr-defined]
        pending.append(blob_id)

    def _flush_pins(self) -> None:
        pins, self._pins_pending = self._pins_pending, []
        unpins, self._unpins_pending = self._unpins_pending, []
        files = self._files

        def run(_: object = None) -> None:
            # In order: a body held, released and held again ends pinned.
            files.unpin(b for b in unpins if b not in self._holds)
            files.pin(b for b in pins if b in self._holds)

        self._writer.run_files(run)

    def _unheld(self, blob_ids: list[str]) -> list[str]:
        """Of the bodies a commit dropped, those to remove now (the others are held by a
        reader here, or wait for the grace period)."""
        now = []
        for b in blob_ids:
            if b in self._holds:
                self._orphans.add(b)
            else:
                now.append(b)
        if now and self.settings.unlink_grace > 0:
            self._remove_later(now)
            return []
        return now

    def _remove_later(self, blob_ids: list[str]) -> None:
        grace = self.settings.unlink_grace
        if grace <= 0:
            self._writer.unlink_later(blob_ids)
            return
        if not blob_ids:
            return
        clock: Any = self._reactor
        self._doomed.append((clock.seconds() + grace, list(blob_ids)))
        if self._doom_timer is None:
            self._doom_timer = clock.callLater(grace, self._remove_due)

    def _remove_due(self) -> None:
        clock: Any = self._reactor
        self._doom_timer = None
        now = clock.seconds()
        due: list[str] = []
        while self._doomed and self._doomed[0][0] <= now:
            for b in self._doomed.popleft()[1]:
                if b in self._holds:
                    self._orphans.add(b)  # held here meanwhile: removed at its release
                else:
                    due.append(b)
        if due:
            self._unlink_doomed(due)
        if self._doomed:
            self._doom_timer = clock.callLater(max(0.0, self._doomed[0][0] - now),
                                               self._remove_due)

    def _unlink_doomed(self, blob_ids: list[str]) -> None:
        """Remove bodies whose grace period ended, then strike them off the doomed list."""
        files = self._files

        def unlink() -> None:
            files.unlink(blob_ids)
            if files.doomed is not None:
                files.doomed.done(blob_ids)

        self._writer.run_files(unlink)

    def _take_doomed(self) -> list[str]:
        """At close: every body still waiting for its grace period, or for a reader here
        to release it (removed now: no reader is left)."""
        if self._doom_timer is not None and self._doom_timer.active():
            self._doom_timer.cancel()
        self._doom_timer = None
        out = [b for _, ids in self._doomed for b in ids]
        out.extend(sorted(self._orphans))
        self._doomed.clear()
        self._orphans.clear()
        return out

    # -- notifications ---------------------------------------------------------------------
    def subscribe(self, mailbox_id: int, listener: Callable[[MailboxChange], None]) -> Callable[[], None]:
        # Commits of other processes reach these listeners too (mxd.store.watch).
        if self._watcher is not None and mailbox_id not in self._listeners:
            self._watcher.watch(mailbox_id)
        self._listeners.setdefault(mailbox_id, []).append(listener)

        def unsubscribe() -> None:
            lst = self._listeners.get(mailbox_id, [])
            if listener in lst:
                lst.remove(listener)
            if not lst and self._listeners.pop(mailbox_id, None) is not None:
                if self._watcher is not None:
                    self._watcher.unwatch(mailbox_id)

        return unsubscribe

    def catch_up(self) -> Deferred[None]:
        """Deliver other processes' commits to the listeners now rather than at the
        watcher's next tick (mxd.store.watch); fires when done."""
        if self._watcher is None or not self._watcher.running:
            return succeed(None)
        return self._watcher.catch_up()

    def on_foreign_commit(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` (reactor thread) soon after another process commits to the
        database (seen within ``watch_interval``); nothing when the watcher is off."""
        if self._watcher is not None:
            self._watcher.on_commit.append(fn)

    def on_account_changes(self, fn: Callable[[list[AccountChange]], None]) -> bool:
        """Call ``fn`` (reactor thread) with the mailbox name, subscription and
        annotation changes other processes commit from now on (mxd.store.watch); this
        process's own are not passed.  False (and ``fn`` is never called) when this
        store does not report them (no watcher; PostgreSQL)."""
        if self._watcher is None or not self._journal:
            return False
        self._watcher.on_account(fn)
        return True

    def record_account_change(self, conn: Conn, change: AccountChange) -> None:
        """Writer thread, inside ``transact``: note ``change`` for the other processes
        (it commits or rolls back with the transaction)."""
        if self._journal:
            record(conn, self.origin, change)

    def _dispatch(self, changes: list[MailboxChange]) -> None:
        for change in changes:
            for listener in list(self._listeners.get(change.mailbox_id, ())):
                try:
                    listener(change)
                except Exception:  # noqa: BLE001 - one listener must not break the others
                    log.failure("mailbox listener failed for {mailbox_id}",
                                mailbox_id=change.mailbox_id)

    # -- accounts --------------------------------------------------------------------------
    def add_account(self, name: str, secrets_text: str, addresses: Iterable[str] = ()) -> Deferred[Account]:
        addrs = tuple(addresses)

        def op(conn: sqlite3.Connection, ctx: OpContext) -> Account:
            q.check_account_name(name)
            try:
                row = conn.execute("INSERT INTO accounts (name, secrets) VALUES (?, ?) "
                                   "RETURNING id", (name, secrets_text)).fetchone()
            except INTEGRITY_ERRORS:
                raise AccountExists(f"account {name!r} exists") from None
            account_id = int(row[0])
            for a in addrs:
                q.insert_address(conn, account_id, a)
            for mbox, use in DEFAULT_MAILBOXES.items():
                q.create_one(conn, account_id, mbox, use, subscribed=True)
            return Account(account_id, name, addrs)

        return self._writer.submit(op)

    def delete_account(self, name: str) -> Deferred[None]:
        def op(conn: sqlite3.Connection, ctx: OpContext) -> None:
            account_id = q.account_id(conn, name)
            for (mailbox_id,) in conn.execute(
                    "SELECT id FROM mailboxes WHERE account_id = ?", (account_id,)).fetchall():
                self._drop_mailbox(conn, ctx, mailbox_id)
            conn.execute("DELETE FROM accounts WHERE id = ?", (account_id,))

        return self._writer.submit(op)

    def set_secrets(self, name: str, secrets_text: str) -> Deferred[None]:
        def op(conn: sqlite3.Connection, ctx: OpContext) -> None:
            cur = conn.execute("UPDATE accounts SET secrets = ? WHERE name = ?", (secrets_text, name))
            if cur.rowcount != 1:
                raise NoSuchAccount(f"no account {name!r}")

        return self._writer.submit(op)

    def get_account(self, name: str) -> Deferred[Account | None]:
        def op(conn: sqlite3.Connection, ctx: OpContext) -> Account | None:
            row = conn.execute("SELECT id, name FROM accounts WHERE name = ?", (name,)).fetchone()
            return q.account(conn, row[0], row[1]) if row else None

        return self._writer.submit(op)

    def get_account_by_id(self, account_id: int) -> Deferred[Account | None]:
        def op(conn: sqlite3.Connection, ctx: OpContext) -> Account | None:
            row = conn.execute("SELECT id, name FROM accounts WHERE id = ?", (account_id,)).fetchone()
            return q.account(conn, row[0], row[1]) if row else None

        return self._writer.submit(op)

    def get_secrets(self, name: str) -> Deferred[str | None]:
        def op(conn: sqlite3.Connection, ctx: OpContext) -> str | None:
            row = conn.execute("SELECT secrets FROM accounts WHERE name = ?", (name,)).fetchone()
            return str(row[0]) if row else None

        return self._writer.submit(op)

    def set_quota(self, name: str, quota_bytes: int | None) -> Deferred[None]:
        """Set the account's quota in bytes (None: the store's default)."""
        def op(conn: sqlite3.Connection, ctx: OpContext) -> None:
            if quota_bytes is not None and quota_bytes < 0:
                raise StoreError("a quota cannot be negative")
            cur = conn.execute("UPDATE accounts SET quota_bytes = ? WHERE name = ?",
                               (quota_bytes, name))
            if cur.rowcount != 1:
                raise NoSuchAccount(f"no account {name!r}")

        return self._writer.submit(op)

    def get_usage(self, account_id: int) -> Deferred[tuple[int, int | None]]:
        """(bytes used, quota in bytes or None) for RFC 9208 GETQUOTAROOT."""
        def op(conn: sqlite3.Connection, ctx: OpContext) -> tuple[int, int | None]:
            row = conn.execute("SELECT used_bytes, quota_bytes FROM accounts WHERE id = ?",
                               (account_id,)).fetchone()
            if row is None:
                raise NoSuchAccount(f"no account with id {account_id}")
            quota = row[1] if row[1] is not None else self.settings.quota_bytes
            return int(row[0]), quota

        return self._writer.submit(op)

    def _check_quota(self, conn: sqlite3.Connection, account_id: int, adding: int) -> None:
        """QuotaExceeded when the account would be over its quota after ``adding`` bytes
        (checked before or after the rows are written, in the same savepoint)."""
        row = conn.execute("SELECT used_bytes, quota_bytes FROM accounts WHERE id = ?",
                           (account_id,)).fetchone()
        self._quota_allows(account_id, row or (None, None), adding)

    def _quota_allows(self, account_id: int, use: Any, adding: int) -> None:
        """``_check_quota`` on the account's (used_bytes, quota_bytes) as read already
        (used_bytes None: no such account)."""
        if use[0] is None:
            raise NoSuchAccount(f"no account with id {account_id}")
        quota = use[1] if use[1] is not None else self.settings.quota_bytes
        if quota is not None and use[0] + adding > quota:
            raise QuotaExceeded(f"account {account_id} is over its quota of {quota} bytes")

    def list_accounts(self) -> Deferred[list[Account]]:
        def op(conn: sqlite3.Connection, ctx: OpContext) -> list[Account]:
            rows = conn.execute("SELECT id, name FROM accounts ORDER BY name").fetchall()
            return [q.account(conn, r[0], r[1]) for r in rows]

        return self._writer.submit(op)

    def add_address(self, name: str, address: str) -> Deferred[None]:
        def op(conn: sqlite3.Connection, ctx: OpContext) -> None:
            q.insert_address(conn, q.account_id(conn, name), address)

        return self._writer.submit(op)

    def remove_address(self, address: str) -> Deferred[None]:
        def op(conn: sqlite3.Connection, ctx: OpContext) -> None:
            conn.execute("DELETE FROM addresses WHERE address = ?", (address,))

        return self._writer.submit(op)

    def account_for_address(self, address: str) -> Deferred[Account | None]:
        def op(conn: sqlite3.Connection, ctx: OpContext) -> Account | None:
            row = conn.execute(
                "SELECT a.id, a.name FROM addresses d JOIN accounts a ON a.id = d.account_id "
                "WHERE d.address = ?", (address,)).fetchone()
            return q.account(conn, row[0], row[1]) if row else None

        return self._writer.submit(op)

    # -- delivery --------------------------------------------------------------------------
    def deliver(
        self, blob: BlobWriter, targets: Sequence[Delivery], props: MessageProps,
        internal_date: datetime | None = None,
    ) -> Deferred[list[int]]:
        d = self.accept(blob, targets, props, internal_date=internal_date)
        return d.addCallback(lambda accepted: list(accepted.uids))

    def accept(
        self, blob: BlobWriter, targets: Sequence[Delivery], props: MessageProps,
        outbound: OutboundMessage | None = None, queue_id: str | None = None, *,
        internal_date: datetime | None = None,
    ) -> Deferred[Accepted]:
        """IMailStore.accept: local copies, queue rows and body references in one
        transaction (one savepoint of a group commit)."""
        w = self._own_writer(blob)
        saved = self._now()
        when = _aware(internal_date or saved)
        targets = list(targets)
        if outbound is not None and not queue_id:
            raise StoreError("accept: an outbound part needs a queue id")
        now = self._reactor_seconds()
        # The values of a delivered body are computed after the commit, once the store
        # is quiet (mxd.store.derived.Later), not on the delivery's way.
        later = self._later if targets and self._derivers else None
        derive_now = bool(targets) and later is None

        def op(conn: sqlite3.Connection, ctx: OpContext) -> Accepted:
            flag_sets = [names.clean_flags(t.flags) for t in targets]
            self._register_blob(conn, ctx, w)
            if derive_now:
                self._derive_new(conn, ctx, w)
            uids = []
            for t, flags in zip(targets, flag_sets, strict=True):
                mailbox_id, uid, modseq, use = q.deliver_slot(conn, t.account_id, t.mailbox)
                self._quota_allows(t.account_id, use, w.size)
                q.insert_row(conn, mailbox_id, uid, modseq, w, flags, when, props, saved)
                ctx.changes.append(MailboxChange(mailbox_id, "exists", (uid,), modseq))
                uids.append(uid)
            failpoints.reach("accept.between")
            if outbound is not None and queue_id is not None:
                self._ref(conn, w.blob_id)
                try:
                    queuedb.insert_message(conn, queue_id, w.blob_id, outbound, now)
                except INTEGRITY_ERRORS as e:
                    raise StoreError(f"queue id {queue_id} is taken") from e
            elif not targets:
                self._gc(conn, ctx, [w.blob_id])  # nothing references the body: drop it
            return Accepted(tuple(uids), queue_id if outbound is not None else None)

        # A body for local mailboxes only may be fsynced alongside the commit
        # (mxd.store.unsynced); one the queue also sends is durable before it.
        d = self._writer.submit(op, [w], overlap=outbound is None and bool(targets),
                                prepare=self._prepare_derived(w) if derive_now else None)
        if later is not None:
            self._accepts += 1
            blob_id = w.blob_id

            def derive_later(accepted: Accepted) -> Accepted:
                later.add(blob_id)
                return accepted

            d.addCallback(derive_later)
        return d

    def _reactor_seconds(self) -> float:
        seconds = getattr(self._reactor, "seconds", time.time)
        return float(seconds())

    def append(
        self, mailbox_id: int, blob: BlobWriter, flags: frozenset[str],
        internal_date: datetime | None = None,
    ) -> Deferred[int]:
        w = self._own_writer(blob)
        saved = self._now()
        when = _aware(internal_date or saved)

        def op(conn: sqlite3.Connection, ctx: OpContext) -> int:
            clean = names.clean_flags(flags)
            self._register_blob(conn, ctx, w)
            q.check_mailbox(conn, mailbox_id)
            self._derive_new(conn, ctx, w)
            account_id = conn.execute("SELECT account_id FROM mailboxes WHERE id = ?",
                                      (mailbox_id,)).fetchone()[0]
            self._check_quota(conn, account_id, w.size)
            uid, modseq = q.insert_new(conn, mailbox_id, w, clean, when, MessageProps(), saved)
            ctx.changes.append(MailboxChange(mailbox_id, "exists", (uid,), modseq))
            return uid

        return self._writer.submit(op, [w], overlap=True, prepare=self._prepare_derived(w))

    def append_to(
        self, account_id: int, name: str, blob: BlobWriter, flags: frozenset[str],
        internal_date: datetime | None = None,
    ) -> Deferred[Appended]:
        w = self._own_writer(blob)
        saved = self._now()
        when = _aware(internal_date or saved)

        def op(conn: sqlite3.Connection, ctx: OpContext) -> Appended:
            clean = names.clean_flags(flags)
            row = conn.execute("SELECT id, uidvalidity FROM mailboxes WHERE account_id = ? "
                               "AND name = ?", (account_id, names.normalize_mailbox_name(name)),
                               ).fetchone()
            if row is None:
                raise NoSuchMailbox(f"no mailbox {name!r}")
            mailbox_id = int(row[0])
            self._register_blob(conn, ctx, w)
            self._derive_new(conn, ctx, w)
            self._check_quota(conn, account_id, w.size)
            uid, modseq = q.insert_new(conn, mailbox_id, w, clean, when, MessageProps(), saved)
            ctx.changes.append(MailboxChange(mailbox_id, "exists", (uid,), modseq))
            return Appended(mailbox_id, int(row[1]), uid)

        return self._writer.submit(op, [w], overlap=True, prepare=self._prepare_derived(w))

    def append_many(
        self, mailbox_id: int, items: Sequence[tuple[BlobWriter, frozenset[str], datetime | None]],
    ) -> Deferred[list[int]]:
        writers = [(self._own_writer(b), f, _aware(d or self._now())) for b, f, d in items]

        def op(conn: sqlite3.Connection, ctx: OpContext) -> list[int]:
            # RFC 3502 §6.3.11: all or none; one savepoint holds them all.
            q.check_mailbox(conn, mailbox_id)
            account_id = conn.execute("SELECT account_id FROM mailboxes WHERE id = ?",
                                      (mailbox_id,)).fetchone()[0]
            self._check_quota(conn, account_id, sum(w.size for w, _, _ in writers))
            uids = []
            for w, flags, when in writers:
                self._register_blob(conn, ctx, w)
                uid, modseq = q.insert_new(conn, mailbox_id, w, names.clean_flags(flags), when,
                                           MessageProps())
                ctx.changes.append(MailboxChange(mailbox_id, "exists", (uid,), modseq))
                uids.append(uid)
            return uids

        return self._writer.submit(op, [w for w, _, _ in writers])

    def replace(
        self, mailbox_id: int, uid: int, dest_mailbox_id: int, blob: BlobWriter,
        flags: frozenset[str], internal_date: datetime | None = None,
    ) -> Deferred[int]:
        w = self._own_writer(blob)
        when = _aware(internal_date or self._now())

        def op(conn: sqlite3.Connection, ctx: OpContext) -> int:
            # RFC 8508 §3.4: the append and the expunge of the original happen together.
            q.check_mailbox(conn, mailbox_id)
            q.check_mailbox(conn, dest_mailbox_id)
            old = q.rows_for_uids(conn, mailbox_id, [uid])
            if not old:
                raise MessageGone(f"no message {uid} in mailbox {mailbox_id}")
            old_size, old_blob = old[0][4], old[0][6]
            clean = names.clean_flags(flags)
            self._register_blob(conn, ctx, w)
            account_id = conn.execute("SELECT account_id FROM mailboxes WHERE id = ?",
                                      (dest_mailbox_id,)).fetchone()[0]
            self._check_quota(conn, account_id, w.size - old_size)
            new_uid, modseq = q.insert_new(conn, dest_mailbox_id, w, clean, when, MessageProps())
            ctx.changes.append(MailboxChange(dest_mailbox_id, "exists", (new_uid,), modseq))
            q.remove(conn, ctx, mailbox_id, [uid])
            self._gc(conn, ctx, [old_blob])
            return new_uid

        return self._writer.submit(op, [w])

    # -- mailboxes -------------------------------------------------------------------------
    def list_mailboxes(self, account_id: int) -> Deferred[list[MailboxInfo]]:
        def op(conn: sqlite3.Connection, ctx: OpContext) -> list[MailboxInfo]:
            q.check_account(conn, account_id)
            rows = conn.execute(q.MAILBOX_SELECT + " WHERE m.account_id = ? ORDER BY m.name",
                                (account_id,)).fetchall()
            return [q.mailbox_info(r) for r in rows]

        return self._writer.submit(op)

    def get_mailbox(self, account_id: int, name: str, counts: bool = True) -> Deferred[MailboxInfo]:
        mailbox_name = name
        select = q.MAILBOX_SELECT if counts else q.MAILBOX_SELECT_NO_COUNTS

        def op(conn: sqlite3.Connection, ctx: OpContext) -> MailboxInfo:
            name = names.normalize_mailbox_name(mailbox_name)
            row = conn.execute(select + " WHERE m.account_id = ? AND m.name = ?",
                               (account_id, name)).fetchone()
            if row is None:
                q.check_account(conn, account_id)
                raise NoSuchMailbox(f"no mailbox {name!r}")
            return q.mailbox_info(row)

        return self._writer.submit(op)

    def get_mailbox_by_id(self, mailbox_id: int) -> Deferred[MailboxInfo]:
        def op(conn: sqlite3.Connection, ctx: OpContext) -> MailboxInfo:
            row = conn.execute(q.MAILBOX_SELECT + " WHERE m.id = ?", (mailbox_id,)).fetchone()
            if row is None:
                raise NoSuchMailbox(f"no mailbox with id {mailbox_id}")
            return q.mailbox_info(row)

        return self._writer.submit(op)

    def create_mailbox(self, account_id: int, name: str, special_use: SpecialUse | None = None) -> Deferred[MailboxInfo]:
        mailbox_name = name

        def op(conn: sqlite3.Connection, ctx: OpContext) -> MailboxInfo:
            name = names.normalize_mailbox_name(mailbox_name)
            q.check_account(conn, account_id)
            if q.find_mailbox(conn, account_id, name) is not None:
                raise MailboxExists(f"mailbox {name!r} exists")
            for parent in names.parents(name):  # RFC 3501 §6.3.3
                if q.find_mailbox(conn, account_id, parent) is None:
                    q.create_one(conn, account_id, parent, None, subscribed=False)
            # A subscription kept from a deleted mailbox of that name applies again.
            orphan = conn.execute("DELETE FROM orphan_subscriptions WHERE account_id = ? "
                                  "AND name = ?", (account_id, name)).rowcount
            mailbox_id = q.create_one(conn, account_id, name, special_use,
                                      subscribed=bool(orphan))
            self.record_account_change(conn, AccountChange(account_id, "name", name,
                                                    subscribed=bool(orphan)))
            row = conn.execute(q.MAILBOX_SELECT + " WHERE m.id = ?", (mailbox_id,)).fetchone()
            return q.mailbox_info(row)

        return self._writer.submit(op)

    def delete_mailbox(self, account_id: int, name: str) -> Deferred[None]:
        mailbox_name = name

        def op(conn: sqlite3.Connection, ctx: OpContext) -> None:
            name = names.normalize_mailbox_name(mailbox_name)
            if names.is_inbox(name):
                raise CannotDeleteInbox("INBOX cannot be deleted")
            mailbox_id = q.mailbox_id(conn, account_id, name)
            child = conn.execute(
                "SELECT 1 FROM mailboxes WHERE account_id = ? AND name LIKE ? ESCAPE '!' LIMIT 1",
                (account_id, names.like_children(name))).fetchone()
            if child is not None:  # RFC 3501 §6.3.4
                raise MailboxHasChildren(f"mailbox {name!r} has inferior mailboxes")
            # RFC 3501 §6.3.6: deleting a mailbox does not unsubscribe its name.
            conn.execute("INSERT INTO orphan_subscriptions (account_id, name) "
                         "SELECT account_id, name FROM mailboxes WHERE id = ? AND subscribed <> 0 "
                         "ON CONFLICT DO NOTHING", (mailbox_id,))
            self._drop_mailbox(conn, ctx, mailbox_id)
            self.record_account_change(conn, AccountChange(account_id, "name", name, exists=False))

        return self._writer.submit(op)

    def _drop_mailbox(self, conn: sqlite3.Connection, ctx: OpContext, mailbox_id: int) -> None:
        blob_ids = [r[0] for r in conn.execute(
            "SELECT DISTINCT blob_id FROM messages WHERE mailbox_id = ?", (mailbox_id,))]
        conn.execute("DELETE FROM messages WHERE mailbox_id = ?", (mailbox_id,))
        conn.execute("DELETE FROM mailboxes WHERE id = ?", (mailbox_id,))
        self._gc(conn, ctx, blob_ids)
        ctx.changes.append(MailboxChange(mailbox_id, "deleted"))

    def rename_mailbox(self, account_id: int, old: str, new: str) -> Deferred[None]:
        old_name, new_name = old, new

        def op(conn: sqlite3.Connection, ctx: OpContext) -> None:
            old = names.normalize_mailbox_name(old_name)
            new = names.normalize_mailbox_name(new_name)
            src = q.mailbox_id(conn, account_id, old)
            if q.find_mailbox(conn, account_id, new) is not None:
                raise MailboxExists(f"mailbox {new!r} exists")
            if names.is_inferior(new, old):
                raise InvalidMailboxName(f"cannot rename {old!r} to its own inferior {new!r}")
            for parent in names.parents(new):
                if q.find_mailbox(conn, account_id, parent) is None:
                    q.create_one(conn, account_id, parent, None, subscribed=False)
            if names.is_inbox(old):  # RFC 3501 §6.3.5: move INBOX's messages, keep INBOX
                dest = q.create_one(conn, account_id, new, None, subscribed=False)
                uids = [r[0] for r in conn.execute(
                    "SELECT uid FROM messages WHERE mailbox_id = ? ORDER BY uid", (src,))]
                q.move(conn, ctx, src, uids, dest, self._now())
                self.record_account_change(conn, AccountChange(account_id, "name", new))
                return
            affected = [r[0] for r in conn.execute(
                "SELECT id FROM mailboxes WHERE account_id = ? AND (name = ? OR name LIKE ? ESCAPE '!')",
                (account_id, old, names.like_children(old)))]
            try:
                conn.execute(
                    "UPDATE mailboxes SET name = ? || substr(name, ?) WHERE account_id = ? "
                    "AND (name = ? OR name LIKE ? ESCAPE '!')",
                    (new, len(old) + 1, account_id, old, names.like_children(old)))
            except INTEGRITY_ERRORS:
                raise MailboxExists(f"a mailbox below {new!r} exists") from None
            for mailbox_id in affected:
                ctx.changes.append(MailboxChange(mailbox_id, "renamed"))
            self.record_account_change(conn, AccountChange(account_id, "name", new, old=old))

        return self._writer.submit(op)

    def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> Deferred[None]:
        mailbox_name = name

        def op(conn: sqlite3.Connection, ctx: OpContext) -> None:
            name = names.normalize_mailbox_name(mailbox_name)
            if not subscribed and conn.execute(
                    "DELETE FROM orphan_subscriptions WHERE account_id = ? AND name = ?",
                    (account_id, name)).rowcount:
                # the subscription of a deleted mailbox ends
                self.record_account_change(conn, AccountChange(account_id, "subscription", name))
                return
            mailbox_id = q.mailbox_id(conn, account_id, name)
            conn.execute("UPDATE mailboxes SET subscribed = ? WHERE id = ?",
                         (int(subscribed), mailbox_id))
            self.record_account_change(conn, AccountChange(account_id, "subscription", name,
                                                    subscribed=subscribed))

        return self._writer.submit(op)

    def list_subscriptions(self, account_id: int) -> Deferred[list[str]]:
        """Subscribed names, including those whose mailbox was deleted (RFC 3501 §6.3.6)."""
        def op(conn: sqlite3.Connection, ctx: OpContext) -> list[str]:
            rows = conn.execute(
                "SELECT name FROM mailboxes WHERE account_id = ? AND subscribed <> 0 UNION "
                "SELECT name FROM orphan_subscriptions WHERE account_id = ? ORDER BY 1",
                (account_id, account_id)).fetchall()
            return [r[0] for r in rows]

        return self._writer.submit(op)

    # -- messages --------------------------------------------------------------------------
    def list_messages(self, mailbox_id: int, since_modseq: int = 0) -> Deferred[list[MessageInfo]]:
        def op(conn: sqlite3.Connection, ctx: OpContext) -> list[MessageInfo]:
            q.check_mailbox(conn, mailbox_id)
            rows = conn.execute(
                q.MESSAGE_SELECT + " WHERE mailbox_id = ? AND modseq > ? ORDER BY uid",
                (mailbox_id, since_modseq)).fetchall()
            return [q.message_info(r) for r in rows]

        return self._writer.submit(op)

    def get_message(self, mailbox_id: int, uid: int) -> Deferred[MessageInfo | None]:
        """IMailStore.get_message: one row by the (mailbox_id, uid) key."""
        def op(conn: sqlite3.Connection, ctx: OpContext) -> MessageInfo | None:
            q.check_mailbox(conn, mailbox_id)
            row = conn.execute(q.MESSAGE_SELECT + " WHERE mailbox_id = ? AND uid = ?",
                               (mailbox_id, uid)).fetchone()
            return None if row is None else q.message_info(row)

        return self._writer.submit(op)

    def newest_messages(self, mailbox_id: int, limit: int, *, offset: int = 0,
                        before_uid: int | None = None) -> Deferred[list[MessageInfo]]:
        """IMailStore.newest_messages: a page in descending UID order (one indexed
        query; a list page of a large mailbox builds no object per message)."""
        def op(conn: sqlite3.Connection, ctx: OpContext) -> list[MessageInfo]:
            q.check_mailbox(conn, mailbox_id)
            below = (1 << 62) if before_uid is None else before_uid
            rows = conn.execute(
                q.MESSAGE_SELECT + " WHERE mailbox_id = ? AND uid < ? ORDER BY uid DESC"
                " LIMIT ? OFFSET ?", (mailbox_id, below, max(0, limit), max(0, offset))
            ).fetchall()
            return [q.message_info(r) for r in rows]

        return self._writer.submit(op)

    def save_dates(self, mailbox_id: int,
                   uids: Sequence[int] | None = None) -> Deferred[dict[int, datetime]]:
        """RFC 8514: the save dates of a mailbox's messages (all, or of ``uids``) by UID."""
        wanted = None if uids is None else list(uids)

        def op(conn: sqlite3.Connection, ctx: OpContext) -> dict[int, datetime]:
            q.check_mailbox(conn, mailbox_id)
            return q.save_dates(conn, mailbox_id, wanted)

        return self._writer.submit(op)

    def message_columns(self, mailbox_id: int) -> Deferred[MessageColumns]:
        """All messages as MessageColumns, built on the writer thread (IMAP SELECT of a
        large mailbox costs the reactor nothing per message)."""
        def op(conn: sqlite3.Connection, ctx: OpContext) -> MessageColumns:
            q.check_mailbox(conn, mailbox_id)
            return q.message_columns(conn, mailbox_id)

        return self._writer.submit(op)

    def list_vanished(self, mailbox_id: int, since_modseq: int = 0) -> Deferred[list[int]]:
        """UIDs expunged after ``since_modseq`` (RFC 7162 §3.2.5.2 VANISHED (EARLIER))."""
        def op(conn: sqlite3.Connection, ctx: OpContext) -> list[int]:
            q.check_mailbox(conn, mailbox_id)
            return [r[0] for r in conn.execute(
                "SELECT uid FROM vanished WHERE mailbox_id = ? AND modseq > ? ORDER BY uid",
                (mailbox_id, since_modseq))]

        return self._writer.submit(op)

    def get_message_props(self, mailbox_id: int, uid: int) -> Deferred[MessageProps | None]:
        """The MessageProps recorded at delivery; None when there is no such message."""
        def op(conn: sqlite3.Connection, ctx: OpContext) -> MessageProps | None:
            row = conn.execute(
                "SELECT requiretls, tls_required_no, mail_from, received_via FROM messages "
                "WHERE mailbox_id = ? AND uid = ?", (mailbox_id, uid)).fetchone()
            if row is None:
                return None
            return MessageProps(bool(row[0]), bool(row[1]), row[2], row[3])

        return self._writer.submit(op)

    def store_flags(
        self, mailbox_id: int, uids: Sequence[int], flags: frozenset[str], mode: str,
        unchanged_since: int | None = None,
    ) -> Deferred[tuple[list[MessageInfo], list[int]]]:
        uid_list = list(uids)

        def op(conn: sqlite3.Connection, ctx: OpContext) -> tuple[list[MessageInfo], list[int]]:
            if mode not in ("set", "add", "remove"):
                raise StoreError(f"unknown flag store mode {mode!r}")
            clean = names.clean_flags(flags)
            q.check_mailbox(conn, mailbox_id)
            todo, failed = q.plan_flag_changes(q.rows_for_uids(conn, mailbox_id, uid_list),
                                               clean, mode, unchanged_since)
            changed: list[MessageInfo] = []
            if todo:
                modseq = q.bump_modseq(conn, mailbox_id)
                for info, new in todo:
                    conn.execute(
                        "UPDATE messages SET flags = ?, modseq = ? WHERE mailbox_id = ? AND uid = ?",
                        (names.flags_to_text(new), modseq, mailbox_id, info.uid))
                    changed.append(attrs.evolve(info, flags=new, modseq=modseq))
                ctx.changes.append(MailboxChange(
                    mailbox_id, "flags", tuple(m.uid for m in changed), modseq))
            return changed, sorted(failed)

        return self._writer.submit(op)

    def copy(self, mailbox_id: int, uids: Sequence[int], dest_mailbox_id: int) -> Deferred[list[tuple[int, int]]]:
        uid_list = list(uids)
        saved = self._now()

        def op(conn: sqlite3.Connection, ctx: OpContext) -> list[tuple[int, int]]:
            pairs = q.copy(conn, ctx, mailbox_id, uid_list, dest_mailbox_id, saved)
            account_id = conn.execute("SELECT account_id FROM mailboxes WHERE id = ?",
                                      (dest_mailbox_id,)).fetchone()[0]
            self._check_quota(conn, account_id, 0)
            return pairs

        return self._writer.submit(op)

    def move(self, mailbox_id: int, uids: Sequence[int], dest_mailbox_id: int) -> Deferred[list[tuple[int, int]]]:
        uid_list = list(uids)
        saved = self._now()

        def op(conn: sqlite3.Connection, ctx: OpContext) -> list[tuple[int, int]]:
            return q.move(conn, ctx, mailbox_id, uid_list, dest_mailbox_id, saved)

        return self._writer.submit(op)

    def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> Deferred[list[int]]:
        uid_list = None if uids is None else list(uids)

        def op(conn: sqlite3.Connection, ctx: OpContext) -> list[int]:
            q.check_mailbox(conn, mailbox_id)
            if uid_list is None:
                rows = conn.execute(
                    "SELECT uid, blob_id FROM messages WHERE mailbox_id = ? "
                    "AND instr(flags, ' \\Deleted ') > 0 ORDER BY uid", (mailbox_id,)).fetchall()
                pairs = [(r[0], r[1]) for r in rows]
            else:
                pairs = [(r[0], r[6]) for r in q.rows_for_uids(conn, mailbox_id, uid_list)
                         if "\\Deleted" in names.flags_from_text(r[2])]
            if not pairs:
                return []
            gone = [uid for uid, _ in pairs]
            q.remove(conn, ctx, mailbox_id, gone)
            self._gc(conn, ctx, [b for _, b in pairs])
            return gone

        return self._writer.submit(op)


def _aware(when: datetime) -> datetime:
    """Internal dates are timezone-aware; a naive one is taken as UTC."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


__all__ = [
    "CannotDeleteInbox",
    "MailboxHasChildren",
    "SQLiteStore",
    "StoreClosed",
    "StoreSettings",
]
