"""Crash safety of the store: SIGKILL during deliveries loses nothing acknowledged.

A child process delivers messages as fast as it can (several in flight, so group
commits are exercised; some messages go to two or three mailboxes and share one body, and a Trash copy is
expunged soon after, so body removal after commits is exercised too) and prints
``ACK <n> <sha256>`` after each delivery's Deferred fired.  The parent kills it with
SIGKILL at a random moment after ~100 acknowledgements, reopens the store and checks
DESIGN.md's contract: every acknowledged message is there exactly once with the right
content, no row lacks its body, and crash leftovers are cleaned up.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mxd.store.blobs import BlobFiles
from tests.store.helpers import open_store

ROOT = Path(__file__).resolve().parents[2]

CHILD = r'''
import hashlib, os, random, sys
from pathlib import Path
from twisted.internet import defer, task
from mxd.store.interfaces import Delivery, MessageProps
from mxd.store.sqlite import SQLiteStore

async def main(reactor):
    data_dir, first, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    store = SQLiteStore(data_dir, reactor)
    await store.open()
    acct = await store.get_account("crash")
    if acct is None:
        acct = await store.add_account("crash", "{}")
    print("READY", flush=True)
    counter = [first]

    async def worker():
        while True:
            n = counter[0]
            counter[0] += 1
            body = b"Message-Id: <%d@crash.test>\r\n\r\n" % n + rng.randbytes(rng.randrange(64, 30000))
            w = store.new_blob()
            for i in range(0, len(body), 4096):
                w.write(body[i:i + 4096])
            targets = [Delivery(acct.id)]
            if n % 5 == 0:
                targets.append(Delivery(acct.id, "Archive"))
            if n % 3 == 0:
                targets.append(Delivery(acct.id, "Trash", frozenset({"\\Deleted"})))
            await store.deliver(w, targets, MessageProps(mail_from="seq-%d" % n))
            print("ACK %d %s" % (n, hashlib.sha256(body).hexdigest()), flush=True)

    async def churn():
        # Expunging Trash drops shared references and removes bodies after commits.
        trash = (await store.get_mailbox(acct.id, "Trash")).id
        while True:
            await store.expunge(trash)
            await task.deferLater(reactor, 0.005, lambda: None)

    workers = [defer.Deferred.fromCoroutine(worker()) for _ in range(6)]
    workers.append(defer.Deferred.fromCoroutine(churn()))
    await defer.gatherResults(workers)

task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
'''


def _run_child_until_killed(data_dir: Path, first: int, seed: int, kill_after: int,
                            deadline: float) -> dict[int, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data_dir), str(first), str(seed)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    acked: dict[int, str] = {}
    # A child that stops printing must not hang the test: kill it at the deadline.
    watchdog = threading.Timer(max(deadline - time.monotonic(), 1), proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode().split()
            if line and line[0] == "ACK":
                acked[int(line[1])] = line[2]
                if len(acked) >= kill_after:
                    break
            if time.monotonic() > deadline:
                break
        else:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"child exited early ({proc.wait()}): {err[-2000:]}")
    finally:
        watchdog.cancel()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
    return acked


def _message_number(body: bytes) -> int:
    first_line = body.split(b"\r\n", 1)[0]
    return int(first_line.split(b"<", 1)[1].split(b"@", 1)[0])


@pytest.mark.integration
def test_sigkill_during_delivery_loses_nothing_acknowledged(data_dir: Path) -> None:
    """After SIGKILL at random points: integrity_check ok, each acknowledged message
    present exactly once per target mailbox with its hash, every row's body present with
    the right size, refcounts exact, and tmp/ and orphan bodies cleaned up."""
    rng = random.Random()
    started = time.monotonic()
    acked: dict[int, str] = {}
    first = 1
    for round_ in range(3):
        kill_after = 80 + rng.randrange(60)
        got = _run_child_until_killed(data_dir, first, rng.randrange(2**32), kill_after,
                                      started + 20)
        assert len(got) >= min(kill_after, 20), f"round {round_}: only {len(got)} acks"
        acked.update(got)
        first = max(acked) + 1000  # numbers never clash across rounds

        files = BlobFiles(data_dir)
        h = open_store(data_dir)  # runs the crash cleanup
        try:
            _check(data_dir, files, acked)
        finally:
            h.close()
    assert time.monotonic() - started < 30


def _check(data_dir: Path, files: BlobFiles, acked: dict[int, str]) -> None:
    conn = sqlite3.connect(data_dir / "mxd.sqlite3")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        rows = conn.execute(
            "SELECT b.name, m.uid, m.size, m.blob_id FROM messages m "
            "JOIN mailboxes b ON b.id = m.mailbox_id").fetchall()
        seen: dict[tuple[str, int], int] = {}
        blobs_used: dict[str, int] = {}
        for mailbox, _uid, size, blob_id in rows:
            path = files.path(blob_id)
            assert path.exists(), f"row without body {blob_id}"
            body = path.read_bytes()
            assert len(body) == size
            n = _message_number(body)
            seen[(mailbox, n)] = seen.get((mailbox, n), 0) + 1
            blobs_used[blob_id] = blobs_used.get(blob_id, 0) + 1
            if n in acked:
                assert hashlib.sha256(body).hexdigest() == acked[n]
        assert all(count == 1 for count in seen.values()), "a message was stored twice"
        for n in acked:
            assert seen.get(("INBOX", n)) == 1, f"acknowledged message {n} lost"
            if n % 5 == 0:
                assert seen.get(("Archive", n)) == 1, f"acknowledged message {n} lost (Archive)"
        refcounts = dict(conn.execute("SELECT id, refcount FROM blobs").fetchall())
        assert refcounts == blobs_used
        assert set(files.iter_blob_ids()) == set(refcounts), "orphan or missing body files"
        assert list(files.tmp_dir.iterdir()) == []
    finally:
        conn.close()
