"""Transports and routes through the real QueueRunner on task.Clock (real store, scripted
SMTP sink): account > domain > global order, switching from the 4th attempt, the fail
transport, REQUIRETLS refused through an unverified smarthost (RFC 8689 §4.2), the
per-message override, and the transport recorded for every attempt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mxd.queue.routes import Route, RouteTable, SmarthostTLS, Transport, TransportKind
from mxd.queue.schedule import RetrySettings
from tests.queue.test_runner import World

RELAY = Transport("relay", TransportKind.SMTP, host="192.0.2.99", tls=SmarthostTLS.NONE)
ACCT = Transport("acct", TransportKind.SMTP, host="192.0.2.91", tls=SmarthostTLS.NONE)
DOM = Transport("dom", TransportKind.SMTP, host="192.0.2.92", tls=SmarthostTLS.NONE)
GLOB = Transport("glob", TransportKind.SMTP, host="192.0.2.93", tls=SmarthostTLS.NONE)
STOP = Transport("stop", TransportKind.FAIL, fail_code=554, fail_enhanced="5.7.1",
                 fail_text="we do not send to blocked.test")
ALL = (RELAY, ACCT, DOM, GLOB, STOP)


def _world(data_dir: Path, table: RouteTable, **kw: Any) -> World:
    w = World(data_dir, route_table=table, transports=ALL, **kw)
    w.resolver.add("blocked.test", "MX", ["10 mx.blocked.test."])
    w.resolver.add("mx.blocked.test", "A", ["192.0.2.30"])
    return w


def test_account_then_domain_then_global(data_dir: Path) -> None:
    """The sending account's routes come first, then the sender domain's, then global
    ones; the first match wins; each attempt row names its transport and route."""
    table = RouteTable(
        account_routes={"alice": (Route("acct", to_domains=("remote.test",)),)},
        domain_routes={"example.org": (Route("dom", to_domains=("remote.test",
                                                                ".other.test")),)},
        global_routes=(Route("relay", from_domains=(".example.net",)),
                       Route("glob", to_domains=("*",))),
    )
    w = _world(data_dir, table)
    try:
        q1 = w.enqueue("x@remote.test", sender_account="alice")
        q2 = w.enqueue("y@remote.test", sender_account="bob")
        q3 = w.enqueue("z@remote.test", sender="s@elsewhere.test")
        q4 = w.enqueue("u@other.test")  # .other.test is subdomains only: global
        w.enqueue("v@remote.test", sender="s@news.example.net")  # sender subdomain
        w.enqueue("w@remote.test", sender="s@example.net")  # not a subdomain
        w.start()
        got = {r.rcpts[0]: r.ip for r in w.sink.received}
        assert got == {"x@remote.test": "192.0.2.91", "y@remote.test": "192.0.2.92",
                       "z@remote.test": "192.0.2.93", "u@other.test": "192.0.2.93",
                       "v@remote.test": "192.0.2.99", "w@remote.test": "192.0.2.93"}
        rows = {q: w.attempts(q)[0] for q in (q1, q2, q3, q4)}
        assert [(rows[q].transport, rows[q].route, rows[q].result) for q in (q1, q2, q3, q4)] == [
            ("acct", "account alice route 1", "delivered"),
            ("dom", "domain example.org route 1", "delivered"),
            ("glob", "global route 2", "delivered"),
            ("glob", "global route 2", "delivered")]
        assert rows[q1].host == "192.0.2.91" and rows[q1].tls_success is None  # not TLSRPT
    finally:
        w.h.close()


def test_from_the_fourth_attempt_through_the_relay(data_dir: Path) -> None:
    """Direct delivery fails three times (the MX refuses connections); routes are
    evaluated again at each attempt and the 4th goes through the smarthost."""
    table = RouteTable(global_routes=(Route("relay", min_attempt=4),))
    w = _world(data_dir, table, retry=RetrySettings(first_delay=60, max_delay=60))
    try:
        w.sink.refuse.add("192.0.2.10")
        qid = w.enqueue("x@remote.test")
        w.start()
        for _ in range(3):
            [m] = w.queued()
            w.clock.advance(max(0.0, m.recipients[0].next_attempt - w.clock.seconds()) + 1)
        assert w.queued() == []
        assert w.sink.connections == ["192.0.2.10"] * 3 + ["192.0.2.99"]
        rows = w.attempts(qid)
        assert [(a.transport, a.route, a.result) for a in rows] == [
            ("direct", "default", "error")] * 3 + [("relay", "global route 1", "delivered")]
    finally:
        w.h.close()


def test_fail_transport_bounces_with_its_reply(data_dir: Path) -> None:
    table = RouteTable(global_routes=(Route("stop", to_domains=("blocked.test",)),))
    w = _world(data_dir, table)
    try:
        qid = w.enqueue("x@blocked.test")
        w.start()
        assert w.queued() == [] and w.sink.connections == []
        [row] = w.attempts(qid)
        assert (row.transport, row.code, row.enhanced, row.text) == (
            "stop", 554, "5.7.1", "we do not send to blocked.test")
        [dsn] = w.local.boxes["a@example.org"]
        assert b"we do not send to blocked.test" in dsn and b"5.7.1" in dsn
    finally:
        w.h.close()


@pytest.mark.parametrize("tls", [SmarthostTLS.NONE, SmarthostTLS.REQUIRED,
                                 SmarthostTLS.OPPORTUNISTIC])
def test_requiretls_refused_through_unverified_smarthost(data_dir: Path,
                                                         tls: SmarthostTLS) -> None:
    """RFC 8689 §4.2: a REQUIRETLS message is not handed to a smarthost whose TLS is not
    verified; it fails with 5.7.30 without any connection."""
    relay = Transport("relay", TransportKind.SMTP, host="192.0.2.99", tls=tls)
    w = World(data_dir, route_table=RouteTable(global_routes=(Route("relay",
                                                                     to_domains=("*",)),)),
              transports=(relay,))
    try:
        qid = w.enqueue("x@remote.test", requiretls=True)
        w.start()
        assert w.queued() == [] and w.sink.connections == []
        [row] = w.attempts(qid)
        assert (row.transport, row.enhanced) == ("relay", "5.7.30")
        assert "cannot verify the TLS of the next hop" in (row.text or "")
        [dsn] = w.local.boxes["a@example.org"]
        assert b"5.7.30" in dsn
    finally:
        w.h.close()


def test_override_wins_over_routes_and_unknown_is_deferred(data_dir: Path) -> None:
    """``mxd queue transport ID NAME`` (the recipients' transport column) beats every
    route; a name that is not configured defers with 4.3.5, losing nothing."""
    from mxd.store import queuedb as qs

    table = RouteTable(global_routes=(Route("glob", to_domains=("*",)),))
    w = _world(data_dir, table)
    try:
        w.sink.refuse.add("192.0.2.93")
        qid = w.enqueue("x@remote.test")
        w.h.run(w.h.store.transact(lambda c: qs.set_transport(c, qid, "nosuch")))
        w.start()
        [m] = w.queued()
        assert (m.recipients[0].last_code, m.recipients[0].last_enhanced) == (451, "4.3.5")
        assert "unknown transport 'nosuch'" in (m.recipients[0].last_text or "")
        assert w.h.run(w.queue.set_transport(qid, "relay")) == 1
        w.clock.advance(m.recipients[0].next_attempt - w.clock.seconds() + 1)
        assert w.queued() == [] and w.sink.received[0].ip == "192.0.2.99"
        assert w.attempts(qid)[-1].route == "override"
    finally:
        w.h.close()


def test_smarthost_connection_failure_defers_with_its_words(data_dir: Path) -> None:
    table = RouteTable(global_routes=(Route("relay", to_domains=("*",)),))
    w = _world(data_dir, table)
    try:
        w.sink.refuse.add("192.0.2.99")
        w.enqueue("x@remote.test")
        w.start()
        [m] = w.queued()
        r = m.recipients[0]
        assert r.last_code == 451 and r.last_enhanced == "4.4.1"
        assert (r.last_text or "").startswith("smarthost 192.0.2.99: connect to 192.0.2.99")
    finally:
        w.h.close()
