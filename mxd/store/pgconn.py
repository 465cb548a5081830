"""Running the store's operations on PostgreSQL (psycopg 3 and its connection pool).

``PGConn`` lets the SQL shared with SQLite (mxd.store.sqlbase) run on a psycopg
connection: ``?`` placeholders become ``%s``, a literal ``%`` is doubled, and a violated
constraint arrives as ``sqlbase.IntegrityError``.

``PGRunner`` is the PostgreSQL counterpart of the SQLite writer (mxd.store.writer), with
the same ``submit(fn, blobs)`` face and the same group commit, so the store's operations
are written once.  Operations submitted while a batch runs wait and go together in the
next: their bodies are fsynced first (in parallel, each touched directory once; while the
current batch's transaction runs, so that the fsyncs add nothing to a batch's time), then
every operation runs in one transaction on a connection of the pool, on a thread of a
bounded pool (never the reactor thread), and one COMMIT (one WAL flush with
``synchronous_commit`` on) makes them all durable; each Deferred fires only after it.  An
operation that fails is rolled back alone (its own SAVEPOINT, or for an operation that is
one statement, ``Statement``, the statement's own guarantee); the others commit.
Statement operations next to each other in a batch travel in one round trip (psycopg's
pipeline mode), with the COMMIT when they end the batch.

Why batches: a delivery updates its mailbox's UID and modseq counters first, so
deliveries to one mailbox queue on that row lock, which a transaction keeps until its
commit has been flushed: one transaction per operation meant one WAL flush per message.

Several nodes share the rows, so a batch may deadlock with another node's transaction.
PostgreSQL then fails one statement; rolling back to the operation's savepoint releases
its own locks but not those of the batch's earlier operations, which the other
transaction waits for, so the victim runs again in the next batch, after this one
committed.  A lost connection or an unreachable server fails the batch's operations with
``StoreUnavailable`` (a temporary error: SMTP 4xx, IMAP ``NO [UNAVAILABLE]``), and the
pool reconnects by itself for the next one.  When the connection is lost while the COMMIT
is on its way, the operations fail although they may have committed: their bodies are
kept (a row never points at a missing body); the orphan sweep (mxd.store.orphans)
removes them if no row took them.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

import attrs
from twisted.internet.defer import Deferred, fail, succeed
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

__all__ = ["PGConn", "PGRunner", "Statement", "StoreUnavailable", "translate"]

RETRIES = 5  # deadlocks / serialization failures before giving up
BATCHES = 1  # transactions under way at once (see PGRunner)


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
        # Set by an operation that sent the notices of its changes to the other nodes
        # itself (in one of its statements): the runner then sends none for it.
        self.notified = False

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


@attrs.frozen
class Statement(Generic[T]):
    """An operation that is one SQL statement (``PGRunner.submit_statement``).

    ``build(ctx)``, on a pool thread before the transaction (the bodies are durable and
    ``ctx.fresh_blobs`` is known), gives the SQL (psycopg's ``%s`` placeholders) and its
    parameters; ``finish(rows, ctx)`` turns the statement's rows into the operation's
    result (recording its changes in ``ctx``) or raises its error.  The statement must
    not fail for a reason of the operation's own: it reports that in its rows, having
    changed nothing; and it sends its own notices to the other nodes (the runner does
    not publish its changes).  So the statements of a batch travel together, in one
    round trip with its COMMIT, with no savepoint of their own."""

    build: Callable[[OpContext], tuple[str, Sequence[Any]]]
    finish: Callable[[list[Any], OpContext], T]

    def run(self, conn: PGConn, ctx: OpContext) -> T:
        """The operation on its own (inside a savepoint), as any other."""
        sql, params = self.build(ctx)
        return self.finish(conn.raw.execute(sql, params).fetchall(), ctx)


class _CommitUnknown(Exception):
    """The connection failed while COMMIT was on its way: it may have committed."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


@attrs.define(eq=False)
class _Op(Generic[T]):
    fn: Callable[[Any, OpContext], T]
    deferred: Deferred[T]
    blobs: Sequence[FileBlobWriter]
    ctx: OpContext = attrs.Factory(OpContext)
    error: BaseException | None = None
    result: Any = None
    fresh: list[str] = attrs.Factory(list)  # bodies made durable for this op alone
    tries: int = 0  # transactions it ran in (a deadlock victim runs again in the next)
    again: bool = False  # chosen as a deadlock victim: run it in the next batch
    statement: Statement[Any] | None = None  # an operation that is one statement
    # Set once a body sync ahead of its batch (PGRunner._sync_ahead) has made its bodies
    # durable; None when its batch makes them durable itself.
    synced: threading.Event | None = None


class PGRunner:
    """Runs store operations on a psycopg pool in group-committed batches."""

    def __init__(self, reactor: IReactorFromThreads, threads: PoolLike, files: BlobFiles,
                 *, max_batch: int = 64, batches: int = BATCHES) -> None:
        self._reactor = reactor
        self._threads = threads
        self._files = files
        self._max_batch = max(1, max_batch)
        self._batches = max(1, batches)
        self.pool: Any = None  # psycopg_pool.ConnectionPool, set by start()
        self._closed = True
        self._ready = False
        self._threads_running = False
        self._pending: list[_Op[Any]] = []
        self._running = 0  # batches under way
        # Operations whose bodies no one is making durable yet, and whether a sync of
        # bodies ahead of their batch is under way (see _sync_ahead).
        self._unsynced: list[_Op[Any]] = []
        self._syncing = False
        self._idle_waiters: list[Deferred[None]] = []
        self.on_changes: Callable[[list[MailboxChange]], None] = lambda changes: None
        self.keep_bodies: Callable[[list[str]], list[str]] = lambda blob_ids: blob_ids
        # Called inside each operation that changed mailboxes (NOTIFY other nodes; sent
        # only if the operation's savepoint and the batch commit).
        self.publish: Callable[[Any, list[MailboxChange]], None] = lambda raw, changes: None
        self.ops = 0  # counters for tests and metrics
        self.batches = 0
        self.commits_unknown = 0  # commits whose answer was lost with the connection

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
            self._kick()

        def _failed(f: Failure) -> Failure:
            self._closed = True
            self._stop_threads()
            self._unsynced = []
            waiting, self._pending = self._pending, []
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
        return self._running == 0 and not self._pending and not self._syncing

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
        """Refuse new work, let queued and running work finish, close the pool, stop the
        threads."""
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
        """Run ``fn(conn, ctx)`` in the next batch; fires with its result after the
        batch's COMMIT.  ``overlap`` and ``prepare`` are the SQLite writer's
        (mxd.store.unsynced): here bodies are always durable before the transaction,
        and an operation does its own work inside it."""
        return self._submit(fn, blobs, None)

    def _submit(self, fn: Callable[[Any, OpContext], T], blobs: Sequence[FileBlobWriter],
                statement: Statement[T] | None) -> Deferred[T]:
        d: Deferred[T] = Deferred()
        if self._closed:
            for b in blobs:
                b.discard()
            d.errback(StoreClosed("the store is closed"))
            return d
        for b in blobs:
            b.seal()
        op = _Op(fn, d, blobs, statement=statement)
        self._pending.append(op)
        if any(not b.durable for b in blobs):
            self._unsynced.append(op)
        self._kick()
        self._sync_ahead()
        return d

    def submit_statement(self, statement: Statement[T],
                         blobs: Sequence[FileBlobWriter] = ()) -> Deferred[T]:
        """Like ``submit``, for an operation that is one statement (see Statement): the
        statements of a batch go to the server together with its COMMIT."""
        return self._submit(statement.run, blobs, statement)

    def _kick(self) -> None:
        """Start batches while fewer than ``batches`` run: what was submitted meanwhile
        waits and goes together in the next one."""
        while self._ready and self._pending and self._running < self._batches:
            batch = self._pending[:self._max_batch]
            self._pending = self._pending[self._max_batch:]
            self._running += 1
            if self._unsynced:  # the batch makes these bodies durable itself
                mine = set(map(id, batch))
                self._unsynced = [op for op in self._unsynced if id(op) not in mine]
            d = deferToThreadPool(self._reactor, self._threads, self._run_batch, batch)  # type: ignore[arg-type]
            d.addBoth(self._batch_done, batch)
        self._notify_idle()

    def _sync_ahead(self) -> None:
        """Make the bodies of operations waiting for a batch durable now, while the
        current batch's transaction runs (one sync at a time, each for all waiting
        then): their batch then finds them durable and goes straight to its
        transaction.  The batches stay what they were (everything submitted while one
        runs goes in the next); the fsyncs of the bodies no longer add to the time a
        batch takes."""
        if self._syncing or not self._unsynced or not self._threads_running:
            return
        group, self._unsynced = self._unsynced, []
        done = threading.Event()
        for op in group:
            op.synced = done

        def sync() -> None:
            try:
                self._make_durable(group)
            finally:
                done.set()

        def after(result: object) -> None:
            self._syncing = False
            if isinstance(result, Failure):  # pragma: no cover - _make_durable catches all
                log.failure("making bodies durable failed", result)
            self._sync_ahead()
            self._notify_idle()

        self._syncing = True
        d = deferToThreadPool(self._reactor, self._threads, sync)  # type: ignore[arg-type]
        d.addBoth(after)

    def _make_durable(self, ops: list[_Op[Any]]) -> None:
        """Bodies, before the transaction that references them: fsync + rename (in
        parallel), each touched directory once.  A body that fails fails its operation."""
        writers = [(op, w) for op in ops for w in op.blobs if not w.durable]
        if not writers:
            return
        try:
            errors = self._files.make_durable([w for _, w in writers])
        except Exception as e:  # noqa: BLE001 - the errors go to the operations
            errors = [e] * len(writers)
        for (op, w), err in zip(writers, errors, strict=True):
            if err is not None:
                if op.error is None:
                    op.error = StoreError(f"cannot store message body: {err}")
            elif w.blob_id not in op.fresh:
                op.fresh.append(w.blob_id)

    def _batch_done(self, result: object, batch: list[_Op[Any]]) -> None:
        if isinstance(result, Failure):  # pragma: no cover - _run_batch catches everything
            log.failure("store batch failed", result)
            for op in batch:
                op.again = False
                op.error = op.error or result.value
        self.batches += 1
        again = [op for op in batch if op.again]
        done = [op for op in batch if not op.again]
        self.ops += len(done)
        if again:  # deadlock victims: first in the next batch, once this one committed
            self._pending[:0] = again
        changes = [c for op in done if op.error is None for c in op.ctx.changes]
        if changes:
            try:
                self.on_changes(changes)
            except Exception:  # noqa: BLE001 - listeners must not break the store
                log.failure("store change listener failed")
        unlink = [b for op in done if op.error is None for b in op.ctx.unlink_after_commit]
        unlink = self.keep_bodies(unlink) if unlink else unlink

        def finish(_: object = None) -> None:
            self._running -= 1
            for op in done:
                if op.error is not None:
                    op.deferred.errback(Failure(op.error))
                else:
                    op.deferred.callback(op.result)
            self._kick()

        if unlink and self._threads_running:
            # Before the operations answer: a body is gone once its expunge has answered.
            d = deferToThreadPool(self._reactor, self._threads, self._files.unlink, unlink)  # type: ignore[arg-type]
            d.addErrback(lambda f: log.failure("removing bodies failed", f))
            d.addBoth(finish)
        else:
            if unlink:
                self._files.unlink(unlink)
            finish()

    def call(self, fn: Callable[[Any], T]) -> Deferred[T]:
        """Run ``fn(pool)`` on a pool thread, outside any batch (a sweep of the body
        directory with a connection of its own); StoreClosed when not open."""
        if self._closed or not self._ready or not self._threads_running:
            return fail(StoreClosed("the store is closed"))

        def run() -> T:
            pool = self.pool
            if pool is None:
                raise StoreClosed("the store is closed")
            return fn(pool)

        return deferToThreadPool(self._reactor, self._threads, run)  # type: ignore[arg-type]

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
    def _run_batch(self, batch: list[_Op[Any]]) -> None:
        """One transaction for the whole batch, one savepoint per operation, one COMMIT
        (one WAL flush) for all of them."""
        import psycopg
        import psycopg_pool

        for op in batch:
            op.again = False
        # 1. Bodies: made durable ahead by _sync_ahead (wait for it), or here.
        for op in batch:
            if op.synced is not None:
                op.synced.wait()
                op.synced = None
        self._make_durable(batch)
        live = [op for op in batch if op.error is None]
        # 2. The transaction.
        unknown = False
        pool = self.pool
        try:
            if pool is None:
                raise StoreClosed("the store is closed")
            if live:
                with pool.connection() as raw:
                    self._transaction(raw, live)
        except _CommitUnknown as e:
            unknown = True
            self._fail(live, StoreUnavailable(f"database unavailable: {e.error}"), e.error)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as e:
            self._fail(live, StoreUnavailable(f"database unavailable: {e}"), e)
        except psycopg.Error as e:
            self._fail(live, StoreError(f"database error: {e}"), e)
        except BaseException as e:  # noqa: BLE001 - the errors go to the Deferreds
            self._fail(live, e, None)
        if unknown:
            # The connection went while COMMIT was on its way: it may have committed.  The
            # operations fail (the client tries again: a message may arrive twice, never
            # zero times) and their bodies stay, for the sweep of unreferenced bodies
            # (mxd.store.orphans) to remove if the commit did not happen.
            self.commits_unknown += 1
            log.warn("the outcome of a commit of {n} operation(s) is unknown", n=len(live))
            return
        # 3. The bodies made durable for operations that did not commit go again (not
        # those of deadlock victims, which run again in the next batch).
        kept = {w.blob_id for op in batch if op.error is None for w in op.blobs}
        unlink = [b for op in batch if op.error is not None and not op.again
                  for b in op.fresh if b not in kept]
        if unlink:
            self._files.unlink(unlink)

    def _transaction(self, raw: Any, live: list[_Op[Any]]) -> None:
        """BEGIN, the operations, COMMIT.  An operation that is a Python function runs in
        a savepoint of its own; the statements that travel with the next round trip
        ("RELEASE SAVEPOINT op; SAVEPOINT op") are sent together, so a batch of one costs
        what a plain transaction did.  Consecutive statement operations (Statement) go
        in one pipeline, with the COMMIT when they end the batch: one round trip for
        all of them (see _run_statements)."""
        import psycopg

        conn = PGConn(raw)
        pending = ["BEGIN"]  # parameterless statements sent with the next round trip
        committed = False
        try:
            i = 0
            while i < len(live):
                if live[i].statement is not None:
                    j = i
                    while j < len(live) and live[j].statement is not None:
                        j += 1
                    committed = j == len(live)
                    self._run_statements(raw, conn, live[i:j], pending, commit=committed)
                    pending = []
                    i = j
                    continue
                raw.execute("; ".join([*pending, "SAVEPOINT op"]))
                if self._run_op(raw, conn, live[i]):
                    pending = ["RELEASE SAVEPOINT op"]
                else:  # its work undone
                    pending = ["ROLLBACK TO SAVEPOINT op", "RELEASE SAVEPOINT op"]
                i += 1
            if not committed:
                try:
                    raw.execute("; ".join([*pending, "COMMIT"]))
                except psycopg.OperationalError as e:
                    raise _CommitUnknown(e) from e
        except (psycopg.OperationalError, _CommitUnknown):
            raise
        except BaseException:
            if raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                try:
                    raw.execute("ROLLBACK")
                except psycopg.Error:
                    pass
            raise

    def _run_statements(self, raw: Any, conn: PGConn, ops: list[_Op[Any]],
                        pending: list[str], *, commit: bool) -> None:
        """Statement operations, in one pipeline (psycopg's pipeline mode: one round
        trip): the ``pending`` statements, a savepoint around them all, each statement,
        and the COMMIT when ``commit``.  Should one fail after all (a deadlock with
        another node, a bug), the server skips the rest of the pipeline: the work is
        rolled back to the savepoint and the operations run again one by one, each in
        a savepoint of its own, as function operations do."""
        import psycopg

        built: list[tuple[_Op[Any], tuple[str, Sequence[Any]]]] = []
        for op in ops:
            op.ctx = OpContext(fresh_blobs=list(op.fresh))
            op.tries += 1
            try:
                assert op.statement is not None
                built.append((op, op.statement.build(op.ctx)))
            except Exception as e:  # noqa: BLE001 - the error goes to its Deferred
                op.error = e
        cursors: list[Any] = []
        try:
            with raw.pipeline():
                for sql in pending:
                    raw.execute(sql)
                raw.execute("SAVEPOINT seg")
                cursors = [raw.execute(sql, params) for _, (sql, params) in built]
                raw.execute("RELEASE SAVEPOINT seg")
                if commit:
                    raw.execute("COMMIT")
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as e:
            log.debug("{error}: running the batch's statements one by one", error=e)
        except psycopg.OperationalError as e:
            if commit:
                raise _CommitUnknown(e) from e
            raise
        except psycopg.Error as e:
            log.info("a statement of a batch failed ({error}): running them one by one",
                     error=e)
        else:
            for (op, _), cur in zip(built, cursors, strict=True):
                try:
                    assert op.statement is not None
                    op.result = op.statement.finish(cur.fetchall(), op.ctx)
                except Exception as e:  # noqa: BLE001 - the error goes to its Deferred
                    op.error = e
                    op.ctx = OpContext()
            return
        # One by one, each in its savepoint (a deadlock victim runs in the next batch).
        raw.execute("ROLLBACK TO SAVEPOINT seg; RELEASE SAVEPOINT seg")
        for op, _ in built:
            op.tries -= 1  # counted again by _run_op
            raw.execute("SAVEPOINT op")
            if self._run_op(raw, conn, op):
                raw.execute("RELEASE SAVEPOINT op")
            else:
                raw.execute("ROLLBACK TO SAVEPOINT op; RELEASE SAVEPOINT op")
        if commit:
            try:
                raw.execute("COMMIT")
            except psycopg.OperationalError as e:
                raise _CommitUnknown(e) from e

    def _run_op(self, raw: Any, conn: PGConn, op: _Op[Any]) -> bool:
        """One operation (inside its savepoint); False when it failed and its work must
        be rolled back."""
        import psycopg

        op.ctx = OpContext(fresh_blobs=list(op.fresh))
        op.tries += 1
        try:
            conn.notified = False
            op.result = op.fn(conn, op.ctx)
            if op.ctx.changes and op.statement is None and not conn.notified:
                self.publish(raw, op.ctx.changes)
            return True
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as e:
            # Rolling back to the savepoint releases this operation's locks, not those of
            # the batch's earlier operations that the other transaction waits for: run it
            # again in the next batch, after this one committed.
            if op.tries < RETRIES:
                log.debug("{error}: running the operation again (try {n})", error=e,
                          n=op.tries)
                op.again = True
            else:
                op.error = StoreError(f"database conflict: {e}")
                op.error.__cause__ = e
        except psycopg.OperationalError:
            raise  # the connection is gone: the whole batch fails
        except psycopg.Error as e:
            op.error = StoreError(f"database error: {e}")
            op.error.__cause__ = e
        except Exception as e:  # noqa: BLE001 - the error goes to its Deferred
            op.error = e
        return False

    @staticmethod
    def _fail(ops: list[_Op[Any]], error: BaseException, cause: BaseException | None) -> None:
        if cause is not None:
            error.__cause__ = cause
        for op in ops:
            op.again = False
            if op.error is None:
                op.error = error
