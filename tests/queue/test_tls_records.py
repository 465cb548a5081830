"""TLS in the queue: host refusals by the TLS policy, per-session TLS report records,
per-domain TLS support, and the REQUIRETLS admin override (RFC 8689, RFC 8460)."""

from __future__ import annotations

import argparse
import datetime
import io
import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from mxd.queue import cli
from mxd.queue.queue import Queue, QueueError
from mxd.queue.tlspolicy import HostRefusal, HostRefused
from mxd.smtp.client import TLSMode, TLSPolicy
from mxd.store import queuedb as qs
from mxd.store.interfaces import OutboundMessage, OutboundRecipient
from mxd.store.queuedb import QUEUE_MIGRATIONS
from mxd.store.sqlitequeue import SQLiteQueueStore
from mxd.tlsrpt.report import aggregate
from mxd.tlsrpt.results import PolicyInfo, PolicyType, ResultType
from tests.queue.test_runner import World, _report, world  # noqa: F401
from tests.store.helpers import open_store

TLSA_INFO = PolicyInfo(PolicyType.TLSA, "mx.two.test", ("3 1 1 " + "00" * 32,), ("mx.two.test",))


def _two_mx(w: World) -> None:
    w.resolver.add("two.test", "MX", ["10 a.two.test.", "20 b.two.test."])
    w.resolver.add("a.two.test", "A", ["192.0.2.1"])
    w.resolver.add("b.two.test", "A", ["192.0.2.2"])


def _refusing(permanent: bool, enhanced: str, rtype: ResultType | None,
              seen: list[tuple[str, bool, bool]] | None = None) -> Any:
    def factory(domain: str, plan: Any, host: Any, *, addresses: Any = (), requiretls: bool = False,
                tls_required_no: bool = False) -> Deferred[TLSPolicy]:
        if seen is not None:
            seen.append((host.name, requiretls, tls_required_no))
        return fail(HostRefused(HostRefusal(host.name, "refused by policy", enhanced,
                                            permanent, TLSA_INFO, rtype)))
    return factory


def test_every_host_refused_temporarily_defers_and_records_the_refusals(data_dir: Path) -> None:
    """A bogus TLSA answer for every MX (4.7.5, temporary): nothing is connected, the
    recipient is deferred with 451 4.7.5, and each host gets a "refused" attempt row with
    its RFC 8460 result type."""
    w = World(data_dir)
    try:
        _two_mx(w)
        w.runner.tls_policy_factory = _refusing(False, "4.7.5", ResultType.DNSSEC_INVALID)
        qid = w.enqueue("x@two.test")
        w.start()
        assert w.sink.connections == [] and w.local.boxes["a@example.org"] == []
        [m] = w.queued()
        assert (m.recipients[0].last_code, m.recipients[0].last_enhanced) == (451, "4.7.5")
        rows = w.attempts(qid)
        assert [(a.result, a.host, a.tls_result_type, a.tls_success) for a in rows] == [
            ("refused", "a.two.test", "dnssec-invalid", False),
            ("refused", "b.two.test", "dnssec-invalid", False)]
        assert rows[0].tls_policy_type == "tlsa" and rows[0].tls_policy_strings == TLSA_INFO.strings
    finally:
        w.h.close()


def test_permanent_refusal_of_every_host_bounces_without_requiretls_and_body(
        data_dir: Path) -> None:
    """REQUIRETLS cannot be met by any MX (5.7.30): the message fails at once; the DSN to a
    remote sender is queued without REQUIRETLS and returns headers only, even with
    RET=FULL."""
    w = World(data_dir)
    try:
        _two_mx(w)
        w.resolver.add("far.test", "MX", ["10 mx.far.test."])
        w.resolver.add("mx.far.test", "A", ["192.0.2.30"])
        seen: list[tuple[str, bool, bool]] = []
        refuse = _refusing(True, "5.7.30", None, seen)

        def factory(domain: str, plan: Any, host: Any, **kw: Any) -> Deferred[TLSPolicy]:
            if domain == "far.test":
                seen.append((host.name, kw["requiretls"], kw["tls_required_no"]))
                return succeed(TLSPolicy(mode=TLSMode.NONE))
            return refuse(domain, plan, host, **kw)  # type: ignore[no-any-return]

        w.runner.tls_policy_factory = factory
        qid = w.enqueue("x@two.test", sender="s@far.test", requiretls=True, ret="FULL")
        w.start()
        w.clock.advance(0)
        assert seen == [("a.two.test", True, False), ("b.two.test", True, False),
                        ("mx.far.test", False, False)]
        [dsn] = w.sink.received
        assert dsn.mail_from == "" and dsn.rcpts == ["s@far.test"]
        assert not any("REQUIRETLS" in c for c in w.sink.commands if c.startswith("MAIL"))
        assert _report(dsn.data)[1]["status"] == "5.7.30"
        assert b"hello" not in dsn.data and b"Subject: hi" in dsn.data
        assert {a.result for a in w.attempts(qid)} == {"refused"}
    finally:
        w.h.close()


def test_peer_without_requiretls_is_skipped_for_the_next_mx_then_bounced(data_dir: Path) -> None:
    """A REQUIRETLS message: each connected MX that cannot take REQUIRETLS (5.7.30 in the
    client) moves on to the next MX; when none can, a failure DSN (5.7.30) goes to the
    local sender."""
    w = World(data_dir)
    try:
        _two_mx(w)
        w.runner.tls_policy_factory = lambda *a, **k: succeed(TLSPolicy(mode=TLSMode.NONE))
        w.enqueue("x@two.test", requiretls=True)
        w.start()
        w.clock.advance(0)
        assert w.sink.connections == ["192.0.2.1", "192.0.2.2"] and w.sink.received == []
        [dsn] = w.local.boxes["a@example.org"]
        fields = _report(dsn)[1]
        assert fields["status"] == "5.7.30"
        assert "b.two.test: REQUIRETLS not supported" in " ".join(fields["diagnostic-code"].split())
        assert fields["diagnostic-code"].count("5.7.30") == 1
    finally:
        w.h.close()


def test_reused_connection_is_one_tls_session_and_domain_support_is_recorded(
        world: World) -> None:  # noqa: F811
    """Two messages over one connection: two attempt rows but one TLS session for
    reporting; the domain's support record says STARTTLS was not offered."""
    q1 = world.enqueue("x@remote.test")
    world.start()
    q2 = world.enqueue("y@remote.test")
    world.clock.advance(0)
    assert world.sink.connections == ["192.0.2.10"]
    [a1], [a2] = world.attempts(q1), world.attempts(q2)
    assert a1.tls_session and not a2.tls_session
    assert a1.sending_ip == "127.0.0.1" and a1.receiving_helo == "sink.test"
    now = world.clock.seconds()
    sessions = world.h.run(world.h.store.transact(
        lambda c: qs.tls_attempts_between(c, now - 60, now + 60)))
    assert len(sessions) == 1 and not sessions[0].success
    assert sessions[0].failure is not None
    assert sessions[0].failure.result_type is ResultType.STARTTLS_NOT_SUPPORTED
    [d] = world.h.run(world.queue.tls_domains())
    assert (d.domain, d.mx_host, d.starttls, d.requiretls, d.verified) == (
        "remote.test", "mx.remote.test", False, False, False)


def test_admin_requiretls_override_changes_what_the_policy_factory_sees(
        data_dir: Path) -> None:
    """``no`` on a REQUIRETLS message delivers as TLS-Required: No; ``default`` restores
    the received flags; ``yes`` requires REQUIRETLS; a bad setting is a QueueError."""
    w = World(data_dir)
    try:
        seen: list[tuple[str, bool, bool]] = []
        w.runner.tls_policy_factory = _refusing(False, "4.7.5", ResultType.DNSSEC_INVALID, seen)
        qid = w.enqueue("x@remote.test", requiretls=True)
        assert w.h.run(w.queue.set_requiretls(qid, "no")) is True
        [m] = w.queued()
        assert (m.requiretls, m.tls_required_no, m.tls_override) == (False, True, "no")
        assert m.received_requiretls
        w.start()
        assert seen[-1] == ("mx.remote.test", False, True)
        assert w.h.run(w.queue.set_requiretls(qid, "default")) is True
        assert (w.queued()[0].requiretls, w.queued()[0].tls_override) == (True, None)
        assert w.h.run(w.queue.set_requiretls(qid, "yes")) is True
        assert w.h.run(w.queue.set_requiretls("nope", "yes")) is False
        assert isinstance(w.h.fail(w.queue.set_requiretls(qid, "maybe")), QueueError)
    finally:
        w.h.close()


def _cli(data_dir: Path, *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    code = cli.run(parser.parse_args(list(argv)), data_dir=data_dir, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_requiretls_and_domains(data_dir: Path) -> None:
    """``mxd queue requiretls ID yes|no|default`` changes the flags shown by ``show``;
    ``mxd queue domains`` prints the newest support record per domain."""
    h = open_store(data_dir, inline=True, clock=Clock(), schemas={"queue": QUEUE_MIGRATIONS})
    w = h.store.new_blob()
    w.write(b"Subject: x\r\n\r\nbody\r\n")
    qid = h.run(Queue(SQLiteQueueStore(h.store), Clock()).enqueue(w, OutboundMessage(
        "s@example.org", (OutboundRecipient("a@one.test"),))))

    def put(c: Any) -> None:
        qs.record_domain_tls(c, qs.DomainTLS("one.test", 200.0, "mx.one.test", "192.0.2.1",
                                             True, True, True, True, "tlsa", None, "TLSv1.3"))
        qs.record_domain_tls(c, qs.DomainTLS("one.test", 100.0, "old.one.test", None,
                                             False, False, False, False))  # older: ignored
        qs.record_domain_tls(c, qs.DomainTLS("two.test", 150.0, "mx.two.test", None, True,
                                             False, True, False, "sts", "certificate-expired"))
    h.run(h.store.transact(put))
    h.close()
    assert _cli(data_dir, "requiretls", qid, "yes")[0] == 0
    info = json.loads(_cli(data_dir, "show", qid, "--json")[1])
    assert (info["requiretls"], info["tls_override"]) == (True, "yes")
    assert _cli(data_dir, "requiretls", qid, "no")[0] == 0
    info = json.loads(_cli(data_dir, "show", qid, "--json")[1])
    assert (info["requiretls"], info["tls_required_no"]) == (False, True)
    assert _cli(data_dir, "requiretls", "nope", "no")[0] == cli.EXIT_NOMATCH
    with pytest.raises(SystemExit):
        _cli(data_dir, "requiretls", qid, "maybe")
    code, out, _ = _cli(data_dir, "domains", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["domain"] for r in rows] == ["one.test", "two.test"]
    assert rows[0]["mx_host"] == "mx.one.test" and rows[0]["verified"] and rows[0]["requiretls"]
    assert rows[1]["failure"] == "certificate-expired" and not rows[1]["verified"]
    code, out, _ = _cli(data_dir, "domains")
    assert "certificate-expired" in out and "2 domain(s)" in out
    h = open_store(data_dir, inline=True, schemas={"queue": QUEUE_MIGRATIONS})
    try:
        ready = h.run(Queue(SQLiteQueueStore(h.store), Clock()).requiretls_ready(
            ["ONE.test", "two.test", "new.test"]))
    finally:
        h.close()
    assert ready == {"ONE.test": True, "two.test": False, "new.test": False}
    assert _cli(data_dir, "domains", "--domain", "none.test")[0] == cli.EXIT_NOMATCH


def test_a_days_attempts_aggregate_into_a_tlsrpt_report(data_dir: Path) -> None:
    """Rows of one UTC day load as TLSAttempt values (reused-connection rows and rows
    without a TLS policy left out, other days excluded) and aggregate into the RFC 8460
    JSON with per-policy counts, policy strings and failure details."""
    day = datetime.date(2026, 11, 27)
    t0 = datetime.datetime(2026, 11, 27, 10, tzinfo=datetime.UTC).timestamp()
    tlsa = dict(tls_policy_type="tlsa", tls_policy_domain="mx.two.test",
                tls_policy_strings=TLSA_INFO.strings, tls_policy_mx=("mx.two.test",))
    rows = [
        qs.AttemptRecord("q1", "two.test", ("a@two.test",), t0, "delivered", "mx.two.test",
                         "192.0.2.1", tls_success=True, **tlsa),  # type: ignore[arg-type]
        qs.AttemptRecord("q2", "two.test", ("b@two.test",), t0 + 1, "delivered",
                         "mx.two.test", "192.0.2.1", tls_success=True, tls_session=False,
                         **tlsa),  # type: ignore[arg-type]
        qs.AttemptRecord("q3", "two.test", ("c@two.test",), t0 + 2, "error", "mx.two.test",
                         "192.0.2.1", tls_success=False, tls_result_type="validation-failure",
                         tls_detail="no TLSA record matched", sending_ip="192.0.2.99",
                         receiving_helo="mx.two.test", **tlsa),  # type: ignore[arg-type]
        qs.AttemptRecord("q4", "sts.test", ("d@sts.test",), t0 + 3, "refused", "mx1.sts.test",
                         None, tls_success=False, tls_policy_type="sts",
                         tls_policy_domain="sts.test",
                         tls_policy_strings=("version: STSv1", "mode: enforce",
                                             "mx: mx2.sts.test", "max_age: 86400"),
                         tls_policy_mx=("mx2.sts.test",), tls_result_type="validation-failure"),
        qs.AttemptRecord("q5", "x.test", ("e@x.test",), t0 + 4, "error"),  # no TLS session
        qs.AttemptRecord("q6", "two.test", ("f@two.test",), t0 + 86400, "delivered",
                         tls_success=True, **tlsa),  # type: ignore[arg-type]  # next day
    ]
    h = open_store(data_dir, inline=True, schemas={"queue": QUEUE_MIGRATIONS})
    try:
        def put(c: Any) -> None:
            for r in rows:
                qs.log_attempt(c, r)

        h.run(h.store.transact(put))
        attempts = h.run(h.store.transact(lambda c: qs.tls_attempts_for_day(c, day)))
    finally:
        h.close()
    assert len(attempts) == 3
    start = datetime.datetime(2026, 11, 27, tzinfo=datetime.UTC)
    report = json.loads(json.dumps(aggregate(
        attempts, organization_name="example.org", contact_info="tlsrpt@example.org",
        report_id="r1", start=start, end=start + datetime.timedelta(days=1))))
    by_type = {p["policy"]["policy-type"]: p for p in report["policies"]}
    tlsa_p, sts_p = by_type["tlsa"], by_type["sts"]
    assert tlsa_p["policy"]["policy-string"] == list(TLSA_INFO.strings)
    assert tlsa_p["summary"] == {"total-successful-session-count": 1,
                                 "total-failure-session-count": 1}
    [detail] = tlsa_p["failure-details"]
    assert detail["result-type"] == "validation-failure"
    assert detail["sending-mta-ip"] == "192.0.2.99" and detail["receiving-ip"] == "192.0.2.1"
    assert detail["receiving-mx-hostname"] == "mx.two.test"
    # RFC 8460 §4.4: the reason in words is "failure-reason-code" ("additional-information"
    # is a URI).
    assert detail["failure-reason-code"] == "no TLSA record matched"
    assert "additional-information" not in detail
    assert sts_p["policy"]["mx-host"] == ["mx2.sts.test"]
    assert sts_p["summary"]["total-failure-session-count"] == 1


def test_existing_queue_database_upgrades_with_its_rows(data_dir: Path) -> None:
    """A database made by the first queue schema gets the TLS columns and table at the
    next start; its messages read as received (no override) and its attempts as sessions
    with nothing to report."""
    h = open_store(data_dir, inline=True, clock=Clock(), schemas={"queue": QUEUE_MIGRATIONS[:1]})
    w = h.store.new_blob()
    w.write(b"Subject: x\r\n\r\nbody\r\n")
    qid = h.run(Queue(SQLiteQueueStore(h.store), Clock()).enqueue(w, OutboundMessage(
        "s@example.org", (OutboundRecipient("a@one.test"),), requiretls=True)))
    h.run(h.store.transact(lambda c: c.execute(
        "INSERT INTO queue_attempts (queue_id, domain, recipients, at, result, tls_used)"
        " VALUES (?, 'one.test', 'a@one.test', 5.0, 'error', 0)", (qid,))))
    h.close()
    h = open_store(data_dir, inline=True, schemas={"queue": QUEUE_MIGRATIONS})
    try:
        m = h.run(h.store.transact(lambda c: qs.get_message(c, qid)))
        assert m.requiretls and m.tls_override is None
        [a] = h.run(h.store.transact(lambda c: qs.attempts_for(c, qid)))
        assert a.tls_session and a.tls_success is None and a.tls_attempt() is None
        assert h.run(h.store.transact(lambda c: qs.domain_tls(c))) == []
    finally:
        h.close()


def test_policy_failure_ignored_by_tls_required_no_is_reported_and_marked(
        data_dir: Path) -> None:
    """A bogus TLSA answer ignored under TLS-Required: No (a policy note): the message is
    delivered, the attempt is marked overridden and its session is reported as a failure
    of the TLSA policy (dnssec-invalid), not as a session without policy."""
    from mxd.queue.tlspolicy import HostTLSPolicy, PolicyMode, PolicyNote

    w = World(data_dir)
    try:
        policy = HostTLSPolicy(
            mode=PolicyMode.OPPORTUNISTIC, mx_host="mx.remote.test",
            policy_domain="remote.test", tls_required_no=True,
            notes=(PolicyNote(TLSA_INFO, ResultType.DNSSEC_INVALID, "bogus TLSA answer"),))
        w.runner.tls_policy_factory = lambda *a, **k: succeed(policy.client_policy(w.clock))
        qid = w.enqueue("x@remote.test", tls_required_no=True)
        w.start()
        assert len(w.sink.received) == 1
        [a] = w.attempts(qid)
        assert a.result == "delivered" and a.tls_overridden
        assert (a.tls_policy_type, a.tls_result_type, a.tls_success) == (
            "tlsa", "dnssec-invalid", False)
        t = a.tls_attempt()
        assert t is not None and t.policy == TLSA_INFO and t.failure is not None
        assert t.failure.failure_reason_code == "bogus TLSA answer"  # RFC 8460 §4.4: text, not a URI
    finally:
        w.h.close()


def test_delivery_of_a_tls_report_records_no_tls_session(world: World) -> None:  # noqa: F811
    """RFC 8460 §3 loop prevention: a queued TLS report (``tls_report``) is delivered like
    any mail, but its session leaves no TLS result that a later report would carry."""
    q1 = world.enqueue("x@remote.test", tls_report=True, tls_required_no=True)
    world.start()
    world.clock.advance(0)
    [a1] = world.attempts(q1)
    assert a1.result == "delivered" and a1.tls_success is None
    now = world.clock.seconds()
    assert world.h.run(world.h.store.transact(
        lambda c: qs.tls_attempts_between(c, now - 60, now + 60))) == []


def test_tls_and_requiretls_metrics_after_deliveries(data_dir: Path) -> None:
    """A REQUIRETLS message to an MX without STARTTLS: /metrics shows the session's TLS
    result by policy and result type, and the REQUIRETLS failure with that reason."""
    from mxd.metrics import PrometheusMetrics

    w = World(data_dir)
    try:
        prom = PrometheusMetrics()
        w.runner.metrics = prom
        w.runner.tls_policy_factory = lambda *a, **k: succeed(TLSPolicy(mode=TLSMode.NONE))
        w.enqueue("x@remote.test", requiretls=True)
        w.start()
        w.clock.advance(0)
        text = prom.render()[0].decode()
        assert 'mxd_requiretls_failures_total{reason="starttls-not-supported"} 1.0' in text
        assert ('mxd_tls_results_total{policy_type="no-policy-found",'
                'result="starttls-not-supported"} 1.0') in text
    finally:
        w.h.close()


@pytest.mark.parametrize("fields,requiretls,expected", [
    ({"tls_success": True, "tls_policy_type": "tlsa", "result": "delivered"}, False,
     [("tls_results", {"policy_type": "tlsa", "result": "success"})]),
    ({"tls_success": False, "tls_policy_type": "tlsa", "tls_result_type": "tlsa-invalid",
      "tls_overridden": True, "result": "delivered"}, True,
     [("tls_results", {"policy_type": "tlsa", "result": "tlsa-invalid"}),
      ("tls_required_no_overrides", {"policy_type": "tlsa"})]),
    ({"tls_success": False, "tls_policy_type": "sts", "tls_result_type": "sts-webpki-invalid",
      "result": "refused"}, True,
     [("tls_results", {"policy_type": "sts", "result": "sts-webpki-invalid"}),
      ("requiretls_failures", {"reason": "sts-webpki-invalid"})]),
    ({"tls_session": False, "tls_success": True, "result": "failed", "enhanced": "5.7.30"},
     True, [("requiretls_failures", {"reason": "requiretls-not-supported"})]),
    ({"result": "error", "host": "mx"}, True, []),
])
def test_attempt_metrics_table(fields: dict[str, Any], requiretls: bool,
                               expected: list[Any]) -> None:
    from mxd.queue.records import attempt_metrics

    rec = qs.AttemptRecord(**{"queue_id": "q", "domain": "d.test", "recipients": ("a@d.test",),
                              "at": 1.0, "result": "failed", **fields})
    msg = qs.QueuedMessage(1, "q", "s@x", "b", 1, "7BIT", False, requiretls, False, None, None,
                           None, False, 0.0)
    assert attempt_metrics(msg, rec) == expected


def test_support_records_per_sending_account(world: World) -> None:  # noqa: F811
    """Each sending account keeps its own STARTTLS/REQUIRETLS record per recipient domain;
    the global table still has the newest; an account that sent nothing there has none."""
    world.enqueue("x@remote.test", sender_account="alice")
    world.start()
    world.clock.advance(0)
    [mine] = world.h.run(world.queue.tls_domains(account="alice"))
    assert (mine.domain, mine.mx_host, mine.starttls, mine.requiretls) == (
        "remote.test", "mx.remote.test", False, False)
    assert world.h.run(world.queue.tls_domains(account="bob")) == []
    assert world.h.run(world.queue.tls_domains("remote.test", account="alice")) == [mine]
    assert [d.domain for d in world.h.run(world.queue.tls_domains())] == ["remote.test"]
