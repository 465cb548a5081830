"""Restart safety of the queue: SIGKILL with 500 messages queued and deliveries in flight.

A child process runs the QueueRunner (global reactor, real store, MX through a
FakeResolver pointing at Postfix smtp-sink on loopback).  The parent queues 500 messages,
starts the child, kills it with SIGKILL once the sink has ~150 of them, counts the
recipients the database shows in flight, restarts the child and waits until the queue is
empty.  Every message must reach the sink; duplicates are at most the in-flight ones.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from twisted.internet.defer import gatherResults

from mxd.queue.queue import Queue
from mxd.store.interfaces import OutboundMessage, OutboundRecipient
from mxd.store.queuedb import QUEUE_MIGRATIONS
from mxd.store.sqlite import DB_NAME
from mxd.store.sqlitequeue import SQLiteQueueStore
from tests.queue.sinks import SmtpSink
from tests.store.helpers import open_store

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOTAL = 500

CHILD = r'''
import sys
from pathlib import Path
from twisted.internet import reactor, defer
from mxd.dns.testing import FakeResolver
from mxd.queue.queue import Queue
from mxd.queue.runner import QueueRunner, QueueSettings
from mxd.store.queuedb import QUEUE_MIGRATIONS
from mxd.store.sqlite import SQLiteStore
from mxd.store.sqlitequeue import SQLiteQueueStore

async def main():
    store = SQLiteStore(Path(sys.argv[1]), reactor)
    store.register_schema("queue", QUEUE_MIGRATIONS)
    await store.open()
    resolver = FakeResolver()
    resolver.add("remote.test", "MX", ["10 mx.remote.test."])
    resolver.add("mx.remote.test", "A", ["127.0.0.1"])
    queue = Queue(SQLiteQueueStore(store), reactor)
    runner = QueueRunner(queue, resolver, reactor,
                         QueueSettings(port=int(sys.argv[2]), max_concurrent=20, max_per_domain=20),
                         hostname="mx.example.org")
    runner.startService()

    async def stop():
        await runner.stopService()
        await store.close()

    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.ensureDeferred(stop()))
    print("READY", flush=True)

reactor.callWhenRunning(lambda: defer.ensureDeferred(main()).addErrback(
    lambda f: (f.printTraceback(), reactor.stop())))
reactor.run()
'''


class _Clock:
    def seconds(self) -> float:
        return time.time()


def _fill(data_dir: Path) -> None:
    h = open_store(data_dir, schemas={"queue": QUEUE_MIGRATIONS})
    try:
        q = Queue(SQLiteQueueStore(h.store), _Clock())
        for batch in range(0, TOTAL, 50):  # 50 at a time: the store group-commits them
            ds = []
            for n in range(batch, min(TOTAL, batch + 50)):
                w = h.store.new_blob()
                w.write(f"From: a@example.org\r\nMessage-ID: <{n}@restart.test>\r\n"
                        f"Subject: {n}\r\n\r\n".encode() + b"y" * 1000 + b"\r\n")
                ds.append(q.enqueue(w, OutboundMessage(
                    "a@example.org", (OutboundRecipient(f"r{n}@remote.test"),))))
            h.run(gatherResults(ds))
    finally:
        h.close()


def _child(data_dir: Path, port: int) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(data_dir), str(port)], cwd=ROOT,
                         env=env, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line.strip() == "READY", line
    return p


def _rows(data_dir: Path, sql: str) -> int:
    conn = sqlite3.connect(data_dir / DB_NAME, timeout=10)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def _poll(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_sigkill_with_deliveries_in_flight_loses_nothing(data_dir: Path, tmp_path: Path) -> None:
    """After SIGKILL mid-run and a restart every message reaches the sink; duplicates are
    no more than the recipients that were in flight at the kill."""
    _fill(data_dir)
    with SmtpSink(tmp_path) as sink:
        child = _child(data_dir, sink.port)
        try:
            _poll(lambda: sink.count() >= 150, 60, "150 deliveries")
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        at_kill = sink.count()
        in_flight = _rows(data_dir, "SELECT COUNT(*) FROM queue_recipients WHERE state='inflight'")
        left = _rows(data_dir, "SELECT COUNT(*) FROM queue_recipients")
        assert 0 < left < TOTAL
        child = _child(data_dir, sink.port)
        try:
            _poll(lambda: _rows(data_dir, "SELECT COUNT(*) FROM queue_recipients") == 0, 60,
                  "an empty queue")
        finally:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        ids = Counter(sink.message_ids())
    assert set(ids) == {f"<{n}@restart.test>".encode() for n in range(TOTAL)}
    duplicates = sum(ids.values()) - TOTAL
    print(f"\nrestart: {at_kill} delivered before SIGKILL, {in_flight} in flight, "
          f"{duplicates} duplicate(s) after restart")
    assert duplicates <= in_flight
    assert _rows(data_dir, "SELECT COUNT(*) FROM queue_messages") == 0
