"""Running the store's operations on PostgreSQL (psycopg 3 and its connection pool).

``PGConn`` lets the SQL shared with SQLite (mxd.store.sqlbase) run on a psycopg
connection: ``?`` placeholders become ``%s``, a literal ``%`` is doubled, and a violated
constraint arrives as ``sqlbase.IntegrityError``.

``PGRunner`` is the PostgreSQL counterpart of the SQLite writer (mxd.store.writer) with
the same ``submit(fn, blobs)`` face, so the store's operations are written once.  There is
no single writer here: each operation runs in its own transaction on a connection of the
pool, on a thread of a bounded pool (never the reactor thread), several at once; row locks
order them (a mailbox's UID and modseq counters are updated first, so deliveries to one
mailbox queue on that row).  A deadlock or serialization failure is retried with a fresh
context; a lost connection or an unreachable server fails the operation with
``StoreUnavailable`` (a temporary error: SMTP 4xx, IMAP ``NO [UNAVAILABLE]``), and the pool
reconnects by itself for the next one.  Body files are made durable before the
transaction starts, exactly as with SQLite, so a row never points at a missing body.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from mxd.store.blobs import BlobFiles, FileBlobWriter
from mxd.store.interfaces import MailboxChange, StoreError, StoreUnavailable
from mxd.store.sqlbase import Cursor, IntegrityError
from mxd.store.writer import OpContext, PoolLike, StoreClosed

log = Logger(namespace="mxd.store.postgres")

T = TypeVar("T")

__all__ = ["PGConn", "PGRunner", "StoreUnavailable", "translate"]

RETRIES = 5  # deadlocks / serialization failures before giving up


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """``?`` placeholders (outside quotes) to psycopg's ``%s``; ``%`` doubled."""
    out: list[str] = []
    quote = False
    for ch in sql:
        if ch == "'":
            quote = not quote
            out.append(ch)
        elif ch == "%":
            out.append("%%")
        elif ch == "?" and not quote:
            out.append("%s")
        else:
            out.append(ch)
    return "".join(out)


class PGConn:
    """A psycopg connection inside a transaction, with the face of ``sqlbase.Conn``."""

    dialect = "postgresql"

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        import psycopg

        try:
            if not parameters:
                return self.raw.execute(sql)
            return self.raw.execute(translate(sql), parameters)
        except psycopg.errors.IntegrityError as e:
            raise IntegrityError(str(e)) from e

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor:
        import psycopg

        rows = list(parameters)
        cur = self.raw.cursor()
        if rows:
            try:
                cur.executemany(translate(sql), rows)
            except psycopg.errors.IntegrityError as e:
                raise IntegrityError(str(e)) from e
        return cur


@attrs.define(eq=False)
class _Op(Generic[T]):
    fn: Callable[[Any, OpContext], T]
    deferred: Deferred[T]
    blobs: Sequence[FileBlobWriter]
    ctx: OpContext = attrs.Factory(OpContext)
    error: BaseException | None = None
    result: Any = None


class PGRunner:
    """Runs store operations on a psycopg pool, each in its own transaction."""

    def __init__(self, reactor: IReactorFromThreads, threads: PoolLike, files: BlobFiles) -> None:
        self._reactor = reactor
        self._threads = threads
        self._files = files
        self.pool: Any = None  # psycopg_pool.ConnectionPool, set by start()
        self._closed = True
        self._ready = False
        self._threads_running = False
        self._waiting: list[_Op[Any]] = []  # submitted before the open finished
        self._running = 0
        self._idle_waiters: list[Deferred[None]] = []
        self.on_changes: Callable[[list[MailboxChange]], None] = lambda changes: None
        self.keep_bodies: Callable[[list[str]], list[str]] = lambda blob_ids: blob_ids
        # Called inside each transaction that changed mailboxes (NOTIFY other nodes).
        self.publish: Callable[[Any, list[MailboxChange]], None] = lambda raw, changes: None
        self.ops = 0

    # -- lifecycle (reactor thread) ------------------------------------------------------
    def start(self, connect: Callable[[], Any]) -> Deferred[None]:
        """Open the pool (``connect()`` on a thread returns it, migrated); work submitted
        meanwhile waits for it."""
        self._closed = False
        self._threads.start()
        self._threads_running = True

        def _open() -> None:
            self.pool = connect()

        d: Deferred[None] = deferToThreadPool(self._reactor, self._threads, _open)  # type: ignore[arg-type]

        def _opened(_: object) -> None:
            self._ready = True
            waiting, self._waiting = self._waiting, []
            for op in waiting:
                self._dispatch(op)

        def _failed(f: Failure) -> Failure:
            self._closed = True
            self._stop_threads()
            waiting, self._waiting = self._waiting, []
            for op in waiting:
                for b in op.blobs:
                    b.discard()
                op.deferred.errback(StoreClosed(f"the store could not be opened: {f.value}"))
            self._notify_idle()
            return f

        d.addCallbacks(_opened, _failed)
        return d

    @property
    def idle(self) -> bool:
        return self._running == 0 and not self._waiting

    def when_idle(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.idle:
            d.callback(None)
        else:
            self._idle_waiters.append(d)
        return d

    def _notify_idle(self) -> None:
        if not self.idle:
            return
        waiters, self._idle_waiters = self._idle_waiters, []
        for w in waiters:
            w.callback(None)

    def stop(self, finish: Callable[[], None] | None = None) -> Deferred[None]:
        """Refuse new work, let running work finish, close the pool, stop the threads."""
        if self._closed:
            return succeed(None)
        self._closed = True

        def _close() -> None:
            pool, self.pool = self.pool, None
            try:
                if finish is not None:
                    finish()
            finally:
                if pool is not None:
                    pool.close()

        def _after_idle(_: object) -> Deferred[None] | None:
            self._ready = False
            if not self._threads_running:
                return None
            return deferToThreadPool(self._reactor, self._threads, _close)  # type: ignore[arg-type]

        def _stop(result: object) -> object:
            self._stop_threads()
            return result

        return self.when_idle().addCallback(_after_idle).addBoth(_stop)  # type: ignore[return-value]

    def _stop_threads(self) -> None:
        if self._threads_running:
            self._threads_running = False
            self._threads.stop()

    # -- submitting work (reactor thread) ------------------------------------------------
    def submit(self, fn: Callable[[Any, OpContext], T],
               blobs: Sequence[FileBlobWriter] = (), *, overlap: bool = False,
               prepare: Callable[[OpContext], None] | None = None) -> Deferred[T]:
        """Run ``fn(conn, ctx)`` in a transaction; fires with its result after COMMIT.
        ``overlap`` and ``prepare`` are the SQLite writer's (mxd.store.unsynced): here
        bodies are always durable before the transaction, and an operation does its
        own work inside it."""
        d: Deferred[T] = Deferred()
        if self._closed:
            for b in blobs:
                b.discard()
            d.errback(StoreClosed("the store is closed"))
            return d
        for b in blobs:
            b.seal()
        op: _Op[T] = _Op(fn, d, blobs)
        if not self._ready:
            self._waiting.append(op)
        else:
            self._dispatch(op)
        return d

    def _dispatch(self, op: _Op[Any]) -> None:
        self._running += 1
        d = deferToThreadPool(self._reactor, self._threads, self._run, op)  # type: ignore[arg-type]
        d.addBoth(self._done, op)

    def _done(self, result: object, op: _Op[Any]) -> None:
        if isinstance(result, Failure):  # pragma: no cover - _run catches everything
            op.error = op.error or result.value
        self.ops += 1
        unlink: list[str] = []
        if op.error is None:
            if op.ctx.changes:
                try:
                    self.on_changes(op.ctx.changes)
                except Exception:  # noqa: BLE001 - listeners must not break the store
                    log.failure("store change listener failed")
            unlink = self.keep_bodies(op.ctx.unlink_after_commit) if op.ctx.unlink_after_commit else []

        def finish(_: object = None) -> None:
            self._running -= 1
            if op.error is not None:
                op.deferred.errback(Failure(op.error))
            else:
                op.deferred.callback(op.result)
            self._notify_idle()

        if unlink and self._threads_running:
            d = deferToThreadPool(self._reactor, self._threads, self._files.unlink, unlink)  # type: ignore[arg-type]
            d.addErrback(lambda f: log.failure("removing bodies failed", f))
            d.addBoth(finish)
        else:
            if unlink:
                self._files.unlink(unlink)
            finish()

    def unlink_later(self, blob_ids: list[str]) -> None:
        if blob_ids:
            self.run_files(lambda: self._files.unlink(blob_ids))

    def run_files(self, fn: Callable[[], object]) -> None:
        """A blocking file operation (unlink, pin) on a pool thread; at once when the
        pool is not running."""
        if self._threads_running:
            d = deferToThreadPool(self._reactor, self._threads, fn)  # type: ignore[arg-type]
            d.addErrback(lambda f: log.failure("body file operation failed", f))
        else:
            fn()

    # -- a pool thread ---------------------------------------------------------------------
    def _run(self, op: _Op[Any]) -> None:
        import psycopg
        import psycopg_pool

        fresh: list[str] = []
        todo = [w for w in op.blobs if not w.durable]
        if todo:
            for w, err in zip(todo, self._files.make_durable(todo), strict=True):
                if err is not None:
                    op.error = StoreError(f"cannot store message body: {err}")
                else:
                    fresh.append(w.blob_id)
            if op.error is not None:
                self._files.unlink(fresh)
                return
        pool = self.pool
        for attempt in range(RETRIES):
            op.ctx = OpContext(fresh_blobs=list(fresh))
            op.error = None
            try:
                if pool is None:
                    raise StoreClosed("the store is closed")
                with pool.connection() as raw, raw.transaction():
                    op.result = op.fn(PGConn(raw), op.ctx)
                    if op.ctx.changes:
                        self.publish(raw, op.ctx.changes)
                return
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as e:
                op.error = StoreError(f"database conflict: {e}")
                log.debug("retrying after {error} (attempt {n})", error=e, n=attempt + 1)
                continue
            except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as e:
                op.error = StoreUnavailable(f"database unavailable: {e}")
                op.error.__cause__ = e
            except psycopg.Error as e:
                op.error = StoreError(f"database error: {e}")
                op.error.__cause__ = e
            except BaseException as e:  # noqa: BLE001 - the error goes to its Deferred
                op.error = e
            break
        # Rolled back: the bodies made durable for this operation alone go again.
        if fresh:
            self._files.unlink(fresh)
