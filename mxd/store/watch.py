"""Changes committed by other processes on the same SQLite database, as change notices.

With ``[server] workers = N`` every worker has its own store (one connection, one writer
thread); a commit in one worker must reach the IMAP sessions of the others (new mail
for IDLE, flags, expunges) within a second.  One ``ChangeWatcher`` per process does it
without a query per session:

* every ``interval`` (0.2 s) it reads ``PRAGMA data_version`` on the writer thread,
  outside any transaction (SQLite changes the value when another connection commits,
  and only then: https://sqlite.org/pragma.html#pragma_data_version);
* when it changed, one query over the mailboxes this process watches (those with a
  ``subscribe`` listener) compares their ``highestmodseq`` and ``uidnext`` with what
  was last seen, and reads the UIDs expunged since from ``vanished`` (every change
  takes a new modseq, RFC 7162 §3.1, and expunged UIDs stay in ``vanished`` with it);
* each difference becomes a ``MailboxChange`` for the process's listeners, as if the
  change had been made here: ``expunge`` with the UIDs, ``exists`` when ``uidnext``
  grew, ``flags`` otherwise, ``deleted`` when the mailbox is gone.  Listeners refresh
  from the store by modseq, so a notice that repeats one of this process's own
  changes costs a query and shows nothing twice.

What a mailbox looked like when it began to be watched is read on the writer thread
before any later read of the subscriber (the queue of the one writer thread keeps the
order), so no change falls between the two.  The mark holds the mailbox's name too: a
rename elsewhere becomes ``renamed`` for the mailbox and each watched inferior.

Names, subscriptions and annotations change no modseq, and a session that asked for
their events (RFC 5465 NOTIFY) may watch no mailbox of the account.  The store writes
each such change as a row of ``account_changes`` in the transaction that makes it
(``record``), naming the process (``origin``) that wrote it; when ``data_version``
moved and the process has ``on_account`` listeners, the same look reads the rows after
the last one seen (one range read of the primary key) and passes those of other
processes on as ``AccountChange`` values.  A process's own changes are told by the
commands that make them.  Rows older than ``KEEP_SECONDS`` are removed as new ones are
written: a process reads within a second what it wants.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from mxd.store.interfaces import AccountChange, MailboxChange

log = Logger(namespace="mxd.store.watch")

# (highestmodseq, uidnext, name) of a mailbox; None: the mailbox is gone.
Mark = tuple[int, int, str] | None
Seen = tuple[int, int, str]

KEEP_SECONDS = 300.0  # age of account_changes rows removed by the next write

JOURNAL_MIGRATIONS: list[str] = [
    # 1: changes that take no modseq (names, subscriptions, annotations), for the other
    # processes of the store; AUTOINCREMENT: an id is never used twice, so a reader's
    # "after id N" stays right when old rows go.
    """
    CREATE TABLE account_changes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        origin TEXT NOT NULL,
        at REAL NOT NULL,
        account_id INTEGER NOT NULL,
        kind TEXT NOT NULL,
        name TEXT,
        old TEXT,
        flag INTEGER NOT NULL DEFAULT 0,
        entries TEXT NOT NULL DEFAULT ''
    );
    """,
]


def record(conn: Any, origin: str, change: AccountChange,
           now: float | None = None) -> None:
    """Write ``change`` in the running transaction (writer thread)."""
    at = time.time() if now is None else now
    flag = change.exists if change.kind == "name" else change.subscribed
    conn.execute("DELETE FROM account_changes WHERE at < ?", (at - KEEP_SECONDS,))
    conn.execute(
        "INSERT INTO account_changes (origin, at, account_id, kind, name, old, flag, entries) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (origin, at, change.account_id, change.kind, change.name, change.old, int(flag),
         "\n".join(change.entries)))


def last_change_id(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT max(id) FROM account_changes").fetchone()
    return int(row[0] or 0)


def account_changes_after(conn: sqlite3.Connection, after: int, origin: str
                          ) -> tuple[list[AccountChange], int]:
    """The changes other processes wrote after row ``after``, and the last row id."""
    out: list[AccountChange] = []
    last = after
    for r in conn.execute("SELECT id, origin, account_id, kind, name, old, flag, entries "
                          "FROM account_changes WHERE id > ? ORDER BY id", (after,)):
        last = int(r[0])
        if r[1] == origin:
            continue
        kind, flag = str(r[3]), bool(r[6])
        out.append(AccountChange(
            int(r[2]), kind, r[4], old=r[5], exists=flag if kind == "name" else True,
            subscribed=flag if kind == "subscription" else False,
            entries=tuple(e for e in str(r[7]).split("\n") if e)))
    return out, last


def read_marks(conn: sqlite3.Connection, ids: list[int]) -> dict[int, Mark]:
    out: dict[int, Mark] = dict.fromkeys(ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        rows = conn.execute(
            "SELECT id, highestmodseq, uidnext, name FROM mailboxes WHERE id IN (%s)"
            % ",".join("?" * len(chunk)), chunk).fetchall()
        for r in rows:
            out[int(r[0])] = (int(r[1]), int(r[2]), str(r[3]))
    return out


def changes_since(conn: sqlite3.Connection, seen: dict[int, Seen]
                  ) -> tuple[list[MailboxChange], dict[int, Mark]]:
    """The notices for every watched mailbox that differs from ``seen``, and the new
    marks of those mailboxes."""
    out: list[MailboxChange] = []
    marks: dict[int, Mark] = {}
    for mailbox_id, now in read_marks(conn, list(seen)).items():
        modseq, uidnext, name = seen[mailbox_id]
        if now is None:
            out.append(MailboxChange(mailbox_id, "deleted"))
            marks[mailbox_id] = None
            continue
        if now[2] != name:  # renamed elsewhere (RENAME keeps the id and the modseq)
            out.append(MailboxChange(mailbox_id, "renamed"))
            marks[mailbox_id] = now
        if now[0] <= modseq:
            continue
        marks[mailbox_id] = now
        gone = tuple(r[0] for r in conn.execute(
            "SELECT uid FROM vanished WHERE mailbox_id = ? AND modseq > ? ORDER BY uid",
            (mailbox_id, modseq)))
        if gone:
            out.append(MailboxChange(mailbox_id, "expunge", gone, now[0]))
        kind = "exists" if now[1] > uidnext else "flags"
        out.append(MailboxChange(mailbox_id, kind, (), now[0]))
    return out, marks


class ChangeWatcher:
    """One per store of a process (see the module doc).

    ``call(fn)`` runs ``fn(conn)`` on the writer thread outside a transaction;
    ``read(fn)`` runs it inside one (an ordinary store operation); ``dispatch`` delivers
    notices to the process's listeners; ``watched()`` lists the mailbox ids to watch."""

    def __init__(self, clock: Any, call: Callable[[Callable[[sqlite3.Connection], Any]], Deferred[Any]],
                 read: Callable[[Callable[[sqlite3.Connection], Any]], Deferred[Any]],
                 dispatch: Callable[[list[MailboxChange]], None],
                 interval: float = 0.2, origin: str = "") -> None:
        self._clock = clock
        self._call = call
        self._read = read
        self._dispatch = dispatch
        self.interval = interval
        self.origin = origin  # this process's name on its account_changes rows
        self._seen: dict[int, Seen] = {}
        # Listeners of other processes' AccountChange rows, and the last row seen (None:
        # not read yet, or nobody listens).
        self._account_listeners: list[Callable[[list[AccountChange]], None]] = []
        self._after: int | None = None
        self._after_asked = False
        self._pending: set[int] = set()  # watched, first look not back yet
        self._version: int | None = None
        self._busy = False
        self._waiters: list[Deferred[None]] = []  # catch_up callers for the next look
        self._loop: LoopingCall | None = None
        self.on_commit: list[Callable[[], None]] = []  # another process committed
        self.polls = 0  # data_version reads, for tests
        self.notices = 0

    def start(self) -> None:
        if self._loop is None:
            self._loop = LoopingCall(self._tick)
            self._loop.clock = self._clock
            self._loop.start(self.interval, now=True).addErrback(
                lambda f: log.failure("change watcher stopped", f))

    @property
    def running(self) -> bool:
        return self._loop is not None

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def watch(self, mailbox_id: int) -> None:
        """Start watching (idempotent); call before the subscriber's first read."""
        if mailbox_id in self._seen or mailbox_id in self._pending:
            return
        self._pending.add(mailbox_id)

        def got(marks: dict[int, Mark]) -> None:
            if mailbox_id not in self._pending:
                return  # unwatched meanwhile
            self._pending.discard(mailbox_id)
            mark = marks.get(mailbox_id)
            if mark is not None:
                self._seen[mailbox_id] = mark

        def failed(f: Failure) -> None:
            self._pending.discard(mailbox_id)
            log.debug("cannot watch mailbox {mailbox_id}: {error}", mailbox_id=mailbox_id,
                      error=f.getErrorMessage())

        self._read(lambda conn: read_marks(conn, [mailbox_id])).addCallbacks(got, failed)

    def on_account(self, fn: Callable[[list[AccountChange]], None]) -> None:
        """Pass ``fn`` the name, subscription and annotation changes other processes
        commit from now on (see the module doc)."""
        self._account_listeners.append(fn)
        if self._after is not None or self._after_asked:
            return
        self._after_asked = True

        def got(last: int) -> None:
            self._after_asked = False
            if self._after is None:
                self._after = last

        def failed(f: Failure) -> None:
            self._after_asked = False
            log.failure("reading the account change journal failed", f)

        # In the writer thread's queue: rows committed after this read come after ``last``.
        self._read(last_change_id).addCallbacks(got, failed)

    def unwatch(self, mailbox_id: int) -> None:
        self._seen.pop(mailbox_id, None)
        self._pending.discard(mailbox_id)

    def catch_up(self) -> Deferred[None]:
        """Look now (not at the next tick); fires once a look that began after this call
        has delivered its notices (a client's NOOP must see what was committed before)."""
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        if not self._busy:
            self._tick()
        return d

    def _tick(self) -> None:
        if self._busy:
            return
        self._busy = True
        self.polls += 1
        waiters, self._waiters = self._waiters, []
        d = self._call(lambda conn: int(conn.execute("PRAGMA data_version").fetchone()[0]))
        d.addCallback(self._version_read)
        d.addErrback(self._failed)
        d.addBoth(self._idle, waiters)

    def _idle(self, _: object, waiters: list[Deferred[None]]) -> None:
        self._busy = False
        for w in waiters:
            w.callback(None)
        if self._waiters:  # asked while this look ran: it may have begun too early
            self._tick()

    def _failed(self, f: Failure) -> None:
        from mxd.store.writer import StoreClosed

        if not f.check(StoreClosed):
            log.failure("reading changes of other processes failed", f)

    def _version_read(self, version: int) -> Deferred[None] | None:
        if version == self._version:
            return None
        first = self._version is None
        self._version = version
        if first:
            return None
        for fn in self.on_commit:
            try:
                fn()
            except Exception:  # noqa: BLE001 - one listener must not stop the others
                log.failure("commit listener failed")
        after = self._after if self._account_listeners else None
        if not self._seen and after is None:
            return None
        seen = dict(self._seen)
        origin = self.origin

        def look(conn: sqlite3.Connection) -> tuple[
                list[MailboxChange], dict[int, Mark], tuple[list[AccountChange], int] | None]:
            changes, marks = changes_since(conn, seen) if seen else ([], {})
            accounts = None if after is None else account_changes_after(conn, after, origin)
            return changes, marks, accounts

        return self._read(look).addCallback(self._apply, seen, after)

    def _apply(self, result: tuple[list[MailboxChange], dict[int, Mark],
                                   tuple[list[AccountChange], int] | None],
               asked: dict[int, Seen], after: int | None) -> None:
        changes, marks, accounts = result
        if accounts is not None and self._after == after:
            self._after = accounts[1]
            if accounts[0]:
                self.notices += len(accounts[0])
                for fn in list(self._account_listeners):
                    try:
                        fn(accounts[0])
                    except Exception:  # noqa: BLE001 - one listener must not stop the others
                        log.failure("account change listener failed")
        fresh = {m for m in marks if m in self._seen and self._seen[m] == asked.get(m)}
        for m in fresh:  # unwatched or moved on meanwhile: the next look covers those
            mark = marks[m]
            if mark is None:
                del self._seen[m]
            else:
                self._seen[m] = mark
        out = [c for c in changes if c.mailbox_id in fresh]
        if out:
            self.notices += len(out)
            self._dispatch(out)
