"""The queue's storage contract (mxd.queue.storage.IQueueStore), run against both
backends: SQLiteQueueStore and PostgresQueueStore (on the tests' private PostgreSQL
cluster).  What the queue runner and the admin interface rely on: one transaction per
accept, leases, results, the admin selectors, the TLS records; and on PostgreSQL, that
two nodes claiming at once never take the same recipient."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mxd.queue.storage import IQueueStore
from mxd.store.interfaces import Delivery, MessageProps, OutboundMessage, OutboundRecipient
from mxd.store.queuedb import (
    AttemptRecord,
    AttemptResult,
    Deferral,
    DomainTLS,
)
from mxd.store.sqlitequeue import SQLiteQueueStore
from tests.store.helpers import StoreHarness, open_pg_store, open_store

LEASE = 600.0


class _Clock:
    """The stores' time: messages are queued at 1000.0."""

    def seconds(self) -> float:
        return 1000.0


class Q:
    """A queue store under test with its harness."""

    def __init__(self, h: StoreHarness, qs: IQueueStore) -> None:
        self.h = h
        self.qs = qs

    def run(self, d: Any) -> Any:
        return self.h.run(d)

    def enqueue(self, queue_id: str, rcpts: tuple[str, ...], now: float = 1000.0,
                body: bytes = b"Subject: q\r\n\r\nbody\r\n") -> None:
        w = self.qs.new_blob()
        w.write(body)
        env = OutboundMessage("a@example.test",
                              tuple(OutboundRecipient(r) for r in rcpts), size=len(body))
        self.run(self.qs.accept(w, [], MessageProps(), env, queue_id))

    def claim(self, now: float = 1000.0, free: int = 10) -> Any:
        return self.run(self.qs.claim_due(now, free=free, running={}, per_domain=10, batch=100,
                                          max_rcpts=50, lease=LEASE))


def _pg_queue(dsn: str, blobs: Path, inline: bool = True) -> tuple[StoreHarness, IQueueStore]:
    from mxd.store.postgres import PostgresQueueStore, PostgresStore

    h = open_pg_store(dsn, blobs, inline=inline, clock=_Clock())
    assert isinstance(h.store, PostgresStore)
    return h, PostgresQueueStore(h.store)


@pytest.fixture(params=["sqlite", "postgresql"])
def q(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Q]:
    if request.param == "postgresql":
        h, qs = _pg_queue(request.getfixturevalue("pg_dsn"), tmp_path / "blobs")
    else:
        h = open_store(tmp_path / "data", inline=True, clock=_Clock())
        qs = SQLiteQueueStore(h.store)
    try:
        yield Q(h, qs)
    finally:
        h.close()


def test_accept_claim_and_finish(q: Q) -> None:
    """A queued message is claimed once (leased), and goes with its last recipient; its
    body goes with it."""
    q.enqueue("Q1", ("x@one.test", "y@two.test"))
    assert q.run(q.qs.counts())["queued"] == 2
    claimed = q.claim()
    assert sorted(r.address for m in claimed.messages for r in m.recipients) == [
        "x@one.test", "y@two.test"]
    assert q.claim().messages == []  # leased: not claimable again
    assert q.run(q.qs.counts())["inflight"] == 2
    m = claimed.messages[0]
    with q.qs.open_blob(m.blob_id) as f:
        assert f.read() == b"Subject: q\r\n\r\nbody\r\n"
    for m in claimed.messages:
        q.run(q.qs.record_result(m, AttemptResult(finished=tuple(r.id for r in m.recipients)),
                                 1001.0))
    assert q.run(q.qs.counts()) == {"queued": 0, "inflight": 0, "held": 0}
    assert q.run(q.qs.show("Q1")) is None
    assert q.h.store.idle


def test_deferral_lease_expiry_and_recovery(q: Q) -> None:
    """A deferred recipient is due again at its next attempt; a lease that ran out makes
    the recipient claimable again (a dead node's work)."""
    q.enqueue("Q2", ("x@one.test",))
    m = q.claim().messages[0]
    rid = m.recipients[0].id
    q.run(q.qs.record_result(m, AttemptResult(deferred=(Deferral(
        rid, 1500.0, 451, "4.3.0", "try later", "mx.one.test", False),)), 1001.0))
    assert q.claim(now=1100.0).messages == []
    shown = q.run(q.qs.show("Q2"))
    assert shown[0].recipients[0].attempts == 1 and shown[0].recipients[0].last_code == 451
    again = q.claim(now=1500.0).messages
    assert [r.id for r in again[0].recipients] == [rid]
    assert q.claim(now=1500.0 + LEASE - 1).messages == []
    expired = q.claim(now=1500.0 + LEASE + 1).messages
    assert [r.id for r in expired[0].recipients] == [rid]


def test_a_renewed_lease_keeps_the_recipient(q: Q) -> None:
    """A delivery still under way renews its lease: the recipient is not claimable when
    the first lease would have run out, only after the renewed one.  A lease that ran
    out already, or another runner's, is not renewed."""
    q.enqueue("QR", ("x@one.test",))
    m = q.claim().messages[0]
    rid = m.recipients[0].id
    assert q.run(q.qs.renew_leases([rid], 1000.0 + LEASE / 2, LEASE, owner="other")) == 0
    assert q.run(q.qs.renew_leases([rid], 1000.0 + LEASE / 2, LEASE)) == 1
    assert q.claim(now=1000.0 + LEASE + 1).messages == []  # the first lease's end
    assert q.run(q.qs.renew_leases([rid], 1000.0 + 2 * LEASE, LEASE)) == 0  # ran out
    again = q.claim(now=1000.0 + 1.5 * LEASE + 1).messages
    assert [r.id for r in again[0].recipients] == [rid]


def test_admin_operations(q: Q) -> None:
    """hold/kick/drop select by queue id, domain and recipient; held recipients are not
    claimed; drop removes the message when nothing is left."""
    q.enqueue("Q3", ("x@one.test", "y@two.test"), now=1000.0)
    assert q.run(q.qs.hold(None, "one.test", None, True)) == 1
    assert q.run(q.qs.counts())["held"] == 1
    assert [r.address for m in q.claim().messages for r in m.recipients] == ["y@two.test"]
    assert [m.queue_id for m in q.run(q.qs.list_messages(held=True))] == ["Q3"]
    assert q.run(q.qs.hold("Q3", None, None, False)) == 2
    assert q.run(q.qs.kick(900.0, None, None, "x@one.test")) == 1
    assert q.run(q.qs.set_tls_override("Q3", "yes")) is True
    assert q.run(q.qs.set_transport("Q3", "relay")) == 2
    shown = q.run(q.qs.show("Q3"))[0]
    assert shown.requiretls and shown.tls_override == "yes"
    assert {r.transport for r in shown.recipients} == {"relay"}
    assert q.run(q.qs.drop("Q3", None, None)) == 2
    assert q.run(q.qs.list_messages()) == []


def test_attempts_and_tls_records(q: Q) -> None:
    """Attempts are logged (and read back as RFC 8460 sessions); per-domain TLS facts keep
    the newest and say whether REQUIRETLS is ready."""
    q.enqueue("Q4", ("x@one.test",))
    m = q.claim().messages[0]
    att = AttemptRecord("Q4", "one.test", ("x@one.test",), 1001.0, "delivered",
                        host="mx.one.test", ip="192.0.2.1", code=250, tls_used=True,
                        tls_verified=True, tls_policy_type="sts", tls_success=True)
    dom = DomainTLS("one.test", 1001.0, "mx.one.test", "192.0.2.1", True, True, True, True)
    q.run(q.qs.record_result(m, AttemptResult(attempts=(att,), domains=(dom,),
                                              finished=(m.recipients[0].id,)), 1001.0))
    sessions = q.run(q.qs.tls_attempts_between(1000.0, 1002.0))
    assert len(sessions) == 1 and sessions[0].success
    assert q.run(q.qs.tls_attempts_between(1002.0, 1003.0)) == []
    assert [d.domain for d in q.run(q.qs.domain_tls())] == ["one.test"]
    assert q.run(q.qs.requiretls_ready(["one.test", "two.test"])) == {
        "one.test": True, "two.test": False}


def test_accept_with_local_copy_and_queue_is_atomic(q: Q) -> None:
    """A duplicate queue id fails the whole accept: no local copy is left either."""
    account = q.run(q.h.store.add_account("alice", "{}", ["alice@example.test"]))
    q.enqueue("Q5", ("x@one.test",))
    w = q.qs.new_blob()
    w.write(b"Subject: dup\r\n\r\n")
    env = OutboundMessage("a@example.test", (OutboundRecipient("x@one.test"),))
    err = q.h.fail(q.qs.accept(w, [Delivery(account.id)], MessageProps(), env, "Q5"))
    assert "Q5" in str(err)
    inbox = q.run(q.h.store.get_mailbox(account.id, "INBOX"))
    assert inbox.exists == 0


def test_two_nodes_never_claim_one_recipient(pg_dsn: str, tmp_path: Path) -> None:
    """Two PostgreSQL stores (two nodes) claiming the same due work at the same time
    (threads, real pools) take disjoint recipients that add up to all of them."""
    import threading

    h1, q1 = _pg_queue(pg_dsn, tmp_path / "blobs")
    try:
        node = Q(h1, q1)
        for i in range(40):
            node.enqueue(f"M{i}", (f"r{i}@d{i % 7}.test", f"s{i}@d{i % 5}.test"))
    finally:
        h1.close()
    stores = [_pg_queue(pg_dsn, tmp_path / "blobs", inline=False) for _ in range(2)]
    got: list[list[int]] = [[], []]
    start = threading.Barrier(2)

    def claim_all(i: int) -> None:
        h, qs = stores[i]
        start.wait()
        for _ in range(20):
            c = h.run(qs.claim_due(1000.0, free=3, running={}, per_domain=100, batch=5,
                                   max_rcpts=50, lease=LEASE))
            got[i].extend(r.id for m in c.messages for r in m.recipients)

    # Each harness pumps its own results: run each claimer in its own thread.
    threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not set(got[0]) & set(got[1])
        assert len(got[0]) + len(got[1]) == 80
        assert got[0] and got[1]
    finally:
        for h, _ in stores:
            h.close()


def test_one_node_takes_on_a_daily_report(pg_dsn: str, tmp_path: Path) -> None:
    """Two nodes asking for the same day's TLS report: the first gets it, the second is
    told another node has it; another day or kind is free again."""
    h1, q1 = _pg_queue(pg_dsn, tmp_path / "blobs")
    h2, q2 = _pg_queue(pg_dsn, tmp_path / "blobs")
    try:
        day = 86400.0 * 20000
        assert h1.run(q1.claim_report_day("tlsrpt", day)) is True  # type: ignore[attr-defined]
        assert h2.run(q2.claim_report_day("tlsrpt", day)) is False  # type: ignore[attr-defined]
        assert h2.run(q2.claim_report_day("tlsrpt", day + 86400)) is True  # type: ignore[attr-defined]
        assert h2.run(q2.claim_report_day("dmarc", day)) is True  # type: ignore[attr-defined]
    finally:
        h1.close()
        h2.close()
