"""Outgoing SMTP TLS reports (mxd.tlsrpt.send): one report per policy domain and kind, the
daily run after 00:00 UTC, the §5.3 mail read with the stdlib email parser, JSON checked
against a schema written from RFC 8460 §4.4, HTTPS retries, loop prevention."""

from __future__ import annotations

import email
import email.policy
import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred, fail, succeed

from mxd.dns.testing import FakeResolver
from mxd.tlsrpt.results import FailureDetail, PolicyInfo, PolicyType, ResultType, TLSAttempt
from mxd.tlsrpt.send import SenderSettings, SentTLSReports, TLSReporter, daily_reports, report_mail
from tests.tlsrpt.schema import REPORT_SCHEMA

DAY1 = datetime(2026, 12, 4, tzinfo=UTC).timestamp()
MIDNIGHT = DAY1 + 86400

STS = PolicyInfo(PolicyType.STS, "b.example", ("version: STSv1", "mode: enforce",
                                               "mx: mx1.b.example", "max_age: 86400"),
                 ("mx1.b.example",))
TLSA = PolicyInfo(PolicyType.TLSA, "mx2.b.example", ("3 1 1 " + "ab" * 32,), ("mx2.b.example",))
NONE_C = PolicyInfo.none_found("c.example")


def _fail(policy: PolicyInfo, rtype: ResultType, t: float) -> TLSAttempt:
    return TLSAttempt(policy, False, t, FailureDetail(rtype, "127.0.0.1", policy.domain,
                                                      None, "127.0.0.2", None, "detail"))


ATTEMPTS = [
    TLSAttempt(STS, True, DAY1 + 10), TLSAttempt(STS, True, DAY1 + 20),
    _fail(TLSA, ResultType.VALIDATION_FAILURE, DAY1 + 30),
    _fail(TLSA, ResultType.VALIDATION_FAILURE, DAY1 + 40),
    TLSAttempt(NONE_C, True, DAY1 + 50),  # success only: no report
    _fail(STS, ResultType.CERTIFICATE_EXPIRED, MIDNIGHT + 5),  # the next day
]

SETTINGS = SenderSettings(organization_name="Example A", submitter="mx.a.example",
                          from_addr="postmaster@a.example",
                          contact_info="mailto:postmaster@a.example", https_retries=(60, 300))


def test_reports_per_policy_domain_and_kind_failure_only() -> None:
    """DANE results go to the MX host, MTA-STS to the recipient domain, separately; days
    without failure are skipped unless success reports are on."""
    reports = daily_reports(ATTEMPTS, DAY1, organization_name="Example A",
                            contact_info="mailto:x@a.example", submitter="mx.a.example")
    assert [(r.policy_domain, r.kind, r.failures) for r in reports] == [
        ("mx2.b.example", "tlsa", 2)]
    everything = daily_reports(ATTEMPTS, DAY1, organization_name="Example A",
                               contact_info="mailto:x@a.example", submitter="mx.a.example",
                               send_success=True)
    assert [(r.policy_domain, r.kind) for r in everything] == [
        ("b.example", "sts"), ("c.example", "sts"), ("mx2.b.example", "tlsa")]
    for r in everything:
        jsonschema.validate(r.report, REPORT_SCHEMA)
    [tlsa] = [r for r in everything if r.kind == "tlsa"]
    [policy] = tlsa.report["policies"]
    assert policy["summary"] == {"total-successful-session-count": 0,
                                 "total-failure-session-count": 2}
    assert policy["failure-details"][0]["result-type"] == "validation-failure"
    assert tlsa.report["date-range"] == {"start-datetime": "2026-12-04T00:00:00Z",
                                         "end-datetime": "2026-12-05T00:00:00Z"}


def test_same_name_for_domain_and_mx_still_two_reports() -> None:
    """A domain that is its own MX gets its DANE and its MTA-STS results apart."""
    own_sts = PolicyInfo(PolicyType.STS, "d.example", (), ("d.example",))
    own_tlsa = PolicyInfo(PolicyType.TLSA, "d.example", (), ("d.example",))
    reports = daily_reports([_fail(own_sts, ResultType.STS_WEBPKI_INVALID, DAY1),
                             _fail(own_tlsa, ResultType.TLSA_INVALID, DAY1)], DAY1,
                            organization_name="o", contact_info="c", submitter="s")
    assert [(r.policy_domain, r.kind) for r in reports] == [("d.example", "sts"),
                                                           ("d.example", "tlsa")]
    assert len({r.report_id for r in reports}) == 2


def test_report_mail_read_by_the_stdlib_parser() -> None:
    """RFC 8460 §5.3: multipart/report; report-type=tlsrpt, the gzipped JSON as
    application/tlsrpt+gzip with the §5.1 file name, TLS-Report-Domain/-Submitter, the
    subject, and TLS-Required: No (RFC 8689 §5)."""
    [r] = daily_reports(ATTEMPTS, DAY1, organization_name="Example A",
                        contact_info="mailto:x@a.example", submitter="mx.a.example")
    raw = report_mail(r, from_addr="postmaster@a.example", to_addr="tls@b.example",
                      submitter="mx.a.example", now=MIDNIGHT + 60, message_id="1@a.example")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "tlsrpt"
    assert msg["TLS-Report-Domain"] == "mx2.b.example"
    assert msg["TLS-Report-Submitter"] == "mx.a.example"
    assert msg["TLS-Required"] == "No"
    assert msg["Subject"] == ("Report Domain: mx2.b.example Submitter: mx.a.example "
                              "Report-ID: <20261204.tlsa.mx2.b.example@mx.a.example>")
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "application/tlsrpt+gzip"]
    att = parts[1]
    start, end = int(DAY1), int(MIDNIGHT)
    assert att.get_filename() == f"mx.a.example!mx2.b.example!{start}!{end}.json.gz"
    doc = json.loads(gzip.decompress(att.get_content()))
    jsonschema.validate(doc, REPORT_SCHEMA)
    assert doc["policies"][0]["policy"]["policy-domain"] == "mx2.b.example"


class FakeQueue:
    def __init__(self) -> None:
        self.queued: list[tuple[bytes, Any]] = []

    def enqueue_bytes(self, data: bytes, message: Any, is_dsn: bool = False) -> Deferred[str]:
        self.queued.append((data, message))
        return succeed(f"q{len(self.queued)}")


def _resolver() -> FakeResolver:
    f = FakeResolver()
    f.add("_smtp._tls.b.example", "TXT", [b"v=TLSRPTv1; rua=mailto:tls@b.example"])
    f.add("_smtp._tls.mx2.b.example", "TXT",
          [b"v=TLSRPTv1; rua=mailto:host-tls@b.example,https://reports.b.example/tlsrpt"])
    f.add("_smtp._tls.c.example", "TXT", [b"v=TLSRPTv1; junk"])  # invalid: not used
    return f


def _reporter(tmp_path: Path, clock: task.Clock, post: Any, settings: SenderSettings = SETTINGS
              ) -> tuple[TLSReporter, FakeQueue]:
    queue = FakeQueue()

    def attempts(start: float, end: float) -> Deferred[list[TLSAttempt]]:
        return succeed([a for a in ATTEMPTS if start <= a.time < end])

    rep = TLSReporter(attempts, _resolver(), queue, clock, settings, sign=None, post=post,
                      state=tmp_path / "state", random=lambda: 0.5,
                      sent_store=SentTLSReports(tmp_path / "sent"))
    return rep, queue


def test_daily_run_after_midnight_with_jitter_once(tmp_path: Path) -> None:
    """Nothing before 00:00 UTC + jitter; then the previous day's report goes to every rua
    of the MX host's own _smtp._tls record (mail and https), once even across restarts."""
    clock = task.Clock()
    clock.advance(DAY1 + 3600)
    posts: list[tuple[str, bytes]] = []
    rep, queue = _reporter(tmp_path, clock, lambda u, b: (posts.append((u, b)), succeed(200))[1])
    rep.startService()
    clock.advance(MIDNIGHT - clock.seconds() + 0.5 * 3600 - 1)
    assert queue.queued == [] and posts == []
    clock.advance(1)
    [(data, envelope)] = queue.queued
    assert [r.address for r in envelope.recipients] == ["host-tls@b.example"]
    assert envelope.tls_required_no and envelope.tls_report
    assert envelope.mail_from == "postmaster@a.example"
    assert b"\r\nTLS-Report-Domain: mx2.b.example\r\n" in data
    [(url, body)] = posts
    assert url == "https://reports.b.example/tlsrpt"
    jsonschema.validate(json.loads(gzip.decompress(body)), REPORT_SCHEMA)
    rep.stopService()
    again, queue2 = _reporter(tmp_path, clock, lambda u, b: succeed(200))
    assert again.run_once is not None
    d = Deferred.fromCoroutine(again.run_once())
    assert d.result == 0 and queue2.queued == []


def test_https_retries_on_500_and_network_errors_then_gives_up(tmp_path: Path) -> None:
    """5xx and connection errors are retried after the configured delays; 4xx is not."""
    clock = task.Clock()
    clock.advance(MIDNIGHT + 10)
    calls: list[float] = []

    def post(url: str, body: bytes) -> Deferred[int]:
        calls.append(clock.seconds())
        return fail(ConnectionRefusedError()) if len(calls) == 2 else succeed(500)

    rep, _ = _reporter(tmp_path, clock, post)
    d = Deferred.fromCoroutine(rep.run_once())
    assert d.result == 2
    [pending] = rep.pending
    clock.advance(60)
    clock.advance(300)
    assert [c - calls[0] for c in calls] == [0, 60, 360]
    assert pending.called and pending.result is False
    # Recorded for the admin pages: the mail once queued, the POST once it gave up.
    assert rep.sent_store is not None
    sent = {r["method"]: r for r in rep.sent_store.reports()}
    assert sent["mailto"]["result"] == "queued" and sent["mailto"]["queue_id"]
    assert sent["mailto"]["to"] == "host-tls@b.example"
    assert sent["https"]["result"] == "failed"
    assert sent["https"]["to"] == "https://reports.b.example/tlsrpt"
    assert sent["https"]["policy_domain"] == "mx2.b.example" and sent["https"]["kind"] == "tlsa"

    rep2, _ = _reporter(tmp_path / "x", clock, lambda u, b: (calls.append(0), succeed(403))[1])
    calls.clear()
    Deferred.fromCoroutine(rep2.run_once())
    clock.advance(10_000)
    assert calls == [0]


def test_https_success_after_retry(tmp_path: Path) -> None:
    clock = task.Clock()
    clock.advance(MIDNIGHT + 10)
    answers = [503, 200]
    rep, _ = _reporter(tmp_path, clock, lambda u, b: succeed(answers.pop(0)))
    Deferred.fromCoroutine(rep.run_once())
    [pending] = rep.pending
    clock.advance(60)
    assert pending.result is True and answers == []
    assert rep.sent_store is not None
    assert {r["method"]: r["result"] for r in rep.sent_store.reports()} == {
        "mailto": "queued", "https": "delivered"}


@pytest.mark.parametrize("records", [[], [b"v=TLSRPTv1; rua=ftp://x"], [b"v=TLSRPTv1;"]])
def test_no_usable_record_sends_nothing(tmp_path: Path, records: list[bytes]) -> None:
    clock = task.Clock()
    clock.advance(MIDNIGHT + 10)
    rep, queue = _reporter(tmp_path, clock, lambda u, b: succeed(200))
    rep.resolver = FakeResolver()
    if records:
        rep.resolver.add("_smtp._tls.mx2.b.example", "TXT", records)
    d = Deferred.fromCoroutine(rep.run_once())
    assert d.result == 0 and queue.queued == []


def test_reports_sent_and_failed_are_counted_on_metrics(tmp_path: Path) -> None:
    """/metrics counts report deliveries by method: mail queued, HTTPS taken or given up."""
    from mxd.metrics import PrometheusMetrics

    clock = task.Clock()
    clock.advance(MIDNIGHT + 10)
    prom = PrometheusMetrics()
    rep, _ = _reporter(tmp_path, clock, lambda u, b: succeed(404))
    rep.metrics = prom
    Deferred.fromCoroutine(rep.run_once())
    text = prom.render()[0].decode()
    assert 'mxd_tlsrpt_reports_sent_total{method="mailto"} 1.0' in text
    assert 'mxd_tlsrpt_reports_failed_total{method="https",reason="http_404"} 1.0' in text


def test_report_day_sends_a_chosen_day_and_remembers_only_finished_days(tmp_path: Path) -> None:
    """``report_day`` (``mxd tlsrpt send --day``) reports the day asked for now; a finished
    day is then not sent again by the daily run, the day still running is."""
    clock = task.Clock()
    clock.advance(DAY1 + 7200)  # during DAY1: its report is partial
    rep, queue = _reporter(tmp_path, clock, lambda u, b: succeed(200))
    d = Deferred.fromCoroutine(rep.report_day(DAY1 + 5))  # any time of the day names it
    assert d.result == (1, 2) and len(queue.queued) == 1
    assert not (tmp_path / "state").exists()
    clock.advance(MIDNIGHT + 10 - clock.seconds())
    assert Deferred.fromCoroutine(rep.run_once()).result == 2  # the full day still goes out
    assert len(queue.queued) == 2

    clock2 = task.Clock()
    clock2.advance(MIDNIGHT + 3600)
    rep2, queue2 = _reporter(tmp_path / "y", clock2, lambda u, b: succeed(200))
    assert Deferred.fromCoroutine(rep2.report_day(DAY1)).result == (1, 2)
    assert Deferred.fromCoroutine(rep2.run_once()).result == 0  # not twice
    assert len(queue2.queued) == 1
    empty = Deferred.fromCoroutine(rep2.report_day(DAY1 - 86400))
    assert empty.result == (0, 0)  # a day without results: nothing to report


def test_report_mail_dkim_signature_covers_the_report_fields(tmp_path: Path) -> None:
    """RFC 8460 §5.3: the DKIM signature of a report mail covers TLS-Report-Domain and
    TLS-Report-Submitter (checked with dkimpy's verifier, which also fails once either is
    changed); the signer's default header set, used by everything else, does not list them."""
    import dkim as dkimpy

    from mxd.msgauth.dkimkeys import generate_key
    from mxd.msgauth.signing import KeyRing
    from mxd.tlsrpt.send import SIGNED_HEADERS

    key = generate_key(tmp_path / "dkim", "a.example", "s1", "rsa")
    ring = KeyRing({"a.example": [key]})
    clock = task.Clock()
    clock.advance(MIDNIGHT + 10)
    rep, queue = _reporter(tmp_path, clock, None)
    rep.sign = lambda m, now: ring.sign(m, now, extra_headers=SIGNED_HEADERS)
    Deferred.fromCoroutine(rep.run_once())
    [(data, _)] = queue.queued

    def dns(name: bytes, timeout: int = 5) -> bytes:
        return key.txt.encode()

    assert dkimpy.verify(data, dnsfunc=dns)
    msg = email.message_from_bytes(data, policy=email.policy.default)
    tags = dict(t.strip().split("=", 1) for t in
                "".join(str(msg["DKIM-Signature"]).split()).split(";") if "=" in t)
    signed = tags["h"].lower().split(":")
    assert "tls-report-domain" in signed and "tls-report-submitter" in signed
    for field, value in ((b"TLS-Report-Domain: mx2.b.example", b"TLS-Report-Domain: evil.example"),
                         (b"TLS-Report-Submitter: mx.a.example",
                          b"TLS-Report-Submitter: evil.example")):
        assert field in data
        assert not dkimpy.verify(data.replace(field, value), dnsfunc=dns)

    from mxd.msgauth.dkimsign import header_list
    from mxd.msgauth.headers import split_fields

    header = data.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    default = header_list(split_fields(header))
    assert "from" in default and not set(SIGNED_HEADERS) & set(default)


def test_daily_run_skipped_when_another_node_took_the_day(tmp_path: Path) -> None:
    """With several nodes on one database (a queue store that hands out report days), a
    node that does not get the day sends nothing and does not ask again."""
    clock = task.Clock()
    clock.advance(MIDNIGHT + 10)
    asked: list[tuple[str, float]] = []

    class Store:
        def claim_report_day(self, kind: str, day: float) -> Deferred[bool]:
            asked.append((kind, day))
            return succeed(False)

    rep, queue = _reporter(tmp_path, clock, lambda u, b: succeed(200))
    queue.store = Store()  # type: ignore[attr-defined]
    d = Deferred.fromCoroutine(rep.run_once())
    assert d.result == 0 and queue.queued == []
    assert asked == [("tlsrpt", DAY1)]
    d = Deferred.fromCoroutine(rep.run_once())
    assert d.result == 0 and len(asked) == 1
