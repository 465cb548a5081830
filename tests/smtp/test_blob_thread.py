"""Body files created off the reactor thread (``run_blocking``) when the store has none
made ahead of time: input waits, order holds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from tests.smtp.helpers import Session


class HeldRunner:
    """A run_blocking that runs the call only when ``release`` is called."""

    def __init__(self) -> None:
        self.pending: list[tuple[Deferred[Any], Callable[[], Any]]] = []

    def __call__(self, f: Callable[[], Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((d, f))
        return d

    def release(self, fail: bool = False) -> None:
        pending, self.pending = self.pending, []
        for d, f in pending:
            if fail:
                d.errback(OSError("no space left on device"))
            else:
                d.callback(f())


def test_data_waits_for_blob_then_reads_body() -> None:
    """354 comes only after the file exists; pipelined body bytes are then read as data."""
    runner = HeldRunner()
    s = Session(run_blocking=runner)
    s.store.pool_empty = True
    s.ehlo()
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
           "Subject: x\r\n\r\nQUIT\r\n.\r\nNOOP\r\n")
    assert s.codes() == [250, 250]
    runner.release()
    assert s.codes() == [354, 250, 250]
    assert s.store.delivered[0].body.endswith(b"\r\n\r\nQUIT\r\n")


def test_bdat_waits_for_blob() -> None:
    """A BDAT chunk sent with its command is held until the file exists, then stored."""
    runner = HeldRunner()
    s = Session(run_blocking=runner)
    s.store.pool_empty = True
    s.ehlo()
    body = b"Subject: x\r\n\r\nRSET\r\n"
    s.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\n"
           + f"BDAT {len(body)} LAST\r\n".encode() + body + b"NOOP\r\n")
    assert s.codes() == [250, 250]
    runner.release()
    assert s.codes() == [250, 250]
    assert s.store.delivered[0].body.endswith(b"\r\n\r\nRSET\r\n")


def test_blob_creation_failure_is_451() -> None:
    """If the file cannot be created DATA gets 451 4.3.0 and the session goes on."""
    runner = HeldRunner()
    s = Session(run_blocking=runner)
    s.store.pool_empty = True
    s.ehlo()
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nNOOP\r\n")
    runner.release(fail=True)
    r = s.replies()
    assert r[-2].startswith("451 4.3.0") and r[-1].startswith("250")


def test_pooled_blob_needs_no_thread_hop() -> None:
    """With a file made ahead of time, DATA answers 354 at once: nothing runs on a
    thread and the body is read in the same turn."""
    runner = HeldRunner()
    s = Session(run_blocking=runner)
    s.ehlo()
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
           "Subject: x\r\n\r\nhi\r\n.\r\n")
    assert s.codes() == [250, 250, 354, 250]
    assert runner.pending == []
    assert s.store.delivered[0].body.endswith(b"\r\n\r\nhi\r\n")
