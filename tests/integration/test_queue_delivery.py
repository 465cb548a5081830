"""Outbound delivery end to end: real store, real resolver (DNS lab), real SMTP sinks."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import deferLater

from mxd.dns.resolver import Resolver
from mxd.dns.testing import run_with_reactor
from mxd.queue.local import StoreLocalDelivery
from mxd.queue.queue import Queue
from mxd.queue.runner import QueueRunner, QueueSettings
from mxd.store import queuedb as qs
from mxd.store.interfaces import OutboundMessage, OutboundRecipient
from mxd.store.queuedb import QUEUE_MIGRATIONS
from mxd.store.sqlite import SQLiteStore
from mxd.store.sqlitequeue import SQLiteQueueStore
from tests.integration.dnslab import ZoneSpec, dns_lab_factory  # noqa: F401
from tests.queue.sinks import AiosmtpdSink, SmtpSink

pytestmark = pytest.mark.integration

ZONES = {"remote.test": ZoneSpec(records=["@ MX 10 mx", "mx A 127.0.0.1"], signed=True)}


async def _until(reactor: Any, check: Any, timeout: float = 20.0) -> None:
    """Poll ``check()`` every 20 ms until true (bounded)."""
    deadline = reactor.seconds() + timeout
    while not check():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not met in time")
        await deferLater(reactor, 0.02, lambda: None)


def run(go: Any, monkeypatch: pytest.MonkeyPatch, timeout: float = 60) -> Any:
    """run_with_reactor, with Twisted's TLS write aggregation on the private reactor: startTLS
    builds its TLS factory with the *global* reactor as clock (twisted.protocols.tls
    _get_default_clock), whose callLater(0) flush never runs while a private reactor does."""
    import twisted.protocols.tls as tls

    def wrapped(reactor: Any) -> Any:
        monkeypatch.setattr(tls, "_get_default_clock", lambda: reactor)
        return go(reactor)

    return run_with_reactor(wrapped, timeout=timeout)


def _message(n: int, size: int = 300) -> bytes:
    head = (f"From: alice@example.org\r\nTo: someone@remote.test\r\nSubject: test {n}\r\n"
            f"Message-ID: <{n}@queue.test>\r\n\r\n").encode()
    return head + (b"x" * 70 + b"\r\n") * max(1, size // 72)


def test_delivery_over_starttls_and_failure_dsn_in_inbox(
        dns_lab_factory: Any, tls_files: dict[str, Path], data_dir: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """MX from the DNS lab, aiosmtpd sink with STARTTLS: the accepted recipient gets the
    message over TLS 1.3 (recorded in the attempts log), the 550 recipient produces a
    failure DSN in the local sender's INBOX."""
    lab = dns_lab_factory(ZONES)
    with AiosmtpdSink(tls_files["cert"], tls_files["key"]) as sink:
        async def go(reactor: Any) -> Any:
            store = SQLiteStore(data_dir, reactor)
            store.register_schema("queue", QUEUE_MIGRATIONS)
            await store.open()
            try:
                alice = await store.add_account("alice", "{}", ["alice@example.org"])
                queue = Queue(SQLiteQueueStore(store), reactor)
                runner = QueueRunner(
                    queue, Resolver(reactor, lab.resolver_settings()), reactor,
                    QueueSettings(port=sink.port), local_delivery=StoreLocalDelivery(store, ["example.org"]),
                    hostname="mx.example.org")
                runner.startService()
                w = store.new_blob()
                w.write(_message(1))
                qid = await queue.enqueue(w, OutboundMessage(
                    "alice@example.org",
                    (OutboundRecipient("ok@remote.test"), OutboundRecipient("bounce@remote.test"))))
                inbox = await store.get_mailbox(alice.id, "INBOX")

                async def inbox_count() -> int:
                    return len(await store.list_messages(inbox.id))

                box: list[int] = [0]

                def check() -> bool:
                    d = store.list_messages(inbox.id)
                    d.addCallback(lambda ms: box.__setitem__(0, len(ms)))
                    return sink.count() >= 1 and box[0] >= 1

                await _until(reactor, check)
                msgs = await store.list_messages(inbox.id)
                with store.open_blob(msgs[0].blob_id) as f:
                    dsn = f.read()
                attempts = await store.transact(lambda c: qs.attempts_for(c, qid))
                left = await queue.list()
                await runner.stopService()
                return dsn, attempts, left
            finally:
                await store.close()

        dsn, attempts, left = run(go, monkeypatch)
    [got] = sink.messages
    assert got["tls"] and got["rcpts"] == ["ok@remote.test"]
    assert b"Message-ID: <1@queue.test>" in got["data"]
    [a] = attempts
    assert a.result == "partial" and a.tls_used and a.tls_version == "TLSv1.3" and a.ip == "127.0.0.1"
    assert left == []
    report = email.message_from_bytes(dsn, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    status = list(report.iter_parts())[1].get_payload()  # type: ignore[attr-defined]
    rcpt = {k.lower(): str(v) for k, v in status[1].items()}
    assert rcpt["final-recipient"] == "rfc822;bounce@remote.test" and rcpt["status"] == "5.1.1"
    assert rcpt["remote-mta"] == "dns;mx.remote.test"


def test_delivery_to_postfix_smtp_sink(dns_lab_factory: Any, data_dir: Path, tmp_path: Path,  # noqa: F811
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """50 messages to Postfix smtp-sink (no TLS offered: opportunistic goes plaintext) all
    arrive exactly once and the queue empties."""
    lab = dns_lab_factory(ZONES)
    with SmtpSink(tmp_path) as sink:
        async def go(reactor: Any) -> Any:
            store = SQLiteStore(data_dir, reactor)
            store.register_schema("queue", QUEUE_MIGRATIONS)
            await store.open()
            try:
                queue = Queue(SQLiteQueueStore(store), reactor)
                runner = QueueRunner(queue, Resolver(reactor, lab.resolver_settings()), reactor,
                                     QueueSettings(port=sink.port), hostname="mx.example.org")
                runner.startService()
                for n in range(50):
                    w = store.new_blob()
                    w.write(_message(n))
                    await queue.enqueue(w, OutboundMessage(
                        "alice@example.org", (OutboundRecipient(f"r{n}@remote.test"),)))
                await _until(reactor, lambda: sink.count() >= 50)
                box: list[Any] = [None]

                def empty() -> bool:
                    queue.list().addCallback(lambda x: box.__setitem__(0, x))
                    return box[0] == []

                await _until(reactor, empty)
                await runner.stopService()
            finally:
                await store.close()

        run(go, monkeypatch)
        ids = sink.message_ids()
    assert sorted(ids) == sorted(f"<{n}@queue.test>".encode() for n in range(50))
