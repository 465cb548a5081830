"""The store's single writer thread, with group commit.

All SQLite work runs on one thread (a Twisted ``ThreadPool`` of size 1), so the reactor
never waits on an fsync.  Operations submitted while a batch is running queue up and
run together as the next batch: their body files are fsynced (in parallel, then each
touched directory once), then every operation runs inside its own SAVEPOINT of one transaction, and a
single COMMIT (one WAL fsync under ``synchronous=FULL``) makes them all durable.  An
operation that raises is rolled back to its savepoint alone; the others commit.  Each
operation's Deferred fires on the reactor thread only after that COMMIT, followed by its
post-commit work (removing body files whose last reference went away, notifying
listeners).

An operation submitted with ``overlap=True`` (APPEND, a delivery without an outbound
part) lets the fsync of its new pooled bodies run on a helper thread *during* the
transaction instead of before it, recorded in ``unsynced_blobs`` until done
(mxd.store.unsynced has the recovery argument); its Deferred still fires only once both
the body and the commit are durable.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from mxd.store import failpoints
from mxd.store import unsynced as unsynced_mod
from mxd.store.blobs import BlobFiles, FileBlobWriter
from mxd.store.interfaces import MailboxChange, StoreError
from mxd.threadsched import mark_background

log = Logger()

T = TypeVar("T")


class StoreClosed(StoreError):
    """The store is closed (or not yet open)."""


class PoolLike(Protocol):
    """The part of ``twisted.python.threadpool.ThreadPool`` the writer uses."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def callInThreadWithCallback(self, onResult: Any, func: Any, *args: Any, **kw: Any) -> None: ...


class WriteLockLike(Protocol):
    def acquire(self) -> None: ...

    def release(self) -> None: ...


@attrs.define
class OpContext:
    """Collected by one operation while it runs; acted on after its commit."""

    unlink_after_commit: list[str] = attrs.Factory(list)
    changes: list[MailboxChange] = attrs.Factory(list)
    # Bodies made durable for this operation alone: removed again if it rolls back.
    fresh_blobs: list[str] = attrs.Factory(list)
    # Derived data computed by the operation's ``prepare``, outside the transaction:
    # body id -> {kind: value} (mxd.store.derived).
    derived: dict[str, dict[str, bytes]] = attrs.Factory(dict)


@attrs.define(eq=False)
class _Op(Generic[T]):
    fn: Callable[[sqlite3.Connection, OpContext], T]
    deferred: Deferred[T]
    blobs: Sequence[FileBlobWriter]
    overlap: bool = False  # the bodies' fsync may run alongside the commit
    prepare: Callable[[OpContext], None] | None = None  # runs before the transaction
    ctx: OpContext = attrs.Factory(OpContext)
    error: BaseException | None = None
    result: Any = None


class Writer:
    """Runs operations on the writer thread in group-committed batches."""

    def __init__(
        self, reactor: IReactorFromThreads, pool: PoolLike, files: BlobFiles,
        *, max_batch: int = 64,
    ) -> None:
        self._reactor = reactor
        self._pool = pool
        self._files = files
        self._max_batch = max(1, max_batch)
        self._pending: list[_Op[Any]] = []
        # Appended to on the reactor thread, taken from on the writer thread.
        self._pending_lock = threading.Lock()
        self._running = False
        self._closed = True  # refusing new work
        self._ready = False  # the connection is open; batches may run
        self._pool_running = False
        self._conn: sqlite3.Connection | None = None
        self._idle_waiters: list[Deferred[None]] = []
        self.on_changes: Callable[[list[MailboxChange]], None] = lambda changes: None
        # Of the bodies a commit left unreferenced, those to remove now (the store keeps
        # the ones readers hold, see SQLiteStore.hold_blob).
        self.keep_bodies: Callable[[list[str]], list[str]] = lambda blob_ids: blob_ids
        # Taken around each batch's transaction when several processes share the
        # database (see mxd.store.sqlitedb.WriteLock); None: SQLite's busy handler alone.
        self.write_lock: WriteLockLike | None = None
        self.batches = 0  # counters for tests and metrics
        self.ops = 0
        self.overlapped = 0  # bodies fsynced alongside their commit
        # Bodies fsynced since their unsynced_blobs entry was written (writer thread).
        self._synced: list[str] = []

    # -- lifecycle (reactor thread) ------------------------------------------------------
    def start(self, connect: Callable[[], sqlite3.Connection]) -> Deferred[None]:
        """Start the thread and open the connection on it.  Work submitted from now on
        waits for the open and then runs (or fails with the open's error)."""
        self._closed = False
        self._pool.start()
        self._pool_running = True

        def _open() -> None:
            mark_background()  # the writer thread: see mxd.threadsched
            self._conn = connect()

        d: Deferred[None] = deferToThreadPool(self._reactor, self._pool, _open)  # type: ignore[arg-type]

        def _opened(_: object) -> None:
            self._ready = True
            self._kick()

        def _failed(f: Failure) -> Failure:
            self._closed = True
            self._stop_pool()
            with self._pending_lock:
                pending, self._pending = self._pending, []
            for op in pending:
                for b in op.blobs:
                    b.discard()
                op.deferred.errback(StoreClosed(f"the store could not be opened: {f.value}"))
            self._notify_idle()
            return f

        d.addCallbacks(_opened, _failed)
        return d

    @property
    def idle(self) -> bool:
        return not self._running and not self._pending

    def when_idle(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.idle:
            d.callback(None)
        else:
            self._idle_waiters.append(d)
        return d

    def stop(self, finish: Callable[[sqlite3.Connection], None] | None = None) -> Deferred[None]:
        """Refuse new work, let queued work finish, close the connection, stop the thread."""
        if self._closed:
            return succeed(None)
        self._closed = True

        def _close_conn() -> None:
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    self._forget_synced(conn)
                    if finish is not None:
                        finish(conn)
                finally:
                    conn.close()

        def _after_idle(_: object) -> Deferred[None] | None:
            self._ready = False
            if not self._pool_running:  # the open failed; nothing to close
                return None
            return deferToThreadPool(self._reactor, self._pool, _close_conn)  # type: ignore[arg-type]

        def _stop_pool(result: object) -> object:
            self._stop_pool()
            return result

        done = self.when_idle().addCallback(_after_idle).addBoth(_stop_pool)
        return done  # type: ignore[return-value]

    def _stop_pool(self) -> None:
        if self._pool_running:
            self._pool_running = False
            self._pool.stop()

    # -- submitting work (reactor thread) ------------------------------------------------
    def submit(
        self, fn: Callable[[sqlite3.Connection, OpContext], T],
        blobs: Sequence[FileBlobWriter] = (), *, overlap: bool = False,
        prepare: Callable[[OpContext], None] | None = None,
    ) -> Deferred[T]:
        """Run ``fn(conn, ctx)`` in the next batch; fires with its result after COMMIT
        (and the bodies' fsync).  ``overlap``: the bodies are referenced by message rows
        only (mxd.store.unsynced may remove those after a crash), so their fsync may run
        alongside the commit.  ``prepare(ctx)`` runs first, outside the transaction
        (while the bodies' fsync runs): CPU work whose result ``fn`` only stores."""
        d: Deferred[T] = Deferred()
        if self._closed:
            for b in blobs:
                b.discard()
            d.errback(StoreClosed("the store is closed"))
            return d
        for b in blobs:
            b.seal()
        with self._pending_lock:
            self._pending.append(_Op(fn, d, blobs, overlap, prepare))
        self._kick()
        return d

    def _kick(self) -> None:
        if not self._ready:
            return
        if self._running or not self._pending:
            if not self._running and not self._pending:
                self._notify_idle()
            return
        self._running = True
        taken: list[list[_Op[Any]]] = []

        def take_and_run() -> None:
            # The writer thread takes the batch when it starts, not when it was asked
            # to: it runs once the reactor thread waits (mxd.threadsched), by when more
            # operations may have come, and they share the transaction and the fsync.
            with self._pending_lock:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
            taken.append(batch)
            self._run_batch(batch)

        d = deferToThreadPool(self._reactor, self._pool, take_and_run)  # type: ignore[arg-type]
        d.addCallbacks(lambda _: self._batch_done(taken[0]),
                       lambda f: self._batch_failed(f, taken[0] if taken else []))

    def _notify_idle(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for w in waiters:
            w.callback(None)

    def _batch_done(self, batch: list[_Op[Any]]) -> None:
        self.batches += 1
        self.ops += len(batch)
        changes: list[MailboxChange] = []
        for op in batch:
            if op.error is None:
                changes.extend(op.ctx.changes)
        if changes:
            try:
                self.on_changes(changes)
            except Exception:  # noqa: BLE001 - listeners must not break the store
                log.failure("store change listener failed")
        unlink = [b for op in batch if op.error is None for b in op.ctx.unlink_after_commit]
        unlink = self.keep_bodies(unlink) if unlink else unlink

        def finish(_: object = None) -> None:
            self._running = False
            for op in batch:
                if op.error is not None:
                    op.deferred.errback(Failure(op.error))
                else:
                    op.deferred.callback(op.result)
            self._kick()

        if unlink:
            # Off the reactor thread, and before the operations report success, so that
            # a body is gone once the expunge that dropped it has answered.
            d = deferToThreadPool(self._reactor, self._pool, self._files.unlink, unlink)  # type: ignore[arg-type]
            d.addErrback(lambda f: log.failure("removing bodies failed", f))
            d.addBoth(finish)
        else:
            finish()

    def call(self, fn: Callable[[sqlite3.Connection], T]) -> Deferred[T]:
        """Run ``fn(conn)`` on the writer thread outside any transaction and batch (a
        cheap read such as ``PRAGMA data_version``); StoreClosed when not open."""
        if self._closed or not self._ready or not self._pool_running:
            return fail(StoreClosed("the store is closed"))

        def run() -> T:
            conn = self._conn
            if conn is None:
                raise StoreClosed("the store is closed")
            return fn(conn)

        return deferToThreadPool(self._reactor, self._pool, run)  # type: ignore[arg-type]

    def unlink_later(self, blob_ids: list[str]) -> None:
        """Remove bodies no longer referenced nor held (after a hold ends)."""
        if blob_ids:
            self.run_files(lambda: self._files.unlink(blob_ids))

    def run_files(self, fn: Callable[[], object]) -> None:
        """Run a blocking file operation (unlink, pin) off the reactor thread, in order
        with the others; at once when the writer is not running."""
        if self._pool_running:
            d = deferToThreadPool(self._reactor, self._pool, fn)  # type: ignore[arg-type]
            d.addErrback(lambda f: log.failure("body file operation failed", f))
        else:
            fn()

    def _forget_synced(self, conn: sqlite3.Connection) -> list[str]:
        """Writer thread: drop the unsynced_blobs entries of bodies fsynced since (in the
        transaction under way); returns their ids, to be kept should it roll back."""
        forgotten = self._synced
        if forgotten:
            unsynced_mod.forget(conn, forgotten)
            self._synced = []
        return forgotten

    def _finish_overlap(self, conn: sqlite3.Connection, batch: list[_Op[Any]],
                        ahead: dict[int, FileBlobWriter],
                        errors: list[BaseException | None]) -> None:
        """After the commit: the bodies fsynced alongside it are durable, or their
        committed messages are removed again and their operations fail."""
        failpoints.reach("overlap.after_commit")
        if failpoints.enabled("overlap.body_lost"):
            for w in ahead.values():  # as an OS crash losing the unwritten pages would
                os.truncate(self._files.path(w.blob_id), 0)
            failpoints.reach("overlap.body_lost")
        writers = list(ahead.values())
        failed = {w.blob_id: e for w, e in zip(writers, errors, strict=True) if e is not None}
        self.overlapped += len(writers)
        ok = [w.blob_id for w in writers if w.blob_id not in failed]
        committed = [op for op in batch if op.error is None]
        for op in committed:
            bad = [b for b in (w.blob_id for w in op.blobs if id(w) in ahead) if b in failed]
            if bad:
                op.error = StoreError(f"cannot store message body: {failed[bad[0]]}")
        if not failed:
            self._synced.extend(ok)
            return
        log.error("{n} message bodies could not be made durable: {error}", n=len(failed),
                  error=next(iter(failed.values())))
        lock = self.write_lock
        if lock is not None:
            lock.acquire()
        try:  # undo the committed rows that reference them (mxd.store.unsynced)
            conn.execute("BEGIN IMMEDIATE")
            gone = unsynced_mod.remove_bodies(conn, OpContext(), list(failed))
            conn.execute("COMMIT")
            self._files.unlink(gone)
        except sqlite3.Error as e:  # pragma: no cover - a disk failure on top of one
            log.error("cannot undo messages with failed bodies: {error}", error=e)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        finally:
            if lock is not None:
                lock.release()
        self._synced.extend(ok)

    def _batch_failed(self, f: Failure, batch: list[_Op[Any]]) -> None:  # pragma: no cover
        # _run_batch catches everything; this is a last resort so no Deferred hangs.
        log.failure("store batch failed", f)
        for op in batch:
            op.error = op.error or f.value
        self._batch_done(batch)

    # -- the writer thread ---------------------------------------------------------------
    def _run_batch(self, batch: list[_Op[Any]]) -> None:
        conn = self._conn
        if conn is None:
            for op in batch:
                op.error = StoreClosed("the store is closed")
            return
        # 1. Bodies: fsync + rename, one directory fsync per directory.  New pooled
        # bodies of operations that allow it are fsynced on a helper thread while the
        # transaction runs (step 2); the others before it.
        writers: list[tuple[_Op[Any], FileBlobWriter, bool]] = []
        seen: set[int] = set()
        for op in batch:
            for w in op.blobs:
                writers.append((op, w, not w.durable and id(w) not in seen))
                seen.add(id(w))
        strict = {id(w) for op, w, _ in writers if not op.overlap or not w.pooled}
        ahead = {id(w): w for _, w, fresh in writers if fresh and id(w) not in strict}
        now = [(op, w, fresh) for op, w, fresh in writers if id(w) not in ahead]
        if now:
            errors = self._files.make_durable([w for _, w, _ in now])
            for (op, w, fresh), err in zip(now, errors, strict=True):
                if err is not None and op.error is None:
                    op.error = StoreError(f"cannot store message body: {err}")
                elif fresh and err is None:
                    op.ctx.fresh_blobs.append(w.blob_id)
        syncing = self._files.start_durable(list(ahead.values())) if ahead else None
        unsynced: dict[int, list[FileBlobWriter]] = {}  # id(op) -> its bodies in flight
        for op, w, fresh in writers:
            if fresh and id(w) in ahead:
                op.ctx.fresh_blobs.append(w.blob_id)
                unsynced.setdefault(id(op), []).append(w)
        for op in batch:  # CPU work of the operations, while the bodies' fsync runs
            if op.prepare is not None and op.error is None:
                try:
                    op.prepare(op.ctx)
                except Exception as e:  # noqa: BLE001 - the error goes to its Deferred
                    op.error = e
        # 2. One transaction, one savepoint per operation.  ``BEGIN IMMEDIATE`` takes the
        # database's write lock before the first read (waiting up to the busy timeout for
        # another process): a transaction that read first could fail to upgrade with
        # SQLITE_BUSY midway, which no wait resolves.  Processes sharing the database take
        # turns on ``write_lock`` first, woken by the kernel, rather than in SQLite's busy
        # handler, which polls with sleeps of up to 100 ms.
        live = [op for op in batch if op.error is None]
        # An operation alone in its transaction needs no savepoint: if it fails, the
        # whole transaction is rolled back (two statements fewer per lone delivery).
        alone = len(live) == 1
        forgotten: list[str] = []
        committed = False
        lock = self.write_lock
        if lock is not None:
            lock.acquire()
        try:
            conn.execute("BEGIN IMMEDIATE")
            forgotten = self._forget_synced(conn)
            for op in live:
                if not alone:
                    conn.execute("SAVEPOINT op")
                try:
                    op.result = op.fn(conn, op.ctx)
                    for w in unsynced.get(id(op), ()):
                        unsynced_mod.record(conn, w.blob_id, w.size, w.digest)
                    if not alone:
                        conn.execute("RELEASE op")
                except BaseException as e:  # noqa: BLE001 - the error goes to its Deferred
                    if alone:
                        conn.execute("ROLLBACK")
                    else:
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                    if isinstance(e, sqlite3.Error):
                        err = StoreError(f"database error: {e}")
                        err.__cause__ = e
                        op.error = err
                    else:
                        op.error = e
            if conn.in_transaction:  # not when the lone operation failed and rolled back
                conn.execute("COMMIT")
                committed = True
        except sqlite3.Error as e:
            log.error("store commit failed: {error}", error=e)
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            for op in live:
                if op.error is None:
                    op.error = StoreError(f"database error: {e}")
        finally:
            if lock is not None:
                lock.release()
        if not committed:  # the entries' removal went with the transaction: next time
            self._synced[:0] = forgotten
        if syncing is not None:
            self._finish_overlap(conn, batch, ahead, syncing.result())
        # 3. After the commit: remove the bodies of rolled-back operations.  Bodies whose
        # last reference a committed operation dropped go in ``_batch_done``, after the
        # change listeners ran: a listener may hold one that a reader still shows.
        unlink: list[str] = []
        kept = {w.blob_id for op in batch if op.error is None for w in op.blobs}
        for op in batch:
            if op.error is not None:
                unlink.extend(b for b in op.ctx.fresh_blobs if b not in kept)
        if unlink:
            self._files.unlink(unlink)
