"""Group commit on PostgreSQL (mxd.store.pgconn.PGRunner): operations submitted together
share one transaction and one COMMIT, each in its own savepoint, so one that fails loses
nothing of the others; a deadlock victim runs again after the batch committed."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from mxd.store.interfaces import Delivery, MessageProps, NoSuchAccount, StoreError
from mxd.store.sqlbase import IntegrityError
from tests.store.helpers import StoreHarness, open_pg_store


def _deliver(h: StoreHarness, body: bytes, account_id: int) -> Any:
    w = h.store.new_blob()
    w.write(body)
    return h.store.deliver(w, [Delivery(account_id)], MessageProps())


def test_concurrent_deliveries_share_one_commit(pg_dsn: str, tmp_path: Path) -> None:
    """20 deliveries submitted while one batch runs go as one transaction: 2 batches in
    all, every message committed with its own UID and its body on disk."""
    h = open_pg_store(pg_dsn, tmp_path / "blobs")
    try:
        acct = h.run(h.store.add_account("alice", "{}"))
        runner = h.store._runner  # type: ignore[attr-defined]
        before = runner.batches
        ds = [_deliver(h, b"Subject: %d\r\n\r\nbody\r\n" % i, acct.id) for i in range(20)]
        uids = [h.run(d)[0] for d in ds]
        assert runner.batches - before == 2  # the first alone, the 19 others together
        assert uids == list(range(uids[0], uids[0] + 20))
        inbox = h.run(h.store.get_mailbox(acct.id, "INBOX"))
        assert inbox.exists == 20
        assert len(h.body_files()) == 20
    finally:
        h.close()


def test_a_failing_operation_loses_nothing_of_the_others_in_its_batch(
        pg_dsn: str, tmp_path: Path) -> None:
    """In one batch: deliveries, an operation whose SQL fails (the transaction would be
    aborted without its savepoint), a constraint violation and a delivery to a missing
    account.  The failures fail alone, with their errors; the deliveries commit with
    consecutive UIDs; the failed delivery's body is removed."""
    h = open_pg_store(pg_dsn, tmp_path / "blobs")
    try:
        acct = h.run(h.store.add_account("alice", "{}"))
        runner = h.store._runner  # type: ignore[attr-defined]
        gate = threading.Event()

        def blocker(conn: Any, ctx: Any) -> None:  # holds the first batch open
            gate.wait(10)

        first = runner.submit(blocker)

        def bad_sql(conn: Any, ctx: Any) -> None:
            conn.execute("SELECT 1 / 0")

        def duplicate(conn: Any, ctx: Any) -> None:
            conn.execute("INSERT INTO accounts (name, secrets) VALUES (?, ?)", ("bob", "{}"))
            conn.execute("INSERT INTO accounts (name, secrets) VALUES (?, ?)", ("alice", "{}"))

        ds = [_deliver(h, b"Subject: a\r\n\r\n", acct.id), runner.submit(bad_sql),
              _deliver(h, b"Subject: b\r\n\r\n", acct.id), runner.submit(duplicate),
              _deliver(h, b"Subject: lost\r\n\r\n", acct.id + 1000),
              _deliver(h, b"Subject: c\r\n\r\n", acct.id)]
        batches = runner.batches
        gate.set()
        h.run(first)
        a, b, c = h.run(ds[0])[0], h.run(ds[2])[0], h.run(ds[5])[0]
        assert (b, c) == (a + 1, a + 2)
        assert isinstance(h.fail(ds[1]), StoreError)
        assert isinstance(h.fail(ds[3]), IntegrityError)
        assert isinstance(h.fail(ds[4]), NoSuchAccount)
        assert runner.batches - batches == 2  # the blocker's, then all six together
        # bob's row went with the violation's savepoint
        assert h.run(h.store.get_account("bob")) is None
        inbox = h.run(h.store.get_mailbox(acct.id, "INBOX"))
        assert inbox.exists == 3
        assert len(h.body_files()) == 3
    finally:
        h.close()


def test_a_deadlock_victim_runs_again_after_the_batch(pg_dsn: str, tmp_path: Path) -> None:
    """Node A's batch locks row X then row Y; node B's operation locks Y then X.
    PostgreSQL fails one side's statement (after deadlock_timeout); that operation runs
    again once the other committed: no operation fails and each ran its change once."""
    a = open_pg_store(pg_dsn, tmp_path / "blobs")
    b = open_pg_store(pg_dsn, tmp_path / "blobs")
    try:
        x = a.run(a.store.add_account("x", "{}")).id
        y = a.run(a.store.add_account("y", "{}")).id
        a_has_x, b_has_y = threading.Event(), threading.Event()
        runs: list[str] = []

        def bump(conn: Any, account: int) -> None:
            conn.execute("UPDATE accounts SET used_bytes = used_bytes + 1 WHERE id = ?",
                         (account,))

        def a1(conn: Any, ctx: Any) -> None:
            bump(conn, x)
            runs.append("a1")
            a_has_x.set()

        def a2(conn: Any, ctx: Any) -> None:
            runs.append("a2")
            b_has_y.wait(10)
            bump(conn, y)

        def b1(conn: Any, ctx: Any) -> None:
            runs.append("b1")
            bump(conn, y)
            b_has_y.set()
            a_has_x.wait(10)
            bump(conn, x)

        ra = a.store._runner  # type: ignore[attr-defined]
        rb = b.store._runner  # type: ignore[attr-defined]
        gate = threading.Event()
        first = ra.submit(lambda conn, ctx: gate.wait(10))
        da1, da2 = ra.submit(a1), ra.submit(a2)  # one batch, after the gate's
        db = rb.submit(b1)
        gate.set()
        a.run(first)
        a.run(da1, timeout=30)
        a.run(da2, timeout=30)
        b.run(db, timeout=30)
        # One of a2 / b1 was chosen as the victim and ran twice; a1 (committed with a2's
        # batch, or alone before b1's retry) ran once per transaction that committed.
        assert runs.count("a2") + runs.count("b1") == 3, runs
        rows = a.run(a.store.transact(lambda conn: conn.execute(
            "SELECT used_bytes FROM accounts WHERE id IN (?, ?) ORDER BY id",
            (x, y)).fetchall()))  # type: ignore[attr-defined]
        assert [r[0] for r in rows] == [2, 2]
    finally:
        a.close()
        b.close()


def test_a_commit_whose_answer_is_lost_keeps_the_bodies(
        pg_dsn: str, tmp_path: Path) -> None:
    """The connection dies while COMMIT is on its way (the commit may have happened):
    the operations fail as temporary errors, and their bodies stay for the orphan sweep
    rather than being removed under rows that may exist."""
    import psycopg

    from mxd.store import pgconn
    from mxd.store.pgconn import StoreUnavailable

    h = open_pg_store(pg_dsn, tmp_path / "blobs")
    try:
        acct = h.run(h.store.add_account("alice", "{}"))
        runner = h.store._runner  # type: ignore[attr-defined]
        real = pgconn.PGRunner._transaction

        def lose_commit(self: Any, raw: Any, live: Any) -> None:
            execute = raw.execute

            def ex(sql: str, *args: Any) -> Any:
                if sql == "COMMIT":
                    execute(sql)
                    raise psycopg.OperationalError("server closed the connection")
                return execute(sql, *args)

            raw.execute = ex
            try:
                real(self, raw, live)
            finally:
                del raw.execute

        runner._transaction = lose_commit.__get__(runner)
        err = h.fail(_deliver(h, b"Subject: maybe\r\n\r\n", acct.id))
        assert isinstance(err, StoreUnavailable), err
        assert runner.commits_unknown == 1
        del runner._transaction
        assert len(h.body_files()) == 1  # committed here in fact: its row has its body
        inbox = h.run(h.store.get_mailbox(acct.id, "INBOX"))
        assert inbox.exists == 1
    finally:
        h.close()


def _round_trips(runner: Any) -> list[str]:
    """Patch ``runner`` to record each round trip its transactions make: a statement
    sent on its own ("exec: SQL") or a pipeline ("pipeline: n statements")."""
    from mxd.store import pgconn

    trips: list[str] = []
    real = pgconn.PGRunner._transaction

    def counting(self: Any, raw: Any, live: Any) -> None:
        execute, pipeline = raw.execute, raw.pipeline
        inside: list[list[str]] = []

        def ex(sql: str, *args: Any) -> Any:
            if inside:
                inside[-1].append(sql)
            else:
                trips.append(f"exec: {sql}")
            return execute(sql, *args)

        class Counted:
            def __enter__(self) -> None:
                inside.append([])
                self._cm = pipeline()
                self._cm.__enter__()

            def __exit__(self, *exc: Any) -> Any:
                trips.append(f"pipeline: {len(inside.pop())} statements")
                return self._cm.__exit__(*exc)

        raw.execute, raw.pipeline = ex, Counted
        try:
            real(self, raw, live)
        finally:
            del raw.execute, raw.pipeline

    runner._transaction = counting.__get__(runner)
    return trips


def test_a_batch_of_deliveries_is_one_round_trip(pg_dsn: str, tmp_path: Path) -> None:
    """Deliveries and APPENDs are one statement each (mxd.store.pgdeliver), and a batch of
    them goes to the server in one pipeline with its BEGIN and COMMIT: 12 messages, one
    round trip; each still got its own UID, and other nodes their notices."""
    h = open_pg_store(pg_dsn, tmp_path / "blobs")
    try:
        acct = h.run(h.store.add_account("alice", "{}"))
        inbox = h.run(h.store.get_mailbox(acct.id, "INBOX"))
        runner = h.store._runner  # type: ignore[attr-defined]
        trips = _round_trips(runner)
        gate = threading.Event()
        first = runner.submit(lambda conn, ctx: gate.wait(10))
        ds = []
        for i in range(4):
            ds.append(_deliver(h, b"Subject: %d\r\n\r\n" % i, acct.id))
            w = h.store.new_blob()
            w.write(b"Subject: append\r\n\r\n")
            ds.append(h.store.append(inbox.id, w, frozenset({"\\Seen"})))
            w = h.store.new_blob()
            w.write(b"Subject: append_to\r\n\r\n")
            ds.append(h.store.append_to(acct.id, "INBOX", w, frozenset()))
        gate.set()
        h.run(first)
        results = [h.run(d) for d in ds]
        uids = [r[0] if isinstance(r, list) else getattr(r, "uid", r) for r in results]
        assert uids == list(range(1, 13))
        assert trips == ["exec: BEGIN; SAVEPOINT op", "exec: RELEASE SAVEPOINT op; COMMIT",
                         # BEGIN, SAVEPOINT, 12 calls, RELEASE, COMMIT
                         "pipeline: 16 statements"]
        assert h.run(h.store.get_mailbox(acct.id, "INBOX")).exists == 12
    finally:
        h.close()


def test_a_statement_that_fails_in_a_batch_loses_nothing_of_the_others(
        pg_dsn: str, tmp_path: Path) -> None:
    """A statement operation that fails after all (here: one that divides by zero) aborts
    its pipeline; the batch's statements then run one by one, each in its savepoint: the
    failing one fails alone, the deliveries commit with consecutive UIDs, and operations
    that are Python functions before and after them keep their work."""
    from mxd.store.pgconn import Statement

    h = open_pg_store(pg_dsn, tmp_path / "blobs")
    try:
        acct = h.run(h.store.add_account("alice", "{}"))
        runner = h.store._runner  # type: ignore[attr-defined]
        gate = threading.Event()
        first = runner.submit(lambda conn, ctx: gate.wait(10))

        def add(name: str) -> Any:
            return runner.submit(lambda conn, ctx: conn.execute(
                "INSERT INTO accounts (name, secrets) VALUES (?, '{}')", (name,)))

        bad = Statement(lambda ctx: ("SELECT 1 / 0", ()), lambda rows, ctx: rows)
        ds = [add("bob"), _deliver(h, b"Subject: a\r\n\r\n", acct.id),
              runner.submit_statement(bad), _deliver(h, b"Subject: b\r\n\r\n", acct.id),
              add("carol")]
        gate.set()
        h.run(first)
        assert isinstance(h.fail(ds[2]), StoreError)
        a, b = h.run(ds[1])[0], h.run(ds[3])[0]
        assert (a, b) == (1, 2)
        h.run(ds[0])
        h.run(ds[4])
        assert h.run(h.store.get_account("bob")) is not None
        assert h.run(h.store.get_account("carol")) is not None
        assert h.run(h.store.get_mailbox(acct.id, "INBOX")).exists == 2
        assert len(h.body_files()) == 2
    finally:
        h.close()


def test_a_deadlock_in_a_pipeline_runs_its_statements_again(
        pg_dsn: str, tmp_path: Path) -> None:
    """Node A's pipelined statements lock row X then row Y while node B's operation holds
    Y and then asks for X.  Whichever side PostgreSQL picks as the victim runs again: no
    operation fails and each change counts once."""
    from mxd.store.pgconn import Statement

    a = open_pg_store(pg_dsn, tmp_path / "blobs")
    b = open_pg_store(pg_dsn, tmp_path / "blobs")
    try:
        x = a.run(a.store.add_account("x", "{}")).id
        y = a.run(a.store.add_account("y", "{}")).id
        b_has_y = threading.Event()

        def bump(account: int) -> Any:
            return Statement(
                lambda ctx: ("UPDATE accounts SET used_bytes = used_bytes + 1 WHERE id = %s "
                             "RETURNING used_bytes", (account,)),
                lambda rows, ctx: rows)

        def b1(conn: Any, ctx: Any) -> None:
            conn.execute("UPDATE accounts SET used_bytes = used_bytes + 1 WHERE id = ?", (y,))
            b_has_y.set()
            conn.execute("SELECT pg_sleep(0.3)")
            conn.execute("UPDATE accounts SET used_bytes = used_bytes + 1 WHERE id = ?", (x,))

        ra = a.store._runner  # type: ignore[attr-defined]
        rb = b.store._runner  # type: ignore[attr-defined]
        first = ra.submit(lambda conn, ctx: b_has_y.wait(10))
        dx, dy = ra.submit_statement(bump(x)), ra.submit_statement(bump(y))  # one pipeline
        db = rb.submit(b1)
        a.run(first, timeout=30)
        a.run(dx, timeout=30)
        a.run(dy, timeout=30)
        b.run(db, timeout=30)
        rows = a.run(a.store.transact(lambda conn: conn.execute(
            "SELECT used_bytes FROM accounts WHERE id IN (?, ?) ORDER BY id",
            (x, y)).fetchall()))  # type: ignore[attr-defined]
        assert [r[0] for r in rows] == [2, 2]
    finally:
        a.close()
        b.close()
