"""DANE on real deliveries: the queue runner with mxd.queue.tlspolicy, MX hosts from the
DNSSEC lab, aiosmtpd servers with STARTTLS on two loopback addresses (RFC 7672 §2.2, §3)."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from twisted.internet.task import deferLater

from mxd import dane
from mxd.dns.resolver import Resolver
from mxd.dns.testing import run_with_reactor
from mxd.queue import tlspolicy
from mxd.queue.queue import Queue
from mxd.queue.runner import QueueRunner, QueueSettings
from mxd.store import queuedb as qs
from mxd.store.interfaces import OutboundMessage, OutboundRecipient
from mxd.store.queuedb import QUEUE_MIGRATIONS
from mxd.store.sqlite import SQLiteStore
from mxd.store.sqlitequeue import SQLiteQueueStore
from tests.integration.dnslab import ZoneSpec, dns_lab_factory  # noqa: F401
from tests.integration.tools import free_port, require_module

pytestmark = pytest.mark.integration


class Sink:
    """aiosmtpd with STARTTLS on ``host``:``port`` presenting ``leaf``'s chain."""

    def __init__(self, host: str, port: int, leaf: trustme.LeafCert) -> None:
        require_module("aiosmtpd")
        from aiosmtpd.controller import Controller

        self.messages: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(ctx)
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                with sink.lock:
                    sink.messages.append({"rcpts": list(envelope.rcpt_tos),
                                          "tls": session.ssl is not None})
                return "250 2.0.0 OK"

        self.controller = Controller(Handler(), hostname=host, port=port, tls_context=ctx,
                                     require_starttls=False)

    def count(self) -> int:
        with self.lock:
            return len(self.messages)


@pytest.fixture
def sinks() -> Iterator[tuple[int, Sink, Sink, dict[str, trustme.LeafCert]]]:
    """Two servers on one port: 127.0.0.2 (mx1) and 127.0.0.1 (mx2), different certificates."""
    ca = trustme.CA()
    leaves = {"mx1": ca.issue_cert("mx1.remote.test"), "mx2": ca.issue_cert("mx2.remote.test")}
    port = free_port()
    first = Sink("127.0.0.2", port, leaves["mx1"])
    second = Sink("127.0.0.1", port, leaves["mx2"])
    first.controller.start()
    try:
        second.controller.start()
        try:
            yield port, first, second, leaves
        finally:
            second.controller.stop()
    finally:
        first.controller.stop()


def _tlsa(leaf: trustme.LeafCert) -> str:
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    return dane.tlsa_text(dane.tlsa_for_certificate(cert))


WRONG = "3 1 1 " + "00" * 32


def _deliver(lab: Any, port: int, data_dir: Path, monkeypatch: pytest.MonkeyPatch,
             done: Any, wait: float = 20.0) -> tuple[list[Any], list[Any]]:
    """Queue one message to someone@remote.test, run the runner with the DANE policy
    factory until ``done()`` or ``wait`` seconds; return (attempts, queue listing)."""
    import twisted.protocols.tls as tls

    async def go(reactor: Any) -> Any:
        # startTLS takes the global reactor as the TLS write clock; use the private one.
        monkeypatch.setattr(tls, "_get_default_clock", lambda: reactor)
        store = SQLiteStore(data_dir, reactor)
        store.register_schema("queue", QUEUE_MIGRATIONS)
        await store.open()
        try:
            resolver = Resolver(reactor, lab.resolver_settings())
            queue = Queue(SQLiteQueueStore(store), reactor)
            runner = QueueRunner(queue, resolver, reactor, QueueSettings(port=port),
                                 hostname="mx.example.org",
                                 tls_policy_factory=tlspolicy.make_policy_factory(
                                     resolver, None, reactor))
            runner.startService()
            w = store.new_blob()
            w.write(b"From: a@example.org\r\nTo: someone@remote.test\r\nSubject: dane\r\n\r\nhi\r\n")
            qid = await queue.enqueue(w, OutboundMessage(
                "a@example.org", (OutboundRecipient("someone@remote.test"),)))
            deadline = reactor.seconds() + wait
            while not done() and reactor.seconds() < deadline:
                await deferLater(reactor, 0.05, lambda: None)
            await deferLater(reactor, 0.2, lambda: None)  # let the attempt be recorded
            attempts = await store.transact(lambda c: qs.attempts_for(c, qid))
            left = await queue.list()
            await runner.stopService()
            return attempts, left
        finally:
            await store.close()

    return run_with_reactor(go, timeout=wait + 30)  # type: ignore[no-any-return]


def test_dane_mismatch_skips_to_next_mx_which_matches(
        dns_lab_factory: Any, sinks: Any, data_dir: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """mx1's TLSA does not match its certificate: nothing is delivered there; mx2's matches:
    the message is delivered to mx2 over TLS."""
    port, first, second, leaves = sinks
    lab = dns_lab_factory({"remote.test": ZoneSpec(records=[
        "@ MX 10 mx1", "@ MX 20 mx2", "mx1 A 127.0.0.2", "mx2 A 127.0.0.1",
        f"_25._tcp.mx1 TLSA {_tlsa(leaves['mx2'])}",  # mx2's key published for mx1
        f"_25._tcp.mx2 TLSA {_tlsa(leaves['mx2'])}",
    ])})
    attempts, left = _deliver(lab, port, data_dir, monkeypatch, lambda: second.count() >= 1)
    assert first.count() == 0
    assert second.count() == 1 and second.messages[0]["tls"]
    assert left == []
    by_host = {a.host: a for a in attempts}
    assert by_host["mx1.remote.test"].tls_failure == "validation-failure"
    assert not by_host["mx1.remote.test"].tls_verified
    ok = by_host["mx2.remote.test"]
    assert ok.result == "delivered" and ok.tls_verified and ok.tls_policy_type == "tlsa"


def test_dane_mismatch_everywhere_is_not_delivered(
        dns_lab_factory: Any, sinks: Any, data_dir: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No MX host matches its TLSA records: nothing is delivered and the message stays
    queued for a retry (no plaintext fallback).  The queue's last result (what ``mxd queue
    list/show``, the admin API and a delayed DSN show) and each attempt name the policy and
    the reason, not only the RFC 8460 word."""
    port, first, second, _leaves = sinks
    lab = dns_lab_factory({"remote.test": ZoneSpec(records=[
        "@ MX 10 mx1", "@ MX 20 mx2", "mx1 A 127.0.0.2", "mx2 A 127.0.0.1",
        f"_25._tcp.mx1 TLSA {WRONG}", f"_25._tcp.mx2 TLSA {WRONG}",
    ])})
    attempts, left = _deliver(lab, port, data_dir, monkeypatch, lambda: False, wait=4.0)
    assert first.count() == 0 and second.count() == 0
    assert len(left) == 1, "the message stays in the queue"
    assert {a.host for a in attempts} == {"mx1.remote.test", "mx2.remote.test"}
    assert all(a.tls_failure == "validation-failure" and a.result != "delivered"
               for a in attempts)
    reason = "no DANE-EE record matches the server certificate"
    (r,) = left[0].recipients
    assert r.last_text is not None
    assert "DANE verification failed" in r.last_text and reason in r.last_text
    assert all(reason in (a.text or "") and reason in (a.tls_detail or "") for a in attempts)
