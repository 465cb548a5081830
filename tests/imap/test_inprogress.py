"""INPROGRESS (RFC 9585): long commands report progress at most once a second, with
counts where the loop knows them, never inside a response."""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from mxd.imap import inprogress
from mxd.imap.server import IMAPFactory, IMAPServerSettings
from tests.imap.fakes import FakeSASL
from tests.imap.helpers import MSG1, MSG2, Conn, make_store

N = 200
_PROGRESS = re.compile(rb"^\* OK \[INPROGRESS \(.*\)\] Still working\r\n", re.M)


class SlowClock(Clock):
    """Every reading of the time is 100 ms later than the one before."""

    def seconds(self) -> float:
        self.rightNow += 0.1
        return self.rightNow


def _conn(clock: Clock, n: int = N) -> tuple[Conn, Any]:
    store, acc = make_store()
    for i in range(n):
        store.put(acc, "INBOX", MSG1 if i % 2 else MSG2)
    factory = IMAPFactory(implicit_tls=True, settings=IMAPServerSettings(), store=store,
                          accounts=store, sasl=FakeSASL({"alice": "s3cret"}), tls=None,
                          clock=clock, hostname="mx.example.test")
    c = Conn(store, factory=factory, clock=clock)
    c.login()
    c.select()
    return c, store


def test_line() -> None:
    """RFC 9585 §2 syntax: quoted tag (NIL if it holds "]"), count below the goal."""
    assert inprogress.line("A1", 10, 100) == b'OK [INPROGRESS ("A1" 10 100)] Still working'
    assert inprogress.line("A1", 100, 100) == b'OK [INPROGRESS ("A1" 99 100)] Still working'
    assert inprogress.line("a]b", None, None) == b"OK [INPROGRESS (NIL NIL NIL)] Still working"


def test_long_fetch_reports_counts() -> None:
    """A FETCH of 200 messages taking seconds reports how many of 200 are done, at most
    once a second; without those lines its output is what a fast run gives."""
    fast, _ = _conn(Clock())
    expected = fast.cmd("F FETCH 1:* (FLAGS ENVELOPE BODY.PEEK[HEADER])")
    clock = SlowClock()
    c, _ = _conn(clock)
    out = c.cmd("F FETCH 1:* (FLAGS ENVELOPE BODY.PEEK[HEADER])")
    for _ in range(10 * N):
        if b"F OK" in out:
            break
        clock.advance(0)
        out += c.out()
    lines = _PROGRESS.findall(out)
    assert len(lines) >= 2, out[:300]
    counts = [int(m) for m in re.findall(rb'INPROGRESS \("F" (\d+) 200\)', out)]
    assert len(counts) == len(lines) and counts == sorted(counts) and counts[-1] < N
    assert _PROGRESS.sub(b"", out) == expected


def test_waiting_copy_reports_without_counts() -> None:
    """A COPY waiting on the store reports once a second with NIL counts, and stops
    when the command completes."""
    clock = Clock()
    c, store = _conn(clock, 3)
    c.cmd("c CREATE Dest")
    waiting: Deferred[Any] = Deferred()
    real = store.copy
    store.copy = lambda *a: waiting  # the store is slow
    assert c.cmd("C COPY 1:3 Dest") == b""
    clock.advance(0.5)
    assert c.out() == b""
    clock.advance(0.6)
    assert c.out() == b'* OK [INPROGRESS ("C" NIL NIL)] Still working\r\n'
    clock.advance(1.0)
    assert c.out() == b'* OK [INPROGRESS ("C" NIL NIL)] Still working\r\n'
    store.copy = real
    waiting.callback([(1, 1), (2, 2), (3, 3)])
    assert b"C OK" in c.out()
    clock.advance(5)
    assert c.out() == b""
    assert b" INPROGRESS" in c.cmd("a CAPABILITY")
