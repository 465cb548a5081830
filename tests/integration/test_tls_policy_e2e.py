"""Verified outbound TLS end to end through the queue runner: one DNSSEC lab, an
MTA-STS policy host, aiosmtpd peers with STARTTLS on loopback addresses (one advertising
REQUIRETLS), and local delivery of DSNs into the sender's INBOX.

One delivery run (module fixture) covers every case; each test asserts one of them:
MTA-STS enforce skips a non-matching MX (RFC 8461 §4.1), a bogus TLSA answer defers (RFC
7672 §2.2), REQUIRETLS (RFC 8689 §4.1) reaches only a DANE-verified host that offers it and
otherwise bounces with 5.7.30, ``TLS-Required: No`` (RFC 8689 §5) delivers despite a DANE
mismatch; the attempts log feeds a TLS report (RFC 8460) and the per-domain records."""

from __future__ import annotations

import datetime
import email
import email.policy
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from twisted.internet import ssl as tssl
from twisted.internet.task import deferLater
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web import server

from mxd import dane
from mxd.dns.resolver import Resolver
from mxd.dns.testing import run_with_reactor
from mxd.mtasts.cache import JSONFilePolicyCache
from mxd.mtasts.fetch import FetchSettings, PolicyFetcher
from mxd.mtasts.resolve import STSResolver
from mxd.queue import tlspolicy
from mxd.queue.local import StoreLocalDelivery
from mxd.queue.queue import Queue
from mxd.queue.runner import QueueRunner, QueueSettings
from mxd.smtp.client import ClientSettings
from mxd.store import queuedb as qs
from mxd.store.interfaces import OutboundMessage, OutboundRecipient
from mxd.store.queuedb import QUEUE_MIGRATIONS
from mxd.store.sqlite import SQLiteStore
from mxd.store.sqlitequeue import SQLiteQueueStore
from mxd.tlsrpt.report import aggregate
from tests.integration.dnslab import DNSLab, ZoneSpec
from tests.integration.test_mtasts_delivery import PolicySite
from tests.integration.tools import free_port, require_module
from tests.mtasts.test_fetch import ServerTLS

pytestmark = pytest.mark.integration

SENDER = "a@example.org"
# recipient -> (loopback address of its MX peer, whether the peer offers REQUIRETLS)
PEERS = {
    "mx1.sts.test": ("127.0.0.2", False),
    "mx2.sts.test": ("127.0.0.3", False),
    "mx.bogus.test": ("127.0.0.4", False),
    "mx.dane.test": ("127.0.0.5", True),
    "mx.norequire.test": ("127.0.0.6", False),
    "mx.unsigned.test": ("127.0.0.7", True),
    "mx.mismatch.test": ("127.0.0.8", False),
}
STS_POLICY = b"version: STSv1\r\nmode: enforce\r\nmx: mx2.sts.test\r\nmax_age: 86400\r\n"


class Peer:
    """aiosmtpd with STARTTLS on ``host``:``port``; keeps each MAIL FROM line as sent (the
    transcript) and, when ``requiretls``, offers REQUIRETLS after STARTTLS (RFC 8689 §3)."""

    def __init__(self, host: str, port: int, leaf: trustme.LeafCert, requiretls: bool) -> None:
        require_module("aiosmtpd")
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import SMTP

        self.messages: list[dict[str, Any]] = []
        self.mail_lines: list[str] = []
        self.lock = threading.Lock()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(ctx)
        peer = self

        class Handler:
            async def handle_EHLO(self, server: Any, session: Any, envelope: Any,
                                  hostname: str, responses: list[str]) -> list[str]:
                session.host_name = hostname
                if requiretls and session.ssl is not None:
                    return [*responses[:-1], "250-REQUIRETLS", responses[-1]]
                return responses

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                with peer.lock:
                    peer.messages.append({
                        "rcpts": list(envelope.rcpt_tos), "tls": session.ssl is not None,
                        "requiretls": getattr(envelope, "requiretls", False)})
                return "250 2.0.0 OK"

        class TranscriptSMTP(SMTP):
            async def smtp_MAIL(self, arg: str) -> None:
                with peer.lock:
                    peer.mail_lines.append(f"MAIL {arg}")
                words = (arg or "").split()
                wants = any(w.upper() == "REQUIRETLS" for w in words)
                if wants and requiretls:
                    arg = " ".join(w for w in words if w.upper() != "REQUIRETLS")
                await super().smtp_MAIL(arg)
                if self.envelope is not None and self.envelope.mail_from is not None:
                    self.envelope.requiretls = wants  # type: ignore[attr-defined]

        class PeerController(Controller):
            def factory(self) -> SMTP:
                return TranscriptSMTP(self.handler, tls_context=ctx, require_starttls=False)

        self.controller = PeerController(Handler(), hostname=host, port=port)


def _zones(leaf: trustme.LeafCert) -> dict[str, ZoneSpec]:
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    good = dane.tlsa_text(dane.tlsa_for_certificate(cert))
    wrong = "3 1 1 " + "00" * 32

    def mx(ip: str, tlsa: str | None = None) -> list[str]:
        return ["@ MX 10 mx", f"mx A {ip}", *([f"_25._tcp.mx TLSA {tlsa}"] if tlsa else [])]

    return {
        "sts.test": ZoneSpec(records=[
            "@ MX 10 mx1", "@ MX 20 mx2", "mx1 A 127.0.0.2", "mx2 A 127.0.0.3",
            "mta-sts A 127.0.0.1", '_mta-sts TXT "v=STSv1; id=20261128"',
            '_smtp._tls TXT "v=TLSRPTv1; rua=mailto:tls-reports@sts.test"'], signed=False),
        "bogus.test": ZoneSpec(records=["@ MX 10 mx", "mx A 127.0.0.4"],
                               bogus=[f"_25._tcp.mx TLSA {good}"]),
        "dane.test": ZoneSpec(records=mx("127.0.0.5", good)),
        "norequire.test": ZoneSpec(records=mx("127.0.0.6", good)),
        "unsigned.test": ZoneSpec(records=mx("127.0.0.7"), signed=False),
        "mismatch.test": ZoneSpec(records=[
            *mx("127.0.0.8", wrong),
            '_smtp._tls.mx TXT "v=TLSRPTv1; rua=mailto:host-reports@mismatch.test"']),
    }


# (name, recipient, OutboundMessage flags)
MESSAGES: list[tuple[str, str, dict[str, Any]]] = [
    ("sts", "b@sts.test", {}),
    ("bogus", "b@bogus.test", {}),
    ("dane_requiretls", "b@dane.test", {"requiretls": True}),
    ("norequire_requiretls", "b@norequire.test", {"requiretls": True}),
    ("unsigned_requiretls", "b@unsigned.test", {"requiretls": True}),
    ("mismatch_trn", "b@mismatch.test", {"tls_required_no": True}),
    ("mismatch", "c@mismatch.test", {}),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Deliver MESSAGES once through the queue runner; everything the tests look at."""
    import twisted.protocols.tls as tls

    ca = trustme.CA()
    leaf = ca.issue_cert(*PEERS, "mta-sts.sts.test")
    root = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    port = free_port()
    peers = {name: Peer(ip, port, leaf, rt) for name, (ip, rt) in PEERS.items()}
    tmp = tmp_path_factory.mktemp("tls-e2e")
    lab = DNSLab(tmp / "dns")
    started: list[Peer] = []
    try:
        lab.start(_zones(leaf))
        for p in peers.values():
            p.controller.start()
            started.append(p)
        with pytest.MonkeyPatch.context() as mp:
            out = run_with_reactor(
                lambda reactor: _deliver(reactor, mp, tls, lab, ca, leaf, root, port,
                                         tmp / "data", peers), timeout=90)
        out["peers"] = peers
        out["lab"] = lab
        yield out
    finally:
        for p in started:
            p.controller.stop()
        lab.stop()


async def _deliver(reactor: Any, mp: pytest.MonkeyPatch, tls: Any, lab: DNSLab,
                   ca: trustme.CA, leaf: trustme.LeafCert, root: x509.Certificate, port: int,
                   data_dir: Path, peers: dict[str, Peer]) -> dict[str, Any]:
    mp.setattr(tls, "_get_default_clock", lambda: reactor)
    site = PolicySite(STS_POLICY)
    https_port = free_port()
    listening = reactor.listenTCP(https_port, TLSMemoryBIOFactory(
        ServerTLS(leaf), False, server.Site(site, reactor=reactor), clock=reactor),
        interface="127.0.0.1")
    data_dir.mkdir(parents=True, exist_ok=True)
    store = SQLiteStore(data_dir, reactor)
    store.register_schema("queue", QUEUE_MIGRATIONS)
    await store.open()
    out: dict[str, Any] = {}
    try:
        account = await store.add_account("a", "{}", [SENDER])
        resolver = Resolver(reactor, lab.resolver_settings())
        fetcher = PolicyFetcher(reactor, resolver, FetchSettings(
            timeout=5, port=https_port,
            trust_root=tssl.Certificate.loadPEM(ca.cert_pem.bytes())))
        sts = STSResolver(resolver, fetcher, JSONFilePolicyCache(data_dir / "sts.json"), reactor)
        queue = Queue(SQLiteQueueStore(store), reactor)
        runner = QueueRunner(
            queue, resolver, reactor,
            QueueSettings(port=port, connect_timeout=5, stop_timeout=3, client=ClientSettings(
                greeting_timeout=15, ehlo_timeout=15, mail_timeout=15, rcpt_timeout=15,
                data_init_timeout=15, data_block_timeout=15, data_end_timeout=15)),
            local_delivery=StoreLocalDelivery(store, ["example.org"]),
            hostname="mx.example.org",
            tls_policy_factory=tlspolicy.make_policy_factory(resolver, sts, reactor,
                                                             roots=[root]))
        start = reactor.seconds()
        runner.startService()
        ids: dict[str, str] = {}
        for name, rcpt, flags in MESSAGES:
            w = store.new_blob()
            w.write(f"From: {SENDER}\r\nTo: {rcpt}\r\nSubject: {name}\r\n\r\nsecret body\r\n"
                    .encode())
            ids[name] = await queue.enqueue(w, OutboundMessage(
                SENDER, (OutboundRecipient(rcpt),), **flags))

        async def settled() -> bool:
            msgs = await queue.list()
            left = {m.queue_id for m in msgs if not m.is_dsn}
            # every message either gone or tried once, and no DSN still queued
            tried = all(r.attempts >= 1 for m in msgs for r in m.recipients)
            return tried and not any(m.is_dsn for m in msgs) and left <= {
                ids["bogus"], ids["mismatch"]}

        deadline = reactor.seconds() + 30
        done = await settled()
        while not done and reactor.seconds() < deadline:
            await deferLater(reactor, 0.05, lambda: None)
            done = await settled()
        out["settled_after"] = reactor.seconds() - start if done else None
        await runner.stopService()
        end = reactor.seconds() + 1
        inbox = await store.get_mailbox(account.id, "INBOX")
        dsns = []
        for info in await store.list_messages(inbox.id):
            with store.open_blob(info.blob_id) as f:
                dsns.append(f.read())
        out.update(
            ids=ids, dsns=dsns, site_hits=site.hits,
            left={m.queue_id: m for m in await queue.list()},
            attempts={n: await store.transact(lambda c, q=q: qs.attempts_for(c, q))
                      for n, q in ids.items()},
            domains={d.domain: d for d in await queue.tls_domains()},
            tls_attempts=await store.transact(
                lambda c: qs.tls_attempts_between(c, start - 1, end)),
            start=start - 1, end=end)
    finally:
        await store.close()
        await listening.stopListening()
    return out


def _dsn_for(run: dict[str, Any], rcpt: str) -> dict[str, str]:
    for raw in run["dsns"]:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        part: Any = list(msg.iter_parts())[1]  # type: ignore[attr-defined]
        fields = [{k.lower(): str(v) for k, v in b.items()} for b in part.get_payload()]
        if rcpt in fields[1].get("final-recipient", ""):
            assert b"secret body" not in raw  # RFC 8689: the body of such a message stays in
            return fields[1]
    raise AssertionError(f"no DSN about {rcpt} among {len(run['dsns'])}")


def test_sts_enforce_skips_the_mx_not_in_the_policy(run: dict[str, Any]) -> None:
    """MTA-STS enforce listing only mx2: mx1 (preferred) is refused before connecting and
    recorded as an sts validation failure; mx2 gets the message over verified TLS."""
    assert run["settled_after"] is not None, "the deliveries did not finish within 30 s"
    peers = run["peers"]
    assert peers["mx1.sts.test"].messages == [] and peers["mx1.sts.test"].mail_lines == []
    assert peers["mx2.sts.test"].messages == [{"rcpts": ["b@sts.test"], "tls": True,
                                                "requiretls": False}]
    refused, delivered = run["attempts"]["sts"]
    assert (refused.result, refused.host, refused.tls_policy_type) == (
        "refused", "mx1.sts.test", "sts")
    assert refused.tls_result_type == "validation-failure" and refused.ip is None
    assert delivered.result == "delivered" and delivered.tls_verified
    assert "mx: mx2.sts.test" in delivered.tls_policy_strings
    assert run["ids"]["sts"] not in run["left"]


def test_bogus_tlsa_defers_and_delivers_nothing(run: dict[str, Any]) -> None:
    """A bogus (DNSSEC-invalid) TLSA answer for the only MX: nothing is sent to it, the
    message stays queued with a 4.7.5 temporary failure (RFC 7672 §2.2)."""
    assert run["peers"]["mx.bogus.test"].mail_lines == []
    m = run["left"][run["ids"]["bogus"]]
    r = m.recipients[0]
    assert r.attempts == 1 and r.last_code == 451 and r.last_enhanced == "4.7.5"
    [a] = run["attempts"]["bogus"]
    assert a.result == "refused" and a.tls_policy_type == "tlsa"
    assert a.tls_result_type == "dnssec-invalid"


def test_requiretls_to_dane_verified_host_offering_it_is_delivered(run: dict[str, Any]) -> None:
    """REQUIRETLS to a DANE-verified host that offers REQUIRETLS: delivered over TLS with
    REQUIRETLS in MAIL FROM (the peer's transcript)."""
    peer = run["peers"]["mx.dane.test"]
    assert [line.split()[-1].upper() for line in peer.mail_lines] == ["REQUIRETLS"]
    assert peer.messages == [{"rcpts": ["b@dane.test"], "tls": True, "requiretls": True}]
    [a] = run["attempts"]["dane_requiretls"]
    assert a.result == "delivered" and a.tls_verified and a.tls_policy_type == "tlsa"


def test_requiretls_to_host_without_requiretls_bounces_5_7_30(run: dict[str, Any]) -> None:
    """REQUIRETLS to a DANE-verified host that does not offer REQUIRETLS: no MAIL FROM is
    sent; the local sender gets a failure DSN with status 5.7.30, headers only."""
    assert run["peers"]["mx.norequire.test"].mail_lines == []
    dsn = _dsn_for(run, "b@norequire.test")
    assert dsn["action"] == "failed" and dsn["status"] == "5.7.30"
    assert run["ids"]["norequire_requiretls"] not in run["left"]


def test_requiretls_without_verified_tls_bounces_5_7_30(run: dict[str, Any]) -> None:
    """REQUIRETLS to a domain with neither DANE nor MTA-STS: the host is refused before
    connecting (even though it offers REQUIRETLS) and the DSN says 5.7.30."""
    assert run["peers"]["mx.unsigned.test"].mail_lines == []
    dsn = _dsn_for(run, "b@unsigned.test")
    assert dsn["action"] == "failed" and dsn["status"] == "5.7.30"
    [a] = run["attempts"]["unsigned_requiretls"]
    assert a.result == "refused" and a.enhanced == "5.7.30"


def test_tls_required_no_delivers_despite_dane_mismatch(run: dict[str, Any]) -> None:
    """TLS-Required: No with a DANE mismatch: delivered over TLS and the attempt records
    the overridden verification; the same host without the header gets nothing."""
    peer = run["peers"]["mx.mismatch.test"]
    assert peer.messages == [{"rcpts": ["b@mismatch.test"], "tls": True, "requiretls": False}]
    [a] = run["attempts"]["mismatch_trn"]
    assert a.result == "delivered" and a.tls_overridden and not a.tls_verified
    assert a.tls_result_type == "validation-failure" and a.tls_success is False
    m = run["left"][run["ids"]["mismatch"]]
    assert m.recipients[0].attempts == 1
    assert [x.tls_failure for x in run["attempts"]["mismatch"]] == ["validation-failure"]


def test_per_domain_tls_support_records(run: dict[str, Any]) -> None:
    """After the run the per-domain records say who offered STARTTLS and REQUIRETLS and
    whether TLS was verified (DANE or MTA-STS)."""
    d = run["domains"]
    facts = {k: (v.starttls, v.requiretls, v.verified) for k, v in d.items()}
    assert facts["dane.test"] == (True, True, True)
    assert facts["norequire.test"] == (True, False, True)
    assert facts["sts.test"] == (True, False, True)
    assert facts["mismatch.test"][2] is False and d["mismatch.test"].tls_used
    assert "bogus.test" not in d and "unsigned.test" not in d  # never connected


def test_attempts_aggregate_into_a_tls_report(run: dict[str, Any]) -> None:
    """The run's TLS sessions load as TLSAttempt values and aggregate into RFC 8460 JSON:
    the sts policy with one success and one failure, DANE policies per MX host."""
    start = datetime.datetime.fromtimestamp(run["start"], datetime.UTC)
    end = datetime.datetime.fromtimestamp(run["end"], datetime.UTC)
    report = json.loads(json.dumps(aggregate(
        run["tls_attempts"], organization_name="example.org",
        contact_info="tlsrpt@example.org", report_id="e2e", start=start, end=end)))
    pols = {(p["policy"]["policy-type"], p["policy"]["policy-domain"]): p
            for p in report["policies"]}
    sts = pols[("sts", "sts.test")]
    assert sts["summary"] == {"total-successful-session-count": 1,
                              "total-failure-session-count": 1}
    assert sts["policy"]["mx-host"] == ["mx2.sts.test"]
    assert sts["failure-details"][0]["receiving-mx-hostname"] == "mx1.sts.test"
    dane_p = pols[("tlsa", "mx.dane.test")]
    assert dane_p["summary"]["total-successful-session-count"] == 1
    assert dane_p["policy"]["policy-string"][0].startswith("3 1 1 ")
    mism = pols[("tlsa", "mx.mismatch.test")]
    assert mism["summary"]["total-failure-session-count"] == 2
    assert {d["result-type"] for d in mism["failure-details"]} == {"validation-failure"}
    assert all(d.get("sending-mta-ip") == "127.0.0.1" for d in mism["failure-details"])
    assert pols[("tlsa", "mx.bogus.test")]["failure-details"][0]["result-type"] == \
        "dnssec-invalid"


def test_next_day_reports_per_policy_domain_read_by_the_receiver(
        run: dict[str, Any], tmp_path: Path) -> None:
    """The day after the run, the TLS reporter looks up _smtp._tls through the lab and
    sends one report about sts.test (MTA-STS, to the domain's rua) and one about the MX host
    mx.mismatch.test (DANE, to the host's own rua); domains without a record or without a
    failure get none.  The receiving side reads both mails, stores them, and `mxd tlsrpt
    list` shows the counts and failure types."""
    import argparse

    import jsonschema
    from twisted.internet.defer import Deferred, succeed

    from mxd.tlsrpt import cli
    from mxd.tlsrpt.incoming import TLSReportStore, extract_reports
    from mxd.tlsrpt.send import SenderSettings, TLSReporter
    from tests.tlsrpt.schema import REPORT_SCHEMA
    from tests.tlsrpt.test_send import FakeQueue

    day_after = (int(run["start"]) // 86400 + 1) * 86400 + 60

    class NextDay:
        def __init__(self, reactor: Any) -> None:
            self.reactor = reactor

        def seconds(self) -> float:
            return day_after

        def callLater(self, *a: Any, **kw: Any) -> Any:
            return self.reactor.callLater(*a, **kw)

    queue = FakeQueue()

    async def report(reactor: Any) -> int:
        resolver = Resolver(reactor, run["lab"].resolver_settings())
        rep = TLSReporter(lambda s, e: succeed(run["tls_attempts"]), resolver, queue,
                          NextDay(reactor), SenderSettings(
                              organization_name="Example Org", submitter="mx.example.org",
                              from_addr="postmaster@example.org",
                              contact_info="mailto:postmaster@example.org"),
                          sign=None, post=None, state=tmp_path / "state")
        return int(await Deferred.fromCoroutine(rep.run_once()))

    assert run_with_reactor(report, timeout=30) == 2
    sent = {m.recipients[0].address: data for data, m in queue.queued}
    assert sorted(sent) == ["host-reports@mismatch.test", "tls-reports@sts.test"]
    receiver = TLSReportStore(tmp_path / "b" / "tlsrpt" / "incoming")
    for data in sent.values():
        [doc] = extract_reports(data)
        jsonschema.validate(json.loads(doc), REPORT_SCHEMA)
        receiver.ingest(data, float(day_after), "127.0.0.1", "postmaster@example.org")
    by_domain = {p["policy_domain"]: p for r in receiver.reports() for p in r["policies"]}
    assert set(by_domain) == {"sts.test", "mx.mismatch.test"}
    assert (by_domain["sts.test"]["successful"], by_domain["sts.test"]["failed"]) == (1, 1)
    assert by_domain["mx.mismatch.test"]["failure_types"] == {"validation-failure": 2}
    out: list[str] = []
    cfg = argparse.Namespace(data_dir=tmp_path / "b")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("builtins.print", lambda *a, **k: out.append(" ".join(map(str, a))))
        cli.run(argparse.Namespace(tlsrpt_func=cli._list, json=False), lambda a: cfg)
    text = "\n".join(out)
    assert "sts.test (sts): 1 successful, 1 failed [validation-failure 1]" in text
    assert "mx.mismatch.test (tlsa): 0 successful, 2 failed [validation-failure 2]" in text
