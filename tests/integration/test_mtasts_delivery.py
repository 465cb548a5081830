"""MTA-STS end to end: policy discovery through the DNS lab, the HTTPS policy host on
loopback, the persistent cache, and deliveries by the queue runner (RFC 8461 §3-5)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from twisted.internet import ssl
from twisted.internet.task import deferLater
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web import resource, server

from mxd.dns.resolver import Resolver
from mxd.dns.testing import run_with_reactor
from mxd.mtasts.cache import JSONFilePolicyCache
from mxd.mtasts.fetch import FetchSettings, PolicyFetcher
from mxd.mtasts.resolve import STSResolver
from mxd.queue import tlspolicy
from mxd.queue.queue import Queue
from mxd.queue.runner import QueueRunner, QueueSettings
from mxd.queue.tlspolicy import HostRefusal, HostTLSPolicy, PolicyMode
from mxd.store import queuedb as qs
from mxd.store.interfaces import OutboundMessage, OutboundRecipient
from mxd.store.queuedb import QUEUE_MIGRATIONS
from mxd.store.sqlite import SQLiteStore
from mxd.store.sqlitequeue import SQLiteQueueStore
from mxd.tlsrpt.results import PolicyType, ResultType
from tests.integration.dnslab import ZoneSpec, dns_lab_factory  # noqa: F401
from tests.integration.test_dane_delivery import Sink
from tests.integration.tools import free_port
from tests.mtasts.test_fetch import ServerTLS

pytestmark = pytest.mark.integration

ZONE = ZoneSpec(records=[
    "@ MX 10 mx1", "@ MX 20 mx2", "mx1 A 127.0.0.2", "mx2 A 127.0.0.1", "mta-sts A 127.0.0.1",
    '_mta-sts TXT "v=STSv1; id=20261128"',
], signed=False)


def _policy(mode: str, *mx: str) -> bytes:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), "max_age: 86400"]
    return ("\r\n".join(lines) + "\r\n").encode()


class PolicySite(resource.Resource):
    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body
        self.hits = 0

    def render_GET(self, request: Any) -> bytes:
        self.hits += 1
        request.setHeader(b"content-type", b"text/plain")
        return self.body


@pytest.fixture
def world() -> Iterator[dict[str, Any]]:
    """A CA, the two MX sinks (127.0.0.2 = mx1, 127.0.0.1 = mx2) and the policy host cert."""
    ca = trustme.CA()
    port = free_port()
    sinks = {"mx1": Sink("127.0.0.2", port, ca.issue_cert("mx1.remote.test")),
             "mx2": Sink("127.0.0.1", port, ca.issue_cert("mx2.remote.test"))}
    for s in sinks.values():
        s.controller.start()
    try:
        yield {"ca": ca, "port": port, "sinks": sinks,
               "policy_cert": ca.issue_cert("mta-sts.remote.test"),
               "root": x509.load_pem_x509_certificate(ca.cert_pem.bytes())}
    finally:
        for s in sinks.values():
            s.controller.stop()


def _run(lab: Any, world: dict[str, Any], body: bytes | None, data_dir: Path,
         monkeypatch: pytest.MonkeyPatch, *, roots: list[Any] | None = None,
         deliver: bool = True, hosts: tuple[str, ...] = (), wait: float = 15.0) -> dict[str, Any]:
    """Serve ``body`` as the policy (None: no policy server), then queue a message (or, with
    ``deliver=False``, only decide the policy for ``hosts``)."""
    import twisted.protocols.tls as tls

    site = PolicySite(body or b"")
    options = ServerTLS(world["policy_cert"])
    https_port = free_port()
    trust = ssl.Certificate.loadPEM(world["ca"].cert_pem.bytes())

    async def go(reactor: Any) -> Any:
        monkeypatch.setattr(tls, "_get_default_clock", lambda: reactor)
        listening = None
        if body is not None:
            listening = reactor.listenTCP(
                https_port, TLSMemoryBIOFactory(options, False, server.Site(site, reactor=reactor),
                                                clock=reactor), interface="127.0.0.1")
        resolver = Resolver(reactor, lab.resolver_settings())
        fetcher = PolicyFetcher(reactor, resolver, FetchSettings(
            timeout=5, port=https_port, trust_root=trust))
        cache = JSONFilePolicyCache(data_dir / "mta-sts-cache.json")
        sts = STSResolver(resolver, fetcher, cache, reactor)
        out: dict[str, Any] = {"site_hits": 0}
        try:
            if not deliver:
                out["decisions"] = {}
                for host in hosts:
                    mx = await resolver.lookup_mx("remote.test")
                    addr = await resolver.lookup_a(host)
                    out["decisions"][host] = await tlspolicy.policy_for_host(
                        resolver, sts, "remote.test", host, mx.authentic, addr.authentic,
                        roots=roots if roots is not None else [world["root"]])
                return out
            store = SQLiteStore(data_dir, reactor)
            store.register_schema("queue", QUEUE_MIGRATIONS)
            await store.open()
            try:
                queue = Queue(SQLiteQueueStore(store), reactor)
                runner = QueueRunner(
                    queue, resolver, reactor, QueueSettings(port=world["port"]),
                    hostname="mx.example.org",
                    tls_policy_factory=tlspolicy.make_policy_factory(
                        resolver, sts, reactor,
                        roots=roots if roots is not None else [world["root"]]))
                runner.startService()
                w = store.new_blob()
                w.write(b"From: a@example.org\r\nTo: b@remote.test\r\nSubject: sts\r\n\r\nhi\r\n")
                qid = await queue.enqueue(w, OutboundMessage(
                    "a@example.org", (OutboundRecipient("b@remote.test"),)))
                sinks = world["sinks"]
                deadline = reactor.seconds() + wait
                while (sum(s.count() for s in sinks.values()) == 0
                       and reactor.seconds() < deadline):
                    await deferLater(reactor, 0.05, lambda: None)
                await deferLater(reactor, 0.2, lambda: None)
                out["attempts"] = await store.transact(lambda c: qs.attempts_for(c, qid))
                out["left"] = await queue.list()
                await runner.stopService()
            finally:
                await store.close()
            return out
        finally:
            out["site_hits"] = site.hits
            if listening is not None:
                await listening.stopListening()

    return run_with_reactor(go, timeout=wait + 40)  # type: ignore[no-any-return]


def test_enforce_with_matching_mx_and_valid_certificate_delivers(
        dns_lab_factory: Any, world: dict[str, Any], data_dir: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Enforce mode listing both MX hosts, certificates from the trusted CA: delivered to
    the first MX, verified, recorded with policy type sts; the policy is fetched once and
    cached on disk."""
    lab = dns_lab_factory({"remote.test": ZONE})
    out = _run(lab, world, _policy("enforce", "*.remote.test"), data_dir, monkeypatch)
    assert world["sinks"]["mx1"].count() == 1 and out["left"] == []
    (a,) = out["attempts"]
    assert a.result == "delivered" and a.tls_verified and a.tls_policy_type == "sts"
    assert a.tls_policy_domain == "remote.test"
    assert out["site_hits"] == 1
    cache = JSONFilePolicyCache(data_dir / "mta-sts-cache.json").get("remote.test")
    assert cache is not None and cache.txt_id == "20261128"


def test_enforce_untrusted_certificate_is_not_used(
        dns_lab_factory: Any, world: dict[str, Any], data_dir: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Enforce mode with certificates from a CA we do not trust: nothing is delivered, the
    failures are certificate-not-trusted, and there is no plaintext fallback."""
    lab = dns_lab_factory({"remote.test": ZONE})
    other_root = x509.load_pem_x509_certificate(trustme.CA().cert_pem.bytes())
    out = _run(lab, world, _policy("enforce", "*.remote.test"), data_dir, monkeypatch,
               roots=[other_root], wait=4.0)
    assert sum(s.count() for s in world["sinks"].values()) == 0
    assert len(out["left"]) == 1
    assert {a.tls_failure for a in out["attempts"]} == {"certificate-not-trusted"}


def test_testing_mode_delivers_and_records_failure(
        dns_lab_factory: Any, world: dict[str, Any], data_dir: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Testing mode with an untrusted certificate: delivered all the same, the failure is
    recorded for reporting (RFC 8461 §5)."""
    lab = dns_lab_factory({"remote.test": ZONE})
    other_root = x509.load_pem_x509_certificate(trustme.CA().cert_pem.bytes())
    out = _run(lab, world, _policy("testing", "*.remote.test"), data_dir, monkeypatch,
               roots=[other_root])
    assert world["sinks"]["mx1"].count() == 1 and out["left"] == []
    (a,) = out["attempts"]
    assert a.result == "delivered" and not a.tls_verified
    assert a.tls_failure == "certificate-not-trusted" and a.tls_policy_type == "sts"


def test_non_matching_mx_is_refused(
        dns_lab_factory: Any, world: dict[str, Any], data_dir: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Enforce mode listing only mx2: mx1 is refused (try the next MX), mx2 gets sts-enforce."""
    lab = dns_lab_factory({"remote.test": ZONE})
    out = _run(lab, world, _policy("enforce", "mx2.remote.test"), data_dir, monkeypatch,
               deliver=False, hosts=("mx1.remote.test", "mx2.remote.test"))
    mx1, mx2 = out["decisions"]["mx1.remote.test"], out["decisions"]["mx2.remote.test"]
    assert isinstance(mx1, HostRefusal) and not mx1.permanent
    assert mx1.policy.type is PolicyType.STS and mx1.result_type is ResultType.VALIDATION_FAILURE
    assert isinstance(mx2, HostTLSPolicy) and mx2.mode is PolicyMode.STS_ENFORCE


def test_cached_policy_used_when_policy_host_is_down(
        dns_lab_factory: Any, world: dict[str, Any], data_dir: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A policy fetched once (persisted in the data directory) still enforces after a
    restart when the HTTPS server is gone."""
    lab = dns_lab_factory({"remote.test": ZONE})
    first = _run(lab, world, _policy("enforce", "mx2.remote.test"), data_dir, monkeypatch,
                 deliver=False, hosts=("mx2.remote.test",))
    assert first["decisions"]["mx2.remote.test"].mode is PolicyMode.STS_ENFORCE
    again = _run(lab, world, None, data_dir, monkeypatch, deliver=False,
                 hosts=("mx1.remote.test", "mx2.remote.test"))
    assert isinstance(again["decisions"]["mx1.remote.test"], HostRefusal)
    assert again["decisions"]["mx2.remote.test"].mode is PolicyMode.STS_ENFORCE
