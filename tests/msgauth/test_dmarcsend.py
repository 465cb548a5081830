"""Outgoing DMARC aggregate reports (mxd.msgauth.dmarcsend): evaluations kept by the port-25
checks, the daily run after midnight UTC, RFC 7489 §7.1 destination verification, DKIM
signing, loop prevention; parsedmarc reads what is sent."""

from __future__ import annotations

import email
import email.policy
import gzip
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred, succeed

from mxd.dns.testing import FakeResolver
from mxd.msgauth.dkim import Result, verify_message
from mxd.msgauth.dkimkeys import DKIMKey, generate_key
from mxd.msgauth.dkimsign import sign_message
from mxd.msgauth.dmarcsend import DMARCReporter, EvaluationLog, ReporterSettings, mailto
from mxd.msgauth.inbound import InboundChecker, InboundSettings
from mxd.msgauth.reportstore import SentReportStore
from mxd.msgauth.signing import KeyRing
from tests.smtp.helpers import Session

DAY1 = datetime(2026, 12, 4, 10, 0, tzinfo=UTC).timestamp()


class FakeQueue:
    def __init__(self) -> None:
        self.queued: list[tuple[bytes, Any]] = []

    def enqueue_bytes(self, data: bytes, message: Any, is_dsn: bool = False) -> Deferred[str]:
        self.queued.append((data, message))
        return succeed(f"q{len(self.queued)}")


@pytest.fixture()
def keys(tmp_path: Path) -> dict[str, DKIMKey]:
    return {"b": generate_key(tmp_path / "k", "b.example", "s1", "ed25519"),
            "ours": generate_key(tmp_path / "k", "example.test", "r1", "ed25519")}


def _resolver(keys: dict[str, DKIMKey], rua: str = "mailto:dmarc@b.example") -> FakeResolver:
    f = FakeResolver()
    f.add("b.example", "TXT", [b"v=spf1 ip4:192.0.2.7 -all"])
    f.add("_dmarc.b.example", "TXT", [f"v=DMARC1; p=quarantine; rua={rua}".encode()])
    f.add(keys["b"].dns_name, "TXT", [keys["b"].txt.encode()])
    return f


def _receive(keys: dict[str, DKIMKey], resolver: FakeResolver, log: EvaluationLog,
             clock: task.Clock, messages: list[tuple[str, bytes]]) -> None:
    checker = InboundChecker(resolver, clock, InboundSettings(
        "mx.example.test", report_addresses=frozenset({"bob@example.test"})),
        reports=None, evaluations=log)
    for rcpt, msg in messages:
        s = Session(checker=checker)
        s.ehlo("mail.b.example")
        s.send(f"MAIL FROM:<a@b.example>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n")
        s.send(msg.decode() + ".\r\n")
        assert s.codes()[-1] == 250


def _msg(keys: dict[str, DKIMKey], subject: str = "hi", sign: bool = True) -> bytes:
    m = (f"From: <a@b.example>\r\nTo: <alice@example.test>\r\nSubject: {subject}\r\n"
         "Date: Fri, 04 Dec 2026 10:00:00 +0000\r\n\r\nhello\r\n").encode()
    return sign_message([keys["b"]], m, int(DAY1)) if sign else m


def _reporter(tmp_path: Path, keys: dict[str, DKIMKey], resolver: FakeResolver,
              clock: task.Clock) -> tuple[DMARCReporter, EvaluationLog, FakeQueue]:
    log = EvaluationLog(tmp_path / "evaluations")
    queue = FakeQueue()
    rep = DMARCReporter(log, resolver, queue, clock,
                        ReporterSettings("mx.example.test", "postmaster@example.test"),
                        sign=KeyRing({"example.test": [keys["ours"]]}).sign,
                        random=lambda: 0.25, sent_store=SentReportStore(tmp_path / "sent"))
    return rep, log, queue


def test_daily_report_after_midnight_signed_and_parsed_by_parsedmarc(
        tmp_path: Path, keys: dict[str, DKIMKey]) -> None:
    """Evaluations of one day become one report, queued after 00:00 UTC + jitter to the
    rua address, DKIM-signed; report mails themselves are never counted."""
    parsedmarc = pytest.importorskip("parsedmarc")
    clock = task.Clock()
    clock.advance(DAY1)
    resolver = _resolver(keys)
    rep, log, queue = _reporter(tmp_path, keys, resolver, clock)
    _receive(keys, resolver, log, clock, [
        ("alice@example.test", _msg(keys)),
        ("alice@example.test", _msg(keys)),
        ("alice@example.test", _msg(keys, sign=False).replace(b"a@b.example>", b"x@b.example>")),
        ("bob@example.test", _msg(keys)),  # to the report address: not counted
        ("alice@example.test", _msg(keys, "Report Domain: b.example Submitter: x")),
    ])
    rep.startService()
    midnight = datetime(2026, 12, 5, tzinfo=UTC).timestamp()
    clock.advance(midnight - clock.seconds() - 1)
    assert queue.queued == []  # not before midnight
    clock.advance(1 + 0.25 * 3600)  # the jitter (random 0.25 of an hour)
    assert len(queue.queued) == 1
    data, envelope = queue.queued[0]
    assert [r.address for r in envelope.recipients] == ["dmarc@b.example"]
    assert envelope.mail_from == "postmaster@example.test"
    keys_dns = FakeResolver()
    keys_dns.add(keys["ours"].dns_name, "TXT", [keys["ours"].txt.encode()])
    [sig] = verify_message(keys_dns, data, clock.seconds()).result
    assert sig.result is Result.PASS and sig.domain == "example.test"
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg["Subject"].startswith("Report Domain: b.example Submitter: mx.example.test")
    (att,) = [p for p in msg.walk() if p.get_content_type() == "application/gzip"]
    report = parsedmarc.parse_aggregate_report_xml(gzip.decompress(att.get_payload(decode=True)),
                                                   offline=True, always_use_local_files=True)
    assert report["policy_published"]["domain"] == "b.example"
    counts = {(r["policy_evaluated"]["dkim"], r["count"]) for r in report["records"]}
    assert counts == {("pass", 2), ("fail", 1)}  # the report mails are not in it
    assert not list((tmp_path / "evaluations").glob("*.jsonl"))  # the day is done
    clock.advance(86400)
    assert len(queue.queued) == 1  # nothing new to report
    rep.stopService()


@pytest.mark.parametrize(("authorised", "sent"), [(False, 0), (True, 1)])
def test_external_destination_needs_authorisation(tmp_path: Path, keys: dict[str, DKIMKey],
                                                  authorised: bool, sent: int) -> None:
    """RFC 7489 §7.1: a rua in another organisation gets reports only if it publishes
    b.example._report._dmarc.its-domain with v=DMARC1."""
    clock = task.Clock()
    clock.advance(DAY1)
    resolver = _resolver(keys, rua="mailto:agg@reports.test!10m")
    if authorised:
        resolver.add("b.example._report._dmarc.reports.test", "TXT", [b"v=DMARC1"])
    rep, log, queue = _reporter(tmp_path, keys, resolver, clock)
    _receive(keys, resolver, log, clock, [("alice@example.test", _msg(keys))])
    clock.advance(86400)
    assert Deferred.fromCoroutine(rep.run_once()).result == sent
    assert len(queue.queued) == sent
    # Each report sent is recorded for the admin pages (what, to whom, which queue id).
    recorded = rep.sent_store.reports()
    assert len(recorded) == sent
    if sent:
        (r,) = recorded
        assert (r["domain"], r["to"], r["messages"], r["records"]) == (
            "b.example", "agg@reports.test", 1, 1)
        assert r["report_id"].endswith(".b.example@mx.example.test") and r["queue_id"]


def test_mailto_uris() -> None:
    """rua URIs: mailto with an optional size limit (RFC 7489 §6.2)."""
    assert mailto("mailto:a@b.example") == ("a@b.example", None)
    assert mailto("mailto:a@b.example!10m") == ("a@b.example", 10 << 20)
    assert mailto("https://b.example/") is None
