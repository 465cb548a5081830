"""QueueRunner on task.Clock with a real (inline) store and a scripted SMTP sink."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from mxd.dns.testing import FakeResolver
from mxd.queue.queue import Queue
from mxd.queue.runner import QueueRunner, QueueSettings
from mxd.queue.schedule import RetrySettings
from mxd.store import queuedb as qs
from mxd.store.interfaces import OutboundMessage, OutboundRecipient
from mxd.store.queuedb import QUEUE_MIGRATIONS
from mxd.store.sqlitequeue import SQLiteQueueStore
from tests.queue.fakesmtp import FakeSink
from tests.store.helpers import StoreHarness, open_store

BODY = b"From: a@example.org\r\nTo: x@remote.test\r\nSubject: hi\r\n\r\nhello\r\n.dot line\r\n"


class PermanentError(Exception):
    permanent = True


class FakeLocal:
    """Local delivery into a dict: example.org is local; unknown users fail permanently."""

    def __init__(self) -> None:
        self.boxes: dict[str, list[bytes]] = {"a@example.org": []}

    def is_local(self, address: str) -> bool:
        return address.endswith("@example.org")

    def deliver(self, address: str, body: bytes) -> Deferred[None]:
        if address not in self.boxes:
            return fail(PermanentError(f"no such user {address}"))
        self.boxes[address].append(body)
        return succeed(None)


class World:
    def __init__(self, data_dir: Path, **settings: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.h: StoreHarness = open_store(data_dir, inline=True, clock=self.clock,
                                          schemas={"queue": QUEUE_MIGRATIONS})
        self.resolver = FakeResolver()
        for dom, ip in (("remote.test", "192.0.2.10"), ("other.test", "192.0.2.20")):
            self.resolver.add(dom, "MX", [f"10 mx.{dom}."])
            self.resolver.add(f"mx.{dom}", "A", [ip])
        self.sink = FakeSink()
        self.local = FakeLocal()
        self.queue = Queue(SQLiteQueueStore(self.h.store), self.clock)
        retry = settings.pop("retry", RetrySettings())
        self.runner = QueueRunner(
            self.queue, self.resolver, self.clock,
            QueueSettings(retry=retry, **settings), local_delivery=self.local,
            hostname="mx.example.org", random=lambda: 0.5, connector=self.sink)

    def enqueue(self, *rcpts: str, sender: str = "a@example.org", **kw: Any) -> str:
        w = self.h.store.new_blob()
        w.write(BODY)
        msg = OutboundMessage(sender, tuple(OutboundRecipient(r) for r in rcpts), **kw)
        return self.h.run(self.queue.enqueue(w, msg))

    def start(self) -> None:
        self.runner.startService()
        self.clock.advance(0)

    def queued(self) -> list[qs.QueuedMessage]:
        return self.h.run(self.queue.list())

    def attempts(self, queue_id: str) -> list[qs.AttemptRecord]:
        shown = self.h.run(self.queue.show(queue_id))
        if shown is None:
            return self.h.run(self.h.store.transact(lambda c: qs.attempts_for(c, queue_id)))
        return shown[1]


@pytest.fixture
def world(data_dir: Path) -> Any:
    w = World(data_dir)
    yield w
    w.h.close()


def _report(raw: bytes) -> list[dict[str, str]]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    part = list(msg.iter_parts())[1]  # type: ignore[attr-defined]
    return [{k.lower(): str(v) for k, v in b.items()} for b in part.get_payload()]


def test_one_transaction_for_recipients_of_one_domain(world: World) -> None:
    """Two recipients in one domain go in one SMTP transaction; the queue is then empty."""
    qid = world.enqueue("x@remote.test", "y@remote.test")
    world.start()
    assert len(world.sink.received) == 1
    got = world.sink.received[0]
    assert got.rcpts == ["x@remote.test", "y@remote.test"] and got.ip == "192.0.2.10"
    assert got.data == BODY
    assert world.queued() == []
    assert [a.result for a in world.attempts(qid)] == ["delivered"]


def test_temporary_failure_retries_on_schedule(world: World) -> None:
    """A 451 reschedules after first_delay (7.5 min, no jitter at random=0.5), then delivers."""
    world.sink.behaviour.rcpt["x@remote.test"] = "451 4.3.0 busy"
    world.enqueue("x@remote.test")
    world.start()
    [m] = world.queued()
    r = m.recipients[0]
    assert (r.attempts, r.last_code, r.last_enhanced) == (1, 451, "4.3.0")
    assert r.next_attempt == pytest.approx(world.clock.seconds() + 450)
    world.sink.behaviour.rcpt.clear()
    world.clock.advance(449)
    assert world.sink.received == []
    world.clock.advance(1)
    assert len(world.sink.received) == 1 and world.queued() == []


def test_permanent_failure_bounces_with_a_dsn_to_the_local_sender(world: World) -> None:
    """A 550 removes the recipient and puts a failure DSN in the local sender's mailbox."""
    world.sink.behaviour.rcpt["x@remote.test"] = "550 5.1.1 no such user"
    world.enqueue("x@remote.test", envid="E1")
    world.start()
    world.clock.advance(0)
    assert world.queued() == []
    [dsn] = world.local.boxes["a@example.org"]
    per_msg, per_rcpt = _report(dsn)
    assert per_msg["original-envelope-id"] == "E1"
    assert per_rcpt["action"] == "failed" and per_rcpt["status"] == "5.1.1"
    assert "550 5.1.1 no such user" in per_rcpt["diagnostic-code"]
    assert b"Subject: hi" in dsn and b"hello" not in dsn  # headers only (RET default)


def test_partial_success(world: World) -> None:
    """250/550/451 in one transaction: only the 451 recipient stays queued; one DSN."""
    world.sink.behaviour.rcpt.update({"y@remote.test": "550 5.1.1 unknown",
                                      "z@remote.test": "452 4.2.2 full"})
    world.enqueue("x@remote.test", "y@remote.test", "z@remote.test")
    world.start()
    world.clock.advance(0)
    [m] = world.queued()
    assert [r.address for r in m.recipients] == ["z@remote.test"]
    assert world.sink.received[0].rcpts == ["x@remote.test"]
    [dsn] = world.local.boxes["a@example.org"]
    assert [g.get("final-recipient") for g in _report(dsn)[1:]] == ["rfc822;y@remote.test"]


def test_delayed_dsn_after_configured_attempts_and_failure_at_the_end(data_dir: Path) -> None:
    """With delay_dsn_after_attempts=2 one delayed DSN comes after the 2nd try; giving up
    after max_attempts sends a failure DSN."""
    w = World(data_dir, retry=RetrySettings(delay_dsn_after_attempts=2, max_attempts=3))
    try:
        w.sink.behaviour.rcpt["x@remote.test"] = "421 4.4.2 go away"
        w.enqueue("x@remote.test")
        w.start()
        assert w.local.boxes["a@example.org"] == []
        w.clock.advance(450)
        w.clock.advance(0)
        [delayed] = w.local.boxes["a@example.org"]
        assert _report(delayed)[1]["action"] == "delayed"
        assert b"The next attempt is planned for" in delayed
        w.clock.advance(900)
        w.clock.advance(0)
        assert w.queued() == []
        assert len(w.sink.commands) > 0
        failed = w.local.boxes["a@example.org"][1]
        assert _report(failed)[1]["action"] == "failed"
        assert b"attempted 3 times" in failed
    finally:
        w.h.close()


def test_no_dsn_about_a_null_sender_message(world: World) -> None:
    """A bounce of a message with a null reverse-path produces no DSN."""
    world.sink.behaviour.rcpt["x@remote.test"] = "550 5.1.1 no"
    world.enqueue("x@remote.test", sender="")
    world.start()
    world.clock.advance(0)
    assert world.queued() == [] and world.local.boxes["a@example.org"] == []


def test_remote_sender_gets_a_dsn_queued_with_null_reverse_path(world: World) -> None:
    """A failure DSN to a remote sender is queued and sent with MAIL FROM:<>."""
    world.sink.behaviour.rcpt["x@remote.test"] = "550 5.1.1 no"
    world.enqueue("x@remote.test", sender="s@other.test")
    world.start()
    world.clock.advance(0)
    dsns = [r for r in world.sink.received if r.ip == "192.0.2.20"]
    assert len(dsns) == 1 and dsns[0].mail_from == "" and dsns[0].rcpts == ["s@other.test"]
    assert b"multipart/report" in dsns[0].data


def test_null_mx_bounces_without_connecting(world: World) -> None:
    """RFC 7505 null MX fails the recipient at once (5.1.10), no connection is made."""
    world.resolver.add("nomail.test", "MX", ["0 ."])
    world.enqueue("x@nomail.test")
    world.start()
    world.clock.advance(0)
    assert world.sink.connections == []
    [dsn] = world.local.boxes["a@example.org"]
    assert _report(dsn)[1]["status"] == "5.1.10"


def test_next_mx_after_a_refused_connection(world: World) -> None:
    """A refused connection to the best MX moves on to the next one."""
    world.resolver.add("two.test", "MX", ["10 a.two.test.", "20 b.two.test."])
    world.resolver.add("a.two.test", "A", ["192.0.2.1"])
    world.resolver.add("b.two.test", "A", ["192.0.2.2"])
    world.sink.refuse.add("192.0.2.1")
    qid = world.enqueue("x@two.test")
    world.start()
    assert world.sink.connections == ["192.0.2.1", "192.0.2.2"]
    assert world.sink.received[0].ip == "192.0.2.2"
    assert [a.result for a in world.attempts(qid)] == ["error", "delivered"]


def test_concurrency_limits_total_and_per_domain(data_dir: Path) -> None:
    """In-flight deliveries never exceed max_concurrent, nor max_per_domain per domain."""
    w = World(data_dir, max_concurrent=3, max_per_domain=2)
    try:
        w.sink.hang.update({"192.0.2.10", "192.0.2.20"})
        for _ in range(4):
            w.enqueue("x@remote.test")
        for _ in range(4):
            w.enqueue("x@other.test")
        w.start()
        w.clock.advance(0)
        assert w.runner.in_flight == 3
        assert max(w.runner._per_domain.values()) <= 2
        assert len(w.sink.connections) == 3
        # finishing one connection frees a slot that is taken at once
        d = w.sink.pending.pop(0)
        d.errback(ConnectionError("refused"))
        w.clock.advance(0)
        assert w.runner.in_flight == 3 and len(w.sink.connections) == 4
        assert max(w.runner._per_domain.values()) <= 2
    finally:
        w.h.close()


def test_restart_retries_in_flight_work_once(data_dir: Path) -> None:
    """Recipients in flight when the process died are delivered after the next start."""
    w = World(data_dir)
    w.sink.hang.add("192.0.2.10")
    w.enqueue("x@remote.test")
    w.start()
    assert w.runner.in_flight == 1
    [m] = w.queued()
    assert m.recipients[0].state == "inflight"
    w.h.close()  # the "crash": the runner never learns the result
    w2 = World(data_dir)
    try:
        w2.start()
        assert len(w2.sink.received) == 1 and w2.queued() == []
    finally:
        w2.h.close()


def test_admin_hold_release_kick_drop(world: World) -> None:
    """Held recipients are not delivered; release+kick delivers; drop removes without DSN."""
    world.sink.behaviour.rcpt["x@remote.test"] = "451 4.3.0 later"
    qid = world.enqueue("x@remote.test")
    assert world.h.run(world.queue.hold(queue_id=qid)) == 1
    world.start()
    assert world.sink.connections == []
    world.h.run(world.queue.release(queue_id=qid))
    world.clock.advance(0)
    assert len(world.sink.connections) == 1
    world.sink.behaviour.rcpt.clear()
    world.h.run(world.queue.kick(domain="remote.test"))
    world.clock.advance(0)
    assert len(world.sink.received) == 1 and world.queued() == []
    qid2 = world.enqueue("y@remote.test")
    world.h.run(world.queue.hold(queue_id=qid2))
    assert world.h.run(world.queue.drop(queue_id=qid2)) == 1
    assert world.queued() == [] and world.local.boxes["a@example.org"] == []


def test_enqueue_refuses_bad_envelopes(world: World) -> None:
    """No recipients or a CRLF in an address is a QueueError; nothing is queued."""
    from mxd.queue.queue import QueueError

    for msg in (OutboundMessage("a@example.org", ()),
                OutboundMessage("a@example.org", (OutboundRecipient("x@y\r\nRCPT"),))):
        w = world.h.store.new_blob()
        w.write(BODY)
        with pytest.raises(QueueError):
            world.h.run(world.queue.enqueue(w, msg))
    assert world.queued() == []


def test_settings_are_frozen_values() -> None:
    """QueueSettings is an immutable value with the documented defaults."""
    s = QueueSettings()
    assert (s.port, s.max_concurrent, s.retry.first_delay) == (25, 20, 450.0)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        s.port = 26  # type: ignore[misc]


def test_connection_is_reused_then_closed_when_idle(world: World) -> None:
    """A second message to the same host goes over the idle connection; after the idle
    timeout the connection is closed with QUIT."""
    world.enqueue("x@remote.test")
    world.start()
    world.enqueue("y@remote.test")
    world.clock.advance(0)
    assert len(world.sink.received) == 2 and world.sink.connections == ["192.0.2.10"]
    assert "QUIT" not in world.sink.commands
    world.clock.advance(world.runner.settings.idle_timeout)
    assert world.sink.commands[-1] == "QUIT"
    world.enqueue("z@remote.test")
    world.clock.advance(0)
    assert len(world.sink.connections) == 2 and len(world.sink.received) == 3


def test_opportunistic_tls_failure_falls_back_to_plaintext(world: World) -> None:
    """RFC 7435: when STARTTLS fails on an opportunistic hop the message goes in plaintext
    on a new connection, and the attempt records the TLS failure."""
    world.sink.behaviour.extensions = ("PIPELINING", "STARTTLS", "ENHANCEDSTATUSCODES")
    qid = world.enqueue("x@remote.test")
    world.start()
    assert len(world.sink.connections) == 2 and len(world.sink.received) == 1
    [a] = world.attempts(qid)
    assert a.result == "delivered" and a.tls_failure == "validation-failure" and not a.tls_used


def test_requiretls_message_is_never_sent_in_plaintext(world: World) -> None:
    """A REQUIRETLS message under a TLS-required policy gets no plaintext fallback after a
    failed STARTTLS: one connection, nothing sent, the recipient deferred with the TLS
    error (4.7.5)."""
    from mxd.smtp.client import TLSMode, TLSPolicy

    world.runner.tls_policy_factory = lambda *a, **k: succeed(TLSPolicy(mode=TLSMode.REQUIRED))
    world.sink.behaviour.extensions = ("PIPELINING", "STARTTLS")
    world.enqueue("x@remote.test", requiretls=True)
    world.start()
    world.clock.advance(0)
    assert world.sink.received == [] and len(world.sink.connections) == 1
    [m] = world.queued()
    assert m.recipients[0].last_enhanced == "4.7.5" and m.recipients[0].attempts == 1


def test_requiretls_without_dane_or_mta_sts_bounces_without_connecting(world: World) -> None:
    """With no TLS policy factory (DANE and MTA-STS off) no host can be verified, so a
    REQUIRETLS message fails at once with 5.7.30 (RFC 8689 §4.1) and nothing connects."""
    world.sink.behaviour.extensions = ("PIPELINING", "STARTTLS", "REQUIRETLS")
    world.enqueue("x@remote.test", requiretls=True)
    world.start()
    world.clock.advance(0)
    assert world.sink.connections == [] and world.queued() == []
    [dsn] = world.local.boxes["a@example.org"]
    assert _report(dsn)[1]["status"] == "5.7.30"


def test_notify_success_to_a_peer_without_dsn_gives_a_relayed_dsn(world: World) -> None:
    """RFC 3461 §5.2.2.1: NOTIFY=SUCCESS relayed to a peer without DSN yields a "relayed" DSN."""
    world.sink.behaviour.extensions = ("PIPELINING",)
    w = world.h.store.new_blob()
    w.write(BODY)
    world.h.run(world.queue.enqueue(w, OutboundMessage(
        "a@example.org", (OutboundRecipient("x@remote.test", notify=frozenset({"SUCCESS"})),))))
    world.start()
    world.clock.advance(0)
    [dsn] = world.local.boxes["a@example.org"]
    assert _report(dsn)[1]["action"] == "relayed"


class Refused(Exception):
    def __init__(self, permanent: bool, enhanced: str) -> None:
        super().__init__(f"refused ({enhanced})")
        self.permanent = permanent
        self.enhanced = enhanced


def test_tls_policy_factory_gets_message_flags_and_can_refuse_hosts(data_dir: Path) -> None:
    """The per-host policy factory sees requiretls/tls_required_no; a temporary refusal of
    the first MX moves to the next; permanent refusal of every MX bounces (5.7.30)."""
    from mxd.smtp.client import TLSMode, TLSPolicy

    calls: list[tuple[str, bool, bool]] = []

    def factory(domain: str, plan: Any, host: Any, *, addresses: Any = (), requiretls: bool = False,
                tls_required_no: bool = False) -> Deferred[TLSPolicy]:
        calls.append((host.name, requiretls, tls_required_no))
        if host.name == "a.two.test":
            return fail(Refused(False, "4.7.5"))
        if host.name == "nope.test":
            return fail(Refused(True, "5.7.30"))
        return succeed(TLSPolicy(mode=TLSMode.OPPORTUNISTIC))

    w = World(data_dir)
    try:
        w.runner.tls_policy_factory = factory
        w.resolver.add("two.test", "MX", ["10 a.two.test.", "20 b.two.test."])
        w.resolver.add("a.two.test", "A", ["192.0.2.1"])
        w.resolver.add("b.two.test", "A", ["192.0.2.2"])
        w.resolver.add("strict.test", "MX", ["10 nope.test."])
        w.resolver.add("nope.test", "A", ["192.0.2.3"])
        w.enqueue("x@two.test", tls_required_no=True)
        w.enqueue("y@strict.test", requiretls=True)
        w.start()
        w.clock.advance(0)
        assert ("a.two.test", False, True) in calls and ("nope.test", True, False) in calls
        assert [r.ip for r in w.sink.received if r.rcpts == ["x@two.test"]] == ["192.0.2.2"]
        assert "192.0.2.3" not in w.sink.connections
        [dsn] = w.local.boxes["a@example.org"]
        assert _report(dsn)[1]["status"] == "5.7.30"
    finally:
        w.h.close()


def test_mx_loop_rule_through_the_runner(data_dir: Path) -> None:
    """RFC 5321 §5.1: MX hosts at or below our own preference are dropped (the backup MX
    at 5 gets the mail, never we at 10 or the peer at 20); when we are the best MX the
    message bounces with 5.4.6 and no connection is made."""
    w = World(data_dir, own_names=frozenset({"mx.example.org"}))
    try:
        w.resolver.add("loop.test", "MX", ["5 mx.backup.test.", "10 mx.example.org.",
                                           "20 mx.after.test."])
        w.resolver.add("mx.backup.test", "A", ["192.0.2.30"])
        w.resolver.add("mx.after.test", "A", ["192.0.2.31"])
        w.resolver.add("mx.example.org", "A", ["192.0.2.32"])
        w.resolver.add("self.test", "MX", ["10 mx.example.org.", "20 mx.after.test."])
        w.enqueue("x@loop.test")
        w.start()
        assert w.sink.connections == ["192.0.2.30"] and len(w.sink.received) == 1
        qid = w.enqueue("y@self.test")
        w.clock.advance(0)
        assert w.sink.connections == ["192.0.2.30"]
        assert w.queued() == []
        [a] = w.attempts(qid)  # no connection: a row without host address or TLS
        assert (a.ip, a.result, a.enhanced, a.transport) == (None, "error", "5.4.6", "direct")
        assert a.tls_success is None
        [dsn] = w.local.boxes["a@example.org"]
        assert b"5.4.6" in dsn and b"y@self.test" in dsn
    finally:
        w.h.close()


def test_own_address_is_never_connected(data_dir: Path) -> None:
    """An MX whose address is one of ours (``own_addresses``) is skipped: no connection,
    the recipient is deferred with the loop named."""
    w = World(data_dir, own_addresses=frozenset({"192.0.2.10"}))
    try:
        qid = w.enqueue("x@remote.test")
        w.start()
        assert w.sink.connections == []
        [m] = w.queued()
        assert m.queue_id == qid
        (r,) = m.recipients
        assert r.last_code == 451 and "is this server" in (r.last_text or "")
    finally:
        w.h.close()


def test_dsn_is_dkim_signed_for_the_hostname_domain(world: World, tmp_path: Path) -> None:
    """mxd's own messages are signed: the DSN from MAILER-DAEMON@mx.example.org carries
    a DKIM signature of example.org that verifies."""
    from mxd.msgauth.dkim import Result, verify_message
    from mxd.msgauth.dkimkeys import generate_key
    from mxd.msgauth.signing import KeyRing

    key = generate_key(tmp_path / "dkim", "example.org", "s1", "ed25519")
    world.runner.sign = KeyRing({"example.org": [key]}).sign
    world.sink.behaviour.rcpt["x@remote.test"] = "550 5.1.1 no such user"
    world.enqueue("x@remote.test")
    world.start()
    world.clock.advance(0)
    [dsn] = world.local.boxes["a@example.org"]
    assert dsn.startswith(b"DKIM-Signature: v=1; a=ed25519-sha256;")
    keys = FakeResolver()
    keys.add(key.dns_name, "TXT", [key.txt.encode()])
    [res] = verify_message(keys, dsn, world.clock.seconds()).result
    assert res.result is Result.PASS and res.domain == "example.org"
