"""The server-grade store: metadata in PostgreSQL, message bodies as files in a directory
that every mxd node shares (``[store] blob_dir``, e.g. on NFS).

``PostgresStore`` implements ``IAccountStore`` and ``IMailStore`` with the very operations
of the SQLite store (mxd.store.sqlite), whose SQL both engines run (mxd.store.sqlbase); it
differs in how they run (mxd.store.pgconn: a bounded thread pool over a psycopg pool,
group-committed batches, one savepoint per operation) and in what several nodes need:

* Schema: ``mxd.store.pgschema``, migrated at open under an advisory lock, so nodes
  starting together do not both migrate.
* Change notification across nodes: each transaction that changed a mailbox also sends
  ``NOTIFY mxd_changes`` (delivered when it commits); every node LISTENs on one
  connection of its own and hands other nodes' changes to its ``subscribe`` listeners, as
  its own commits are (an IMAP IDLE on node B sees a delivery on node A).  Changes lost
  while that connection was down (a database restart) reach the listeners as a
  refresh of every subscribed mailbox once it is back.
* The queue (``PostgresQueueStore``): the same operations as on SQLite; due work is
  claimed with ``FOR UPDATE SKIP LOCKED`` and leases, so nodes never deliver one recipient
  together, and a dead node's leases expire into another node's hands.
* No crash clean-up at open (tmp files, unreferenced bodies): another node may be using
  them right now.  Instead every node sweeps periodically (``sweep_orphans``, one node at
  a time under an advisory lock), removing only old files that no row has named for a
  while (mxd.store.orphans).
* Bodies still shown by an IMAP session of another node are not held: an expunge on one
  node removes the file at once (sessions of the same node hold it as on SQLite).

Errors: as the SQLite store's, plus ``StoreUnavailable`` (a temporary StoreError) while the
database cannot be reached; the pool reconnects by itself.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from mxd.store import names, pgdeliver
from mxd.store import queries as q
from mxd.store.blobs import FileBlobWriter
from mxd.store.interfaces import (
    Accepted,
    Appended,
    BlobWriter,
    MailboxChange,
    MessageInfo,
    MessageProps,
    StoreError,
)
from mxd.store.orphans import OrphanSweeper, SweepResult, SweepSettings, application_name
from mxd.store.pgconn import PGConn, PGRunner, Statement, StoreUnavailable
from mxd.store.pgschema import SCHEMAS, migrate
from mxd.store.queuedb import Claimed
from mxd.store.sqlbase import Conn
from mxd.store.sqlite import SQLiteStore, StoreSettings, _aware
from mxd.store.sqlitequeue import SQLiteQueueStore
from mxd.store.writer import OpContext, PoolLike, StoreClosed

log = Logger(namespace="mxd.store.postgres")

T = TypeVar("T")

CHANNEL = "mxd_changes"
QUEUE_CHANNEL = "mxd_queue"  # payload: the node that queued new work
QUEUE_POLL = 30.0  # seconds: the longest a node sleeps with work possibly due elsewhere
RECLAIM_DELAY = 1.0  # seconds before looking again at due work another node had locked
MAX_UIDS_PER_NOTICE = 400  # keeps a NOTIFY payload well under PostgreSQL's 8000 octets
# store_flags' writes in one statement: the mailbox's modseq, the messages' new flags
# with it, and the notices to the other nodes with it (their "h").
STORE_FLAGS = (
    "WITH b AS (UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = %s "
    "RETURNING highestmodseq), "
    "u AS (UPDATE messages m SET flags = v.flags, modseq = b.highestmodseq "
    "FROM b, unnest(%s::bigint[], %s::text[]) AS v(uid, flags) "
    "WHERE m.mailbox_id = %s AND m.uid = v.uid RETURNING m.uid), "
    "n AS (SELECT pg_notify(%s, (p::jsonb || jsonb_build_object('h', b.highestmodseq))::text) "
    "FROM b, unnest(%s::text[]) AS p) "
    "SELECT b.highestmodseq, (SELECT count(*) FROM u), (SELECT count(*) FROM n) FROM b"
)


@attrs.frozen
class PostgresSettings:
    """Settings of the PostgreSQL store."""

    pool_size: int = 8  # connections, and threads that run operations
    connect_timeout: float = 10.0  # seconds to wait for a connection before failing an op
    listen: bool = True  # LISTEN for other nodes' changes
    sweep: SweepSettings = SweepSettings()  # unreferenced bodies (mxd.store.orphans)


class BlobDirError(StoreError):
    """The shared body directory is missing or not writable."""


def check_blob_dir(blob_dir: Path) -> None:
    """Refuse a body directory that is missing or read-only (BlobDirError): every node
    must be able to write bodies there before it accepts any mail."""
    if not blob_dir.is_dir():
        raise BlobDirError(f"[store] blob_dir {blob_dir} does not exist or is not a directory")
    try:
        fd, name = tempfile.mkstemp(prefix=".mxd-probe-", dir=blob_dir)
    except OSError as e:
        raise BlobDirError(f"[store] blob_dir {blob_dir} is not writable: {e.strerror}") from e
    os.close(fd)
    os.unlink(name)


def change_payloads(node: str, changes: list[MailboxChange]) -> list[str]:
    """NOTIFY payloads for ``changes`` (long UID lists split over several)."""
    out = []
    for c in changes:
        uids = list(c.uids)
        chunks = [uids[i:i + MAX_UIDS_PER_NOTICE]
                  for i in range(0, len(uids), MAX_UIDS_PER_NOTICE)] or [[]]
        for chunk in chunks:
            out.append(json.dumps({"n": node, "m": c.mailbox_id, "k": c.kind, "u": chunk,
                                   "h": c.highestmodseq}, separators=(",", ":")))
    return out


def parse_payload(text: str) -> tuple[str, MailboxChange] | None:
    """(node, change) from a NOTIFY payload; None for one that is not ours."""
    try:
        d = json.loads(text)
        return str(d["n"]), MailboxChange(int(d["m"]), str(d["k"]),
                                          tuple(int(u) for u in d["u"]), int(d["h"]))
    except (ValueError, KeyError, TypeError):
        return None


class _NoThreads:
    """The SQLite writer's pool, never started: the runner has threads of its own."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def callInThreadWithCallback(self, onResult: Any, func: Any, *args: Any, **kw: Any) -> None:
        raise StoreError("the SQLite writer is not used by the PostgreSQL store")


class PostgresStore(SQLiteStore):
    """PostgreSQL + shared files implementation of IAccountStore and IMailStore."""

    def __init__(
        self, dsn: str, blob_dir: Path, reactor: IReactorFromThreads, *,
        settings: StoreSettings = StoreSettings(),
        pg: PostgresSettings = PostgresSettings(), threadpool: PoolLike | None = None,
    ) -> None:
        super().__init__(Path(blob_dir), reactor, settings=settings,
                         threadpool=_NoThreads())
        self._watcher = None  # other nodes' changes come by LISTEN/NOTIFY, not data_version
        self.dsn = dsn
        self.pg = pg
        self.node = secrets.token_hex(8)
        threads = threadpool if threadpool is not None else ThreadPool(
            1, max(1, pg.pool_size), "mxd-store-pg")
        runner = PGRunner(reactor, threads, self._files)
        runner.on_changes = self._dispatch
        runner.keep_bodies = self._unheld
        runner.publish = self._publish
        self._writer = runner  # type: ignore[assignment]
        self._runner = runner
        self._local = threading.local()
        self._listener: _Listener | None = None
        self._sweeper = OrphanSweeper(self._files, pg.sweep)
        # Called (reactor thread) when another node queued outbound work.
        self.on_queue_work: Callable[[], None] = lambda: None

    # -- lifecycle -----------------------------------------------------------------------
    def open(self) -> Deferred[None]:
        """Check the body directory, connect, migrate, start listening for other nodes.

        Errbacks with BlobDirError, SchemaTooNew / SchemaError, StoreUnavailable."""
        if self._opened:
            raise StoreError("store is already open")
        self._opened = True
        d = self._runner.start(self._connect_pool)
        if self.pg.listen:
            d.addCallback(self._start_listener)
        return d

    def _connect_pool(self) -> Any:
        """A pool thread: the body directory, the pool, the schema."""
        import psycopg
        import psycopg_pool

        check_blob_dir(self.data_dir)
        self._files.ensure_dirs()
        if self._files.pin_dir is not None:
            self._files.clean_stale_pins()
        pool = psycopg_pool.ConnectionPool(
            self.dsn, min_size=1, max_size=max(1, self.pg.pool_size), open=False,
            kwargs={"autocommit": True,  # names this process for the sweep's liveness
                    "application_name": application_name(self._files.proc_name)},
            timeout=self.pg.connect_timeout,
            check=psycopg_pool.ConnectionPool.check_connection, name="mxd-store",
            reconnect_timeout=0)
        try:
            pool.open(wait=True, timeout=self.pg.connect_timeout)
            with pool.connection() as conn:
                migrate(conn, self._pg_schemas())
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as e:
            pool.close()
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {e}") from e
        except BaseException:
            pool.close()
            raise
        return pool

    def _pg_schemas(self) -> dict[str, list[str]]:
        extra = {k for k in self._schemas if k not in SCHEMAS}
        if extra:
            raise StoreError(f"no PostgreSQL schema for component(s) {sorted(extra)}")
        return SCHEMAS

    def close(self) -> Deferred[None]:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()

        doomed = self._take_doomed()

        def _finish() -> None:
            self._files.unlink(doomed)
            self._files.clear_pins()
            self._files.close()

        return self._runner.stop(_finish)

    def accept(self, blob: Any, targets: Any, props: Any, outbound: Any = None,
               queue_id: str | None = None, *,
               internal_date: datetime | None = None) -> Deferred[Any]:
        """IMailStore.accept; new outbound work is announced to the other nodes' queue
        runners (NOTIFY after the commit; a lost notice costs at most QUEUE_POLL).  Local
        copies alone are one statement (mxd.store.pgdeliver)."""
        targets = list(targets)
        if outbound is not None or not targets:
            d = super().accept(blob, targets, props, outbound, queue_id,
                               internal_date=internal_date)
            if outbound is not None:
                d.addCallback(self._announce_work)
            return d
        w = self._own_writer(blob)
        saved = self._now()
        want = [pgdeliver.Target(None, t.account_id, t.mailbox, t.flags) for t in targets]
        stored = self._store_message(w, want, props, _aware(internal_date or saved), saved,
                                     check_account=True)
        return stored.addCallback(lambda rows: Accepted(tuple(r.uid for r in rows), None))

    def append(self, mailbox_id: int, blob: BlobWriter, flags: frozenset[str],
               internal_date: datetime | None = None) -> Deferred[int]:
        """IMailStore.append, in one statement (mxd.store.pgdeliver)."""
        w = self._own_writer(blob)
        saved = self._now()
        d = self._store_message(w, [pgdeliver.Target(mailbox_id, None, None, flags)],
                                MessageProps(), _aware(internal_date or saved), saved,
                                check_account=False)
        return d.addCallback(lambda stored: stored[0].uid)

    def append_to(self, account_id: int, name: str, blob: BlobWriter, flags: frozenset[str],
                  internal_date: datetime | None = None) -> Deferred[Appended]:
        """IMailStore.append_to, in one statement (mxd.store.pgdeliver)."""
        w = self._own_writer(blob)
        saved = self._now()
        d = self._store_message(w, [pgdeliver.Target(None, account_id, name, flags)],
                                MessageProps(), _aware(internal_date or saved), saved,
                                check_account=False)
        return d.addCallback(
            lambda stored: Appended(stored[0].mailbox_id, stored[0].uidvalidity, stored[0].uid))

    def store_flags(
        self, mailbox_id: int, uids: Sequence[int], flags: frozenset[str], mode: str,
        unchanged_since: int | None = None,
    ) -> Deferred[tuple[list[MessageInfo], list[int]]]:
        """IMailStore.store_flags in two statements whatever the number of messages: the
        messages read, then the mailbox's modseq, the changed rows and the notices to
        the other nodes written in one (the SQLite store's operation makes a round trip
        for the mailbox, the modseq and each changed message)."""
        uid_list = list(uids)
        node = self.node

        def op(conn: PGConn, ctx: OpContext) -> tuple[list[MessageInfo], list[int]]:
            if mode not in ("set", "add", "remove"):
                raise StoreError(f"unknown flag store mode {mode!r}")
            clean = names.clean_flags(flags)
            rows = conn.execute(q.MESSAGE_SELECT + " WHERE mailbox_id = ? AND uid = ANY(?) "
                                "ORDER BY uid", (mailbox_id, uid_list)).fetchall()
            if not rows:
                q.check_mailbox(conn, mailbox_id)
            todo, failed = q.plan_flag_changes(rows, clean, mode, unchanged_since)
            if not todo:
                return [], sorted(failed)
            changed_uids = tuple(info.uid for info, _ in todo)
            # The notices' "h" (the new modseq) is filled in by the statement.
            notices = change_payloads(node, [MailboxChange(mailbox_id, "flags", changed_uids, 0)])
            modseq = int(conn.raw.execute(
                STORE_FLAGS, (mailbox_id, list(changed_uids),
                              [names.flags_to_text(new) for _, new in todo], mailbox_id,
                              CHANNEL, notices)).fetchone()[0])
            conn.notified = True
            ctx.changes.append(MailboxChange(mailbox_id, "flags", changed_uids, modseq))
            return ([attrs.evolve(info, flags=new, modseq=modseq) for info, new in todo],
                    sorted(failed))

        return self._runner.submit(op)

    def _store_message(self, w: FileBlobWriter, targets: list[pgdeliver.Target],
                       props: MessageProps, when: datetime, saved: datetime, *,
                       check_account: bool) -> Deferred[list[pgdeliver.Stored]]:
        default_quota = self.settings.quota_bytes
        node = self.node

        def build(ctx: OpContext) -> tuple[str, Sequence[Any]]:
            # A pool thread, before the transaction: the derived values of a body new to
            # this operation are computed here, not while the batch holds row locks.
            fresh = w.blob_id in ctx.fresh_blobs
            values: dict[str, bytes] = {}
            if fresh and self._derivers:
                self._prepare_derived(w)(ctx)
                values = ctx.derived.pop(w.blob_id, {})
            return pgdeliver.build(w, targets, props, when, saved, check_account=check_account,
                                   default_quota=default_quota, values=values, fresh=fresh,
                                   channel=CHANNEL, node=node)

        def finish(rows: list[Any], ctx: OpContext) -> list[pgdeliver.Stored]:
            return pgdeliver.finish(rows, w, targets, ctx)

        return self._runner.submit_statement(Statement(build, finish), [w])

    def _announce_work(self, result: T) -> T:
        node = self.node

        def op(conn: Any, ctx: OpContext) -> None:
            conn.raw.execute("SELECT pg_notify(%s, %s)", (QUEUE_CHANNEL, node))

        self._runner.submit(op).addErrback(
            lambda f: log.info("queue notice not sent: {error}", error=f.getErrorMessage()))
        return result

    # -- transactions of the queue (one per operation, on any pool thread) -----------------
    def transact(self, fn: Callable[[Conn], T]) -> Deferred[T]:
        def op(conn: Conn, ctx: OpContext) -> T:
            self._local.ctx = ctx
            try:
                return fn(conn)
            finally:
                self._local.ctx = None

        return self._runner.submit(op)

    def unref_blob(self, conn: Conn, blob_id: str) -> None:
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            raise StoreError("unref_blob must be called inside transact()")
        cur = conn.execute(
            "UPDATE blobs SET refcount = refcount - 1 WHERE id = ? AND refcount > 0", (blob_id,))
        if cur.rowcount != 1:
            raise StoreError(f"no reference to drop on blob {blob_id}")
        self._gc(conn, ctx, [blob_id])

    # -- unreferenced bodies -------------------------------------------------------------------
    @property
    def sweep_interval(self) -> float:
        return self._sweeper.settings.interval

    def sweep_orphans(self, now: float | None = None) -> Deferred[SweepResult | None]:
        """Remove body files that no row references and no node keeps (see
        mxd.store.orphans), unless another node is sweeping.  Never fails: fires with
        None when the store is not open or the sweep could not run (logged)."""
        d: Deferred[SweepResult | None] = self._runner.call(
            lambda pool: self._sweeper.sweep(pool, now))

        def failed(f: Any) -> None:
            if not f.check(StoreClosed):
                log.warn("sweep of unreferenced bodies failed: {error}",
                         error=f.getErrorMessage())

        return d.addErrback(failed)

    # -- other nodes' changes ------------------------------------------------------------------
    def _publish(self, raw: Any, changes: list[MailboxChange]) -> None:
        """Inside the committing transaction: tell the other nodes."""
        for payload in change_payloads(self.node, changes):
            raw.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))

    def _start_listener(self, _: object) -> None:
        self._listener = _Listener(self.dsn, self.node, self._reactor, self._remote,
                                   self._resync, lambda: self.on_queue_work())
        self._listener.start()

    def listening(self, timeout: float) -> bool:
        """Wait (in a thread other than the reactor's) until other nodes' changes are
        being received; False after ``timeout`` seconds."""
        return self._listener is not None and self._listener.ready.wait(timeout)

    def _remote(self, changes: list[MailboxChange]) -> None:
        """Reactor thread: another node committed ``changes``."""
        self._dispatch(changes)

    def _resync(self) -> None:
        """Reactor thread: notifications may have been lost (the listening connection was
        down): every subscribed mailbox is told to look again."""
        self._dispatch([MailboxChange(mailbox_id, "exists") for mailbox_id in list(self._listeners)])


class _Listener:
    """One thread with one connection that LISTENs for other nodes' changes and passes
    them to the reactor; it reconnects (with back-off) when the connection drops."""

    def __init__(self, dsn: str, node: str, reactor: IReactorFromThreads,
                 deliver: Callable[[list[MailboxChange]], None],
                 resync: Callable[[], None], queue_work: Callable[[], None]) -> None:
        self._dsn = dsn
        self._queue_work = queue_work
        self._node = node
        self._reactor = reactor
        self._deliver = deliver
        self._resync = resync
        self._stop = threading.Event()
        self.ready = threading.Event()  # set once LISTEN is in place (for tests)
        self._thread = threading.Thread(target=self._loop, name="mxd-store-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        import psycopg

        delay = 0.2
        first = True
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    conn.execute(f"LISTEN {QUEUE_CHANNEL}")
                    self.ready.set()
                    if not first:
                        log.info("listening for other nodes' changes again")
                        self._reactor.callFromThread(self._resync)
                    first = False
                    delay = 0.2
                    while not self._stop.is_set():
                        batch: list[MailboxChange] = []
                        work = False
                        for n in conn.notifies(timeout=0.25):
                            if n.channel == QUEUE_CHANNEL:
                                work = work or n.payload != self._node
                                continue
                            parsed = parse_payload(n.payload)
                            if parsed is not None and parsed[0] != self._node:
                                batch.append(parsed[1])
                        if batch:
                            self._reactor.callFromThread(self._deliver, batch)
                        if work:
                            self._reactor.callFromThread(self._queue_work)
            except psycopg.Error as e:
                self.ready.clear()
                if self._stop.is_set():
                    return
                first = False
                log.warn("change notifications: {error}; reconnecting in {delay}s",
                         error=str(e).strip(), delay=delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)


class PostgresQueueStore(SQLiteQueueStore):
    """``IQueueStore`` over the PostgreSQL store: the same operations as on SQLite, whose
    SQL claims due work with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL."""

    def __init__(self, store: PostgresStore, poll: float = QUEUE_POLL) -> None:
        super().__init__(store)
        self.poll = poll

    def claim_due(self, now: float, *, free: int, running: dict[str, int], per_domain: int,
                  batch: int, max_rcpts: int, lease: float,
                  owner: str | None = None) -> Deferred[Claimed]:
        """As on SQLite, but with other nodes in mind: the due rows looked at (and locked
        until the claim commits) are limited to what this node can start, so the others
        find the rest; due work this node could not take (another node held its rows)
        is looked at again in a second; and the next wake-up is at most ``poll`` seconds
        away, for work queued or released by another node whose notice was lost."""
        def clamp(c: Claimed) -> Claimed:
            nxt = now + self.poll if c.next_due is None else min(c.next_due, now + self.poll)
            if not c.messages and nxt <= now:
                nxt = now + RECLAIM_DELAY
            return attrs.evolve(c, next_due=nxt)

        d = super().claim_due(now, free=free, running=running, per_domain=per_domain,
                              batch=min(batch, max(16, free * 8)), max_rcpts=max_rcpts,
                              lease=lease, owner=owner)
        return d.addCallback(clamp)

    def claim_report_day(self, kind: str, day: float) -> Deferred[bool]:
        """Take on the daily report ``kind`` of the UTC day starting at ``day``: True for
        the one node that gets it first, False for every other (which then skips it)."""
        node = self.store.node if isinstance(self.store, PostgresStore) else "?"
        now = float(getattr(self.store._reactor, "seconds", lambda: 0.0)())

        def op(conn: Conn) -> bool:
            row = conn.execute(
                "INSERT INTO report_days (kind, day, node, at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING RETURNING day", (kind, int(day), node, now)).fetchone()
            return row is not None

        return self.store.transact(op)
