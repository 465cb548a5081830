"""A day's DMARC aggregate report, produced by the reporter, delivered through the real
queue (SQLite store, DNS lab, STARTTLS) to the rua domain's MX (an aiosmtpd sink), where
parsedmarc parses it and dkimpy verifies its DKIM signature."""

from __future__ import annotations

import email
import email.policy
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from mxd.dns.resolver import Resolver
from mxd.msgauth.dkimkeys import generate_key
from mxd.msgauth.dmarcsend import DMARCReporter, EvaluationLog, ReporterSettings
from mxd.msgauth.signing import KeyRing
from mxd.queue.local import StoreLocalDelivery
from mxd.queue.queue import Queue
from mxd.queue.runner import QueueRunner, QueueSettings
from mxd.store.queuedb import QUEUE_MIGRATIONS
from mxd.store.sqlite import SQLiteStore
from mxd.store.sqlitequeue import SQLiteQueueStore
from tests.integration.dnslab import ZoneSpec, dns_lab_factory  # noqa: F401
from tests.integration.test_queue_delivery import _until, run
from tests.queue.sinks import AiosmtpdSink

pytestmark = pytest.mark.integration


def test_report_delivered_to_rua_parsed_and_signed(
        dns_lab_factory: Any, tls_files: dict[str, Path], data_dir: Path,  # noqa: F811
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parsedmarc = pytest.importorskip("parsedmarc")
    import dkim as dkimpy

    key = generate_key(tmp_path / "dkim", "example.org", "s1", "rsa")
    lab = dns_lab_factory({"remote.test": ZoneSpec(records=[
        "@ MX 10 mx", "mx A 127.0.0.1", '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:agg@remote.test"'],
        signed=True)})
    evaluations = tmp_path / "evaluations"
    evaluations.mkdir()
    row = {"t": 1796378400, "ip": "192.0.2.7", "from": "remote.test", "domain": "remote.test",
           "disposition": "none", "dkim": "pass", "spf": "pass",
           "dkim_results": [["remote.test", "pass"]], "spf_result": ["remote.test", "pass"],
           "p": "reject", "sp": "reject", "pct": 100, "adkim": "r", "aspf": "r",
           "rua": ["mailto:agg@remote.test"]}
    (evaluations / "2026-12-04.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with AiosmtpdSink(tls_files["cert"], tls_files["key"]) as sink:
        async def go(reactor: Any) -> Any:
            store = SQLiteStore(data_dir, reactor)
            store.register_schema("queue", QUEUE_MIGRATIONS)
            await store.open()
            try:
                queue = Queue(SQLiteQueueStore(store), reactor)
                resolver = Resolver(reactor, lab.resolver_settings())
                runner = QueueRunner(queue, resolver, reactor, QueueSettings(port=sink.port),
                                     local_delivery=StoreLocalDelivery(store, ["example.org"]),
                                     hostname="mx.example.org")
                runner.startService()
                reporter = DMARCReporter(
                    EvaluationLog(evaluations), resolver, queue, reactor,
                    ReporterSettings("mx.example.org", "postmaster@example.org"),
                    sign=KeyRing({"example.org": [key]}).sign)
                queued = await reporter.run_once()
                await _until(reactor, lambda: sink.count() >= 1)
                await runner.stopService()
                return queued
            finally:
                await store.close()

        queued = run(go, monkeypatch)
    assert queued == 1
    [got] = sink.messages
    assert got["rcpts"] == ["agg@remote.test"] and got["tls"]
    data = got["data"]
    assert dkimpy.verify(data, dnsfunc=lambda name, timeout=5: key.txt.encode())
    msg = email.message_from_bytes(data, policy=email.policy.default)
    (att,) = [p for p in msg.walk() if p.get_content_type() == "application/gzip"]
    report = parsedmarc.parse_aggregate_report_xml(
        gzip.decompress(att.get_payload(decode=True)), offline=True, always_use_local_files=True)
    assert report["policy_published"]["domain"] == "remote.test"
    assert [(r["source"]["ip_address"], r["count"]) for r in report["records"]] == [
        ("192.0.2.7", 2)]
